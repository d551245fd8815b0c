//! A running `buildman serve` on loopback for the end-to-end tests: private data directory, its
//! own HTTP and gRPC ports, the admin CLI on the same config, and a REST client.
//!
//! The process is started in its own process group and killed by group on drop (agents and their
//! podman services included), also when a test panics; its log tail is printed then.

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;

/// Password of the `admin` user every test server gets.
pub const PASSWORD: &str = "correct horse battery staple";
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probing a free port")
        .port()
}

/// `<workspace>/<rel>`.
pub fn workspace_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// The `builder-agent` binary next to the test's `buildman` binary (cargo builds both).
pub fn agent_binary() -> PathBuf {
    let buildman = PathBuf::from(env!("CARGO_BIN_EXE_buildman"));
    let agent = buildman.with_file_name("builder-agent");
    assert!(
        agent.exists(),
        "{} is missing: run `cargo build -p builder-agent` first (scripts/test.sh does)",
        agent.display()
    );
    agent
}

/// A buildman process and what the tests need to talk to it.
pub struct Quarry {
    pub root: tempfile::TempDir,
    pub http_port: u16,
    pub config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    pub token: String,
    pub http: reqwest::Client,
}

impl Quarry {
    /// Write a config from `manager_yaml` (the body of the `BUILD_MANAGER[1]` map, indented by
    /// four spaces, without EXECUTORS) and start; creates user `admin` and an access token.
    pub async fn start(manager_yaml: &str) -> Quarry {
        Quarry::start_with_agent(manager_yaml, &agent_binary()).await
    }

    /// [`Quarry::start`] with `agent` as the popen executor's binary.
    pub async fn start_with_agent(manager_yaml: &str, agent: &Path) -> Quarry {
        let executors = format!(
            "\x20   - EXECUTOR: popen\n\x20     BUILDER_BINARY_LOCATION: {}\n",
            agent.display()
        );
        Quarry::start_with_executors(manager_yaml, &executors).await
    }

    /// [`Quarry::start`] with `executors_yaml` as the `EXECUTORS` list (entries indented by four
    /// spaces, `- EXECUTOR: ...` lines first).
    pub async fn start_with_executors(manager_yaml: &str, executors_yaml: &str) -> Quarry {
        Quarry::start_configured("", manager_yaml, executors_yaml).await
    }

    /// [`Quarry::start_with_executors`] with `top_yaml` (top-level keys, one per line, each
    /// ending in a newline) added to the config, e.g. `NOTIFICATION_ALLOW_LOCAL_WEBHOOKS: true`.
    pub async fn start_configured(
        top_yaml: &str,
        manager_yaml: &str,
        executors_yaml: &str,
    ) -> Quarry {
        let root = tempfile::Builder::new()
            .prefix("quarry-e2e-")
            .tempdir()
            .expect("temp dir");
        let http_port = free_port();
        let config = root.path().join("config.yaml");
        let yaml = format!(
            "SERVER_HOSTNAME: 127.0.0.1:{http_port}\n\
             LISTEN_ADDR: 127.0.0.1:{http_port}\n\
             DATA_DIR: {data}\n\
             SUPER_USERS: [admin]\n\
             FEATURE_BUILD_SUPPORT: true\n\
             {top_yaml}\
             BUILD_MANAGER:\n\
             \x20 - ephemeral\n\
             \x20 - GRPC_LISTEN_ADDR: 127.0.0.1:0\n\
             {manager_yaml}\
             \x20   EXECUTORS:\n\
             {executors_yaml}",
            data = root.path().join("data").display(),
        );
        std::fs::write(&config, yaml).expect("writing config.yaml");
        let log = root.path().join("buildman.log");
        // reqwest's rustls comes without a crypto provider in this workspace (buildman installs
        // aws-lc-rs in its binary); a test process installs it too, once (later calls fail, fine).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut q = Quarry {
            root,
            http_port,
            config,
            child: None,
            log,
            token: String::new(),
            http: reqwest::Client::new(),
        };
        let out = q.admin(&["user", "create", "admin", "--email", "admin@example.com"]);
        assert!(out.contains("admin"), "user create said: {out}");
        q.token = q
            .admin(&["token", "create", "admin", "e2e"])
            .trim()
            .to_owned();
        q.spawn();
        q
    }

    /// Run `buildman --config <cfg> admin <args>`; returns stdout, panics with stderr on failure.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_buildman"))
            .arg("--config")
            .arg(&self.config)
            .arg("admin")
            .args(args)
            .env("REGISTRY_ADMIN_PASSWORD", PASSWORD)
            .output()
            .expect("running buildman admin");
        assert!(
            out.status.success(),
            "buildman admin {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Start (or restart) the server and wait for its HTTP listener.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_buildman"))
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("RUST_LOG", "info,buildman=debug")
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("starting buildman serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("listening on http://") => break,
                Ok(_) => continue,
                Err(_) => panic!(
                    "buildman did not print its listening line in {STARTUP_DEADLINE:?}; log:\n{}",
                    self.log_tail(60)
                ),
            }
        }
    }

    /// SIGKILL the whole process group (buildman, its agents and their podman services).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    /// SIGTERM buildman (a clean shutdown: it stops its workers) and wait up to `deadline` for
    /// it to exit; panics if it does not.
    pub fn terminate(&mut self, deadline: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        let end = Instant::now() + deadline;
        while child.try_wait().expect("waiting for buildman").is_none() {
            assert!(
                Instant::now() < end,
                "buildman did not exit within {deadline:?} of SIGTERM\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL only the buildman process (its agents survive, as after a crash).
    pub fn kill9_manager_only(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// `127.0.0.1:<port>` (the registry host).
    pub fn registry(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// An authenticated REST call; returns status and JSON (Null for an empty body).
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base()))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("REST call");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Create organisation `org` (owned by admin) if needed, and private repository `org/name`.
    pub fn create_repo(&self, org: &str, name: &str) {
        let orgs = self.root.path().join(format!("org-{org}"));
        if !orgs.exists() {
            self.admin(&["org", "create", org, "--owner", "admin"]);
            std::fs::write(&orgs, b"").expect("marker");
        }
        self.admin(&["repo", "create", &format!("{org}/{name}")]);
    }

    /// Make `repo` public (base images everyone may pull).
    pub fn make_public(&self, repo: &str) {
        self.admin(&["repo", "set-visibility", repo, "public"]);
    }

    /// Create robot `<ns>+<short>` with read access to `repo`; returns its full name.
    pub fn pull_robot(&self, ns: &str, short: &str, repo: &str) -> String {
        let out = self.admin(&["robot", "create", ns, short]);
        let name = out
            .split_whitespace()
            .next()
            .expect("robot name")
            .to_owned();
        self.admin(&[
            "permission",
            "set",
            repo,
            "--robot",
            &name,
            "--role",
            "read",
        ]);
        name
    }

    /// Push a busybox base image to `<registry>/<repo>:latest` with scripts/make-base-image.sh.
    pub fn push_base_image(&self, repo: &str) -> String {
        let image = format!("{}/{repo}:latest", self.registry());
        let out = Command::new(workspace_path("scripts/make-base-image.sh"))
            .arg(&image)
            .arg("--creds")
            .arg(format!("admin:{PASSWORD}"))
            .output()
            .expect("running scripts/make-base-image.sh");
        assert!(
            out.status.success(),
            "make-base-image.sh failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        image
    }

    /// Poll build `uuid` of `repo` until its phase is final (`expired` is `internalerror` with no
    /// retry left), at most `deadline`.
    pub async fn wait_build(&self, repo: &str, uuid: &str, deadline: Duration) -> Value {
        let end = Instant::now() + deadline;
        loop {
            let (s, v) = self
                .api(
                    reqwest::Method::GET,
                    &format!("/api/v1/repository/{repo}/build/{uuid}"),
                    None,
                )
                .await;
            assert_eq!(s, 200, "{v}");
            let phase = v["phase"].as_str().unwrap_or_default().to_owned();
            // `internalerror` is shown between attempts; `expired` once none is left (Quay).
            if matches!(
                phase.as_str(),
                "complete" | "error" | "cancelled" | "expired"
            ) {
                return v;
            }
            assert!(
                Instant::now() < end,
                "build {uuid} still {phase} after {deadline:?}; view {v}\nlog:\n{}",
                self.log_tail(80)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// POST a build of `repo` with `body`; asserts 201 and returns the build id.
    pub async fn start_build(&self, repo: &str, body: Value) -> String {
        let (s, v) = self
            .api(
                reqwest::Method::POST,
                &format!("/api/v1/repository/{repo}/build/"),
                Some(body),
            )
            .await;
        assert_eq!(s, 201, "starting a build: {v}");
        v["id"].as_str().expect("build id").to_owned()
    }

    /// Upload `bytes` through the filedrop API; returns the file id.
    pub async fn upload(&self, bytes: Vec<u8>) -> String {
        let (s, v) = self
            .api(
                reqwest::Method::POST,
                "/api/v1/filedrop/",
                Some(serde_json::json!({"mimeType": "application/gzip"})),
            )
            .await;
        assert_eq!(s, 200, "filedrop: {v}");
        let url = v["url"].as_str().expect("upload url").to_owned();
        let url = if url.starts_with("http") {
            url
        } else {
            format!("{}{url}", self.base())
        };
        let resp = self
            .http
            .put(url)
            .bearer_auth(&self.token)
            .body(bytes)
            .send()
            .await
            .expect("uploading");
        assert!(resp.status().is_success(), "upload: {}", resp.status());
        v["file_id"].as_str().expect("file id").to_owned()
    }

    /// Every log entry of build `uuid`.
    pub async fn logs(&self, repo: &str, uuid: &str) -> Vec<Value> {
        let (s, v) = self
            .api(
                reqwest::Method::GET,
                &format!("/api/v1/repository/{repo}/build/{uuid}/logs?start=0"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["logs"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Quarry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- buildman log tail ----\n{}", self.log_tail(120));
        }
        self.kill9();
    }
}

/// The `phase` entries of a build log, in order.
pub fn phases(logs: &[Value]) -> Vec<String> {
    logs.iter()
        .filter(|e| e["type"] == "phase")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Every message of a build log, one per line.
pub fn messages(logs: &[Value]) -> String {
    logs.iter()
        .map(|e| e["message"].as_str().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}
