//! The running attempt of a build as the orchestrator holds it (`building/<uuid>`), per-build
//! locks, and the phase-change helper every path uses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use registry_core::db::now_ms;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Manager, ManagerError, ms};
use crate::db::BuildDbError;
use crate::events::{self, BuildEvent};
use crate::logs::{self, Kind};
use crate::model::{self, Phase};
use crate::queue::QueueItem;

/// Key of a build's running job (relative to `ORCHESTRATOR_PREFIX`).
pub(super) fn job_key(uuid: &str) -> String {
    format!("building/{uuid}")
}

/// Key of a build's metric record.
pub(super) fn metric_key(uuid: &str) -> String {
    format!("metric/{uuid}")
}

/// Key whose creation asks the manager running the build to stop it.
pub(super) fn cancel_key(uuid: &str) -> String {
    format!("cancel/{uuid}")
}

/// Key marking the end of an attempt that an agent's `SetPhase` finished: lets a resend of that
/// call (the agent's retry after a lost answer) be told `success` again.
pub(super) fn finished_key(uuid: &str) -> String {
    format!("finished/{uuid}")
}

/// Name of the orchestrator lock that makes an attempt's registration one-shot.
pub(super) fn registration_lock(uuid: &str, attempt_id: &str) -> String {
    format!("registration/{uuid}/{attempt_id}")
}

/// Token titles of the registry credentials of attempt `attempt_id` (its queue claim id) of build
/// `uuid`: `build:<uuid>:<attempt>:push|pull`. Per attempt, so that the end of a stale attempt
/// deletes its own tokens and never those of the attempt running now.
pub(super) fn credential_titles(uuid: &str, attempt_id: &str) -> [String; 2] {
    [
        format!("build:{uuid}:{attempt_id}:push"),
        format!("build:{uuid}:{attempt_id}:pull"),
    ]
}

/// SQL `LIKE` pattern (with `ESCAPE '\'`) matching the titles of every attempt's credentials of
/// build `uuid` (and those of the one-title-per-build format before attempt ids).
pub(super) fn credential_title_pattern(uuid: &str) -> String {
    let mut escaped = String::with_capacity(uuid.len());
    for c in uuid.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    format!("build:{escaped}:%")
}

/// The build uuid in a credential title `build:<uuid>:...`.
pub(super) fn credential_title_build(title: &str) -> Option<&str> {
    let rest = title.strip_prefix("build:")?;
    rest.split_once(':')
        .map(|(uuid, _)| uuid)
        .filter(|u| !u.is_empty())
}

/// The claimed queue item, as Quay's job record carries it (`job_queue_item`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct JobQueueItem {
    pub(super) id: i64,
    pub(super) build_uuid: String,
    pub(super) queue_name: String,
    pub(super) retries_remaining: u32,
    /// The claim id: identifies this attempt (also in the tokens' `attempt_id`).
    pub(super) state_id: String,
}

/// The job JSON in `building/<uuid>`: Quay's fields (`job_queue_item`, `max_expiration` and
/// `created_at` in Unix seconds, `last_heartbeat`, `executor_name`, `execution_id`) plus ours.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct JobRecord {
    pub(super) job_queue_item: JobQueueItem,
    pub(super) max_expiration: i64,
    pub(super) created_at: i64,
    /// RFC 3339 time of the last heartbeat, for people reading the orchestrator.
    #[serde(default)]
    pub(super) last_heartbeat: Option<String>,
    #[serde(default)]
    pub(super) executor_name: Option<String>,
    #[serde(default)]
    pub(super) execution_id: Option<String>,
    /// Ours: the attempt number (1-based), once an executor started the worker.
    #[serde(default)]
    pub(super) attempt: i64,
    /// Ours: the agent called `RegisterBuildJob`.
    #[serde(default)]
    pub(super) registered: bool,
    /// Ours: the last heartbeat, Unix ms.
    #[serde(default)]
    pub(super) last_heartbeat_ms: Option<i64>,
    /// Ours: the last accepted `SetPhase` sequence number of this attempt.
    #[serde(default)]
    pub(super) phase_seq: Option<i32>,
    /// Ours: the phase accepted with `phase_seq` (a resend of that call succeeds again).
    #[serde(default)]
    pub(super) last_phase: Option<Phase>,
    /// Ours: when the key's current TTL ends, Unix ms (kept when the record is rewritten).
    #[serde(default)]
    pub(super) expires_at_ms: i64,
    /// Ours: when the queue claim ends, Unix ms (heartbeats extend it).
    #[serde(default)]
    pub(super) claim_expires_ms: i64,
}

impl JobRecord {
    pub(super) fn new(item: &QueueItem, max_time: Duration, claim: Duration) -> JobRecord {
        let now = now_ms();
        JobRecord {
            job_queue_item: JobQueueItem {
                id: item.id,
                build_uuid: item.build_uuid.clone(),
                queue_name: item.queue_name.clone(),
                retries_remaining: item.retries_remaining,
                state_id: item.state_id.clone(),
            },
            max_expiration: (now + ms(max_time)) / 1000,
            created_at: now / 1000,
            last_heartbeat: None,
            executor_name: None,
            execution_id: None,
            attempt: 0,
            registered: false,
            last_heartbeat_ms: None,
            phase_seq: None,
            last_phase: None,
            expires_at_ms: 0,
            claim_expires_ms: now + ms(claim),
        }
    }

    pub(super) fn uuid(&self) -> &str {
        &self.job_queue_item.build_uuid
    }

    pub(super) fn state_id(&self) -> &str {
        &self.job_queue_item.state_id
    }

    pub(super) fn parse(uuid: &str, json: &str) -> Result<JobRecord, ManagerError> {
        serde_json::from_str(json).map_err(|source| ManagerError::JobRecord {
            uuid: uuid.to_owned(),
            source,
        })
    }

    fn to_json(&self) -> String {
        // A struct of strings and integers always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Time left on the key's current TTL (at least 1 s, so a rewrite never expires it at once).
    pub(super) fn remaining_ttl(&self) -> Duration {
        let left = self.expires_at_ms - now_ms();
        Duration::from_millis(u64::try_from(left.max(1000)).unwrap_or(1000))
    }
}

/// One async mutex per build, serialising the read-modify-write of its job record and the
/// finishing of its attempts within this manager.
#[derive(Debug, Default)]
pub(super) struct BuildLocks {
    map: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl BuildLocks {
    pub(super) async fn lock(&self, uuid: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            // Drop entries nobody holds, so the map stays as small as the running set.
            if map.len() > 64 {
                map.retain(|_, m| Arc::strong_count(m) > 1);
            }
            Arc::clone(map.entry(uuid.to_owned()).or_default())
        };
        m.lock_owned().await
    }
}

impl Manager {
    /// The job record of build `uuid`, if its key is live.
    pub(super) async fn load_job(&self, uuid: &str) -> Result<Option<JobRecord>, ManagerError> {
        match self.orchestrator.get_key(&job_key(uuid)).await? {
            Some(json) => JobRecord::parse(uuid, &json).map(Some),
            None => Ok(None),
        }
    }

    /// Write `rec` with a TTL of `ttl` (the `/expiring` twin drives the expiry).
    pub(super) async fn save_job(
        &self,
        rec: &mut JobRecord,
        ttl: Duration,
        create: bool,
    ) -> Result<(), ManagerError> {
        rec.expires_at_ms = now_ms() + ms(ttl);
        self.orchestrator
            .set_key(&job_key(rec.uuid()), &rec.to_json(), !create, Some(ttl))
            .await?;
        Ok(())
    }
}

/// Move build `uuid` (row `build_id`) to `to` (from `from`, or any non-final phase) and, if it
/// moved, append the `phase` log entry with `extra` data. Returns whether it moved.
pub(super) fn set_phase_logged(
    conn: &Connection,
    build_id: i64,
    uuid: &str,
    from: Option<Phase>,
    to: Phase,
    error: Option<&str>,
    extra: Map<String, Value>,
) -> Result<bool, BuildDbError> {
    let moved = model::set_phase_cas(conn, uuid, from, to, error)?;
    if moved {
        logs::append(conn, build_id, Kind::Phase, to.as_str(), extra)?;
        let event = match to {
            Phase::Building => Some(BuildEvent::Start),
            Phase::Complete => Some(BuildEvent::Success),
            Phase::Error => Some(BuildEvent::Failure),
            Phase::Cancelled => Some(BuildEvent::Cancelled),
            _ => None,
        };
        if let Some(event) = event {
            events::record(conn, uuid, event, error)?;
        }
    }
    Ok(moved)
}

/// Append an `error` entry to a build's log.
pub(super) fn log_error(
    conn: &Connection,
    build_id: i64,
    message: &str,
) -> Result<(), BuildDbError> {
    logs::append(conn, build_id, Kind::Error, message, Map::new()).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> QueueItem {
        QueueItem {
            id: 7,
            build_uuid: "b".into(),
            queue_name: "dockerfilebuild/acme/app/".into(),
            retries_remaining: 2,
            state_id: "s1".into(),
        }
    }

    #[test]
    fn job_record_has_quays_fields_and_round_trips() {
        let rec = JobRecord::new(&item(), Duration::from_secs(7200), Duration::from_secs(560));
        let v: Value = serde_json::from_str(&rec.to_json()).unwrap();
        for field in [
            "job_queue_item",
            "max_expiration",
            "created_at",
            "last_heartbeat",
        ] {
            assert!(v.get(field).is_some(), "{field} missing in {v}");
        }
        assert_eq!(v["job_queue_item"]["state_id"], "s1");
        assert!(v["max_expiration"].as_i64().unwrap() - v["created_at"].as_i64().unwrap() >= 7199);
        let back = JobRecord::parse("b", &rec.to_json()).unwrap();
        assert_eq!(back, rec);
        // A record written by an older manager without our fields still parses.
        let minimal = serde_json::json!({
            "job_queue_item": v["job_queue_item"], "max_expiration": 1, "created_at": 0,
            "last_heartbeat": null
        });
        let old = JobRecord::parse("b", &minimal.to_string()).unwrap();
        assert!(!old.registered && old.phase_seq.is_none());
        assert!(JobRecord::parse("b", "nope").is_err());
    }

    #[test]
    fn credential_titles_are_per_attempt_and_the_pattern_matches_every_attempt() {
        let [push, pull] = credential_titles("b-1", "claim-9");
        assert_eq!(
            (push.as_str(), pull.as_str()),
            ("build:b-1:claim-9:push", "build:b-1:claim-9:pull")
        );
        assert_eq!(credential_title_pattern("b-1"), "build:b-1:%");
        assert_eq!(credential_title_pattern("a_%"), "build:a\\_\\%:%");
        assert_eq!(credential_title_build(&push), Some("b-1"));
        assert_eq!(credential_title_build("build:b-1:push"), Some("b-1"));
        assert_eq!(credential_title_build("build::x"), None);
        assert_eq!(credential_title_build("ci token"), None);
    }

    #[test]
    fn remaining_ttl_never_drops_below_a_second() {
        let mut rec = JobRecord::new(&item(), Duration::from_secs(60), Duration::from_secs(60));
        rec.expires_at_ms = now_ms() - 5_000;
        assert_eq!(rec.remaining_ttl(), Duration::from_secs(1));
        rec.expires_at_ms = now_ms() + 30_000;
        assert!(rec.remaining_ttl() > Duration::from_secs(28));
    }

    #[tokio::test]
    async fn build_locks_serialise_one_build_only() {
        let locks = Arc::new(BuildLocks::default());
        let a = locks.lock("a").await;
        // Another build is not blocked.
        let _b = locks.lock("b").await;
        let l2 = Arc::clone(&locks);
        let waiter = tokio::spawn(async move {
            let _g = l2.lock("a").await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
