//! Where a trigger's builds clone from and what its sources may be: the clone URL checks for
//! triggers (stricter than a build's: no plain http, no passwords), `build_source` per service,
//! the clone URL (never a payload's) and the repository page shown in the trigger view.

use serde_json::Value;
use triggers::plan;
use triggers::webhook::Service;

use super::git_url::{self, Problem, TRIGGER_SCHEMES};
use super::store::Trigger;

/// Why a push or a trigger's source cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// A clone URL git cannot take safely, or of a transport we do not hand to agents.
    #[error(
        "git URL {url:?} is invalid: expected ssh://, https://, user@host:path (or file:// and \
         absolute paths where ALLOW_LOCAL_GIT_SOURCES is set)"
    )]
    GitUrl {
        /// The rejected URL, as [`git_url::shown`].
        url: String,
    },
    /// A path on the build host, which this install does not allow.
    #[error(
        "git URL {url:?} is a path on the build host; local git sources are disabled \
         (a trusted single-user install may set BUILD_MANAGER[1].ALLOW_LOCAL_GIT_SOURCES: true)"
    )]
    LocalGitUrl {
        /// The rejected URL.
        url: String,
    },
    /// A clone URL with a password in it.
    #[error(
        "git URL {url:?} carries a password: credentials in clone URLs are refused (they would \
         be stored and shown); use an ssh:// or user@host:path URL, which clones with the \
         trigger's deploy key"
    )]
    GitUrlPassword {
        /// The rejected URL, without its userinfo.
        url: String,
    },
    /// Not a full commit id (the agent checks out exact commits).
    #[error("commit {commit:?} is invalid: expected the full 40-character hexadecimal commit id")]
    Commit {
        /// The rejected value.
        commit: String,
    },
    /// `build_source` of a provider trigger is not `owner/repo`.
    #[error(
        "config build_source {source_name:?} is invalid: expected the {service} repository as \
         owner/name"
    )]
    BuildSource {
        /// The provider.
        service: &'static str,
        /// The rejected value.
        source_name: String,
    },
    /// The stored config does not deserialise (a hand-edited database or an older layout).
    #[error("stored config of trigger {uuid} is invalid: re-activate the trigger")]
    StoredConfig {
        /// The trigger.
        uuid: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The stored config no longer passes the checks.
    #[error("stored config of trigger {uuid} is invalid: re-activate the trigger")]
    CheckedConfig {
        /// The trigger.
        uuid: String,
        /// The cause.
        #[source]
        source: plan::ConfigError,
    },
}

/// Check `url` as a trigger's clone URL (its errors never show the URL's userinfo).
pub fn check_git_url(url: &str, allow_local: bool) -> Result<(), PushError> {
    let shown = git_url::shown(url);
    match git_url::check(url, TRIGGER_SCHEMES, allow_local) {
        Ok(()) => Ok(()),
        Err(Problem::Shape) => Err(PushError::GitUrl { url: shown }),
        Err(Problem::Local) => Err(PushError::LocalGitUrl { url: shown }),
        Err(Problem::Password) => Err(PushError::GitUrlPassword { url: shown }),
    }
}

/// Check `build_source` for `service`: custom-git a clone URL, the providers `owner/name`
/// (GitLab: groups may nest).
pub fn check_build_source(
    service: Service,
    source: &str,
    allow_local: bool,
) -> Result<(), PushError> {
    if service == Service::CustomGit {
        return check_git_url(source, allow_local);
    }
    let parts: Vec<&str> = source.split('/').collect();
    let part_ok = |p: &&str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let count_ok = match service {
        Service::Gitlab => parts.len() >= 2,
        _ => parts.len() == 2,
    };
    if count_ok && parts.iter().all(part_ok) {
        Ok(())
    } else {
        Err(PushError::BuildSource {
            service: service.as_str(),
            source_name: source.to_owned(),
        })
    }
}

/// The provider's default host for `service` (`None` for custom-git).
fn provider_host(service: Service) -> Option<&'static str> {
    match service {
        Service::Github => Some("github.com"),
        Service::Gitlab => Some("gitlab.com"),
        Service::Bitbucket => Some("bitbucket.org"),
        Service::CustomGit => None,
    }
}

/// A provider trigger's configured `clone_url`, if set.
fn configured_clone_url(t: &Trigger) -> Option<&str> {
    t.config
        .get("clone_url")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
}

/// Where builds of `t` clone from, whatever a payload says: custom-git's `build_source`; a
/// provider's `clone_url`, else `git@<provider host>:<build_source>.git`.
pub fn clone_url(t: &Trigger) -> String {
    let source = t.build_source();
    match provider_host(t.service) {
        None => source.to_owned(),
        Some(host) => configured_clone_url(t)
            .map_or_else(|| format!("git@{host}:{source}.git"), str::to_owned),
    }
}

/// The page of the built repository (Quay's `get_repository_url`): on the provider, or on the
/// web host of a configured `clone_url` (none when it has no web host, e.g. a path).
pub fn repository_url(t: &Trigger) -> Option<String> {
    let source = t.build_source();
    if source.is_empty() {
        return None;
    }
    let Some(host) = provider_host(t.service) else {
        return Some(source.to_owned());
    };
    match configured_clone_url(t) {
        None => Some(format!("https://{host}/{source}")),
        Some(url) => git_url::web_host(url).map(|h| format!("https://{h}/{source}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_build_sources_and_clone_urls_are_checked() {
        let sha = "0123456789ABCDEF0123456789abcdef01234567";
        assert_eq!(
            crate::trigger::push::check_commit(sha).unwrap(),
            sha.to_ascii_lowercase()
        );
        assert!(crate::trigger::push::check_commit("0123456").is_err());
        assert!(check_build_source(Service::Github, "acme/app", false).is_ok());
        assert!(check_build_source(Service::Gitlab, "g/sub/app", false).is_ok());
        for bad in ["acme", "a/b/c", "a/", "a/../b", "a/b c"] {
            assert!(
                check_build_source(Service::Bitbucket, bad, false).is_err(),
                "{bad}"
            );
        }
        let e = check_git_url("https://me:s3cret@h/a.git", false).unwrap_err();
        assert!(matches!(e, PushError::GitUrlPassword { .. }));
        assert!(!e.to_string().contains("s3cret") && !e.to_string().contains("me:"));
        assert!(e.to_string().contains("deploy key"), "{e}");
        let e = check_git_url("http://h/a.git", true).unwrap_err();
        assert!(matches!(e, PushError::GitUrl { .. }));
        let e = check_git_url("/srv/a.git", false).unwrap_err();
        assert!(matches!(e, PushError::LocalGitUrl { .. }));
    }
}
