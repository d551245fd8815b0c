//! The scheduler: claims queued builds while there is capacity and starts a worker for each.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Map;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::finish::{close, stop_in_background};
use super::jobs::{self, JobRecord, job_key, metric_key, set_phase_logged};
use super::{LocalJob, Manager, ManagerError, error_chain, ms};
use crate::executor::{self, StartJob};
use crate::model::{self, Build, Phase};
use crate::queue::{self, QueueItem};
use crate::tokens::{JobIdentity, REGISTRATION_GRACE, TokenType};

/// Shortest scheduler sleep (an item due "now" is retried this soon).
const MIN_TICK: Duration = Duration::from_millis(50);
/// Poll interval while every worker slot is taken: workers can end without telling us (a
/// popen agent exits), so the count is looked at again this often.
const FULL_POLL: Duration = Duration::from_secs(1);
/// Pause after a scheduling error (database or orchestrator down).
const ERROR_PAUSE: Duration = Duration::from_secs(2);
/// Margin over `SETUP_TIME` of the first queue claim (Quay: `setup_time + 60`).
const CLAIM_MARGIN: Duration = Duration::from_secs(60);

/// What one scheduling step did.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// A worker was started, or a claimed item of an ended build dropped: look for the next.
    Progress,
    /// The claimed build was put back (no executor, a live job): stop until the next tick, so
    /// that a short `RETRY_AFTER_S` cannot make the loop spin on it.
    Blocked,
    /// Nothing is ready.
    Idle,
}

impl Manager {
    pub(super) async fn scheduler_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let pause = match self.schedule_ready().await {
                Ok(pause) => pause,
                Err(e) => {
                    tracing::error!(error = %error_chain(&e), "scheduling failed; retrying");
                    ERROR_PAUSE
                }
            };
            tokio::select! {
                _ = stop.changed() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Start every ready build while there is capacity; returns how long to sleep.
    async fn schedule_ready(&self) -> Result<Duration, ManagerError> {
        loop {
            if !self.has_capacity().await {
                return Ok(FULL_POLL.min(self.settings.max_tick));
            }
            if self.schedule_one().await? != Step::Progress {
                break;
            }
        }
        let next = self.builds.read(queue::next_wakeup_ms).await?;
        let next = next.map_or(self.settings.max_tick, |ms| {
            Duration::from_millis(u64::try_from(ms).unwrap_or(0))
        });
        Ok(next.clamp(MIN_TICK, self.settings.max_tick.max(MIN_TICK)))
    }

    /// Whether fewer workers run than `ALLOWED_WORKER_COUNT` (checked before claiming, so that a
    /// full pool never consumes a retry: Quay 2.9.2).
    async fn has_capacity(&self) -> bool {
        let mut running = 0;
        for e in &self.executors {
            match e.running_builders_count().await {
                Ok(n) => running += n,
                Err(err) => tracing::warn!(executor = e.name(), error = %error_chain(&err),
                    "failed to count running workers"),
            }
        }
        running < self.settings.allowed_worker_count
    }

    fn claim_time(&self) -> Duration {
        let setup = self
            .executors
            .iter()
            .map(|e| e.setup_time())
            .max()
            .unwrap_or(Duration::ZERO);
        setup + CLAIM_MARGIN
    }

    async fn schedule_one(&self) -> Result<Step, ManagerError> {
        let claim_ms = ms(self.claim_time());
        let ordered = self.settings.ordered_builds_per_repo;
        let claimed = self
            .builds
            .write(move |tx| {
                let Some(item) = queue::claim(tx, claim_ms, ordered)? else {
                    return Ok(None);
                };
                match model::get(tx, &item.build_uuid)? {
                    // A build that ended while queued (cancelled between checks): drop its item.
                    Some(b) if b.phase.is_final() || b.completed_ms.is_some() => {
                        queue::complete(tx, &item.build_uuid)?;
                        Ok(Some(None))
                    }
                    Some(b) => Ok(Some(Some((item, b)))),
                    None => {
                        queue::complete(tx, &item.build_uuid)?;
                        Ok(Some(None))
                    }
                }
            })
            .await
            .map_err(ManagerError::Db)?;
        match claimed {
            None => Ok(Step::Idle),
            Some(None) => Ok(Step::Progress),
            Some(Some((item, build))) => {
                let span = tracing::info_span!("schedule", build_id = %item.build_uuid);
                self.start_attempt(item, build).instrument(span).await
            }
        }
    }

    /// Create the job record, mint the registration token and start a worker on the first
    /// eligible executor that accepts it.
    async fn start_attempt(&self, item: QueueItem, build: Build) -> Result<Step, ManagerError> {
        let uuid = item.build_uuid.clone();
        let _guard = self.locks.lock(&uuid).await;
        let mut rec = JobRecord::new(&item, self.settings.machine_max_time, self.claim_time());
        let reg = self.settings.registration_timeout;
        match self.save_job(&mut rec, reg, true).await {
            Ok(()) => {}
            Err(ManagerError::Orchestrator(
                crate::orchestrator::OrchestratorError::KeyExists { .. },
            )) => {
                // An earlier attempt is still live (its claim lapsed while it ran): give the
                // claim back with its retry and let that attempt finish.
                tracing::warn!("job key already exists; putting the build back");
                self.put_back(&uuid, true).await?;
                return Ok(Step::Blocked);
            }
            Err(e) => {
                self.put_back(&uuid, true).await?;
                return Err(e);
            }
        }
        let who = JobIdentity {
            build_id: uuid.clone(),
            job_id: self.job_id(&uuid),
            attempt_id: item.state_id.clone(),
        };
        let token = match self
            .tokens
            .mint(TokenType::Registration, &who, reg + REGISTRATION_GRACE)
        {
            Ok(t) => t,
            Err(e) => {
                self.orchestrator.delete_key(&job_key(&uuid)).await?;
                self.put_back(&uuid, true).await?;
                return Err(e.into());
            }
        };
        let job = StartJob {
            build_uuid: uuid.clone(),
            registration_token: token,
            grpc_server: self.settings.grpc_server.clone(),
            insecure: self.settings.insecure,
            registry_hostname: self.settings.registry_hostname.clone(),
        };
        let candidates = executor::pick(&self.executors, build.namespace(), item.retries_remaining);
        let mut failures = Vec::new();
        let mut started = None;
        for e in &candidates {
            match e.start_builder(&job).await {
                Ok(id) => {
                    started = Some((Arc::clone(e), id));
                    break;
                }
                Err(err) => {
                    let err = error_chain(&err);
                    tracing::warn!(executor = e.name(), error = %err,
                        "executor failed to start a worker");
                    failures.push(format!("{}: {err}", e.name()));
                }
            }
        }
        let Some((executor, execution_id)) = started else {
            let reason = if candidates.is_empty() {
                format!(
                    "none is eligible for namespace {:?} with {} retries left (check \
                     NAMESPACE_WHITELIST, STAGED_ROLLOUT and MINIMUM_RETRY_THRESHOLD)",
                    build.namespace(),
                    item.retries_remaining
                )
            } else {
                format!("every eligible executor failed ({})", failures.join("; "))
            };
            return self.unschedulable(&item, &reason).await;
        };

        match self
            .record_start(&item, &build, &mut rec, &executor, &execution_id)
            .await
        {
            Ok(step) => Ok(step),
            Err(e) => {
                // The worker runs but could not be recorded: stop it, and let the claim lapse so
                // that the build is retried (or closed by the sweeper).
                self.stop_worker_later(&uuid, Some(executor.name()), Some(&execution_id));
                let _ = self.orchestrator.delete_key(&job_key(&uuid)).await;
                Err(e)
            }
        }
    }

    /// Record a started worker: attempt number, `build-scheduled`, the job record with the
    /// registration window as its TTL, the metric key.
    async fn record_start(
        &self,
        item: &QueueItem,
        build: &Build,
        rec: &mut JobRecord,
        executor: &Arc<dyn executor::Executor>,
        execution_id: &str,
    ) -> Result<Step, ManagerError> {
        let uuid = item.build_uuid.clone();
        let reg = self.settings.registration_timeout;
        let attempt_uuid = uuid.clone();
        let (build_id, from) = (build.id, build.phase);
        let extend_ms = ms(executor.setup_time() + CLAIM_MARGIN);
        let access = executor.debug_access(execution_id).map(|how| {
            format!(
                "worker {execution_id} of executor {} can be reached for debugging: {how}",
                executor.name()
            )
        });
        let (attempt, moved) = self
            .builds
            .write(move |tx| {
                if from.is_running() {
                    // The previous attempt's claim lapsed without its end being recorded (its
                    // manager died, or the job record vanished): say so before starting anew.
                    let previous = model::get(tx, &attempt_uuid)?.map_or(0, |b| b.attempts);
                    jobs::log_error(
                        tx,
                        build_id,
                        &format!(
                            "attempt {previous} was lost: its queue claim lapsed before it \
                             finished; starting attempt {}",
                            previous + 1
                        ),
                    )?;
                }
                let attempt = model::start_attempt(tx, &attempt_uuid)?;
                let moved = set_phase_logged(
                    tx,
                    build_id,
                    &attempt_uuid,
                    Some(from),
                    Phase::BuildScheduled,
                    None,
                    Map::new(),
                )?;
                if let Some(line) = &access {
                    crate::logs::append(tx, build_id, crate::logs::Kind::Output, line, Map::new())?;
                }
                queue::extend(tx, &attempt_uuid, extend_ms, 0)?;
                Ok::<_, crate::db::BuildDbError>((attempt, moved))
            })
            .await?;
        rec.executor_name = Some(executor.name().to_owned());
        rec.execution_id = Some(execution_id.to_owned());
        rec.attempt = attempt;
        rec.claim_expires_ms = registry_core::db::now_ms() + extend_ms;
        let replaced = self.local_jobs().insert(
            uuid.clone(),
            LocalJob {
                executor: Arc::clone(executor),
                execution_id: execution_id.to_owned(),
            },
        );
        if let Some(old) = replaced {
            // An earlier attempt's claim lapsed without its end being seen: its worker is dead
            // to us, so make sure it is gone.
            stop_in_background(uuid.clone(), old);
        }
        if !moved && self.build_is_over(&uuid).await? {
            // Cancelled while the worker was starting: the cancel path found no worker to stop.
            tracing::info!("build ended while its worker started; stopping it");
            self.orchestrator.delete_key(&job_key(&uuid)).await?;
            self.stop_worker_later(&uuid, Some(executor.name()), Some(execution_id));
            return Ok(Step::Progress);
        }
        // The agent must register within the registration window.
        self.save_job(rec, reg, false).await?;
        let metric = serde_json::json!({
            "executor_name": executor.name(),
            "start_time": registry_core::db::now_ms() / 1000,
        });
        let ttl = self.settings.machine_max_time + Duration::from_secs(60);
        // Metrics only: a failure here must not fail the attempt.
        if let Err(e) = self
            .orchestrator
            .set_key(&metric_key(&uuid), &metric.to_string(), true, Some(ttl))
            .await
        {
            tracing::warn!(error = %error_chain(&e), "failed to write the build's metric key");
        }
        tracing::info!(executor = executor.name(), execution_id = %execution_id, attempt,
            retries_remaining = item.retries_remaining, "build scheduled");
        Ok(Step::Progress)
    }

    /// Give a claimed item back (with its retry when `restore_retry`), available after
    /// `RETRY_AFTER_S`.
    async fn put_back(&self, uuid: &str, restore_retry: bool) -> Result<(), ManagerError> {
        let uuid = uuid.to_owned();
        let after = ms(self.settings.retry_after);
        self.builds
            .write(move |tx| queue::incomplete(tx, &uuid, after, restore_retry))
            .await?;
        Ok(())
    }

    /// No executor could run the attempt: drop the job; the attempt is used up (its claim took
    /// the retry), and the log says why. With retries left the build waits `RETRY_AFTER_S` for
    /// the next attempt; after the last one it closes as `internalerror` with the reason, so a
    /// build nothing can run never blocks its repository's later builds. Only a full worker
    /// pool (checked before claiming) and orchestrator hiccups (`put_back`) give a retry back.
    async fn unschedulable(&self, item: &QueueItem, reason: &str) -> Result<Step, ManagerError> {
        tracing::warn!(reason, "no executor could start the build");
        let uuid = item.build_uuid.clone();
        self.orchestrator.delete_key(&job_key(&uuid)).await?;
        let reason = format!("no executor could start this build: {reason}");
        let (state_id, left) = (item.state_id.clone(), item.retries_remaining);
        let after = ms(self.settings.retry_after);
        let closed = self
            .builds
            .write(move |tx| {
                if !queue::is_current_claim(tx, &uuid, &state_id)? {
                    // Cancelled (or otherwise ended) meanwhile.
                    return Ok(false);
                }
                let Some(build) = model::get(tx, &uuid)? else {
                    return Ok(false);
                };
                let attempt = model::start_attempt(tx, &uuid)?;
                if left == 0 {
                    close(tx, &build, &reason)?;
                    return Ok(true);
                }
                let message = format!(
                    "attempt {attempt} failed: {reason}; retrying in {} s ({left} attempt{} left)",
                    after / 1000,
                    if left == 1 { "" } else { "s" }
                );
                jobs::log_error(tx, build.id, &message)?;
                queue::incomplete(tx, &uuid, after, false)?;
                Ok::<_, crate::db::BuildDbError>(false)
            })
            .await?;
        if closed {
            tracing::warn!("build closed: no executor could start its last attempt");
            self.forget_credentials(&item.build_uuid).await;
            // Its item is gone: the repository's next build may start now.
            return Ok(Step::Progress);
        }
        Ok(Step::Blocked)
    }

    /// Whether build `uuid` reached a final phase (or was closed).
    pub(super) async fn build_is_over(&self, uuid: &str) -> Result<bool, ManagerError> {
        let uuid = uuid.to_owned();
        let build = self.builds.read(move |c| model::get(c, &uuid)).await?;
        Ok(build.is_none_or(|b| b.phase.is_final() || b.completed_ms.is_some()))
    }
}
