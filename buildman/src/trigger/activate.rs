//! The config of `POST .../trigger/{uuid}/activate`: Quay's keys checked with
//! [`triggers::plan::check`], `build_source` checked for the service, and Quarry's
//! `webhook_secret` taken out to be sealed apart.

use serde_json::{Map, Value};
use triggers::plan;
use triggers::webhook::Service;

use super::push::{self, PushError};

/// Shortest webhook secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// Keys computed for the view, never stored from a request.
const VIEW_ONLY_KEYS: [&str; 3] = ["credentials", "has_webhook_secret", "webhook_secret"];

/// Why an activation's config is refused; each names the key.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// `config` is missing or not an object.
    #[error("config is invalid: expected a JSON object with at least build_source")]
    NotObject,
    /// `build_source` is missing or empty.
    #[error(
        "config build_source is required: the git URL (custom-git) or owner/name of the \
         repository to build"
    )]
    NoBuildSource,
    /// `webhook_secret` is not a long enough string.
    #[error(
        "config webhook_secret is invalid: expected a string of at least {MIN_SECRET_LEN} characters"
    )]
    WebhookSecret,
    /// A key has the wrong JSON type.
    #[error("config is invalid")]
    Types(#[source] serde_json::Error),
    /// A key's value is refused by the checks of the triggers crate.
    #[error("config is invalid")]
    Check(#[source] plan::ConfigError),
    /// `build_source` is not a source this service can build.
    #[error(transparent)]
    Source(#[from] PushError),
}

/// An activation's config, checked: what to store, and the webhook secret to seal.
#[derive(Clone, PartialEq, Eq)]
pub struct CheckedActivation {
    /// The config to store (normalised paths; no view-only keys).
    pub stored: Map<String, Value>,
    /// The webhook secret, if given.
    pub webhook_secret: Option<String>,
}

// Hand-written so that the webhook secret never reaches a log line.
impl std::fmt::Debug for CheckedActivation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedActivation")
            .field("stored", &self.stored)
            .field("has_webhook_secret", &self.webhook_secret.is_some())
            .finish()
    }
}

/// Check `config` for a trigger of `service`.
pub fn check(
    service: Service,
    config: Option<Value>,
    allow_local: bool,
) -> Result<CheckedActivation, ActivateError> {
    let Some(Value::Object(mut map)) = config else {
        return Err(ActivateError::NotObject);
    };
    let webhook_secret = match map.remove("webhook_secret") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() >= MIN_SECRET_LEN => Some(s),
        Some(_) => return Err(ActivateError::WebhookSecret),
    };
    for key in VIEW_ONLY_KEYS {
        map.remove(key);
    }
    if map.get("build_source").is_none_or(Value::is_null) {
        return Err(ActivateError::NoBuildSource);
    }
    let parsed = push::parse_config(&map).map_err(ActivateError::Types)?;
    let source = parsed.build_source.trim().to_owned();
    if source.is_empty() {
        return Err(ActivateError::NoBuildSource);
    }
    push::check_build_source(service, &source, allow_local)?;
    let checked = plan::check(&parsed).map_err(ActivateError::Check)?;
    // Store the normalised values (paths with their leading '/'), over what was sent.
    if let Value::Object(normal) =
        serde_json::to_value(checked.config()).map_err(ActivateError::Types)?
    {
        map.extend(normal);
    }
    map.insert("build_source".to_owned(), Value::String(source));
    Ok(CheckedActivation {
        stored: map,
        webhook_secret,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn err(service: Service, config: Value) -> String {
        let e = check(service, Some(config), false).unwrap_err();
        crate::manager::error_chain(&e)
    }

    #[test]
    fn config_is_checked_and_the_secret_taken_out() {
        let c = check(
            Service::CustomGit,
            Some(
                json!({"build_source": "git@h:a/b.git", "dockerfile_path": "sub/Dockerfile",
                        "context": "sub", "webhook_secret": "0123456789abcdef",
                        "credentials": [{"name": "x"}], "extra": 1}),
            ),
            false,
        )
        .unwrap();
        assert_eq!(c.webhook_secret.as_deref(), Some("0123456789abcdef"));
        assert_eq!(c.stored["dockerfile_path"], "/sub/Dockerfile");
        assert_eq!(c.stored["context"], "/sub");
        assert!(c.stored.get("webhook_secret").is_none());
        assert!(c.stored.get("credentials").is_none());
        assert!(!format!("{c:?}").contains("0123456789abcdef"));

        assert!(err(Service::CustomGit, json!({})).contains("build_source is required"));
        assert!(err(Service::CustomGit, json!([])).contains("JSON object"));
        let short = json!({"build_source": "git@h:a.git", "webhook_secret": "short"});
        assert!(err(Service::CustomGit, short).contains("webhook_secret"));
        let local = json!({"build_source": "/srv/repo.git"});
        assert!(err(Service::CustomGit, local.clone()).contains("local git sources"));
        assert!(check(Service::CustomGit, Some(local), true).is_ok());
        assert!(err(Service::Github, json!({"build_source": "acme"})).contains("owner/name"));
        let regex = json!({"build_source": "acme/app", "branchtag_regex": "("});
        assert!(err(Service::Github, regex).contains("branchtag_regex"));
    }
}
