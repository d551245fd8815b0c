//! Ending an attempt (Quay's `on_job_complete`, with the fixes of design.md): the build's phase,
//! its queue item, its credentials, its orchestrator keys and its worker.

use serde_json::Map;

use super::jobs::{
    JobRecord, credential_title_build, credential_title_pattern, credential_titles, job_key,
    log_error, metric_key, registration_lock, set_phase_logged,
};
use super::{LocalJob, Manager, ManagerError, error_chain, ms};
use crate::db::BuildDbError;
use crate::model::{self, Phase};
use crate::orchestrator::LOCK_PREFIX;
use crate::queue;

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Every tag pushed (`COMPLETE`).
    Complete {
        /// The manifest digests, one per tag.
        digests: Vec<String>,
    },
    /// The build's input is at fault (agent `ERROR`, not retryable): `error`, never retried.
    Failed {
        /// The agent's message.
        message: String,
    },
    /// The infrastructure failed (retryable `ERROR`, expiry, lost heartbeats): `internalerror`,
    /// retried while retries remain, then closed with the reason.
    Incomplete {
        /// Why, for the build's log and error.
        reason: String,
    },
    /// The build was cancelled (its phase and queue item were handled by the cancel).
    Cancelled,
}

impl Manager {
    /// End the attempt recorded in `rec`. The caller holds the build's lock. Applying the
    /// outcome twice (an expiry racing a late `SetPhase`) is harmless: the database part runs
    /// only while the attempt's queue claim is current.
    #[tracing::instrument(skip_all, fields(build_id = %rec.uuid()))]
    pub(super) async fn finish_attempt(
        &self,
        rec: &JobRecord,
        outcome: Outcome,
    ) -> Result<(), ManagerError> {
        let uuid = rec.uuid().to_owned();
        // Taken before the key goes, so that the key's Delete event finds no worker to stop.
        let worker = self.take_worker(
            &uuid,
            rec.executor_name.as_deref(),
            rec.execution_id.as_deref(),
        );
        let result = self.finish_records(rec, &outcome).await;
        // Stopped even when recording failed: the sweeper recovers the build, not the worker.
        if let Some(worker) = worker {
            stop_in_background(uuid, worker);
        }
        self.wake.notify_one();
        result
    }

    /// The orchestrator, database and credential part of [`Manager::finish_attempt`].
    async fn finish_records(&self, rec: &JobRecord, outcome: &Outcome) -> Result<(), ManagerError> {
        let uuid = rec.uuid().to_owned();
        // Keys first: once the item is put back, a new attempt may create them again. A stale
        // attempt (a later one owns the job key) leaves the keys alone.
        if self.delete_job_key_of(rec).await? {
            self.orchestrator.delete_key(&metric_key(&uuid)).await?;
        }
        self.release_registration(&uuid, rec.state_id()).await;

        let (state_id, retry_after) = (rec.state_id().to_owned(), self.settings.retry_after);
        let db_uuid = uuid.clone();
        let db_outcome = outcome.clone();
        let applied = self
            .builds
            .write(move |tx| {
                if !queue::is_current_claim(tx, &db_uuid, &state_id)? {
                    return Ok(None);
                }
                let Some(build) = model::get(tx, &db_uuid)? else {
                    return Ok(None);
                };
                apply(tx, &build, &db_outcome, ms(retry_after)).map(Some)
            })
            .await?;
        match &applied {
            Some((phase, _)) => {
                tracing::info!(outcome = ?outcome, phase = %phase, "attempt finished");
            }
            None => tracing::debug!(outcome = ?outcome, "attempt already finished"),
        }
        // The attempt's own tokens go in any case; every attempt's when the build is over.
        self.forget_attempt_credentials(&uuid, rec.state_id()).await;
        if matches!(applied, Some((_, true))) {
            self.forget_credentials(&uuid).await;
        }
        Ok(())
    }

    /// Delete `building/<uuid>` if it still holds the attempt of `rec` (not a later one); returns
    /// whether `rec` was the current attempt (or no attempt holds the key any more).
    pub(super) async fn delete_job_key_of(&self, rec: &JobRecord) -> Result<bool, ManagerError> {
        let key = job_key(rec.uuid());
        if let Some(current) = self.load_job(rec.uuid()).await.ok().flatten()
            && current.state_id() != rec.state_id()
        {
            return Ok(false);
        }
        self.orchestrator.delete_key(&key).await?;
        Ok(true)
    }

    /// Drop the one-shot registration lock of an attempt that ended (a replayed registration
    /// token finds no running job then anyway). Best effort: the lock expires with the token.
    async fn release_registration(&self, uuid: &str, attempt_id: &str) {
        let key = format!("{LOCK_PREFIX}{}", registration_lock(uuid, attempt_id));
        if let Err(e) = self.orchestrator.delete_key(&key).await {
            tracing::warn!(build_id = %uuid, error = %error_chain(&e),
                "failed to release the registration lock");
        }
    }

    /// Delete the registry tokens of attempt `attempt_id` of build `uuid`. A failure is logged,
    /// not returned: the tokens expire with `MACHINE_MAX_TIME` anyway.
    pub(super) async fn forget_attempt_credentials(&self, uuid: &str, attempt_id: &str) {
        let titles = credential_titles(uuid, attempt_id);
        let result = self
            .registry
            .db
            .write(move |tx| {
                for title in &titles {
                    registry_core::accounts::tokens::delete_by_title(tx, title)?;
                }
                Ok::<_, registry_core::accounts::AccountError>(())
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(build_id = %uuid, error = %error_chain(&e),
                "failed to delete the attempt's registry tokens");
        }
    }

    /// Delete the registry tokens of every attempt of build `uuid` (`build:<uuid>:*`), when the
    /// build is over or no attempt can be running. Logged, not returned, like
    /// [`Manager::forget_attempt_credentials`].
    pub(super) async fn forget_credentials(&self, uuid: &str) {
        if let Err(e) = delete_build_tokens(&self.registry.db, uuid).await {
            tracing::warn!(build_id = %uuid, error = %error_chain(&e),
                "failed to delete the build's registry tokens");
        }
    }

    /// At startup: delete the registry tokens of builds that are over (or gone), left behind by
    /// a manager that stopped before deleting them.
    pub(super) async fn forget_credentials_of_ended_builds(&self) -> Result<usize, ManagerError> {
        // registry-core has no listing of tokens by title, and buildman owns every `build:`
        // title, so the titles are read with SQL here.
        let titles: Vec<String> = self
            .registry
            .db
            .read(|c| {
                let mut stmt = c.prepare(
                    "SELECT DISTINCT title FROM access_token WHERE title LIKE 'build:%'",
                )?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok::<_, registry_core::db::DbError>(rows.collect::<Result<_, _>>()?)
            })
            .await?;
        let mut uuids: Vec<&str> = titles
            .iter()
            .filter_map(|t| credential_title_build(t))
            .collect();
        uuids.sort_unstable();
        uuids.dedup();
        let mut forgotten = 0;
        for uuid in uuids {
            if self.build_is_over(uuid).await? {
                forgotten += delete_build_tokens(&self.registry.db, uuid).await?;
            }
        }
        Ok(forgotten)
    }

    /// Stop the worker of an attempt in the background (the agent's RPC that ended the attempt
    /// gets its answer first); see [`Manager::take_worker`].
    pub(super) fn stop_worker_later(
        &self,
        uuid: &str,
        executor_name: Option<&str>,
        execution_id: Option<&str>,
    ) {
        if let Some(worker) = self.take_worker(uuid, executor_name, execution_id) {
            stop_in_background(uuid.to_owned(), worker);
        }
    }

    /// The worker of an attempt, removed from this manager's records: the one this manager
    /// started when it has it (and `execution_id` matches, if given), else the executor named in
    /// the job record (an executor that does not know the id ignores the stop).
    pub(super) fn take_worker(
        &self,
        uuid: &str,
        executor_name: Option<&str>,
        execution_id: Option<&str>,
    ) -> Option<LocalJob> {
        let local = {
            let mut jobs = self.local_jobs();
            match jobs.get(uuid) {
                Some(j) if execution_id.is_none_or(|id| id == j.execution_id) => jobs.remove(uuid),
                _ => None,
            }
        };
        match (local, executor_name, execution_id) {
            (Some(j), _, _) => Some(j),
            (None, Some(name), Some(id)) => self.executor_named(name).map(|executor| LocalJob {
                executor,
                execution_id: id.to_owned(),
            }),
            _ => None,
        }
    }
}

/// Stop `job`'s worker in a task of its own.
pub(super) fn stop_in_background(uuid: String, job: LocalJob) {
    tokio::spawn(async move {
        let LocalJob {
            executor,
            execution_id,
        } = job;
        match executor.stop_builder(&execution_id).await {
            Ok(()) => tracing::info!(build_id = %uuid, execution_id = %execution_id,
                executor = executor.name(), "worker stopped"),
            Err(e) => tracing::error!(build_id = %uuid, execution_id = %execution_id,
                error = %error_chain(&e), "failed to stop worker"),
        }
    });
}

/// Delete every `build:<uuid>:*` token of build `uuid`; returns how many.
async fn delete_build_tokens(
    db: &registry_core::db::Db,
    uuid: &str,
) -> Result<usize, registry_core::db::DbError> {
    let pattern = credential_title_pattern(uuid);
    db.write(move |tx| {
        // registry-core deletes by exact title only; a pattern reaches every attempt's tokens.
        Ok(tx.execute(
            "DELETE FROM access_token WHERE title LIKE ?1 ESCAPE '\\'",
            [&pattern],
        )?)
    })
    .await
}

/// The database part of finishing: phase, log entries, queue item. Returns the phase set and
/// whether the build is over (no further attempt).
fn apply(
    tx: &rusqlite::Connection,
    build: &model::Build,
    outcome: &Outcome,
    retry_after_ms: i64,
) -> Result<(Phase, bool), BuildDbError> {
    let uuid = build.uuid.as_str();
    match outcome {
        Outcome::Complete { digests } => {
            set_phase_logged(tx, build.id, uuid, None, Phase::Complete, None, Map::new())?;
            model::set_manifest_digests(tx, uuid, digests)?;
            model::clear_error(tx, uuid)?;
            queue::complete(tx, uuid)?;
            Ok((Phase::Complete, true))
        }
        Outcome::Failed { message } => {
            log_error(tx, build.id, message)?;
            set_phase_logged(
                tx,
                build.id,
                uuid,
                None,
                Phase::Error,
                Some(message),
                Map::new(),
            )?;
            queue::complete(tx, uuid)?;
            Ok((Phase::Error, true))
        }
        Outcome::Incomplete { reason } => {
            let left = queue::retries_remaining(tx, uuid)?.unwrap_or(0);
            let attempts = build.attempts.max(1);
            if left > 0 {
                let message = format!(
                    "attempt {attempts} failed: {reason}; retrying in {} s ({left} attempt{} left)",
                    retry_after_ms / 1000,
                    if left == 1 { "" } else { "s" }
                );
                log_error(tx, build.id, &message)?;
                set_phase_logged(
                    tx,
                    build.id,
                    uuid,
                    None,
                    Phase::InternalError,
                    Some(reason),
                    Map::new(),
                )?;
                queue::incomplete(tx, uuid, retry_after_ms, false)?;
                Ok((Phase::InternalError, false))
            } else {
                close(
                    tx,
                    build,
                    &format!(
                        "the build did not finish after {attempts} attempt{}: {reason}",
                        if attempts == 1 { "" } else { "s" }
                    ),
                )?;
                Ok((Phase::InternalError, true))
            }
        }
        Outcome::Cancelled => Ok((Phase::Cancelled, true)),
    }
}

/// Close a build as `internalerror` for good, with `reason`, and remove its queue item.
pub(super) fn close(
    tx: &rusqlite::Connection,
    build: &model::Build,
    reason: &str,
) -> Result<(), BuildDbError> {
    log_error(tx, build.id, reason)?;
    let closed = model::close_internal_error(tx, &build.uuid, reason)?;
    if closed {
        crate::events::record(
            tx,
            &build.uuid,
            crate::events::BuildEvent::Failure,
            Some(reason),
        )?;
    }
    if closed && build.phase != Phase::InternalError {
        crate::logs::append(
            tx,
            build.id,
            crate::logs::Kind::Phase,
            Phase::InternalError.as_str(),
            Map::new(),
        )?;
    }
    queue::complete(tx, &build.uuid)?;
    Ok(())
}
