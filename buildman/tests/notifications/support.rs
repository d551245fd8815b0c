//! The fixture of `notifications.rs`: registry-core state and `builds.db` in a temp dir with
//! accounts, the REST routes over them (`oneshot`), the notification loops' parts, a real HTTP
//! receiver on 127.0.0.1 and a tiny SMTP sink.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use buildman::api::{ApiSettings, ApiState};
use buildman::config::NotificationConfig;
use buildman::control::{BuildControl, CancelOutcome};
use buildman::notify::{NotifyParts, NotifySettings};
use buildman::trigger::TriggerLimits;
use http::{Request, StatusCode};
use registry_core::accounts::orgs::{self, TeamRole};
use registry_core::accounts::permissions::{self, Role};
use registry_core::accounts::{AccountError, repositories, tokens, users};
use registry_core::config::Config;
use registry_core::repos::Visibility;
use registry_core::state::AppState;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tower::ServiceExt as _;

pub(crate) const BASE: &str = "http://quarry.test:8080";
pub(crate) const HOST: &str = "quarry.test:8080";

#[derive(Debug)]
struct NoControl;

#[async_trait::async_trait]
impl BuildControl for NoControl {
    fn wake(&self) {}

    async fn cancel(&self, _uuid: &str) -> Result<CancelOutcome, String> {
        Ok(CancelOutcome::NotFound)
    }
}

pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) json: Value,
}

impl Reply {
    pub(crate) fn message(&self) -> &str {
        self.json["error_message"].as_str().unwrap_or("")
    }
}

/// Accounts: `alice` owns organisation `acme` (admin of `acme/app`); `bob` has read and `carol`
/// write on `acme/app`; `dave` and `erin` are members of team `acme/devs`, which reads
/// `acme/app`; `frank` has no role on it; `root` is superuser. Repositories `acme/app`,
/// `acme/other` (private).
pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub(crate) state: ApiState,
    tokens: Vec<(String, String)>,
}

impl Fixture {
    pub(crate) async fn new(tweak: impl FnOnce(&mut NotificationConfig)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().join("registry"),
            super_users: vec!["root".to_owned()],
            server_hostname: HOST.to_owned(),
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
                let dave = user("dave")?;
                let erin = user("erin")?;
                user("frank")?;
                user("root")?;
                let acme = orgs::create(tx, "acme", None, &alice)?;
                let devs = orgs::create_team(tx, &acme, "devs", TeamRole::Member, "")?;
                orgs::add_member(tx, &acme, &devs, &dave)?;
                orgs::add_member(tx, &acme, &devs, &erin)?;
                let app = "acme/app".parse().unwrap();
                repositories::create(tx, &app, Visibility::Private, "")?;
                repositories::create(tx, &"acme/other".parse().unwrap(), Visibility::Private, "")?;
                permissions::set_for_account(tx, &app, &bob, Role::Read)?;
                permissions::set_for_account(tx, &app, &carol, Role::Write)?;
                permissions::set_for_team(tx, &app, &devs, Role::Read)?;
                Ok::<_, AccountError>(out)
            })
            .await
            .unwrap();
        let builds = buildman::db::open(dir.path()).unwrap();
        let mut notifications = NotificationConfig {
            send_timeout: Duration::from_secs(5),
            ..NotificationConfig::default()
        };
        tweak(&mut notifications);
        let settings = ApiSettings {
            max_retries: 3,
            upload_dir: dir.path().join("buildfiles"),
            max_upload_bytes: 1024,
            public_base_url: format!("{BASE}/"),
            reader_build_logs: false,
            allow_local_git_sources: true,
            triggers: Default::default(),
            notifications,
        };
        let state = ApiState {
            registry,
            builds,
            control: Arc::new(NoControl),
            secrets: Arc::new(buildman::secrets::SecretBox::from_material(b"test key")),
            settings,
        };
        Fixture {
            _dir: dir,
            state,
            tokens,
        }
    }

    /// The notification loops' parts over this fixture's databases.
    pub(crate) fn parts(&self, retry_base: Duration) -> NotifyParts {
        NotifyParts {
            builds: self.state.builds.clone(),
            registry: self.state.registry.db.clone(),
            settings: NotifySettings {
                public_base_url: self.state.settings.public_base_url.clone(),
                server_hostname: HOST.to_owned(),
                limits: TriggerLimits {
                    failures: 2,
                    internal_errors: 2,
                },
                config: self.state.settings.notifications.clone(),
                poll: Duration::from_millis(50),
                retry_base,
            },
        }
    }

    /// A token of `user` scoped to `acme/app` with `role` (as a trigger's webhook token is).
    pub(crate) async fn scoped_token(&self, user: &str, role: Role) -> String {
        let user = user.to_owned();
        self.state
            .registry
            .db
            .write(move |tx| {
                let account = registry_core::accounts::find(tx, &user)?.unwrap();
                let scope = tokens::TokenScope {
                    repository: Some("acme/app".parse().unwrap()),
                    max_role: role,
                    expires_at_ms: None,
                };
                tokens::create_scoped(tx, &account, "scoped", &scope)
            })
            .await
            .unwrap()
    }

    /// A request with `Authorization: Bearer <token>`.
    pub(crate) async fn call_with_token(
        &self,
        method: &str,
        uri: &str,
        token: &str,
        body: Option<Value>,
    ) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        self.send(req, body).await
    }

    pub(crate) fn token(&self, user: &str) -> String {
        self.tokens
            .iter()
            .find(|(n, _)| n == user)
            .map(|(_, t)| t.clone())
            .unwrap()
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
            req = req.header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token(u)),
            );
        }
        self.send(req, body).await
    }

    async fn send(&self, req: http::request::Builder, body: Option<Value>) -> Reply {
        let body = body.map_or(Body::empty(), |v| Body::from(v.to_string()));
        let resp = buildman::api::routes(self.state.clone())
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        Reply {
            status,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// Create a notification on `acme/app` as alice; returns its uuid.
    pub(crate) async fn notification(&self, body: Value) -> String {
        let r = self
            .call(
                "POST",
                "/api/v1/repository/acme/app/notification/",
                Some("alice"),
                Some(body),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        r.json["uuid"].as_str().unwrap().to_owned()
    }
}

/// How the receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Ok,
    Fail,
    Hang,
}

/// A request the receiver got.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    pub(crate) path: String,
    pub(crate) content_type: String,
    pub(crate) body: Value,
}

/// An HTTP server on 127.0.0.1 that records POSTs and answers 200, 500 or never.
pub(crate) struct Receiver {
    pub(crate) url: String,
    pub(crate) got: Arc<Mutex<Vec<Received>>>,
    mode: Arc<Mutex<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub(crate) async fn start() -> Receiver {
        let got = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(Mode::Ok));
        let (g, m) = (got.clone(), mode.clone());
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let (g, m) = (g.clone(), m.clone());
            async move {
                let path = req.uri().path().to_owned();
                let content_type = req
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let bytes = http_body_util::BodyExt::collect(req.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                g.lock().unwrap().push(Received {
                    path,
                    content_type,
                    body,
                });
                let mode = *m.lock().unwrap();
                match mode {
                    Mode::Ok => StatusCode::OK,
                    Mode::Fail => StatusCode::INTERNAL_SERVER_ERROR,
                    Mode::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        StatusCode::OK
                    }
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url,
            got,
            mode,
            task,
        }
    }

    pub(crate) fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub(crate) fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    pub(crate) fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A mail the sink accepted.
#[derive(Clone, Debug, Default)]
pub(crate) struct Mail {
    pub(crate) from: String,
    pub(crate) to: Vec<String>,
    pub(crate) data: String,
}

/// Just enough SMTP to take mail from lettre without TLS or auth: 220, EHLO, MAIL, RCPT, DATA,
/// QUIT (RSET and NOOP answered 250).
pub(crate) struct SmtpSink {
    pub(crate) port: u16,
    pub(crate) mails: Arc<Mutex<Vec<Mail>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SmtpSink {
    pub(crate) async fn start() -> SmtpSink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let m = mails.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let m = m.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    write.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                    let mut mail = Mail::default();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let upper = line.to_ascii_uppercase();
                        let answer: &[u8] = if upper.starts_with("EHLO") {
                            b"250-sink\r\n250 8BITMIME\r\n"
                        } else if let Some(from) = upper.strip_prefix("MAIL FROM:") {
                            mail.from = line[line.len() - from.len()..].trim().to_owned();
                            b"250 OK\r\n"
                        } else if let Some(to) = upper.strip_prefix("RCPT TO:") {
                            mail.to
                                .push(line[line.len() - to.len()..].trim().to_owned());
                            b"250 OK\r\n"
                        } else if upper == "DATA" {
                            write.write_all(b"354 go ahead\r\n").await.unwrap();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                mail.data.push_str(&l);
                                mail.data.push('\n');
                            }
                            m.lock().unwrap().push(std::mem::take(&mut mail));
                            b"250 queued\r\n"
                        } else if upper == "QUIT" {
                            write.write_all(b"221 bye\r\n").await.unwrap();
                            return;
                        } else {
                            b"250 OK\r\n"
                        };
                        write.write_all(answer).await.unwrap();
                    }
                });
            }
        });
        SmtpSink { port, mails, task }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
