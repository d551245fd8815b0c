//! The in-app notification list (`user_notification`): what method `quay_notification` writes
//! and `/api/v1/user/notifications` shows.

use registry_core::db::now_ms;
use rusqlite::{Connection, params};
use serde_json::Value;

use crate::db::BuildDbError;

/// Dismissed notifications older than this are deleted (30 days).
pub const DISMISSED_KEEP_MS: i64 = 30 * 24 * 3600 * 1000;
/// At most this many notifications are kept per user.
pub const MAX_PER_USER: u32 = 1000;

/// One in-app notification of a user.
#[derive(Clone, Debug, PartialEq)]
pub struct UserNotification {
    /// Public id.
    pub uuid: String,
    /// The event name (Quay's notification kind).
    pub kind: String,
    /// The event data.
    pub metadata: Value,
    /// Whether the user dismissed it.
    pub dismissed: bool,
    /// Creation time (ms).
    pub created_ms: i64,
}

/// Add one notification of `kind` with `metadata` for each of `usernames`.
pub fn add(
    conn: &Connection,
    usernames: &[String],
    kind: &str,
    metadata: &Value,
) -> Result<(), BuildDbError> {
    let now = now_ms();
    let text = metadata.to_string();
    let mut stmt = conn.prepare_cached(
        "INSERT INTO user_notification (uuid, username, kind, metadata, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for user in usernames {
        stmt.execute(params![
            uuid::Uuid::new_v4().to_string(),
            user,
            kind,
            text,
            now
        ])?;
    }
    Ok(())
}

/// The notifications of `username`, newest first (at most `limit`).
pub fn list(
    conn: &Connection,
    username: &str,
    limit: u32,
) -> Result<Vec<UserNotification>, BuildDbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT uuid, kind, metadata, dismissed, created_at FROM user_notification \
         WHERE username = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![username, limit], |r| {
        let text: String = r.get(2)?;
        Ok(UserNotification {
            uuid: r.get(0)?,
            kind: r.get(1)?,
            // A row this module wrote is JSON; anything else shows as null, not an error.
            metadata: serde_json::from_str(&text).unwrap_or(Value::Null),
            dismissed: r.get(3)?,
            created_ms: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Set `dismissed` on the notification `uuid` of `username`. Returns whether it is theirs.
pub fn set_dismissed(
    conn: &Connection,
    username: &str,
    uuid: &str,
    dismissed: bool,
) -> Result<bool, BuildDbError> {
    let n = conn.execute(
        "UPDATE user_notification SET dismissed = ?1 WHERE uuid = ?2 AND username = ?3",
        params![dismissed, uuid, username],
    )?;
    Ok(n == 1)
}

/// The retention: delete dismissed notifications created before `now_ms - dismissed_keep_ms`,
/// then keep at most `max_per_user` rows per user, deleting the oldest dismissed ones first,
/// then the oldest. Returns the rows deleted.
pub fn prune(
    conn: &Connection,
    now_ms: i64,
    dismissed_keep_ms: i64,
    max_per_user: u32,
) -> Result<usize, BuildDbError> {
    let old = conn.execute(
        "DELETE FROM user_notification WHERE dismissed != 0 AND created_at < ?1",
        params![now_ms.saturating_sub(dismissed_keep_ms)],
    )?;
    let over = conn.execute(
        "DELETE FROM user_notification WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() \
         OVER (PARTITION BY username ORDER BY dismissed != 0, created_at DESC, id DESC) AS n \
         FROM user_notification) WHERE n > ?1)",
        params![max_per_user],
    )?;
    Ok(old + over)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn retention_drops_old_dismissed_rows_then_caps_each_user() {
        let (_d, db) = crate::db::test_support::db();
        db.write_blocking(|tx| {
            let day = 24 * 3600 * 1000;
            let now = 100 * day;
            let put = |user: &str, age_days: i64, dismissed: bool, tag: &str| {
                tx.execute(
                    "INSERT INTO user_notification (uuid, username, kind, metadata, dismissed, \
                     created_at) VALUES (?1, ?2, 'build_success', '{}', ?3, ?4)",
                    params![tag, user, dismissed, now - age_days * day],
                )
            };
            put("alice", 31, true, "old-dismissed")?;
            put("alice", 31, false, "old-unread")?;
            put("alice", 29, true, "recent-dismissed")?;
            put("alice", 1, false, "new-unread")?;
            put("alice", 40, false, "oldest-unread")?;
            put("bob", 50, true, "bob-old-dismissed")?;
            put("bob", 2, false, "bob-unread")?;
            // 30 days: only alice's and bob's old dismissed rows go.
            assert_eq!(prune(tx, now, DISMISSED_KEEP_MS, 10)?, 2);
            let ids = |user: &str| -> Vec<String> {
                let mut v: Vec<String> = list(tx, user, 50)
                    .unwrap()
                    .into_iter()
                    .map(|n| n.uuid)
                    .collect();
                v.sort();
                v
            };
            assert_eq!(
                ids("alice"),
                [
                    "new-unread",
                    "old-unread",
                    "oldest-unread",
                    "recent-dismissed"
                ]
            );
            // Cap 2: the dismissed row goes first, then the oldest unread one.
            assert_eq!(prune(tx, now, DISMISSED_KEEP_MS, 2)?, 2);
            assert_eq!(ids("alice"), ["new-unread", "old-unread"]);
            assert_eq!(ids("bob"), ["bob-unread"]);
            Ok::<_, BuildDbError>(())
        })
        .unwrap();
    }

    #[test]
    fn rows_per_user_and_dismissal_only_by_their_owner() {
        let (_d, db) = crate::db::test_support::db();
        db.write_blocking(|tx| {
            add(
                tx,
                &["alice".to_owned(), "bob".to_owned()],
                "build_failure",
                &json!({"repository": "acme/app"}),
            )?;
            let alice = list(tx, "alice", 50)?;
            assert_eq!(alice.len(), 1);
            assert_eq!(alice[0].kind, "build_failure");
            assert_eq!(alice[0].metadata["repository"], "acme/app");
            assert!(!set_dismissed(tx, "bob", &alice[0].uuid, true)?);
            assert!(set_dismissed(tx, "alice", &alice[0].uuid, true)?);
            assert!(list(tx, "alice", 50)?[0].dismissed);
            assert!(!list(tx, "bob", 50)?[0].dismissed);
            assert!(list(tx, "carol", 50)?.is_empty());
            Ok::<_, BuildDbError>(())
        })
        .unwrap();
    }
}
