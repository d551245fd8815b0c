//! buildman killed with SIGKILL while builds are queued and running, then restarted: every build
//! still reaches a final phase; none is lost or stuck. Also an agent killed mid-build: the attempt
//! is retried and the build completes.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::quarry::Quarry;
use common::redis::RedisServer;
use common::sources;
use reqwest::Method;
use serde_json::{Value, json};

async fn start_build(q: &Quarry, repo: &str, body: Value) -> String {
    let (s, v) = q
        .api(
            Method::POST,
            &format!("/api/v1/repository/{repo}/build/"),
            Some(body),
        )
        .await;
    assert_eq!(s, 201, "starting a build: {v}");
    v["id"].as_str().unwrap().to_owned()
}

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
    let url = serve_sleepy(8).await;
    let mut builds = Vec::new();
    for r in ["one", "two", "three"] {
        let repo = format!("acme/{r}");
        let uuid = start_build(
            &q,
            &repo,
            json!({"archive_url": url, "build_args": {"BASE": base}}),
        )
        .await;
        builds.push((repo, uuid));
    }
    // one running (ALLOWED_WORKER_COUNT 1), two queued
    wait_phase(&q, &builds[0].0, &builds[0].1, "building").await;
    q.kill9_manager_only();
    tokio::time::sleep(Duration::from_secs(1)).await;
    q.spawn();
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
        assert!(sources::agents_of(uuid).is_empty());
    }
}

#[tokio::test]
#[ignore = "heavy: podman builds through buildman and builder-agent"]
async fn an_agent_killed_mid_build_is_retried_and_completes() {
    let q = Quarry::start("    RETRY_AFTER_S: 1\n").await;
    q.create_repo("acme", "base");
    q.create_repo("acme", "app");
    let base = q.push_base_image("acme/base");
    q.make_public("acme/base");
    let url = serve_sleepy(6).await;
    let uuid = start_build(
        &q,
        "acme/app",
        json!({"archive_url": url, "build_args": {"BASE": base}}),
    )
    .await;
    wait_phase(&q, "acme/app", &uuid, "building").await;
    let agents = sources::agents_of(&uuid);
    assert!(!agents.is_empty(), "no agent process found for {uuid}");
    for pid in agents {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
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
}
