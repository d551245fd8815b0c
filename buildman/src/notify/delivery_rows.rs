//! The `notification_delivery` rows: the deliveries still to make, how they are claimed (leased)
//! and what a success or failure does to them and to their notification.

use registry_core::db::now_ms;
use rusqlite::{Connection, OptionalExtension as _, Row, params};
use serde_json::Value;

use super::model::{self, MAX_FAILURES, Notification};
use crate::db::BuildDbError;

/// A delivery still to make.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// Row id.
    pub id: i64,
    /// Failed attempts so far.
    pub attempts: i64,
    /// The event name.
    pub event: String,
    /// The event data.
    pub payload: Value,
    /// Its notification.
    pub notification: Notification,
}

/// The `SELECT` of deliveries joined with their notification, for [`delivery_from_row`]: the
/// notification's columns first, then the delivery's; `filter` is the rest of the statement.
fn select_deliveries(filter: &str) -> String {
    let cols = model::COLUMNS
        .split(", ")
        .map(|c| format!("n.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT {cols}, d.id, d.attempts, d.event, d.payload FROM notification_delivery d \
         JOIN repo_notification n ON n.uuid = d.notification_uuid {filter}"
    )
}

/// One row of [`select_deliveries`].
fn delivery_from_row(r: &Row<'_>) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        notification: model::from_row(r)?,
        id: r.get(8)?,
        attempts: r.get(9)?,
        event: r.get(10)?,
        payload: model::json_column(r, 11)?,
    })
}

/// Queue one delivery of `payload` for `notification_uuid`, due now.
pub fn queue(
    conn: &Connection,
    notification_uuid: &str,
    event: &str,
    payload: &Value,
) -> Result<(), BuildDbError> {
    let now = now_ms();
    conn.prepare_cached(
        "INSERT INTO notification_delivery (notification_uuid, event, payload, available_after, \
         created_at) VALUES (?1, ?2, ?3, ?4, ?4)",
    )?
    .execute(params![notification_uuid, event, payload.to_string(), now])?;
    Ok(())
}

/// Deliveries due at `now_ms`, oldest first, at most `limit`, with their notification.
pub fn due(conn: &Connection, now_ms: i64, limit: u32) -> Result<Vec<Delivery>, BuildDbError> {
    let mut stmt = conn.prepare_cached(&select_deliveries(
        "WHERE d.available_after <= ?1 ORDER BY d.available_after, d.id LIMIT ?2",
    ))?;
    let rows = stmt.query_map(params![now_ms, limit], delivery_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Claim the deliveries to make now, at most `limit`: for each notification only its oldest
/// pending delivery (so a notification has at most one delivery in flight and its events reach
/// the target in order), if it is due at `now_ms`. The claimed rows are leased: their
/// `available_after` moves to `now_ms + lease_ms`, so another process (or a later round) does not
/// send them too; the attempt's result replaces the lease, and a crash lets it expire. A claimed
/// row whose stored payload or notification does not parse is deleted with an error log.
pub fn claim(
    conn: &Connection,
    now_ms: i64,
    lease_ms: i64,
    limit: u32,
) -> Result<Vec<Delivery>, BuildDbError> {
    let mut stmt = conn.prepare_cached(&select_deliveries(
        "WHERE d.available_after <= ?1 AND d.id = (SELECT MIN(o.id) FROM notification_delivery o \
         WHERE o.notification_uuid = d.notification_uuid) \
         ORDER BY d.available_after, d.id LIMIT ?2",
    ))?;
    let rows = stmt.query_map(params![now_ms, limit], |r| {
        Ok((r.get::<_, i64>(8)?, delivery_from_row(r)))
    })?;
    let rows: Vec<(i64, rusqlite::Result<Delivery>)> = rows.collect::<Result<_, _>>()?;
    let until = now_ms.saturating_add(lease_ms);
    let mut lease =
        conn.prepare_cached("UPDATE notification_delivery SET available_after = ?1 WHERE id = ?2")?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, parsed) in rows {
        match parsed {
            Ok(d) => {
                lease.execute(params![until, id])?;
                out.push(d);
            }
            Err(e) => {
                tracing::error!(delivery_id = id, error = %e,
                    "dropped a notification delivery whose stored data does not parse");
                delete_one(conn, id)?;
            }
        }
    }
    Ok(out)
}

fn delete_one(conn: &Connection, id: i64) -> Result<(), BuildDbError> {
    conn.execute(
        "DELETE FROM notification_delivery WHERE id = ?1",
        params![id],
    )?;
    Ok(())
}

/// A delivery succeeded: forget it and reset its notification's failure count.
pub fn delivered(conn: &Connection, delivery: &Delivery) -> Result<(), BuildDbError> {
    delete_one(conn, delivery.id)?;
    conn.execute(
        "UPDATE repo_notification SET number_of_failures = 0 WHERE uuid = ?1",
        params![delivery.notification.uuid],
    )?;
    Ok(())
}
/// What [`failed`] did with a failed delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Tried again at the given time (ms).
    Retry {
        /// When.
        at_ms: i64,
    },
    /// Dropped: its attempts are used up.
    GaveUp,
    /// The notification reached [`MAX_FAILURES`]: this and its other pending deliveries dropped
    /// (how many in all).
    Stopped {
        /// Deliveries dropped.
        dropped: usize,
    },
    /// The notification was deleted meanwhile.
    Gone,
}

/// A delivery failed with `error`: count the failure on the notification, then retry it after
/// `backoff_ms` unless it has had `max_attempts` or the notification is stopped.
pub fn failed(
    conn: &Connection,
    delivery: &Delivery,
    error: &str,
    backoff_ms: i64,
    max_attempts: i64,
) -> Result<AfterFailure, BuildDbError> {
    let uuid = &delivery.notification.uuid;
    conn.execute(
        "UPDATE repo_notification SET number_of_failures = number_of_failures + 1 WHERE uuid = ?1",
        params![uuid],
    )?;
    let failures: Option<i64> = conn
        .query_row(
            "SELECT number_of_failures FROM repo_notification WHERE uuid = ?1",
            params![uuid],
            |r| r.get(0),
        )
        .optional()?;
    let Some(failures) = failures else {
        return Ok(AfterFailure::Gone);
    };
    if failures >= MAX_FAILURES {
        let dropped = drop_pending(conn, uuid)?;
        return Ok(AfterFailure::Stopped { dropped });
    }
    if delivery.attempts + 1 >= max_attempts {
        delete_one(conn, delivery.id)?;
        return Ok(AfterFailure::GaveUp);
    }
    let at_ms = now_ms().saturating_add(backoff_ms);
    conn.execute(
        "UPDATE notification_delivery SET attempts = attempts + 1, available_after = ?1, \
         last_error = ?2 WHERE id = ?3",
        params![at_ms, error, delivery.id],
    )?;
    Ok(AfterFailure::Retry { at_ms })
}

/// Drop the pending deliveries of a notification that is stopped by failures (it was stopped
/// after they were queued). Returns how many.
pub fn drop_pending(conn: &Connection, notification_uuid: &str) -> Result<usize, BuildDbError> {
    Ok(conn.execute(
        "DELETE FROM notification_delivery WHERE notification_uuid = ?1",
        params![notification_uuid],
    )?)
}
#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::notify::model::tests::new;
    use crate::notify::model::{create, delete, enabled_for, get, list, reset_failures};

    #[test]
    fn failures_retry_then_stop_the_notification_and_drop_its_deliveries() {
        let (_d, db) = crate::db::test_support::db();
        db.write_blocking(|tx| {
            let n = create(tx, &new("build_success"))?;
            assert_eq!(list(tx, "acme/app")?, vec![n.clone()]);
            assert!(get(tx, "other/app", &n.uuid)?.is_none());
            queue(tx, &n.uuid, "build_success", &json!({"a": 1}))?;
            queue(tx, &n.uuid, "build_success", &json!({"a": 2}))?;
            let due_now = due(tx, now_ms(), 10)?;
            assert_eq!(due_now.len(), 2);
            assert_eq!(due_now[0].payload, json!({"a": 1}));
            let first = failed(tx, &due_now[0], "boom", 60_000, 5)?;
            assert!(matches!(first, AfterFailure::Retry { .. }), "{first:?}");
            assert_eq!(due(tx, now_ms(), 10)?.len(), 1, "the retry waits");
            let second = failed(tx, &due_now[1], "boom", 0, 5)?;
            assert!(matches!(second, AfterFailure::Retry { .. }), "{second:?}");
            let again = due(tx, now_ms() + 120_000, 10)?;
            let third = failed(tx, &again[0], "boom", 0, 5)?;
            assert_eq!(third, AfterFailure::Stopped { dropped: 2 });
            assert!(enabled_for(tx, "acme/app", "build_success")?.is_empty());
            assert!(reset_failures(tx, "acme/app", &n.uuid)?);
            assert_eq!(enabled_for(tx, "acme/app", "build_success")?.len(), 1);
            Ok::<_, BuildDbError>(())
        })
        .unwrap();
    }

    #[test]
    fn claims_take_the_oldest_delivery_per_notification_and_lease_it() {
        let (_d, db) = crate::db::test_support::db();
        db.write_blocking(|tx| {
            let a = create(tx, &new("build_queued"))?;
            let b = create(tx, &new("build_queued"))?;
            for i in 0..3 {
                queue(tx, &a.uuid, "build_queued", &json!({"a": i}))?;
            }
            queue(tx, &b.uuid, "build_queued", &json!({"b": 0}))?;
            let now = now_ms();
            let first = claim(tx, now, 60_000, 10)?;
            let got: Vec<_> = first.iter().map(|d| d.payload.clone()).collect();
            assert_eq!(got, vec![json!({"a": 0}), json!({"b": 0})]);
            // Leased: nothing more of a or b until the lease ends or the attempt records.
            assert!(claim(tx, now, 60_000, 10)?.is_empty());
            let after: i64 = tx.query_row(
                "SELECT available_after FROM notification_delivery WHERE id = ?1",
                params![first[0].id],
                |r| r.get(0),
            )?;
            assert_eq!(after, now + 60_000);
            delivered(tx, &first[0])?;
            let next = claim(tx, now, 60_000, 10)?;
            assert_eq!(next.len(), 1);
            assert_eq!(next[0].payload, json!({"a": 1}));
            // A retry waiting keeps the later ones of the same notification back (order).
            failed(tx, &next[0], "boom", 30_000, 5)?;
            assert!(claim(tx, now_ms(), 60_000, 10)?.is_empty());
            // A lease that expired (a crashed process) is claimed again.
            assert_eq!(claim(tx, now + 120_000, 1, 10)?.len(), 2);
            Ok::<_, BuildDbError>(())
        })
        .unwrap();
    }

    #[test]
    fn unparsable_deliveries_are_dropped_not_fatal() {
        let (_d, db) = crate::db::test_support::db();
        db.write_blocking(|tx| {
            let good = create(tx, &new("build_start"))?;
            queue(tx, &good.uuid, "build_start", &json!({}))?;
            tx.execute("UPDATE notification_delivery SET payload = '{'", [])?;
            assert!(claim(tx, now_ms(), 1000, 10)?.is_empty());
            assert!(due(tx, i64::MAX, 10)?.is_empty(), "the bad row is dropped");
            Ok::<_, BuildDbError>(())
        })
        .unwrap();
    }

    #[test]
    fn attempts_are_capped_and_success_resets_the_count() {
        let (_d, db) = crate::db::test_support::db();
        db.write_blocking(|tx| {
            let n = create(tx, &new("repo_push"))?;
            queue(tx, &n.uuid, "repo_push", &json!({}))?;
            let mut d = due(tx, now_ms(), 1)?.remove(0);
            d.attempts = 4;
            assert_eq!(failed(tx, &d, "boom", 0, 5)?, AfterFailure::GaveUp);
            assert!(due(tx, i64::MAX, 10)?.is_empty());
            queue(tx, &n.uuid, "repo_push", &json!({}))?;
            let d = due(tx, now_ms(), 1)?.remove(0);
            assert_eq!(d.notification.number_of_failures, 1);
            delivered(tx, &d)?;
            assert_eq!(get(tx, "acme/app", &n.uuid)?.unwrap().number_of_failures, 0);
            assert!(delete(tx, "acme/app", &n.uuid)?);
            assert!(!delete(tx, "acme/app", &n.uuid)?);
            Ok::<_, BuildDbError>(())
        })
        .unwrap();
    }
}
