//! End to end: `buildman serve` on loopback with real Redis, the popen executor, real
//! builder-agent processes and real podman; builds from a git repository at a commit, an uploaded
//! `.tar.gz` and an `archive_url`; images pulled back with skopeo and their files checked.
//!
//! Heavy (podman builds take tens of seconds each): `scripts/test.sh` runs them in its heavy tier.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

mod common;

use std::time::Duration;

use common::quarry::{Quarry, messages, phases, workspace_path};
use common::redis::RedisServer;
use common::sources;
use reqwest::Method;
use serde_json::json;

const BUILD_DEADLINE: Duration = Duration::from_secs(300);

async fn assert_built(q: &Quarry, repo: &str, uuid: &str, tag: &str, expect: &[(&str, &str)]) {
    let view = q.wait_build(repo, uuid, BUILD_DEADLINE).await;
    let logs = q.logs(repo, uuid).await;
    assert_eq!(
        view["phase"],
        "complete",
        "build {uuid}: {view}\n{}",
        messages(&logs)
    );
    let digests = view["manifest_digests"].as_array().unwrap();
    assert!(
        digests[0].as_str().unwrap().starts_with("sha256:"),
        "{view}"
    );
    let seen = phases(&logs);
    let order = [
        "build-scheduled",
        "unpacking",
        "pulling",
        "building",
        "pushing",
        "complete",
    ];
    let mut at = 0;
    for p in &seen {
        if order.get(at) == Some(&p.as_str()) {
            at += 1;
        }
    }
    assert_eq!(at, order.len(), "phases out of order or missing: {seen:?}");
    let text = messages(&logs);
    assert!(
        text.contains("from a quarry RUN step"),
        "RUN output missing:\n{text}"
    );
    assert!(
        logs.iter().any(|e| e["type"] == "command"),
        "no command entries:\n{text}"
    );
    let image = format!("{}/{repo}:{tag}", q.registry());
    for (path, want) in expect {
        let got = sources::file_in_image(&image, path, q.root.path());
        assert_eq!(got.as_deref(), Some(*want), "{path} in {image}");
    }
}

#[tokio::test]
#[ignore = "heavy: podman builds through buildman, builder-agent and redis"]
async fn builds_from_git_upload_and_archive_url() {
    let redis = RedisServer::start();
    let q = Quarry::start(&format!(
        "    ALLOWED_WORKER_COUNT: 2\n    ALLOW_LOCAL_GIT_SOURCES: true\n    ORCHESTRATOR_PREFIX: e2e/\n    ORCHESTRATOR:\n      REDIS_HOST: 127.0.0.1\n      REDIS_PORT: {}\n",
        redis.port()
    ))
    .await;
    q.create_repo("acme", "base");
    q.create_repo("acme", "app");
    // A private base image, pulled with a robot's credentials (handed to the agent as a
    // read-only token scoped to the build).
    let base = q.push_base_image("acme/base");
    let robot = q.pull_robot("acme", "puller", "acme/base");

    // 1. git, at the FIRST commit, with a build argument
    let (git_dir, first, _second) = sources::sample_git_repo(q.root.path());
    let git_build = q.start_build(
        "acme/app",
        json!({"git": {"url": git_dir.display().to_string(), "sha": first},
               "docker_tags": ["git"], "pull_robot": robot, "build_args": {"BASE": base, "GREETING": "git"}}),
    )
    .await;
    // 2. an uploaded .tar.gz of the sample
    let file_id = q
        .upload(sources::tar_gz_dir(&workspace_path(
            "fixtures/builds/sample",
        )))
        .await;
    let upload_build = q
        .start_build(
            "acme/app",
            json!({"file_id": file_id, "docker_tags": ["upload"], "pull_robot": robot,
               "build_args": {"BASE": base}}),
        )
        .await;
    // 3. an archive_url on loopback, served with a misleading content type
    let tarball = sources::tar_gz_dir(&workspace_path("fixtures/builds/sample"));
    let served = sources::serve_files(vec![("/sample.tgz".into(), "text/plain", tarball)]).await;
    let archive_build = q.start_build(
        "acme/app",
        json!({"archive_url": format!("{served}/sample.tgz"), "docker_tags": ["archive", "latest"],
               "pull_robot": robot,
               "build_args": {"BASE": base, "GREETING": "archive"}}),
    )
    .await;

    assert_built(
        &q,
        "acme/app",
        &git_build,
        "git",
        &[
            ("built.txt", "git from a quarry RUN step\n"),
            ("message.txt", "first\n"),
        ],
    )
    .await;
    assert_built(
        &q,
        "acme/app",
        &upload_build,
        "upload",
        &[
            ("built.txt", "hello from a quarry RUN step\n"),
            ("message.txt", "this file came from the build context\n"),
        ],
    )
    .await;
    assert_built(
        &q,
        "acme/app",
        &archive_build,
        "latest",
        &[("built.txt", "archive from a quarry RUN step\n")],
    )
    .await;

    // All three builds are listed, and no process of any of them outlived it.
    let (s, list) = q
        .api(
            Method::GET,
            "/api/v1/repository/acme/app/build/?limit=10",
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(list["builds"].as_array().unwrap().len(), 3, "{list}");
    // The agent exits just after reporting COMPLETE; its cleanup is asynchronous, so wait (20 s
    // at most) for every process of each build to be gone.
    for uuid in [&git_build, &upload_build, &archive_build] {
        sources::nothing_left(uuid).await;
    }
}
