//! End to end failure paths: each ends in the right phase with a useful message, is not retried
//! when the user's input is at fault, and leaves no agent or podman service behind.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::quarry::{Quarry, workspace_path};
use common::sources;
use reqwest::Method;
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(240);

async fn finished(q: &Quarry, uuid: &str) -> (Value, String) {
    let view = q.wait_build("acme/app", uuid, DEADLINE).await;
    let logs = q.logs("acme/app", uuid).await;
    let text = logs
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    (view, text)
}

async fn user_error(q: &Quarry, uuid: &str, needle: &str) {
    let (view, text) = finished(q, uuid).await;
    assert_eq!(view["phase"], "error", "{view}\n{text}");
    let error = view["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(needle) || text.contains(needle),
        "error {error:?} / log should mention {needle:?}:\n{text}"
    );
    assert_eq!(
        view["attempts"], 1,
        "a user error must not be retried: {view}"
    );
    sources::nothing_left(uuid).await;
}

#[tokio::test]
#[ignore = "heavy: podman builds through buildman and builder-agent"]
async fn user_errors_end_as_error_without_retry_and_cancel_stops_a_running_build() {
    // in-process orchestrator; small archive cap for the oversized case
    let q = Quarry::start("    ALLOWED_WORKER_COUNT: 2\n    MAX_ARCHIVE_SIZE: 1M\n").await;
    q.create_repo("acme", "base");
    q.create_repo("acme", "app");
    let base = q.push_base_image("acme/base");
    q.make_public("acme/base");
    let args = json!({"BASE": base});

    let bomb = {
        // 4 MiB of zeros compress to a few KiB, expanding past the 1 MiB cap
        let zeros = vec![0u8; 4 << 20];
        sources::tar_gz_files(&[("Dockerfile", b"FROM scratch\n"), ("big.bin", &zeros)])
    };
    let mut traversal_gz = Vec::new();
    {
        use std::io::Write as _;
        let mut enc = flate2::write::GzEncoder::new(&mut traversal_gz, flate2::Compression::fast());
        enc.write_all(&sources::tar_with_traversal()).unwrap();
        enc.finish().unwrap();
    }
    let dir = |name: &str| sources::tar_gz_dir(&workspace_path(&format!("fixtures/builds/{name}")));
    let served = sources::serve_files(vec![
        (
            "/bad-syntax.tgz".into(),
            "application/gzip",
            dir("bad-syntax"),
        ),
        (
            "/failing-run.tgz".into(),
            "application/gzip",
            dir("failing-run"),
        ),
        (
            "/traversal.tgz".into(),
            "application/octet-stream",
            traversal_gz,
        ),
        (
            "/symlink.tar".into(),
            "application/x-tar",
            sources::tar_with_symlink_escape(),
        ),
        ("/bomb.tgz".into(), "application/gzip", bomb),
        (
            "/sleepy".into(),
            "text/plain",
            b"ARG BASE\nFROM ${BASE}\nRUN echo sleeping && sleep 120\n".to_vec(),
        ),
    ])
    .await;
    let url = |p: &str| json!(format!("{served}{p}"));

    let syntax = q
        .start_build(
            "acme/app",
            json!({"archive_url": url("/bad-syntax.tgz"), "build_args": args}),
        )
        .await;
    user_error(&q, &syntax, "RUNN").await;
    let failing = q
        .start_build(
            "acme/app",
            json!({"archive_url": url("/failing-run.tgz"), "build_args": args}),
        )
        .await;
    user_error(&q, &failing, "42").await;
    let git = q
        .start_build(
            "acme/app",
            json!({"git": {"url": "http://127.0.0.1:9/nothing-listens-here.git",
                       "sha": "0123456789abcdef0123456789abcdef01234567"}}),
        )
        .await;
    user_error(&q, &git, "127.0.0.1:9").await;
    let traversal = q
        .start_build("acme/app", json!({"archive_url": url("/traversal.tgz")}))
        .await;
    user_error(&q, &traversal, "..").await;
    assert!(!q.root.path().join("escaped.txt").exists());
    let symlink = q
        .start_build("acme/app", json!({"archive_url": url("/symlink.tar")}))
        .await;
    user_error(&q, &symlink, "out").await;
    assert!(
        !std::path::Path::new("/tmp/quarry-escape-marker").exists(),
        "symlink escape wrote outside"
    );
    let bomb = q
        .start_build("acme/app", json!({"archive_url": url("/bomb.tgz")}))
        .await;
    user_error(&q, &bomb, "larger than the limit").await;

    // Cancel during `building`: the phase is cancelled at once and the worker is gone within
    // seconds (the RUN step would sleep for two minutes).
    let sleepy = q
        .start_build(
            "acme/app",
            json!({"archive_url": url("/sleepy"), "build_args": args}),
        )
        .await;
    let end = Instant::now() + DEADLINE;
    loop {
        let (_, v) = q
            .api(
                Method::GET,
                &format!("/api/v1/repository/acme/app/build/{sleepy}"),
                None,
            )
            .await;
        if v["phase"] == "building" {
            break;
        }
        assert!(
            Instant::now() < end && v["phase"] != "error",
            "never reached building: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cancelled_at = Instant::now();
    let (s, v) = q
        .api(
            Method::DELETE,
            &format!("/api/v1/repository/acme/app/build/{sleepy}"),
            None,
        )
        .await;
    assert_eq!(s, 201, "cancel: {v}");
    let (view, _) = finished(&q, &sleepy).await;
    assert_eq!(view["phase"], "cancelled", "{view}");
    sources::nothing_left(&sleepy).await;
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(15),
        "cancel took {:?}",
        cancelled_at.elapsed()
    );
}

#[tokio::test]
#[ignore = "heavy: builder-agent processes and podman"]
async fn an_agent_that_never_registers_expires_after_the_registration_window() {
    // A stand-in agent that never dials buildman.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("silent-agent");
    std::fs::write(&fake, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let q = Quarry::start_with_agent(
        "    JOB_REGISTRATION_TIMEOUT: 2\n    RETRY_AFTER_S: 1\n",
        &fake,
    )
    .await;
    q.create_repo("acme", "app");
    let started = Instant::now();
    let uuid = q
        .start_build("acme/app", json!({"archive_url": "http://127.0.0.1:9/x"}))
        .await;
    let (view, text) = finished(&q, &uuid).await;
    assert_eq!(view["phase"], "expired", "{view}\n{text}");
    assert_eq!(view["attempts"], 3, "{view}");
    let error = view["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("register"),
        "the reason should say the agent never registered: {error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
    sources::nothing_left(&uuid).await;
}
