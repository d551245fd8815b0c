//! Manual starts (`POST .../trigger/{uuid}/start`) and the builds of a trigger.

use http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{activate, build, counts, create, trigger_path};
use crate::support::Fixture;

const SHA: &str = "89abcdef0123456789abcdef0123456789abcdef";
const SRC: &str = "git@git.example:acme/app.git";

async fn start(f: &Fixture, uuid: &str, user: Option<&str>, body: Value) -> crate::support::Reply {
    f.call(
        "POST",
        &format!("{}/start", trigger_path(uuid)),
        user,
        Some(body),
    )
    .await
}

#[tokio::test]
async fn a_manual_start_queues_the_commit_with_the_triggers_config() {
    let f = Fixture::new().await;
    let uuid = create(&f, "custom-git").await;
    let r = start(&f, &uuid, Some("alice"), json!({"commit_sha": SHA})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "inactive");
    assert!(r.message().contains("not active"), "{}", r.message());
    let config = json!({"build_source": SRC, "dockerfile_path": "/app/Dockerfile",
                        "context": "/app"});
    let r = activate(
        &f,
        &uuid,
        json!({"config": config, "pull_robot": "acme+puller"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);

    // Repository admins only (Quay's rule; `can_invoke`): carol has write, bob read.
    for (user, status) in [
        (Some("carol"), StatusCode::FORBIDDEN),
        (Some("bob"), StatusCode::FORBIDDEN),
        (None, StatusCode::UNAUTHORIZED),
    ] {
        let r = start(&f, &uuid, user, json!({"commit_sha": SHA})).await;
        assert_eq!(r.status, status, "{user:?}: {:?}", r.json);
    }
    let r = start(
        &f,
        &uuid,
        Some("alice"),
        json!({"refs": {"kind": "branch", "name": "main"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.message().starts_with("commit_sha is required")
            && r.message().contains("no provider API"),
        "{}",
        r.message()
    );
    for (bad, needle) in [
        (json!({"commit_sha": "89abcde"}), "40-character"),
        (json!({"commit_sha": SHA, "sha": SHA}), "sha"),
        (
            json!({"commit_sha": SHA, "refs": {"kind": "tag", "name": " "}}),
            "refs.name is empty",
        ),
        (
            json!({"commit_sha": SHA, "branch_name": ""}),
            "branch_name is empty",
        ),
    ] {
        let r = start(&f, &uuid, Some("alice"), bad.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(r.message().contains(needle), "{bad}: {}", r.message());
    }
    assert_eq!(counts(&f).await, (0, 0), "refusals queue nothing");

    let body =
        json!({"commit_sha": SHA.to_uppercase(), "refs": {"kind": "branch", "name": "main"}});
    let r = start(&f, &uuid, Some("alice"), body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    let id = r.json["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.headers[http::header::LOCATION],
        format!("/api/v1/repository/acme/app/build/{id}/status")
    );
    assert_eq!(f.wakes(), 1);
    let v = &r.json;
    assert_eq!(v["manual_user"], "alice");
    assert_eq!(v["tags"], json!(["main"]));
    assert_eq!(v["display_name"], &SHA[..7]);
    assert_eq!(v["trigger"]["id"], uuid.as_str());
    assert_eq!(v["trigger"]["service"], "custom-git");
    assert_eq!(v["trigger"]["build_source"], SRC);
    assert!(v["trigger"].get("pull_robot").is_none(), "for_build view");
    let status = format!("/api/v1/repository/acme/app/build/{id}");
    let as_carol = f.call("GET", &status, Some("carol"), None).await;
    assert_eq!(
        as_carol.json["trigger"]["config"],
        json!({}),
        "carol does not administer"
    );
    assert_eq!(v["trigger_metadata"]["commit"], SHA);
    assert_eq!(v["trigger_metadata"]["ref"], "refs/heads/main");

    let b = build(&f, &id).await;
    let git = b.job_config.git.clone().unwrap();
    assert_eq!((git.url.as_str(), git.sha.as_str()), (SRC, SHA));
    assert_eq!(b.trigger_uuid.as_deref(), Some(uuid.as_str()));
    assert_eq!(b.pull_robot.as_deref(), Some("acme+puller"));
    assert_eq!(
        (
            b.job_config.build_subdir.as_str(),
            b.job_config.context.as_str()
        ),
        ("/app/Dockerfile", "/app")
    );

    // Without a ref the tag is the short commit.
    let r = start(&f, &uuid, Some("alice"), json!({"commit_sha": SHA})).await;
    assert_eq!(r.json["tags"], json!([&SHA[..7]]));
    // An admin's build view shows the trigger's config.
    assert_eq!(r.json["trigger"]["config"]["build_source"], SRC);

    // The builds of the trigger, newest first, for readers too.
    let builds = format!("{}/builds", trigger_path(&uuid));
    let r = f.call("GET", &builds, Some("bob"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    let list = r.json["builds"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["id"], id.as_str());
    let r = f
        .call("GET", &format!("{builds}?limit=1"), Some("bob"), None)
        .await;
    assert_eq!(r.json["builds"].as_array().unwrap().len(), 1);
    let r = f
        .call("GET", &format!("{builds}?limit=0"), Some("bob"), None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = f.call("GET", &builds, None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Disabled: refused, nothing queued.
    let r = f
        .call(
            "PUT",
            &trigger_path(&uuid),
            Some("alice"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = start(&f, &uuid, Some("alice"), json!({"commit_sha": SHA})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.message().contains("disabled (user_toggled)"),
        "{}",
        r.message()
    );
    assert_eq!(counts(&f).await, (2, 2));
}

#[tokio::test]
async fn provider_triggers_start_from_their_ssh_url_and_local_sources_are_refused() {
    let f = Fixture::new().await;
    let uuid = create(&f, "gitlab").await;
    let r = activate(
        &f,
        &uuid,
        json!({"config": {"build_source": "group/sub/app"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["repository_url"], "https://gitlab.com/group/sub/app");
    let r = start(
        &f,
        &uuid,
        Some("alice"),
        json!({"commit_sha": SHA, "branch_name": "dev"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    let b = build(&f, r.json["id"].as_str().unwrap()).await;
    assert_eq!(
        b.job_config.git.unwrap().url,
        "git@gitlab.com:group/sub/app.git"
    );
    assert_eq!(b.job_config.docker_tags, ["dev"]);

    // A configured clone_url is where manual starts clone from too.
    let gh = create(&f, "github").await;
    let clone = "git@ghe.corp:acme/app.git";
    let config = json!({"config": {"build_source": "acme/app", "clone_url": clone}});
    assert_eq!(activate(&f, &gh, config).await.status, StatusCode::OK);
    let r = start(&f, &gh, Some("alice"), json!({"commit_sha": SHA})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    let b = build(&f, r.json["id"].as_str().unwrap()).await;
    assert_eq!(b.job_config.git.unwrap().url, clone);

    // A local source activated while allowed is refused once the install forbids it.
    let f2 = Fixture::new().await;
    let local = create(&f2, "custom-git").await;
    let r = activate(
        &f2,
        &local,
        json!({"config": {"build_source": "/srv/app.git"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let mut strict = f2.state.clone();
    strict.settings.allow_local_git_sources = false;
    let req = http::Request::post(format!("{}/start", trigger_path(&local)))
        .header(http::header::AUTHORIZATION, f2.auth("alice"))
        .body(axum::body::Body::from(
            json!({"commit_sha": SHA}).to_string(),
        ))
        .unwrap();
    let resp = tower::ServiceExt::oneshot(buildman::api::routes(strict), req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(counts(&f2).await, (0, 0));
}
