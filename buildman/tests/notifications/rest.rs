//! The REST API of notifications and the in-app list.

use std::time::Duration;

use buildman::events::BuildEvent;
use buildman::model::Phase;
use buildman::notify;
use http::StatusCode;
use registry_core::accounts::orgs::{self, TeamRole};
use registry_core::accounts::permissions::{self, Role};
use serde_json::{Value, json};

use super::driving::round;
use super::support::Fixture;
use super::{LIST, change, pending, pending_all, trigger_build};

#[tokio::test]
async fn in_app_notifications_for_a_user_a_team_and_the_org_admins() {
    let f = Fixture::new(|_| {}).await;
    for target in [
        json!({"kind": "user", "name": "carol"}),
        json!({"kind": "team", "name": "devs"}),
        json!({"kind": "org", "name": "acme"}),
    ] {
        f.notification(
            json!({"event": "build_start", "method": "quay_notification",
                              "config": {"target": target}}),
        )
        .await;
    }
    let (_, b) = trigger_build(&f, "github").await;
    change(&f, &b.uuid, Phase::Building, BuildEvent::Start, None).await;
    let parts = f.parts(Duration::from_secs(30));
    notify::dispatch_pending(&parts).await.unwrap();
    assert_eq!(round(&parts).await, 3);
    assert!(pending(&f).await.is_empty(), "{:?}", pending_all(&f).await);

    const MINE: &str = "/api/v1/user/notifications";
    for user in ["carol", "dave", "erin", "alice"] {
        let r = f.call("GET", MINE, Some(user), None).await;
        assert_eq!(r.status, StatusCode::OK);
        let list = r.json["notifications"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{user}: {}", r.json);
        assert_eq!(list[0]["kind"], "build_start");
        assert_eq!(list[0]["metadata"]["build_id"], b.uuid.as_str());
        assert_eq!(list[0]["dismissed"], false);
        assert_eq!(list[0]["organization"], Value::Null);
        assert!(list[0]["created"].as_str().unwrap().ends_with("-0000"));
    }
    let r = f.call("GET", MINE, Some("bob"), None).await;
    assert_eq!(r.json["notifications"], json!([]));
    assert_eq!(
        status(&f, "GET", MINE, None).await,
        StatusCode::UNAUTHORIZED
    );

    let dave = f.call("GET", MINE, Some("dave"), None).await.json["notifications"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let one = format!("{MINE}/{dave}");
    let r = f
        .call("PUT", &one, Some("erin"), Some(json!({"dismissed": true})))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "others cannot touch it");
    let r = f
        .call("PUT", &one, Some("dave"), Some(json!({"dismissed": true})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = f.call("GET", MINE, Some("dave"), None).await;
    assert_eq!(r.json["notifications"][0]["dismissed"], true);
    let r = f.call("GET", MINE, Some("erin"), None).await;
    assert_eq!(r.json["notifications"][0]["dismissed"], false);
    let r = f
        .call("PUT", &one, Some("dave"), Some(json!({"dismissed": "yes"})))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn rest_create_list_get_delete_reset_test_with_permissions() {
    let f =
        Fixture::new(|c| c.webhook_hostname_blacklist = vec!["internal.example.com".into()]).await;
    let body = json!({"event": "build_failure", "method": "webhook", "title": " on failure ",
                      "config": {"url": "https://hooks.example.com/x"},
                      "eventConfig": {"ref-regex": "refs/heads/.*"}});
    // Permissions: admin only; anonymous 401; no repository 404.
    for (user, want) in [
        (Some("carol"), StatusCode::FORBIDDEN),
        (Some("bob"), StatusCode::FORBIDDEN),
        (Some("dave"), StatusCode::FORBIDDEN),
        (None, StatusCode::UNAUTHORIZED),
    ] {
        assert_eq!(
            f.call("POST", LIST, user, Some(body.clone())).await.status,
            want,
            "{user:?}"
        );
        assert_eq!(
            f.call("GET", LIST, user, None).await.status,
            want,
            "{user:?}"
        );
    }
    let r = f
        .call(
            "GET",
            "/api/v1/repository/acme/nope/notification/",
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let r = f
        .call("POST", LIST, Some("alice"), Some(body.clone()))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let uuid = r.json["uuid"].as_str().unwrap().to_owned();
    assert_eq!(
        r.json,
        json!({"uuid": uuid, "title": "on failure", "event": "build_failure", "method": "webhook",
               "config": {"url": "https://hooks.example.com/x"},
               "event_config": {"ref-regex": "refs/heads/.*"}, "number_of_failures": 0})
    );
    let one = format!("{LIST}{uuid}");
    let r = f.call("GET", LIST, Some("root"), None).await;
    assert_eq!(
        r.json["notifications"],
        json!([f.call("GET", &one, Some("alice"), None).await.json])
    );
    assert_eq!(
        status(&f, "GET", &one, Some("carol")).await,
        StatusCode::FORBIDDEN
    );
    let other = format!("/api/v1/repository/acme/other/notification/{uuid}");
    assert_eq!(
        status(&f, "GET", &other, Some("alice")).await,
        StatusCode::NOT_FOUND
    );

    // Test queues one delivery; reset answers 204.
    let r = f
        .call("POST", &format!("{one}/test"), Some("alice"), None)
        .await;
    assert_eq!((r.status, r.json), (StatusCode::OK, json!({})));
    let queued = pending(&f).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].payload["error_message"], "a sample build error");
    assert_eq!(
        status(&f, "POST", &one, Some("alice")).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status(&f, "POST", &one, Some("carol")).await,
        StatusCode::FORBIDDEN
    );

    // Delete takes its deliveries along.
    assert_eq!(
        status(&f, "DELETE", &one, Some("carol")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&f, "DELETE", &one, Some("alice")).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status(&f, "GET", &one, Some("alice")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status(&f, "DELETE", &one, Some("alice")).await,
        StatusCode::NOT_FOUND
    );
    assert!(pending(&f).await.is_empty());

    // 400s name what is wrong.
    let hook = |url: &str| json!({"url": url});
    for (bad, want) in [
        (
            json!({"event": "build_exploded", "method": "webhook", "config": hook("https://h.example")}),
            "unknown event",
        ),
        (
            json!({"event": "repo_push", "method": "pigeon", "config": hook("https://h.example")}),
            "unknown notification method",
        ),
        (
            json!({"event": "repo_push", "method": "webhook", "config": hook("http://localhost:9/")}),
            "NOTIFICATION_ALLOW_LOCAL_WEBHOOKS",
        ),
        (
            json!({"event": "repo_push", "method": "webhook", "config": hook("http://127.0.0.1:9/")}),
            "is local",
        ),
        (
            json!({"event": "repo_push", "method": "slack", "config": hook("https://internal.example.com/x")}),
            "WEBHOOK_HOSTNAME_BLACKLIST",
        ),
        (
            json!({"event": "repo_push", "method": "webhook", "config": hook("file:///etc/passwd")}),
            "only http",
        ),
        (
            json!({"event": "repo_push", "method": "email", "config": {"email": "ops@example.com"}}),
            "MAIL_SERVER",
        ),
        (
            json!({"event": "build_start", "method": "webhook", "config": hook("https://h.example"),
                "eventConfig": {"ref-regex": "refs/(heads"}}),
            "ref-regex",
        ),
        (
            json!({"event": "repo_push", "method": "quay_notification",
                "config": {"target": {"kind": "user", "name": "nobody"}}}),
            "does not exist",
        ),
        (
            json!({"event": "repo_push", "method": "quay_notification",
                "config": {"target": {"kind": "team", "name": "ghosts"}}}),
            "does not have",
        ),
        (
            json!({"event": "repo_push", "method": "webhook"}),
            "config.url is required",
        ),
        (
            json!({"event": "build_start", "method": "webhook", "config": hook("https://h.example"),
                "eventConfig": {"ref-regex": 5}}),
            "must be a string",
        ),
        (
            json!({"event": "build_start", "method": "webhook", "config": hook("https://h.example"),
                "eventConfig": {"ref-regex": "(?<=x)y"}}),
            "no lookaround or backreferences",
        ),
        (json!({"method": "webhook"}), "request body is invalid"),
    ] {
        let r = f.call("POST", LIST, Some("alice"), Some(bad.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.json);
        assert!(r.message().contains(want), "{bad}: {}", r.message());
    }
    assert_eq!(
        f.call("GET", LIST, Some("alice"), None).await.json["notifications"],
        json!([])
    );
    // An empty ref-regex is no filter, on repo_push too.
    let r = f
        .call(
            "POST",
            LIST,
            Some("alice"),
            Some(json!({"event": "repo_push", "method": "webhook",
                        "config": hook("https://h.example"), "eventConfig": {"ref-regex": ""}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
}

#[tokio::test]
async fn the_in_app_list_refuses_repository_scoped_tokens() {
    let f = Fixture::new(|_| {}).await;
    const MINE: &str = "/api/v1/user/notifications";
    let scoped = f.scoped_token("alice", Role::Admin).await;
    let r = f.call_with_token("GET", MINE, &scoped, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    assert!(r.message().contains("scoped token"), "{}", r.message());
    let r = f
        .call_with_token(
            "PUT",
            &format!("{MINE}/x"),
            &scoped,
            Some(json!({"dismissed": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    // The user's own token still works.
    assert_eq!(status(&f, "GET", MINE, Some("alice")).await, StatusCode::OK);
}

#[tokio::test]
async fn in_app_recipients_must_read_the_repository_at_creation_and_delivery() {
    let f = Fixture::new(|_| {}).await;
    // frank has no role on acme/app; team ops has him as a member.
    f.state
        .registry
        .db
        .write(|tx| {
            let acme = registry_core::accounts::find(tx, "acme")?.unwrap();
            let frank = registry_core::accounts::find(tx, "frank")?.unwrap();
            let ops = orgs::create_team(tx, &acme, "ops", TeamRole::Member, "")?;
            orgs::add_member(tx, &acme, &ops, &frank)
        })
        .await
        .unwrap();
    for (target, want) in [
        (
            json!({"kind": "user", "name": "frank"}),
            "config.target user \"frank\" has no read access to repository \"acme/app\"",
        ),
        (
            json!({"kind": "team", "name": "ops"}),
            "config.target team \"ops\" (member \"frank\") has no read access",
        ),
    ] {
        let r = f
            .call(
                "POST",
                LIST,
                Some("alice"),
                Some(
                    json!({"event": "build_start", "method": "quay_notification",
                            "config": {"target": target}}),
                ),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
        assert!(r.message().contains(want), "{}", r.message());
    }

    // carol (write) is accepted, then loses her role: the delivery skips her, writes nothing
    // for her, and is done (not retried).
    f.notification(
        json!({"event": "build_start", "method": "quay_notification",
                          "config": {"target": {"kind": "user", "name": "carol"}}}),
    )
    .await;
    f.notification(
        json!({"event": "build_start", "method": "quay_notification",
                          "config": {"target": {"kind": "team", "name": "devs"}}}),
    )
    .await;
    f.state
        .registry
        .db
        .write(|tx| {
            let carol = registry_core::accounts::find(tx, "carol")?.unwrap();
            permissions::remove_for_account(tx, &"acme/app".parse().unwrap(), &carol)
        })
        .await
        .unwrap();
    let (_, b) = trigger_build(&f, "github").await;
    change(&f, &b.uuid, Phase::Building, BuildEvent::Start, None).await;
    let parts = f.parts(Duration::from_secs(30));
    notify::dispatch_pending(&parts).await.unwrap();
    assert_eq!(round(&parts).await, 2);
    assert!(pending(&f).await.is_empty(), "{:?}", pending_all(&f).await);
    const MINE: &str = "/api/v1/user/notifications";
    let r = f.call("GET", MINE, Some("carol"), None).await;
    assert_eq!(r.json["notifications"], json!([]));
    for user in ["dave", "erin"] {
        let r = f.call("GET", MINE, Some(user), None).await;
        assert_eq!(
            r.json["notifications"].as_array().unwrap().len(),
            1,
            "{user}"
        );
    }
}

/// The status of `f.call(method, uri, user)` with no body.
async fn status(f: &Fixture, method: &str, uri: &str, user: Option<&str>) -> StatusCode {
    f.call(method, uri, user, None).await.status
}
