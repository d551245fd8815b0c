//! The build manager: schedules queued builds onto executors, serves their agents (through
//! [`crate::grpc`]) and finishes, retries, cancels and recovers builds.
//!
//! Quay's `EphemeralBuilderManager` (reference 2.4) with its bugs fixed (2.9):
//! - capacity is checked *before* a queue item is claimed, so waiting for a worker never uses a
//!   retry; an attempt no executor could start is used up, and the last one closes the build
//!   with the reason instead of looping on it;
//! - the scheduler wakes on `Manager::wake`, when a job ends and on a short tick computed from
//!   the queue, instead of sleeping 10 s between jobs;
//! - an agent's user error (`SetPhase(ERROR)`, not retryable) ends the build as `error` with the
//!   agent's message; infrastructure failures are retried, and the last one closes the build with
//!   the reason instead of leaving it stuck;
//! - cancelling a running build stops its worker within seconds (`cancel/<uuid>` key);
//! - a sweeper and a startup pass recover builds whose job vanished (missed expiry events, a
//!   manager restart).
//!
//! State shared between managers lives in the database (build rows, queue items) and the
//! orchestrator (`building/<uuid>`: the running attempt's `JobRecord`); each manager only
//! remembers which workers it started itself, to stop them.

mod agent;
mod buildpack;
mod cancel;
mod finish;
mod jobs;
mod phase;
mod recovery;
mod scheduler;
mod settings;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use registry_core::db::Db;
use registry_core::state::AppState;
use tokio::sync::{Notify, watch};

pub use self::buildpack::{
    BaseImageCredentials, BuildPackSpec, PackSource, extract_dockerfile_args,
};
pub use self::phase::{PhaseReport, PullInfo};
pub use self::settings::ManagerSettings;
use crate::db::BuildDbError;
use crate::executor::Executor;
use crate::orchestrator::{Orchestrator, OrchestratorError};
use crate::tokens::{BuildContext, BuildTokenError, BuildTokens, TokenType};

/// Signs the agent's download URL of an uploaded build package: `(file_id, lifetime) -> URL`
/// (the API's `/buildpack/{file_id}?token=...`, `crate::api::buildpack::package_url`).
pub type PackageUrlFn = Arc<
    dyn Fn(&str, Duration) -> Result<String, registry_core::auth::token::TokenError> + Send + Sync,
>;

/// First pause before startup recovery is tried again; it doubles up to the maximum.
const RECOVERY_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest pause between startup recovery attempts.
const RECOVERY_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What [`Manager::new`] is built from.
pub struct ManagerParts {
    /// Timers and identity.
    pub settings: ManagerSettings,
    /// `builds.db`.
    pub builds: Db,
    /// registry-core's state: accounts and tags (`meta.db`), the signing key.
    pub registry: AppState,
    /// Running jobs, shared with other managers.
    pub orchestrator: Arc<dyn Orchestrator>,
    /// Executors in configuration order.
    pub executors: Vec<Arc<dyn Executor>>,
    /// Signs download URLs of uploaded packages.
    pub package_url: PackageUrlFn,
    /// Opens the deploy keys of triggers (`build_trigger.secure_private_key`).
    pub secrets: Arc<crate::secrets::SecretBox>,
}

impl std::fmt::Debug for ManagerParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerParts")
            .field("settings", &self.settings)
            .field("orchestrator", &self.orchestrator)
            .field("executors", &self.executors)
            .finish_non_exhaustive()
    }
}

/// Why a manager operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// `builds.db` failed.
    #[error("build database operation failed")]
    Db(#[from] BuildDbError),
    /// The registry's database failed.
    #[error("registry database operation failed")]
    RegistryDb(#[from] registry_core::db::DbError),
    /// Creating or deleting the build's registry credentials failed.
    #[error("failed to manage the build's registry credentials")]
    Account(#[from] registry_core::accounts::AccountError),
    /// The orchestrator failed.
    #[error("orchestrator operation failed")]
    Orchestrator(#[from] OrchestratorError),
    /// A build token was refused or could not be made.
    #[error(transparent)]
    Token(#[from] BuildTokenError),
    /// No such build.
    #[error("build {0} not found")]
    UnknownBuild(String),
    /// The job of the agent's build is not running (expired, finished, cancelled or replaced by
    /// a later attempt).
    #[error("build {0} has no running job for this agent: it expired, finished or was cancelled")]
    JobGone(String),
    /// The signed download URL of an upload could not be made.
    #[error("failed to sign the download URL of the build's upload")]
    PackageUrl(#[source] registry_core::auth::token::TokenError),
    /// The build has nothing to build from.
    #[error("build {0} has no source: no archive URL, upload or git repository")]
    NoSource(String),
    /// The build has no user whose rights its push token could carry.
    #[error("build {uuid} cannot push: {problem}")]
    NoPushUser {
        /// The build.
        uuid: String,
        /// What is wrong.
        problem: String,
    },
    /// The pull robot of the build is gone or disabled.
    #[error(
        "build {uuid} cannot pull its base image: pull robot {robot:?} no longer exists or is disabled"
    )]
    NoPullRobot {
        /// The build.
        uuid: String,
        /// The robot's name.
        robot: String,
    },
    /// The trigger that started the build was deleted, so its deploy key is gone.
    #[error(
        "build {uuid} cannot fetch its source: its build trigger {trigger} was deleted, and its \
         deploy key with it"
    )]
    TriggerGone {
        /// The build.
        uuid: String,
        /// The trigger.
        trigger: String,
    },
    /// The trigger's deploy key does not decrypt (the secret key changed).
    #[error(
        "build {uuid} cannot fetch its source: the deploy key of trigger {trigger} does not open"
    )]
    DeployKey {
        /// The build.
        uuid: String,
        /// The trigger.
        trigger: String,
        /// The cause (names the key to restore).
        #[source]
        source: crate::secrets::SecretError,
    },
    /// The trigger row could not be read (permanent when it does not parse).
    #[error("build {uuid} cannot fetch its source: its build trigger {trigger} could not be read")]
    TriggerRow {
        /// The build.
        uuid: String,
        /// The trigger.
        trigger: String,
        /// The cause (boxed: it is far larger than the other variants).
        #[source]
        source: Box<crate::trigger::StoreError>,
    },
    /// A second `RegisterBuildJob` with an attempt's registration token (a replay).
    #[error(
        "build {0}: this attempt's worker has registered already; a registration token works once"
    )]
    AlreadyRegistered(String),
    /// The job record in the orchestrator does not parse.
    #[error("job record of build {uuid} is not valid JSON")]
    JobRecord {
        /// The build.
        uuid: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl ManagerError {
    /// Whether the build itself is at fault (nothing to build from, no account to push or pull
    /// as, an upload whose download URL cannot be signed): retrying cannot help, so the build
    /// ends as `error` with this message.
    pub fn is_build_fault(&self) -> bool {
        matches!(
            self,
            ManagerError::NoSource(_)
                | ManagerError::TriggerGone { .. }
                | ManagerError::DeployKey { .. }
                | ManagerError::NoPushUser { .. }
                | ManagerError::NoPullRobot { .. }
                | ManagerError::PackageUrl(_)
        ) || self.is_unreadable_trigger()
    }

    /// A trigger row that does not parse (unknown service, config not JSON) stays so: permanent.
    /// A database error reading it may pass, and is retried like any other.
    fn is_unreadable_trigger(&self) -> bool {
        matches!(self, ManagerError::TriggerRow { source, .. }
            if !matches!(**source, crate::trigger::StoreError::Db(_)))
    }
}

/// A worker this manager started, so that it can stop it.
#[derive(Clone, Debug)]
struct LocalJob {
    executor: Arc<dyn Executor>,
    execution_id: String,
}

/// The build manager; share it as `Arc<Manager>`.
pub struct Manager {
    settings: ManagerSettings,
    builds: Db,
    registry: AppState,
    orchestrator: Arc<dyn Orchestrator>,
    executors: Vec<Arc<dyn Executor>>,
    tokens: BuildTokens,
    package_url: PackageUrlFn,
    secrets: Arc<crate::secrets::SecretBox>,
    wake: Notify,
    local: std::sync::Mutex<HashMap<String, LocalJob>>,
    locks: jobs::BuildLocks,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("settings", &self.settings)
            .field("orchestrator", &self.orchestrator.backend())
            .field(
                "executors",
                &self.executors.iter().map(|e| e.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// A manager over `parts`; call [`Manager::run`] to start its loops.
    pub fn new(parts: ManagerParts) -> Arc<Manager> {
        let tokens = BuildTokens::new(&parts.registry.keys, &parts.settings.manager_hostname);
        Arc::new(Manager {
            settings: parts.settings,
            builds: parts.builds,
            registry: parts.registry,
            orchestrator: parts.orchestrator,
            executors: parts.executors,
            tokens,
            package_url: parts.package_url,
            secrets: parts.secrets,
            wake: Notify::new(),
            local: std::sync::Mutex::new(HashMap::new()),
            locks: jobs::BuildLocks::default(),
        })
    }

    /// The settings in use.
    pub fn settings(&self) -> &ManagerSettings {
        &self.settings
    }

    /// Run the scheduler, the orchestrator event listener and the sweeper until `shutdown`
    /// resolves, then stop every worker this manager started.
    ///
    /// Recovery of builds left running by a previous process runs first, retried with backoff
    /// until it succeeds (a database or orchestrator outage at startup must not leave the
    /// server up without a scheduler). Never fails: every loop logs its own errors and carries
    /// on; the `Result` is kept for callers.
    pub async fn run<F>(self: &Arc<Self>, shutdown: F) -> Result<(), ManagerError>
    where
        F: Future<Output = ()> + Send,
    {
        let mut shutdown = std::pin::pin!(shutdown);
        // Subscribe before recovering, so that no event between the two is missed.
        let events = self.orchestrator.subscribe();
        let mut backoff = RECOVERY_BACKOFF_MIN;
        loop {
            match self.recover_at_startup().await {
                Ok(()) => break,
                Err(e) => tracing::error!(error = %error_chain(&e), retry_in = ?backoff,
                    "startup recovery failed; no build is scheduled until it succeeds"),
            }
            tokio::select! {
                () = &mut shutdown => {
                    tracing::info!("build manager stopping before startup recovery finished");
                    self.stop_all_workers().await;
                    return Ok(());
                }
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RECOVERY_BACKOFF_MAX);
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(Arc::clone(self).scheduler_loop(stop_rx.clone())),
            tokio::spawn(Arc::clone(self).event_loop(events, stop_rx.clone())),
            tokio::spawn(Arc::clone(self).sweeper_loop(stop_rx.clone())),
        ];
        for exits in self.executors.iter().filter_map(|e| e.worker_exits()) {
            tasks.push(tokio::spawn(
                Arc::clone(self).worker_exit_loop(exits, stop_rx.clone()),
            ));
        }
        shutdown.await;
        tracing::info!("build manager stopping");
        // Receivers may be gone already if a task ended; nothing to tell them then.
        let _ = stop_tx.send(true);
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "build manager task panicked");
            }
        }
        self.stop_all_workers().await;
        Ok(())
    }

    async fn stop_all_workers(&self) {
        for executor in &self.executors {
            if let Err(e) = executor.shutdown_all().await {
                tracing::error!(executor = executor.name(), error = %error_chain(&e),
                    "failed to stop the executor's workers");
            }
        }
    }

    /// Verify a build token of type `ty` and that its `job_id` names its build.
    pub fn verify_token(&self, token: &str, ty: TokenType) -> Result<BuildContext, ManagerError> {
        let ctx = self.tokens.verify(token, ty)?;
        if ctx.job_id != self.job_id(&ctx.build_id) {
            return Err(BuildTokenError::WrongJob.into());
        }
        Ok(ctx)
    }

    /// Quay's `job_id`: the job key with the orchestrator prefix.
    fn job_id(&self, uuid: &str) -> String {
        format!(
            "{}{}",
            self.settings.orchestrator_prefix,
            jobs::job_key(uuid)
        )
    }

    fn executor_named(&self, name: &str) -> Option<Arc<dyn Executor>> {
        self.executors.iter().find(|e| e.name() == name).cloned()
    }

    fn local_jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, LocalJob>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts and
        // removes), so a poisoned lock is still usable.
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl crate::control::BuildControl for Manager {
    fn wake(&self) {
        // notify_one stores a permit when the scheduler is busy, so no wake-up is lost.
        self.wake.notify_one();
    }

    async fn cancel(&self, uuid: &str) -> Result<crate::control::CancelOutcome, String> {
        self.cancel_build(uuid).await.map_err(|e| error_chain(&e))
    }
}

/// `e` and its sources, joined by `: ` (for log fields and messages).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Milliseconds of `d`, saturating.
fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
