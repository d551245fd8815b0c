//! The HTTP methods: `webhook` (the event data as JSON, or the rendered `template`) and `slack`
//! (a short message). A 2xx answer is success; anything else, a timeout
//! (`NOTIFICATION_SEND_TIMEOUT`) or a connection error is a failure.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Ctx, MethodError, config_str};
use crate::config::NotificationConfig;
use crate::notify::payload::summary;
use crate::notify::target::{GuardedResolver, check_url};
use crate::notify::template;

/// The client deliveries use: the send timeout, no redirects (a redirect could lead to a target
/// the rules refuse), no proxy (`HTTP_PROXY` and friends are ignored: through a proxy the
/// target's name would be resolved by the proxy, never by the guarded resolver), and the
/// resolver that refuses local and blacklisted addresses.
pub fn client(config: &NotificationConfig) -> Result<reqwest::Client, reqwest::Error> {
    // rustls needs a process-wide crypto provider; an error means one is installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(config.send_timeout)
        .connect_timeout(config.send_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::<GuardedResolver>::clone(&GuardedResolver::new(config)))
        .user_agent(concat!("quarry-notifications/", env!("CARGO_PKG_VERSION")))
        .build()
}

async fn post(ctx: &Ctx, field: &'static str, url: &str, body: &Value) -> Result<(), MethodError> {
    let url = check_url(field, url, &ctx.config)?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let resp = ctx
        .client
        .post(url)
        .json(body)
        .send()
        .await
        // reqwest's errors print the URL, and a Slack URL (or a webhook's user:password) is a
        // secret: keep the host only.
        .map_err(|source| MethodError::Send {
            host: host.clone(),
            source: source.without_url(),
        })?;
    let status = resp.status();
    if !status.is_success() {
        return Err(MethodError::Status { host, status });
    }
    Ok(())
}

/// `webhook`: POST `data`, or `config.template` rendered over it, to `config.url`.
pub async fn webhook(ctx: &Ctx, config: &Value, data: &Value) -> Result<(), MethodError> {
    let url = config_str(config, "url")?;
    let body = match config.get("template").and_then(Value::as_str) {
        Some(t) if !t.trim().is_empty() => template::render(t, data)?,
        _ => data.clone(),
    };
    post(ctx, "url", url, &body).await
}

/// The Slack message of an event: Quay's shape (`text`, `username`, one attachment with a
/// colour by outcome) with Quarry's wording.
pub fn slack_body(event: &str, data: &Value) -> Value {
    let text = summary(event, data);
    let link = data.get("homepage").and_then(Value::as_str).unwrap_or("");
    let color = match event {
        "build_success" | "repo_push" => "good",
        "build_failure" => "danger",
        "build_cancelled" => "warning",
        _ => "#439FE0",
    };
    let detail = if link.is_empty() {
        text.clone()
    } else {
        format!("{text}\n<{link}|Open in Quarry>")
    };
    json!({
        "text": text,
        "username": "quayiobot",
        "attachments": [{
            "fallback": text,
            "text": detail,
            "color": color,
            "mrkdwn_in": ["text"],
        }],
    })
}

/// `slack`: POST the message to `config.url`.
pub async fn slack(
    ctx: &Ctx,
    config: &Value,
    event: &str,
    data: &Value,
) -> Result<(), MethodError> {
    let url = config_str(config, "url")?;
    post(ctx, "url", url, &slack_body(event, data)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_messages_say_what_happened_with_a_colour() {
        let data = json!({"repository": "acme/app", "build_name": "abc1234",
                          "error_message": "no Dockerfile",
                          "homepage": "https://q.example/repository/acme/app/build/x"});
        let v = slack_body("build_failure", &data);
        assert_eq!(
            v["text"],
            "Build abc1234 for acme/app failed: no Dockerfile"
        );
        assert_eq!(v["username"], "quayiobot");
        assert_eq!(v["attachments"][0]["color"], "danger");
        assert_eq!(v["attachments"][0]["fallback"], v["text"]);
        assert!(
            v["attachments"][0]["text"]
                .as_str()
                .unwrap()
                .contains("<https://q.example/repository/acme/app/build/x|Open in Quarry>")
        );
        assert_eq!(
            slack_body("build_success", &data)["attachments"][0]["color"],
            "good"
        );
    }
}
