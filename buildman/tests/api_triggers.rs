//! Component tests of the build trigger REST API and the webhook endpoint (issue 5):
//! `buildman::api::routes(state).oneshot(req)` over temp-dir databases, no sockets.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module)]

#[path = "api_triggers/helpers.rs"]
mod helpers;
#[path = "api_triggers/lifecycle.rs"]
mod lifecycle;
#[path = "api_triggers/logs.rs"]
mod logs;
#[path = "api_triggers/manual.rs"]
mod manual;
#[allow(dead_code)]
#[path = "api_builds/support.rs"]
mod support;
#[path = "api_triggers/webhook.rs"]
mod webhook;

use helpers::{SECRET, TRIGGERS, activate, create, trigger_path, webhook_token};
use http::StatusCode;
use registry_core::accounts::tokens;
use serde_json::{Value, json};
use support::Fixture;

#[tokio::test]
async fn create_list_get_need_admin_and_show_quay_views() {
    let f = Fixture::new().await;
    for (user, status) in [
        (Some("carol"), StatusCode::FORBIDDEN),
        (Some("bob"), StatusCode::FORBIDDEN),
        (None, StatusCode::UNAUTHORIZED),
    ] {
        let r = f
            .call(
                "POST",
                TRIGGERS,
                user,
                Some(json!({"service": "custom-git"})),
            )
            .await;
        assert_eq!(r.status, status, "{user:?}: {:?}", r.json);
        assert_eq!(f.call("GET", TRIGGERS, user, None).await.status, status);
    }
    let r = f
        .call(
            "POST",
            TRIGGERS,
            Some("alice"),
            Some(json!({"service": "svn"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("custom-git"), "{}", r.message());

    let uuid = create(&f, "custom-git").await;
    let r = f
        .call("GET", &trigger_path(&uuid), Some("alice"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let v = &r.json;
    assert_eq!(v["id"], uuid.as_str());
    assert_eq!(v["service"], "custom-git");
    assert_eq!(
        (
            v["is_active"].as_bool(),
            v["enabled"].as_bool(),
            v["can_invoke"].as_bool()
        ),
        (Some(false), Some(true), Some(true))
    );
    assert_eq!(
        (&v["build_source"], &v["pull_robot"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(v["disabled_reason"], Value::Null);
    let creds = v["config"]["credentials"].as_array().unwrap();
    assert_eq!(creds.len(), 1, "no webhook URL before activation");
    assert_eq!(creds[0]["name"], "SSH Public Key");
    let public = creds[0]["value"].as_str().unwrap();
    assert!(public.starts_with("ssh-rsa AAAA") && public.ends_with(" Quarry Builder"));
    assert_eq!(v["config"]["has_webhook_secret"], false);

    let r = f.call("GET", TRIGGERS, Some("alice"), None).await;
    assert_eq!(r.json["triggers"].as_array().unwrap().len(), 1);
    assert_eq!(r.json["triggers"][0]["id"], uuid.as_str());
    // Another repository's path, or an unknown id: 404.
    let other = format!("/api/v1/repository/acme/pub/trigger/{uuid}");
    assert_eq!(
        f.call("GET", &other, Some("alice"), None).await.status,
        StatusCode::NOT_FOUND
    );
    let r = f
        .call("GET", &trigger_path("nope"), Some("alice"), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(
        r.message().starts_with("no trigger nope"),
        "{}",
        r.message()
    );
}

#[tokio::test]
async fn the_deploy_key_is_sealed_and_its_pem_gives_the_public_key() {
    let f = Fixture::new().await;
    let uuid = create(&f, "github").await;
    let id = uuid.clone();
    let t = f
        .state
        .builds
        .read(move |c| buildman::trigger::store::get(c, &id))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8_lossy(&t.secure_private_key);
    assert!(!raw.contains("PRIVATE KEY"), "the column is not plaintext");
    let pem = f.state.secrets.open_string(&t.secure_private_key).unwrap();
    assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, &pem).unwrap();
    std::fs::set_permissions(
        &path,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();
    let out = std::process::Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("ssh-keygen (OpenSSH) must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let derived = String::from_utf8(out.stdout).unwrap();
    let two = |s: &str| s.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    assert_eq!(two(&derived), two(&t.public_key));
}

#[tokio::test]
async fn activation_stores_the_config_seals_secrets_and_mints_the_token() {
    let f = Fixture::new().await;
    let uuid = create(&f, "custom-git").await;
    let config = json!({"build_source": "git@git.example:acme/app.git",
        "dockerfile_path": "app/Dockerfile", "context": "app", "webhook_secret": SECRET,
        "tag_templates": ["${commit_info.short_sha}"], "credentials": [{"name": "forged"}]});
    let body = json!({"config": config, "pull_robot": "acme+puller"});
    for user in ["carol", "bob"] {
        let path = format!("{}/activate", trigger_path(&uuid));
        let r = f.call("POST", &path, Some(user), Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{user}");
    }
    let r = activate(&f, &uuid, body.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    let v = &r.json;
    assert_eq!(v["is_active"], true);
    assert_eq!(v["build_source"], "git@git.example:acme/app.git");
    assert_eq!(v["repository_url"], "git@git.example:acme/app.git");
    assert_eq!(
        v["pull_robot"],
        json!({"name": "acme+puller", "kind": "user", "is_robot": true})
    );
    let c = &v["config"];
    assert_eq!(
        (&c["dockerfile_path"], &c["context"]),
        (&json!("/app/Dockerfile"), &json!("/app"))
    );
    assert_eq!(c["has_webhook_secret"], true);
    assert!(c.get("webhook_secret").is_none());
    assert!(!v.to_string().contains(SECRET), "the secret is never shown");
    let creds = c["credentials"].as_array().unwrap();
    assert_eq!(creds.len(), 2, "{creds:?}");
    let url = creds[1]["value"].as_str().unwrap();
    let token = webhook_token(v);
    assert_eq!(
        url,
        format!("http://$token:{token}@127.0.0.1:8080/webhooks/push/trigger/{uuid}")
    );

    // The token: alice's, write on acme/app only, titled after the trigger.
    let check = |t: String| {
        let db = f.state.registry.db.clone();
        async move { db.read(move |c| tokens::check(c, &t)).await.unwrap() }
    };
    let got = check(token.clone()).await.unwrap();
    let scope = got.scope.unwrap();
    assert_eq!(got.account.name, "alice");
    assert_eq!(scope.repository.unwrap().as_str(), "acme/app");
    assert_eq!(scope.max_role.as_str(), "write");
    // Stored sealed, not in clear.
    let id = uuid.clone();
    let raw: (Vec<u8>, Vec<u8>, String) = f
        .state
        .builds
        .read(move |c| {
            c.query_row(
                "SELECT secure_webhook_token, secure_webhook_secret, config FROM build_trigger \
                 WHERE uuid = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(registry_core::db::DbError::from)
        })
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&raw.0).contains(&token));
    assert!(!String::from_utf8_lossy(&raw.1).contains(SECRET));
    assert!(
        !raw.2.contains(SECRET) && !raw.2.contains("forged"),
        "{}",
        raw.2
    );

    // Re-activation replaces the token (the old one stops working) and the secret.
    let r = activate(
        &f,
        &uuid,
        json!({"config": {"build_source": "git@git.example:a/b.git"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["config"]["has_webhook_secret"], false);
    assert_eq!(r.json["pull_robot"], Value::Null);
    assert!(check(token).await.is_none());
    assert!(check(webhook_token(&r.json)).await.is_some());
}

#[tokio::test]
async fn activation_errors_name_the_key() {
    let f = Fixture::with(|s| s.allow_local_git_sources = false).await;
    let uuid = create(&f, "custom-git").await;
    let src = "git@git.example:acme/app.git";
    let cases = [
        (
            json!({"config": {"build_source": src, "branchtag_regex": "heads/("}}),
            "branchtag_regex",
        ),
        (
            json!({"config": {"build_source": src, "tag_templates": ["${commit_info.author}"]}}),
            "tag_templates",
        ),
        (
            json!({"config": {"build_source": src, "dockerfile_path": "/a/Dockerfile",
                              "context": "/b"}}),
            "dockerfile_path",
        ),
        (
            json!({"config": {"build_source": "/srv/app.git"}}),
            "local git sources are disabled",
        ),
        (
            json!({"config": {"build_source": "file:///srv/app.git"}}),
            "local git sources",
        ),
        (
            json!({"config": {"build_source": "ext::sh -c x"}}),
            "is invalid",
        ),
        (
            json!({"config": {"build_source": src, "webhook_secret": "short"}}),
            "webhook_secret",
        ),
        (json!({"config": {}}), "build_source is required"),
        (
            json!({"config": {"build_source": 5}}),
            "config build_source: expected a string, got 5",
        ),
        (
            json!({"config": {"build_source": src, "tag_templates": [1]}}),
            "config tag_templates: expected a list of strings",
        ),
        (
            json!({"config": {"build_source": "https://me:t0ken@git.example/a.git"}}),
            "use an ssh:// or user@host:path URL",
        ),
        (
            json!({"config": {"build_source": "http://git.example/a.git"}}),
            "is invalid",
        ),
        (json!({"pull_robot": "acme+puller"}), "config is invalid"),
    ];
    for (body, needle) in cases {
        let r = activate(&f, &uuid, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.json);
        assert!(r.message().contains(needle), "{body}: {}", r.message());
    }
    let foreign = json!({"config": {"build_source": src}, "pull_robot": "other+bot"});
    let r = activate(&f, &uuid, foreign).await;
    assert!(r.status.is_client_error(), "{:?}", r.json);
    assert!(r.message().contains("other+bot"), "{}", r.message());
    let r = f
        .call("GET", &trigger_path(&uuid), Some("alice"), None)
        .await;
    assert_eq!(r.json["is_active"], false, "nothing was stored");

    let gh = create(&f, "github").await;
    let r = activate(
        &f,
        &gh,
        json!({"config": {"build_source": "https://github.com/a/b"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("owner/name"), "{}", r.message());
}

#[tokio::test]
async fn enable_disable_and_delete() {
    let f = Fixture::new().await;
    let uuid = create(&f, "custom-git").await;
    let path = trigger_path(&uuid);
    let r = f
        .call("PUT", &path, Some("alice"), Some(json!({"enabled": false})))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "inactive: {:?}", r.json);
    assert!(r.message().contains("not active"), "{}", r.message());
    let r = activate(
        &f,
        &uuid,
        json!({"config": {"build_source": "git@h:a/b.git"}}),
    )
    .await;
    let token = webhook_token(&r.json);
    let r = f
        .call("PUT", &path, Some("carol"), Some(json!({"enabled": false})))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = f
        .call("PUT", &path, Some("alice"), Some(json!({"enabled": false})))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        (
            r.json["enabled"].as_bool(),
            r.json["disabled_reason"].as_str()
        ),
        (Some(false), Some("user_toggled"))
    );
    let id = uuid.clone();
    f.state
        .builds
        .write(move |tx| {
            tx.execute(
                "UPDATE build_trigger SET successive_failure_count = 4 WHERE uuid = ?1",
                [id],
            )
            .map_err(registry_core::db::DbError::from)
        })
        .await
        .unwrap();
    let r = f
        .call("PUT", &path, Some("alice"), Some(json!({"enabled": true})))
        .await;
    assert_eq!(
        (r.json["enabled"].as_bool(), &r.json["disabled_reason"]),
        (Some(true), &Value::Null)
    );
    let id = uuid.clone();
    let count: i64 = f
        .state
        .builds
        .read(move |c| {
            c.query_row(
                "SELECT successive_failure_count FROM build_trigger WHERE uuid = ?1",
                [id],
                |r| r.get(0),
            )
            .map_err(registry_core::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(count, 0, "enabling resets the counts");

    assert_eq!(
        f.call("DELETE", &path, Some("carol"), None).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        f.call("DELETE", &path, Some("alice"), None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        f.call("GET", &path, Some("alice"), None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        f.call("DELETE", &path, Some("alice"), None).await.status,
        StatusCode::NOT_FOUND
    );
    let gone = f
        .state
        .registry
        .db
        .read(move |c| tokens::check(c, &token))
        .await
        .unwrap();
    assert!(
        gone.is_none(),
        "the webhook token is deleted with the trigger"
    );
}
