//! From a trigger and the push it was told about (a webhook delivery or a manual start) to the
//! build to queue: [`queue`] checks the trigger again inside the transaction that creates the
//! build, takes the clone URL from the trigger (never from a payload), normalises the commit,
//! decides the tags and creates the build.

use registry_core::db::DbError;
use rusqlite::Connection;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq as _;
use triggers::metadata::Metadata;
use triggers::plan::{self, CheckedConfig, Decision, TriggerConfig};

use super::source::{check_git_url, clone_url};
use super::store::{self, StoreError, Trigger};
use crate::db::BuildDbError;
use crate::model::{self, Build, GitSource, JobConfig, NewBuild};

pub use super::source::PushError;

/// Why [`queue`] queued nothing.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The trigger was deleted (or is not the repository's).
    #[error("no trigger {uuid}")]
    Gone {
        /// The trigger.
        uuid: String,
    },
    /// The trigger was re-activated (its webhook token replaced) since the delivery was
    /// authenticated.
    #[error("trigger {uuid} has a new webhook token: send the delivery to its current webhook URL")]
    TokenReplaced {
        /// The trigger.
        uuid: String,
    },
    /// The trigger was never activated.
    #[error(
        "trigger {uuid} is not active: activate it with POST .../trigger/{uuid}/activate first"
    )]
    NotActive {
        /// The trigger.
        uuid: String,
    },
    /// The trigger is disabled.
    #[error(
        "trigger {uuid} is disabled ({reason}): a repository admin can enable it with \
         PUT .../trigger/{uuid} {{\"enabled\": true}}"
    )]
    Disabled {
        /// The trigger.
        uuid: String,
        /// Quay's `disabled_reason`.
        reason: String,
    },
    /// The source or config cannot be built.
    #[error(transparent)]
    Push(#[from] PushError),
    /// The trigger row could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The build could not be created.
    #[error(transparent)]
    Db(#[from] BuildDbError),
}

impl From<DbError> for QueueError {
    fn from(e: DbError) -> Self {
        QueueError::Db(e.into())
    }
}

/// A full commit id, trimmed and lower-cased.
pub fn check_commit(commit: &str) -> Result<String, PushError> {
    let c = commit.trim().to_ascii_lowercase();
    if c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(c)
    } else {
        Err(PushError::Commit {
            commit: commit.chars().take(80).collect(),
        })
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

/// Refuse an inactive or disabled trigger.
pub fn check_usable(t: &Trigger) -> Result<(), QueueError> {
    if !t.is_active() {
        return Err(QueueError::NotActive {
            uuid: t.uuid.clone(),
        });
    }
    if !t.enabled {
        return Err(QueueError::Disabled {
            uuid: t.uuid.clone(),
            reason: t
                .disabled_reason
                .clone()
                .unwrap_or_else(|| "no reason recorded".to_owned()),
        });
    }
    Ok(())
}

/// A push (webhook) or manual start to queue with [`queue`].
#[derive(Debug)]
pub struct QueueRequest<'a> {
    /// The trigger.
    pub uuid: &'a str,
    /// The repository the request's path names (manual starts): the trigger must be its.
    pub repository: Option<&'a str>,
    /// The sealed webhook token a delivery authenticated with: it must still be the trigger's.
    pub sealed_token: Option<&'a [u8]>,
    /// What the push or start names: commit and ref (its `git_url` is replaced by the
    /// trigger's [`clone_url`]).
    pub metadata: Metadata,
    /// The caller of a manual start (no ref filter, no skip markers), `None` for a webhook.
    pub manual_user: Option<String>,
    /// ALLOW_LOCAL_GIT_SOURCES.
    pub allow_local: bool,
    /// Retries of the build.
    pub max_retries: u32,
}

/// What [`queue`] did.
#[derive(Debug)]
pub enum Queued {
    /// The build it created.
    Build(Box<Build>),
    /// The trigger's config builds nothing for this push, and why.
    Skipped(String),
}

/// In the caller's write transaction: load the trigger again and check that it exists (in the
/// request's repository), is active and enabled and (webhooks) still has the token that
/// authenticated; then check its config, the commit (normalised before the tags are decided, so
/// the short-sha tag and the display name agree) and the clone URL, decide the tags and create
/// the build (which records `build_queued`).
pub fn queue(tx: &Connection, req: QueueRequest<'_>) -> Result<Queued, QueueError> {
    let gone = || QueueError::Gone {
        uuid: req.uuid.to_owned(),
    };
    let t = store::get(tx, req.uuid)?.ok_or_else(gone)?;
    if req.repository.is_some_and(|r| r != t.repository) {
        return Err(gone());
    }
    if let Some(sealed) = req.sealed_token {
        let same = t
            .secure_webhook_token
            .as_deref()
            .is_some_and(|own| bool::from(own.ct_eq(sealed)));
        if !same {
            return Err(QueueError::TokenReplaced { uuid: t.uuid });
        }
    }
    check_usable(&t)?;
    let config = stored_config(&t)?;
    let mut metadata = req.metadata;
    metadata.commit = check_commit(&metadata.commit)?;
    metadata.git_url = clone_url(&t);
    check_git_url(&metadata.git_url, req.allow_local)?;
    let manual = req.manual_user.is_some();
    let tags = match plan::decide(&config, &metadata, manual) {
        Decision::Build { tags } => tags,
        Decision::Skip(reason) => return Ok(Queued::Skipped(reason)),
    };
    let new = new_build(
        &t,
        &config,
        &metadata,
        tags,
        req.manual_user,
        req.max_retries,
    );
    Ok(Queued::Build(Box::new(model::create(tx, &new)?)))
}

/// The build of `metadata` (commit and clone URL already checked) with the decided `tags`.
fn new_build(
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
    use serde_json::json;

    use triggers::webhook::Service;

    use super::*;
    use crate::trigger::source::repository_url;
    use crate::trigger::store::{Activation, NewTrigger};

    fn trigger(tx: &Connection, service: Service, config: Value) -> Trigger {
        let t = store::create(
            tx,
            &NewTrigger {
                service,
                repository: "acme/app",
                connected_user: "alice",
                public_key: "ssh-rsa AAAA k",
                secure_private_key: b"sealed",
            },
        )
        .unwrap();
        let Value::Object(config) = config else {
            panic!("not an object")
        };
        let a = Activation {
            config: &config,
            secure_webhook_token: b"token-1",
            secure_webhook_secret: None,
            pull_robot: None,
        };
        assert!(store::activate(tx, &t.uuid, &a).unwrap());
        store::get(tx, &t.uuid).unwrap().unwrap()
    }

    fn push(commit: &str, git_url: &str) -> Metadata {
        Metadata {
            commit: commit.to_owned(),
            git_url: git_url.to_owned(),
            git_ref: Some("refs/heads/dev".to_owned()),
            default_branch: Some("main".to_owned()),
            commit_info: None,
        }
    }

    fn request<'a>(uuid: &'a str, metadata: Metadata, token: &'a [u8]) -> QueueRequest<'a> {
        QueueRequest {
            uuid,
            repository: None,
            sealed_token: Some(token),
            metadata,
            manual_user: None,
            allow_local: false,
            max_retries: 1,
        }
    }

    #[test]
    fn the_clone_url_is_the_triggers_and_the_commit_is_normalised_before_the_tags() {
        let (_d, db) = crate::db::test_support::db();
        db.write_blocking(|tx| {
            let config = json!({"build_source": "acme/app", "clone_url": "ssh://git@ghe.corp/acme/app.git",
                "tag_templates": ["${commit_info.short_sha}-${git_url}"]});
            let t = trigger(tx, Service::Github, config);
            assert_eq!(
                repository_url(&t).as_deref(),
                Some("https://ghe.corp/acme/app")
            );
            let upper = " ABCDEF0123456789ABCDEF0123456789ABCDEF01 ";
            let evil = push(upper, "ssh://attacker.example/x.git");
            let Queued::Build(b) = queue(tx, request(&t.uuid, evil, b"token-1"))? else {
                panic!("skipped")
            };
            let git = b.job_config.git.clone().unwrap();
            assert_eq!(git.url, "ssh://git@ghe.corp/acme/app.git");
            assert_eq!(git.sha, upper.trim().to_ascii_lowercase());
            assert_eq!(b.display_name, "abcdef0");
            assert!(
                b.job_config.docker_tags.iter().any(|t| t.starts_with("abcdef0-")),
                "{:?}",
                b.job_config.docker_tags
            );
            assert!(!b.job_config.trigger_metadata.to_string().contains("attacker"));

            let gl = trigger(tx, Service::Gitlab, json!({"build_source": "g/sub/app"}));
            assert_eq!(clone_url(&gl), "git@gitlab.com:g/sub/app.git");
            assert_eq!(
                repository_url(&gl).as_deref(),
                Some("https://gitlab.com/g/sub/app")
            );
            let local = json!({"build_source": "a/b", "clone_url": "/srv/a.git"});
            let bb = trigger(tx, Service::Bitbucket, local);
            assert_eq!(repository_url(&bb), None);
            Ok::<_, QueueError>(())
        })
        .unwrap();
    }

    #[test]
    fn the_trigger_is_checked_again_in_the_transaction() {
        let (_d, db) = crate::db::test_support::db();
        db.write_blocking(|tx| {
            let t = trigger(
                tx,
                Service::CustomGit,
                json!({"build_source": "git@h:a.git"}),
            );
            let sha = "0123456789abcdef0123456789abcdef01234567";
            let r = queue(tx, request(&t.uuid, push(sha, ""), b"token-0"));
            assert!(matches!(r, Err(QueueError::TokenReplaced { .. })), "{r:?}");
            let mut manual = request(&t.uuid, push(sha, ""), b"");
            manual.sealed_token = None;
            manual.repository = Some("acme/pub");
            let r = queue(tx, manual);
            assert!(matches!(r, Err(QueueError::Gone { .. })), "{r:?}");
            store::set_enabled(tx, &t.uuid, false)?;
            let r = queue(tx, request(&t.uuid, push(sha, ""), b"token-1"));
            assert!(matches!(r, Err(QueueError::Disabled { .. })), "{r:?}");
            store::delete(tx, &t.uuid)?;
            let r = queue(tx, request(&t.uuid, push(sha, ""), b"token-1"));
            assert!(matches!(r, Err(QueueError::Gone { .. })), "{r:?}");
            let n: i64 = tx
                .query_row("SELECT COUNT(*) FROM build", [], |r| r.get(0))
                .map_err(DbError::from)?;
            assert_eq!(n, 0);
            Ok::<_, QueueError>(())
        })
        .unwrap();
    }
}
