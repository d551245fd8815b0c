//! The fixture of `api_builds.rs`: a registry-core state and `builds.db` in a temp dir, accounts
//! created through `registry_core::accounts`, and a fake `BuildControl` that records calls.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use buildman::api::{ApiSettings, ApiState};
use buildman::control::{BuildControl, CancelOutcome};
use http::{HeaderMap, Request, StatusCode};
use registry_core::accounts::permissions::{self, Role};
use registry_core::accounts::{AccountError, orgs, repositories, robots, tokens, users};
use registry_core::config::Config;
use registry_core::repos::Visibility;
use registry_core::state::AppState;
use serde_json::Value;
use tower::ServiceExt as _;

pub(crate) const BASE: &str = "http://127.0.0.1:8080";
pub(crate) const CAP: u64 = 1024;

/// Records `wake` and `cancel` calls; `cancel` answers `outcome`.
#[derive(Debug)]
pub(crate) struct FakeControl {
    pub(crate) wakes: AtomicUsize,
    pub(crate) cancels: Mutex<Vec<String>>,
    pub(crate) outcome: Mutex<Result<CancelOutcome, String>>,
}

#[async_trait::async_trait]
impl BuildControl for FakeControl {
    fn wake(&self) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }

    async fn cancel(&self, uuid: &str) -> Result<CancelOutcome, String> {
        self.cancels.lock().unwrap().push(uuid.to_owned());
        self.outcome.lock().unwrap().clone()
    }
}

/// A response: status, headers, body bytes and the body as JSON (`Null` if not JSON).
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) bytes: Vec<u8>,
    pub(crate) json: Value,
}

impl Reply {
    /// The error message of a Quay error body.
    pub(crate) fn message(&self) -> &str {
        self.json["error_message"].as_str().unwrap_or("")
    }
}

/// Accounts (each with a bearer token in `tokens`):
/// - `alice` owns organisation `acme` (admin of its repositories and robots);
/// - `bob` has read on `acme/app`; `carol` has write on `acme/app`; `root` is superuser;
/// - `olga` owns organisation `other`, which has robot `other+bot`.
///
/// Repositories `acme/app` and `acme/team/app` (private), `acme/pub` (public); robot
/// `acme+puller`.
pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub(crate) state: ApiState,
    pub(crate) control: Arc<FakeControl>,
    tokens: Vec<(String, String)>,
}

impl Fixture {
    pub(crate) async fn new() -> Fixture {
        Self::with(|_| {}).await
    }

    pub(crate) async fn with(tweak: impl FnOnce(&mut ApiSettings)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().join("registry"),
            super_users: vec!["root".to_owned()],
            server_hostname: "registry.test".to_owned(),
            ..Config::default()
        };
        let registry = AppState::open(config).unwrap();
        let tokens = registry
            .db
            .write(|tx| {
                let mut out = Vec::new();
                let mut user = |name: &str| -> Result<_, AccountError> {
                    let account = users::create(tx, name, None, None)?;
                    out.push((name.to_owned(), tokens::create(tx, &account, "tests")?));
                    Ok(account)
                };
                let alice = user("alice")?;
                let bob = user("bob")?;
                let carol = user("carol")?;
                user("root")?;
                let olga = user("olga")?;
                let acme = orgs::create(tx, "acme", None, &alice)?;
                let other = orgs::create(tx, "other", None, &olga)?;
                let app = "acme/app".parse().unwrap();
                repositories::create(tx, &app, Visibility::Private, "")?;
                repositories::create(tx, &"acme/pub".parse().unwrap(), Visibility::Public, "")?;
                repositories::create(
                    tx,
                    &"acme/team/app".parse().unwrap(),
                    Visibility::Private,
                    "",
                )?;
                permissions::set_for_account(tx, &app, &bob, Role::Read)?;
                permissions::set_for_account(tx, &app, &carol, Role::Write)?;
                robots::create(tx, &acme, "puller", "")?;
                robots::create(tx, &other, "bot", "")?;
                Ok::<_, AccountError>(out)
            })
            .await
            .unwrap();
        let builds = buildman::db::open(dir.path()).unwrap();
        let control = Arc::new(FakeControl {
            wakes: AtomicUsize::new(0),
            cancels: Mutex::new(Vec::new()),
            outcome: Mutex::new(Ok(CancelOutcome::Cancelled)),
        });
        let mut settings = ApiSettings {
            max_retries: 3,
            upload_dir: dir.path().join("buildfiles"),
            max_upload_bytes: CAP,
            public_base_url: format!("{BASE}/"),
            reader_build_logs: false,
            allow_local_git_sources: true,
            triggers: Default::default(),
            notifications: Default::default(),
        };
        tweak(&mut settings);
        let state = ApiState {
            registry,
            builds,
            control: control.clone(),
            secrets: Arc::new(buildman::secrets::SecretBox::from_material(b"test key")),
            settings,
        };
        Fixture {
            _dir: dir,
            state,
            control,
            tokens,
        }
    }

    /// `Authorization` value of a seeded user.
    pub(crate) fn auth(&self, user: &str) -> String {
        let token = self
            .tokens
            .iter()
            .find(|(n, _)| n == user)
            .map(|(_, t)| t.clone())
            .unwrap();
        format!("Bearer {token}")
    }

    pub(crate) fn wakes(&self) -> usize {
        self.control.wakes.load(Ordering::SeqCst)
    }

    pub(crate) async fn send(&self, req: Request<Body>) -> Reply {
        let resp = buildman::api::routes(self.state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            bytes,
            json,
        }
    }

    /// A request as `user` (`None` = anonymous) with an optional JSON body.
    pub(crate) async fn call(
        &self,
        method: &str,
        uri: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(u) = user {
            req = req.header(http::header::AUTHORIZATION, self.auth(u));
        }
        let body = body.map_or(Body::empty(), |v| Body::from(v.to_string()));
        self.send(req.body(body).unwrap()).await
    }

    /// Start a build in `acme/app` as `user`; returns the reply.
    pub(crate) async fn start(&self, user: &str, body: Value) -> Reply {
        self.call(
            "POST",
            "/api/v1/repository/acme/app/build/",
            Some(user),
            Some(body),
        )
        .await
    }

    /// Ask for an upload as `user` and PUT `content`; returns the file id.
    pub(crate) async fn upload(&self, user: &str, content: &[u8]) -> String {
        let r = self
            .call(
                "POST",
                "/api/v1/filedrop/",
                Some(user),
                Some(serde_json::json!({"mimeType": "application/x-tar"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
        let url = r.json["url"].as_str().unwrap();
        let path = url.strip_prefix(BASE).unwrap().to_owned();
        let put = Request::put(path)
            .header(http::header::AUTHORIZATION, self.auth(user))
            .body(Body::from(content.to_vec()))
            .unwrap();
        let r2 = self.send(put).await;
        assert_eq!(r2.status, StatusCode::OK, "{:?}", r2.json);
        r.json["file_id"].as_str().unwrap().to_owned()
    }

    /// Files in the upload directory.
    pub(crate) fn upload_files(&self) -> Vec<String> {
        match std::fs::read_dir(&self.state.settings.upload_dir) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}
