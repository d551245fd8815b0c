//! A private `podman system service` for one build: its own storage (vfs), run root, API socket,
//! registries.conf and temp dir under the work directory, the `runc` runtime and chroot
//! isolation (crun and the default isolation fail on hosts whose cgroup layout podman cannot
//! manage, which is where builds run unprivileged or nested).
//!
//! This is the crate's one place that spawns a process. The service runs in its own process
//! group, and that group is killed when the [`PodmanService`] is dropped or shut down, so a
//! cancelled or failed build leaves no podman, buildah or RUN process behind. An agent that is
//! SIGKILLed runs neither: for that case the service is recorded in `<work dir>/podman.json`
//! ([`RECORD_FILE`]), from which buildman's executor finds the service and a run root kept
//! outside the work directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How long the service may take to create its socket.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// How long the service gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// podman refuses a run root longer than this (`the specified runroot is longer than 50
/// characters`).
const MAX_RUNROOT_LEN: usize = 50;
/// A unix socket path must fit `sockaddr_un.sun_path` (108 bytes with the NUL); keep a margin.
const MAX_SOCKET_LEN: usize = 100;
/// The service's record in the work directory: `{"pid", "start_time", "runroot", "socket"}`, pid
/// and start time (`/proc/<pid>/stat` field 22) null until the service is spawned. buildman's
/// `executor::sweep` reads it; keep the two in step.
pub const RECORD_FILE: &str = "podman.json";
/// The prefix of a short run root directory in `/tmp`; buildman removes only such directories.
const SHORT_DIR_PREFIX: &str = "quarry-run-";
/// Variables passed from the agent's environment to podman (proxies for pulls); everything else
/// is cleared.
const PASSED_ENV: &[&str] = &[
    "PATH",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// Why the private podman service could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    /// A directory or file of the service could not be created.
    #[error("failed to prepare {path:?} for the podman service")]
    Setup {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `podman` could not be started.
    #[error("failed to spawn podman (is the podman package installed?)")]
    Spawn(#[source] std::io::Error),
    /// The service exited before its socket appeared.
    #[error("podman system service exited with {status} before listening: {log_tail}")]
    Exited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its log.
        log_tail: String,
    },
    /// The socket did not appear in time.
    #[error("podman system service did not listen on {socket:?} within {after:?}: {log_tail}")]
    NotReady {
        /// The socket path.
        socket: PathBuf,
        /// The deadline.
        after: Duration,
        /// The end of its log.
        log_tail: String,
    },
}

/// A running private podman service; killed (with its process group) on drop.
#[derive(Debug)]
pub struct PodmanService {
    child: tokio::process::Child,
    socket: PathBuf,
    log: PathBuf,
    /// Holds the short run root when the work directory's path is too long for podman.
    _short_runroot: Option<tempfile::TempDir>,
}

/// The paths one service uses, derived from the work directory.
#[derive(Debug, PartialEq, Eq)]
pub struct Layout {
    /// `--root`.
    pub storage: PathBuf,
    /// `--runroot`.
    pub runroot: PathBuf,
    /// The API socket.
    pub socket: PathBuf,
    /// TMPDIR and `--tmpdir`.
    pub tmp: PathBuf,
    /// HOME of the service.
    pub home: PathBuf,
    /// CONTAINERS_REGISTRIES_CONF.
    pub registries_conf: PathBuf,
    /// The service's stdout and stderr.
    pub log: PathBuf,
    /// [`RECORD_FILE`].
    pub record: PathBuf,
}

/// What [`RECORD_FILE`] holds.
#[derive(Debug, serde::Serialize)]
struct Record<'a> {
    pid: Option<i32>,
    start_time: Option<u64>,
    runroot: &'a Path,
    socket: &'a Path,
}

impl Layout {
    /// Paths under `work`; `short_dir` replaces the run root (and socket) when those paths are
    /// too long for podman or for a unix socket.
    pub fn new(work: &Path, short_dir: Option<&Path>) -> Layout {
        let runroot = match short_dir {
            Some(d) if work.join("run").as_os_str().len() > MAX_RUNROOT_LEN => d.join("run"),
            _ => work.join("run"),
        };
        let socket = match short_dir {
            Some(d) if work.join("podman.sock").as_os_str().len() > MAX_SOCKET_LEN => {
                d.join("podman.sock")
            }
            _ => work.join("podman.sock"),
        };
        Layout {
            storage: work.join("storage"),
            runroot,
            socket,
            tmp: work.join("tmp"),
            home: work.join("home"),
            registries_conf: work.join("registries.conf"),
            log: work.join("podman.log"),
            record: work.join(RECORD_FILE),
        }
    }

    /// Whether [`Layout::new`] needs a short directory for `work`.
    pub fn needs_short_dir(work: &Path) -> bool {
        work.join("run").as_os_str().len() > MAX_RUNROOT_LEN
            || work.join("podman.sock").as_os_str().len() > MAX_SOCKET_LEN
    }

    /// The global flags and arguments of `podman ... system service`.
    pub fn service_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        let mut pair = |flag: &str, value: &Path| {
            args.push(flag.into());
            args.push(value.into());
        };
        pair("--root", &self.storage);
        pair("--runroot", &self.runroot);
        pair("--tmpdir", &self.tmp);
        for a in [
            "--storage-driver",
            "vfs",
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "system",
            "service",
            "--time",
            "0",
        ] {
            args.push(a.into());
        }
        let mut uri = std::ffi::OsString::from("unix://");
        uri.push(&self.socket);
        args.push(uri);
        args
    }

    /// Write [`RECORD_FILE`] for the service `pid` (or for none yet), atomically (write, rename).
    fn write_record(&self, pid: Option<i32>) -> Result<(), PodmanError> {
        let record = Record {
            pid,
            start_time: pid.and_then(start_time),
            runroot: &self.runroot,
            socket: &self.socket,
        };
        let setup = |source| PodmanError::Setup {
            path: self.record.clone(),
            source,
        };
        let json = serde_json::to_vec(&record).map_err(|e| setup(std::io::Error::other(e)))?;
        let mut tmp = self.record.clone().into_os_string();
        tmp.push(".tmp");
        std::fs::write(&tmp, json).map_err(setup)?;
        std::fs::rename(&tmp, &self.record).map_err(setup)
    }
}

/// registries.conf for the service: no unqualified-search registries (a short name must not
/// silently resolve to some public registry), and `registry` marked insecure (plain HTTP) when
/// `insecure`.
pub fn registries_conf(registry: Option<&str>, insecure: bool) -> String {
    let mut conf = String::from("unqualified-search-registries = []\n");
    if let Some(reg) = registry
        && insecure
    {
        conf.push_str(&format!(
            "\n[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
            reg.replace(['"', '\\'], "")
        ));
    }
    conf
}

impl PodmanService {
    /// Start the service under `work` and wait until its socket accepts connections.
    pub async fn start(
        work: &Path,
        registry: Option<&str>,
        insecure: bool,
    ) -> Result<PodmanService, PodmanError> {
        let short = if Layout::needs_short_dir(work) {
            let dir = tempfile::Builder::new()
                .prefix(SHORT_DIR_PREFIX)
                .tempdir_in("/tmp")
                .map_err(|source| PodmanError::Setup {
                    path: "/tmp".into(),
                    source,
                })?;
            Some(dir)
        } else {
            None
        };
        let layout = Layout::new(work, short.as_ref().map(tempfile::TempDir::path));
        // Before anything is spawned, so that a kill from here on leaves the run root findable.
        layout.write_record(None)?;
        for dir in [&layout.storage, &layout.runroot, &layout.tmp, &layout.home] {
            std::fs::create_dir_all(dir).map_err(|source| PodmanError::Setup {
                path: dir.clone(),
                source,
            })?;
        }
        let setup = |path: &Path| {
            let path = path.to_owned();
            move |source| PodmanError::Setup { path, source }
        };
        std::fs::write(&layout.registries_conf, registries_conf(registry, insecure))
            .map_err(setup(&layout.registries_conf))?;
        let log = std::fs::File::create(&layout.log).map_err(setup(&layout.log))?;
        let log_err = log.try_clone().map_err(setup(&layout.log))?;
        // A stale socket from an earlier attempt would look ready before the service is.
        let _ = std::fs::remove_file(&layout.socket);

        let mut cmd = tokio::process::Command::new("podman");
        cmd.args(layout.service_args())
            .env_clear()
            .envs(
                PASSED_ENV
                    .iter()
                    .filter_map(|k| Some((k, std::env::var_os(k)?))),
            )
            .env("HOME", &layout.home)
            .env("TMPDIR", &layout.tmp)
            .env("BUILDAH_ISOLATION", "chroot")
            .env("CONTAINERS_REGISTRIES_CONF", &layout.registries_conf)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(PodmanError::Spawn)?;
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            layout.write_record(Some(pid))?;
        }
        let mut service = PodmanService {
            child,
            socket: layout.socket,
            log: layout.log,
            _short_runroot: short,
        };
        service.wait_ready().await?;
        tracing::info!(socket = ?service.socket, "private podman service is listening");
        Ok(service)
    }

    async fn wait_ready(&mut self) -> Result<(), PodmanError> {
        let deadline = tokio::time::Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(PodmanError::Exited {
                    status,
                    log_tail: self.log_tail(),
                });
            }
            if tokio::net::UnixStream::connect(&self.socket).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(PodmanError::NotReady {
                    socket: self.socket.clone(),
                    after: STARTUP_DEADLINE,
                    log_tail: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `unix:///path/to/podman.sock`, for the engine client.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// SIGTERM the service's process group, then SIGKILL after a grace period, and reap it;
    /// every process the service started (a build's RUN step included) is killed too.
    pub async fn shutdown(mut self) {
        // Collected first: once the service is gone its children are reparented to init.
        let tree = self.descendants();
        self.signal(Signal::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, self.child.wait())
            .await
            .is_err()
        {
            self.signal(Signal::SIGKILL);
            let _ = self.child.wait().await;
        }
        self.signal(Signal::SIGKILL);
        kill_all(&tree);
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            // The group id is the service's pid (process_group(0)); ESRCH means it is gone.
            let _ = killpg(Pid::from_raw(pid), signal);
        }
    }

    fn pid(&self) -> Option<i32> {
        self.child.id().and_then(|p| i32::try_from(p).ok())
    }

    /// The service's descendants. buildah runs each RUN step in a session of its own, so the
    /// service's process group does not hold it, and the API does not stop a build whose client
    /// went away: without this a cancelled `RUN sleep 600` would outlive the agent.
    fn descendants(&self) -> Vec<i32> {
        self.pid().map(descendants).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4096);
        String::from_utf8_lossy(&text[start..]).trim().to_owned()
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        let tree = self.descendants();
        self.signal(Signal::SIGKILL);
        kill_all(&tree);
    }
}

fn kill_all(pids: &[i32]) {
    for pid in pids {
        // ESRCH: it already exited with its parent.
        let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
}

/// Every descendant of `root`, from the parent links in `/proc/<pid>/stat`.
fn descendants(root: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let links: Vec<(i32, i32)> = entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            Some((pid, parent_pid(&stat)?))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(links.iter().filter(|(_, p)| *p == parent).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

/// The parent pid in a `/proc/<pid>/stat` line: `pid (comm) state ppid ...`, where comm may
/// contain spaces and parentheses, hence the search from the last `)`.
fn parent_pid(stat: &str) -> Option<i32> {
    stat_field(stat, 1)?.parse().ok()
}

/// The start time of `pid` in clock ticks after boot (field 22 of `/proc/<pid>/stat`): with the
/// pid, it names one process even after the pid is reused.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_field(&stat, 19)?.parse().ok()
}

/// Field `n` after the command name of a `/proc/<pid>/stat` line (0 is the state).
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    stat.get(stat.rfind(')')? + 1..)?.split_whitespace().nth(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_stays_under_the_work_dir_when_paths_are_short() {
        let work = Path::new("/w/b-1");
        assert!(!Layout::needs_short_dir(work));
        let l = Layout::new(work, None);
        assert_eq!(l.runroot, Path::new("/w/b-1/run"));
        assert_eq!(l.socket, Path::new("/w/b-1/podman.sock"));
        let args: Vec<String> = l
            .service_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.starts_with("--root /w/b-1/storage --runroot /w/b-1/run --tmpdir /w/b-1/tmp"),
            "{joined}"
        );
        assert!(
            joined.ends_with(
                "--storage-driver vfs --runtime runc --cgroup-manager cgroupfs --events-backend \
                 file system service --time 0 unix:///w/b-1/podman.sock"
            ),
            "{joined}"
        );
    }

    #[test]
    fn long_work_dirs_get_a_short_run_root() {
        let work = PathBuf::from(format!("/var/lib/quarry/builds/{}-1", "a".repeat(36)));
        assert!(Layout::needs_short_dir(&work));
        let l = Layout::new(&work, Some(Path::new("/tmp/quarry-x")));
        assert_eq!(l.runroot, Path::new("/tmp/quarry-x/run"));
        assert_eq!(l.storage, work.join("storage"));
        assert_eq!(
            l.socket,
            work.join("podman.sock"),
            "the socket path still fits"
        );
    }

    #[test]
    fn the_record_names_the_service_and_its_run_root() {
        let work = tempfile::tempdir().unwrap();
        let l = Layout::new(work.path(), Some(Path::new("/tmp/quarry-run-x")));
        l.write_record(None).unwrap();
        let read = || -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(work.path().join(RECORD_FILE)).unwrap()).unwrap()
        };
        assert_eq!(read()["pid"], serde_json::Value::Null);
        assert_eq!(read()["runroot"], l.runroot.to_str().unwrap());
        let me = i32::try_from(std::process::id()).unwrap();
        l.write_record(Some(me)).unwrap();
        let record = read();
        assert_eq!(record["pid"], me);
        assert_eq!(record["start_time"], start_time(me).unwrap());
        assert_eq!(record["socket"], l.socket.to_str().unwrap());
        assert!(!work.path().join("podman.json.tmp").exists());
    }

    #[test]
    fn parent_pids_are_read_past_odd_command_names() {
        assert_eq!(parent_pid("42 (sleep) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parent_pid("42 (a) b (c) S 9 1"), Some(9));
        assert_eq!(parent_pid("garbage"), None);
    }

    #[test]
    fn descendants_include_grandchildren_in_other_sessions() {
        // sh starts a sleep in a new session (setsid), as buildah does with a RUN step.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "setsid sleep 30 & wait"])
            .spawn()
            .unwrap();
        let sh = i32::try_from(child.id()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let tree = loop {
            let tree = descendants(sh);
            if !tree.is_empty() || std::time::Instant::now() > deadline {
                break tree;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!tree.is_empty(), "the grandchild was not found");
        kill_all(&tree);
        child.wait().unwrap();
        assert!(descendants(sh).is_empty());
    }

    #[test]
    fn registries_conf_marks_only_an_insecure_registry() {
        let secure = registries_conf(Some("reg.example"), false);
        assert_eq!(secure, "unqualified-search-registries = []\n");
        let insecure = registries_conf(Some("127.0.0.1:5000"), true);
        assert!(insecure.contains("location = \"127.0.0.1:5000\"\ninsecure = true"));
        assert_eq!(
            registries_conf(None, true),
            "unqualified-search-registries = []\n"
        );
    }
}
