//! Component tests of the builds REST API, uploads and the buildpack download:
//! `buildman::api::routes(state).oneshot(req)` over temp-dir databases, no sockets.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module)]

#[path = "api_builds/support.rs"]
mod support;
#[path = "api_builds/uploads.rs"]
mod uploads;

use axum::body::Body;
use buildman::control::CancelOutcome;
use buildman::model::Phase;
use http::{Request, StatusCode};
use serde_json::{Value, json};
use support::Fixture;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn build_path(uuid: &str) -> String {
    format!("/api/v1/repository/acme/app/build/{uuid}")
}

#[tokio::test]
async fn create_from_archive_url_queues_and_wakes() {
    let f = Fixture::new().await;
    let r = f
        .start(
            "carol",
            json!({"archive_url": "https://example.test/src.tgz", "docker_tags": ["v1", "latest"],
                   "dockerfile_path": "sub/Dockerfile", "build_args": {"VERSION": "1.2"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    let uuid = r.json["id"].as_str().unwrap().to_owned();
    let location = r.headers[http::header::LOCATION].to_str().unwrap();
    assert_eq!(location, format!("{}/status", build_path(&uuid)));
    assert_eq!(r.json["phase"], "waiting");
    assert_eq!(r.json["tags"], json!(["v1", "latest"]));
    assert_eq!(r.json["dockerfile_path"], "/sub/Dockerfile");
    assert_eq!(r.json["context"], "/sub");
    assert_eq!(r.json["manual_user"], "carol");
    assert_eq!(r.json["archive_url"], "https://example.test/src.tgz");
    assert_eq!(r.json["build_args"], json!({"VERSION": "1.2"}));
    assert_eq!(r.json["display_name"].as_str().unwrap().len(), 7);
    assert!(r.json["started"].as_str().unwrap().ends_with(" -0000"));
    assert_eq!(f.wakes(), 1);

    // The build and its queue item were stored together.
    let id = uuid.clone();
    let (build, retries) = f
        .state
        .builds
        .read(move |c| {
            Ok::<_, buildman::db::BuildDbError>((
                buildman::model::get(c, &id)?.unwrap(),
                buildman::queue::retries_remaining(c, &id)?,
            ))
        })
        .await
        .unwrap();
    assert_eq!((build.phase, retries), (Phase::Waiting, Some(3)));
    assert_eq!(build.job_config.build_args["VERSION"], "1.2");

    // A reader sees the build but neither its source nor is_writer.
    let r = f
        .call(
            "GET",
            &format!("{}/status", build_path(&uuid)),
            Some("bob"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        (r.json["is_writer"].as_bool(), &r.json["archive_url"]),
        (Some(false), &Value::Null)
    );
    assert_eq!(r.json["build_args"], Value::Null);
    let r = f.call("GET", &build_path(&uuid), Some("carol"), None).await;
    assert_eq!(r.json["is_writer"], true);
    // Another repository's path does not find it.
    let r = f
        .call(
            "GET",
            &format!("/api/v1/repository/acme/pub/build/{uuid}"),
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn nested_repository_names_use_percent_encoded_slashes() {
    let f = Fixture::new().await;
    let uri = "/api/v1/repository/acme/team%2Fapp/build/";
    let body = json!({"archive_url": "https://h/a.tgz"});
    let r = f.call("POST", uri, Some("alice"), Some(body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    assert_eq!(
        r.json["repository"],
        json!({"namespace": "acme", "name": "team/app"})
    );
    let location = r.headers[http::header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        location.starts_with("/api/v1/repository/acme/team%2Fapp/build/"),
        "{location}"
    );
    let r = f.call("GET", &location, Some("alice"), None).await;
    assert_eq!(
        (r.status, r.json["phase"].as_str()),
        (StatusCode::OK, Some("waiting"))
    );
}

#[tokio::test]
async fn create_from_git() {
    let f = Fixture::new().await;
    let r = f
        .start(
            "carol",
            json!({"git": {"url": "/srv/repos/app.git", "sha": SHA.to_uppercase()}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    assert_eq!(
        r.json["git"],
        json!({"url": "/srv/repos/app.git", "sha": SHA})
    );
    assert_eq!(r.json["display_name"], &SHA[..7]);
    assert_eq!(r.json["dockerfile_path"], "/Dockerfile");
    assert_eq!(r.json["context"], "/");
}

#[tokio::test]
async fn local_git_sources_need_the_setting() {
    let f = Fixture::with(|s| s.allow_local_git_sources = false).await;
    for url in ["/srv/repos/app.git", "file:///srv/repos/app.git"] {
        let r = f
            .start("carol", json!({"git": {"url": url, "sha": SHA}}))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{url}: {:?}", r.json);
        let msg = r.json["message"].as_str().unwrap_or_default().to_owned()
            + r.json["detail"].as_str().unwrap_or_default()
            + r.json["error_message"].as_str().unwrap_or_default();
        assert!(msg.contains("ALLOW_LOCAL_GIT_SOURCES"), "{:?}", r.json);
    }
    let r = f
        .start(
            "carol",
            json!({"git": {"url": "https://h/r.git", "sha": SHA}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
}

#[tokio::test]
async fn bad_requests_are_400_naming_the_problem() {
    let f = Fixture::new().await;
    let alices = f.upload("alice", b"FROM scratch").await;
    let r = f
        .call(
            "POST",
            "/api/v1/filedrop/",
            Some("carol"),
            Some(json!({"mimeType": ""})),
        )
        .await;
    let pending = r.json["file_id"].as_str().unwrap().to_owned();
    let git = |sha: &str| json!({"git": {"url": "https://h/r.git", "sha": sha}});
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "exactly one source"),
        (
            json!({"archive_url": "https://h/a", "git": {"url": "/r", "sha": SHA}}),
            "got archive_url and git",
        ),
        (
            json!({"archive_url": "ftp://h/a.tgz"}),
            "expected an http:// or https:// URL",
        ),
        (
            json!({"archive_url": "https://h/a", "docker_tags": ["ok", "no tags"]}),
            "docker_tags is invalid",
        ),
        (
            json!({"archive_url": "https://h/a", "build_args": {"1X": "v"}}),
            "build_args key \"1X\"",
        ),
        (
            json!({"archive_url": "https://h/a", "dockerfile_path": "../Dockerfile"}),
            "dockerfile_path \"../Dockerfile\"",
        ),
        (
            json!({"archive_url": "https://h/a", "context": "a/../../b"}),
            "context \"a/../../b\"",
        ),
        (
            json!({"file_id": "no-such-file"}),
            "file_id \"no-such-file\" does not exist",
        ),
        (json!({"file_id": alices}), "uploaded by another account"),
        (json!({"file_id": pending}), "has no content yet"),
        (git("abc"), "full 40-character"),
        (
            json!({"git": {"url": "ext::sh -c id", "sha": SHA}}),
            "git.url",
        ),
        (
            json!({"archive_url": "https://h/a", "buildargs": {}}),
            "request body is invalid",
        ),
        (
            json!({"archive_url": "https://h/a", "pull_robot": "puller"}),
            "expected <namespace>+<robot>",
        ),
        (
            json!({"archive_url": "https://h/a", "pull_robot": "other+bot"}),
            "belongs to another namespace",
        ),
    ];
    for (body, expected) in cases {
        let r = f.start("carol", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.json);
        assert!(r.message().contains(expected), "{body}: {}", r.message());
    }
    let r = f
        .call(
            "GET",
            "/api/v1/repository/acme/app/build/",
            Some("carol"),
            None,
        )
        .await;
    assert_eq!(r.json["builds"], json!([]));
    assert_eq!(f.wakes(), 0);
}

#[tokio::test]
async fn permissions_401_403_404() {
    let f = Fixture::new().await;
    let body = json!({"archive_url": "https://h/a.tgz"});
    let r = f
        .call(
            "POST",
            "/api/v1/repository/acme/app/build/",
            None,
            Some(body.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = f.start("bob", body.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.json);
    let r = f
        .call(
            "POST",
            "/api/v1/repository/acme/missing/build/",
            Some("alice"),
            Some(body.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = f
        .call("GET", "/api/v1/repository/acme/app/build/", None, None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let mut bad = Request::get("/api/v1/repository/acme/app/build/");
    bad = bad.header(http::header::AUTHORIZATION, "Bearer wrong");
    assert_eq!(
        f.send(bad.body(Body::empty()).unwrap()).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Public repositories are visible to anyone, logs are not.
    let r = f
        .call(
            "POST",
            "/api/v1/repository/acme/pub/build",
            Some("alice"),
            Some(body),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let uuid = r.json["id"].as_str().unwrap();
    let r = f
        .call("GET", "/api/v1/repository/acme/pub/build", None, None)
        .await;
    assert_eq!(
        (r.status, r.json["builds"].as_array().unwrap().len()),
        (StatusCode::OK, 1)
    );
    let logs = format!("/api/v1/repository/acme/pub/build/{uuid}/logs");
    assert_eq!(
        f.call("GET", &logs, None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        f.call("GET", &logs, Some("bob"), None).await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn pull_robot_rules() {
    let f = Fixture::new().await;
    let with = |robot: &str| json!({"archive_url": "https://h/a", "pull_robot": robot});
    let r = f.start("alice", with("acme+puller")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    assert_eq!(
        r.json["pull_robot"],
        json!({"name": "acme+puller", "kind": "user", "is_robot": true})
    );
    let r = f.start("carol", with("acme+puller")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.json);
    let r = f.start("alice", with("acme+ghost")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.json);
}

async fn start_n(f: &Fixture, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let r = f
            .start(
                "carol",
                json!({"archive_url": format!("https://h/{i}.tgz")}),
            )
            .await;
        out.push(r.json["id"].as_str().unwrap().to_owned());
    }
    out
}

async fn list(f: &Fixture, query: &str) -> Vec<String> {
    let uri = format!("/api/v1/repository/acme/app/build/{query}");
    let r = f.call("GET", &uri, Some("bob"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{query}: {:?}", r.json);
    let builds = r.json["builds"].as_array().unwrap();
    builds
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn list_is_newest_first_with_limit_and_since() {
    let f = Fixture::new().await;
    let ids = start_n(&f, 7).await;
    // The first build started an hour ago.
    let first = ids[0].clone();
    let hour_ago = registry_core::db::now_ms() - 3_600_000;
    f.state
        .builds
        .write(move |tx| {
            let sql = "UPDATE build SET started_at = ?1 WHERE uuid = ?2";
            let n = tx.execute(sql, rusqlite::params![hour_ago, first]);
            Ok::<_, buildman::db::BuildDbError>(n?)
        })
        .await
        .unwrap();
    let newest: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(list(&f, "").await, newest[..5]);
    assert_eq!(list(&f, "?limit=2").await, newest[..2]);
    assert_eq!(list(&f, "?limit=1000").await, newest);
    let since = (hour_ago / 1000) + 60;
    let recent = list(&f, &format!("?since={since}&limit=100")).await;
    assert_eq!(recent, newest[..6]);
    for bad in ["?limit=0", "?limit=x", "?since=-1"] {
        let r = f
            .call(
                "GET",
                &format!("/api/v1/repository/acme/app/build/{bad}"),
                Some("bob"),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

async fn logs(f: &Fixture, uuid: &str, query: &str, user: &str) -> support::Reply {
    let uri = format!("{}/logs{query}", build_path(uuid));
    f.call("GET", &uri, Some(user), None).await
}

#[tokio::test]
async fn logs_are_paged_and_need_write_or_reader_build_logs() {
    for reader_logs in [false, true] {
        let f = Fixture::with(|s| s.reader_build_logs = reader_logs).await;
        let uuid = start_n(&f, 1).await.remove(0);
        let id = uuid.clone();
        f.state
            .builds
            .write(move |tx| {
                let b = buildman::model::get(tx, &id)?.unwrap();
                use buildman::logs::{Kind, append};
                append(tx, b.id, Kind::Phase, "waiting", Default::default())?;
                append(
                    tx,
                    b.id,
                    Kind::Command,
                    "STEP 1/2: FROM scratch",
                    Default::default(),
                )?;
                append(tx, b.id, Kind::Output, "hello", Default::default())?;
                Ok::<_, buildman::db::BuildDbError>(())
            })
            .await
            .unwrap();
        let r = logs(&f, &uuid, "", "carol").await;
        assert_eq!(
            (r.json["start"].as_i64(), r.json["total"].as_i64()),
            (Some(0), Some(3))
        );
        assert_eq!(
            r.json["logs"][0],
            json!({"message": "waiting", "type": "phase", "data": r.json["logs"][0]["data"]})
        );
        assert_eq!(r.json["logs"][1]["type"], "command");
        let r = logs(&f, &uuid, "?start=2", "carol").await;
        assert_eq!(
            (r.json["start"].as_i64(), r.json["total"].as_i64()),
            (Some(2), Some(3))
        );
        assert_eq!(
            r.json["logs"],
            json!([{"message": "hello", "data": r.json["logs"][0]["data"]}])
        );
        assert_eq!(
            logs(&f, &uuid, "?start=9", "carol").await.json["logs"],
            json!([])
        );
        assert_eq!(
            logs(&f, &uuid, "?start=-1", "carol").await.status,
            StatusCode::BAD_REQUEST
        );
        let expected = if reader_logs {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(logs(&f, &uuid, "", "bob").await.status, expected);
        assert_eq!(logs(&f, &uuid, "", "root").await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn cancel_outcomes_are_mapped() {
    let f = Fixture::new().await;
    let uuid = start_n(&f, 1).await.remove(0);
    let path = build_path(&uuid);
    let r = f.call("DELETE", &path, Some("carol"), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = f
        .call("DELETE", &build_path("no-such-build"), Some("alice"), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(f.control.cancels.lock().unwrap().is_empty());

    let r = f.call("DELETE", &path, Some("alice"), None).await;
    assert_eq!((r.status, &r.json), (StatusCode::CREATED, &json!("Okay")));
    assert_eq!(*f.control.cancels.lock().unwrap(), vec![uuid.clone()]);
    let outcomes = [
        (
            Ok(CancelOutcome::TooLate(Phase::Complete)),
            StatusCode::BAD_REQUEST,
        ),
        (Ok(CancelOutcome::NotFound), StatusCode::NOT_FOUND),
        (
            Err("orchestrator unreachable".to_owned()),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
    ];
    for (outcome, status) in outcomes {
        *f.control.outcome.lock().unwrap() = outcome;
        let r = f.call("DELETE", &path, Some("alice"), None).await;
        assert_eq!(r.status, status, "{:?}", r.json);
    }
    *f.control.outcome.lock().unwrap() = Ok(CancelOutcome::TooLate(Phase::Pushing));
    let r = f.call("DELETE", &path, Some("root"), None).await;
    assert_eq!(r.message(), "Build is currently running or has finished");
}
