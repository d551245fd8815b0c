//! The dispatcher: takes `build_event` rows in id order and, for each, in one write transaction,
//! queues a delivery per enabled notification of the build's repository and event whose
//! `ref-regex` passes, counts the outcome of a trigger's final build (disabling the trigger at its
//! threshold), and deletes the event.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::check::ref_matches;
use super::payload::{Urls, build_event_data};
use super::{delivery_rows, model};
use crate::db::BuildDbError;
use crate::events::BuildEvent;
use crate::model::{self as builds, Phase};
use crate::trigger::{BuildOutcome, DisabledReason, TriggerLimits, record_outcome};

/// What handling one event did (for logs and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dispatched {
    /// The event row's id.
    pub event_id: i64,
    /// The build.
    pub build_uuid: String,
    /// The event name.
    pub event: String,
    /// Deliveries queued.
    pub deliveries: usize,
    /// The trigger this event disabled, and why.
    pub disabled: Option<(String, DisabledReason)>,
}

/// How a build event counts for its trigger.
fn outcome(event: BuildEvent, phase: Phase) -> Option<BuildOutcome> {
    match (event, phase) {
        (BuildEvent::Success, _) => Some(BuildOutcome::Success),
        (BuildEvent::Failure, Phase::InternalError) => Some(BuildOutcome::InternalError),
        (BuildEvent::Failure, _) => Some(BuildOutcome::Failure),
        _ => None,
    }
}

/// The id of the oldest `build_event` row, if any.
pub fn next_event(conn: &Connection) -> Result<Option<i64>, BuildDbError> {
    Ok(conn
        .query_row("SELECT MIN(id) FROM build_event", [], |r| r.get(0))
        .optional()?
        .flatten())
}

/// Delete the event `event_id` (a poison event, after its handling failed). Returns whether it
/// was there.
pub fn drop_event(tx: &Connection, event_id: i64) -> Result<bool, BuildDbError> {
    Ok(tx.execute("DELETE FROM build_event WHERE id = ?1", params![event_id])? == 1)
}

/// Whether a failure of handling an event may pass (the database busy, out of space, I/O): the
/// event is tried again. Anything else (a row that does not parse, a constraint) would fail the
/// same way forever, so the event is dropped rather than stalling the outbox.
pub fn is_transient(e: &BuildDbError) -> bool {
    use registry_core::db::DbError;
    use rusqlite::ErrorCode as C;
    match e {
        BuildDbError::Db(DbError::Join(_) | DbError::Open { .. }) => true,
        BuildDbError::Db(DbError::Sqlite(rusqlite::Error::SqliteFailure(f, _))) => matches!(
            f.code,
            C::DatabaseBusy
                | C::DatabaseLocked
                | C::SystemIoFailure
                | C::DiskFull
                | C::OutOfMemory
                | C::CannotOpen
                | C::ReadOnly
        ),
        _ => false,
    }
}

/// Handle the oldest `build_event` row, if any, in the caller's transaction.
pub fn dispatch_one(
    tx: &Connection,
    urls: &Urls,
    limits: TriggerLimits,
) -> Result<Option<Dispatched>, BuildDbError> {
    match next_event(tx)? {
        Some(id) => dispatch_event(tx, id, urls, limits),
        None => Ok(None),
    }
}

/// Handle the `build_event` row `event_id` in the caller's transaction (`None`: it is gone).
pub fn dispatch_event(
    tx: &Connection,
    event_id: i64,
    urls: &Urls,
    limits: TriggerLimits,
) -> Result<Option<Dispatched>, BuildDbError> {
    let row: Option<(String, String, Option<String>)> = tx
        .query_row(
            "SELECT build_uuid, event, message FROM build_event WHERE id = ?1",
            params![event_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((build_uuid, name, message)) = row else {
        return Ok(None);
    };
    tx.execute("DELETE FROM build_event WHERE id = ?1", params![event_id])?;
    let mut done = Dispatched {
        event_id,
        build_uuid: build_uuid.clone(),
        event: name.clone(),
        ..Dispatched::default()
    };
    let (Some(event), Some(build)) = (BuildEvent::from_name(&name), builds::get(tx, &build_uuid)?)
    else {
        // An unknown event name or a build deleted meanwhile: nothing to say about it.
        tracing::warn!(event_id, event = %name, build_id = %build_uuid,
            "dropped a build event whose build or kind is unknown");
        return Ok(Some(done));
    };
    let trigger_kind: Option<String> = match &build.trigger_uuid {
        Some(t) => tx
            .query_row(
                "SELECT service FROM build_trigger WHERE uuid = ?1",
                params![t],
                |r| r.get(0),
            )
            .optional()?,
        None => None,
    };
    let data = build_event_data(
        urls,
        &build,
        event,
        trigger_kind.as_deref(),
        message.as_deref(),
    );
    for n in model::enabled_for(tx, &build.repository, &name)? {
        if ref_matches(&n.event_config, &data) {
            delivery_rows::queue(tx, &n.uuid, &name, &data)?;
            done.deliveries += 1;
        }
    }
    if let (Some(trigger), Some(outcome)) = (&build.trigger_uuid, outcome(event, build.phase))
        && let Some(reason) = record_outcome(tx, trigger, outcome, limits)?
    {
        done.disabled = Some((trigger.clone(), reason));
    }
    Ok(Some(done))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::{GitSource, JobConfig, NewBuild};
    use crate::notify::model::NewNotification;

    fn urls() -> Urls {
        Urls {
            public_base_url: "http://q.test".into(),
            server_hostname: "q.test".into(),
        }
    }

    fn notification(tx: &Connection, event: &str, event_config: serde_json::Value) -> String {
        model::create(
            tx,
            &NewNotification {
                repository: "acme/app".into(),
                event: event.into(),
                method: "webhook".into(),
                title: None,
                config: json!({"url": "https://h.example/x"}),
                event_config,
                created_by: "alice".into(),
            },
        )
        .unwrap()
        .uuid
    }

    #[test]
    fn queued_events_become_deliveries_filtered_by_ref() {
        let (_d, db) = crate::db::test_support::db();
        db.write_blocking(|tx| {
            notification(tx, "build_queued", json!({}));
            notification(tx, "build_queued", json!({"ref-regex": "refs/heads/main"}));
            notification(tx, "build_queued", json!({"ref-regex": "refs/tags/"}));
            notification(tx, "build_success", json!({}));
            let b = builds::create(
                tx,
                &NewBuild {
                    repository: "acme/app".into(),
                    display_name: "0123456".into(),
                    job_config: JobConfig {
                        git: Some(GitSource::default()),
                        trigger_metadata: json!({"ref": "refs/heads/main", "commit": "0123456"}),
                        ..JobConfig::default()
                    },
                    trigger_uuid: Some("t1".into()),
                    max_retries: 3,
                    ..NewBuild::default()
                },
            )?;
            let d = dispatch_one(
                tx,
                &urls(),
                TriggerLimits {
                    failures: 1,
                    internal_errors: 1,
                },
            )?
            .unwrap();
            assert_eq!((d.event.as_str(), d.deliveries), ("build_queued", 2));
            assert_eq!(d.build_uuid, b.uuid);
            assert!(
                dispatch_one(
                    tx,
                    &urls(),
                    TriggerLimits {
                        failures: 1,
                        internal_errors: 1
                    }
                )?
                .is_none()
            );
            let due = delivery_rows::due(tx, i64::MAX, 10)?;
            assert_eq!(due.len(), 2);
            assert_eq!(due[0].payload["build_id"], b.uuid.as_str());
            assert_eq!(due[0].payload["is_manual"], false);
            assert_eq!(due[0].payload["trigger_id"], "t1");
            assert_eq!(due[0].payload["trigger_kind"], serde_json::Value::Null);
            Ok::<_, BuildDbError>(())
        })
        .unwrap();
    }
}
