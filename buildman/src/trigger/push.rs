//! From a trigger and the push it was told about (a webhook delivery or a manual start) to the
//! build to queue: source checks, the stored config checked again, and the `NewBuild`.

use serde_json::{Map, Value};
use triggers::metadata::Metadata;
use triggers::plan::{self, CheckedConfig, TriggerConfig};
use triggers::webhook::Service;

use super::store::Trigger;
use crate::model::{GitSource, JobConfig, NewBuild};

/// Why a push or a trigger's source cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// A clone URL git cannot take safely, or of a transport we do not hand to agents.
    #[error(
        "git URL {url:?} is invalid: expected ssh://, https://, user@host:path (or file:// and \
         absolute paths where ALLOW_LOCAL_GIT_SOURCES is set)"
    )]
    GitUrl {
        /// The rejected URL.
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

/// Whether `url` names the build host's filesystem.
pub fn is_local(url: &str) -> bool {
    url.starts_with('/') || url.starts_with("file://")
}

/// Check a clone URL: ssh://, https:// (and http://), `user@host:path`; file:// and absolute
/// paths only with `allow_local`. Refused always: option-like values (`-u...`), whitespace and
/// control characters, and git's remote-helper syntax (`ext::<command>` would run a command).
pub fn check_git_url(url: &str, allow_local: bool) -> Result<(), PushError> {
    let bad = || PushError::GitUrl {
        url: url.to_owned(),
    };
    if url.is_empty() || url.len() > 2048 || url.starts_with('-') || url.contains("::") {
        return Err(bad());
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad());
    }
    let shape_ok = if let Some((scheme, rest)) = url.split_once("://") {
        matches!(scheme, "https" | "http" | "ssh" | "file") && !rest.is_empty()
    } else if url.starts_with('/') {
        true
    } else {
        // scp-like `user@host:path` (git's rule: a colon before any slash).
        matches!(url.split_once(':'),
            Some((host, path)) if !host.is_empty() && !host.contains('/') && !path.is_empty())
    };
    if !shape_ok {
        return Err(bad());
    }
    if is_local(url) && !allow_local {
        return Err(PushError::LocalGitUrl {
            url: url.to_owned(),
        });
    }
    Ok(())
}

/// A full commit id, lower-cased.
pub fn check_commit(commit: &str) -> Result<String, PushError> {
    let c = commit.trim().to_ascii_lowercase();
    if c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(c)
    } else {
        Err(PushError::Commit {
            commit: commit.to_owned(),
        })
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

/// The page of the built repository (Quay's `get_repository_url`).
pub fn repository_url(service: Service, source: &str) -> Option<String> {
    if source.is_empty() {
        return None;
    }
    Some(match service {
        Service::Github => format!("https://github.com/{source}"),
        Service::Gitlab => format!("https://gitlab.com/{source}"),
        Service::Bitbucket => format!("https://bitbucket.org/{source}"),
        Service::CustomGit => source.to_owned(),
    })
}

/// The clone URL of a manual start: custom-git's `build_source`, the providers' SSH URL.
pub fn manual_git_url(service: Service, source: &str) -> String {
    match service {
        Service::Github => format!("git@github.com:{source}.git"),
        Service::Gitlab => format!("git@gitlab.com:{source}.git"),
        Service::Bitbucket => format!("git@bitbucket.org:{source}.git"),
        Service::CustomGit => source.to_owned(),
    }
}

/// The trigger's config keys from a stored or submitted config object.
pub fn parse_config(config: &Map<String, Value>) -> Result<TriggerConfig, serde_json::Error> {
    serde_json::from_value(Value::Object(config.clone()))
}

/// The stored config of an active trigger, checked again (it was checked at activation).
pub fn stored_config(trigger: &Trigger) -> Result<CheckedConfig, PushError> {
    let config = parse_config(&trigger.config).map_err(|source| PushError::StoredConfig {
        uuid: trigger.uuid.clone(),
        source,
    })?;
    plan::check(&config).map_err(|source| PushError::CheckedConfig {
        uuid: trigger.uuid.clone(),
        source,
    })
}

/// The build of `metadata` (its commit already checked with [`check_commit`]) with the decided
/// `tags`. `manual_user` is the caller of a manual start, `None` for a webhook.
pub fn new_build(
    trigger: &Trigger,
    config: &CheckedConfig,
    metadata: &Metadata,
    tags: Vec<String>,
    manual_user: Option<String>,
    max_retries: u32,
) -> NewBuild {
    let c = config.config();
    NewBuild {
        repository: trigger.repository.clone(),
        display_name: metadata.commit.chars().take(7).collect(),
        job_config: JobConfig {
            docker_tags: tags,
            build_subdir: c.dockerfile_path.clone(),
            context: c.context.clone(),
            git: Some(GitSource {
                url: metadata.git_url.clone(),
                sha: metadata.commit.clone(),
            }),
            trigger_metadata: serde_json::to_value(metadata).unwrap_or(Value::Null),
            ..JobConfig::default()
        },
        pull_robot: trigger.pull_robot.clone(),
        manual_user,
        trigger_uuid: Some(trigger.uuid.clone()),
        max_retries,
        ..NewBuild::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_urls_follow_the_transport_rules() {
        for ok in [
            "ssh://git@h/a.git",
            "git@github.com:a/b.git",
            "https://h/a.git",
        ] {
            assert!(check_git_url(ok, false).is_ok(), "{ok}");
        }
        for local in ["/srv/r.git", "file:///srv/r.git"] {
            assert!(matches!(
                check_git_url(local, false),
                Err(PushError::LocalGitUrl { .. })
            ));
            assert!(check_git_url(local, true).is_ok());
        }
        for bad in [
            "",
            "-uevil",
            "ext::sh -c x",
            "ftp://h/r",
            "rel/path",
            "a b",
            "git://h/r",
        ] {
            assert!(
                matches!(check_git_url(bad, true), Err(PushError::GitUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn commits_and_build_sources_are_checked() {
        let sha = "0123456789ABCDEF0123456789abcdef01234567";
        assert_eq!(check_commit(sha).unwrap(), sha.to_ascii_lowercase());
        assert!(check_commit("0123456").is_err());
        assert!(check_build_source(Service::Github, "acme/app", false).is_ok());
        assert!(check_build_source(Service::Gitlab, "g/sub/app", false).is_ok());
        for bad in ["acme", "a/b/c", "a/", "a/../b", "a/b c"] {
            assert!(
                check_build_source(Service::Bitbucket, bad, false).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            repository_url(Service::Gitlab, "g/app").as_deref(),
            Some("https://gitlab.com/g/app")
        );
        assert_eq!(repository_url(Service::Github, ""), None);
        assert_eq!(
            manual_git_url(Service::Bitbucket, "a/b"),
            "git@bitbucket.org:a/b.git"
        );
    }
}
