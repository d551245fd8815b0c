//! Checks of a notification at creation (`POST .../notification/`): the event, the method and
//! their configs. Every refusal names the key and what is expected (answered as 400).

use serde::Deserialize;
use serde_json::{Map, Value};

use super::methods::{Method, MethodError, UnknownMethod, email, inapp};
use super::payload::{self, Urls};
use super::target::{TargetError, check_url};
use super::template::{self, TemplateError};
use crate::config::NotificationConfig;
use crate::events::BuildEvent;

/// The events a notification can be for.
pub const EVENTS: [&str; 6] = [
    "repo_push",
    "build_queued",
    "build_start",
    "build_success",
    "build_failure",
    "build_cancelled",
];

/// The body of `POST .../notification/` (Quay's names).
#[derive(Clone, Debug, Deserialize)]
pub struct NotificationRequest {
    /// The event name.
    pub event: String,
    /// The method name.
    pub method: String,
    /// The method's config.
    #[serde(default)]
    pub config: Value,
    /// The event's config (`ref-regex`).
    #[serde(default, rename = "eventConfig")]
    pub event_config: Value,
    /// Free text.
    #[serde(default)]
    pub title: Option<String>,
}

/// Why a notification cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum NotificationConfigError {
    /// Not one of [`EVENTS`].
    #[error("unknown event {0:?}: expected one of {events}", events = EVENTS.join(", "))]
    UnknownEvent(String),
    /// Not a method.
    #[error(transparent)]
    UnknownMethod(#[from] UnknownMethod),
    /// `config` or `eventConfig` is not an object.
    #[error("{0} must be a JSON object")]
    NotObject(&'static str),
    /// A required config key is missing.
    #[error("config.{key} is required for method {method}")]
    Missing {
        /// The key.
        key: &'static str,
        /// The method.
        method: &'static str,
    },
    /// A webhook or Slack URL is refused.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The webhook template is not usable.
    #[error("config.template is invalid")]
    Template(#[source] TemplateError),
    /// `config.email` does not parse, or mail is not configured.
    #[error(transparent)]
    Email(MethodError),
    /// The in-app target does not exist or is malformed.
    #[error(transparent)]
    InApp(#[from] inapp::InAppTargetError),
    /// `ref-regex` does not compile. The syntax is Rust's `regex` crate, not Python's `re`:
    /// no lookaround, no backreferences (matching stays linear in time); the message says so.
    #[error(
        "eventConfig.ref-regex {pattern:?} is not a valid regular expression (Rust regex syntax: \
         no lookaround or backreferences)"
    )]
    RefRegex {
        /// The pattern.
        pattern: String,
        /// The cause.
        #[source]
        source: regex::Error,
    },
    /// `ref-regex` is neither a string nor null.
    #[error("eventConfig.ref-regex must be a string (a regular expression) or null, not {0}")]
    RefRegexType(&'static str),
    /// `ref-regex` on an event without a git ref.
    #[error("eventConfig.ref-regex applies to build events only, not {event}")]
    RefRegexEvent {
        /// The event.
        event: String,
    },
}

/// The regex a `ref-regex` becomes: Python's `re.match`, anchored at the start only. The syntax
/// is Rust's `regex` (no lookaround or backreferences), which Quay's Python patterns mostly
/// share; a pattern using the missing features is refused at creation with a 400 saying so.
pub fn ref_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})"))
}

/// Whether event data passes `event_config`'s `ref-regex` (no regex: yes; a regex and no ref: no).
/// A stored pattern that no longer compiles lets nothing through.
pub fn ref_matches(event_config: &Value, data: &Value) -> bool {
    let Some(pattern) = event_config.get("ref-regex").and_then(Value::as_str) else {
        return true;
    };
    if pattern.is_empty() {
        return true;
    }
    match (ref_regex(pattern), payload::git_ref(data)) {
        (Ok(re), Some(r)) => re.is_match(r),
        _ => false,
    }
}

/// Check everything but an in-app target's existence (which needs registry-core's database:
/// see [`inapp::recipients`]). `title` is trimmed; an empty one is dropped.
pub fn check(
    req: &NotificationRequest,
    config: &NotificationConfig,
    urls: &Urls,
    repository: &str,
) -> Result<(Method, Value, Value), NotificationConfigError> {
    if !EVENTS.contains(&req.event.as_str()) {
        return Err(NotificationConfigError::UnknownEvent(req.event.clone()));
    }
    let method: Method = req.method.parse()?;
    let object = |v: &Value, name| match v {
        Value::Null => Ok(Value::Object(Map::new())),
        Value::Object(_) => Ok(v.clone()),
        _ => Err(NotificationConfigError::NotObject(name)),
    };
    let method_config = object(&req.config, "config")?;
    let event_config = object(&req.event_config, "eventConfig")?;
    let text = |key: &'static str| {
        method_config
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .ok_or(NotificationConfigError::Missing {
                key,
                method: method.as_str(),
            })
    };
    match method {
        Method::Webhook => {
            check_url("config.url", text("url")?, config)?;
            if let Some(t) = method_config.get("template").and_then(Value::as_str)
                && !t.trim().is_empty()
            {
                let sample = payload::sample(urls, repository, &req.event);
                template::render(t, &sample).map_err(NotificationConfigError::Template)?;
            }
        }
        Method::Slack => {
            check_url("config.url", text("url")?, config)?;
        }
        Method::Email => {
            if config.mail.is_none() {
                return Err(NotificationConfigError::Email(
                    MethodError::MailNotConfigured,
                ));
            }
            email::mailbox(text("email")?).map_err(NotificationConfigError::Email)?;
        }
        Method::QuayNotification => {
            inapp::target(&method_config)?;
        }
    }
    // An empty or null `ref-regex` is no filter, for every event (Quay's UI sends "" when the
    // field is left empty).
    let pattern = match event_config.get("ref-regex") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) if p.is_empty() => None,
        Some(Value::String(p)) => Some(p.as_str()),
        Some(other) => {
            return Err(NotificationConfigError::RefRegexType(match other {
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::Array(_) => "an array",
                _ => "an object",
            }));
        }
    };
    if let Some(pattern) = pattern {
        if BuildEvent::from_name(&req.event).is_none() {
            return Err(NotificationConfigError::RefRegexEvent {
                event: req.event.clone(),
            });
        }
        ref_regex(pattern).map_err(|source| NotificationConfigError::RefRegex {
            pattern: pattern.to_owned(),
            source,
        })?;
    }
    Ok((method, method_config, event_config))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::MailConfig;

    fn urls() -> Urls {
        Urls {
            public_base_url: "https://q.example".into(),
            server_hostname: "q.example".into(),
        }
    }

    fn req(event: &str, method: &str, config: Value, event_config: Value) -> NotificationRequest {
        NotificationRequest {
            event: event.into(),
            method: method.into(),
            config,
            event_config,
            title: None,
        }
    }

    #[test]
    fn refusals_name_the_key() {
        let c = NotificationConfig::default();
        let hook = json!({"url": "https://hooks.example.com/x"});
        let cases = [
            (
                req("build_exploded", "webhook", hook.clone(), json!({})),
                "unknown event",
            ),
            (
                req("repo_push", "fax", hook.clone(), json!({})),
                "unknown notification method",
            ),
            (
                req("repo_push", "webhook", json!({}), json!({})),
                "config.url is required",
            ),
            (
                req("repo_push", "webhook", json!([1]), json!({})),
                "config must be",
            ),
            (
                req(
                    "repo_push",
                    "webhook",
                    json!({"url": "http://localhost/"}),
                    json!({}),
                ),
                "local",
            ),
            (
                req(
                    "repo_push",
                    "webhook",
                    json!({"url": "https://h.example", "template": "{"}),
                    json!({}),
                ),
                "config.template",
            ),
            (
                req("repo_push", "email", json!({"email": "a@b.c"}), json!({})),
                "FEATURE_MAILING",
            ),
            (
                req("repo_push", "quay_notification", json!({}), json!({})),
                "config.target",
            ),
            (
                req(
                    "build_start",
                    "webhook",
                    hook.clone(),
                    json!({"ref-regex": "("}),
                ),
                "ref-regex",
            ),
            (
                req(
                    "repo_push",
                    "webhook",
                    hook.clone(),
                    json!({"ref-regex": "x"}),
                ),
                "build events only",
            ),
            (
                req(
                    "build_start",
                    "webhook",
                    hook.clone(),
                    json!({"ref-regex": 5}),
                ),
                "must be a string",
            ),
            (
                req(
                    "build_start",
                    "webhook",
                    hook.clone(),
                    json!({"ref-regex": "refs/heads/(?!main)"}),
                ),
                "no lookaround or backreferences",
            ),
        ];
        for (r, want) in cases {
            let err = check(&r, &c, &urls(), "acme/app").unwrap_err();
            let text = registry_core::error::error_chain(&err);
            assert!(text.contains(want), "{} {}: {text}", r.event, r.method);
        }
        let mail = NotificationConfig {
            mail: Some(MailConfig {
                server: "smtp.example".into(),
                port: 25,
                use_tls: false,
                auth: None,
                sender: None,
            }),
            ..NotificationConfig::default()
        };
        let ok = req(
            "build_failure",
            "email",
            json!({"email": "ops@example.com"}),
            json!({"ref-regex": "refs/heads/.*"}),
        );
        assert_eq!(
            check(&ok, &mail, &urls(), "acme/app").unwrap().0,
            Method::Email
        );
        let bad = req(
            "build_failure",
            "email",
            json!({"email": "nope"}),
            json!({}),
        );
        assert!(check(&bad, &mail, &urls(), "acme/app").is_err());
        // Empty or null ref-regex: no filter, on repo_push too.
        for empty in [json!({"ref-regex": ""}), json!({"ref-regex": null})] {
            let r = req(
                "repo_push",
                "webhook",
                json!({"url": "https://h.example/x"}),
                empty.clone(),
            );
            assert!(check(&r, &c, &urls(), "acme/app").is_ok(), "{empty}");
            assert!(ref_matches(&empty, &json!({})));
        }
    }

    #[test]
    fn ref_regex_matches_at_the_start_like_re_match() {
        let data = |r: Option<&str>| json!({"trigger_metadata": r.map(|r| json!({"ref": r}))});
        let cfg = json!({"ref-regex": "refs/heads/(main|release-.*)"});
        assert!(ref_matches(&cfg, &data(Some("refs/heads/main"))));
        assert!(ref_matches(&cfg, &data(Some("refs/heads/release-1.2"))));
        // re.match is anchored at the start only.
        assert!(ref_matches(&cfg, &data(Some("refs/heads/mainline"))));
        assert!(!ref_matches(&cfg, &data(Some("refs/tags/refs/heads/main"))));
        assert!(
            !ref_matches(&cfg, &data(None)),
            "a regex and no ref: not sent"
        );
        assert!(ref_matches(&json!({}), &data(None)));
        assert!(ref_matches(&json!({"ref-regex": ""}), &data(None)));
    }
}
