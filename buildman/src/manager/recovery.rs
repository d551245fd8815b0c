//! Keeping builds from getting stuck: the orchestrator event listener (expired jobs, cancel
//! signals, jobs finished by another manager), the periodic sweeper, and recovery at startup.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

use super::finish::{Outcome, close};
use super::jobs::{JobRecord, job_key, log_error, set_phase_logged};
use super::{Manager, ManagerError, error_chain, ms};
use crate::executor::WorkerExit;
use crate::model::{self, Phase};
use crate::orchestrator::{EventKind, KeyEvent};
use crate::queue;

/// The running phases, in which a build must have a live job.
const RUNNING: [Phase; 5] = [
    Phase::BuildScheduled,
    Phase::Unpacking,
    Phase::Pulling,
    Phase::Building,
    Phase::Pushing,
];

/// Reason given for builds whose job vanished without an expiry being seen.
const LOST: &str = "the build's worker was lost (its job record disappeared, for example because \
                    the build manager restarted)";

impl Manager {
    pub(super) async fn event_loop(
        self: Arc<Self>,
        mut events: broadcast::Receiver<KeyEvent>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let event = tokio::select! {
                _ = stop.changed() => break,
                e = events.recv() => e,
            };
            match event {
                Ok(event) => {
                    // Handled in its own task: one slow build must not hold up the others'
                    // events (and make the receiver lag).
                    let me = Arc::clone(&self);
                    tokio::spawn(async move { me.on_event(event).await });
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "orchestrator events missed; sweeping");
                    let me = Arc::clone(&self);
                    tokio::spawn(async move { me.sweep_once().await });
                }
                Err(RecvError::Closed) => break,
            }
        }
    }

    /// Workers that ended on their own: end their attempt now (it is retried while retries
    /// remain) instead of after `heartbeat_ttl` without heartbeats.
    pub(super) async fn worker_exit_loop(
        self: Arc<Self>,
        mut exits: broadcast::Receiver<WorkerExit>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let exit = tokio::select! {
                _ = stop.changed() => break,
                e = exits.recv() => e,
            };
            match exit {
                Ok(exit) => {
                    let me = Arc::clone(&self);
                    tokio::spawn(async move { me.on_worker_exited(exit).await });
                }
                // Missed exits are still caught by their heartbeats lapsing.
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "worker exit notices missed");
                }
                Err(RecvError::Closed) => break,
            }
        }
    }

    async fn on_worker_exited(&self, exit: WorkerExit) {
        let uuid = self
            .local_jobs()
            .iter()
            .find(|(_, job)| job.execution_id == exit.execution_id)
            .map(|(uuid, _)| uuid.clone());
        // Not a worker of a running attempt here (it finished, or was stopped): nothing to do.
        let Some(uuid) = uuid else {
            return;
        };
        let result = async {
            let _guard = self.locks.lock(&uuid).await;
            let Some(rec) = self.load_job(&uuid).await? else {
                return Ok(());
            };
            if rec.execution_id.as_deref() != Some(exit.execution_id.as_str()) {
                return Ok(());
            }
            let reason = format!(
                "{} before the build finished (worker {})",
                exit.detail, exit.execution_id
            );
            tracing::warn!(build_id = %uuid, reason = %reason, "worker ended during its build");
            self.finish_attempt(&rec, Outcome::Incomplete { reason })
                .await
        }
        .await;
        if let Err(e) = result {
            tracing::error!(build_id = %uuid, error = %error_chain(&e),
                "failed to end the attempt of a worker that exited; its heartbeats will lapse");
        }
    }

    async fn on_event(&self, event: KeyEvent) {
        let result = match (event.kind, split_key(&event.key)) {
            (EventKind::Expire, Some(("building", uuid))) => {
                self.on_job_expired(uuid, &event.value).await
            }
            (EventKind::Create | EventKind::Set, Some(("cancel", uuid))) => {
                self.on_cancel_signal(uuid).await
            }
            (EventKind::Delete, Some(("building", uuid))) => {
                self.on_job_deleted(uuid, &event.value);
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::error!(key = %event.key, kind = ?event.kind, error = %error_chain(&e),
                "failed to handle orchestrator event");
        }
    }

    /// `building/<uuid>` expired: the agent never registered, or its heartbeats stopped.
    #[tracing::instrument(skip(self, value), fields(build_id = %uuid))]
    async fn on_job_expired(&self, uuid: &str, value: &str) -> Result<(), ManagerError> {
        let rec = match JobRecord::parse(uuid, value) {
            Ok(rec) => rec,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e),
                    "expired job record unreadable; recovering from the database");
                return self.recover_build(uuid, LOST, false).await;
            }
        };
        let _guard = self.locks.lock(uuid).await;
        // Rewritten since it expired (a heartbeat raced the expiry): the job is alive.
        if let Some(current) = self.load_job(uuid).await?
            && current.state_id() == rec.state_id()
        {
            tracing::debug!("job was refreshed after its expiry; ignoring the expiry");
            return Ok(());
        }
        let reason = self.expiry_reason(&rec);
        tracing::warn!(reason = %reason, "job expired");
        self.finish_attempt(&rec, Outcome::Incomplete { reason })
            .await
    }

    fn expiry_reason(&self, rec: &JobRecord) -> String {
        if rec.executor_name.is_none() {
            "the build's worker could not be started in time".to_owned()
        } else if !rec.registered {
            format!(
                "the build agent did not register within {} s (JOB_REGISTRATION_TIMEOUT)",
                self.settings.registration_timeout.as_secs()
            )
        } else if rec.last_heartbeat_ms.is_none() {
            "the build agent registered but sent no heartbeat within the executor's SETUP_TIME"
                .to_owned()
        } else {
            "the build agent stopped sending heartbeats (the agent or its machine died)".to_owned()
        }
    }

    /// Another manager (or this one) ended the job: stop the worker if it is ours and the same
    /// attempt (finishing an attempt here already stops it; stopping twice is harmless).
    fn on_job_deleted(&self, uuid: &str, value: &str) {
        let Ok(rec) = JobRecord::parse(uuid, value) else {
            return;
        };
        let ours = self
            .local_jobs()
            .get(uuid)
            .is_some_and(|j| rec.execution_id.as_deref() == Some(j.execution_id.as_str()));
        if ours {
            self.stop_worker_later(
                uuid,
                rec.executor_name.as_deref(),
                rec.execution_id.as_deref(),
            );
        }
    }

    pub(super) async fn sweeper_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                () = tokio::time::sleep(self.settings.sweep_interval) => {}
            }
            self.sweep_once().await;
        }
    }

    /// One sweep: expiries the orchestrator missed, then builds stuck in the database.
    async fn sweep_once(&self) {
        match self.orchestrator.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "sweep found expired jobs"),
            Err(e) => tracing::warn!(error = %error_chain(&e), "orchestrator sweep failed"),
        }
        if let Err(e) = self.recover_stuck().await {
            tracing::error!(error = %error_chain(&e), "recovery of stuck builds failed");
        }
    }

    /// Builds that no live job or valid claim accounts for: running ones whose claim lapsed
    /// without a job key, and items whose last attempt is over but whose build is not closed.
    async fn recover_stuck(&self) -> Result<(), ManagerError> {
        let (running, exhausted) = self
            .builds
            .read(|c| {
                let running: Vec<String> = model::in_phases(c, &RUNNING)?
                    .into_iter()
                    .filter(|b| !queue::is_claimed(c, &b.uuid).unwrap_or(true))
                    .map(|b| b.uuid)
                    .collect();
                Ok::<_, crate::db::BuildDbError>((running, queue::exhausted(c)?))
            })
            .await?;
        for uuid in running.iter().chain(&exhausted) {
            if self.orchestrator.get_key(&job_key(uuid)).await?.is_none() {
                self.recover_build(uuid, LOST, false).await?;
            }
        }
        Ok(())
    }

    /// Close or requeue build `uuid` whose job is gone. With `force`, a claim that still looks
    /// valid is ignored (at startup: it belonged to the previous process).
    #[tracing::instrument(skip(self), fields(build_id = %uuid))]
    async fn recover_build(
        &self,
        uuid: &str,
        reason: &str,
        force: bool,
    ) -> Result<(), ManagerError> {
        let _guard = self.locks.lock(uuid).await;
        if self.load_job(uuid).await?.is_some() {
            return Ok(());
        }
        let (id, reason_owned) = (uuid.to_owned(), reason.to_owned());
        let retry_after = ms(self.settings.retry_after);
        let action = self
            .builds
            .write(move |tx| -> Result<&'static str, crate::db::BuildDbError> {
                let Some(b) = model::get(tx, &id)? else {
                    return Ok("gone");
                };
                if b.phase.is_final() || b.completed_ms.is_some() {
                    queue::complete(tx, &id)?;
                    return Ok("already ended");
                }
                if !force && queue::is_claimed(tx, &id)? {
                    return Ok("claimed");
                }
                match queue::retries_remaining(tx, &id)? {
                    Some(0) | None => {
                        let attempts = b.attempts.max(1);
                        close(tx, &b, &format!(
                            "the build did not finish after {attempts} attempt{}: {reason_owned}",
                            if attempts == 1 { "" } else { "s" }
                        ))?;
                        Ok("closed")
                    }
                    Some(left) if b.phase.is_running() || force => {
                        log_error(tx, b.id, &format!(
                            "attempt {} failed: {reason_owned}; retrying ({left} attempt{} left)",
                            b.attempts.max(1),
                            if left == 1 { "" } else { "s" }
                        ))?;
                        if b.phase.is_running() {
                            set_phase_logged(tx, b.id, &id, None, Phase::InternalError,
                                Some(&reason_owned), serde_json::Map::new())?;
                        }
                        queue::incomplete(tx, &id, retry_after, false)?;
                        Ok("requeued")
                    }
                    Some(_) => Ok("waiting"),
                }
            })
            .await?;
        if matches!(action, "closed" | "requeued") {
            tracing::warn!(action, reason, "recovered a build whose job was lost");
            self.forget_credentials(uuid).await;
            self.stop_worker_later(uuid, None, None);
            self.wake.notify_one();
        }
        Ok(())
    }

    /// At startup: builds left running by a previous manager whose job is gone are failed as
    /// expired (retried or closed) at once, items claimed but never started are released with
    /// their retry, and the registry tokens of builds that are over are deleted. Idempotent, so
    /// [`Manager::run`] retries it whole after a failure.
    pub(super) async fn recover_at_startup(&self) -> Result<(), ManagerError> {
        let _ = self.orchestrator.sweep().await.map_err(|e| {
            tracing::warn!(error = %error_chain(&e), "orchestrator sweep failed at startup");
        });
        let (running, claimed) = self
            .builds
            .read(|c| {
                let running: Vec<String> = model::in_phases(c, &RUNNING)?
                    .into_iter()
                    .map(|b| b.uuid)
                    .collect();
                Ok::<_, crate::db::BuildDbError>((running, queue::claimed(c)?))
            })
            .await?;
        for uuid in &running {
            if self.orchestrator.get_key(&job_key(uuid)).await?.is_none() {
                self.recover_build(uuid, LOST, true).await?;
            }
        }
        for uuid in claimed.iter().filter(|u| !running.contains(u)) {
            if self.orchestrator.get_key(&job_key(uuid)).await?.is_none() {
                let id = uuid.clone();
                self.builds
                    .write(move |tx| queue::incomplete(tx, &id, 0, true))
                    .await?;
                tracing::info!(build_id = %uuid,
                    "released a claim the previous manager never used");
            }
        }
        let forgotten = self.forget_credentials_of_ended_builds().await?;
        if forgotten > 0 {
            tracing::info!(
                tokens = forgotten,
                "deleted registry tokens of ended builds"
            );
        }
        Ok(())
    }
}

/// `building/<uuid>` -> `("building", uuid)`; keys with more parts are not ours.
fn split_key(key: &str) -> Option<(&str, &str)> {
    let (kind, rest) = key.split_once('/')?;
    (!rest.is_empty() && !rest.contains('/')).then_some((kind, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_kind_and_build() {
        assert_eq!(split_key("building/abc"), Some(("building", "abc")));
        assert_eq!(split_key("cancel/abc"), Some(("cancel", "abc")));
        assert_eq!(split_key("building/abc/expired"), None);
        assert_eq!(split_key("building/"), None);
        assert_eq!(split_key("lock"), None);
    }
}
