//! REST: repositories, visibility and repository permissions; 401/403 paths.

use http::StatusCode;
use serde_json::json;

use super::{Fixture, basic};
use crate::accounts::credentials::basic_header;

#[tokio::test]
async fn no_or_wrong_credentials_are_401_with_quay_body() {
    let f = Fixture::new().await;
    for auth in [
        None,
        Some("Bearer nope"),
        Some("Basic !!"),
        Some(&*basic_header("alice", "x")),
    ] {
        let (status, body) = f.call("GET", "/api/v1/user/", auth, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(body["status"], 401);
        assert_eq!(body["error_type"], "invalid_token");
        assert!(body["error_message"].is_string());
    }
    let (status, _) = f
        .call(
            "POST",
            "/api/v1/repository",
            None,
            Some(json!({"namespace": "acme", "repository": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn create_get_and_change_visibility() {
    let f = Fixture::new().await;
    let bearer = format!("Bearer {}", f.alice_token);
    let body = json!({"namespace": "acme", "repository": "web", "visibility": "private",
                      "description": "the web app"});
    let (status, v) = f
        .call(
            "POST",
            "/api/v1/repository",
            Some(&bearer),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(
        v,
        json!({"namespace": "acme", "name": "web", "kind": "image"})
    );
    let (status, v) = f
        .call("POST", "/api/v1/repository/", Some(&bearer), Some(body))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error_message"], "repository \"acme/web\" already exists");

    let (status, v) = f
        .call("GET", "/api/v1/repository/acme/web", Some(&bearer), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (v["is_public"].clone(), v["can_admin"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(v["description"], "the web app");
    assert_eq!(v["is_organization"], true);
    // Private: others are refused, anonymous callers asked to log in.
    let (status, v) = f
        .call(
            "GET",
            "/api/v1/repository/acme/web",
            Some(&basic("bob")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(v["error_type"], "insufficient_scope");
    let (status, _) = f
        .call("GET", "/api/v1/repository/acme/web", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let public = Some(json!({"visibility": "public"}));
    let uri = "/api/v1/repository/acme/web/changevisibility";
    let (status, _) = f
        .call("POST", uri, Some(&basic("bob")), public.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, v) = f.call("POST", uri, Some(&bearer), public).await;
    assert_eq!((status, v), (StatusCode::OK, json!({"success": true})));
    let (status, v) = f
        .call("GET", "/api/v1/repository/acme/web", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (v["is_public"].clone(), v["can_write"].clone()),
        (json!(true), json!(false))
    );
    let (status, v) = f
        .call(
            "POST",
            uri,
            Some(&bearer),
            Some(json!({"visibility": "open"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn creation_rights_follow_the_namespace() {
    let f = Fixture::new().await;
    let new = |ns: &str, repo: &str| {
        Some(json!({"namespace": ns, "repository": repo, "visibility": "public"}))
    };
    let bob = basic("bob");
    let (status, _) = f
        .call("POST", "/api/v1/repository", Some(&bob), new("bob", "tool"))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, v) = f
        .call(
            "POST",
            "/api/v1/repository",
            Some(&bob),
            new("acme", "tool"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let (status, v) = f
        .call(
            "POST",
            "/api/v1/repository",
            Some(&bob),
            new("ghost", "tool"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error_message"], "namespace \"ghost\" does not exist");
    let (status, _) = f
        .call(
            "POST",
            "/api/v1/repository",
            Some(&bob),
            new("bob", "Bad Name"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // carol (creator team) creates in acme and becomes admin of what she created.
    let carol = basic("carol");
    let (status, _) = f
        .call(
            "POST",
            "/api/v1/repository",
            Some(&carol),
            new("acme", "tool"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, v) = f
        .call("GET", "/api/v1/repository/acme/tool", Some(&carol), None)
        .await;
    assert_eq!(v["can_admin"], true);
    let (status, _) = f
        .call("GET", "/api/v1/repository/acme/app", Some(&carol), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Admin of the namespace sees a 404 for what does not exist; others a 403.
    let (status, _) = f
        .call(
            "GET",
            "/api/v1/repository/acme/none",
            Some(&basic("alice")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = f
        .call("GET", "/api/v1/repository/acme/none", Some(&bob), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn user_and_robot_permissions() {
    let f = Fixture::new().await;
    let alice = basic("alice");
    let base = "/api/v1/repository/acme/app/permissions/user";
    let write = Some(json!({"role": "write"}));
    let (status, v) = f
        .call("PUT", &format!("{base}/bob"), Some(&alice), write.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"role": "write", "name": "bob", "is_robot": false, "is_org_member": false})
    );
    // A literal `+` and `%2B` both name the robot.
    let (status, v) = f
        .call(
            "PUT",
            &format!("{base}/acme+reader"),
            Some(&alice),
            write.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (v["is_robot"].clone(), v["is_org_member"].clone()),
        (json!(true), json!(true))
    );
    let (status, v) = f
        .call("GET", &format!("{base}/acme%2Breader"), Some(&alice), None)
        .await;
    assert_eq!(
        (status, v["role"].clone()),
        (StatusCode::OK, json!("write"))
    );
    let (_, v) = f.call("GET", &format!("{base}/"), Some(&alice), None).await;
    let names: Vec<&String> = v["permissions"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["acme+reader", "bob"]);

    // bob may write but not administer.
    let (status, _) = f
        .call("GET", &format!("{base}/"), Some(&basic("bob")), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, v) = f
        .call("PUT", &format!("{base}/ghost"), Some(&alice), write.clone())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, _) = f
        .call(
            "PUT",
            &format!("{base}/bob"),
            Some(&alice),
            Some(json!({"role": "owner"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = f
        .call("PUT", &format!("{base}/bob"), Some(&alice), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, _) = f
        .call("DELETE", &format!("{base}/bob"), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = f
        .call("GET", &format!("{base}/bob"), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = f
        .call("DELETE", &format!("{base}/bob"), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn team_permissions() {
    let f = Fixture::new().await;
    let alice = basic("alice");
    let base = "/api/v1/repository/acme/app/permissions/team";
    let (status, v) = f
        .call(
            "PUT",
            &format!("{base}/builders"),
            Some(&alice),
            Some(json!({"role": "write"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"role": "write", "name": "builders"}));
    // carol is in builders: she can now push to acme/app.
    let (_, v) = f
        .call(
            "GET",
            "/api/v1/repository/acme/app",
            Some(&basic("carol")),
            None,
        )
        .await;
    assert_eq!(v["can_write"], true);
    let (_, v) = f.call("GET", &format!("{base}/"), Some(&alice), None).await;
    assert_eq!(v["permissions"]["builders"]["role"], "write");
    let (status, _) = f
        .call("GET", &format!("{base}/builders"), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = f
        .call(
            "PUT",
            &format!("{base}/nope"),
            Some(&alice),
            Some(json!({"role": "read"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Teams exist only in organisations.
    let (status, v) = f
        .call(
            "PUT",
            "/api/v1/repository/alice/private/permissions/team/builders",
            Some(&alice),
            Some(json!({"role": "read"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, _) = f
        .call("DELETE", &format!("{base}/builders"), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = f
        .call("GET", &format!("{base}/builders"), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
