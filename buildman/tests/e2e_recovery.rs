//! buildman killed with SIGKILL while builds are queued and running, then restarted: every build
//! still reaches a final phase; none is lost or stuck. Also an agent killed mid-build: the attempt
//! is retried and the build completes. Either way no process of any build (agent, podman service,
//! RUN step) is left afterwards, nor the podman run root an agent kept in `/tmp`.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::quarry::Quarry;
use common::redis::RedisServer;
use common::sources;
use reqwest::Method;
use serde_json::{Value, json};

async fn phase(q: &Quarry, repo: &str, uuid: &str) -> String {
    let (_, v) = q
        .api(
            Method::GET,
            &format!("/api/v1/repository/{repo}/build/{uuid}"),
            None,
        )
        .await;
    v["phase"].as_str().unwrap_or_default().to_owned()
}

async fn wait_phase(q: &Quarry, repo: &str, uuid: &str, want: &str) {
    let end = Instant::now() + Duration::from_secs(240);
    while phase(q, repo, uuid).await != want {
        assert!(
            Instant::now() < end,
            "build {uuid} never reached {want}\n{}",
            q.log_tail(60)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `/tmp/quarry-run-*` directory holding the podman run root of attempt `attempt` of build
/// `uuid`, from the record the agent keeps in its work directory.
fn scratch_dir(q: &Quarry, uuid: &str, attempt: u32) -> PathBuf {
    let record = q
        .root
        .path()
        .join(format!("data/builds/{uuid}-{attempt}/podman.json"));
    let text = std::fs::read(&record).unwrap_or_else(|e| panic!("reading {record:?}: {e}"));
    let v: Value = serde_json::from_slice(&text).unwrap();
    let runroot = PathBuf::from(v["runroot"].as_str().unwrap());
    let dir = runroot.parent().unwrap().to_path_buf();
    assert!(
        dir.parent() == Some(std::path::Path::new("/tmp"))
            && dir
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("quarry-run-"),
        "run root outside /tmp/quarry-run-*: {runroot:?}"
    );
    assert!(dir.is_dir(), "{dir:?} missing while the build runs");
    dir
}

/// Print what buildman said about stopping leftover processes (how long it took).
fn print_cleanup_lines(q: &Quarry) {
    for line in q.log_tail(2000).lines() {
        if line.contains("stopped the processes left") || line.contains("stopped a build left") {
            eprintln!("{line}");
        }
    }
}

/// Wait until the RUN step of build `uuid` runs.
async fn wait_run_step(q: &Quarry, uuid: &str) {
    let end = Instant::now() + Duration::from_secs(120);
    while !sources::processes_of(uuid).iter().any(|(pid, _)| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("echo start"))
    }) {
        assert!(
            Instant::now() < end,
            "the RUN step never started\n{}",
            q.log_tail(60)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn serve_sleepy(seconds: u32) -> String {
    let dockerfile = format!(
        "ARG BASE\nFROM ${{BASE}}\nRUN echo start && sleep {seconds} && echo done > /done.txt\n"
    );
    let served = sources::serve_files(vec![(
        "/Dockerfile".into(),
        "text/plain",
        dockerfile.into_bytes(),
    )])
    .await;
    format!("{served}/Dockerfile")
}

#[tokio::test]
#[ignore = "heavy: podman builds through buildman and builder-agent"]
async fn sigkill_of_buildman_loses_no_build() {
    let redis = RedisServer::start();
    let mut q = Quarry::start(&format!(
        "    ALLOWED_WORKER_COUNT: 1\n    RETRY_AFTER_S: 1\n    ORCHESTRATOR:\n      REDIS_HOST: 127.0.0.1\n      REDIS_PORT: {}\n",
        redis.port()
    ))
    .await;
    q.create_repo("acme", "base");
    for r in ["one", "two", "three"] {
        q.create_repo("acme", r);
    }
    let base = q.push_base_image("acme/base");
    q.make_public("acme/base");
    let url = serve_sleepy(12).await;
    let mut builds = Vec::new();
    for r in ["one", "two", "three"] {
        let repo = format!("acme/{r}");
        let uuid = q
            .start_build(
                &repo,
                json!({"archive_url": url, "build_args": {"BASE": base}}),
            )
            .await;
        builds.push((repo, uuid));
    }
    // one running (ALLOWED_WORKER_COUNT 1), two queued
    wait_phase(&q, &builds[0].0, &builds[0].1, "building").await;
    let scratch = scratch_dir(&q, &builds[0].1, 1);
    wait_run_step(&q, &builds[0].1).await;
    q.kill9_manager_only();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted_at = Instant::now();
    q.spawn();
    // The restarted buildman stopped the orphaned attempt (agent, podman service, RUN step)
    // before it listened, long before the step would end.
    sources::nothing_left_within(&format!("{}-1", builds[0].1), Duration::from_secs(3)).await;
    eprintln!(
        "the orphaned attempt was gone {:?} after the restart began",
        restarted_at.elapsed()
    );
    for (repo, uuid) in &builds {
        let view = q.wait_build(repo, uuid, Duration::from_secs(400)).await;
        assert_eq!(
            view["phase"],
            "complete",
            "{repo} {uuid}: {view}\n{}",
            q.log_tail(80)
        );
    }
    for (_, uuid) in &builds {
        sources::nothing_left(uuid).await;
    }
    assert!(
        !scratch.exists(),
        "the killed build's run root {scratch:?} was left"
    );
    print_cleanup_lines(&q);
}

#[tokio::test]
#[ignore = "heavy: podman builds through buildman and builder-agent"]
async fn an_agent_killed_mid_build_is_retried_and_completes() {
    let q = Quarry::start("    RETRY_AFTER_S: 1\n").await;
    q.create_repo("acme", "base");
    q.create_repo("acme", "app");
    let base = q.push_base_image("acme/base");
    q.make_public("acme/base");
    let url = serve_sleepy(15).await;
    let uuid = q
        .start_build(
            "acme/app",
            json!({"archive_url": url, "build_args": {"BASE": base}}),
        )
        .await;
    wait_phase(&q, "acme/app", &uuid, "building").await;
    let scratch = scratch_dir(&q, &uuid, 1);
    // Kill the agent while the RUN step runs: runc puts it in a session and mount namespace of
    // its own, under the agent's podman service, which is in a group of its own.
    wait_run_step(&q, &uuid).await;
    let agents = sources::agents_of(&uuid);
    assert!(!agents.is_empty(), "no agent process found for {uuid}");
    for pid in agents {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // The first attempt's service and RUN step go with its agent, long before the step ends.
    let killed_at = Instant::now();
    sources::nothing_left_within(&format!("{uuid}-1"), Duration::from_secs(5)).await;
    eprintln!(
        "attempt 1 left no process {:?} after its agent was killed",
        killed_at.elapsed()
    );
    let view = q
        .wait_build("acme/app", &uuid, Duration::from_secs(400))
        .await;
    assert_eq!(view["phase"], "complete", "{view}\n{}", q.log_tail(80));
    assert_eq!(view["attempts"], 2, "{view}");
    let logs = q.logs("acme/app", &uuid).await;
    let text = logs
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.matches("building").count() >= 2,
        "the log should show both attempts:\n{text}"
    );
    sources::nothing_left(&uuid).await;
    assert!(
        !scratch.exists(),
        "the killed agent's run root {scratch:?} was left"
    );
    print_cleanup_lines(&q);
}
