//! Shared harness for the live-server tests: a `registry-core` process on loopback with its own
//! data directory, the admin CLI on that directory, an HTTP client doing the Docker token flow
//! (`client.rs`), push helpers (`push.rs`) and image builders (`image.rs`).
//!
//! Every wait has a deadline, and the server is killed by process group and reaped on drop, also
//! when the test panics (its stderr tail is printed then, to explain the failure).
#![allow(
    dead_code,
    unreachable_pub,
    missing_debug_implementations,
    clippy::unwrap_used
)]

pub mod client;
pub mod image;
pub mod push;

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

#[allow(unused_imports)]
pub use client::{Client, Resp};

/// How long the server may take to print its "listening" line.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// How long one admin CLI call may take.
const ADMIN_DEADLINE: Duration = Duration::from_secs(60);
/// The password every test user gets (users are created through the admin CLI).
pub const PASSWORD: &str = "correct horse battery staple";

/// Read `<workspace>/fixtures/<path>`, naming the file when it is missing.
pub fn fixture(path: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading fixture {}: {e}", p.display()))
}

/// A free loopback port: bind port 0, read the port, release it.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a probe listener on 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// A running `registry-core serve` on 127.0.0.1 with a private data directory.
pub struct Registry {
    root: tempfile::TempDir,
    pub port: u16,
    config: Option<PathBuf>,
    child: Option<Child>,
}

impl Registry {
    /// Start a server with the default configuration.
    pub fn start() -> Registry {
        Registry::start_with_config(None)
    }

    /// Start a server with `yaml` as its configuration file (`None`: no `--config`).
    pub fn start_with_config(yaml: Option<&str>) -> Registry {
        let root = tempfile::Builder::new()
            .prefix("registry-core-test-")
            .tempdir()
            .expect("creating the test temp dir");
        let config = yaml.map(|y| {
            let p = root.path().join("config.yaml");
            std::fs::write(&p, y).expect("writing the test config");
            p
        });
        let mut reg = Registry {
            root,
            port: 0,
            config,
            child: None,
        };
        // Another test may grab the probed port before the server binds it: try a few ports.
        let mut last_err = String::new();
        for _ in 0..3 {
            reg.port = free_port();
            match reg.spawn() {
                Ok(()) => return reg,
                Err(e) => last_err = e,
            }
        }
        panic!("registry-core did not start: {last_err}");
    }

    /// `127.0.0.1:PORT`, what clients use and what SERVER_HOSTNAME is set to.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// A scratch directory that lives as long as the registry (for client state, layouts).
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.root.path().join("scratch").join(name);
        std::fs::create_dir_all(&p).expect("creating a scratch dir");
        p
    }

    fn stderr_path(&self) -> PathBuf {
        self.root.path().join("server.stderr")
    }

    fn base_command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_registry-core"));
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.arg("--data-dir").arg(self.data_dir());
        cmd
    }

    fn spawn(&mut self) -> Result<(), String> {
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(self.stderr_path())
            .map_err(|e| format!("opening the server stderr log: {e}"))?;
        let host = self.host();
        let mut cmd = self.base_command();
        cmd.args(["serve", "--listen", &host, "--server-hostname", &host])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            // Own process group, so kill() takes anything the server might start with it.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawning registry-core: {e}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        self.child = Some(child);
        let (tx, rx) = mpsc::channel();
        // Forward the first "listening" line, then keep draining so the pipe never fills.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("registry-core listening on http://")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line);
                }
            }
        });
        match rx.recv_timeout(STARTUP_DEADLINE) {
            Ok(line) => {
                let want = format!("registry-core listening on http://{host}");
                if line.trim() != want {
                    self.kill();
                    return Err(format!("unexpected ready line {line:?}, wanted {want:?}"));
                }
                Ok(())
            }
            Err(e) => {
                self.kill();
                Err(format!(
                    "no ready line within {STARTUP_DEADLINE:?} ({e}); stderr tail:\n{}",
                    self.stderr_tail()
                ))
            }
        }
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL the server's process group and reap it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // The group id is the child's pid (process_group(0)); ESRCH means already gone.
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill the server (if running) and start it again on the same data directory and port.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("registry-core did not restart on port {}: {e}", self.port);
        }
    }

    /// The last 4 KiB of the server's stderr (all runs).
    pub fn stderr_tail(&self) -> String {
        let Ok(mut f) = File::open(self.stderr_path()) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        s
    }

    /// Run `registry-core --data-dir D admin <args>` and return its stdout; panics on failure.
    pub fn admin(&self, args: &[&str]) -> String {
        self.admin_with_password(args, PASSWORD)
    }

    /// [`Registry::admin`] with `REGISTRY_ADMIN_PASSWORD` set to `password`.
    pub fn admin_with_password(&self, args: &[&str], password: &str) -> String {
        let mut cmd = self.base_command();
        cmd.arg("admin")
            .args(args)
            .env("REGISTRY_ADMIN_PASSWORD", password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = run_with_deadline(cmd, ADMIN_DEADLINE)
            .unwrap_or_else(|e| panic!("registry-core admin {args:?}: {e}"));
        assert!(
            out.status.success(),
            "registry-core admin {args:?} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("admin output is utf-8")
    }

    /// Create user `name` (password [`PASSWORD`]) and return a client logged in as them.
    pub fn user(&self, name: &str) -> Client {
        self.admin(&[
            "user",
            "create",
            name,
            "--email",
            &format!("{name}@example.test"),
        ]);
        self.client(name, PASSWORD)
    }

    /// Create robot `<ns>+<short>` and return `(full name, token)`.
    pub fn robot(&self, ns: &str, short: &str) -> (String, String) {
        let out = self.admin(&["robot", "create", ns, short]);
        let mut it = out.split_whitespace();
        let name = it
            .next()
            .expect("robot create prints the robot name")
            .to_owned();
        let token = it.next().expect("robot create prints the token").to_owned();
        assert_eq!(name, format!("{ns}+{short}"), "robot create output {out:?}");
        (name, token)
    }

    /// A client using Basic credentials at `/v2/auth`.
    pub fn client(&self, user: &str, password: &str) -> Client {
        Client::new(&self.url(), Some((user.to_owned(), password.to_owned())))
    }

    /// An anonymous client.
    pub fn anonymous(&self) -> Client {
        Client::new(&self.url(), None)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- registry-core stderr tail (port {}) ---\n{}",
                self.port,
                self.stderr_tail()
            );
        }
        self.kill();
    }
}

/// Run `cmd` to completion, killing it (by process group) after `deadline`.
pub fn run_with_deadline(
    mut cmd: Command,
    deadline: Duration,
) -> Result<std::process::Output, String> {
    cmd.process_group(0);
    let child = cmd.spawn().map_err(|e| format!("spawn failed: {e}"))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(r) => r.map_err(|e| format!("waiting failed: {e}")),
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            // The waiting thread reaps it once the group is dead.
            let _ = rx.recv_timeout(Duration::from_secs(5));
            Err(format!("timed out after {deadline:?} and was killed"))
        }
    }
}
