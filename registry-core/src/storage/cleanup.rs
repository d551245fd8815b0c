//! Periodic removal of abandoned upload sessions.
//!
//! A session is abandoned when its `updated_at` is older than `UPLOAD_MAX_AGE_S` (Quay purges after
//! 2 days, distribution after 7). Files in `uploads/` without a session row (a monolithic upload
//! that crashed, a session whose row was removed but whose file was not) go after the same age,
//! judged by their modification time. Sessions in use by a request are skipped, never waited for.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::params;

use crate::db::DbError;
use crate::error::error_chain;
use crate::state::AppState;
use crate::storage::StorageError;

/// Why a cleanup pass failed.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// Reading or deleting upload rows failed.
    #[error("failed to query upload sessions")]
    Db(#[from] DbError),
    /// Listing or removing upload files failed.
    #[error("failed to remove upload files")]
    Storage(#[from] StorageError),
}

/// What one pass removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Upload sessions (row and file) removed.
    pub sessions: usize,
    /// Files without a session row removed.
    pub orphan_files: usize,
}

/// Run forever: every `UPLOAD_CLEANUP_INTERVAL_S`, one [`sweep`]. Failures are logged and the next
/// pass tries again.
pub async fn run(state: AppState) {
    let period = Duration::from_secs(state.config.upload_cleanup_interval_s.max(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match sweep(&state, SystemTime::now()).await {
            Ok(r) if r == CleanupReport::default() => {}
            Ok(r) => tracing::info!(
                sessions = r.sessions,
                orphan_files = r.orphan_files,
                "removed abandoned uploads"
            ),
            Err(e) => tracing::error!(error = %error_chain(&e), "upload cleanup failed"),
        }
    }
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// One cleanup pass as of `now`: remove sessions untouched for `UPLOAD_MAX_AGE_S` and old files
/// that belong to no session.
pub async fn sweep(state: &AppState, now: SystemTime) -> Result<CleanupReport, CleanupError> {
    let max_age = Duration::from_secs(state.config.upload_max_age_s);
    let cutoff = now.checked_sub(max_age).unwrap_or(UNIX_EPOCH);
    let cutoff_ms = millis(cutoff);
    let mut report = CleanupReport::default();

    let stale: Vec<String> = state
        .db
        .read(move |c| {
            let mut st = c.prepare("SELECT uuid FROM upload WHERE updated_at < ?1")?;
            let rows = st.query_map(params![cutoff_ms], |r| r.get(0))?;
            Ok::<_, DbError>(rows.collect::<Result<_, _>>()?)
        })
        .await?;
    for text in stale {
        let Ok(uuid) = uuid::Uuid::parse_str(&text) else {
            continue;
        };
        let Some(_guard) = state.blobs.try_lock_upload(uuid) else {
            continue;
        };
        // Re-check the age inside the delete: a request may have touched it since the listing.
        let deleted = state
            .db
            .write(move |tx| {
                tx.execute(
                    "DELETE FROM upload WHERE uuid = ?1 AND updated_at < ?2",
                    params![text, cutoff_ms],
                )
                .map_err(DbError::from)
            })
            .await?;
        if deleted > 0 {
            state.blobs.remove_upload_file(&uuid).await?;
            tracing::info!(%uuid, "removed abandoned upload session");
            report.sessions += 1;
        }
    }

    let dir = state.blobs.uploads_dir();
    let old_files = tokio::task::spawn_blocking(move || list_older_than(&dir, cutoff))
        .await
        .map_err(StorageError::from)??;
    if old_files.is_empty() {
        return Ok(report);
    }
    let live: HashSet<String> = state
        .db
        .read(|c| {
            let mut st = c.prepare("SELECT uuid FROM upload")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok::<_, DbError>(rows.collect::<Result<_, _>>()?)
        })
        .await?;
    for uuid in old_files {
        if live.contains(&uuid.to_string()) {
            continue;
        }
        let Some(_guard) = state.blobs.try_lock_upload(uuid) else {
            continue;
        };
        state.blobs.remove_upload_file(&uuid).await?;
        tracing::info!(%uuid, "removed upload file without a session");
        report.orphan_files += 1;
    }
    Ok(report)
}

// Upload files (named by uuid) last modified before `cutoff`; other names are left alone.
fn list_older_than(
    dir: &std::path::Path,
    cutoff: SystemTime,
) -> Result<Vec<uuid::Uuid>, StorageError> {
    let io = |source| StorageError::Io {
        op: "list",
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let Some(uuid) = entry
            .file_name()
            .to_str()
            .and_then(|n| uuid::Uuid::parse_str(n).ok())
        else {
            continue;
        };
        // A file removed since the listing, or without a readable time, is skipped.
        let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        if modified < cutoff {
            out.push(uuid);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[tokio::test]
    async fn sweep_removes_old_sessions_and_orphans_only() {
        let dir = tempfile::tempdir().unwrap();
        let state = AppState::open(Config {
            data_dir: dir.path().to_owned(),
            upload_max_age_s: 3600,
            ..Default::default()
        })
        .unwrap();
        let now = SystemTime::now();
        let old_ms = millis(now) - 2 * 3600 * 1000;
        let (old, fresh, orphan, young_orphan) = (
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
        );
        let (o, f) = (old.to_string(), fresh.to_string());
        let now_ms = millis(now);
        state
            .db
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO account (name, kind, created_at) VALUES ('acme', 'org', 0)",
                    [],
                )?;
                tx.execute(
                    "INSERT INTO repository (namespace_id, name, created_at) VALUES (1, 'acme/app', 0)",
                    [],
                )?;
                let ins = "INSERT INTO upload (uuid, repository_id, algorithm, offset, hash_state, created_at, updated_at) VALUES (?1, 1, 'sha256', 0, x'', ?2, ?2)";
                tx.execute(ins, params![o, old_ms])?;
                tx.execute(ins, params![f, now_ms])?;
                Ok::<_, DbError>(())
            })
            .await
            .unwrap();
        for u in [old, fresh, orphan, young_orphan] {
            std::fs::write(state.blobs.upload_path(&u), b"x").unwrap();
        }
        let two_hours_ago = now - Duration::from_secs(7200);
        for u in [old, fresh, orphan] {
            let f = std::fs::File::options()
                .write(true)
                .open(state.blobs.upload_path(&u))
                .unwrap();
            f.set_modified(two_hours_ago).unwrap();
        }
        // A session in use is skipped even when old.
        let busy = state.blobs.lock_upload(old).await;
        let r = sweep(&state, now).await.unwrap();
        assert_eq!(
            r,
            CleanupReport {
                sessions: 0,
                orphan_files: 1
            }
        );
        drop(busy);
        let r = sweep(&state, now).await.unwrap();
        assert_eq!(
            r,
            CleanupReport {
                sessions: 1,
                orphan_files: 0
            }
        );
        assert!(!state.blobs.upload_path(&old).exists());
        assert!(!state.blobs.upload_path(&orphan).exists());
        // The fresh session keeps its (old-looking) file; the young orphan stays.
        assert!(state.blobs.upload_path(&fresh).exists());
        assert!(state.blobs.upload_path(&young_orphan).exists());
        let left: i64 = state
            .db
            .read(|c| {
                c.query_row("SELECT COUNT(*) FROM upload", [], |r| r.get(0))
                    .map_err(DbError::from)
            })
            .await
            .unwrap();
        assert_eq!(left, 1);
    }
}
