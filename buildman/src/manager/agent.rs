//! What the agent's RPCs do (reference 1.2): registration, heartbeats, log lines and the cached
//! tag (phase reports are in `phase.rs`). [`crate::grpc`] verifies tokens and converts wire
//! types; the rules are here.

use std::time::Duration;

use registry_core::db::now_ms;

use super::buildpack::BuildPackSpec;
use super::finish::Outcome;
use super::jobs::{JobRecord, registration_lock};
use super::{Manager, ManagerError, error_chain, ms};
use crate::model;
use crate::queue;
use crate::tokens::{BuildContext, LEEWAY_S, REGISTRATION_GRACE};

/// The one-shot registration lock outlives the registration token by its verification leeway.
const REGISTRATION_LOCK_MARGIN: Duration = Duration::from_secs(LEEWAY_S + 5);

impl Manager {
    /// The running job of the agent holding `ctx`: `None` when the job is gone or belongs to
    /// another attempt than the token's.
    pub(super) async fn job_of(
        &self,
        ctx: &BuildContext,
    ) -> Result<Option<JobRecord>, ManagerError> {
        let rec = self.load_job(&ctx.build_id).await?;
        Ok(rec.filter(|r| ctx.attempt_id.is_empty() || r.state_id() == ctx.attempt_id))
    }

    pub(super) async fn build_of(&self, uuid: &str) -> Result<Option<model::Build>, ManagerError> {
        let uuid = uuid.to_owned();
        Ok(self.builds.read(move |c| model::get(c, &uuid)).await?)
    }

    /// `RegisterBuildJob`: hand the agent its build pack and job token (reference 4.1).
    ///
    /// One-shot per attempt: a second registration with the attempt's token (a replay within
    /// its life) is refused and changes nothing. A build that cannot be built as asked (no
    /// source, no account to push as, an upload whose URL cannot be signed) ends as `error` with
    /// the reason at once, instead of expiring and being retried.
    #[tracing::instrument(skip_all, fields(build_id = %ctx.build_id))]
    pub async fn start_job(&self, ctx: &BuildContext) -> Result<BuildPackSpec, ManagerError> {
        let _guard = self.locks.lock(&ctx.build_id).await;
        let Some(mut rec) = self.job_of(ctx).await? else {
            return Err(ManagerError::JobGone(ctx.build_id.clone()));
        };
        if rec.registered {
            return Err(ManagerError::AlreadyRegistered(ctx.build_id.clone()));
        }
        let build = self
            .build_of(&ctx.build_id)
            .await?
            .ok_or_else(|| ManagerError::UnknownBuild(ctx.build_id.clone()))?;
        if build.phase.is_final() || build.completed_ms.is_some() {
            return Err(ManagerError::JobGone(ctx.build_id.clone()));
        }
        // The record check above covers this manager; the lock makes registration one-shot
        // across managers sharing the orchestrator too. It outlives the registration token.
        let once = registration_lock(&ctx.build_id, rec.state_id());
        let ttl =
            self.settings.registration_timeout + REGISTRATION_GRACE + REGISTRATION_LOCK_MARGIN;
        if !self.orchestrator.lock(&once, ttl).await? {
            return Err(ManagerError::AlreadyRegistered(ctx.build_id.clone()));
        }
        let pack = match self.build_pack(&build, ctx, rec.state_id()).await {
            Ok(pack) => pack,
            Err(e) if e.is_build_fault() => {
                let message = error_chain(&e);
                tracing::warn!(reason = %message, "the build cannot run; ending it as error");
                self.finish_attempt(&rec, Outcome::Failed { message })
                    .await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
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

    /// `LogMessage`: append one agent line to the log of the agent's build, if the agent's
    /// attempt is the build's running one. Returns whether it was appended; `false` tells the
    /// agent its job is over (a stale attempt, a finished build).
    pub async fn append_agent_log(
        &self,
        ctx: &BuildContext,
        message: &str,
    ) -> Result<bool, ManagerError> {
        let (uuid, attempt, message) = (
            ctx.build_id.clone(),
            ctx.attempt_id.clone(),
            message.to_owned(),
        );
        let appended = self
            .builds
            .write(move |tx| {
                // Checked in the appending transaction, so no attempt can end in between.
                let Some(row) = queue::live_attempt_row(tx, &uuid, &attempt)? else {
                    return Ok(false);
                };
                crate::logs::append_agent_message(tx, row, &message)?;
                Ok::<_, crate::db::BuildDbError>(true)
            })
            .await?;
        Ok(appended)
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
}
