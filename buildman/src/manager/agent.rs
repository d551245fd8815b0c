//! What the agent's RPCs do (reference 1.2): registration, heartbeats, phase reports, log lines
//! and the cached tag. [`crate::grpc`] verifies tokens and converts wire types; the rules are
//! here.

use registry_core::db::now_ms;
use serde_json::{Map, Value};

use super::buildpack::BuildPackSpec;
use super::finish::Outcome;
use super::jobs::{JobRecord, set_phase_logged};
use super::{Manager, ManagerError, ms};
use crate::model::{self, Phase};
use crate::queue;
use crate::tokens::BuildContext;

/// `SetPhase`'s pull metadata (reference 1.1), stored in the `pulling` phase entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullInfo {
    /// Registry of the base image.
    pub registry_url: String,
    /// Base image name.
    pub base_image: String,
    /// Base image tag.
    pub base_image_tag: String,
    /// User the agent pulls as.
    pub pull_username: String,
}

impl PullInfo {
    /// The log entry's extra data: Quay's field names, empty strings omitted.
    fn to_data(&self) -> Map<String, Value> {
        let mut data = Map::new();
        for (k, v) in [
            ("registry_url", &self.registry_url),
            ("base_image", &self.base_image),
            ("base_image_tag", &self.base_image_tag),
            ("pull_username", &self.pull_username),
        ] {
            if !v.is_empty() {
                data.insert(k.to_owned(), Value::String(v.clone()));
            }
        }
        data
    }
}

/// One `SetPhase` call in domain terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseReport {
    /// The agent's phase sequence number; one not above the last accepted is refused.
    pub sequence_number: i32,
    /// The phase reported (`Phase::Error` for the wire `ERROR`).
    pub phase: Phase,
    /// With `pulling`: what is pulled.
    pub pull: Option<PullInfo>,
    /// With `error`: why (Quarry addition).
    pub error_message: String,
    /// With `error`: the infrastructure failed, so the attempt may be retried.
    pub retryable: bool,
    /// With `complete`: the manifest digests pushed, one per tag.
    pub manifest_digests: Vec<String>,
}

impl Manager {
    /// The running job of the agent holding `ctx`: `None` when the job is gone or belongs to
    /// another attempt than the token's.
    async fn job_of(&self, ctx: &BuildContext) -> Result<Option<JobRecord>, ManagerError> {
        let rec = self.load_job(&ctx.build_id).await?;
        Ok(rec.filter(|r| ctx.attempt_id.is_empty() || r.state_id() == ctx.attempt_id))
    }

    async fn build_of(&self, uuid: &str) -> Result<Option<model::Build>, ManagerError> {
        let uuid = uuid.to_owned();
        Ok(self.builds.read(move |c| model::get(c, &uuid)).await?)
    }

    /// `RegisterBuildJob`: hand the agent its build pack and job token (reference 4.1).
    #[tracing::instrument(skip_all, fields(build_id = %ctx.build_id))]
    pub async fn start_job(&self, ctx: &BuildContext) -> Result<BuildPackSpec, ManagerError> {
        let _guard = self.locks.lock(&ctx.build_id).await;
        let Some(mut rec) = self.job_of(ctx).await? else {
            return Err(ManagerError::JobGone(ctx.build_id.clone()));
        };
        let build = self
            .build_of(&ctx.build_id)
            .await?
            .ok_or_else(|| ManagerError::UnknownBuild(ctx.build_id.clone()))?;
        if build.phase.is_final() || build.completed_ms.is_some() {
            return Err(ManagerError::JobGone(ctx.build_id.clone()));
        }
        let pack = self.build_pack(&build, ctx).await?;
        rec.registered = true;
        // Until its first heartbeat, the agent has the executor's SETUP_TIME.
        let setup = rec
            .executor_name
            .as_deref()
            .and_then(|n| self.executor_named(n))
            .map_or(self.settings.heartbeat_ttl, |e| e.setup_time());
        self.save_job(&mut rec, setup, false).await?;
        tracing::info!(attempt = rec.attempt, "agent registered");
        Ok(pack)
    }

    /// `Heartbeat` (reference 1.4): keep the job alive; `false` tells the agent to stop.
    #[tracing::instrument(skip_all, fields(build_id = %ctx.build_id))]
    pub async fn job_heartbeat(&self, ctx: &BuildContext) -> Result<bool, ManagerError> {
        let _guard = self.locks.lock(&ctx.build_id).await;
        let Some(mut rec) = self.job_of(ctx).await? else {
            return Ok(false);
        };
        if self.build_is_over(&ctx.build_id).await? {
            return Ok(false);
        }
        let now = now_ms();
        let delta = ms(self.settings.heartbeat_delta);
        if let Some(last) = rec.last_heartbeat_ms
            && now - last > delta
        {
            #[allow(clippy::cast_precision_loss, reason = "a few seconds, shown to 0.1 s")]
            let silent_s = (now - last) as f64 / 1000.0;
            let reason = format!(
                "the build agent sent no heartbeat for {silent_s:.1} s (the limit is {} s)",
                self.settings.heartbeat_delta.as_secs()
            );
            self.finish_attempt(&rec, Outcome::Incomplete { reason })
                .await?;
            return Ok(false);
        }
        let until_max = rec.max_expiration * 1000 - now;
        if until_max <= 0 {
            let reason = format!(
                "the build ran longer than MACHINE_MAX_TIME ({} s)",
                self.settings.machine_max_time.as_secs()
            );
            self.finish_attempt(&rec, Outcome::Incomplete { reason })
                .await?;
            return Ok(false);
        }
        rec.last_heartbeat_ms = Some(now);
        rec.last_heartbeat = Some(registry_core::api::common::rfc3339_ms(now));
        // Quay extends the claim on every heartbeat but writes only when it moves by more than
        // MINIMUM_JOB_EXTENSION; tracking the claim here saves the database round trip too.
        let target = now + ms(self.settings.job_timeout);
        if target - rec.claim_expires_ms > ms(self.settings.minimum_job_extension) {
            let uuid = ctx.build_id.clone();
            let job_timeout = ms(self.settings.job_timeout);
            self.builds
                .write(move |tx| queue::extend(tx, &uuid, job_timeout, 0))
                .await?;
            rec.claim_expires_ms = target;
        }
        let ttl_ms = ms(self.settings.heartbeat_ttl).min(until_max);
        let ttl = std::time::Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(1000));
        self.save_job(&mut rec, ttl, false).await?;
        Ok(true)
    }

    /// `SetPhase` (reference 2.1, sequence numbers checked per attempt). Returns `success`.
    #[tracing::instrument(skip_all, fields(build_id = %ctx.build_id, phase = %report.phase,
        seq = report.sequence_number))]
    pub async fn update_job_phase(
        &self,
        ctx: &BuildContext,
        report: PhaseReport,
    ) -> Result<bool, ManagerError> {
        let _guard = self.locks.lock(&ctx.build_id).await;
        let Some(mut rec) = self.job_of(ctx).await? else {
            tracing::info!("phase refused: the job is not running");
            return Ok(false);
        };
        if rec
            .phase_seq
            .is_some_and(|last| report.sequence_number <= last)
        {
            tracing::info!(last = ?rec.phase_seq, "phase refused: stale sequence number");
            return Ok(false);
        }
        let Some(build) = self.build_of(&ctx.build_id).await? else {
            return Ok(false);
        };
        if build.phase.is_final() || build.completed_ms.is_some() {
            tracing::info!(current = %build.phase, "phase refused: the build has ended");
            return Ok(false);
        }
        rec.phase_seq = Some(report.sequence_number);
        let outcome = match report.phase {
            Phase::Complete => Outcome::Complete {
                digests: report.manifest_digests,
            },
            Phase::Error if report.retryable => Outcome::Incomplete {
                reason: non_empty(
                    report.error_message,
                    "the build agent reported an infrastructure error",
                ),
            },
            Phase::Error => Outcome::Failed {
                message: non_empty(report.error_message, "the build failed"),
            },
            Phase::Unpacking | Phase::Pulling | Phase::Building | Phase::Pushing => {
                if build.phase != report.phase {
                    let (uuid, id, to) = (build.uuid.clone(), build.id, report.phase);
                    let data = report
                        .pull
                        .as_ref()
                        .map(PullInfo::to_data)
                        .unwrap_or_default();
                    let moved = self
                        .builds
                        .write(move |tx| set_phase_logged(tx, id, &uuid, None, to, None, data))
                        .await?;
                    if !moved {
                        return Ok(false);
                    }
                    tracing::info!("phase changed");
                }
                let ttl = rec.remaining_ttl();
                self.save_job(&mut rec, ttl, false).await?;
                return Ok(true);
            }
            // Phases only the manager sets.
            Phase::Waiting | Phase::BuildScheduled | Phase::InternalError | Phase::Cancelled => {
                tracing::warn!("phase refused: not one an agent reports");
                return Ok(false);
            }
        };
        self.finish_attempt(&rec, outcome).await?;
        Ok(true)
    }

    /// The row id of build `uuid`, for appending its log lines.
    pub async fn build_row_id(&self, uuid: &str) -> Result<Option<i64>, ManagerError> {
        Ok(self.build_of(uuid).await?.map(|b| b.id))
    }

    /// `LogMessage`: append one agent line to the build with row id `build_id`.
    pub async fn append_agent_log(&self, build_id: i64, message: &str) -> Result<(), ManagerError> {
        let message = message.to_owned();
        self.builds
            .write(move |tx| crate::logs::append_agent_message(tx, build_id, &message))
            .await?;
        Ok(())
    }

    /// `DetermineCachedTag` (reference 4.5): the first of the build's tags already in the
    /// repository, else the repository's most recently moved tag, else `""`.
    #[tracing::instrument(skip_all, fields(build_id = %ctx.build_id))]
    pub async fn determine_cached_tag(&self, ctx: &BuildContext) -> Result<String, ManagerError> {
        let Some(build) = self.build_of(&ctx.build_id).await? else {
            return Err(ManagerError::UnknownBuild(ctx.build_id.clone()));
        };
        let Ok(repo) = build.repository.parse::<registry_core::names::RepoName>() else {
            return Ok(String::new());
        };
        let tags = self
            .registry
            .db
            .read(move |c| {
                let Some(repo) = registry_core::repos::find(c, &repo)? else {
                    return Ok(Vec::new());
                };
                registry_core::accounts::repositories::live_tags(c, &repo)
            })
            .await?;
        Ok(cached_tag(&build.job_config.docker_tags, &tags))
    }
}

fn non_empty(text: String, fallback: &str) -> String {
    if text.trim().is_empty() {
        fallback.to_owned()
    } else {
        text
    }
}

fn cached_tag(
    wanted: &[String],
    tags: &[registry_core::accounts::repositories::TagInfo],
) -> String {
    if let Some(t) = wanted.iter().find(|w| tags.iter().any(|t| &t.name == *w)) {
        return t.clone();
    }
    tags.iter()
        .max_by_key(|t| (t.last_modified_ms, t.name.clone()))
        .map(|t| t.name.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use registry_core::accounts::repositories::TagInfo;

    use super::*;

    fn tag(name: &str, at: i64) -> TagInfo {
        TagInfo {
            name: name.into(),
            manifest_digest: "sha256:00".into(),
            last_modified_ms: at,
        }
    }

    #[test]
    fn cached_tag_prefers_the_builds_own_tags_then_the_newest() {
        let tags = [tag("old", 1), tag("v2", 5), tag("latest", 3)];
        let want = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(cached_tag(&want(&["nope", "latest"]), &tags), "latest");
        assert_eq!(cached_tag(&want(&["nope"]), &tags), "v2");
        assert_eq!(cached_tag(&want(&["latest"]), &[]), "");
    }

    #[test]
    fn pull_metadata_omits_empty_fields() {
        let info = PullInfo {
            registry_url: "localhost:8080".into(),
            base_image: "busybox".into(),
            ..PullInfo::default()
        };
        let data = info.to_data();
        assert_eq!(data.len(), 2);
        assert_eq!(data["base_image"], "busybox");
    }
}
