//! The `popen` executor: one `builder-agent` process per build on this machine (Quay 3.7).
//!
//! Each agent runs in its own process group with a cleared environment (only [`AGENT_ENV`]), in
//! a private work directory `<work_root>/<build uuid>-<n>` (mode 0700; the agent keeps its
//! sources and its private podman storage there), with stdout and stderr appended to
//! `<work dir>.log`. The execution id is the work directory's name. A reaper task per agent
//! notices its exit, kills every process left of the build, removes the work directory and logs
//! the exit status with the build id; it also enforces `MAX_LIFETIME_S`. Stopping signals the
//! agent's group: SIGTERM, then SIGKILL after 5 s.
//!
//! "Every process of the build" is more than the agent's group: its podman service and buildah's
//! RUN steps leave it. Before a work directory is removed (exit, stop, `MAX_LIFETIME_S`, orphan
//! reaping, shutdown, drop) the executor finds them in `/proc` by the work directory, the build
//! id and the agent's podman record, and kills them (`sweep`).
//!
//! `<work dir>.pid` records the group so that [`PopenExecutor::reap_orphans`] can stop agents left
//! behind by a buildman that was killed without a chance to stop them.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{Notify, watch};

use super::orphans;
use super::process;
use super::reaper::{self, Children, Running};
use super::scan::Recorded;
use super::sweep::BuildSweep;
use super::{Executor, ExecutorError, ExecutorSettings, StartJob};

/// Every variable an agent may receive; nothing else from the manager's environment reaches it.
pub const AGENT_ENV: &[&str] = &[
    "SERVER",
    "TOKEN",
    "BUILD_UUID",
    "REGISTRY_HOSTNAME",
    "CONTAINER_RUNTIME",
    "INSECURE",
    "PATH",
    "HOME",
    "DEBUG",
    "QUARRY_WORK_DIR",
    "QUARRY_MAX_CONTEXT_BYTES",
    "RUST_LOG",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// The agent's `PATH`: system directories only, never the manager's own `PATH`.
pub const AGENT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long `stop_builder` waits for the reaper to finish (grace, kill and directory removal).
const STOP_WAIT: Duration = Duration::from_secs(120);

/// The popen executor; see the module documentation.
#[derive(Debug)]
pub struct PopenExecutor {
    settings: ExecutorSettings,
    binary: PathBuf,
    /// Proxy variables (both cases) and `RUST_LOG`, resolved once from settings and environment.
    inherited: Vec<(&'static str, String)>,
    children: Arc<Children>,
}

impl PopenExecutor {
    /// An executor for `settings`, reading proxy variables and `RUST_LOG` from the manager's
    /// environment where the settings leave them unset.
    pub fn new(settings: ExecutorSettings) -> PopenExecutor {
        PopenExecutor::with_env(settings, |name| std::env::var(name).ok())
    }

    /// As [`PopenExecutor::new`], reading the manager's environment through `lookup`.
    pub fn with_env(
        settings: ExecutorSettings,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> PopenExecutor {
        let binary = settings.builder_binary.clone().unwrap_or_else(|| {
            std::env::current_exe().map_or_else(
                |_| PathBuf::from("/usr/local/bin/builder-agent"),
                |exe| default_binary(&exe, |p| p.is_file()),
            )
        });
        // The agent runs in its work directory: a relative binary path must not resolve there.
        let binary = std::path::absolute(&binary).unwrap_or(binary);
        let inherited = inherited_env(&settings, lookup);
        PopenExecutor {
            settings,
            binary,
            inherited,
            children: Arc::default(),
        }
    }

    /// The agent binary this executor starts.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Fail with [`ExecutorError::MissingBinary`] unless the agent binary exists (for
    /// `check-config` and startup).
    pub fn check(&self) -> Result<(), ExecutorError> {
        if self.binary.is_file() {
            Ok(())
        } else {
            Err(ExecutorError::MissingBinary {
                path: self.binary.clone(),
            })
        }
    }

    /// The environment of the agent for `job` working in `work_dir`: exactly these variables.
    pub fn agent_env(&self, job: &StartJob, work_dir: &Path) -> Vec<(&'static str, String)> {
        let flag = |b: bool| if b { "true" } else { "false" }.to_owned();
        let dir = work_dir.to_string_lossy().into_owned();
        let mut env = vec![
            ("SERVER", job.grpc_server.clone()),
            ("TOKEN", job.registration_token.clone()),
            ("BUILD_UUID", job.build_uuid.clone()),
            ("REGISTRY_HOSTNAME", job.registry_hostname.clone()),
            ("CONTAINER_RUNTIME", "podman".to_owned()),
            ("INSECURE", flag(job.insecure)),
            ("PATH", AGENT_PATH.to_owned()),
            ("HOME", dir.clone()),
            ("DEBUG", flag(self.settings.debug)),
            ("QUARRY_WORK_DIR", dir),
            (
                "QUARRY_MAX_CONTEXT_BYTES",
                self.settings.max_context_bytes.to_string(),
            ),
        ];
        env.extend(self.inherited.iter().cloned());
        env
    }

    /// Stop every process of the builds that a previous buildman left in `work_root` (found by
    /// their pid files and work directories) and remove their work directories; their logs are
    /// kept. Call once at startup, before scheduling, on each distinct work root. Returns how
    /// many builds still had processes running.
    pub async fn reap_orphans(&self) -> Result<usize, ExecutorError> {
        let children = &self.children;
        orphans::reap(&self.settings.work_root, |id| {
            children.lock().contains_key(id)
        })
        .await
    }

    async fn spawn(&self, job: &StartJob) -> Result<String, ExecutorError> {
        self.check()?;
        let (id, dir) = super::create_work_dir(&self.settings.work_root, &job.build_uuid)?;
        let log = log_path(&dir);
        let result = self.spawn_in(job, &id, &dir, &log);
        if result.is_err() {
            let _ = process::remove_dir(&dir).await;
            let _ = process::remove_file(&log);
        }
        result.map(|()| id)
    }

    fn spawn_in(
        &self,
        job: &StartJob,
        id: &str,
        dir: &Path,
        log: &Path,
    ) -> Result<(), ExecutorError> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(log)
            .map_err(|source| ExecutorError::WorkDir {
                path: log.to_path_buf(),
                source,
            })?;
        let stderr = file.try_clone().map_err(|source| ExecutorError::WorkDir {
            path: log.to_path_buf(),
            source,
        })?;
        let mut child = tokio::process::Command::new(&self.binary)
            .env_clear()
            .envs(self.agent_env(job, dir))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ExecutorError::Spawn {
                path: self.binary.clone(),
                source,
            })?;
        // id() is None only once the child was reaped, which nothing could have done yet.
        let Some(pgid) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
            let _ = child.start_kill();
            return Err(ExecutorError::Spawn {
                path: self.binary.clone(),
                source: std::io::Error::other("the agent exited before its pid was read"),
            });
        };
        let start_time = process::read_stat(pgid).map_or(0, |s| s.start_time);
        if let Err(e) = process::write_pid_file(&pid_path(dir), pgid, start_time) {
            tracing::warn!(execution_id = id, error = %e, "failed to write the agent's pid file");
        }
        let stop = Arc::new(Notify::new());
        let (done_tx, done) = watch::channel(false);
        let running = Running {
            build_uuid: job.build_uuid.clone(),
            pgid,
            start_time,
            work_dir: dir.to_path_buf(),
            stop: stop.clone(),
            done,
        };
        self.children.lock().insert(id.to_owned(), running);
        tracing::info!(build_uuid = %job.build_uuid, execution_id = id, pgid, log = %log.display(),
            "started builder agent");
        tokio::spawn(reaper::reap(reaper::Reaper {
            children: self.children.clone(),
            id: id.to_owned(),
            build_uuid: job.build_uuid.clone(),
            child,
            pgid,
            start_time,
            dir: dir.to_path_buf(),
            stop,
            done: done_tx,
            max_lifetime: self.settings.max_lifetime,
            debug: self.settings.debug,
        }));
        Ok(())
    }
}

#[async_trait::async_trait]
impl Executor for PopenExecutor {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn setup_time(&self) -> Duration {
        self.settings.setup_time
    }

    fn minimum_retry_threshold(&self) -> u32 {
        self.settings.minimum_retry_threshold
    }

    fn allowed_for_namespace(&self, ns: &str) -> bool {
        self.settings.allows_namespace(ns)
    }

    #[tracing::instrument(skip(self, job), fields(build_uuid = %job.build_uuid, executor = %self.settings.name))]
    async fn start_builder(&self, job: &StartJob) -> Result<String, ExecutorError> {
        super::check_build_uuid(&job.build_uuid)?;
        self.spawn(job).await
    }

    async fn stop_builder(&self, execution_id: &str) -> Result<(), ExecutorError> {
        let entry = self
            .children
            .lock()
            .get(execution_id)
            .map(|r| (r.stop.clone(), r.done.clone()));
        let Some((stop, mut done)) = entry else {
            return Ok(());
        };
        stop.notify_one();
        match tokio::time::timeout(STOP_WAIT, done.wait_for(|d| *d)).await {
            // A closed channel means the reaper task ended (finished or its runtime went away).
            Ok(_) => Ok(()),
            Err(_) => Err(ExecutorError::StopTimeout {
                execution_id: execution_id.to_owned(),
                waited: STOP_WAIT,
            }),
        }
    }

    async fn running_builders_count(&self) -> Result<usize, ExecutorError> {
        Ok(self.children.lock().len())
    }

    fn worker_exits(&self) -> Option<tokio::sync::broadcast::Receiver<super::WorkerExit>> {
        Some(self.children.exits.subscribe())
    }

    async fn shutdown_all(&self) -> Result<(), ExecutorError> {
        let ids: Vec<String> = self.children.lock().keys().cloned().collect();
        // Ask every reaper first so the groups stop concurrently, then wait for each.
        for id in &ids {
            if let Some(r) = self.children.lock().get(id) {
                r.stop.notify_one();
            }
        }
        for id in &ids {
            self.stop_builder(id).await?;
        }
        Ok(())
    }
}

impl Drop for PopenExecutor {
    /// Last resort when buildman exits without `shutdown_all`: SIGKILL every process of every
    /// build (agent group, podman service, RUN steps) and remove its work directory, so nothing
    /// outlives the manager. Blocks for at most about a second per build.
    fn drop(&mut self) {
        for (id, running) in self.children.lock().drain() {
            if let Err(e) = process::signal_group(running.pgid, Signal::SIGKILL) {
                tracing::error!(execution_id = %id, pgid = running.pgid, error = %e,
                    "failed to kill builder agent group on shutdown");
            }
            let group = Recorded {
                pid: running.pgid,
                start_time: running.start_time,
            };
            let sweep = BuildSweep::new(&running.build_uuid, &running.work_dir, Some(group));
            let swept = sweep.kill_now();
            if swept.survivors.is_empty() {
                sweep.remove_files_now();
                let _ = process::remove_file(&pid_path(&running.work_dir));
            } else {
                tracing::error!(execution_id = %id, survivors = ?swept.survivors,
                    "build processes survived SIGKILL on shutdown; kill them by hand");
            }
        }
    }
}

/// `<work dir>.log`.
pub(super) fn log_path(dir: &Path) -> PathBuf {
    sibling(dir, "log")
}

/// `<work dir>.pid`.
pub(super) fn pid_path(dir: &Path) -> PathBuf {
    sibling(dir, "pid")
}

fn sibling(dir: &Path, ext: &str) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".");
    name.push(ext);
    PathBuf::from(name)
}

/// The default agent binary: `builder-agent` beside `exe`, or, when `exe` is a test binary in
/// `target/<profile>/deps`, in `target/<profile>`.
fn default_binary(exe: &Path, exists: impl Fn(&Path) -> bool) -> PathBuf {
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let beside = dir.join("builder-agent");
    if !exists(&beside)
        && dir.file_name().is_some_and(|n| n == "deps")
        && let Some(profile) = dir.parent()
    {
        return profile.join("builder-agent");
    }
    beside
}

/// Proxy variables in both cases (settings first, then the manager's upper-case, then lower-case
/// variable) and `RUST_LOG` (settings, then the manager's).
pub(super) fn inherited_env(
    settings: &ExecutorSettings,
    lookup: impl Fn(&str) -> Option<String>,
) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    let proxies = [
        (&settings.http_proxy, "HTTP_PROXY", "http_proxy"),
        (&settings.https_proxy, "HTTPS_PROXY", "https_proxy"),
        (&settings.no_proxy, "NO_PROXY", "no_proxy"),
    ];
    for (configured, upper, lower) in proxies {
        let value = configured
            .clone()
            .or_else(|| lookup(upper))
            .or_else(|| lookup(lower));
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            env.push((upper, v.clone()));
            env.push((lower, v));
        }
    }
    if let Some(v) = settings.rust_log.clone().or_else(|| lookup("RUST_LOG")) {
        env.push(("RUST_LOG", v));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> StartJob {
        StartJob {
            build_uuid: "b1".into(),
            registration_token: "jwt".into(),
            grpc_server: "127.0.0.1:50051".into(),
            insecure: true,
            registry_hostname: "localhost:8080".into(),
        }
    }

    #[test]
    fn default_binary_is_beside_the_exe_or_above_a_deps_dir() {
        let none = |_: &Path| false;
        let exe = Path::new("/opt/quarry/bin/buildman");
        assert_eq!(
            default_binary(exe, none),
            Path::new("/opt/quarry/bin/builder-agent")
        );
        let test_exe = Path::new("/w/target/debug/deps/buildman-0123");
        assert_eq!(
            default_binary(test_exe, none),
            Path::new("/w/target/debug/builder-agent")
        );
        let present = |p: &Path| p == Path::new("/w/target/debug/deps/builder-agent");
        assert_eq!(
            default_binary(test_exe, present),
            Path::new("/w/target/debug/deps/builder-agent")
        );
    }

    #[test]
    fn proxies_come_from_settings_then_the_managers_env_in_both_cases() {
        let mut settings = ExecutorSettings::new("popen", "/w");
        settings.http_proxy = Some("http://configured:3128".into());
        let env = |name: &str| match name {
            "HTTP_PROXY" => Some("http://ignored:1".into()),
            "https_proxy" => Some("http://lower:3128".into()),
            "RUST_LOG" => Some("debug".into()),
            "NO_PROXY" => Some(String::new()),
            _ => None,
        };
        let got = inherited_env(&settings, env);
        let want = [
            ("HTTP_PROXY", "http://configured:3128"),
            ("http_proxy", "http://configured:3128"),
            ("HTTPS_PROXY", "http://lower:3128"),
            ("https_proxy", "http://lower:3128"),
            ("RUST_LOG", "debug"),
        ];
        assert_eq!(got, want.map(|(k, v)| (k, v.to_owned())));
    }

    #[test]
    fn agent_env_names_are_all_allowed_and_carry_the_job() {
        let mut settings = ExecutorSettings::new("popen", "/w");
        settings.debug = true;
        settings.no_proxy = Some("localhost".into());
        let exec = PopenExecutor::with_env(settings, |_| None);
        let env = exec.agent_env(&job(), Path::new("/w/b1-1"));
        assert!(env.iter().all(|(k, _)| AGENT_ENV.contains(k)), "{env:?}");
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("SERVER"), Some("127.0.0.1:50051"));
        assert_eq!(get("TOKEN"), Some("jwt"));
        assert_eq!(get("INSECURE"), Some("true"));
        assert_eq!(get("DEBUG"), Some("true"));
        assert_eq!(get("HOME"), Some("/w/b1-1"));
        assert_eq!(get("QUARRY_WORK_DIR"), Some("/w/b1-1"));
        assert_eq!(get("CONTAINER_RUNTIME"), Some("podman"));
        assert_eq!(get("no_proxy"), Some("localhost"));
        assert_eq!(get("RUST_LOG"), None);
    }

    #[test]
    fn work_dirs_are_numbered_private_and_skip_kept_logs() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().unwrap();
        let exec = PopenExecutor::new(ExecutorSettings::new("popen", root.path().join("builds")));
        let (id, dir) = super::super::create_work_dir(&exec.settings.work_root, "b1").unwrap();
        assert_eq!(id, "b1-1");
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::write(root.path().join("builds/b1-2.log"), "kept").unwrap();
        assert_eq!(
            super::super::create_work_dir(&exec.settings.work_root, "b1")
                .unwrap()
                .0,
            "b1-3"
        );
        assert_eq!(log_path(&dir), root.path().join("builds/b1-1.log"));
    }

    #[tokio::test]
    async fn stop_of_an_unknown_id_is_a_no_op() {
        let root = tempfile::tempdir().unwrap();
        let exec = PopenExecutor::new(ExecutorSettings::new("popen", root.path()));
        exec.stop_builder("nope-1").await.unwrap();
        exec.stop_builder("nope-1").await.unwrap();
        assert_eq!(exec.running_builders_count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_build_uuid_that_is_not_a_plain_name_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let mut settings = ExecutorSettings::new("popen", root.path());
        settings.builder_binary = Some("/bin/true".into());
        let exec = PopenExecutor::new(settings);
        let bad = StartJob {
            build_uuid: "../x".into(),
            ..job()
        };
        let err = exec.start_builder(&bad).await.unwrap_err();
        assert!(
            matches!(err, ExecutorError::InvalidExecutionId { .. }),
            "{err}"
        );
    }
}
