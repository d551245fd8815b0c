//! The `buildman` binary: check-config errors, serving on embedded defaults, and a registry-only
//! process when builds are disabled.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn buildman() -> Command {
    Command::new(env!("CARGO_BIN_EXE_buildman"))
}

/// Start `buildman serve` with `args`; returns the child and its stdout lines up to and including
/// the gRPC (or registry-only) line.
fn serve(args: &[&str]) -> (Child, Vec<String>) {
    let mut child = buildman()
        .args(args)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let done = line.contains("gRPC") || line.contains("registry only");
        lines.push(line);
        if done {
            break;
        }
    }
    (child, lines)
}

fn http_addr(lines: &[String]) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("buildman listening on http://"))
        .unwrap_or_else(|| panic!("no listening line in {lines:?}"))
        .to_owned()
}

async fn status(method: reqwest::Method, url: String) -> u16 {
    reqwest::Client::new()
        .request(method, url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn check_config_names_the_bad_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        "SERVER_HOSTNAME: localhost:5000\nBUILD_MANAGER:\n  - ephemeral\n  - ALLOWED_WORKERS: 2\n    EXECUTORS: [{EXECUTOR: popen}]\n",
    )
    .unwrap();
    let out = buildman()
        .arg("--config")
        .arg(&cfg)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("BUILD_MANAGER[1].ALLOWED_WORKERS"), "{err}");
    assert!(err.contains("ALLOWED_WORKER_COUNT"), "{err}");

    std::fs::write(
        &cfg,
        "SERVER_HOSTNAME: localhost:5000\nFEATURE_BUILD_SUPPORT: true\n",
    )
    .unwrap();
    let out = buildman()
        .arg("--config")
        .arg(&cfg)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}

#[tokio::test]
async fn serves_registry_api_and_grpc_on_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = serve(&["--data-dir", dir.path().to_str().unwrap()]);
    let addr = http_addr(&lines);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("buildman gRPC for agents on 127.0.0.1:")),
        "{lines:?}"
    );
    assert_eq!(
        status(reqwest::Method::GET, format!("http://{addr}/v2/")).await,
        401
    );
    // the builds API is mounted and wants credentials
    let builds = format!("http://{addr}/api/v1/repository/acme/app/build/");
    assert_eq!(status(reqwest::Method::GET, builds).await, 401);
    assert!(dir.path().join("builds.db").exists());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn with_builds_disabled_only_the_registry_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "SERVER_HOSTNAME: localhost:5000\nDATA_DIR: {}\nFEATURE_BUILD_SUPPORT: false\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let (mut child, lines) = serve(&["--config", cfg.to_str().unwrap()]);
    let addr = http_addr(&lines);
    assert!(
        lines.iter().any(|l| l.contains("registry only")),
        "{lines:?}"
    );
    assert_eq!(
        status(reqwest::Method::GET, format!("http://{addr}/v2/")).await,
        401
    );
    let builds = format!("http://{addr}/api/v1/repository/acme/app/build/");
    assert_eq!(status(reqwest::Method::GET, builds).await, 404);
    child.kill().unwrap();
    child.wait().unwrap();
}
