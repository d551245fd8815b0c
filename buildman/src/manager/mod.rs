//! The build manager: schedules queued builds onto executors, serves their agents (through
//! [`crate::grpc`]) and finishes, retries, cancels and recovers builds.
//!
//! Quay's `EphemeralBuilderManager` (reference 2.4) with its bugs fixed (2.9):
//! - capacity is checked *before* a queue item is claimed, so waiting for a worker never uses a
//!   retry, and an attempt no executor could start gives its retry back;
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
mod recovery;
mod scheduler;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use registry_core::db::Db;
use registry_core::state::AppState;
use tokio::sync::{Notify, watch};

pub use self::agent::{PhaseReport, PullInfo};
pub use self::buildpack::{
    BaseImageCredentials, BuildPackSpec, PackSource, extract_dockerfile_args,
};
use crate::db::BuildDbError;
use crate::executor::Executor;
use crate::orchestrator::{Orchestrator, OrchestratorError};
use crate::tokens::{BuildContext, BuildTokenError, BuildTokens, TokenType};

/// Signs the agent's download URL of an uploaded build package: `(file_id, lifetime) -> URL`
/// (the API's `/buildpack/{file_id}?token=...`, `crate::api::buildpack::package_url`).
pub type PackageUrlFn = Arc<
    dyn Fn(&str, Duration) -> Result<String, registry_core::auth::token::TokenError> + Send + Sync,
>;

/// The manager's timers and identity, in plain types (the lead maps the configuration to it).
#[derive(Clone, Debug)]
pub struct ManagerSettings {
    /// Audience of build tokens: `BUILDMAN_HOSTNAME`, else `SERVER_HOSTNAME`.
    pub manager_hostname: String,
    /// `SERVER_HOSTNAME` (with port): the registry agents push to.
    pub registry_hostname: String,
    /// `host:port` of the gRPC service, as agents dial it.
    pub grpc_server: String,
    /// Plaintext gRPC and registry for agents (Quay's `INSECURE`).
    pub insecure: bool,
    /// `ORCHESTRATOR_PREFIX`, normalised to end with `/` (or empty); part of tokens' `job_id`.
    pub orchestrator_prefix: String,
    /// `JOB_REGISTRATION_TIMEOUT` (Quay: 30 s): an agent must register this soon after start.
    pub registration_timeout: Duration,
    /// `MACHINE_MAX_TIME` (Quay: 7200 s): cap on one attempt, and the job token's lifetime.
    pub machine_max_time: Duration,
    /// `ALLOWED_WORKER_COUNT`: workers running at once, summed over executors.
    pub allowed_worker_count: usize,
    /// `ORDERED_BUILDS_PER_REPO`: one build per repository at a time, in order.
    pub ordered_builds_per_repo: bool,
    /// `RETRY_AFTER_S` (Quay: 30 s): delay before a failed attempt is retried.
    pub retry_after: Duration,
    /// TTL of the job key set by each heartbeat (Quay: 2 x 30 s).
    pub heartbeat_ttl: Duration,
    /// A heartbeat later than this after the previous one fails the attempt (Quay: 60 s).
    pub heartbeat_delta: Duration,
    /// Queue claim kept this far ahead by heartbeats (Quay's `JOB_TIMEOUT_SECONDS`: 300 s).
    pub job_timeout: Duration,
    /// The claim is only rewritten when it moves by more than this (Quay: 60 s).
    pub minimum_job_extension: Duration,
    /// How often the sweeper runs (orchestrator sweep and stuck-build recovery).
    pub sweep_interval: Duration,
    /// Longest scheduler sleep without a wake-up.
    pub max_tick: Duration,
    /// Lifetime of the signed download URL of an uploaded package.
    pub package_url_ttl: Duration,
}

impl ManagerSettings {
    /// Quay's defaults for a manager reached at `manager_hostname`, pushing to
    /// `registry_hostname`, with agents dialling `grpc_server`.
    pub fn new(manager_hostname: &str, registry_hostname: &str, grpc_server: &str) -> Self {
        ManagerSettings {
            manager_hostname: manager_hostname.to_owned(),
            registry_hostname: registry_hostname.to_owned(),
            grpc_server: grpc_server.to_owned(),
            insecure: true,
            orchestrator_prefix: String::new(),
            registration_timeout: Duration::from_secs(30),
            machine_max_time: Duration::from_secs(7200),
            allowed_worker_count: 1,
            ordered_builds_per_repo: true,
            retry_after: Duration::from_secs(30),
            heartbeat_ttl: Duration::from_secs(60),
            heartbeat_delta: Duration::from_secs(60),
            job_timeout: Duration::from_secs(300),
            minimum_job_extension: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(5),
            max_tick: Duration::from_secs(5),
            package_url_ttl: Duration::from_secs(3600),
        }
    }
}

impl ManagerSettings {
    /// The settings of `config`, with agents dialling the gRPC service bound at `grpc_addr`
    /// (an unspecified address is dialled on loopback: popen agents run on this machine).
    pub fn from_config(config: &crate::config::Config, grpc_addr: std::net::SocketAddr) -> Self {
        let mut dial = grpc_addr;
        if dial.ip().is_unspecified() {
            dial.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        ManagerSettings {
            orchestrator_prefix: config.orchestrator_prefix().to_owned(),
            registration_timeout: config.registration_timeout(),
            machine_max_time: config.machine_max_time(),
            allowed_worker_count: config.allowed_worker_count(),
            ordered_builds_per_repo: config.ordered_builds_per_repo(),
            retry_after: config.retry_after(),
            package_url_ttl: config.machine_max_time(),
            ..ManagerSettings::new(
                &config.manager_hostname(),
                &config.registry.server_hostname,
                &dial.to_string(),
            )
        }
    }
}

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
    /// Recovery of builds left running by a previous process runs first; its failure is the
    /// only error returned (the loops log their own errors and carry on).
    pub async fn run<F>(self: &Arc<Self>, shutdown: F) -> Result<(), ManagerError>
    where
        F: Future<Output = ()> + Send,
    {
        // Subscribe before recovering, so that no event between the two is missed.
        let events = self.orchestrator.subscribe();
        self.recover_at_startup().await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let tasks = [
            tokio::spawn(Arc::clone(self).scheduler_loop(stop_rx.clone())),
            tokio::spawn(Arc::clone(self).event_loop(events, stop_rx.clone())),
            tokio::spawn(Arc::clone(self).sweeper_loop(stop_rx)),
        ];
        shutdown.await;
        tracing::info!("build manager stopping");
        // Receivers may be gone already if a task ended; nothing to tell them then.
        let _ = stop_tx.send(true);
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "build manager task panicked");
            }
        }
        for executor in &self.executors {
            if let Err(e) = executor.shutdown_all().await {
                tracing::error!(executor = executor.name(), error = %error_chain(&e),
                    "failed to stop the executor's workers");
            }
        }
        Ok(())
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
