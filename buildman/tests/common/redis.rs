//! A throwaway `redis-server` on a free loopback port, killed when dropped.
//!
//! Self-contained (std and tempfile only) so that any test binary can use it. Persistence is off
//! (`--save "" --appendonly no`) and the working directory is a fresh temp dir holding the log.
//! A missing `redis-server` is a clear failure, never a skip: `scripts/install-deps.sh` installs it.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server gets to answer its first PING.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// Attempts, each with a new port, when another process grabbed the free port first.
const ATTEMPTS: usize = 5;

/// Certificate files for [`RedisServer::start_tls`]: the server's certificate and key, and the
/// CA its clients' certificates must chain to.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A running `redis-server`; dropping it kills the process.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A plain server with default settings. Panics, naming the cause, when it cannot start.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A plain server with extra `redis-server` arguments, e.g. `["--requirepass", "pw"]`.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::try_start(extra, None).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A TLS-only server (`--port 0 --tls-port N`); [`Self::port`] is the TLS port.
    pub fn start_tls(tls: &TlsFiles, extra: &[&str]) -> Self {
        Self::try_start(extra, Some(tls)).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The fallible form of the constructors above.
    pub fn try_start(extra: &[&str], tls: Option<&TlsFiles>) -> anyhow::Result<Self> {
        let mut last_log = String::new();
        for _ in 0..ATTEMPTS {
            let dir = tempfile::tempdir()?;
            let port = free_port()?;
            let child = spawn(dir.path(), port, extra, tls)?;
            let mut server = Self { child, port, dir };
            match server.wait_ready(tls.is_some()) {
                Ok(()) => return Ok(server),
                Err(log) if log.contains("Address already in use") => last_log = log,
                Err(log) => anyhow::bail!("redis-server on port {port} did not start:\n{log}"),
            }
        }
        anyhow::bail!("redis-server found no free port in {ATTEMPTS} attempts:\n{last_log}")
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host(), self.port)
    }

    /// `redis://127.0.0.1:<port>` (plain servers).
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    /// The server's log so far, for assertion messages.
    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name));
        let mut log = read("redis.out").unwrap_or_default();
        log.push_str(&read("redis.log").unwrap_or_default());
        log
    }

    /// Wait until the server answers PING (plain) or logs that it is ready (TLS). On failure
    /// returns the log.
    fn wait_ready(&mut self, tls: bool) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < READY_DEADLINE {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}\n{}", self.log()));
            }
            let ready = if tls {
                self.log().contains("Ready to accept connections") && self.connectable()
            } else {
                self.answers_ping()
            };
            if ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "no answer within {READY_DEADLINE:?}\n{}",
            self.log()
        ))
    }

    fn connectable(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    }

    /// Any RESP reply counts (`+PONG`, or `-NOAUTH` with `--requirepass`).
    fn answers_ping(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0u8; 1];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && matches!(reply[0], b'+' | b'-')
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, port: u16, extra: &[&str], tls: Option<&TlsFiles>) -> anyhow::Result<Child> {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no", "--loglevel", "notice"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"));
    match tls {
        None => {
            cmd.arg("--port").arg(port.to_string());
        }
        Some(tls) => {
            cmd.args(["--port", "0", "--tls-port"])
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca);
        }
    }
    // Errors before the log file is open (bad arguments) go to stdout.
    let out = std::fs::File::create(dir.join("redis.out"))?;
    cmd.args(extra)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    cmd.spawn().map_err(|e| {
        anyhow::anyhow!(
            "cannot run redis-server ({e}): install it with scripts/install-deps.sh \
             (Debian package redis-server)"
        )
    })
}

/// A port nothing listens on right now (another process may still take it: callers retry).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}
