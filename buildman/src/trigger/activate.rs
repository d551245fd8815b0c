//! The config of `POST .../trigger/{uuid}/activate`: Quay's keys checked with
//! [`triggers::plan::check`], `build_source` checked for the service, and Quarry's
//! `webhook_secret` taken out to be sealed apart. Provider triggers may name Quarry's
//! `clone_url` (where their builds clone from; default `git@<provider>:<build_source>.git`).

use serde_json::{Map, Value};
use triggers::plan;
use triggers::webhook::Service;

use super::push::{self, PushError};
use super::source;

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
    /// A known key has the wrong JSON type.
    #[error("config {key}: expected {expected}, got {got}")]
    KeyType {
        /// The key.
        key: &'static str,
        /// What it must be.
        expected: &'static str,
        /// The value sent, shortened.
        got: String,
    },
    /// The config does not deserialise (after the key type checks, not expected).
    #[error("config is invalid")]
    Types(#[source] serde_json::Error),
    /// `clone_url` on a custom-git trigger, whose `build_source` is the clone URL.
    #[error(
        "config clone_url is for github, gitlab and bitbucket triggers: a custom-git trigger \
         clones its build_source"
    )]
    CloneUrlNotAllowed,
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

/// The JSON type each known key must have.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    OptStr,
    Bool,
    StrList,
}

const KEY_KINDS: [(&str, Kind); 8] = [
    ("build_source", Kind::Str),
    ("clone_url", Kind::OptStr),
    ("dockerfile_path", Kind::Str),
    ("context", Kind::Str),
    ("branchtag_regex", Kind::OptStr),
    ("default_tag_from_ref", Kind::Bool),
    ("latest_for_default_branch", Kind::Bool),
    ("tag_templates", Kind::StrList),
];

/// Refuse a known key of the wrong JSON type, naming it (serde's message would not).
fn check_types(map: &Map<String, Value>) -> Result<(), ActivateError> {
    for (key, kind) in KEY_KINDS {
        let Some(v) = map.get(key) else { continue };
        let (ok, expected) = match kind {
            Kind::Str => (v.is_string(), "a string"),
            Kind::OptStr => (v.is_string() || v.is_null(), "a string or null"),
            Kind::Bool => (v.is_boolean(), "true or false"),
            Kind::StrList => (
                v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
                "a list of strings",
            ),
        };
        if !ok {
            let mut got = v.to_string();
            if got.chars().count() > 40 {
                got = got.chars().take(40).chain("...".chars()).collect();
            }
            return Err(ActivateError::KeyType { key, expected, got });
        }
    }
    Ok(())
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
    check_types(&map)?;
    let clone_url = match map.remove("clone_url") {
        Some(Value::String(u)) if !u.trim().is_empty() => Some(u.trim().to_owned()),
        _ => None,
    };
    if let Some(url) = &clone_url {
        if service == Service::CustomGit {
            return Err(ActivateError::CloneUrlNotAllowed);
        }
        source::check_git_url(url, allow_local)?;
    }
    let parsed = push::parse_config(&map).map_err(ActivateError::Types)?;
    let source = parsed.build_source.trim().to_owned();
    if source.is_empty() {
        return Err(ActivateError::NoBuildSource);
    }
    source::check_build_source(service, &source, allow_local)?;
    let checked = plan::check(&parsed).map_err(ActivateError::Check)?;
    // Store the normalised values (paths with their leading '/'), over what was sent.
    if let Value::Object(normal) =
        serde_json::to_value(checked.config()).map_err(ActivateError::Types)?
    {
        map.extend(normal);
    }
    map.insert("build_source".to_owned(), Value::String(source));
    if let Some(url) = clone_url {
        map.insert("clone_url".to_owned(), Value::String(url));
    }
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

    #[test]
    fn type_errors_name_the_key() {
        let e = err(Service::CustomGit, json!({"build_source": 5}));
        assert_eq!(e, "config build_source: expected a string, got 5");
        let e = err(
            Service::Github,
            json!({"build_source": "a/b", "tag_templates": "x"}),
        );
        assert!(
            e.starts_with("config tag_templates: expected a list"),
            "{e}"
        );
        let e = err(
            Service::Github,
            json!({"build_source": "a/b", "default_tag_from_ref": "yes"}),
        );
        assert!(e.starts_with("config default_tag_from_ref:"), "{e}");
    }

    #[test]
    fn clone_urls_are_checked_like_custom_git_sources() {
        let c = check(
            Service::Github,
            Some(json!({"build_source": "a/b", "clone_url": " git@ghe.corp:a/b.git "})),
            false,
        )
        .unwrap();
        assert_eq!(c.stored["clone_url"], "git@ghe.corp:a/b.git");
        let cases = [
            (
                Service::Github,
                "https://u:tok@ghe.corp/a/b.git",
                "deploy key",
            ),
            (Service::Gitlab, "http://gitlab.corp/a/b.git", "is invalid"),
            (Service::Bitbucket, "/srv/a.git", "local git sources"),
            (Service::CustomGit, "git@h:a.git", "custom-git"),
        ];
        for (service, url, needle) in cases {
            let e = err(service, json!({"build_source": "a/b", "clone_url": url}));
            assert!(e.contains(needle), "{url}: {e}");
            assert!(!e.contains("tok@"), "{e}");
        }
        let e = err(
            Service::CustomGit,
            json!({"build_source": "https://me:pw@h/a.git"}),
        );
        assert!(e.contains("carries a password") && !e.contains("pw"), "{e}");
    }
}
