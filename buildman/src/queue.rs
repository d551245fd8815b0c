//! The durable build queue (Quay's `QueueItem` semantics, in buildman's database).
//!
//! An item is available when `available_after <= now` and it is either not claimed or its claim
//! expired (`processing_expires <= now`), and it has retries left. Claiming decrements
//! `retries_remaining` and changes `state_id`, so two managers racing for one item cannot both
//! win. Unlike Quay, a manager checks its capacity *before* claiming, so waiting for a free worker
//! never consumes a retry.

use registry_core::db::now_ms;
use rusqlite::{Connection, OptionalExtension as _, params};

use crate::db::BuildDbError;

/// A claimed queue item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueItem {
    /// Row id.
    pub id: i64,
    /// The build.
    pub build_uuid: String,
    /// `dockerfilebuild/<namespace>/<repo>/`.
    pub queue_name: String,
    /// Retries left *after* this claim (Quay: 2, 1, 0 on attempts 1, 2, 3).
    pub retries_remaining: u32,
    /// Claim token.
    pub state_id: String,
}

/// Quay's queue name for a repository's builds.
pub fn queue_name(repository: &str) -> String {
    format!("dockerfilebuild/{repository}/")
}

/// Enqueue the build `uuid` of `repository` with `retries` attempts, available after
/// `delay_ms`.
pub fn put(
    conn: &Connection,
    uuid: &str,
    repository: &str,
    retries: u32,
    delay_ms: i64,
) -> Result<i64, BuildDbError> {
    let body = serde_json::json!({ "build_uuid": uuid }).to_string();
    conn.execute(
        "INSERT INTO queue_item (queue_name, body, build_uuid, available_after, available, \
         retries_remaining, state_id) VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6)",
        params![
            queue_name(repository),
            body,
            uuid,
            now_ms() + delay_ms,
            retries,
            uuid::Uuid::new_v4().to_string()
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Claim the oldest available item for `processing_ms`.
///
/// With `ordering_required`, items whose queue (repository) already has a running item are
/// skipped, so one repository's builds run one at a time, in order.
pub fn claim(
    conn: &Connection,
    processing_ms: i64,
    ordering_required: bool,
) -> Result<Option<QueueItem>, BuildDbError> {
    let now = now_ms();
    let sql = if ordering_required {
        "SELECT q.id, q.build_uuid, q.queue_name, q.retries_remaining, q.state_id FROM queue_item q \
         WHERE q.available_after <= ?1 AND (q.available = 1 OR q.processing_expires <= ?1) \
           AND q.retries_remaining > 0 \
           AND NOT EXISTS (SELECT 1 FROM queue_item r WHERE r.queue_name = q.queue_name \
                           AND r.available = 0 AND r.processing_expires > ?1) \
           AND NOT EXISTS (SELECT 1 FROM queue_item e WHERE e.queue_name = q.queue_name \
                           AND e.id < q.id AND e.retries_remaining > 0) \
         ORDER BY q.id LIMIT 1"
    } else {
        "SELECT q.id, q.build_uuid, q.queue_name, q.retries_remaining, q.state_id FROM queue_item q \
         WHERE q.available_after <= ?1 AND (q.available = 1 OR q.processing_expires <= ?1) \
           AND q.retries_remaining > 0 \
         ORDER BY q.id LIMIT 1"
    };
    let found = conn
        .prepare_cached(sql)?
        .query_row(params![now], |r| {
            Ok(QueueItem {
                id: r.get(0)?,
                build_uuid: r.get(1)?,
                queue_name: r.get(2)?,
                retries_remaining: r.get(3)?,
                state_id: r.get(4)?,
            })
        })
        .optional()?;
    let Some(mut item) = found else {
        return Ok(None);
    };
    let state_id = uuid::Uuid::new_v4().to_string();
    let n = conn.execute(
        "UPDATE queue_item SET available = 0, processing_expires = ?1, \
         retries_remaining = retries_remaining - 1, state_id = ?2 WHERE id = ?3 AND state_id = ?4",
        params![now + processing_ms, state_id, item.id, item.state_id],
    )?;
    if n != 1 {
        return Ok(None);
    }
    item.retries_remaining = item.retries_remaining.saturating_sub(1);
    item.state_id = state_id;
    Ok(Some(item))
}

/// Remove the item of build `uuid` (it ended, or was cancelled). Returns whether one existed.
pub fn complete(conn: &Connection, uuid: &str) -> Result<bool, BuildDbError> {
    Ok(conn.execute(
        "DELETE FROM queue_item WHERE build_uuid = ?1",
        params![uuid],
    )? == 1)
}

/// Put the item of build `uuid` back, available after `retry_after_ms`; with `restore_retry` the
/// claim's retry is given back. Returns the retries now remaining, or `None` without an item.
pub fn incomplete(
    conn: &Connection,
    uuid: &str,
    retry_after_ms: i64,
    restore_retry: bool,
) -> Result<Option<u32>, BuildDbError> {
    conn.execute(
        "UPDATE queue_item SET available = 1, processing_expires = NULL, available_after = ?1, \
         retries_remaining = retries_remaining + ?2 WHERE build_uuid = ?3",
        params![now_ms() + retry_after_ms, i64::from(restore_retry), uuid],
    )?;
    retries_remaining(conn, uuid)
}

/// Keep the claim of build `uuid` for `ms` from now; only written when it moves the expiry by
/// more than `minimum_ms` (Quay's `MINIMUM_JOB_EXTENSION`).
pub fn extend(conn: &Connection, uuid: &str, ms: i64, minimum_ms: i64) -> Result<(), BuildDbError> {
    let target = now_ms() + ms;
    conn.execute(
        "UPDATE queue_item SET processing_expires = ?1 WHERE build_uuid = ?2 AND available = 0 \
         AND (processing_expires IS NULL OR ?1 - processing_expires > ?3)",
        params![target, uuid, minimum_ms],
    )?;
    Ok(())
}

/// Retries left for build `uuid`'s item, or `None` without an item.
pub fn retries_remaining(conn: &Connection, uuid: &str) -> Result<Option<u32>, BuildDbError> {
    Ok(conn
        .query_row(
            "SELECT retries_remaining FROM queue_item WHERE build_uuid = ?1",
            params![uuid],
            |r| r.get(0),
        )
        .optional()?)
}

/// Whether build `uuid`'s item is claimed and its claim still valid.
pub fn is_claimed(conn: &Connection, uuid: &str) -> Result<bool, BuildDbError> {
    Ok(conn
        .query_row(
            "SELECT available = 0 AND processing_expires > ?1 FROM queue_item WHERE build_uuid = ?2",
            params![now_ms(), uuid],
            |r| r.get::<_, bool>(0),
        )
        .optional()?
        .unwrap_or(false))
}

/// Whether build `uuid`'s item is still claimed under the claim `state_id` (not put back,
/// removed or claimed again since): the attempt that claimed it is the one to finish it.
pub fn is_current_claim(
    conn: &Connection,
    uuid: &str,
    state_id: &str,
) -> Result<bool, BuildDbError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM queue_item WHERE build_uuid = ?1 AND state_id = ?2 AND available = 0",
            params![uuid, state_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Builds whose item is claimed with a claim still valid (startup recovery releases those the
/// previous process claimed but never started).
pub fn claimed(conn: &Connection) -> Result<Vec<String>, BuildDbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT build_uuid FROM queue_item WHERE available = 0 AND processing_expires > ?1",
    )?;
    let rows = stmt.query_map(params![now_ms()], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Items with no retries left whose build is not final: attempts exhausted (recovery closes them).
pub fn exhausted(conn: &Connection) -> Result<Vec<String>, BuildDbError> {
    let now = now_ms();
    let mut stmt = conn.prepare_cached(
        "SELECT build_uuid FROM queue_item WHERE retries_remaining <= 0 \
         AND (available = 1 OR processing_expires <= ?1)",
    )?;
    let rows = stmt.query_map(params![now], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Milliseconds until the next item becomes available by time (for the scheduler's sleep), if
/// any item is waiting on `available_after` or a claim expiry.
pub fn next_wakeup_ms(conn: &Connection) -> Result<Option<i64>, BuildDbError> {
    let now = now_ms();
    let next: Option<i64> = conn.query_row(
        "SELECT MIN(CASE WHEN available = 1 THEN available_after ELSE processing_expires END) \
         FROM queue_item WHERE retries_remaining > 0",
        [],
        |r| r.get(0),
    )?;
    Ok(next.map(|t| (t - now).max(0)))
}

/// The row id of build `uuid` while the attempt whose queue claim is `attempt_id` is its running
/// one (claimed under that id, and the build neither final nor closed); `None` otherwise. An
/// empty `attempt_id` (a token from before attempt ids) matches any running attempt.
///
/// Agents' log lines are appended only after this check, in the same transaction, so a line
/// from an earlier attempt never lands in a later attempt's (or a finished build's) log.
pub fn live_attempt_row(
    conn: &Connection,
    uuid: &str,
    attempt_id: &str,
) -> Result<Option<i64>, BuildDbError> {
    Ok(conn
        .prepare_cached(
            "SELECT b.id FROM build b JOIN queue_item q ON q.build_uuid = b.uuid \
             WHERE b.uuid = ?1 AND q.available = 0 AND (?2 = '' OR q.state_id = ?2) \
             AND b.completed_at IS NULL AND b.phase NOT IN ('complete', 'error', 'cancelled')",
        )?
        .query_row(params![uuid, attempt_id], |r| r.get(0))
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_support;
    use crate::model::{self, NewBuild, Phase};

    fn new_build(conn: &Connection, repo: &str) -> String {
        let new = NewBuild {
            repository: repo.into(),
            display_name: "t".into(),
            max_retries: 3,
            ..NewBuild::default()
        };
        model::create(conn, &new).unwrap().uuid
    }

    #[tokio::test]
    async fn claims_count_down_retries_and_complete_removes() {
        let (_d, db) = test_support::db();
        db.write(|c| {
            let a = new_build(c, "acme/app");
            let first = claim(c, 60_000, true)?.unwrap();
            assert_eq!(
                (first.build_uuid.as_str(), first.retries_remaining),
                (a.as_str(), 2)
            );
            // claimed: nothing else available
            assert!(claim(c, 60_000, true)?.is_none());
            assert_eq!(incomplete(c, &a, 0, false)?, Some(2));
            assert_eq!(claim(c, 60_000, true)?.unwrap().retries_remaining, 1);
            assert_eq!(incomplete(c, &a, 0, true)?, Some(2));
            assert!(complete(c, &a)?);
            assert!(claim(c, 60_000, true)?.is_none());
            Ok::<_, BuildDbError>(())
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn one_repository_runs_in_order_unless_ordering_is_off() {
        let (_d, db) = test_support::db();
        db.write(|c| {
            let a1 = new_build(c, "acme/app");
            let a2 = new_build(c, "acme/app");
            let b1 = new_build(c, "acme/other");
            assert_eq!(claim(c, 60_000, true)?.unwrap().build_uuid, a1);
            // a2 waits behind a1; b1 is another repository
            assert_eq!(claim(c, 60_000, true)?.unwrap().build_uuid, b1);
            assert!(claim(c, 60_000, true)?.is_none());
            assert_eq!(claim(c, 60_000, false)?.unwrap().build_uuid, a2);
            Ok::<_, BuildDbError>(())
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn expired_claims_come_back_and_retry_after_is_honoured() {
        let (_d, db) = test_support::db();
        db.write(|c| {
            let a = new_build(c, "acme/app");
            claim(c, -1, true)?.unwrap(); // a claim that has already expired (crashed manager)
            let again = claim(c, 60_000, true)?.unwrap();
            assert_eq!(
                (again.build_uuid.as_str(), again.retries_remaining),
                (a.as_str(), 1)
            );
            incomplete(c, &a, 60_000, false)?;
            assert!(claim(c, 60_000, true)?.is_none());
            assert!(next_wakeup_ms(c)?.unwrap() > 50_000);
            Ok::<_, BuildDbError>(())
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn final_phases_are_never_left() {
        let (_d, db) = test_support::db();
        db.write(|c| {
            let a = new_build(c, "acme/app");
            assert!(model::set_phase_cas(
                c,
                &a,
                Some(Phase::Waiting),
                Phase::BuildScheduled,
                None
            )?);
            assert!(!model::set_phase_cas(
                c,
                &a,
                Some(Phase::Waiting),
                Phase::Pulling,
                None
            )?);
            assert!(model::set_phase_cas(c, &a, None, Phase::Cancelled, None)?);
            assert!(!model::set_phase_cas(c, &a, None, Phase::Complete, None)?);
            let b = model::get(c, &a)?.unwrap();
            assert_eq!(b.phase, Phase::Cancelled);
            assert!(b.completed_ms.is_some());
            assert_eq!(b.job_config.docker_tags, vec!["latest".to_owned()]);
            Ok::<_, BuildDbError>(())
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_build_closed_as_internalerror_never_moves_again() {
        let (_d, db) = test_support::db();
        db.write(|c| {
            let a = new_build(c, "acme/app");
            assert!(model::set_phase_cas(c, &a, None, Phase::Building, None)?);
            assert!(model::close_internal_error(c, &a, "out of attempts")?);
            assert!(!model::close_internal_error(c, &a, "again")?, "closed once");
            // Neither a late agent (any phase) nor a strict compare-and-set reopens it.
            assert!(!model::set_phase_cas(c, &a, None, Phase::Pushing, None)?);
            assert!(!model::set_phase_cas(
                c,
                &a,
                Some(Phase::InternalError),
                Phase::Waiting,
                None
            )?);
            let b = model::get(c, &a)?.unwrap();
            assert_eq!(b.phase, Phase::InternalError);
            assert_eq!(b.error.as_deref(), Some("out of attempts"));
            Ok::<_, BuildDbError>(())
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn only_the_current_claim_of_a_running_build_is_a_live_attempt() {
        let (_d, db) = test_support::db();
        db.write(|c| {
            let a = new_build(c, "acme/app");
            let id = model::get(c, &a)?.unwrap().id;
            // Waiting, not claimed: no attempt runs.
            assert_eq!(live_attempt_row(c, &a, "")?, None);
            let item = claim(c, 60_000, true)?.unwrap();
            assert_eq!(live_attempt_row(c, &a, &item.state_id)?, Some(id));
            assert_eq!(live_attempt_row(c, &a, "")?, Some(id));
            assert_eq!(live_attempt_row(c, &a, "an-earlier-claim")?, None);
            assert_eq!(live_attempt_row(c, "other", &item.state_id)?, None);
            // Put back (the attempt ended): its claim no longer counts.
            incomplete(c, &a, 0, false)?;
            assert_eq!(live_attempt_row(c, &a, &item.state_id)?, None);
            // Claimed again (the next attempt), then the build ended.
            let again = claim(c, 60_000, true)?.unwrap();
            assert_eq!(live_attempt_row(c, &a, &again.state_id)?, Some(id));
            assert!(model::close_internal_error(c, &a, "gave up")?);
            assert_eq!(live_attempt_row(c, &a, &again.state_id)?, None);
            Ok::<_, BuildDbError>(())
        })
        .await
        .unwrap();
    }
}
