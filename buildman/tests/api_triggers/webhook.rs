//! `POST /webhooks/push/trigger/{uuid}`: every outcome of the status table, and the build a push
//! queues. Fixture bodies come from `fixtures/webhooks/`, signed here with each trigger's secret.

use http::StatusCode;
use registry_core::accounts::permissions::{self, Role};
use registry_core::accounts::{self, AccountError};
use serde_json::json;

use crate::helpers::{
    SECRET, activate, active, build, counts, create, deliver, fixture, hub_signature, signed,
    trigger_path, webhook_token,
};
use crate::support::{Fixture, Reply};

const KILN: &str = "lanternworks/kiln";
const KILN_SHA: &str = "8457785ada4ab6182c16fbac60586081edf51999";

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers.get(name).map(|v| v.to_str().unwrap())
}

fn assert_built(r: &Reply) -> String {
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json, json!("Okay"));
    assert_eq!(header(r, "x-quarry-skipped"), None);
    header(r, "x-quarry-build")
        .expect("X-Quarry-Build")
        .to_owned()
}

fn assert_skipped(r: &Reply) -> String {
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(header(r, "x-quarry-build"), None);
    let reason = header(r, "x-quarry-skipped").expect("X-Quarry-Skipped");
    assert!(!reason.is_empty());
    reason.to_owned()
}

fn assert_refused(r: &Reply, status: StatusCode, needle: &str) {
    assert_eq!(r.status, status, "{:?}", r.json);
    assert!(
        r.message().contains(needle),
        "{needle:?} not in {:?}",
        r.message()
    );
    assert_eq!(header(r, "x-quarry-build"), None);
}

#[tokio::test]
async fn refusals_follow_the_status_table_and_queue_nothing() {
    let f = Fixture::new().await;
    let (gh, token) = active(&f, "github", json!({"build_source": KILN})).await;
    let (_other, other_token) =
        active(&f, "custom-git", json!({"build_source": "git@h:a.git"})).await;
    let (headers, body) = signed("github", "github/push-branch", SECRET);

    let r = deliver(&f, "nope", Some(&token), &headers, body.clone()).await;
    assert_refused(&r, StatusCode::NOT_FOUND, "no trigger nope");
    let r = deliver(&f, &gh, None, &headers, body.clone()).await;
    assert_refused(&r, StatusCode::UNAUTHORIZED, "token");
    assert_eq!(
        header(&r, "www-authenticate"),
        Some("Basic realm=\"quarry\"")
    );
    let r = deliver(&f, &gh, Some("not-a-token"), &headers, body.clone()).await;
    assert_refused(&r, StatusCode::UNAUTHORIZED, "token");
    // Another trigger's token and a user's own valid token are not this trigger's: 401, as any
    // other wrong secret (decided before any token lookup).
    let alice = f.auth("alice").strip_prefix("Bearer ").unwrap().to_owned();
    for wrong in [&other_token, &alice] {
        let r = deliver(&f, &gh, Some(wrong), &headers, body.clone()).await;
        assert_refused(&r, StatusCode::UNAUTHORIZED, "the trigger's token");
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Basic realm=\"quarry\"")
        );
    }

    // Signatures: wrong secret, none at all.
    let (bad, _) = signed("github", "github/push-branch", "another-secret-0123456789");
    let r = deliver(&f, &gh, Some(&token), &bad, body.clone()).await;
    assert_refused(&r, StatusCode::FORBIDDEN, "X-Hub-Signature-256");
    let (unsigned, _) = fixture("github/push-branch");
    let r = deliver(&f, &gh, Some(&token), &unsigned, body.clone()).await;
    assert_refused(&r, StatusCode::FORBIDDEN, "X-Hub-Signature-256 is missing");

    // A body that is not a push.
    let junk = b"not json".to_vec();
    let mut junk_headers = unsigned.clone();
    junk_headers.push((
        "X-Hub-Signature-256".into(),
        crate::helpers::hub_signature(SECRET, &junk),
    ));
    let r = deliver(&f, &gh, Some(&token), &junk_headers, junk).await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "webhook payload is invalid");

    // Disabled, then inactive.
    let path = trigger_path(&gh);
    let off = f
        .call("PUT", &path, Some("alice"), Some(json!({"enabled": false})))
        .await;
    assert_eq!(off.status, StatusCode::OK);
    let r = deliver(&f, &gh, Some(&token), &headers, body.clone()).await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "disabled (user_toggled)");
    f.call("PUT", &path, Some("alice"), Some(json!({"enabled": true})))
        .await;
    let id = gh.clone();
    f.state
        .builds
        .write(move |tx| {
            tx.execute(
                "UPDATE build_trigger SET activated_at = NULL WHERE uuid = ?1",
                [id],
            )
            .map_err(registry_core::db::DbError::from)
        })
        .await
        .unwrap();
    let r = deliver(&f, &gh, Some(&token), &headers, body.clone()).await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "not active");

    // Bodies above 5 MiB are not read.
    let huge = vec![b' '; (5 << 20) + 1];
    let r = deliver(&f, &gh, Some(&token), &headers, huge).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

    assert_eq!(counts(&f).await, (0, 0), "no refusal queued anything");
    assert_eq!(f.wakes(), 0);
}

#[tokio::test]
async fn a_github_push_queues_the_build_the_config_describes() {
    let f = Fixture::new().await;
    let uuid = create(&f, "github").await;
    let config = json!({"build_source": "LanternWorks/Kiln", "webhook_secret": SECRET,
        "dockerfile_path": "/docker/Dockerfile", "context": "/",
        "tag_templates": ["${commit_info.short_sha}", "br-${parsed_ref.branch}"]});
    let r = activate(
        &f,
        &uuid,
        json!({"config": config, "pull_robot": "acme+puller"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    let token = webhook_token(&r.json);
    let (headers, body) = signed("github", "github/push-branch", SECRET);

    // With and without the trailing slash.
    let r = deliver(
        &f,
        &format!("{uuid}/"),
        Some(&token),
        &headers,
        body.clone(),
    )
    .await;
    let id = assert_built(&r);
    assert_eq!(f.wakes(), 1);
    let b = build(&f, &id).await;
    let mut tags = b.job_config.docker_tags.clone();
    tags.sort();
    assert_eq!(tags, ["8457785", "br-main", "latest", "main"]);
    let git = b.job_config.git.clone().unwrap();
    assert_eq!(
        (git.url.as_str(), git.sha.as_str()),
        ("git@github.com:LanternWorks/Kiln.git", KILN_SHA),
        "the clone URL is the trigger's build_source on GitHub"
    );
    assert_eq!(b.display_name, &KILN_SHA[..7]);
    assert_eq!(b.job_config.trigger_metadata["commit"], KILN_SHA);
    assert_eq!(b.job_config.trigger_metadata["ref"], "refs/heads/main");
    assert_eq!(b.job_config.trigger_metadata["default_branch"], "main");
    assert_eq!(
        (
            b.job_config.build_subdir.as_str(),
            b.job_config.context.as_str()
        ),
        ("/docker/Dockerfile", "/")
    );
    assert_eq!(b.pull_robot.as_deref(), Some("acme+puller"));
    assert_eq!(b.trigger_uuid.as_deref(), Some(uuid.as_str()));
    assert_eq!(b.manual_user, None, "a webhook build has no starting user");
    let r = deliver(&f, &uuid, Some(&token), &headers, body).await;
    assert_built(&r);
    assert_eq!(counts(&f).await, (2, 2));

    // The repository of the payload must be the trigger's.
    let (other, other_token) = active(&f, "github", json!({"build_source": "acme/other"})).await;
    let r = deliver(&f, &other, Some(&other_token), &headers, build_body()).await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "payload is for repository");
    assert_eq!(counts(&f).await, (2, 2));
}

fn build_body() -> Vec<u8> {
    signed("github", "github/push-branch", SECRET).1
}

#[tokio::test]
async fn pings_skip_markers_and_the_branch_regex_skip_with_a_reason() {
    let f = Fixture::new().await;
    let (gh, token) = active(&f, "github", json!({"build_source": KILN})).await;
    let (h, b) = signed("github", "github/ping", SECRET);
    assert_skipped(&deliver(&f, &gh, Some(&token), &h, b).await);
    let (h, b) = signed("github", "github/push-branch-skip-marker", SECRET);
    let reason = assert_skipped(&deliver(&f, &gh, Some(&token), &h, b).await);
    assert!(reason.contains("skip build"), "{reason}");

    let config = json!({"build_source": KILN, "branchtag_regex": "heads/release-.*"});
    let (only_release, token2) = active(&f, "github", config).await;
    let (h, b) = signed("github", "github/push-branch", SECRET);
    let reason = assert_skipped(&deliver(&f, &only_release, Some(&token2), &h, b).await);
    assert!(reason.contains("heads/main"), "{reason}");
    assert_eq!(counts(&f).await, (0, 0));
}

#[tokio::test]
async fn gitlab_bitbucket_and_custom_git_check_their_own_signatures() {
    let f = Fixture::new().await;
    let cases = [
        (
            "gitlab",
            "harbourmasters/tidewater-api",
            "gitlab/push-branch",
            "X-Gitlab-Token",
            "git@gitlab.com:harbourmasters/tidewater-api.git",
        ),
        (
            "bitbucket",
            "saltmarsh/heron-tracker",
            "bitbucket/push-branch",
            "X-Hub-Signature",
            "git@bitbucket.org:saltmarsh/heron-tracker.git",
        ),
        (
            "custom-git",
            "ssh://git@git.example.net/ops/lighthouse.git",
            "custom-git/push-branch",
            "X-Hub-Signature-256",
            "ssh://git@git.example.net/ops/lighthouse.git",
        ),
    ];
    for (service, source, name, sig_header, clone_url) in cases {
        let (uuid, token) = active(&f, service, json!({"build_source": source})).await;
        let (bad, body) = signed(service, name, "wrong-secret-0123456789abcdef");
        let before = counts(&f).await;
        let r = deliver(&f, &uuid, Some(&token), &bad, body.clone()).await;
        assert_refused(&r, StatusCode::FORBIDDEN, sig_header);
        assert_eq!(counts(&f).await, before, "{service}");
        let (good, body) = signed(service, name, SECRET);
        let id = assert_built(&deliver(&f, &uuid, Some(&token), &good, body).await);
        let b = build(&f, &id).await;
        assert_eq!(b.job_config.git.unwrap().url, clone_url, "{service}");
    }

    // A custom body naming an abbreviated commit cannot be checked out by the agent.
    let (uuid, token) = active(&f, "custom-git", json!({"build_source": "git@h:a.git"})).await;
    let (h, b) = signed("custom-git", "custom-git/push-tag-minimal", SECRET);
    let r = deliver(&f, &uuid, Some(&token), &h, b).await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "full 40-character");
}

#[tokio::test]
async fn a_token_whose_owner_lost_write_is_refused() {
    let f = Fixture::new().await;
    f.state
        .registry
        .db
        .write(|tx| {
            let carol = accounts::find(tx, "carol")?.unwrap();
            permissions::set_for_account(tx, &"acme/app".parse().unwrap(), &carol, Role::Admin)
        })
        .await
        .unwrap();
    let r = f
        .call(
            "POST",
            crate::helpers::TRIGGERS,
            Some("carol"),
            Some(json!({"service": "github"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    let uuid = r.json["id"].as_str().unwrap().to_owned();
    let body = json!({"config": {"build_source": KILN}});
    let r = f
        .call(
            "POST",
            &format!("{}/activate", trigger_path(&uuid)),
            Some("carol"),
            Some(body),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    let token = webhook_token(&r.json);
    f.state
        .registry
        .db
        .write(|tx| {
            let carol = accounts::find(tx, "carol")?.unwrap();
            permissions::set_for_account(tx, &"acme/app".parse().unwrap(), &carol, Role::Read)?;
            Ok::<_, AccountError>(())
        })
        .await
        .unwrap();
    let (h, b) = fixture("github/push-branch");
    let r = deliver(&f, &uuid, Some(&token), &h, b).await;
    assert_refused(&r, StatusCode::FORBIDDEN, "no longer has write access");
    assert_eq!(counts(&f).await, (0, 0));
}

#[tokio::test]
async fn the_clone_url_is_the_triggers_never_the_payloads() {
    let f = Fixture::new().await;
    let configured = "ssh://git@git.internal.example:2222/lanternworks/kiln.git";
    let config = json!({"build_source": KILN, "clone_url": configured});
    let (uuid, token) = active(&f, "github", config).await;
    let (mut headers, body) = fixture("github/push-branch");
    // The payload points elsewhere: another host, a loopback service, a URL with a password.
    for ssh_url in [
        "git@evil.example:lanternworks/kiln.git",
        "ssh://127.0.0.1:6379/x",
        "https://user:s3cret@evil.example/kiln.git",
    ] {
        let mut payload: serde_json::Value = serde_json::from_slice(&body).unwrap();
        payload["repository"]["ssh_url"] = json!(ssh_url);
        payload["repository"]["clone_url"] = json!(ssh_url);
        let body = serde_json::to_vec(&payload).unwrap();
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("x-hub-signature-256"));
        headers.push(("X-Hub-Signature-256".into(), hub_signature(SECRET, &body)));
        let id = assert_built(&deliver(&f, &uuid, Some(&token), &headers, body).await);
        let b = build(&f, &id).await;
        assert_eq!(b.job_config.git.unwrap().url, configured, "{ssh_url}");
        let metadata = b.job_config.trigger_metadata.to_string();
        assert!(
            !metadata.contains("evil") && !metadata.contains("s3cret"),
            "{metadata}"
        );
    }
    let r = f
        .call("GET", &trigger_path(&uuid), Some("alice"), None)
        .await;
    assert_eq!(
        r.json["repository_url"],
        "https://git.internal.example/lanternworks/kiln"
    );
    assert_eq!(r.json["config"]["clone_url"], configured);
}

#[tokio::test]
async fn a_deleted_trigger_or_token_is_refused() {
    let f = Fixture::new().await;
    let (gh, token) = active(&f, "github", json!({"build_source": KILN})).await;
    let (headers, body) = signed("github", "github/push-branch", SECRET);

    // The trigger's own token deleted in registry-core: 403, saying what to do.
    let title = format!("Build Trigger: {gh}");
    f.state
        .registry
        .db
        .write(move |tx| registry_core::accounts::tokens::delete_by_title(tx, &title))
        .await
        .unwrap();
    let r = deliver(&f, &gh, Some(&token), &headers, body.clone()).await;
    assert_refused(&r, StatusCode::FORBIDDEN, "re-activate the trigger");
    // A wrong token is still 401 first.
    let r = deliver(&f, &gh, Some("guess"), &headers, body.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // A deleted trigger with its old (then valid) token: 404.
    let (gone, gone_token) = active(&f, "github", json!({"build_source": KILN})).await;
    let r = f
        .call("DELETE", &trigger_path(&gone), Some("alice"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = deliver(&f, &gone, Some(&gone_token), &headers, body).await;
    assert_refused(&r, StatusCode::NOT_FOUND, &format!("no trigger {gone}"));
    assert_eq!(counts(&f).await, (0, 0));
    assert_eq!(f.wakes(), 0);
}
