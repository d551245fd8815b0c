//! `SimExecutor`: an [`Executor`] whose workers are tokio tasks acting as agents. Each one dials
//! the real gRPC service over loopback on its own connection (as separate agent processes would)
//! and goes through builder-agent's call order without building anything: Ping,
//! RegisterBuildJob, a Heartbeat stream, DetermineCachedTag, SetPhase UNPACKING to PUSHING with
//! a few LogMessage lines during BUILDING, then SetPhase COMPLETE with a fake digest.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use buildman::executor::{Executor, ExecutorError, StartJob};
use buildman_proto::{
    BuildJobArgs, BuildManagerClient, CachedTagRequest, HeartbeatRequest, LogMessageRequest, Phase,
    PingRequest, PullMetadata, SetPhaseRequest,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::stats::{Call, Recorder};

/// How long a stopped agent may take to end on its own before it is aborted (popen's SIGKILL
/// delay).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How every simulated agent behaves.
#[derive(Clone, Debug)]
pub(crate) struct AgentPlan {
    /// Log lines sent during BUILDING.
    pub(crate) log_lines: usize,
    /// Heartbeat period (builder-agent's is 2 s).
    pub(crate) heartbeat: Duration,
    /// Time spent "building" between BUILDING and PUSHING.
    pub(crate) work: Duration,
    /// Agents hold after registering until this many agents registered, so that that many
    /// builds really run at once (0: no hold).
    pub(crate) hold_for: usize,
    /// Longest hold, so one agent that never registers cannot stall the run.
    pub(crate) hold_timeout: Duration,
}

/// Shared state of the simulated agents.
#[derive(Debug)]
pub(crate) struct Sim {
    pub(crate) plan: AgentPlan,
    pub(crate) calls: Recorder,
    registered: AtomicUsize,
    running: AtomicUsize,
    pub(crate) peak_running: AtomicUsize,
    pub(crate) failed_agents: AtomicUsize,
    pub(crate) hold_timeouts: AtomicUsize,
    errors: Mutex<Vec<String>>,
    gate: watch::Sender<bool>,
    /// When the `hold_for`-th agent registered (or, with no hold, the last one so far).
    registered_at: Mutex<Option<Instant>>,
}

impl Sim {
    pub(crate) fn new(plan: AgentPlan) -> Arc<Sim> {
        let (gate, _) = watch::channel(plan.hold_for == 0);
        Arc::new(Sim {
            plan,
            calls: Recorder::default(),
            registered: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            peak_running: AtomicUsize::new(0),
            failed_agents: AtomicUsize::new(0),
            hold_timeouts: AtomicUsize::new(0),
            errors: Mutex::new(Vec::new()),
            gate,
            registered_at: Mutex::new(None),
        })
    }

    /// The first few agent errors, for the report.
    pub(crate) fn first_errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn failed(&self, build: &str, e: &anyhow::Error) {
        self.failed_agents.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < 5 {
            errors.push(format!("build {build}: {e:#}"));
        }
    }

    /// Count a registered agent; the one that completes the hold opens the gate.
    fn on_registered(&self) {
        let n = self.registered.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.plan.hold_for || self.plan.hold_for == 0 {
            *self.registered_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        if n >= self.plan.hold_for {
            self.gate.send_replace(true);
        }
        let running = self.running.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_running.fetch_max(running, Ordering::Relaxed);
    }

    /// Seconds from `start` until the `hold_for`-th agent registered (with no hold: the last
    /// agent that registered).
    pub(crate) fn all_registered_after(&self, start: Instant) -> Option<f64> {
        let at = *self.registered_at.lock().unwrap_or_else(|e| e.into_inner());
        at.map(|t| t.saturating_duration_since(start).as_secs_f64())
    }

    async fn hold(&self) {
        let mut rx = self.gate.subscribe();
        let open = tokio::time::timeout(self.plan.hold_timeout, rx.wait_for(|open| *open)).await;
        if open.is_err() {
            self.hold_timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An executor whose workers are simulated agents (see the module docs).
#[derive(Debug)]
pub(crate) struct SimExecutor {
    sim: Arc<Sim>,
    workers: Mutex<HashMap<String, JoinHandle<()>>>,
    counter: AtomicU64,
}

impl SimExecutor {
    pub(crate) fn new(sim: Arc<Sim>) -> SimExecutor {
        SimExecutor {
            sim,
            workers: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
        }
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl Executor for SimExecutor {
    fn name(&self) -> &str {
        "sim"
    }
    fn setup_time(&self) -> Duration {
        // The embedded default configuration's popen SETUP_TIME.
        Duration::from_secs(60)
    }
    fn minimum_retry_threshold(&self) -> u32 {
        0
    }
    fn allowed_for_namespace(&self, _: &str) -> bool {
        true
    }
    async fn start_builder(&self, job: &StartJob) -> Result<String, ExecutorError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", job.build_uuid);
        let sim = Arc::clone(&self.sim);
        let job = job.clone();
        let task = tokio::spawn(async move {
            let registered = run_agent(&job, &sim).await;
            if let Err(e) = &registered.1 {
                sim.failed(&job.build_uuid, e);
            }
            if registered.0 {
                sim.running.fetch_sub(1, Ordering::Relaxed);
            }
        });
        self.workers().insert(id.clone(), task);
        Ok(id)
    }
    async fn stop_builder(&self, execution_id: &str) -> Result<(), ExecutorError> {
        // The manager stops the worker as soon as it recorded COMPLETE, often before the agent
        // has read that reply. Like popen (SIGTERM, then SIGKILL after 5 s), give the agent time
        // to end on its own, so that its last call is measured, then abort it.
        if let Some(task) = self.workers().remove(execution_id) {
            tokio::spawn(async move {
                let abort = task.abort_handle();
                if tokio::time::timeout(STOP_GRACE, task).await.is_err() {
                    abort.abort();
                }
            });
        }
        Ok(())
    }
    async fn running_builders_count(&self) -> Result<usize, ExecutorError> {
        Ok(self.workers().values().filter(|t| !t.is_finished()).count())
    }
    async fn shutdown_all(&self) -> Result<(), ExecutorError> {
        for (_, task) in self.workers().drain() {
            task.abort();
        }
        Ok(())
    }
}

/// One agent; returns whether it registered, and how it ended.
async fn run_agent(job: &StartJob, sim: &Arc<Sim>) -> (bool, anyhow::Result<()>) {
    let mut client = match connect(job).await {
        Ok(c) => c,
        Err(e) => return (false, Err(e)),
    };
    let calls = &sim.calls;
    let registered = async {
        calls
            .time(Call::Ping, client.ping(PingRequest {}))
            .await
            .context("Ping")?;
        let args = BuildJobArgs {
            register_jwt: job.registration_token.clone(),
        };
        let pack = calls
            .time(Call::RegisterBuildJob, client.register_build_job(args))
            .await
            .context("RegisterBuildJob")?
            .into_inner();
        Ok::<_, anyhow::Error>(pack)
    }
    .await;
    let pack = match registered {
        Ok(p) => p,
        Err(e) => return (false, Err(e)),
    };
    sim.on_registered();
    (true, build(&mut client, &pack.job_jwt, sim).await)
}

async fn connect(job: &StartJob) -> anyhow::Result<BuildManagerClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{}", job.grpc_server))
        .context("gRPC address")?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connecting to {}", job.grpc_server))?;
    Ok(BuildManagerClient::new(channel))
}

/// Everything after registration: heartbeats beside the phases, then COMPLETE.
async fn build(
    client: &mut BuildManagerClient<Channel>,
    jwt: &str,
    sim: &Arc<Sim>,
) -> anyhow::Result<()> {
    let heartbeats = start_heartbeats(client.clone(), jwt.to_owned(), Arc::clone(sim)).await?;
    let result = phases(client, jwt, sim).await;
    heartbeats.abort();
    result
}

async fn phases(
    client: &mut BuildManagerClient<Channel>,
    jwt: &str,
    sim: &Sim,
) -> anyhow::Result<()> {
    sim.hold().await;
    let calls = &sim.calls;
    let req = CachedTagRequest {
        job_jwt: jwt.to_owned(),
        base_image_name: "bench/base".to_owned(),
        base_image_tag: "latest".to_owned(),
        base_image_id: String::new(),
    };
    calls
        .time(Call::DetermineCachedTag, client.determine_cached_tag(req))
        .await
        .context("DetermineCachedTag")?;
    let mut seq = 0;
    let mut phase = |phase: Phase| {
        seq += 1;
        SetPhaseRequest {
            job_jwt: jwt.to_owned(),
            sequence_number: seq,
            phase: phase as i32,
            ..SetPhaseRequest::default()
        }
    };
    set_phase(client, calls, phase(Phase::Unpacking)).await?;
    let mut pulling = phase(Phase::Pulling);
    pulling.pull_metadata = Some(PullMetadata {
        registry_url: "127.0.0.1:5000".to_owned(),
        base_image: "bench/base".to_owned(),
        base_image_tag: "latest".to_owned(),
        pull_username: String::new(),
    });
    set_phase(client, calls, pulling).await?;
    set_phase(client, calls, phase(Phase::Building)).await?;
    send_logs(client, jwt, sim).await?;
    tokio::time::sleep(sim.plan.work).await;
    set_phase(client, calls, phase(Phase::Pushing)).await?;
    let mut complete = phase(Phase::Complete);
    complete.manifest_digests = vec![format!("sha256:{}", "b".repeat(64))];
    set_phase(client, calls, complete).await
}

async fn set_phase(
    client: &mut BuildManagerClient<Channel>,
    calls: &Recorder,
    req: SetPhaseRequest,
) -> anyhow::Result<()> {
    let phase = req.phase;
    let reply = calls
        .time(Call::SetPhase, client.set_phase(req))
        .await
        .with_context(|| format!("SetPhase {phase}"))?
        .into_inner();
    ensure!(reply.success, "SetPhase {phase} was refused");
    Ok(())
}

/// `log_lines` lines on one LogMessage stream, each timed from send to its reply.
async fn send_logs(
    client: &mut BuildManagerClient<Channel>,
    jwt: &str,
    sim: &Sim,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(4);
    let mut replies = client
        .log_message(ReceiverStream::new(rx))
        .await
        .context("opening the LogMessage stream")?
        .into_inner();
    for i in 1..=sim.plan.log_lines {
        let n = i32::try_from(i).context("too many log lines")?;
        let line = if i == 1 {
            format!("STEP 1/{}: FROM bench/base", sim.plan.log_lines)
        } else {
            format!("simulated output line {i}")
        };
        let start = tokio::time::Instant::now();
        tx.send(LogMessageRequest {
            job_jwt: jwt.to_owned(),
            sequence_number: n,
            log_message: serde_json::json!({ "stream": line }).to_string(),
            phase: "building".to_owned(),
        })
        .await
        .context("LogMessage stream closed")?;
        let reply = replies.message().await;
        let ok = matches!(&reply, Ok(Some(r)) if r.success);
        sim.calls.record(Call::LogMessage, start.elapsed(), ok);
        ensure!(ok, "LogMessage {n} failed: {reply:?}");
    }
    Ok(())
}

/// Open the Heartbeat stream and beat every `heartbeat` period in a task of its own, the first
/// beat at once; each beat is timed from send to its reply. A `false` reply (the build is over)
/// or a closed stream ends the task.
async fn start_heartbeats(
    mut client: BuildManagerClient<Channel>,
    jwt: String,
    sim: Arc<Sim>,
) -> anyhow::Result<JoinHandle<()>> {
    let (tx, rx) = mpsc::channel(4);
    let mut replies = client
        .heartbeat(ReceiverStream::new(rx))
        .await
        .context("opening the Heartbeat stream")?
        .into_inner();
    Ok(tokio::spawn(async move {
        loop {
            let start = tokio::time::Instant::now();
            let beat = HeartbeatRequest {
                job_jwt: jwt.clone(),
            };
            if tx.send(beat).await.is_err() {
                return;
            }
            let reply = replies.message().await;
            sim.calls
                .record(Call::Heartbeat, start.elapsed(), reply.is_ok());
            match reply {
                Ok(Some(r)) if r.reply => tokio::time::sleep(sim.plan.heartbeat).await,
                _ => return,
            }
        }
    }))
}
