//! Fake executors: they record start and stop calls and run a scripted fake agent per worker.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buildman::executor::{Executor, ExecutorError, StartJob, WorkerExit, WorkerExits};
use tokio::task::JoinHandle;

/// What a fake executor's worker does once started.
pub type AgentScript =
    Arc<dyn Fn(StartJob, SocketAddr) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A script whose agent never registers (it just runs until stopped).
pub fn silent() -> AgentScript {
    Arc::new(|_, _| Box::pin(std::future::pending()))
}

/// Wrap an async closure as an [`AgentScript`].
pub fn script<F, Fut>(f: F) -> AgentScript
where
    F: Fn(StartJob, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |job, addr| Box::pin(f(job, addr)))
}

/// An executor that records its calls and runs an [`AgentScript`] task per worker.
pub struct FakeExecutor {
    name: String,
    threshold: u32,
    pub fail_start: AtomicBool,
    script: Mutex<AgentScript>,
    addr: Mutex<Option<SocketAddr>>,
    pub starts: Mutex<Vec<StartJob>>,
    pub stops: Mutex<Vec<(String, Instant)>>,
    workers: Mutex<HashMap<String, JoinHandle<()>>>,
    counter: AtomicU32,
    /// A worker whose script returned on its own is reported here (as a process exit is).
    exits: Arc<WorkerExits>,
}

impl std::fmt::Debug for FakeExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeExecutor")
            .field("name", &self.name)
            .finish()
    }
}

impl FakeExecutor {
    pub fn new(name: &str, threshold: u32, script: AgentScript) -> Arc<FakeExecutor> {
        Arc::new(FakeExecutor {
            name: name.to_owned(),
            threshold,
            fail_start: AtomicBool::new(false),
            script: Mutex::new(script),
            addr: Mutex::new(None),
            starts: Mutex::new(Vec::new()),
            stops: Mutex::new(Vec::new()),
            workers: Mutex::new(HashMap::new()),
            counter: AtomicU32::new(0),
            exits: Arc::default(),
        })
    }

    /// The gRPC address the scripted agents dial.
    pub fn set_addr(&self, addr: SocketAddr) {
        *self.addr.lock().unwrap() = Some(addr);
    }

    pub fn set_script(&self, script: AgentScript) {
        *self.script.lock().unwrap() = script;
    }

    pub fn start_count(&self) -> usize {
        self.starts.lock().unwrap().len()
    }

    pub fn stop_count(&self) -> usize {
        self.stops.lock().unwrap().len()
    }

    /// Start jobs, in order.
    pub fn started_builds(&self) -> Vec<String> {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .map(|j| j.build_uuid.clone())
            .collect()
    }
}

#[async_trait::async_trait]
impl Executor for FakeExecutor {
    fn name(&self) -> &str {
        &self.name
    }
    fn setup_time(&self) -> Duration {
        Duration::from_secs(5)
    }
    fn minimum_retry_threshold(&self) -> u32 {
        self.threshold
    }
    fn allowed_for_namespace(&self, _: &str) -> bool {
        true
    }
    async fn start_builder(&self, job: &StartJob) -> Result<String, ExecutorError> {
        if self.fail_start.load(Ordering::SeqCst) {
            return Err(ExecutorError::MissingBinary {
                path: format!("/nonexistent/{}", self.name).into(),
            });
        }
        self.starts.lock().unwrap().push(job.clone());
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{n}", job.build_uuid);
        let addr = self.addr.lock().unwrap().expect("grpc address set");
        let script = Arc::clone(&*self.script.lock().unwrap());
        let (exits, worker) = (Arc::clone(&self.exits), id.clone());
        let run = script(job.clone(), addr);
        let task = tokio::spawn(async move {
            run.await;
            exits.send(&worker, "the fake worker ended".to_owned());
        });
        self.workers.lock().unwrap().insert(id.clone(), task);
        Ok(id)
    }
    async fn stop_builder(&self, execution_id: &str) -> Result<(), ExecutorError> {
        self.stops
            .lock()
            .unwrap()
            .push((execution_id.to_owned(), Instant::now()));
        if let Some(task) = self.workers.lock().unwrap().remove(execution_id) {
            task.abort();
        }
        Ok(())
    }
    async fn running_builders_count(&self) -> Result<usize, ExecutorError> {
        Ok(self
            .workers
            .lock()
            .unwrap()
            .values()
            .filter(|t| !t.is_finished())
            .count())
    }
    fn worker_exits(&self) -> Option<tokio::sync::broadcast::Receiver<WorkerExit>> {
        Some(self.exits.subscribe())
    }
    async fn shutdown_all(&self) -> Result<(), ExecutorError> {
        for (_, task) in self.workers.lock().unwrap().drain() {
            task.abort();
        }
        Ok(())
    }
}
