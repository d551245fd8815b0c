//! `/v2/auth`: credentials, downscoping, anonymous access, token claims.

use http::StatusCode;
use serde_json::Value;

use super::{Fixture, basic};
use crate::accounts::credentials::basic_header;
use crate::auth::token::{AccessEntry, Claims, ISSUER};

const AUTH: &str = "/v2/auth?service=registry.test";

impl Fixture {
    /// Ask `/v2/auth` for `scopes`; returns the status and, on 200, the verified claims.
    async fn token(
        &self,
        auth: Option<&str>,
        scopes: &[&str],
    ) -> (StatusCode, Option<Claims>, Value) {
        let mut uri = AUTH.to_owned();
        for s in scopes {
            uri.push_str("&scope=");
            uri.push_str(s);
        }
        let (status, body) = self.call("GET", &uri, auth, None).await;
        let claims = (status == StatusCode::OK).then(|| {
            assert_eq!(body["token"], body["access_token"]);
            let token = body["token"].as_str().unwrap();
            self.state
                .keys
                .verify(token, &self.state.config.server_hostname)
                .unwrap()
        });
        (status, claims, body)
    }

    /// The granted actions on `repo`, `None` when the token has no entry for it.
    async fn granted(&self, auth: Option<&str>, repo: &str, actions: &str) -> Option<Vec<String>> {
        let scope = format!("repository:{repo}:{actions}");
        let (status, claims, body) = self.token(auth, &[&scope]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        claims
            .unwrap()
            .access
            .into_iter()
            .find(|a| a.name == repo)
            .map(|a| a.actions)
    }
}

fn actions(v: &[&str]) -> Option<Vec<String>> {
    Some(v.iter().map(|s| (*s).to_owned()).collect())
}

#[tokio::test]
async fn wrong_credentials_are_401_without_saying_which_part() {
    let f = Fixture::new().await;
    let mut messages = Vec::new();
    for auth in [
        basic_header("alice", "wrong"),
        basic_header("nobody", "pw-nobody"),
        basic_header("acme+reader", "wrong"),
        basic_header("$token", "wrong"),
        basic_header("acme", "pw-acme"),
        "Basic !!!".to_owned(),
    ] {
        let (status, _, body) = f.token(Some(&auth), &["repository:acme/app:pull"]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
        messages.push(body["errors"][0]["message"].clone());
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "{messages:?}");
}

#[tokio::test]
async fn claims_have_the_docker_token_shape() {
    let f = Fixture::new().await;
    let (status, claims, body) = f
        .token(Some(&basic("alice")), &["repository:acme/app:pull,push"])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["expires_in"], 3600);
    assert!(body["issued_at"].as_str().unwrap().ends_with('Z'));
    let c = claims.unwrap();
    assert_eq!(
        (c.iss.as_str(), c.aud.as_str(), c.sub.as_str()),
        (ISSUER, "registry.test", "alice")
    );
    assert_eq!(c.exp - c.iat, 3600);
    assert_eq!(c.nbf, c.iat);
    assert!(uuid::Uuid::parse_str(&c.jti).is_ok());
    assert_eq!(
        (c.context.kind.as_str(), c.context.user.as_deref()),
        ("user", Some("alice"))
    );
    assert_eq!(
        c.access,
        vec![AccessEntry {
            kind: "repository".into(),
            name: "acme/app".into(),
            actions: vec!["pull".into(), "push".into()],
        }]
    );
    // Login without a scope (docker login) just checks the credentials.
    let (status, claims, _) = f.token(Some(&basic("bob")), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(claims.unwrap().access.is_empty());
}

#[tokio::test]
async fn read_only_robot_is_downscoped_to_pull() {
    let f = Fixture::new().await;
    let auth = basic_header("acme+reader", &f.reader_token);
    assert_eq!(
        f.granted(Some(&auth), "acme/app", "pull,push").await,
        actions(&["pull"])
    );
    let (_, claims, _) = f.token(Some(&auth), &[]).await;
    let c = claims.unwrap();
    assert_eq!(
        (c.sub.as_str(), c.context.kind.as_str()),
        ("acme+reader", "robot")
    );
    // Robots get nothing from their owner's rights.
    assert_eq!(
        f.granted(Some(&auth), "alice/private", "pull").await,
        actions(&[])
    );
}

#[tokio::test]
async fn regenerated_robot_token_replaces_the_old_one() {
    let f = Fixture::new().await;
    let old = basic_header("acme+reader", &f.reader_token);
    let (status, _, _) = f.token(Some(&old), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = f
        .call(
            "POST",
            "/api/v1/organization/acme/robots/reader/regenerate",
            Some(&basic("alice")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = basic_header("acme+reader", body["token"].as_str().unwrap());
    let (status, _, _) = f.token(Some(&old), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        f.granted(Some(&new), "acme/app", "pull").await,
        actions(&["pull"])
    );
}

#[tokio::test]
async fn anonymous_gets_pull_on_public_repositories_only() {
    let f = Fixture::new().await;
    assert_eq!(
        f.granted(None, "acme/pub", "pull,push").await,
        actions(&["pull"])
    );
    // No entry at all for the rest, so the registry asks the client to log in (401).
    assert_eq!(f.granted(None, "acme/app", "pull").await, None);
    assert_eq!(f.granted(None, "acme/missing", "pull,push").await, None);
    let (_, claims, _) = f.token(None, &[]).await;
    let c = claims.unwrap();
    assert_eq!((c.sub.as_str(), c.context.kind.as_str()), ("", "anonymous"));

    let closed = Fixture::with(|c| c.anonymous_access = false).await;
    let (status, _, body) = closed.token(None, &["repository:acme/pub:pull"]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    // Logged-in users still read public repositories.
    assert_eq!(
        closed
            .granted(Some(&basic("bob")), "acme/pub", "pull,push")
            .await,
        actions(&["pull"])
    );
}

#[tokio::test]
async fn push_to_a_missing_repository_needs_create_rights() {
    let f = Fixture::new().await;
    let alice = basic("alice");
    let bob = basic("bob");
    let carol = basic("carol");
    assert_eq!(
        f.granted(Some(&bob), "bob/new", "push").await,
        actions(&["pull", "push"])
    );
    assert_eq!(
        f.granted(Some(&bob), "alice/new", "pull,push").await,
        actions(&[])
    );
    assert_eq!(
        f.granted(Some(&alice), "acme/new", "pull,push").await,
        actions(&["pull", "push"])
    );
    // carol's team has the creator role in acme: she may create, but not touch acme/app.
    assert_eq!(
        f.granted(Some(&carol), "acme/new", "push").await,
        actions(&["pull", "push"])
    );
    assert_eq!(
        f.granted(Some(&carol), "acme/app", "pull,push").await,
        actions(&[])
    );
    assert_eq!(
        f.granted(Some(&bob), "nobody/new", "pull,push").await,
        actions(&[])
    );
}

#[tokio::test]
async fn star_needs_admin_and_superusers_have_it_everywhere() {
    let f = Fixture::new().await;
    let all = "pull,push,delete,*";
    assert_eq!(
        f.granted(Some(&basic("alice")), "acme/app", all).await,
        actions(&["pull", "push", "delete", "*"])
    );
    assert_eq!(
        f.granted(Some(&basic("root")), "alice/private", all).await,
        actions(&["pull", "push", "delete", "*"])
    );
    assert_eq!(
        f.granted(Some(&basic("bob")), "acme/pub", all).await,
        actions(&["pull"])
    );
}

#[tokio::test]
async fn dollar_token_logs_in_with_an_access_token() {
    let f = Fixture::new().await;
    let auth = basic_header("$token", &f.alice_token);
    let (status, claims, _) = f
        .token(Some(&auth), &["repository:alice/private:pull"])
        .await;
    assert_eq!(status, StatusCode::OK);
    let c = claims.unwrap();
    assert_eq!(
        (c.sub.as_str(), c.context.kind.as_str()),
        ("alice", "token")
    );
    assert_eq!(c.access[0].actions, vec!["pull".to_owned()]);
}

#[tokio::test]
async fn bad_scopes_are_400_and_unknown_types_ignored() {
    let f = Fixture::new().await;
    let (status, _, body) = f
        .token(Some(&basic("bob")), &["repository:NoNamespace:pull"])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, claims, _) = f.token(Some(&basic("bob")), &["plugin:thing:use"]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(claims.unwrap().access.is_empty());
}

#[tokio::test]
async fn oauth2_post_password_grant_works() {
    let f = Fixture::new().await;
    let form = "grant_type=password&username=alice&password=pw-alice&service=registry.test\
                &scope=repository%3Aacme%2Fapp%3Apull+repository%3Aacme%2Fpub%3Apull";
    let req = http::Request::post("/v2/auth")
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(axum::body::Body::from(form))
        .unwrap();
    let resp = tower::ServiceExt::oneshot(crate::router(f.state.clone()), req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    let c = f
        .state
        .keys
        .verify(body["access_token"].as_str().unwrap(), "registry.test")
        .unwrap();
    assert_eq!(c.access.len(), 2);
    let (status, _) = f.call("POST", "/v2/auth", None, None).await;
    // An empty form is an anonymous request with no scope.
    assert_eq!(status, StatusCode::OK);
}
