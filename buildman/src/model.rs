//! Builds: the `build` row, its phases and its job configuration.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use registry_core::db::now_ms;
use rusqlite::{Connection, OptionalExtension as _, Row, params};
use serde::{Deserialize, Serialize};

use crate::db::BuildDbError;
use crate::queue;

/// A build's phase as stored (Quay's `BUILD_PHASE` strings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Queued, not yet given to a worker (also between attempts).
    #[serde(rename = "waiting")]
    Waiting,
    /// A worker is being started.
    #[serde(rename = "build-scheduled")]
    BuildScheduled,
    /// The worker fetches the source.
    #[serde(rename = "unpacking")]
    Unpacking,
    /// The worker pulls the base (and cache) image.
    #[serde(rename = "pulling")]
    Pulling,
    /// The Dockerfile runs.
    #[serde(rename = "building")]
    Building,
    /// The image is pushed.
    #[serde(rename = "pushing")]
    Pushing,
    /// Done: every tag pushed.
    #[serde(rename = "complete")]
    Complete,
    /// Failed because of the build's input (Dockerfile, source); not retried.
    #[serde(rename = "error")]
    Error,
    /// An attempt failed for an infrastructure reason; retried while retries remain.
    #[serde(rename = "internalerror")]
    InternalError,
    /// Cancelled by a user.
    #[serde(rename = "cancelled")]
    Cancelled,
}

impl Phase {
    /// Every phase, in lifecycle order.
    pub const ALL: [Phase; 10] = [
        Phase::Waiting,
        Phase::BuildScheduled,
        Phase::Unpacking,
        Phase::Pulling,
        Phase::Building,
        Phase::Pushing,
        Phase::Complete,
        Phase::Error,
        Phase::InternalError,
        Phase::Cancelled,
    ];

    /// Quay's string for the phase.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::BuildScheduled => "build-scheduled",
            Phase::Unpacking => "unpacking",
            Phase::Pulling => "pulling",
            Phase::Building => "building",
            Phase::Pushing => "pushing",
            Phase::Complete => "complete",
            Phase::Error => "error",
            Phase::InternalError => "internalerror",
            Phase::Cancelled => "cancelled",
        }
    }

    /// Whether no further phase can follow (Quay's `ARCHIVABLE_BUILD_PHASES` plus
    /// `internalerror` once no retry remains, which the caller decides).
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Complete | Phase::Error | Phase::Cancelled)
    }

    /// Whether a worker is (or is being) given the build.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            Phase::BuildScheduled
                | Phase::Unpacking
                | Phase::Pulling
                | Phase::Building
                | Phase::Pushing
        )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown phase string.
#[derive(Debug, thiserror::Error)]
#[error("unknown build phase {0:?}")]
pub struct UnknownPhase(pub String);

impl FromStr for Phase {
    type Err = UnknownPhase;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPhase(s.to_owned()))
    }
}

/// What to build, stored as JSON in `build.job_config` (Quay's `job_config` keys).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobConfig {
    /// Tags to push; `["latest"]` when none were asked for.
    pub docker_tags: Vec<String>,
    /// The Dockerfile path (Quay's name, despite holding a path), e.g. `/sub/Dockerfile`.
    pub build_subdir: String,
    /// The build context directory, e.g. `/sub`.
    pub context: String,
    /// Archive to build from, when not an upload or a git source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_url: Option<String>,
    /// Git source (`url`, `sha`); with a trigger, its deploy key is looked up at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSource>,
    /// `--build-arg` values.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub build_args: BTreeMap<String, String>,
    /// Trigger metadata (commit info, ref), shown by the API.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub trigger_metadata: serde_json::Value,
}

/// A git repository and the exact commit to build.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitSource {
    /// Clone URL (https, ssh, file or a local path).
    pub url: String,
    /// The commit to check out.
    pub sha: String,
}

/// One build as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Build {
    /// Row id.
    pub id: i64,
    /// Public id.
    pub uuid: String,
    /// `<namespace>/<repository>`.
    pub repository: String,
    /// Current phase.
    pub phase: Phase,
    /// Human name (the archive, file or commit).
    pub display_name: String,
    /// What to build.
    pub job_config: JobConfig,
    /// Upload the build uses (`build_upload.id`).
    pub resource_key: Option<String>,
    /// Robot whose credentials pull the base image.
    pub pull_robot: Option<String>,
    /// User who started the build.
    pub manual_user: Option<String>,
    /// Trigger that started it.
    pub trigger_uuid: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Manifest digests pushed, one per tag.
    pub manifest_digests: Vec<String>,
    /// Attempts started so far.
    pub attempts: i64,
    /// Creation time (ms).
    pub started_ms: i64,
    /// Last change (ms).
    pub updated_ms: i64,
    /// End time (ms).
    pub completed_ms: Option<i64>,
}

impl Build {
    /// The namespace part of [`Build::repository`].
    pub fn namespace(&self) -> &str {
        self.repository
            .split_once('/')
            .map_or(self.repository.as_str(), |(ns, _)| ns)
    }
}

/// What [`create`] needs.
#[derive(Clone, Debug, Default)]
pub struct NewBuild {
    /// `<namespace>/<repository>`.
    pub repository: String,
    /// Human name.
    pub display_name: String,
    /// What to build.
    pub job_config: JobConfig,
    /// Upload id.
    pub resource_key: Option<String>,
    /// Pull robot.
    pub pull_robot: Option<String>,
    /// Starting user.
    pub manual_user: Option<String>,
    /// Starting trigger.
    pub trigger_uuid: Option<String>,
    /// Queue attempts allowed (Quay: 3).
    pub max_retries: u32,
}

const COLUMNS: &str = "id, uuid, repository, phase, display_name, job_config, resource_key, \
     pull_robot, manual_user, trigger_uuid, error, manifest_digests, attempts, started_at, \
     updated_at, completed_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<(Build, String, String, String)> {
    let uuid: String = r.get(1)?;
    Ok((
        Build {
            id: r.get(0)?,
            uuid,
            repository: r.get(2)?,
            phase: Phase::Waiting,
            display_name: r.get(4)?,
            job_config: JobConfig::default(),
            resource_key: r.get(6)?,
            pull_robot: r.get(7)?,
            manual_user: r.get(8)?,
            trigger_uuid: r.get(9)?,
            error: r.get(10)?,
            manifest_digests: Vec::new(),
            attempts: r.get(12)?,
            started_ms: r.get(13)?,
            updated_ms: r.get(14)?,
            completed_ms: r.get(15)?,
        },
        r.get(3)?,
        r.get(5)?,
        r.get(11)?,
    ))
}

fn finish_row(
    (mut b, phase, job_config, digests): (Build, String, String, String),
) -> Result<Build, BuildDbError> {
    b.phase = phase.parse().map_err(|_| BuildDbError::UnknownPhase {
        uuid: b.uuid.clone(),
        phase,
    })?;
    b.job_config = serde_json::from_str(&job_config).map_err(|source| BuildDbError::Json {
        column: "job_config",
        uuid: b.uuid.clone(),
        source,
    })?;
    b.manifest_digests = serde_json::from_str(&digests).map_err(|source| BuildDbError::Json {
        column: "manifest_digests",
        uuid: b.uuid.clone(),
        source,
    })?;
    Ok(b)
}

/// Insert a build in phase `waiting` and its queue item, in the caller's transaction.
pub fn create(conn: &Connection, new: &NewBuild) -> Result<Build, BuildDbError> {
    let uuid = uuid::Uuid::new_v4().to_string();
    let mut job_config = new.job_config.clone();
    if job_config.docker_tags.is_empty() {
        job_config.docker_tags = vec!["latest".to_owned()];
    }
    let config_json = serde_json::to_string(&job_config).map_err(|source| BuildDbError::Json {
        column: "job_config",
        uuid: uuid.clone(),
        source,
    })?;
    let now = now_ms();
    conn.execute(
        "INSERT INTO build (uuid, repository, phase, display_name, job_config, resource_key, \
         pull_robot, manual_user, trigger_uuid, started_at, updated_at) \
         VALUES (?1, ?2, 'waiting', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
        params![
            uuid,
            new.repository,
            new.display_name,
            config_json,
            new.resource_key,
            new.pull_robot,
            new.manual_user,
            new.trigger_uuid,
            now
        ],
    )?;
    queue::put(conn, &uuid, &new.repository, new.max_retries, 0)?;
    crate::events::record(conn, &uuid, crate::events::BuildEvent::Queued, None)?;
    get(conn, &uuid)?.ok_or(BuildDbError::NotFound(uuid))
}

/// The build `uuid`, if any.
pub fn get(conn: &Connection, uuid: &str) -> Result<Option<Build>, BuildDbError> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM build WHERE uuid = ?1"))?
        .query_row(params![uuid], from_row)
        .optional()?
        .map(finish_row)
        .transpose()
}

/// Builds of `repository`, newest first, at most `limit`, started at or after `since_ms`.
pub fn list(
    conn: &Connection,
    repository: &str,
    limit: u32,
    since_ms: Option<i64>,
) -> Result<Vec<Build>, BuildDbError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM build WHERE repository = ?1 AND started_at >= ?2 \
         ORDER BY started_at DESC, id DESC LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![repository, since_ms.unwrap_or(0), limit], from_row)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(finish_row(row?)?);
    }
    Ok(out)
}

/// Builds in any of `phases` (recovery after a restart, the sweeper).
pub fn in_phases(conn: &Connection, phases: &[Phase]) -> Result<Vec<Build>, BuildDbError> {
    let mut out = Vec::new();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM build WHERE phase = ?1 ORDER BY id"
    ))?;
    for phase in phases {
        for row in stmt.query_map(params![phase.as_str()], from_row)? {
            out.push(finish_row(row?)?);
        }
    }
    Ok(out)
}

/// Move `uuid` to `to` if its phase is `from` (any non-final phase when `from` is `None`).
///
/// Never leaves a final phase (complete, error, cancelled) nor a build closed by
/// [`close_internal_error`] (`completed_at` set), so a late agent call cannot undo a cancel or
/// reopen a build that ran out of attempts. Sets `error` when given, and `completed_at` on a final
/// phase. Returns whether it moved.
pub fn set_phase_cas(
    conn: &Connection,
    uuid: &str,
    from: Option<Phase>,
    to: Phase,
    error: Option<&str>,
) -> Result<bool, BuildDbError> {
    let now = now_ms();
    let completed = to.is_final().then_some(now);
    let n = match from {
        Some(from) => conn.execute(
            "UPDATE build SET phase = ?1, error = COALESCE(?2, error), updated_at = ?3, \
             completed_at = COALESCE(?4, completed_at) \
             WHERE uuid = ?5 AND phase = ?6 AND completed_at IS NULL \
             AND phase NOT IN ('complete', 'error', 'cancelled')",
            params![to.as_str(), error, now, completed, uuid, from.as_str()],
        )?,
        None => conn.execute(
            "UPDATE build SET phase = ?1, error = COALESCE(?2, error), updated_at = ?3, \
             completed_at = COALESCE(?4, completed_at) \
             WHERE uuid = ?5 AND completed_at IS NULL \
             AND phase NOT IN ('complete', 'error', 'cancelled')",
            params![to.as_str(), error, now, completed, uuid],
        )?,
    };
    Ok(n == 1)
}

/// Record that an attempt started; returns the attempt number (1-based).
pub fn start_attempt(conn: &Connection, uuid: &str) -> Result<i64, BuildDbError> {
    conn.execute(
        "UPDATE build SET attempts = attempts + 1, updated_at = ?1 WHERE uuid = ?2",
        params![now_ms(), uuid],
    )?;
    Ok(conn.query_row(
        "SELECT attempts FROM build WHERE uuid = ?1",
        params![uuid],
        |r| r.get(0),
    )?)
}

/// Store the manifest digests pushed.
pub fn set_manifest_digests(
    conn: &Connection,
    uuid: &str,
    digests: &[String],
) -> Result<(), BuildDbError> {
    let json = serde_json::to_string(digests).map_err(|source| BuildDbError::Json {
        column: "manifest_digests",
        uuid: uuid.to_owned(),
        source,
    })?;
    conn.execute(
        "UPDATE build SET manifest_digests = ?1 WHERE uuid = ?2",
        params![json, uuid],
    )?;
    Ok(())
}

/// Close a build that ends as `internalerror` for good (no retry left): it keeps the phase but
/// gets `completed_at` and the reason. Returns whether it was open.
pub fn close_internal_error(
    conn: &Connection,
    uuid: &str,
    reason: &str,
) -> Result<bool, BuildDbError> {
    let now = now_ms();
    let n = conn.execute(
        "UPDATE build SET phase = 'internalerror', error = ?1, updated_at = ?2, completed_at = ?2 \
         WHERE uuid = ?3 AND completed_at IS NULL AND phase NOT IN ('complete', 'error', 'cancelled')",
        params![reason, now, uuid],
    )?;
    Ok(n == 1)
}

/// Forget the failure reason of an earlier attempt (the build completed on a retry).
pub fn clear_error(conn: &Connection, uuid: &str) -> Result<(), BuildDbError> {
    conn.execute(
        "UPDATE build SET error = NULL WHERE uuid = ?1",
        params![uuid],
    )?;
    Ok(())
}
