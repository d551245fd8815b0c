//! `repo_push`: registry-core writes a `repo_event` row (kind `push`) with each manifest PUT;
//! this module reads the rows after the id kept in `buildman_state` (`repo_push_cursor`) and
//! queues deliveries for the pushed repositories' `repo_push` notifications. At the first start
//! the cursor is set to the newest row, so pushes made before notifications existed are not
//! replayed. A push with no tag (by digest) updates no tag and is not announced. A cursor above
//! registry-core's newest event (rows deleted, or its database replaced by a restore) would
//! silence every push until the ids caught up: it is reset to the newest event, with a warning.

use registry_core::db::Db;
use rusqlite::{Connection, OptionalExtension as _, params};
use serde_json::Value;

use super::payload::{Urls, repo_push_data};
use super::{delivery_rows, model};
use crate::db::BuildDbError;

/// The `buildman_state` name of the cursor.
pub const CURSOR: &str = "repo_push_cursor";
/// Registry events read per round.
const BATCH: u32 = 200;

/// One push read from registry-core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushEvent {
    /// The `repo_event` id.
    pub id: i64,
    /// `<namespace>/<repository>`.
    pub repository: String,
    /// The tags the push set.
    pub tags: Vec<String>,
}

/// The cursor, if set.
pub fn cursor(conn: &Connection) -> Result<Option<i64>, BuildDbError> {
    Ok(conn
        .query_row(
            "SELECT value FROM buildman_state WHERE name = ?1",
            params![CURSOR],
            |r| r.get(0),
        )
        .optional()?)
}

fn set_cursor(conn: &Connection, id: i64) -> Result<(), BuildDbError> {
    conn.execute(
        "INSERT INTO buildman_state (name, value) VALUES (?1, ?2) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        params![CURSOR, id],
    )?;
    Ok(())
}

fn newest_event(conn: &Connection) -> Result<i64, BuildDbError> {
    Ok(
        conn.query_row("SELECT COALESCE(MAX(id), 0) FROM repo_event", [], |r| {
            r.get(0)
        })?,
    )
}

/// Set the cursor to registry-core's newest event unless it is set already. Returns the cursor.
pub async fn init_cursor(builds: &Db, registry: &Db) -> Result<i64, BuildDbError> {
    if let Some(c) = builds.read(cursor).await? {
        return Ok(c);
    }
    let newest: i64 = registry.read(newest_event).await?;
    builds
        .write(move |tx| match cursor(tx)? {
            Some(c) => Ok(c),
            None => set_cursor(tx, newest).map(|()| newest),
        })
        .await
}

/// Registry events after `after`, at most `limit`: the pushes among them, and the last id read.
fn read_events(
    conn: &Connection,
    after: i64,
    limit: u32,
) -> Result<(Vec<PushEvent>, Option<i64>), BuildDbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, payload FROM repo_event WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut pushes = Vec::new();
    let mut last = None;
    for row in rows {
        let (id, kind, payload) = row?;
        last = Some(id);
        if kind != "push" {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&payload) else {
            tracing::warn!(
                event_id = id,
                "skipped a registry push event whose payload is not JSON"
            );
            continue;
        };
        let repository = v["repository"].as_str().unwrap_or_default().to_owned();
        let tags: Vec<String> = v["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if !repository.is_empty() && !tags.is_empty() {
            pushes.push(PushEvent {
                id,
                repository,
                tags,
            });
        }
    }
    Ok((pushes, last))
}

/// One round: read new registry events and queue their deliveries, moving the cursor in the
/// same transaction. Returns the number of deliveries queued.
pub async fn poll(builds: &Db, registry: &Db, urls: &Urls) -> Result<usize, BuildDbError> {
    let after = init_cursor(builds, registry).await?;
    let (pushes, last, newest) = registry
        .read(move |conn| {
            let newest = newest_event(conn)?;
            let (pushes, last) = read_events(conn, after, BATCH)?;
            Ok::<_, BuildDbError>((pushes, last, newest))
        })
        .await?;
    if after > newest {
        tracing::warn!(
            cursor = after,
            newest,
            "the repo_push cursor is past registry-core's newest event (events deleted or the \
             database replaced); restarting from the newest event"
        );
        builds
            .write(move |tx| {
                if cursor(tx)? == Some(after) {
                    set_cursor(tx, newest)?;
                }
                Ok::<_, BuildDbError>(())
            })
            .await?;
        return Ok(0);
    }
    let Some(last) = last else {
        return Ok(0);
    };
    let urls = urls.clone();
    builds
        .write(move |tx| {
            // Another round moved the cursor meanwhile (not expected: one task polls).
            if cursor(tx)? != Some(after) {
                return Ok(0);
            }
            let mut queued = 0;
            for push in &pushes {
                let data = repo_push_data(&urls, &push.repository, &push.tags);
                for n in model::enabled_for(tx, &push.repository, "repo_push")? {
                    delivery_rows::queue(tx, &n.uuid, "repo_push", &data)?;
                    queued += 1;
                }
            }
            set_cursor(tx, last)?;
            Ok(queued)
        })
        .await
}
