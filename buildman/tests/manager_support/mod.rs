//! Harness for the manager tests: a registry state and `builds.db` in a temp dir, the in-process
//! orchestrator, fake executors that record start/stop and run scripted fake agents, and the gRPC
//! service on a loopback port that the fake agents dial with a real tonic client.
#![allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    missing_debug_implementations,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buildman::control::BuildControl;
use buildman::executor::{Executor, ExecutorError, StartJob};
use buildman::manager::{Manager, ManagerParts, ManagerSettings};
use buildman::model::{self, Build, JobConfig, NewBuild, Phase};
use buildman::orchestrator::{MemoryOrchestrator, Orchestrator};
use registry_core::accounts::repositories;
use registry_core::accounts::{robots, users};
use registry_core::db::Db;
use registry_core::repos::Visibility;
use registry_core::state::AppState;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod agent;
mod executor;
mod orchestrator;
pub use agent::{FakeAgent, completing_agent, registering_agent};
pub use executor::{AgentScript, FakeExecutor, script, silent};
pub use orchestrator::ChaosOrchestrator;

pub const REPO: &str = "alice/app";
pub const OTHER_REPO: &str = "alice/other";
pub const ROBOT: &str = "alice+puller";

/// Poll `f` every 20 ms until it returns `Some`, or panic after `deadline` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Settings with short timers, for tests.
pub fn fast_settings() -> ManagerSettings {
    ManagerSettings {
        registration_timeout: Duration::from_secs(2),
        retry_after: Duration::ZERO,
        heartbeat_ttl: Duration::from_secs(2),
        heartbeat_delta: Duration::from_secs(2),
        sweep_interval: Duration::from_millis(200),
        max_tick: Duration::from_millis(200),
        allowed_worker_count: 4,
        ..ManagerSettings::new("buildman.test:50051", "localhost:5000", "unused")
    }
}

/// A manager with its dependencies, the gRPC server and (once [`Harness::run`] is called)
/// its loops.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub registry: AppState,
    pub builds: Db,
    pub orchestrator: Arc<dyn Orchestrator>,
    /// The same orchestrator, with its outage switch and event injection.
    pub chaos: Arc<ChaosOrchestrator>,
    pub manager: Arc<Manager>,
    pub executors: Vec<Arc<FakeExecutor>>,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    run: Option<JoinHandle<()>>,
    server: JoinHandle<()>,
}

impl Harness {
    /// A manager over a fresh data dir (user alice, repositories alice/app and alice/other,
    /// robot alice+puller); loops not started yet.
    pub async fn new(settings: ManagerSettings, executors: Vec<Arc<FakeExecutor>>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        Harness::open(dir, settings, executors).await
    }

    /// A manager over the data dir `dir` (created on first use), for restart tests.
    pub async fn open(
        dir: tempfile::TempDir,
        settings: ManagerSettings,
        executors: Vec<Arc<FakeExecutor>>,
    ) -> Harness {
        let config = registry_core::config::Config {
            data_dir: dir.path().to_owned(),
            ..registry_core::config::Config::default()
        };
        let registry = AppState::open(config).unwrap();
        registry
            .db
            .write(|tx| {
                if registry_core::accounts::find(tx, "alice")?.is_none() {
                    let alice = users::create(tx, "alice", None, None)?;
                    robots::create(tx, &alice, "puller", "")?;
                    for r in [REPO, OTHER_REPO] {
                        repositories::create(tx, &r.parse().unwrap(), Visibility::Private, "")?;
                    }
                }
                Ok::<_, registry_core::accounts::AccountError>(())
            })
            .await
            .unwrap();
        let builds = buildman::db::open(dir.path()).unwrap();
        let chaos = ChaosOrchestrator::new();
        let orchestrator: Arc<dyn Orchestrator> = chaos.clone();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for e in &executors {
            e.set_addr(addr);
        }
        let manager = Manager::new(ManagerParts {
            settings: ManagerSettings {
                grpc_server: addr.to_string(),
                ..settings
            },
            builds: builds.clone(),
            registry: registry.clone(),
            orchestrator: Arc::clone(&orchestrator),
            executors: executors
                .iter()
                .map(|e| Arc::clone(e) as Arc<dyn Executor>)
                .collect(),
            package_url: Arc::new(|file_id, _| Ok(format!("http://files.test/{file_id}?sig=x"))),
            secrets: Arc::new(buildman::secrets::SecretBox::from_material(b"test key")),
        });
        let svc = buildman::grpc::service(Arc::clone(&manager));
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        Harness {
            dir,
            registry,
            builds,
            orchestrator,
            chaos,
            manager,
            executors,
            addr,
            stop: None,
            run: None,
            server,
        }
    }

    /// Start the manager's loops.
    pub fn run(&mut self) {
        let (tx, rx) = oneshot::channel();
        let manager = Arc::clone(&self.manager);
        self.run = Some(tokio::spawn(async move {
            manager
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        }));
        self.stop = Some(tx);
    }

    /// Whether the manager's `run` is still going (it must not return before shutdown).
    pub fn is_running(&self) -> bool {
        self.run.as_ref().is_some_and(|r| !r.is_finished())
    }

    /// Stop the loops and the server; returns the data dir for a restart.
    pub async fn shutdown(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(run) = self.run.take() {
            tokio::time::timeout(Duration::from_secs(10), run)
                .await
                .expect("manager stops within 10 s")
                .unwrap();
        }
        self.server.abort();
        self.dir
    }

    /// Queue a build of `repo` from an archive URL, started by alice; wakes the scheduler.
    pub async fn submit(&self, repo: &str) -> Build {
        self.submit_with(repo, |_| {}).await
    }

    pub async fn submit_with(&self, repo: &str, edit: impl FnOnce(&mut NewBuild)) -> Build {
        let mut new = NewBuild {
            repository: repo.to_owned(),
            display_name: "test build".to_owned(),
            job_config: JobConfig {
                docker_tags: vec!["latest".into(), "v1".into()],
                build_subdir: "/sub/Dockerfile".into(),
                context: "/sub".into(),
                archive_url: Some("http://archive.test/src.tar.gz".into()),
                ..JobConfig::default()
            },
            manual_user: Some("alice".into()),
            max_retries: 3,
            ..NewBuild::default()
        };
        edit(&mut new);
        let build = self
            .builds
            .write(move |tx| model::create(tx, &new))
            .await
            .unwrap();
        self.manager.wake();
        build
    }

    pub async fn build(&self, uuid: &str) -> Build {
        let uuid = uuid.to_owned();
        self.builds
            .read(move |c| model::get(c, &uuid))
            .await
            .unwrap()
            .expect("build exists")
    }

    /// Wait until build `uuid` is in `phase` (and, for internalerror, closed when `closed`).
    pub async fn wait_phase(&self, uuid: &str, phase: Phase, deadline: Duration) -> Build {
        wait_for(
            &format!("build {uuid} to reach {phase}"),
            deadline,
            || async {
                let b = self.build(uuid).await;
                (b.phase == phase).then_some(b)
            },
        )
        .await
    }

    /// Wait until build `uuid` is closed (`completed_at` set).
    pub async fn wait_closed(&self, uuid: &str, deadline: Duration) -> Build {
        wait_for(&format!("build {uuid} to end"), deadline, || async {
            let b = self.build(uuid).await;
            b.completed_ms.is_some().then_some(b)
        })
        .await
    }

    /// The build's log: (type, message) pairs.
    pub async fn log(&self, uuid: &str) -> Vec<(Option<String>, String)> {
        let id = self.build(uuid).await.id;
        let (_, entries) = self
            .builds
            .read(move |c| buildman::logs::list(c, id, 0, 10_000))
            .await
            .unwrap();
        entries.into_iter().map(|e| (e.kind, e.message)).collect()
    }

    /// The phase entries of the build's log, in order.
    pub async fn phases(&self, uuid: &str) -> Vec<String> {
        self.log(uuid)
            .await
            .into_iter()
            .filter(|(k, _)| k.as_deref() == Some("phase"))
            .map(|(_, m)| m)
            .collect()
    }

    /// Titles of the registry tokens of build `uuid` (`build:<uuid>:...`), sorted.
    pub async fn token_titles(&self, uuid: &str) -> Vec<String> {
        let pattern = format!("build:{uuid}:%");
        self.registry
            .db
            .read(move |c| {
                let mut stmt =
                    c.prepare("SELECT title FROM access_token WHERE title LIKE ?1 ORDER BY title")?;
                let rows = stmt.query_map([&pattern], |r| r.get(0))?;
                Ok::<_, registry_core::db::DbError>(rows.collect::<Result<Vec<String>, _>>()?)
            })
            .await
            .unwrap()
    }

    /// Whether `token` is a live registry token.
    pub async fn token_valid(&self, token: &str) -> bool {
        let token = token.to_owned();
        self.registry
            .db
            .read(move |c| registry_core::accounts::tokens::check(c, &token))
            .await
            .unwrap()
            .is_some()
    }

    pub async fn retries(&self, uuid: &str) -> Option<u32> {
        let uuid = uuid.to_owned();
        self.builds
            .read(move |c| buildman::queue::retries_remaining(c, &uuid))
            .await
            .unwrap()
    }
}

/// Long deadline for waits (phases usually change within milliseconds).
pub const WAIT: Duration = Duration::from_secs(15);

/// A running manager with one executor `a` whose workers only record their start job and never
/// call in by themselves (the test registers for them), with a registration window of
/// `registration_timeout`. Returns the harness, the executor and the recorded start jobs.
pub async fn recording_harness(
    registration_timeout: Duration,
) -> (Harness, Arc<FakeExecutor>, Arc<Mutex<Vec<StartJob>>>) {
    let jobs = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&jobs);
    let exec = FakeExecutor::new(
        "a",
        0,
        script(move |job, _| {
            seen.lock().unwrap().push(job);
            std::future::pending()
        }),
    );
    let mut settings = fast_settings();
    settings.registration_timeout = registration_timeout;
    let mut h = Harness::new(settings, vec![Arc::clone(&exec)]).await;
    h.run();
    (h, exec, jobs)
}

/// Submit a build to `REPO` edited by `edit`, wait for its worker's start job in `jobs` (see
/// [`recording_harness`]), register with it, and return the build and the registration's result.
pub async fn submit_and_register(
    h: &Harness,
    jobs: &Mutex<Vec<StartJob>>,
    edit: impl FnOnce(&mut NewBuild),
) -> (Build, Result<buildman_proto::BuildPack, tonic::Status>) {
    let build = h.submit_with(REPO, edit).await;
    let job = wait_for("the worker start", WAIT, || async {
        jobs.lock()
            .unwrap()
            .iter()
            .find(|j| j.build_uuid == build.uuid)
            .cloned()
    })
    .await;
    let mut client = FakeAgent::client(h.addr).await;
    let r = client
        .register_build_job(buildman_proto::BuildJobArgs {
            register_jwt: job.registration_token,
        })
        .await
        .map(tonic::Response::into_inner);
    (build, r)
}
