//! What the webhook endpoint logs when it refuses a delivery: the trigger id and the reason,
//! never the token, the webhook secret or the body.

use std::sync::{Arc, Mutex};

use http::StatusCode;
use serde_json::json;

use crate::helpers::{SECRET, active, counts, deliver, fixture, hub_signature, trigger_path};
use crate::support::Fixture;

/// Log lines written by the subscriber of this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

const MARKER: &str = "BODY-MARKER-7f3a";

fn signed_body(body: &serde_json::Value) -> (Vec<(String, String)>, Vec<u8>) {
    let (mut headers, _) = fixture("github/push-branch");
    let bytes = serde_json::to_vec(body).unwrap();
    headers.push(("X-Hub-Signature-256".into(), hub_signature(SECRET, &bytes)));
    (headers, bytes)
}

// A current-thread runtime: the handlers log on this thread, where the subscriber is the default.
#[tokio::test(flavor = "current_thread")]
async fn refusals_never_log_the_token_the_secret_or_the_body() {
    let f = Fixture::new().await;
    let (gh, token) = active(&f, "github", json!({"build_source": "lanternworks/kiln"})).await;
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (headers, body) = fixture("github/push-branch");
    let mut payload: serde_json::Value = serde_json::from_slice(&body).unwrap();
    payload["head_commit"]["message"] = json!(format!("secret plans {MARKER}"));
    let wrong_token = format!("{token}x");
    // Wrong token; right token without a signature; a payload of another repository (its error
    // quotes the body's repository name);
    // a body that is not JSON; a disabled trigger.
    let r = deliver(&f, &gh, Some(&wrong_token), &headers, body.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let unsigned = serde_json::to_vec(&payload).unwrap();
    let r = deliver(&f, &gh, Some(&token), &headers, unsigned).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let mut bad_shape = payload.clone();
    bad_shape["repository"]["full_name"] = json!(format!("someone/{MARKER}"));
    let (h, b) = signed_body(&bad_shape);
    let r = deliver(&f, &gh, Some(&token), &h, b).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.json);
    let junk = format!("not json {MARKER}").into_bytes();
    let mut h = headers.clone();
    h.push(("X-Hub-Signature-256".into(), hub_signature(SECRET, &junk)));
    let r = deliver(&f, &gh, Some(&token), &h, junk).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = f
        .call(
            "PUT",
            &trigger_path(&gh),
            Some("alice"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let (h, b) = signed_body(&payload);
    let r = deliver(&f, &gh, Some(&token), &h, b).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(counts(&f).await, (0, 0));

    let text = logs.text();
    let refused = text.matches("webhook delivery refused").count();
    assert_eq!(refused, 5, "one line per refusal:\n{text}");
    assert!(text.contains(&gh), "the trigger id is logged:\n{text}");
    for (what, secret) in [
        ("the token", token.as_str()),
        ("the presented token", wrong_token.as_str()),
        ("the webhook secret", SECRET),
        ("the body", MARKER),
        ("the body", "secret plans"),
    ] {
        assert!(!text.contains(secret), "{what} in the logs:\n{text}");
    }
}
