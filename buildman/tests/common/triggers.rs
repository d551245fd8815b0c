//! Talking to a trigger the way an SCM does, for the trigger end-to-end tests: create and
//! activate one through the REST API, split its webhook URL into endpoint and basic-auth token,
//! and POST custom-git or GitHub-shaped push bodies, signed as GitHub signs them.

use reqwest::Method;
use serde_json::{Value, json};

use super::quarry::Quarry;

/// A trigger's webhook URL split into the URL without credentials and its basic-auth pair.
pub struct Hook {
    pub url: String,
    pub user: String,
    pub code: String,
}

impl Hook {
    pub fn parse(with_credentials: &str) -> Hook {
        let mut url = reqwest::Url::parse(with_credentials).unwrap();
        let decode = |s: &str| s.replace("%24", "$");
        let user = decode(url.username());
        let code = decode(url.password().expect("a token in the webhook URL"));
        url.set_username("").unwrap();
        url.set_password(None).unwrap();
        Hook {
            url: url.to_string(),
            user,
            code,
        }
    }
}

/// What the webhook endpoint answered.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    pub fn is_okay(&self) -> bool {
        self.status == 200 && self.text.trim().trim_matches('"') == "Okay"
    }
}

/// POST `body` to the trigger's endpoint with basic auth `<hook.user>:<code>` and `headers`.
pub async fn deliver(
    q: &Quarry,
    hook: &Hook,
    code: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Answer {
    let mut req = q
        .http
        .post(&hook.url)
        .basic_auth(&hook.user, Some(code))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.expect("POST to the webhook endpoint");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    Answer {
        status,
        headers,
        text,
    }
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, GitHub's `X-Hub-Signature-256`.
pub fn hub_signature(secret: &str, body: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let tag = hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The headers of a GitHub push delivery of `body` signed with `secret`.
pub fn github_headers(secret: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("X-GitHub-Event", "push".to_owned()),
        ("X-Hub-Signature-256", hub_signature(secret, body)),
    ]
}

/// Create a trigger of `service` and activate it with `config`; returns (id, view, public key,
/// webhook URL).
pub async fn trigger(
    q: &Quarry,
    repo: &str,
    service: &str,
    config: Value,
) -> (String, Value, String, Hook) {
    let base = format!("/api/v1/repository/{repo}/trigger/");
    let (s, v) = q
        .api(Method::POST, &base, Some(json!({"service": service})))
        .await;
    assert_eq!(s, 201, "creating a {service} trigger: {v}");
    assert_eq!(v["service"], service, "{v}");
    assert_eq!(v["is_active"], false, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let (s, v) = q
        .api(
            Method::POST,
            &format!("{base}{id}/activate"),
            Some(json!({"config": config})),
        )
        .await;
    assert_eq!(s, 200, "activating {id}: {v}");
    assert_eq!(v["is_active"], true, "{v}");
    assert_eq!(v["enabled"], true, "{v}");
    let cfg = &v["config"];
    assert!(cfg.get("webhook_secret").is_none(), "secret shown: {v}");
    let credential = |name: &str| {
        cfg["credentials"]
            .as_array()
            .unwrap_or_else(|| panic!("no credentials in {v}"))
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["value"].as_str())
            .unwrap_or_else(|| panic!("no {name} credential in {v}"))
            .to_owned()
    };
    let key = credential("SSH Public Key");
    assert!(
        key.starts_with("ssh-rsa AAAA") && key.trim_end().ends_with("Quarry Builder"),
        "{key}"
    );
    let url = credential("Webhook Endpoint URL");
    assert!(
        url.contains("$token:") || url.contains("%24token:"),
        "{url}"
    );
    assert!(
        url.ends_with(&format!("/webhooks/push/trigger/{id}")),
        "{url}"
    );
    (id, v, key, Hook::parse(&url))
}

/// How many builds trigger `id` of `repo` started.
pub async fn trigger_builds(q: &Quarry, repo: &str, id: &str) -> usize {
    let (s, v) = q
        .api(
            Method::GET,
            &format!("/api/v1/repository/{repo}/trigger/{id}/builds?limit=50"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["builds"].as_array().unwrap().len()
}

/// A custom-git push body (Quay's custom schema) for `commit` on `git_ref`, default branch main.
pub fn custom_body(commit: &str, git_ref: &str, message: &str) -> Vec<u8> {
    let who = json!({"username": "jdoe", "url": "https://git.example.com/jdoe",
                     "avatar_url": "https://git.example.com/jdoe.png"});
    serde_json::to_vec(&json!({
        "commit": commit, "ref": git_ref, "default_branch": "main",
        "commit_info": {"url": format!("https://git.example.com/c/{commit}"), "message": message,
                        "date": "2026-11-27T10:00:00Z", "author": who, "committer": who}
    }))
    .unwrap()
}

/// A GitHub push of `commit` to main of repository `full_name`, cloned from `ssh_url`.
pub fn github_body(commit: &str, full_name: &str, ssh_url: &str) -> Vec<u8> {
    let (owner, name) = full_name.split_once('/').unwrap();
    let who = json!({"name": "Quarry Test", "email": "test@example.com", "username": "jdoe"});
    serde_json::to_vec(&json!({
        "ref": "refs/heads/main", "before": "0".repeat(40), "after": commit,
        "repository": {"id": 1, "name": name, "full_name": full_name,
                       "owner": {"name": owner, "login": owner}, "ssh_url": ssh_url,
                       "default_branch": "main", "private": true},
        "head_commit": {"id": commit, "url": format!("https://github.com/{full_name}/commit/{commit}"),
                        "message": "second: from github", "timestamp": "2026-11-27T11:00:00Z",
                        "author": who, "committer": who},
        "pusher": {"name": "jdoe", "email": "test@example.com"}
    }))
    .unwrap()
}
