//! End to end: build triggers (issue 5). A real OpenSSH sshd serves a bare git repository to the
//! trigger's deploy key only; custom-git and GitHub-shaped pushes are POSTed to the webhook URL
//! Quarry hands out; builds run through the popen executor with real builder-agent processes and
//! podman, clone over SSH with the deploy key, push tags decided from the push; webhook
//! notifications land in a local receiver; bad deliveries queue nothing.
//!
//! Only the REST shapes of design.md (B, C), the webhook endpoint, the registry and real
//! processes are used. Heavy (podman builds, sshd): `scripts/test.sh` runs them in its heavy tier.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

#[path = "e2e_triggers/checks.rs"]
mod checks;
mod common;

use std::path::Path;
use std::time::Duration;

use checks::{Expected, assert_built, assert_notified, dockerfile, set, tags_in_registry};
use common::quarry::{Quarry, agent_binary};
use common::receiver::Receiver;
use common::sshd::{GitRepo, Sshd, fingerprint, keygen};
use common::triggers::{
    custom_body, deliver, github_body, github_headers, hub_signature, trigger, trigger_builds,
};
use reqwest::Method;
use serde_json::json;

const BUILD_DEADLINE: Duration = Duration::from_secs(300);
const NOTIFY_DEADLINE: Duration = Duration::from_secs(30);
const REPO: &str = "acme/app";
const EVENTS: [&str; 3] = ["build_queued", "build_start", "build_success"];
const GITHUB_SOURCE: &str = "quarry-test/app";
const WEBHOOK_SECRET: &str = "a webhook secret shared with github";

#[tokio::test]
#[ignore = "heavy: starts a private sshd on loopback"]
async fn sshd_serves_git_only_to_authorized_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = keygen(dir.path(), "good");
    let other = keygen(dir.path(), "other");
    let public = |key: &Path| std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let repo = GitRepo::create(dir.path(), "served");
    let sha = repo.commit_and_push(&[("README", "served over ssh\n")], "first");
    let sshd = Sshd::start(&dir.path().join("sshd"), &[&public(&good)]);
    let url = sshd.url(&repo.bare);

    let ok = sshd.git_with_key(&good, &["ls-remote", &url]);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success() && out.contains(&format!("{sha}\trefs/heads/main")),
        "ls-remote with the authorized key: {out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = sshd.git_with_key(&other, &["ls-remote", &url]);
    assert!(!refused.status.success(), "another key was let in");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(sshd.accepted(&fingerprint(&public(&good), dir.path())), 1);
    assert_eq!(sshd.accepted(&fingerprint(&public(&other), dir.path())), 0);

    // authorized_keys is read at each login: swapping it swaps who gets in.
    sshd.set_authorized(&[&public(&other)]);
    assert!(
        sshd.git_with_key(&other, &["ls-remote", &url])
            .status
            .success()
    );
    assert!(
        !sshd
            .git_with_key(&good, &["ls-remote", &url])
            .status
            .success()
    );
}

#[tokio::test]
#[ignore = "heavy: podman builds, sshd"]
async fn pushes_build_over_ssh_with_the_deploy_key_and_notify() {
    // 1. Quarry with the popen executor, loopback webhook targets allowed; a public base image.
    let executors = format!(
        "\x20   - EXECUTOR: popen\n\x20     BUILDER_BINARY_LOCATION: {}\n",
        agent_binary().display()
    );
    let q = Quarry::start_configured(
        "NOTIFICATION_ALLOW_LOCAL_WEBHOOKS: true\n",
        "    ALLOWED_WORKER_COUNT: 2\n",
        &executors,
    )
    .await;
    q.create_repo("acme", "base");
    q.create_repo("acme", "app");
    q.push_base_image("acme/base");
    q.make_public("acme/base");
    let rx = Receiver::start().await;

    // 2-3. An sshd that lets in nobody yet, and a bare repository with one pushed commit.
    let sshd = Sshd::start(&q.root.path().join("sshd"), &[]);
    let repo = GitRepo::create(q.root.path(), "app-src");
    let first = repo.commit_and_push(
        &[
            ("Dockerfile", &dockerfile(&q)),
            ("hello.txt", "pushed in commit one\n"),
        ],
        "first: the app",
    );
    let ssh_url = sshd.url(&repo.bare);

    // 4. A custom-git trigger; its deploy key becomes the sshd's only key.
    let (custom_id, view, custom_key, custom_hook) = trigger(
        &q,
        REPO,
        "custom-git",
        json!({"build_source": ssh_url, "dockerfile_path": "/Dockerfile", "context": "/",
               "branchtag_regex": "heads/(main|release-.*)",
               "tag_templates": ["${commit_info.short_sha}", "br-${parsed_ref.branch}"]}),
    )
    .await;
    assert_eq!(view["build_source"], ssh_url.as_str(), "{view}");
    assert_eq!(view["repository_url"], ssh_url.as_str(), "{view}");
    assert_eq!(view["config"]["has_webhook_secret"], false, "{view}");
    sshd.set_authorized(&[&custom_key]);
    let custom_fp = fingerprint(&custom_key, q.root.path());

    // 5. Webhook notifications, one receiver path per event.
    for event in EVENTS {
        let (s, v) = q
            .api(
                Method::POST,
                &format!("/api/v1/repository/{REPO}/notification/"),
                Some(json!({"event": event, "method": "webhook", "title": event,
                            "config": {"url": format!("{}/{event}", rx.base)}, "eventConfig": {}})),
            )
            .await;
        assert_eq!(s, 201, "creating the {event} notification: {v}");
        assert_eq!(v["event"], event, "{v}");
        assert_eq!(v["number_of_failures"], 0, "{v}");
    }

    // 6. A custom-git push: built from the SSH clone, tagged from the templates and the ref.
    let started = std::time::Instant::now();
    let a = deliver(
        &q,
        &custom_hook,
        &custom_hook.code,
        &[],
        &custom_body(&first, "refs/heads/main", "first: the app"),
    )
    .await;
    assert!(a.is_okay(), "{} {}", a.status, a.text);
    let build1 = a.header("x-quarry-build").expect("X-Quarry-Build");
    let short1 = &first[..7];
    let tags1 = set(&[short1, "br-main", "main", "latest"]);
    let digest1 = assert_built(&q, &build1, &tags1, "br-main", "pushed in commit one\n").await;
    eprintln!("custom-git build done in {:?}", started.elapsed());
    let (s, view) = q
        .api(
            Method::GET,
            &format!("/api/v1/repository/{REPO}/build/{build1}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(view["trigger"]["id"], custom_id.as_str(), "{view}");
    assert_eq!(view["trigger"]["service"], "custom-git", "{view}");
    assert_eq!(view["display_name"], short1, "{view}");
    assert_eq!(tags_in_registry(&q), tags1);
    assert!(
        sshd.accepted(&custom_fp) >= 1,
        "sshd never accepted the deploy key:\n{}",
        sshd.log()
    );

    // 7. Each build event delivered exactly once with Quay's fields.
    let expect1 = Expected {
        q: &q,
        build: &build1,
        tags: &tags1,
        trigger_id: &custom_id,
        kind: "custom-git",
        commit: &first,
        digest: &digest1,
    };
    assert_notified(&rx, &build1, &expect1).await;

    // 8. A GitHub-shaped push, signed with the trigger's webhook secret, to a second trigger
    //    whose deploy key joins the first in authorized_keys. The trigger clones from its
    //    configured clone_url (the loopback sshd); the payload's ssh_url points at github.com and
    //    is never used.
    let (gh_id, view, gh_key, gh_hook) = trigger(
        &q,
        REPO,
        "github",
        json!({"build_source": GITHUB_SOURCE, "clone_url": ssh_url,
               "dockerfile_path": "/Dockerfile", "context": "/",
               "webhook_secret": WEBHOOK_SECRET,
               "tag_templates": ["gh-${commit_info.short_sha}"]}),
    )
    .await;
    assert_eq!(
        view["repository_url"],
        format!("https://127.0.0.1/{GITHUB_SOURCE}"),
        "the page is on the clone_url's host: {view}"
    );
    let payload_url = format!("git@github.com:{GITHUB_SOURCE}.git");
    assert_eq!(view["config"]["has_webhook_secret"], true, "{view}");
    assert!(!view.to_string().contains(WEBHOOK_SECRET), "{view}");
    sshd.set_authorized(&[&custom_key, &gh_key]);
    let gh_fp = fingerprint(&gh_key, q.root.path());
    let second = repo.commit_and_push(&[("hello.txt", "pushed in commit two\n")], "second");
    let body = github_body(&second, GITHUB_SOURCE, &payload_url);
    let a = deliver(
        &q,
        &gh_hook,
        &gh_hook.code,
        &github_headers(WEBHOOK_SECRET, &body),
        &body,
    )
    .await;
    assert!(a.is_okay(), "{} {}", a.status, a.text);
    let build2 = a.header("x-quarry-build").expect("X-Quarry-Build");
    let (s, view) = q
        .api(
            Method::GET,
            &format!("/api/v1/repository/{REPO}/build/{build2}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{view}");
    assert_eq!(
        view["trigger_metadata"]["git_url"],
        ssh_url.as_str(),
        "the build clones from the configured clone_url: {view}"
    );
    let tags2 = set(&[format!("gh-{}", &second[..7]).as_str(), "main", "latest"]);
    let digest2 = assert_built(&q, &build2, &tags2, "latest", "pushed in commit two\n").await;
    assert_ne!(digest1, digest2);
    assert_eq!(tags_in_registry(&q), &tags1 | &tags2);
    assert!(
        sshd.accepted(&gh_fp) >= 1,
        "github trigger's key unused:\n{}",
        sshd.log()
    );
    let expect2 = Expected {
        build: &build2,
        tags: &tags2,
        trigger_id: &gh_id,
        kind: "github",
        commit: &second,
        digest: &digest2,
        ..expect1
    };
    assert_notified(&rx, &build2, &expect2).await;

    // 9. Refusals and skips through the running server queue nothing.
    let before = (
        trigger_builds(&q, REPO, &custom_id).await,
        trigger_builds(&q, REPO, &gh_id).await,
    );
    assert_eq!(before, (1, 1));
    let heard = rx.all().len();
    let good = custom_body(&second, "refs/heads/main", "second");

    let a = deliver(&q, &custom_hook, &custom_hook.code, &[], b"{\"commit\": ").await;
    assert_eq!(a.status, 400, "malformed JSON: {}", a.text);
    let a = deliver(&q, &custom_hook, "not-the-token", &[], &good).await;
    assert_eq!(a.status, 401, "wrong token: {}", a.text);
    assert!(
        a.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Basic"))
    );
    // Another trigger's token is a valid write token of this repository (Quay would accept it),
    // but not this trigger's: as any wrong secret, 401.
    let a = deliver(&q, &custom_hook, &gh_hook.code, &[], &good).await;
    assert_eq!(a.status, 401, "another trigger's token: {}", a.text);
    assert!(
        a.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Basic"))
    );
    let mut bad_sig = github_headers(WEBHOOK_SECRET, &body);
    bad_sig[1].1 = hub_signature(WEBHOOK_SECRET, b"another body");
    let a = deliver(&q, &gh_hook, &gh_hook.code, &bad_sig, &body).await;
    assert_eq!(a.status, 403, "bad signature: {}", a.text);
    assert!(a.text.contains("X-Hub-Signature-256"), "{}", a.text);
    let a = deliver(
        &q,
        &gh_hook,
        &gh_hook.code,
        &github_headers(WEBHOOK_SECRET, &body)[..1],
        &body,
    )
    .await;
    assert_eq!(a.status, 403, "no signature: {}", a.text);
    let other = github_body(&second, "someone/else", &payload_url);
    let a = deliver(
        &q,
        &gh_hook,
        &gh_hook.code,
        &github_headers(WEBHOOK_SECRET, &other),
        &other,
    )
    .await;
    assert_eq!(a.status, 400, "another repository: {}", a.text);
    // Skips answer 200 "Okay" and say why.
    for (git_ref, message) in [
        ("refs/heads/feature", "not a built branch"),
        ("refs/heads/main", "docs only [skip build]"),
    ] {
        let body = custom_body(&second, git_ref, message);
        let a = deliver(&q, &custom_hook, &custom_hook.code, &[], &body).await;
        assert!(a.is_okay(), "{git_ref} {message}: {} {}", a.status, a.text);
        assert!(
            a.header("x-quarry-skipped").is_some(),
            "{git_ref} {message}"
        );
        assert!(a.header("x-quarry-build").is_none(), "{git_ref} {message}");
    }
    let (s, v) = q
        .api(
            Method::PUT,
            &format!("/api/v1/repository/{REPO}/trigger/{custom_id}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["enabled"], false, "{v}");
    let a = deliver(&q, &custom_hook, &custom_hook.code, &[], &good).await;
    assert_eq!(a.status, 400, "disabled trigger: {}", a.text);
    assert!(a.text.contains("disabled"), "{}", a.text);

    // Nothing was queued: no builds, and (after more than one dispatcher poll) no notification.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = (
        trigger_builds(&q, REPO, &custom_id).await,
        trigger_builds(&q, REPO, &gh_id).await,
    );
    assert_eq!(after, before, "a refused delivery queued a build");
    let (s, list) = q
        .api(
            Method::GET,
            &format!("/api/v1/repository/{REPO}/build/?limit=10"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(list["builds"].as_array().unwrap().len(), 2, "{list}");
    assert_eq!(rx.all().len(), heard, "a refused delivery notified");
    // Build notifications went only where they were asked for, each once per build.
    assert!(
        rx.all()
            .iter()
            .all(|r| EVENTS.iter().any(|e| r.path == format!("/{e}")))
    );
    for event in EVENTS {
        for build in [&build1, &build2] {
            let n = rx
                .at(&format!("/{event}"))
                .iter()
                .filter(|r| r.json()["build_id"] == build.as_str())
                .count();
            assert_eq!(n, 1, "{event} for {build} delivered {n} times");
        }
    }
    eprintln!("whole test in {:?}", started.elapsed());
}
