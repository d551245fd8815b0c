//! `buildman serve`: one process serving registry-core, the builds REST API and the agents' gRPC
//! service, with the manager's scheduler, event listener and sweeper beside them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use registry_core::state::AppState;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, ApiSettings, ApiState};
use crate::config::Config;
use crate::config::{ExecutorKind, OrchestratorConfig, RedisConfig};
use crate::executor::popen::PopenExecutor;
use crate::executor::{Executor, ExecutorSettings};
use crate::manager::{Manager, ManagerParts, ManagerSettings};
use crate::orchestrator::{MemoryOrchestrator, Orchestrator, RedisOrchestrator, RedisSettings};

/// Why the server could not start or stopped with an error; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// registry-core's state (database, blobs, signing key) could not be opened.
    #[error("failed to open the registry state in DATA_DIR")]
    Registry(#[from] registry_core::state::StateError),
    /// builds.db could not be opened.
    #[error("failed to open the builds database in DATA_DIR")]
    Builds(#[from] registry_core::db::DbError),
    /// A listener could not be bound.
    #[error("failed to listen on {addr} (is another process using it? change {key})")]
    Bind {
        /// The address.
        addr: String,
        /// The config key that sets it.
        key: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key that encrypts stored secrets could not be read or created.
    #[error("failed to set up the key for stored secrets")]
    Secrets(#[from] crate::secrets::SecretError),
    /// The orchestrator could not be reached.
    #[error("failed to set up the orchestrator")]
    Orchestrator(#[from] crate::orchestrator::OrchestratorError),
    /// The configuration asks for something this build cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// An executor could not be prepared.
    #[error("failed to prepare executor {name}")]
    Executor {
        /// The executor's NAME.
        name: String,
        /// The cause.
        #[source]
        source: crate::executor::ExecutorError,
    },
    /// The manager failed.
    #[error("the build manager failed")]
    Manager(#[from] crate::manager::ManagerError),
    /// The manager's task panicked (a bug); its builds are recovered at the next start.
    #[error("the build manager task panicked; restart buildman (running builds are recovered)")]
    ManagerPanicked,
    /// Serving failed.
    #[error("serving failed")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("the gRPC server failed")]
    Grpc(#[from] tonic::transport::Error),
}

/// The addresses a started server listens on.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    /// HTTP: registry, REST API, uploads.
    pub http: SocketAddr,
    /// gRPC for agents; `None` when builds are disabled (`FEATURE_BUILD_SUPPORT: false` or an
    /// `external` build manager), and only the registry is served.
    pub grpc: Option<SocketAddr>,
}

fn redis_settings(config: &Config, redis: &RedisConfig) -> Result<RedisSettings, ServeError> {
    let cert_and_key = match &redis.cert_and_key {
        None => None,
        Some((cert, key)) if cert == key => Some(cert.clone()),
        Some(_) => {
            return Err(ServeError::Unsupported(
                "REDIS_CERT_AND_KEY with the certificate and the key in two files is not supported yet: \
                 put both PEM blocks in one file and name it twice"
                    .to_owned(),
            ));
        }
    };
    Ok(RedisSettings {
        host: redis.host.clone(),
        port: redis.port,
        password: redis.password.as_ref().map(|p| p.expose().to_owned()),
        db: redis.db,
        ssl: redis.ssl,
        ca_cert: redis.ca_cert.clone(),
        cert_and_key,
        skip_keyspace_event_setup: redis.skip_keyspace_event_setup,
        prefix: config.orchestrator_prefix().to_owned(),
    })
}

/// The executors of `config`, with the orphans a previous run left stopped.
async fn executors(config: &Config) -> Result<Vec<Arc<dyn Executor>>, ServeError> {
    let work_root = config.data_dir().join("builds");
    let mut out: Vec<Arc<dyn Executor>> = Vec::new();
    for e in config.executors() {
        let s = ExecutorSettings::from_config(e, work_root.clone(), config.max_archive_size());
        match e.kind {
            ExecutorKind::Popen => {
                let popen = PopenExecutor::new(s);
                popen.check().map_err(|source| ServeError::Executor {
                    name: e.name.clone(),
                    source,
                })?;
                let reaped = popen
                    .reap_orphans()
                    .await
                    .map_err(|source| ServeError::Executor {
                        name: e.name.clone(),
                        source,
                    })?;
                if reaped > 0 {
                    tracing::warn!(executor = %e.name, reaped, "stopped agents left by a previous buildman");
                }
                out.push(Arc::new(popen));
            }
            ExecutorKind::Qemu => {
                let options = crate::executor::qemu::QemuOptions::from_config(e);
                // `new` stops the VMs and probe VMs a previous buildman left (and logs them)
                // before it starts the accelerator probe, so they do not slow the probe down.
                let qemu = crate::executor::QemuExecutor::new(s, options)
                    .await
                    .map_err(|source| ServeError::Executor {
                        name: e.name.clone(),
                        source,
                    })?;
                out.push(Arc::new(qemu));
            }
            other => {
                return Err(ServeError::Unsupported(format!(
                    "executor {} ({other:?}) is not implemented yet; use EXECUTOR: popen",
                    e.name
                )));
            }
        }
    }
    Ok(out)
}

/// Open everything, bind both listeners, call `on_bound` with the addresses, and serve until
/// `shutdown` resolves; then stop the scheduler and every worker.
pub async fn serve(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound),
) -> Result<(), ServeError> {
    raise_open_file_limit();
    let registry = AppState::open(config.registry.clone())?;
    let http_addr = config.registry.listen_addr.clone();
    let http = TcpListener::bind(&http_addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: http_addr.clone(),
            key: "LISTEN_ADDR",
            source,
        })?;
    if !config.builds_enabled() {
        on_bound(Bound {
            http: http.local_addr()?,
            grpc: None,
        });
        tracing::info!(http = %http.local_addr()?,
            "builds are disabled (FEATURE_BUILD_SUPPORT: false or an external BUILD_MANAGER): serving the registry only");
        registry_core::serve(registry, http, shutdown).await?;
        return Ok(());
    }
    let builds = crate::db::open(config.data_dir())?;
    let grpc_addr = config.grpc_listen_addr();
    let grpc = TcpListener::bind(grpc_addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: grpc_addr.to_string(),
            key: "BUILD_MANAGER[1].GRPC_LISTEN_ADDR",
            source,
        })?;
    let grpc_bound = grpc.local_addr()?;
    let bound = Bound {
        http: http.local_addr()?,
        grpc: Some(grpc_bound),
    };

    let orchestrator: Arc<dyn Orchestrator> = match config.orchestrator() {
        OrchestratorConfig::Memory => Arc::new(MemoryOrchestrator::new()),
        OrchestratorConfig::Redis(r) => {
            Arc::new(RedisOrchestrator::connect(&redis_settings(&config, r)?).await?)
        }
    };
    let backend = orchestrator.backend();
    let executors = executors(&config).await?;

    let api_settings = ApiSettings {
        max_retries: config.max_retries(),
        upload_dir: config.data_dir().join("buildfiles"),
        max_upload_bytes: config.max_archive_size(),
        public_base_url: format!(
            "{}://{}",
            config.registry.preferred_url_scheme, config.registry.server_hostname
        ),
        reader_build_logs: false,
        allow_local_git_sources: config.manager.allow_local_git_sources,
        triggers: config.triggers.clone(),
        notifications: config.notifications.clone(),
    };
    let secrets = Arc::new(crate::secrets::SecretBox::open_or_create(
        config.data_dir(),
        config.triggers.secret_key.as_ref(),
    )?);
    std::fs::create_dir_all(&api_settings.upload_dir)?;
    let keys = registry.keys.clone();
    let url_settings = api_settings.clone();
    let package_url: crate::manager::PackageUrlFn = Arc::new(move |file_id, ttl| {
        api::filedrop::package_url(&url_settings, &keys, file_id, ttl)
    });
    let manager = Manager::new(ManagerParts {
        settings: ManagerSettings::from_config(&config, grpc_bound),
        builds: builds.clone(),
        registry: registry.clone(),
        orchestrator,
        executors,
        package_url,
        secrets: secrets.clone(),
    });
    let notify_parts = crate::notify::NotifyParts {
        builds: builds.clone(),
        registry: registry.db.clone(),
        settings: crate::notify::NotifySettings {
            public_base_url: api_settings.public_base_url.clone(),
            server_hostname: config.registry.server_hostname.clone(),
            limits: crate::trigger::TriggerLimits::from(&config.triggers),
            config: config.notifications.clone(),
            poll: Duration::from_secs(1),
            retry_base: Duration::from_secs(30),
        },
    };
    let api = api::routes(ApiState {
        registry: registry.clone(),
        builds,
        control: manager.clone(),
        secrets,
        settings: api_settings,
    });

    // One shutdown signal fans out to the three servers.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    on_bound(bound);
    tracing::info!(http = %bound.http, grpc = %grpc_bound, orchestrator = backend,
        "buildman started");
    let mut manager_task = {
        let manager = manager.clone();
        let rx = stop_rx.clone();
        tokio::spawn(async move { manager.run(stopped(rx)).await })
    };
    // Notifications run beside the manager, over database rows only: a slow target never holds
    // up a build.
    let notify_task = crate::notify::spawn(notify_parts, stop_rx.clone());
    let grpc_task = {
        let rx = stop_rx.clone();
        // tonic ignores Server::tcp_nodelay for a caller-provided stream; without NODELAY each of
        // an agent's first calls waits ~40 ms for a delayed ACK (measured in bench-build.sh).
        let incoming = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
        let svc = crate::grpc::service(manager.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(20)))
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, stopped(rx))
                .await
        })
    };
    let http_task = tokio::spawn(registry_core::serve_with(
        registry,
        http,
        api,
        stopped(stop_rx),
    ));
    // The manager only returns at shutdown; if it ends before, serving on without a scheduler
    // would accept builds that never run, so the whole process stops with its error.
    let ended_early = tokio::select! {
        () = shutdown => None,
        r = &mut manager_task => Some(r),
    };
    if ended_early.is_some() {
        tracing::error!("the build manager stopped unexpectedly; shutting down");
    }
    let _ = stop_tx.send(true);
    let manager_result = match ended_early {
        Some(r) => r,
        None => manager_task.await,
    };
    if let Err(e) = notify_task.await {
        tracing::error!(error = %e, "notification task panicked");
    }
    let grpc_result = grpc_task.await;
    let http_result = http_task.await;
    match manager_result {
        Ok(r) => r?,
        Err(e) => {
            tracing::error!(error = %e, "build manager task panicked");
            return Err(ServeError::ManagerPanicked);
        }
    }
    if let Ok(r) = grpc_result {
        r?;
    }
    if let Ok(r) = http_result {
        r?;
    }
    Ok(())
}

/// Each running agent holds gRPC streams (and HTTP connections while it pushes): raise the soft
/// open-file limit to the hard one so a busy manager does not hit EMFILE at ~1,000 agents (the
/// usual soft limit is 1,024; measured with scripts/bench-build.sh).
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, soft, "could not raise the open-file limit"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the open-file limit"),
    }
}
