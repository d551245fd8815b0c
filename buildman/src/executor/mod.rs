//! Executors start and stop the worker that runs one build (Quay's `BuilderExecutor`).
//!
//! The manager holds an ordered list of [`Executor`]s (config `EXECUTORS`). For each attempt it
//! asks [`pick`] for the executors eligible for the build's namespace and remaining retries, then
//! calls [`Executor::start_builder`] on the first one, falling through to the next on an error.
//! [`popen`] runs one `builder-agent` process per build on this machine; [`qemu`] runs each build
//! in a throw-away QEMU VM of its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest as _;

mod mountinfo;
mod orphans;
pub mod popen;
mod process;
pub mod qemu;
mod reaper;
mod scan;
mod sweep;

pub use popen::PopenExecutor;
pub use qemu::QemuExecutor;

/// Quay's default `SETUP_TIME` (`EPHEMERAL_SETUP_TIMEOUT`): 500 s.
pub const DEFAULT_SETUP_TIME: Duration = Duration::from_secs(500);
/// Quay's default `MAX_LIFETIME_S`: 3 hours.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(10_800);
/// Default `QUARRY_MAX_CONTEXT_BYTES` handed to the agent: 2 GiB (the agent's own default).
pub const DEFAULT_MAX_CONTEXT_BYTES: u64 = 2 << 30;

/// A worker back-end that runs one build per `start_builder` call.
#[async_trait::async_trait]
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// `NAME`, unique among the manager's executors; stored with the running job.
    fn name(&self) -> &str;
    /// `SETUP_TIME`: how long the job key lives after scheduling until the first heartbeat.
    fn setup_time(&self) -> Duration;
    /// `MINIMUM_RETRY_THRESHOLD`: used only while the queue item has at least this many retries
    /// left (see [`pick`]).
    fn minimum_retry_threshold(&self) -> u32;
    /// `NAMESPACE_WHITELIST` and `STAGED_ROLLOUT` (see [`allowed_for_namespace`]).
    fn allowed_for_namespace(&self, ns: &str) -> bool;
    /// Start a worker for `job`; returns the execution id that [`Executor::stop_builder`] takes.
    async fn start_builder(&self, job: &StartJob) -> Result<String, ExecutorError>;
    /// Stop the worker and remove what it left behind. Idempotent: an unknown or already stopped
    /// id is not an error.
    async fn stop_builder(&self, execution_id: &str) -> Result<(), ExecutorError>;
    /// Workers of this executor that are still running (counted against `ALLOWED_WORKER_COUNT`).
    async fn running_builders_count(&self) -> Result<usize, ExecutorError>;
    /// Stop every worker this executor started. Added to Quay's interface so that buildman's
    /// shutdown leaks no worker (Quay leaves Popen children running).
    async fn shutdown_all(&self) -> Result<(), ExecutorError>;
    /// How a person reaches worker `execution_id` for debugging (e.g. `ssh -p 2222
    /// root@127.0.0.1` for a VM with `SSH_AUTHORIZED_KEYS`); `None` when there is no way in. The
    /// manager writes it into the build log when the worker starts.
    fn debug_access(&self, _execution_id: &str) -> Option<String> {
        None
    }
    /// The ends of this executor's workers that nobody asked for (the agent or VM exited, was
    /// killed from outside, or outlived `MAX_LIFETIME_S`), so that the manager can end the
    /// attempt at once instead of waiting for its heartbeats to lapse. `None`: this executor
    /// cannot tell; heartbeats alone then decide.
    fn worker_exits(&self) -> Option<tokio::sync::broadcast::Receiver<WorkerExit>> {
        None
    }
}

/// A worker that ended on its own (see [`Executor::worker_exits`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerExit {
    /// The execution id `start_builder` returned.
    pub execution_id: String,
    /// What happened, for the build's log (e.g. "the VM's QEMU exited: signal 9 (SIGKILL)").
    pub detail: String,
}

/// The sending side of [`Executor::worker_exits`], shared by an executor and its reaper tasks.
#[derive(Debug)]
pub struct WorkerExits(tokio::sync::broadcast::Sender<WorkerExit>);

impl Default for WorkerExits {
    fn default() -> Self {
        // Exits are rare and handled at once; 256 pending is far more than a manager lags.
        WorkerExits(tokio::sync::broadcast::channel(256).0)
    }
}

impl WorkerExits {
    /// Report that worker `execution_id` ended; nobody listening is fine.
    pub fn send(&self, execution_id: &str, detail: String) {
        let _ = self.0.send(WorkerExit {
            execution_id: execution_id.to_owned(),
            detail,
        });
    }

    /// A new listener.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<WorkerExit> {
        self.0.subscribe()
    }
}

/// What an executor needs to start the agent of one build.
#[derive(Clone, PartialEq, Eq)]
pub struct StartJob {
    /// The build's UUID (`BUILD_UUID`).
    pub build_uuid: String,
    /// The registration JWT the agent presents (`TOKEN`).
    pub registration_token: String,
    /// `host:port` of buildman's gRPC service that the agent dials (`SERVER`).
    pub grpc_server: String,
    /// Plaintext gRPC and an insecure registry (`INSECURE`).
    pub insecure: bool,
    /// The registry the agent pushes to, `host[:port]` (`REGISTRY_HOSTNAME`).
    pub registry_hostname: String,
}

// Hand-written so the registration token never reaches a log line.
impl std::fmt::Debug for StartJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartJob")
            .field("build_uuid", &self.build_uuid)
            .field("registration_token", &"<redacted>")
            .field("grpc_server", &self.grpc_server)
            .field("insecure", &self.insecure)
            .field("registry_hostname", &self.registry_hostname)
            .finish()
    }
}

/// One executor entry of the configuration, in plain types; the lead maps `EXECUTORS` to it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutorSettings {
    /// `NAME`.
    pub name: String,
    /// `SETUP_TIME`.
    pub setup_time: Duration,
    /// `MINIMUM_RETRY_THRESHOLD` (default 0: always eligible).
    pub minimum_retry_threshold: u32,
    /// `NAMESPACE_WHITELIST`; `None` places no restriction.
    pub namespace_whitelist: Option<Vec<String>>,
    /// `STAGED_ROLLOUT`: the fraction (0.0 to 1.0) of namespaces that may use this executor.
    pub staged_rollout: Option<f64>,
    /// `DEBUG`: passed to the agent; popen keeps the agent's log file.
    pub debug: bool,
    /// `HTTP_PROXY`; `None` passes the manager's own `HTTP_PROXY`/`http_proxy`, if any.
    pub http_proxy: Option<String>,
    /// `HTTPS_PROXY`; `None` passes the manager's own, if any.
    pub https_proxy: Option<String>,
    /// `NO_PROXY`; `None` passes the manager's own, if any.
    pub no_proxy: Option<String>,
    /// `MAX_LIFETIME_S`: a worker that runs longer is killed.
    pub max_lifetime: Duration,
    /// popen: `BUILDER_BINARY_LOCATION`; `None` = `builder-agent` next to the current executable.
    pub builder_binary: Option<PathBuf>,
    /// popen: the directory holding each build's work directory, e.g. `<DATA_DIR>/builds`.
    pub work_root: PathBuf,
    /// popen: `QUARRY_MAX_CONTEXT_BYTES` for the agent.
    pub max_context_bytes: u64,
    /// popen: `RUST_LOG` for the agent; `None` passes the manager's own `RUST_LOG`, if any.
    pub rust_log: Option<String>,
}

impl ExecutorSettings {
    /// Quay's defaults for an executor called `name` whose work directories live in `work_root`.
    pub fn new(name: impl Into<String>, work_root: impl Into<PathBuf>) -> ExecutorSettings {
        ExecutorSettings {
            name: name.into(),
            setup_time: DEFAULT_SETUP_TIME,
            minimum_retry_threshold: 0,
            namespace_whitelist: None,
            staged_rollout: None,
            debug: false,
            http_proxy: None,
            https_proxy: None,
            no_proxy: None,
            max_lifetime: DEFAULT_MAX_LIFETIME,
            builder_binary: None,
            work_root: work_root.into(),
            max_context_bytes: DEFAULT_MAX_CONTEXT_BYTES,
            rust_log: None,
        }
    }
}

impl ExecutorSettings {
    /// The settings of configured entry `e` whose work directories live in `work_root`; the same
    /// mapping for every executor kind.
    pub fn from_config(
        e: &crate::config::ExecutorConfig,
        work_root: PathBuf,
        max_context_bytes: u64,
    ) -> ExecutorSettings {
        let mut s = ExecutorSettings::new(e.name.clone(), work_root);
        s.setup_time = e.setup_time();
        s.minimum_retry_threshold = e.minimum_retry_threshold;
        s.namespace_whitelist = e.namespace_whitelist.clone();
        s.staged_rollout = e.staged_rollout;
        s.debug = e.debug;
        s.http_proxy = e.http_proxy.clone();
        s.https_proxy = e.https_proxy.clone();
        s.no_proxy = e.no_proxy.clone();
        s.max_lifetime = e.max_lifetime();
        s.builder_binary = e.builder_binary_location.clone();
        s.max_context_bytes = max_context_bytes;
        s
    }
}

impl ExecutorSettings {
    /// `NAMESPACE_WHITELIST` and `STAGED_ROLLOUT` for `ns` (see [`allowed_for_namespace`]).
    pub fn allows_namespace(&self, ns: &str) -> bool {
        allowed_for_namespace(self.namespace_whitelist.as_deref(), self.staged_rollout, ns)
    }
}

/// Refuse a build id that could not name a work directory safely (empty, or anything but
/// letters, digits, `-` and `_`).
pub(crate) fn check_build_uuid(build_uuid: &str) -> Result<(), ExecutorError> {
    let ok = !build_uuid.is_empty()
        && build_uuid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ExecutorError::InvalidExecutionId {
            execution_id: build_uuid.to_owned(),
        })
    }
}

/// Create `<root>/<uuid>-<n>` (0700) for the first `n` whose directory, kept log
/// (`<dir>.log`) and pid record (`<dir>.pid`) are all free: `n` is the attempt number unless an
/// earlier attempt left something behind. One numbering for every executor, so they can share a
/// work root.
pub(crate) fn create_work_dir(
    root: &std::path::Path,
    build_uuid: &str,
) -> Result<(String, PathBuf), ExecutorError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder
        .create(root)
        .map_err(|source| ExecutorError::WorkDir {
            path: root.to_path_buf(),
            source,
        })?;
    builder.recursive(false);
    for n in 1u32..10_000 {
        let id = format!("{build_uuid}-{n}");
        let dir = root.join(&id);
        if popen::log_path(&dir).exists() || popen::pid_path(&dir).exists() {
            continue;
        }
        match builder.create(&dir) {
            Ok(()) => return Ok((id, dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(ExecutorError::WorkDir { path: dir, source }),
        }
    }
    Err(ExecutorError::WorkDir {
        path: root.join(format!("{build_uuid}-*")),
        source: std::io::Error::other("every work directory number is taken"),
    })
}

/// Why an executor could not start or stop a worker; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The agent binary does not exist.
    #[error(
        "builder-agent binary not found at {path}: run cargo build -p builder-agent or set \
         BUILDER_BINARY_LOCATION"
    )]
    MissingBinary {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The work directory or log file could not be created.
    #[error("failed to create {path}: check that the build work directory is writable")]
    WorkDir {
        /// The directory or file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The agent process could not be started.
    #[error("failed to spawn builder agent {path}: check that it is an executable file")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The work directory could not be removed after the worker stopped.
    #[error("failed to remove work directory {path}: remove it by hand")]
    Cleanup {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The execution id is not one this executor could have produced.
    #[error("invalid execution id {execution_id:?}: expected <build uuid>-<n>")]
    InvalidExecutionId {
        /// The id as given.
        execution_id: String,
    },
    /// The `qemu` executor could not prepare or start a VM.
    #[error(transparent)]
    Qemu(#[from] qemu::QemuError),
    /// The worker did not finish stopping in time.
    #[error("worker {execution_id} did not stop within {waited:?}: check for stuck processes")]
    StopTimeout {
        /// The execution id.
        execution_id: String,
        /// How long stop waited.
        waited: Duration,
    },
}

/// Quay's namespace gate for an executor: a namespace in `whitelist` is always allowed; otherwise
/// with `staged_rollout` set, the namespace's bucket (the last byte of its SHA-256, i.e.
/// `int(sha256(ns).hexdigest()[-2:], 16)`) must be below `256 * staged_rollout`; with neither
/// set, every namespace is allowed; with only a whitelist, only its namespaces are.
pub fn allowed_for_namespace(
    whitelist: Option<&[String]>,
    staged_rollout: Option<f64>,
    namespace: &str,
) -> bool {
    if whitelist.is_some_and(|list| list.iter().any(|n| n == namespace)) {
        return true;
    }
    if let Some(fraction) = staged_rollout {
        return f64::from(rollout_bucket(namespace)) < 256.0 * fraction;
    }
    whitelist.is_none()
}

/// The staged-rollout bucket of a namespace: 0..=255. The last two hex digits of a digest are its
/// last byte, so no hex round trip is needed.
pub fn rollout_bucket(namespace: &str) -> u8 {
    let digest = sha2::Sha256::digest(namespace.as_bytes());
    digest[digest.len() - 1]
}

/// The executors that may run an attempt of a build in `namespace` whose queue item has
/// `retries_remaining` left after this claim, in configuration order: those allowed for the
/// namespace with `minimum_retry_threshold <= retries_remaining`. With the default 3 retries,
/// attempts 1, 2 and 3 see 2, 1 and 0, so an executor with threshold 1 serves attempts 1 and 2
/// and attempt 3 falls to the next executor.
pub fn pick(
    executors: &[Arc<dyn Executor>],
    namespace: &str,
    retries_remaining: u32,
) -> Vec<Arc<dyn Executor>> {
    executors
        .iter()
        .filter(|e| e.allowed_for_namespace(namespace))
        .filter(|e| e.minimum_retry_threshold() <= retries_remaining)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An executor that only answers the eligibility questions.
    #[derive(Debug)]
    struct Fake {
        name: &'static str,
        threshold: u32,
        whitelist: Option<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl Executor for Fake {
        fn name(&self) -> &str {
            self.name
        }
        fn setup_time(&self) -> Duration {
            DEFAULT_SETUP_TIME
        }
        fn minimum_retry_threshold(&self) -> u32 {
            self.threshold
        }
        fn allowed_for_namespace(&self, ns: &str) -> bool {
            allowed_for_namespace(self.whitelist.as_deref(), None, ns)
        }
        async fn start_builder(&self, job: &StartJob) -> Result<String, ExecutorError> {
            Ok(job.build_uuid.clone())
        }
        async fn stop_builder(&self, _: &str) -> Result<(), ExecutorError> {
            Ok(())
        }
        async fn running_builders_count(&self) -> Result<usize, ExecutorError> {
            Ok(0)
        }
        async fn shutdown_all(&self) -> Result<(), ExecutorError> {
            Ok(())
        }
    }

    fn fake(name: &'static str, threshold: u32, whitelist: Option<&[&str]>) -> Arc<dyn Executor> {
        Arc::new(Fake {
            name,
            threshold,
            whitelist: whitelist.map(|l| l.iter().map(|s| (*s).to_owned()).collect()),
        })
    }

    fn names(list: &[Arc<dyn Executor>]) -> Vec<&str> {
        list.iter().map(|e| e.name()).collect()
    }

    #[test]
    fn threshold_one_serves_attempts_one_and_two_then_falls_to_the_next() {
        let executors = [fake("a", 1, None), fake("b", 0, None)];
        // Three retries: each claim decrements first, so attempts 1, 2, 3 see 2, 1, 0.
        let firsts: Vec<String> = [2, 1, 0]
            .into_iter()
            .map(|left| pick(&executors, "acme", left)[0].name().to_owned())
            .collect();
        assert_eq!(firsts, ["a", "a", "b"]);
        assert_eq!(
            names(&pick(&executors, "acme", 2)),
            ["a", "b"],
            "b is the failover"
        );
        assert_eq!(names(&pick(&executors, "acme", 0)), ["b"]);
    }

    #[test]
    fn pick_skips_executors_not_allowed_for_the_namespace() {
        let executors = [fake("a", 0, Some(&["vip"])), fake("b", 0, None)];
        assert_eq!(names(&pick(&executors, "vip", 2)), ["a", "b"]);
        assert_eq!(names(&pick(&executors, "acme", 2)), ["b"]);
        let none = [fake("a", 3, None)];
        assert!(pick(&none, "acme", 2).is_empty());
    }

    #[test]
    fn buckets_match_quays_hex_digest_suffix() {
        // int(hashlib.sha256(ns.encode()).hexdigest()[-2:], 16), computed with Python.
        for (ns, bucket) in [("acme", 87), ("devtable", 108), ("public", 215), ("x", 129)] {
            assert_eq!(rollout_bucket(ns), bucket, "{ns}");
        }
    }

    #[test]
    fn staged_rollout_admits_buckets_below_the_fraction() {
        // acme's bucket is 87: 256 * 0.34 = 87.04 admits it, 256 * 0.33 = 84.48 does not.
        assert!(allowed_for_namespace(None, Some(0.34), "acme"));
        assert!(!allowed_for_namespace(None, Some(0.33), "acme"));
        assert!(!allowed_for_namespace(None, Some(0.0), "acme"));
        assert!(allowed_for_namespace(None, Some(1.0), "public"));
    }

    #[test]
    fn whitelist_admits_its_namespaces_and_combines_with_rollout() {
        let list = ["vip".to_owned()];
        assert!(allowed_for_namespace(None, None, "anyone"));
        assert!(allowed_for_namespace(Some(&list), None, "vip"));
        assert!(!allowed_for_namespace(Some(&list), None, "acme"));
        assert!(allowed_for_namespace(Some(&[]), Some(0.34), "acme"));
        // Whitelisted namespaces skip the rollout bucket.
        assert!(allowed_for_namespace(Some(&list), Some(0.0), "vip"));
        assert!(!allowed_for_namespace(Some(&list), Some(0.0), "acme"));
    }

    #[test]
    fn start_job_debug_hides_the_token() {
        let job = StartJob {
            build_uuid: "u".into(),
            registration_token: "secret.jwt".into(),
            grpc_server: "127.0.0.1:50051".into(),
            insecure: true,
            registry_hostname: "localhost:8080".into(),
        };
        assert!(!format!("{job:?}").contains("secret"));
    }
}
