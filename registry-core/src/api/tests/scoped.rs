//! Scoped access tokens (buildman's build and pull tokens) at `/v2/auth`, on the distribution API
//! and on the REST API: the account's rights capped by the scope, nothing namespace-wide.

use http::StatusCode;
use serde_json::{Value, json};

use super::Fixture;
use crate::accounts;
use crate::accounts::credentials::basic_header;
use crate::accounts::permissions::Role;
use crate::accounts::tokens::{self, TokenScope};
use crate::auth::token::Claims;
use crate::db::now_ms;

impl Fixture {
    /// A token of `owner` limited to `repo` (`None`: all) with `max_role`, expiring in `ttl_ms`.
    async fn scoped_token(
        &self,
        owner: &str,
        repo: Option<&str>,
        max_role: Role,
        ttl_ms: Option<i64>,
    ) -> String {
        let owner = owner.to_owned();
        let scope = TokenScope {
            repository: repo.map(|r| r.parse().unwrap()),
            max_role,
            expires_at_ms: ttl_ms.map(|t| now_ms() + t),
        };
        self.state
            .db
            .write(move |tx| {
                let owner = accounts::find(tx, &owner)?.unwrap();
                tokens::create_scoped(tx, &owner, "build:test", &scope)
            })
            .await
            .unwrap()
    }

    /// `/v2/auth` with `auth` for `scopes`: the status and, on 200, the verified claims.
    async fn registry_token(&self, auth: &str, scopes: &[&str]) -> (StatusCode, Option<Claims>) {
        let mut uri = "/v2/auth?service=registry.test".to_owned();
        for s in scopes {
            uri.push_str("&scope=");
            uri.push_str(s);
        }
        let (status, body) = self.call("GET", &uri, Some(auth), None).await;
        let claims = body["token"].as_str().map(|t| {
            self.state
                .keys
                .verify(t, &self.state.config.server_hostname)
                .unwrap()
        });
        (status, claims)
    }
}

fn granted(claims: &Claims, repo: &str) -> Vec<String> {
    claims
        .access
        .iter()
        .find(|a| a.name == repo)
        .map(|a| a.actions.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_build_token_pushes_its_repository_and_nothing_else() {
    let f = Fixture::new().await;
    // root is superuser and alice owns acme: neither power passes through the scoped token.
    for owner in ["alice", "root"] {
        let t = f
            .scoped_token(owner, Some("acme/app"), Role::Write, Some(600_000))
            .await;
        let auth = basic_header("$token", &t);
        let (status, claims) = f
            .registry_token(
                &auth,
                &[
                    "repository:acme/app:pull,push,delete,*",
                    "repository:acme/pub:pull",
                    "repository:alice/private:pull",
                    "repository:acme/new:pull,push",
                    "registry:catalog:*",
                ],
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let c = claims.unwrap();
        assert_eq!(granted(&c, "acme/app"), ["pull", "push"], "{owner}");
        for other in ["acme/pub", "alice/private", "acme/new"] {
            assert!(granted(&c, other).is_empty(), "{owner} on {other}");
        }
        assert!(c.access.iter().all(|a| a.kind == "repository"), "{c:?}");
        assert_eq!(c.context.kind, "token");
        assert_eq!(
            c.context.token_scope.as_ref().map(|s| s.max_role.as_str()),
            Some("write")
        );
        // The registry token ends no later than the access token.
        assert!(c.exp * 1_000 <= u64::try_from(now_ms() + 600_000).unwrap());

        // On the distribution API, what the scope forbids is 403 DENIED, not a re-challenge.
        let bearer = format!("Bearer {}", f.state.keys.sign(&c).unwrap());
        for (method, uri) in [
            ("DELETE", "/v2/acme/app/manifests/latest"),
            ("POST", "/v2/acme/pub/blobs/uploads/"),
            ("POST", "/v2/acme/new/blobs/uploads/"),
        ] {
            let (status, body) = f.call(method, uri, Some(&bearer), None).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{owner} {method} {uri}: {body}"
            );
            assert_eq!(body["errors"][0]["code"], "DENIED");
        }
        let (status, body) = f
            .call("POST", "/v2/acme/app/blobs/uploads/", Some(&bearer), None)
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{owner}: {body}");
    }
}

#[tokio::test]
async fn a_robot_pull_token_pulls_what_the_robot_may_and_never_pushes() {
    let f = Fixture::new().await;
    let t = f.scoped_token("acme+reader", None, Role::Read, None).await;
    for user in ["acme+reader", "$token"] {
        let (status, claims) = f
            .registry_token(
                &basic_header(user, &t),
                &[
                    "repository:acme/app:pull,push",
                    "repository:alice/private:pull",
                ],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{user}");
        let c = claims.unwrap();
        assert_eq!(granted(&c, "acme/app"), ["pull"], "{user}");
        assert!(granted(&c, "alice/private").is_empty(), "{user}");
        assert_eq!(c.sub, "acme+reader");
    }
    // Only under its owner's name.
    let (status, _) = f.registry_token(&basic_header("acme+other", &t), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn expired_and_deleted_tokens_are_refused_like_wrong_ones() {
    let f = Fixture::new().await;
    let expired = f
        .scoped_token("alice", Some("acme/app"), Role::Write, Some(-1))
        .await;
    let deleted = f.scoped_token("alice", None, Role::Read, None).await;
    let n = f
        .state
        .db
        .write(|tx| tokens::delete_by_title(tx, "build:test"))
        .await
        .unwrap();
    assert_eq!(n, 2);
    for t in [expired, deleted] {
        let (status, _) = f
            .registry_token(&basic_header("$token", &t), &["repository:acme/app:pull"])
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = f
            .call("GET", "/api/v1/user/", Some(&format!("Bearer {t}")), None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn rest_calls_see_only_the_scoped_repository() {
    let f = Fixture::new().await;
    let t = f
        .scoped_token("root", Some("acme/app"), Role::Write, None)
        .await;
    let auth = format!("Bearer {t}");
    let call = |method: &'static str, uri: &'static str, body: Option<Value>| {
        let auth = auth.clone();
        let f = &f;
        async move { f.call(method, uri, Some(&auth), body).await.0 }
    };
    let (status, body) = f
        .call("GET", "/api/v1/repository/acme/app", Some(&auth), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&body["can_write"], &body["can_admin"]),
        (&json!(true), &json!(false))
    );
    let (_, me) = f.call("GET", "/api/v1/user/", Some(&auth), None).await;
    assert_eq!(me["super_user"], false);
    let refused = [
        call("GET", "/api/v1/repository/alice/private", None).await,
        call(
            "POST",
            "/api/v1/repository/acme/app/changevisibility",
            Some(json!({"visibility": "public"})),
        )
        .await,
        call("GET", "/api/v1/repository/acme/app/permissions/user/", None).await,
        call(
            "POST",
            "/api/v1/repository",
            Some(json!({"namespace": "acme", "repository": "new"})),
        )
        .await,
        call("GET", "/api/v1/superuser/users/", None).await,
        call(
            "POST",
            "/api/v1/organization/",
            Some(json!({"name": "neworg"})),
        )
        .await,
        call("GET", "/api/v1/organization/acme/robots", None).await,
        call("GET", "/api/v1/user/robots", None).await,
        call(
            "PUT",
            "/api/v1/organization/acme/team/devs",
            Some(json!({"role": "member"})),
        )
        .await,
        call("GET", "/api/v1/organization/acme/team/owners/members", None).await,
    ];
    assert!(
        refused.iter().all(|s| *s == StatusCode::FORBIDDEN),
        "{refused:?}"
    );
    let (_, org) = f
        .call("GET", "/api/v1/organization/acme", Some(&auth), None)
        .await;
    assert_eq!((&org["is_admin"], org.get("teams")), (&json!(false), None));
    // The scope names a repository that does not exist yet: creating exactly it is allowed.
    let t = f
        .scoped_token("alice", Some("acme/made"), Role::Write, None)
        .await;
    let (status, body) = f
        .call(
            "POST",
            "/api/v1/repository",
            Some(&format!("Bearer {t}")),
            Some(json!({"namespace": "acme", "repository": "made"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}
