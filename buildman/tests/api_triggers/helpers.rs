//! Trigger helpers over the `api_builds` fixture: create and activate triggers through the REST
//! API, read the webhook token from the view, sign and deliver webhook bodies, count builds.

use axum::body::Body;
use http::{Request, StatusCode};
use registry_core::accounts::credentials::basic_header;
use serde_json::{Value, json};

use crate::support::{Fixture, Reply};

/// The triggers of `acme/app`.
pub(crate) const TRIGGERS: &str = "/api/v1/repository/acme/app/trigger/";
/// A webhook secret long enough.
pub(crate) const SECRET: &str = "a-webhook-secret-of-32-characters";

pub(crate) fn trigger_path(uuid: &str) -> String {
    format!("{TRIGGERS}{uuid}")
}

/// Create a `service` trigger in `acme/app` as alice; returns its id.
pub(crate) async fn create(f: &Fixture, service: &str) -> String {
    let r = f
        .call(
            "POST",
            TRIGGERS,
            Some("alice"),
            Some(json!({ "service": service })),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    r.json["id"].as_str().unwrap().to_owned()
}

/// Activate `uuid` as alice with `body`.
pub(crate) async fn activate(f: &Fixture, uuid: &str, body: Value) -> Reply {
    f.call(
        "POST",
        &format!("{}/activate", trigger_path(uuid)),
        Some("alice"),
        Some(body),
    )
    .await
}

/// The `$token` password of the view's webhook URL.
pub(crate) fn webhook_token(view: &Value) -> String {
    let creds = view["config"]["credentials"].as_array().unwrap();
    let url = creds
        .iter()
        .find(|c| c["name"] == "Webhook Endpoint URL")
        .unwrap()["value"]
        .as_str()
        .unwrap();
    let rest = url.split_once("://$token:").unwrap().1;
    rest.split_once('@').unwrap().0.to_owned()
}

/// A `service` trigger activated with `config` (and the webhook secret `SECRET`); returns its id
/// and webhook token.
pub(crate) async fn active(f: &Fixture, service: &str, mut config: Value) -> (String, String) {
    let uuid = create(f, service).await;
    config["webhook_secret"] = json!(SECRET);
    let r = activate(f, &uuid, json!({ "config": config })).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    (uuid, webhook_token(&r.json))
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub(crate) fn hub_signature(secret: &str, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// A delivery from `fixtures/webhooks/<name>.json` with its `.headers`, minus the fixture's
/// own signature and token headers (each test signs with its trigger's secret).
pub(crate) fn fixture(name: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/webhooks");
    let body = std::fs::read(dir.join(format!("{name}.json"))).unwrap();
    let headers = std::fs::read_to_string(dir.join(format!("{name}.headers"))).unwrap();
    let headers = headers
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| {
            !["x-hub-signature", "x-hub-signature-256", "x-gitlab-token"]
                .contains(&k.to_ascii_lowercase().as_str())
        })
        .collect();
    (headers, body)
}

/// The fixture `name` signed with `secret` the way `service` signs.
pub(crate) fn signed(service: &str, name: &str, secret: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let (mut headers, body) = fixture(name);
    let header = match service {
        "gitlab" => ("X-Gitlab-Token".to_owned(), secret.to_owned()),
        "bitbucket" => ("X-Hub-Signature".to_owned(), hub_signature(secret, &body)),
        _ => (
            "X-Hub-Signature-256".to_owned(),
            hub_signature(secret, &body),
        ),
    };
    headers.push(header);
    (headers, body)
}

/// POST a delivery to trigger `uuid`, with `Basic $token:<token>` when `token` is given.
pub(crate) async fn deliver(
    f: &Fixture,
    uuid: &str,
    token: Option<&str>,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Reply {
    let mut req = Request::post(format!("/webhooks/push/trigger/{uuid}"));
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, basic_header("$token", t));
    }
    f.send(req.body(Body::from(body)).unwrap()).await
}

/// Rows in `build` and `queue_item`.
pub(crate) async fn counts(f: &Fixture) -> (i64, i64) {
    f.state
        .builds
        .read(|c| {
            let n = |table: &str| {
                c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            };
            Ok::<_, registry_core::db::DbError>((n("build")?, n("queue_item")?))
        })
        .await
        .unwrap()
}

/// The stored build `uuid`.
pub(crate) async fn build(f: &Fixture, uuid: &str) -> buildman::model::Build {
    let id = uuid.to_owned();
    f.state
        .builds
        .read(move |c| buildman::model::get(c, &id))
        .await
        .unwrap()
        .unwrap()
}
