//! Successive failures: a trigger whose builds keep failing is disabled with the reason, as
//! Quay's `SUCCESSIVE_TRIGGER_*_DISABLE_THRESHOLD` do; a success resets both counts.

use registry_core::db::now_ms;
use rusqlite::{Connection, OptionalExtension as _, params};

use crate::config::TriggerConfig;
use crate::db::BuildDbError;

/// The disable thresholds (0 = never).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TriggerLimits {
    /// `SUCCESSIVE_TRIGGER_FAILURE_DISABLE_THRESHOLD`.
    pub failures: u32,
    /// `SUCCESSIVE_TRIGGER_INTERNAL_ERROR_DISABLE_THRESHOLD`.
    pub internal_errors: u32,
}

impl From<&TriggerConfig> for TriggerLimits {
    fn from(c: &TriggerConfig) -> Self {
        TriggerLimits {
            failures: c.failure_disable_threshold,
            internal_errors: c.internal_error_disable_threshold,
        }
    }
}

/// How a trigger's build ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildOutcome {
    /// Complete.
    Success,
    /// Failed because of its input (phase `error`).
    Failure,
    /// Failed for an infrastructure reason with no attempt left (phase `internalerror`).
    InternalError,
}

/// Why a trigger is disabled (Quay's `disabled_reason` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisabledReason {
    /// Too many builds in a row failed.
    SuccessiveBuildFailures,
    /// Too many builds in a row ended in an internal error.
    SuccessiveBuildInternalErrors,
    /// A user disabled it.
    UserToggled,
}

impl DisabledReason {
    /// Quay's name.
    pub fn as_str(self) -> &'static str {
        match self {
            DisabledReason::SuccessiveBuildFailures => "successive_build_failures",
            DisabledReason::SuccessiveBuildInternalErrors => "successive_build_internal_errors",
            DisabledReason::UserToggled => "user_toggled",
        }
    }
}

/// Count the end of a build of trigger `trigger_uuid` in the caller's transaction: a success
/// resets both counts; a failure or internal error adds one to its count (and resets the other,
/// as Quay does) and disables the trigger when the count reaches its threshold. Returns the
/// reason when this call disabled it. An unknown (deleted) trigger is not an error.
pub fn record_outcome(
    conn: &Connection,
    trigger_uuid: &str,
    outcome: BuildOutcome,
    limits: TriggerLimits,
) -> Result<Option<DisabledReason>, BuildDbError> {
    let (failures, internal) = match outcome {
        BuildOutcome::Success => {
            conn.execute(
                "UPDATE build_trigger SET successive_failure_count = 0, \
                 successive_internal_error_count = 0 WHERE uuid = ?1",
                params![trigger_uuid],
            )?;
            return Ok(None);
        }
        BuildOutcome::Failure => (
            "successive_failure_count = successive_failure_count + 1, \
             successive_internal_error_count = 0",
            false,
        ),
        BuildOutcome::InternalError => (
            "successive_internal_error_count = successive_internal_error_count + 1, \
             successive_failure_count = 0",
            true,
        ),
    };
    conn.execute(
        &format!("UPDATE build_trigger SET {failures} WHERE uuid = ?1"),
        params![trigger_uuid],
    )?;
    let row: Option<(i64, i64, bool)> = conn
        .query_row(
            "SELECT successive_failure_count, successive_internal_error_count, enabled \
             FROM build_trigger WHERE uuid = ?1",
            params![trigger_uuid],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((fail_count, internal_count, enabled)) = row else {
        return Ok(None);
    };
    let (count, threshold, reason) = if internal {
        (
            internal_count,
            limits.internal_errors,
            DisabledReason::SuccessiveBuildInternalErrors,
        )
    } else {
        (
            fail_count,
            limits.failures,
            DisabledReason::SuccessiveBuildFailures,
        )
    };
    if !enabled || threshold == 0 || count < i64::from(threshold) {
        return Ok(None);
    }
    conn.execute(
        "UPDATE build_trigger SET enabled = 0, disabled_reason = ?1, disabled_at = ?2 \
         WHERE uuid = ?3",
        params![reason.as_str(), now_ms(), trigger_uuid],
    )?;
    Ok(Some(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(conn: &Connection) {
        conn.execute(
            "INSERT INTO build_trigger (uuid, service, repository, connected_user, public_key, \
             secure_private_key, created_at) VALUES ('t1', 'custom-git', 'acme/app', 'alice', \
             'ssh-rsa AAAA', x'00', 0)",
            [],
        )
        .unwrap();
    }

    fn state(conn: &Connection) -> (i64, i64, bool, Option<String>) {
        conn.query_row(
            "SELECT successive_failure_count, successive_internal_error_count, enabled, \
             disabled_reason FROM build_trigger WHERE uuid = 't1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap()
    }

    #[test]
    fn failures_in_a_row_disable_at_the_threshold_and_a_success_resets() {
        let (_d, db) = crate::db::test_support::db();
        let limits = TriggerLimits {
            failures: 3,
            internal_errors: 2,
        };
        db.write_blocking(|tx| {
            trigger(tx);
            let f = BuildOutcome::Failure;
            assert_eq!(record_outcome(tx, "t1", f, limits)?, None);
            assert_eq!(record_outcome(tx, "t1", f, limits)?, None);
            assert_eq!(
                record_outcome(tx, "t1", BuildOutcome::Success, limits)?,
                None
            );
            assert_eq!(state(tx), (0, 0, true, None));
            assert_eq!(record_outcome(tx, "t1", f, limits)?, None);
            assert_eq!(record_outcome(tx, "t1", f, limits)?, None);
            assert_eq!(
                record_outcome(tx, "t1", f, limits)?,
                Some(DisabledReason::SuccessiveBuildFailures)
            );
            let s = state(tx);
            assert_eq!((s.0, s.2), (3, false));
            assert_eq!(s.3.as_deref(), Some("successive_build_failures"));
            // Already disabled: not disabled again.
            assert_eq!(record_outcome(tx, "t1", f, limits)?, None);
            assert_eq!(record_outcome(tx, "missing", f, limits)?, None);
            Ok::<_, BuildDbError>(())
        })
        .unwrap();
    }

    #[test]
    fn internal_errors_have_their_own_count_and_zero_never_disables() {
        let (_d, db) = crate::db::test_support::db();
        db.write_blocking(|tx| {
            trigger(tx);
            let never = TriggerLimits {
                failures: 0,
                internal_errors: 0,
            };
            for _ in 0..10 {
                assert_eq!(
                    record_outcome(tx, "t1", BuildOutcome::Failure, never)?,
                    None
                );
            }
            let limits = TriggerLimits {
                failures: 100,
                internal_errors: 2,
            };
            let ie = BuildOutcome::InternalError;
            assert_eq!(record_outcome(tx, "t1", ie, limits)?, None);
            assert_eq!(state(tx).0, 0, "an internal error resets the failure count");
            assert_eq!(
                record_outcome(tx, "t1", ie, limits)?,
                Some(DisabledReason::SuccessiveBuildInternalErrors)
            );
            Ok::<_, BuildDbError>(())
        })
        .unwrap();
    }
}
