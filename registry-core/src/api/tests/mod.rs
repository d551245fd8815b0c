//! Component tests of `/v2/auth` and the REST API: `crate::router(state).oneshot(req)` over a
//! temporary data directory, no sockets.

mod rest_accounts;
mod rest_repos;
mod scoped;
mod v2auth;

use axum::body::Body;
use http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt as _;

use crate::accounts::credentials::basic_header;
use crate::accounts::orgs::{self, TeamRole};
use crate::accounts::{AccountError, AccountKind, repositories, robots, secrets, tokens, users};
use crate::config::Config;
use crate::repos::Visibility;
use crate::state::AppState;

/// A server state over a temporary directory, seeded with:
/// - users `alice` (owns org `acme`), `bob`, `carol` (acme `builders` team, creator role),
///   `root` (superuser), all with password `pw-<name>`;
/// - repositories `acme/app` (private), `acme/pub` (public), `alice/private` (private);
/// - robot `acme+reader` with read on `acme/app`;
/// - an access token of alice.
pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) state: AppState,
    pub(super) reader_token: String,
    pub(super) alice_token: String,
}

pub(super) fn basic(user: &str) -> String {
    basic_header(user, &format!("pw-{user}"))
}

impl Fixture {
    pub(super) async fn new() -> Fixture {
        Self::with(|_| {}).await
    }

    pub(super) async fn with(tweak: impl FnOnce(&mut Config)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            super_users: vec!["root".to_owned()],
            server_hostname: "registry.test".to_owned(),
            ..Config::default()
        };
        tweak(&mut config);
        let state = AppState::open(config).unwrap();
        let hashes: Vec<(String, String)> = ["alice", "bob", "carol", "root"]
            .iter()
            .map(|u| {
                (
                    (*u).to_owned(),
                    secrets::hash_password(&format!("pw-{u}")).unwrap(),
                )
            })
            .collect();
        let (reader_token, alice_token) = state
            .db
            .write(move |tx| {
                for (name, hash) in &hashes {
                    users::create(tx, name, Some(&format!("{name}@example.test")), Some(hash))?;
                }
                let alice = crate::accounts::get_kind(tx, "alice", AccountKind::User)?;
                let carol = crate::accounts::get_kind(tx, "carol", AccountKind::User)?;
                let acme = orgs::create(tx, "acme", None, &alice)?;
                let builders = orgs::create_team(tx, &acme, "builders", TeamRole::Creator, "")?;
                orgs::add_member(tx, &acme, &builders, &carol)?;
                for (name, vis) in [
                    ("acme/app", Visibility::Private),
                    ("acme/pub", Visibility::Public),
                    ("alice/private", Visibility::Private),
                ] {
                    repositories::create(tx, &name.parse()?, vis, "")?;
                }
                let (reader, reader_token) = robots::create(tx, &acme, "reader", "")?;
                crate::accounts::permissions::set_for_account(
                    tx,
                    &"acme/app".parse()?,
                    &reader,
                    crate::accounts::permissions::Role::Read,
                )?;
                let alice_token = tokens::create(tx, &alice, "tests")?;
                Ok::<_, TestError>((reader_token, alice_token))
            })
            .await
            .unwrap();
        Fixture {
            _dir: dir,
            state,
            reader_token,
            alice_token,
        }
    }

    /// Send a request; returns the status and the body as JSON (`Null` when empty or not JSON).
    pub(super) async fn call(
        &self,
        method: &str,
        uri: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header(http::header::AUTHORIZATION, a);
        }
        let body = body.map_or(Body::empty(), |v| Body::from(v.to_string()));
        let resp = crate::router(self.state.clone())
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

/// Seeding errors of the fixture.
#[derive(Debug, thiserror::Error)]
pub(super) enum TestError {
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error(transparent)]
    Name(#[from] crate::names::NameError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}
