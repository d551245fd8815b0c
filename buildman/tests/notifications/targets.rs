//! Local targets at delivery time: every spelling of this machine is refused by the rules or
//! the guarded resolver, and proxies from the environment are never used.

use std::time::Duration;

use buildman::notify::{self, delivery_rows, model as nmodel};
use serde_json::json;

use super::driving::round;
use super::support::{Fixture, Receiver};
use super::{failures, local, pending_all};

/// Insert a webhook notification to `url` directly (the REST API refuses local targets).
async fn raw_webhook(f: &Fixture, url: &str) -> String {
    let url = url.to_owned();
    f.state
        .builds
        .write(move |tx| {
            let n = nmodel::create(
                tx,
                &nmodel::NewNotification {
                    repository: "acme/app".into(),
                    event: "repo_push".into(),
                    method: "webhook".into(),
                    title: None,
                    config: json!({ "url": url }),
                    event_config: json!({}),
                    created_by: "alice".into(),
                },
            )?;
            delivery_rows::queue(tx, &n.uuid, "repo_push", &json!({"repository": "acme/app"}))?;
            Ok::<_, buildman::db::BuildDbError>(n.uuid)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn local_targets_in_any_spelling_are_refused_at_delivery() {
    let rx = Receiver::start().await;
    let port = rx.url.rsplit(':').next().unwrap().trim_end_matches("/hook");
    // `vm` resolves to 127.0.0.1 on this machine (/etc/hosts); the others are spellings of it.
    let resolves_local = tokio::net::lookup_host(("vm", 0))
        .await
        .unwrap()
        .all(|a| a.ip().is_loopback());
    assert!(
        resolves_local,
        "this test needs the name vm to resolve to 127.0.0.1"
    );
    let urls: Vec<String> = [
        "vm",
        "LOCALHOST",
        "127.1",
        "0x7f.1",
        "2130706433",
        "localhost.",
        "[::ffff:127.0.0.1]",
    ]
    .iter()
    .map(|h| format!("http://{h}:{port}/hook"))
    .collect();
    let f = Fixture::new(|_| {}).await;
    let mut uuids = Vec::new();
    for url in &urls {
        uuids.push(raw_webhook(&f, url).await);
    }
    let parts = f.parts(Duration::from_secs(30));
    assert_eq!(round(&parts).await, urls.len());
    assert_eq!(rx.count(), 0, "nothing reached the local receiver");
    for (url, uuid) in urls.iter().zip(&uuids) {
        assert_eq!(failures(&f, uuid).await, 1, "{url}");
    }
    let errors: Vec<String> = pending_all(&f)
        .await
        .into_iter()
        .map(|r| r.2.unwrap())
        .collect();
    assert!(
        errors[0].contains("resolves only to local or blacklisted addresses"),
        "{}",
        errors[0]
    );
    for e in &errors[1..] {
        assert!(e.contains("is local"), "{e}");
    }

    // The control: with local targets allowed, the same names reach the receiver.
    let open = Fixture::new(local).await;
    for url in &urls[..4] {
        raw_webhook(&open, url).await;
    }
    let parts = open.parts(Duration::from_secs(30));
    round(&parts).await;
    assert_eq!(rx.count(), 4, "{:?}", pending_all(&open).await);
}

const PROXY_CHILD: &str = "QUARRY_TEST_PROXY_CHILD_URL";

/// The delivery client ignores `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY`: the test runs itself in a
/// child process with those set to a receiver acting as proxy (the environment is
/// process-wide), where the client built by `methods::http::client` posts to a name resolving
/// to 127.0.0.1; the guarded resolver refuses it and the "proxy" receives nothing.
#[tokio::test]
async fn proxies_from_the_environment_are_not_used() {
    if let Ok(url) = std::env::var(PROXY_CHILD) {
        let config = buildman::config::NotificationConfig {
            send_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let client = notify::methods::http::client(&config).unwrap();
        let err = client
            .post(&url)
            .json(&json!({}))
            .send()
            .await
            .expect_err("the post must fail");
        let text = registry_core::error::error_chain(&err);
        assert!(text.contains("local or blacklisted addresses"), "{text}");
        return;
    }
    let proxy = Receiver::start().await;
    let target = Receiver::start().await;
    let proxy_url = proxy.url.trim_end_matches("/hook").to_owned();
    let port = target.url.rsplit(':').next().unwrap().to_owned();
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "targets::proxies_from_the_environment_are_not_used",
            "--exact",
            "--nocapture",
        ])
        .env(PROXY_CHILD, format!("http://vm:{port}"))
        .env("HTTP_PROXY", &proxy_url)
        .env("http_proxy", &proxy_url)
        .env("HTTPS_PROXY", &proxy_url)
        .env("https_proxy", &proxy_url)
        .env("ALL_PROXY", &proxy_url)
        .env("all_proxy", &proxy_url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the child ran the test: {stdout}"
    );
    assert_eq!(proxy.count(), 0, "the proxy got a request");
    assert_eq!(target.count(), 0);
}
