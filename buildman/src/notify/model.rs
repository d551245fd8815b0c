//! The `repo_notification` rows: what to notify of which repository event. The deliveries still
//! to make are in [`super::delivery_rows`].

use registry_core::db::now_ms;
use rusqlite::{Connection, OptionalExtension as _, Row, params};
use serde_json::Value;

use crate::db::BuildDbError;

/// Quay's `get_enabled_notification`: a notification with this many failures in a row is not
/// sent (nor queued) until a user resets it.
pub const MAX_FAILURES: i64 = 3;

/// A repository notification as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    /// Public id.
    pub uuid: String,
    /// `<namespace>/<repository>`.
    pub repository: String,
    /// The event name (`build_success`, `repo_push`, ...).
    pub event: String,
    /// The method name (`webhook`, `slack`, `email`, `quay_notification`).
    pub method: String,
    /// Free text.
    pub title: Option<String>,
    /// The method's config (`url`, `email`, `template`, `target`).
    pub config: Value,
    /// The event's config (`ref-regex`).
    pub event_config: Value,
    /// Failed deliveries in a row.
    pub number_of_failures: i64,
}

/// What [`create`] needs.
#[derive(Clone, Debug)]
pub struct NewNotification {
    /// `<namespace>/<repository>`.
    pub repository: String,
    /// The event name.
    pub event: String,
    /// The method name.
    pub method: String,
    /// Free text.
    pub title: Option<String>,
    /// The method's config.
    pub config: Value,
    /// The event's config.
    pub event_config: Value,
    /// The user who created it.
    pub created_by: String,
}

/// The columns [`from_row`] reads, in its order.
pub(super) const COLUMNS: &str =
    "uuid, repository, event, method, title, config, event_config, number_of_failures";

/// Column `i` as stored JSON text.
pub(super) fn json_column(r: &Row<'_>, i: usize) -> rusqlite::Result<Value> {
    let text: String = r.get(i)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A notification from the first columns of `r`, as [`COLUMNS`] names them.
pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<Notification> {
    Ok(Notification {
        uuid: r.get(0)?,
        repository: r.get(1)?,
        event: r.get(2)?,
        method: r.get(3)?,
        title: r.get(4)?,
        config: json_column(r, 5)?,
        event_config: json_column(r, 6)?,
        number_of_failures: r.get(7)?,
    })
}

/// Insert a notification.
pub fn create(conn: &Connection, new: &NewNotification) -> Result<Notification, BuildDbError> {
    let uuid = uuid::Uuid::new_v4().to_string();
    conn.execute(
        "INSERT INTO repo_notification (uuid, repository, event, method, title, config, \
         event_config, created_by, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            uuid,
            new.repository,
            new.event,
            new.method,
            new.title,
            new.config.to_string(),
            new.event_config.to_string(),
            new.created_by,
            now_ms()
        ],
    )?;
    get(conn, &new.repository, &uuid)?.ok_or(BuildDbError::NotFound(uuid))
}

/// The notifications of `repository`, oldest first.
pub fn list(conn: &Connection, repository: &str) -> Result<Vec<Notification>, BuildDbError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM repo_notification WHERE repository = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map(params![repository], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The notification `uuid` of `repository`, if any.
pub fn get(
    conn: &Connection,
    repository: &str,
    uuid: &str,
) -> Result<Option<Notification>, BuildDbError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM repo_notification WHERE uuid = ?1 AND repository = ?2"
        ))?
        .query_row(params![uuid, repository], from_row)
        .optional()?)
}

/// Delete the notification `uuid` of `repository` (its deliveries go with it). Returns whether
/// it existed.
pub fn delete(conn: &Connection, repository: &str, uuid: &str) -> Result<bool, BuildDbError> {
    conn.execute(
        "DELETE FROM notification_delivery WHERE notification_uuid = ?1 AND EXISTS \
         (SELECT 1 FROM repo_notification WHERE uuid = ?1 AND repository = ?2)",
        params![uuid, repository],
    )?;
    let n = conn.execute(
        "DELETE FROM repo_notification WHERE uuid = ?1 AND repository = ?2",
        params![uuid, repository],
    )?;
    Ok(n == 1)
}

/// Quay's reset: the failure count back to 0, so the notification is sent again. Returns whether
/// it existed.
pub fn reset_failures(
    conn: &Connection,
    repository: &str,
    uuid: &str,
) -> Result<bool, BuildDbError> {
    let n = conn.execute(
        "UPDATE repo_notification SET number_of_failures = 0 WHERE uuid = ?1 AND repository = ?2",
        params![uuid, repository],
    )?;
    Ok(n == 1)
}

/// The notifications of `repository` for `event` that are not stopped by failures. A row whose
/// stored config or event config is not JSON (a hand-edited database) is skipped with an error
/// log, so that it cannot keep the others from being notified.
pub fn enabled_for(
    conn: &Connection,
    repository: &str,
    event: &str,
) -> Result<Vec<Notification>, BuildDbError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM repo_notification WHERE repository = ?1 AND event = ?2 \
         AND number_of_failures < ?3 ORDER BY id"
    ))?;
    let rows = stmt.query_map(params![repository, event, MAX_FAILURES], |r| {
        Ok((r.get::<_, String>(0)?, from_row(r)))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (uuid, parsed) = row?;
        match parsed {
            Ok(n) => out.push(n),
            Err(e) => tracing::error!(notification = %uuid, repository, event, error = %e,
                "skipped a notification whose stored config does not parse"),
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(super) mod tests {
    use serde_json::json;

    use super::*;

    /// A webhook notification of `acme/app` for `event`.
    pub(in crate::notify) fn new(event: &str) -> NewNotification {
        NewNotification {
            repository: "acme/app".into(),
            event: event.into(),
            method: "webhook".into(),
            title: Some("hook".into()),
            config: json!({"url": "https://hooks.example.com/x"}),
            event_config: json!({}),
            created_by: "alice".into(),
        }
    }

    #[test]
    fn rows_are_scoped_to_their_repository_and_reset_and_deleted_once() {
        let (_d, db) = crate::db::test_support::db();
        db.write_blocking(|tx| {
            let n = create(tx, &new("build_success"))?;
            assert_eq!(list(tx, "acme/app")?, vec![n.clone()]);
            assert!(get(tx, "other/app", &n.uuid)?.is_none());
            assert!(!reset_failures(tx, "other/app", &n.uuid)?);
            assert!(reset_failures(tx, "acme/app", &n.uuid)?);
            assert!(!delete(tx, "other/app", &n.uuid)?);
            assert!(delete(tx, "acme/app", &n.uuid)?);
            assert!(!delete(tx, "acme/app", &n.uuid)?);
            Ok::<_, BuildDbError>(())
        })
        .unwrap();
    }

    #[test]
    fn unparsable_notifications_are_skipped_not_fatal() {
        let (_d, db) = crate::db::test_support::db();
        db.write_blocking(|tx| {
            let good = create(tx, &new("build_start"))?;
            let bad = create(tx, &new("build_start"))?;
            tx.execute(
                "UPDATE repo_notification SET config = 'not json' WHERE uuid = ?1",
                params![bad.uuid],
            )?;
            let found = enabled_for(tx, "acme/app", "build_start")?;
            assert_eq!(found, vec![good.clone()]);
            Ok::<_, BuildDbError>(())
        })
        .unwrap();
    }
}
