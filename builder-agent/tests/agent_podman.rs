//! The real `builder-agent` binary with a private podman service, against a mock buildman and a
//! real registry-core (both in this process, on 127.0.0.1): a Dockerfile with a `RUN` step is
//! built and pushed, the reported digest is served by the registry and its top layer holds the
//! file the `RUN` wrote; a failing `RUN` ends as ERROR with podman's text, not retryable.
//!
//! Heavy (podman builds take seconds to minutes), so `#[ignore]`d; scripts/test.sh runs it in its
//! heavy tier. It fails, never skips, when podman, buildah, runc or busybox-static is missing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    unreachable_pub,
    missing_debug_implementations
)]

mod agent_mock;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_mock::{MockConfig, MockServer};
use buildman_proto::{BaseImage, BuildPack, BuildPackSource, Phase};
use registry_core::accounts::{secrets, tokens, users};

const PASSWORD: &str = "correct horse battery staple";
/// A podman build of a busybox image takes a few seconds here; allow for a loaded CI machine.
const AGENT_DEADLINE: Duration = Duration::from_secs(300);

fn require(tools: &[&str]) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in tools {
        assert!(
            std::env::split_paths(&path).any(|d| d.join(tool).is_file()),
            "{tool} is not on PATH: this test needs podman, buildah and runc (Debian packages \
             podman, buildah, runc) and busybox-static"
        );
    }
    assert!(
        Path::new("/bin/busybox").is_file(),
        "/bin/busybox is missing: install busybox-static"
    );
}

struct Registry {
    host: String,
    token: String,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// registry-core in this process with user `alice` (password [`PASSWORD`]) and an access token.
async fn start_registry() -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let config = registry_core::config::Config {
        server_hostname: host.clone(),
        data_dir: dir.path().join("registry"),
        ..registry_core::config::Config::default()
    };
    let state = registry_core::state::AppState::open(config).unwrap();
    let hash = secrets::hash_password(PASSWORD).unwrap();
    let token = state
        .db
        .write(move |tx| {
            let alice = users::create(tx, "alice", Some("alice@example.test"), Some(&hash))?;
            tokens::create(tx, &alice, "builds")
        })
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(registry_core::serve(state, listener, async {
        let _ = stopped.await;
    }));
    Registry {
        host,
        token,
        _dir: dir,
        _stop: stop,
    }
}

fn make_base_image(reference: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-base-image.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(reference)
        .arg("--creds")
        .arg(format!("alice:{PASSWORD}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make-base-image.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn mock_for(reg: &Registry, dockerfile: &str, repo: &str, cached_tag: &str) -> MockServer {
    let files =
        agent_mock::serve_files(vec![("/Dockerfile", dockerfile.as_bytes().to_vec())]).await;
    agent_mock::start(MockConfig {
        pack: BuildPack {
            build_pack: Some(BuildPackSource::PackageUrl(format!("{files}/Dockerfile"))),
            registry: reg.host.clone(),
            repository: repo.into(),
            tag_names: vec!["latest".into(), "v1".into()],
            push_token: reg.token.clone(),
            pull_token: reg.token.clone(),
            base_image: Some(BaseImage {
                username: "alice".into(),
                password: PASSWORD.into(),
            }),
            ..BuildPack::default()
        },
        cached_tag: cached_tag.into(),
        ..MockConfig::default()
    })
    .await
}

/// Run the agent binary for `mock`; returns its exit code and stderr. With `terminate_when`, the
/// agent gets SIGTERM once that holds.
async fn run_agent(
    mock: &MockServer,
    reg: &Registry,
    work: &Path,
    terminate_when: Option<&dyn Fn() -> bool>,
) -> (Option<i32>, String) {
    let stderr_path = work.with_extension("stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let _reaper = Reaper(work.to_string_lossy().into_owned());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_builder-agent"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SERVER", mock.server())
        .env("TOKEN", "registration-jwt")
        .env("CONTAINER_RUNTIME", "podman")
        .env("INSECURE", "true")
        .env("QUARRY_WORK_DIR", work)
        .env("REGISTRY_HOSTNAME", &reg.host)
        .env("DEBUG", "true")
        .stdin(std::process::Stdio::null())
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    if let Some(condition) = terminate_when {
        agent_mock::wait_until(AGENT_DEADLINE, "the moment to send SIGTERM", condition).await;
        let pid = i32::try_from(child.id().unwrap()).unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM).unwrap();
    }
    let status = tokio::time::timeout(AGENT_DEADLINE, child.wait()).await;
    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let status =
        status.unwrap_or_else(|_| panic!("the agent did not finish in {AGENT_DEADLINE:?}:\n{log}"));
    (status.unwrap().code(), log)
}

/// Kills whatever still mentions the work directory when dropped (a failed test must not leave
/// a podman service behind; a passing one has nothing left to kill).
struct Reaper(String);

impl Drop for Reaper {
    fn drop(&mut self) {
        for (pid, _) in processes_mentioning(&self.0) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
    }
}

/// `(pid, command line)` of processes whose command line or environment mentions `needle` (a
/// leftover podman service or RUN process, for instance); the test process itself excluded.
fn processes_mentioning(needle: impl AsRef<std::ffi::OsStr>) -> Vec<(i32, String)> {
    let needle = needle.as_ref().to_string_lossy().into_owned();
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let read = |f: &str| std::fs::read(entry.path().join(f)).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&read("cmdline")).replace('\0', " ");
        let environ = String::from_utf8_lossy(&read("environ")).into_owned();
        if cmdline.contains(&needle) || environ.contains(&needle) {
            found.push((i32::try_from(pid).unwrap(), cmdline));
        }
    }
    found
}

/// GET `path` from the registry as alice through the token flow.
async fn registry_get(reg: &Registry, repo: &str, path: &str) -> reqwest::Response {
    let client = reqwest::Client::new();
    let auth: serde_json::Value = client
        .get(format!(
            "http://{}/v2/auth?service={}&scope=repository:{repo}:pull",
            reg.host, reg.host
        ))
        .basic_auth("alice", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = auth["token"].as_str().expect("a registry token").to_owned();
    client
        .get(format!("http://{}/v2/{repo}/{path}", reg.host))
        .bearer_auth(token)
        .header(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap()
}

/// The content of `file` in the image's top layer (gzip or plain tar).
async fn file_in_top_layer(reg: &Registry, repo: &str, digest: &str, file: &str) -> Option<String> {
    let manifest: serde_json::Value = registry_get(reg, repo, &format!("manifests/{digest}"))
        .await
        .json()
        .await
        .unwrap();
    let layer = manifest["layers"].as_array()?.last()?["digest"]
        .as_str()?
        .to_owned();
    let blob = registry_get(reg, repo, &format!("blobs/{layer}"))
        .await
        .bytes()
        .await
        .unwrap();
    let mut raw = Vec::new();
    if blob.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(blob.as_ref())
            .read_to_end(&mut raw)
            .unwrap();
    } else {
        raw = blob.to_vec();
    }
    let mut archive = tar::Archive::new(raw.as_slice());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            == file
        {
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            return Some(text);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: podman"]
async fn podman_builds_pushes_and_reports_digests_and_run_failures() {
    require(&["podman", "buildah", "runc"]);
    let reg = start_registry().await;
    let base = format!("{}/alice/base:latest", reg.host);
    tokio::task::spawn_blocking({
        let base = base.clone();
        move || make_base_image(&base)
    })
    .await
    .unwrap();
    let scratch = tempfile::tempdir().unwrap();

    // A RUN step writes a file; the image is pushed under both tags.
    let mock = mock_for(
        &reg,
        &format!("FROM {base}\nRUN echo hello > /hello.txt\n"),
        "alice/built",
        "",
    )
    .await;
    let work: PathBuf = scratch.path().join("ok");
    let (code, log) = run_agent(&mock, &reg, &work, None).await;
    assert_eq!(code, Some(0), "agent log:\n{log}");
    assert_eq!(
        mock.phase_list(),
        [
            Phase::Unpacking,
            Phase::Pulling,
            Phase::Building,
            Phase::Pushing,
            Phase::Complete
        ],
        "agent log:\n{log}"
    );
    let digests = mock.phases().pop().unwrap().manifest_digests;
    assert_eq!(digests.len(), 2, "{digests:?}");
    assert_eq!(digests[0], digests[1], "both tags name one image");
    let served = registry_get(&reg, "alice/built", &format!("manifests/{}", digests[0])).await;
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.headers()["docker-content-digest"].to_str().unwrap(),
        digests[0]
    );
    let by_tag = registry_get(&reg, "alice/built", "manifests/v1").await;
    assert_eq!(
        by_tag.headers()["docker-content-digest"].to_str().unwrap(),
        digests[0]
    );
    assert_eq!(
        file_in_top_layer(&reg, "alice/built", &digests[0], "hello.txt")
            .await
            .as_deref(),
        Some("hello\n")
    );
    let texts = mock.log_texts();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("RUN echo hello > /hello.txt")),
        "{texts:#?}"
    );
    assert!(
        processes_mentioning(&work).is_empty(),
        "left running: {:?}",
        processes_mentioning(&work)
    );

    // A rebuild primes the cache from the tag buildman names (pulled with the pull token).
    let dockerfile = format!("FROM {base}\nRUN echo again > /hello.txt\n");
    let mock = mock_for(&reg, &dockerfile, "alice/built", "latest").await;
    let (code, log) = run_agent(&mock, &reg, &scratch.path().join("cached"), None).await;
    assert_eq!(code, Some(0), "agent log:\n{log}");
    assert_eq!(
        mock.phase_list().last(),
        Some(&Phase::Complete),
        "agent log:\n{log}"
    );
    let texts = mock.log_texts();
    assert!(
        texts.iter().any(|t| t.contains("priming the cache from")),
        "{texts:#?}"
    );
    assert!(
        !texts
            .iter()
            .any(|t| t.contains("could not pull the cached image")),
        "{texts:#?}"
    );
    let rebuilt = mock.phases().pop().unwrap().manifest_digests;
    assert_eq!(
        file_in_top_layer(&reg, "alice/built", &rebuilt[0], "hello.txt")
            .await
            .as_deref(),
        Some("again\n")
    );

    // A failing RUN: ERROR with podman's own text, not retryable; the agent exits 0.
    let mock = mock_for(
        &reg,
        &format!("FROM {base}\nRUN echo about to fail && exit 3\n"),
        "alice/broken",
        "",
    )
    .await;
    let work = scratch.path().join("fail");
    let (code, log) = run_agent(&mock, &reg, &work, None).await;
    assert_eq!(code, Some(0), "agent log:\n{log}");
    assert_eq!(
        mock.phase_list(),
        [
            Phase::Unpacking,
            Phase::Pulling,
            Phase::Building,
            Phase::Error
        ]
    );
    let error = mock.phases().pop().unwrap();
    assert!(!error.retryable);
    assert!(
        error.error_message.contains("exit status 3"),
        "error message {:?}",
        error.error_message
    );
    let texts = mock.log_texts();
    assert!(
        texts.iter().any(|t| t.contains("about to fail")),
        "the RUN's output: {texts:#?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("{\"error\"") && t.contains("exit status 3")),
        "{texts:#?}"
    );
    assert!(
        processes_mentioning(&work).is_empty(),
        "left running: {:?}",
        processes_mentioning(&work)
    );

    // SIGTERM during a long RUN: the agent stops the build, tears its podman service down and
    // exits 143 without reporting a phase (buildman stopped it, or will see it gone).
    let mock = mock_for(
        &reg,
        &format!("FROM {base}\nRUN echo sleeping && sleep 613\n"),
        "alice/slow",
        "",
    )
    .await;
    let work = scratch.path().join("term");
    let sleeping = || mock.log_texts().iter().any(|t| t.contains("sleeping\\n"));
    // The RUN process runs in a session of its own and mentions no path of ours.
    let _reaper = Reaper("sleep 613".into());
    let started = std::time::Instant::now();
    let (code, log) = run_agent(&mock, &reg, &work, Some(&sleeping)).await;
    assert_eq!(code, Some(143), "agent log:\n{log}");
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        mock.phase_list(),
        [Phase::Unpacking, Phase::Pulling, Phase::Building]
    );
    assert!(
        processes_mentioning(&work).is_empty(),
        "left running: {:?}",
        processes_mentioning(&work)
    );
    assert!(
        processes_mentioning("sleep 613").is_empty(),
        "the RUN step outlived the agent: {:?}",
        processes_mentioning("sleep 613")
    );
}
