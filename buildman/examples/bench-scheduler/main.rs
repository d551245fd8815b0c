//! Scheduler throughput with simulated agents.
//!
//! `cargo run --release -p buildman --example bench-scheduler -- --builds 100`
//!
//! Builds a [`Manager`] in-process the way `buildman serve` does (registry state and `builds.db`
//! in a temporary directory, the in-process orchestrator, the agents' gRPC service on a loopback
//! port, Quay's default timers) with one executor whose workers are simulated agents
//! (`agent.rs`: real tonic clients, one connection each, that register, heartbeat, report every
//! phase and a few log lines, and complete without building). It queues `--builds` builds, each
//! in its own repository so that per-repository ordering does not serialise them, with
//! `ALLOWED_WORKER_COUNT = --concurrency`, and waits until every build is closed.
//!
//! By default each agent holds after registering until `--concurrency` agents have registered,
//! so that that many builds really run at once (a zero-work agent would otherwise finish before
//! the scheduler started the next one); `--no-hold` lets them run straight through.
//!
//! One JSON object goes to stdout (for `scripts/bench-build.sh`), progress and the manager's
//! warnings to stderr. The server and the simulated agents share this process, its two cores and
//! its figures (peak RSS, CPU time, descriptors, threads). Exits 1 when a build did not complete.

mod agent;
mod stats;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use buildman::control::BuildControl as _;
use buildman::db::BuildDbError;
use buildman::executor::Executor;
use buildman::manager::{Manager, ManagerParts, ManagerSettings};
use buildman::model::{self, JobConfig, NewBuild};
use buildman::orchestrator::MemoryOrchestrator;
use clap::Parser;
use registry_core::accounts::{AccountError, repositories, users};
use registry_core::db::now_ms;
use registry_core::names::RepoName;
use registry_core::repos::Visibility;
use registry_core::state::AppState;
use serde_json::json;
use tokio::sync::oneshot;

use crate::agent::{AgentPlan, Sim, SimExecutor};
use crate::stats::{cpu_seconds, open_fds, status_field};

#[derive(Debug, Parser)]
#[command(about = "Scheduler throughput of buildman with simulated agents")]
struct Args {
    /// Builds queued at once, each in its own repository.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    builds: u32,
    /// ALLOWED_WORKER_COUNT; default: --builds (every build runs at once).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: Option<u32>,
    /// Log lines each agent sends during BUILDING.
    #[arg(long, default_value_t = 5)]
    log_lines: usize,
    /// Heartbeat period of each agent in ms (builder-agent beats every 2 s).
    #[arg(long, default_value_t = 2000)]
    heartbeat_ms: u64,
    /// Time each agent spends "building" between BUILDING and PUSHING, in ms.
    #[arg(long, default_value_t = 0)]
    work_ms: u64,
    /// Do not hold agents until --concurrency of them registered.
    #[arg(long)]
    no_hold: bool,
    /// Set TCP_NODELAY on accepted gRPC connections. `buildman serve` does not today: it serves
    /// a `TcpListenerStream`, on which tonic's `tcp_nodelay` setting does not apply.
    #[arg(long)]
    grpc_nodelay: bool,
    /// Give up waiting for the builds after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let report = run(&args).await?;
    println!("{report}");
    let all_complete = report["complete"] == report["builds"];
    Ok(if all_complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Peaks of the process's descriptors and threads, sampled while the builds run.
#[derive(Debug, Default)]
struct Peaks {
    fds: usize,
    threads: u64,
}

impl Peaks {
    fn sample(&mut self) {
        self.fds = self.fds.max(open_fds().unwrap_or(0));
        self.threads = self.threads.max(status_field("Threads").unwrap_or(0));
    }
}

async fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let n = args.builds;
    let concurrency = args.concurrency.unwrap_or(n);
    let rss_before_kib = status_field("VmRSS").unwrap_or(0);
    let dir = tempfile::Builder::new()
        .prefix("quarry-bench-sched-")
        .tempdir()
        .context("creating the temp directory")?;
    let registry = AppState::open(registry_core::config::Config {
        data_dir: dir.path().to_owned(),
        ..registry_core::config::Config::default()
    })
    .context("opening the registry state")?;
    let repos = create_repositories(&registry, n).await?;
    let builds = buildman::db::open(dir.path()).context("opening builds.db")?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the gRPC listener")?;
    let addr = listener.local_addr()?;
    let hold = !args.no_hold;
    let sim = Sim::new(AgentPlan {
        log_lines: args.log_lines,
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        work: Duration::from_millis(args.work_ms),
        hold_for: if hold {
            usize::try_from(concurrency.min(n))?
        } else {
            0
        },
        hold_timeout: Duration::from_secs(args.timeout_s),
    });
    let executor: Arc<dyn Executor> = Arc::new(SimExecutor::new(Arc::clone(&sim)));
    let manager = Manager::new(ManagerParts {
        settings: ManagerSettings {
            allowed_worker_count: usize::try_from(concurrency)?,
            ..ManagerSettings::new("127.0.0.1", "127.0.0.1:5000", &addr.to_string())
        },
        builds: builds.clone(),
        registry: registry.clone(),
        orchestrator: Arc::new(MemoryOrchestrator::new()),
        executors: vec![executor],
        package_url: Arc::new(|file_id, _| Ok(format!("http://files.invalid/{file_id}"))),
        secrets: Arc::new(buildman::secrets::SecretBox::from_material(b"test key")),
    });
    // The gRPC server as buildman::server::serve sets it up.
    let svc = buildman::grpc::service(Arc::clone(&manager));
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(args.grpc_nodelay.then_some(true));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .add_service(svc)
            .serve_with_incoming(incoming),
    );
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let run = {
        let manager = Arc::clone(&manager);
        tokio::spawn(async move {
            manager
                .run(async {
                    let _ = stop_rx.await;
                })
                .await
        })
    };

    eprintln!("bench-scheduler: queueing {n} builds, ALLOWED_WORKER_COUNT {concurrency}");
    let new_builds: Vec<NewBuild> = repos.iter().map(|r| new_build(r)).collect();
    let queue_start = Instant::now();
    let queue_start_ms = now_ms();
    builds
        .write(move |tx| {
            for b in &new_builds {
                model::create(tx, b)?;
            }
            Ok::<_, BuildDbError>(())
        })
        .await
        .context("queueing the builds")?;
    let queue_insert = queue_start.elapsed();
    manager.wake();

    let deadline = queue_start + Duration::from_secs(args.timeout_s);
    let mut peaks = Peaks::default();
    let mut last_sample = Instant::now() - Duration::from_secs(1);
    let mut last_progress = Instant::now();
    let timed_out = loop {
        if last_sample.elapsed() >= Duration::from_millis(100) {
            peaks.sample();
            last_sample = Instant::now();
        }
        let closed = count(
            &builds,
            "SELECT COUNT(*) FROM build WHERE completed_at IS NOT NULL",
        )
        .await?;
        if closed >= i64::from(n) {
            break false;
        }
        if Instant::now() >= deadline {
            break true;
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            eprintln!("bench-scheduler: {closed}/{n} builds closed");
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    peaks.sample();
    let last_closed_ms = count(&builds, "SELECT COALESCE(MAX(completed_at), 0) FROM build").await?;
    #[allow(
        clippy::cast_precision_loss,
        reason = "milliseconds of a run, far under 2^52"
    )]
    let total_s = (last_closed_ms - queue_start_ms).max(1) as f64 / 1000.0;
    let outcome = outcomes(&builds).await?;

    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(30), run).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => eprintln!("bench-scheduler: manager stopped with an error: {e:#}"),
        Ok(Err(e)) => eprintln!("bench-scheduler: manager task failed: {e}"),
        Err(_) => eprintln!("bench-scheduler: manager did not stop within 30 s"),
    }
    server.abort();

    let complete = outcome.phases.get("complete").copied().unwrap_or(0);
    let all_registered_s = sim.all_registered_after(queue_start);
    Ok(json!({
        "builds": n,
        "concurrency": concurrency,
        "hold": hold,
        "log_lines": args.log_lines,
        "heartbeat_ms": args.heartbeat_ms,
        "work_ms": args.work_ms,
        "grpc_nodelay": args.grpc_nodelay,
        "complete": complete,
        "phases": outcome.phases,
        "retried": outcome.retried,
        "timed_out": timed_out,
        "queue_insert_ms": queue_insert.as_secs_f64() * 1000.0,
        "all_registered_s": all_registered_s,
        "total_s": if timed_out { None } else { Some(total_s) },
        "builds_per_s": if timed_out { None } else { Some(f64::from(n) / total_s) },
        "peak_running_agents": sim.peak_running.load(Ordering::Relaxed),
        "failed_agents": sim.failed_agents.load(Ordering::Relaxed),
        "hold_timeouts": sim.hold_timeouts.load(Ordering::Relaxed),
        "first_errors": sim.first_errors(),
        "calls": sim.calls.summary(),
        "rss_before_mib": kib_to_mib(rss_before_kib),
        "peak_rss_mib": kib_to_mib(status_field("VmHWM").unwrap_or(0)),
        "cpu_s": cpu_seconds(),
        "peak_fds": peaks.fds,
        "peak_threads": peaks.threads,
    }))
}

/// User `bench` and repositories `bench/b00000`... (private), one per build.
async fn create_repositories(registry: &AppState, n: u32) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = (0..n).map(|i| format!("bench/b{i:05}")).collect();
    let parsed = names
        .iter()
        .map(|s| s.parse::<RepoName>())
        .collect::<Result<Vec<_>, _>>()
        .context("repository name")?;
    registry
        .db
        .write(move |tx| {
            users::create(tx, "bench", None, None)?;
            for name in &parsed {
                repositories::create(tx, name, Visibility::Private, "")?;
            }
            Ok::<_, AccountError>(())
        })
        .await
        .context("creating the benchmark user and repositories")?;
    Ok(names)
}

/// A build of `repository` from an archive URL (never fetched: the agents are simulated),
/// started by user `bench`, with Quay's 3 retries.
fn new_build(repository: &str) -> NewBuild {
    NewBuild {
        repository: repository.to_owned(),
        display_name: "bench".to_owned(),
        job_config: JobConfig {
            docker_tags: vec!["latest".to_owned()],
            build_subdir: "/Dockerfile".to_owned(),
            context: "/".to_owned(),
            archive_url: Some("http://archive.invalid/src.tar.gz".to_owned()),
            ..JobConfig::default()
        },
        manual_user: Some("bench".to_owned()),
        max_retries: 3,
        ..NewBuild::default()
    }
}

async fn count(builds: &registry_core::db::Db, sql: &'static str) -> anyhow::Result<i64> {
    builds
        .read(move |c| {
            c.query_row(sql, [], |r| r.get::<_, i64>(0))
                .map_err(BuildDbError::from)
        })
        .await
        .with_context(|| format!("querying builds.db: {sql}"))
}

/// How the builds ended.
#[derive(Debug)]
struct Outcome {
    /// Builds per phase.
    phases: std::collections::BTreeMap<String, i64>,
    /// Builds that needed more than one attempt.
    retried: i64,
}

async fn outcomes(builds: &registry_core::db::Db) -> anyhow::Result<Outcome> {
    builds
        .read(|c| {
            let mut stmt = c.prepare("SELECT phase, COUNT(*) FROM build GROUP BY phase")?;
            let phases = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<Result<_, _>>()?;
            let retried =
                c.query_row("SELECT COUNT(*) FROM build WHERE attempts > 1", [], |r| {
                    r.get(0)
                })?;
            Ok::<_, BuildDbError>(Outcome { phases, retried })
        })
        .await
        .context("reading the builds' outcome")
}

#[allow(clippy::cast_precision_loss, reason = "KiB of RSS, far under 2^52")]
fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
