//! REST: the user, robots, organisations, teams and the superuser API.

use http::StatusCode;
use serde_json::json;

use super::{Fixture, basic};
use crate::accounts::credentials::basic_header;

#[tokio::test]
async fn user_info_by_password_and_bearer_token() {
    let f = Fixture::new().await;
    let bearer = format!("Bearer {}", f.alice_token);
    for auth in [
        basic("alice"),
        bearer,
        basic_header("$token", &f.alice_token),
    ] {
        let (status, v) = f.call("GET", "/api/v1/user/", Some(&auth), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["username"], "alice");
        assert_eq!(v["super_user"], false);
        assert_eq!(v["organizations"][0]["name"], "acme");
        assert_eq!(v["organizations"][0]["is_org_admin"], true);
    }
    let (_, v) = f
        .call("GET", "/api/v1/user", Some(&basic("root")), None)
        .await;
    assert_eq!(v["super_user"], true);
    let robot = basic_header("acme+reader", &f.reader_token);
    let (_, v) = f.call("GET", "/api/v1/user/", Some(&robot), None).await;
    assert_eq!(
        (v["username"].clone(), v["is_robot"].clone()),
        (json!("acme+reader"), json!(true))
    );
}

#[tokio::test]
async fn user_robots_lifecycle() {
    let f = Fixture::new().await;
    let bob = basic("bob");
    let (status, v) = f
        .call(
            "PUT",
            "/api/v1/user/robots/deploy",
            Some(&bob),
            Some(json!({"description": "ci"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["name"].clone(), v["description"].clone()),
        (json!("bob+deploy"), json!("ci"))
    );
    let token = v["token"].as_str().unwrap().to_owned();
    // GET never shows the token (only its hash is stored).
    let (status, v) = f
        .call("GET", "/api/v1/user/robots/deploy", Some(&bob), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(v.get("token").is_none(), "{v}");
    let (_, v) = f.call("GET", "/api/v1/user/robots", Some(&bob), None).await;
    assert_eq!(v["robots"].as_array().unwrap().len(), 1);
    let (status, _) = f
        .call("PUT", "/api/v1/user/robots/deploy", Some(&bob), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = f
        .call("PUT", "/api/v1/user/robots/Bad!", Some(&bob), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The robot works with the REST API too, but owns no robots.
    let robot = basic_header("bob+deploy", &token);
    let (status, _) = f
        .call("GET", "/api/v1/user/robots", Some(&robot), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, v) = f
        .call(
            "POST",
            "/api/v1/user/robots/deploy/regenerate",
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(v["token"].as_str().unwrap(), token);
    let (status, _) = f.call("GET", "/api/v1/user/", Some(&robot), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = f
        .call("DELETE", "/api/v1/user/robots/deploy", Some(&bob), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = f
        .call("GET", "/api/v1/user/robots/deploy", Some(&bob), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn organisation_robots_are_for_org_admins() {
    let f = Fixture::new().await;
    let (status, v) = f
        .call(
            "PUT",
            "/api/v1/organization/acme/robots/pusher",
            Some(&basic("bob")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let (status, _) = f
        .call(
            "GET",
            "/api/v1/organization/acme/robots",
            Some(&basic("carol")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, v) = f
        .call(
            "PUT",
            "/api/v1/organization/acme/robots/pusher",
            Some(&basic("alice")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(v["name"], "acme+pusher");
    let (_, v) = f
        .call(
            "GET",
            "/api/v1/organization/acme/robots/",
            Some(&basic("root")),
            None,
        )
        .await;
    let names: Vec<&str> = v["robots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme+pusher", "acme+reader"]);
    let (status, _) = f
        .call(
            "GET",
            "/api/v1/organization/alice/robots",
            Some(&basic("alice")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn organisations_teams_and_members() {
    let f = Fixture::new().await;
    let bob = basic("bob");
    let (status, v) = f
        .call(
            "POST",
            "/api/v1/organization/",
            Some(&bob),
            Some(json!({"name": "bobco", "email": "b@x.test"})),
        )
        .await;
    assert_eq!((status, v), (StatusCode::CREATED, json!("Created")));
    let (status, _) = f
        .call(
            "POST",
            "/api/v1/organization/",
            Some(&bob),
            Some(json!({"name": "bobco"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, v) = f
        .call("GET", "/api/v1/organization/bobco", Some(&bob), None)
        .await;
    assert_eq!(v["is_admin"], true);
    assert_eq!(v["teams"]["owners"]["role"], "admin");
    assert_eq!(v["email"], "b@x.test");
    // Outsiders see the name only.
    let (_, v) = f
        .call(
            "GET",
            "/api/v1/organization/bobco",
            Some(&basic("carol")),
            None,
        )
        .await;
    assert_eq!(
        (v["is_member"].clone(), v.get("teams")),
        (json!(false), None)
    );

    let team = Some(json!({"role": "creator", "description": "builds"}));
    let (status, _) = f
        .call(
            "PUT",
            "/api/v1/organization/bobco/team/ci",
            Some(&basic("carol")),
            team.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, v) = f
        .call(
            "PUT",
            "/api/v1/organization/bobco/team/ci",
            Some(&bob),
            team,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (v["role"].clone(), v["member_count"].clone()),
        (json!("creator"), json!(0))
    );
    let (status, _) = f
        .call(
            "PUT",
            "/api/v1/organization/bobco/team/owners",
            Some(&bob),
            Some(json!({"role": "member"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, v) = f
        .call(
            "PUT",
            "/api/v1/organization/bobco/team/ci/members/carol",
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["name"], "carol");
    // A robot of another namespace cannot join.
    let (status, _) = f
        .call(
            "PUT",
            "/api/v1/organization/bobco/team/ci/members/acme+reader",
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, v) = f
        .call(
            "GET",
            "/api/v1/organization/bobco/team/ci/members",
            Some(&basic("carol")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (v["members"][0]["name"].clone(), v["can_edit"].clone()),
        (json!("carol"), json!(false))
    );
    let (status, _) = f
        .call(
            "GET",
            "/api/v1/organization/bobco/team/ci/members",
            Some(&basic("alice")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // carol may now create repositories in bobco.
    let new = Some(json!({"namespace": "bobco", "repository": "tool", "visibility": "private"}));
    let (status, _) = f
        .call("POST", "/api/v1/repository", Some(&basic("carol")), new)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = f
        .call(
            "DELETE",
            "/api/v1/organization/bobco/team/owners/members/bob",
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = f
        .call(
            "DELETE",
            "/api/v1/organization/bobco/team/ci/members/carol",
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn superusers_create_users_with_generated_passwords() {
    let f = Fixture::new().await;
    let body = Some(json!({"username": "dave", "email": "dave@example.test"}));
    let (status, _) = f
        .call(
            "POST",
            "/api/v1/superuser/users/",
            Some(&basic("alice")),
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, v) = f
        .call(
            "POST",
            "/api/v1/superuser/users/",
            Some(&basic("root")),
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["username"], "dave");
    let password = v["password"].as_str().unwrap();
    assert_eq!(password.len(), 32);
    let (status, v) = f
        .call(
            "GET",
            "/api/v1/user/",
            Some(&basic_header("dave", password)),
            None,
        )
        .await;
    assert_eq!(
        (status, v["username"].clone()),
        (StatusCode::OK, json!("dave"))
    );
    let (status, _) = f
        .call(
            "POST",
            "/api/v1/superuser/users/",
            Some(&basic("root")),
            body,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, v) = f
        .call("GET", "/api/v1/superuser/users", Some(&basic("root")), None)
        .await;
    let users = v["users"].as_array().unwrap();
    assert_eq!(users.len(), 5);
    assert!(
        users
            .iter()
            .any(|u| u["username"] == "root" && u["super_user"] == true)
    );
}
