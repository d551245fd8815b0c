//! Shared helpers of the in-process distribution API tests: a temp-dir registry with the `acme`
//! organisation, tokens minted with the registry's own key, and `router(state).oneshot(..)`.

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use tower::ServiceExt as _;

use crate::auth::token::{AccessEntry, Claims, ISSUER, TokenContext, now_s};
use crate::config::Config;
use crate::db::DbError;
use crate::digest::{Algorithm, Digest};
use crate::state::AppState;

pub(crate) const OCI_MANIFEST_TYPE: &str = crate::manifest::OCI_MANIFEST;

pub(crate) struct Harness {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) state: AppState,
}

pub(crate) struct Resp {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Resp {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub(crate) fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

pub(crate) fn req(method: &str, uri: &str) -> http::request::Builder {
    Request::builder().method(method).uri(uri)
}

impl Harness {
    pub(crate) async fn new() -> Harness {
        Harness::with_config(|_| {}).await
    }

    pub(crate) async fn with_config(f: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        f(&mut config);
        let state = AppState::open(config).unwrap();
        state
            .db
            .write(|tx| {
                tx.execute(
                    "INSERT INTO account (name, kind, created_at) VALUES ('acme', 'org', 0)",
                    [],
                )
                .map_err(DbError::from)
            })
            .await
            .unwrap();
        Harness { dir, state }
    }

    /// Simulate a restart: a fresh state (database handles, lock map) over the same directory.
    pub(crate) fn restart(&mut self) {
        let config = (*self.state.config).clone();
        self.state = AppState::open(config).unwrap();
    }

    /// A token for `repos` with `actions` (empty: pull, push and delete).
    pub(crate) fn token(&self, repos: &[&str], actions: &[&str]) -> String {
        let actions: Vec<String> = if actions.is_empty() {
            vec!["pull".into(), "push".into(), "delete".into()]
        } else {
            actions.iter().map(|a| (*a).to_owned()).collect()
        };
        let now = now_s();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: "alice".into(),
            aud: self.state.config.server_hostname.clone(),
            exp: now + 600,
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            access: repos
                .iter()
                .map(|r| AccessEntry {
                    kind: "repository".into(),
                    name: (*r).to_owned(),
                    actions: actions.clone(),
                })
                .collect(),
            context: TokenContext {
                kind: "user".into(),
                user: Some("alice".into()),
                token_scope: None,
            },
        };
        self.state.keys.sign(&claims).unwrap()
    }

    /// A request with a token for the repository named in `uri`.
    pub(crate) fn authed(
        &self,
        method: &str,
        uri: &str,
        actions: &[&str],
    ) -> http::request::Builder {
        let path = uri.split('?').next().unwrap();
        let repo = path
            .strip_prefix("/v2/")
            .and_then(|rest| super::path::parse(rest).ok())
            .map(|t| t.name.to_string());
        let repos: Vec<&str> = repo.iter().map(String::as_str).collect();
        req(method, uri).header(
            "authorization",
            format!("Bearer {}", self.token(&repos, actions)),
        )
    }

    pub(crate) async fn send(&self, request: Request<Body>) -> Resp {
        let resp = crate::router(self.state.clone())
            .oneshot(request)
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn get(&self, uri: &str) -> Resp {
        self.send(
            self.authed("GET", uri, &["pull"])
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    /// Monolithic upload of `bytes` into `repo`.
    pub(crate) async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        let d = Digest::of(Algorithm::Sha256, bytes);
        let uri = format!("/v2/{repo}/blobs/uploads/?digest={d}");
        let r = self
            .send(
                self.authed("POST", &uri, &[])
                    .body(Body::from(bytes.to_vec()))
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        d
    }

    /// Push `config` and `layers` as blobs and return an OCI image manifest over them, with
    /// `extra` JSON members (starting with a comma) appended.
    pub(crate) async fn image(
        &self,
        repo: &str,
        config: &[u8],
        layers: &[&[u8]],
        extra: &str,
    ) -> Vec<u8> {
        let c = self.push_blob(repo, config).await;
        let mut ls = Vec::new();
        for l in layers {
            let d = self.push_blob(repo, l).await;
            ls.push(format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#,
                l.len()
            ));
        }
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST_TYPE}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{}}},"layers":[{}]{extra}}}"#,
            config.len(),
            ls.join(",")
        )
        .into_bytes()
    }

    pub(crate) async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Resp {
        let uri = format!("/v2/{repo}/manifests/{reference}");
        self.send(
            self.authed("PUT", &uri, &[])
                .header("content-type", media_type)
                .body(Body::from(bytes.to_vec()))
                .unwrap(),
        )
        .await
    }
}
