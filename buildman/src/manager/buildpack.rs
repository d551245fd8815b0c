//! The build pack handed to an agent at registration (reference 4.1, 4.2): source, context,
//! Dockerfile path, tags, build arguments and short-lived registry credentials.

use std::collections::BTreeMap;

use registry_core::accounts::permissions::Role;
use registry_core::accounts::tokens::{self, TokenScope};
use registry_core::accounts::{self, AccountKind};
use registry_core::db::now_ms;

use super::jobs::credential_titles;
use super::{Manager, ManagerError, ms};
use crate::model::Build;
use crate::tokens::{BuildContext, JobIdentity, TokenType};
use crate::trigger::store::{self, StoreError, Trigger};

/// Where the agent gets the source.
#[derive(Clone, PartialEq, Eq)]
pub enum PackSource {
    /// An archive or bare Dockerfile to download.
    Url(String),
    /// A git repository at an exact commit.
    Git {
        /// Clone URL.
        url: String,
        /// Commit to check out.
        sha: String,
        /// Deploy key (PEM), empty for none.
        private_key: String,
    },
}

// Hand-written so that a deploy key never reaches a log line.
impl std::fmt::Debug for PackSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // A signed URL's query is its credential.
            PackSource::Url(u) => write!(f, "Url({})", u.split('?').next().unwrap_or_default()),
            PackSource::Git { url, sha, .. } => write!(f, "Git({url} @ {sha})"),
        }
    }
}

/// The pull robot's credentials for the base image.
#[derive(Clone, PartialEq, Eq)]
pub struct BaseImageCredentials {
    /// The robot's name.
    pub username: String,
    /// A read-capped token owned by the robot.
    pub password: String,
}

impl std::fmt::Debug for BaseImageCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaseImageCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The build pack in domain terms; [`crate::grpc`] turns it into the wire `BuildPack`.
#[derive(Clone, PartialEq, Eq)]
pub struct BuildPackSpec {
    /// The job token for the agent's later calls.
    pub job_token: String,
    /// What to build from.
    pub source: PackSource,
    /// Build context directory inside the source.
    pub context: String,
    /// Dockerfile path, relative to the context.
    pub dockerfile_path: String,
    /// `<namespace>/<repository>`.
    pub repository: String,
    /// Registry host (with port) to push to.
    pub registry: String,
    /// Token to pull the cache tag with (login `$token`).
    pub pull_token: String,
    /// Token to push with (login `$token`).
    pub push_token: String,
    /// Tags to push.
    pub tag_names: Vec<String>,
    /// Pull robot credentials, when the build has a pull robot.
    pub base_image: Option<BaseImageCredentials>,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
}

// Hand-written so that no credential reaches a log line.
impl std::fmt::Debug for BuildPackSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildPackSpec")
            .field("source", &self.source)
            .field("context", &self.context)
            .field("dockerfile_path", &self.dockerfile_path)
            .field("repository", &self.repository)
            .field("registry", &self.registry)
            .field("tag_names", &self.tag_names)
            .field("base_image", &self.base_image.as_ref().map(|b| &b.username))
            .finish_non_exhaustive()
    }
}

/// Quay's `extract_dockerfile_args`: from the stored Dockerfile path (`build_subdir`) and
/// context, the `(context, dockerfile_path)` the agent uses, the Dockerfile path relative to the
/// context. A Dockerfile outside the context falls back to its own directory as the context.
pub fn extract_dockerfile_args(build_subdir: &str, context: &str) -> (String, String) {
    if build_subdir.is_empty() || context.is_empty() {
        return (context.to_owned(), build_subdir.to_owned());
    }
    let file = components(build_subdir);
    let ctx = components(context);
    let common = file.iter().zip(&ctx).take_while(|(a, b)| a == b).count();
    if common < ctx.len() {
        // relpath would climb out with `..`: use the Dockerfile's own directory.
        let (dir, name) = match build_subdir.rsplit_once('/') {
            Some((dir, name)) => (if dir.is_empty() { "/" } else { dir }, name),
            None => ("", build_subdir),
        };
        return (dir.to_owned(), name.to_owned());
    }
    (context.to_owned(), file[common..].join("/"))
}

/// Path components, without empty and `.` parts (both paths are absolute in Quay's terms).
fn components(path: &str) -> Vec<&str> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect()
}

impl Manager {
    /// Assemble the build pack of `build` for the agent holding `ctx` (registration), minting
    /// its job token and registry credentials.
    pub(super) async fn build_pack(
        &self,
        build: &Build,
        ctx: &BuildContext,
        attempt_id: &str,
    ) -> Result<BuildPackSpec, ManagerError> {
        let cfg = &build.job_config;
        let trigger = self.trigger_of(build).await?;
        let source = if let Some(url) = &cfg.archive_url {
            PackSource::Url(url.clone())
        } else if let Some(file_id) = &build.resource_key {
            let url = (self.package_url)(file_id, self.settings.package_url_ttl)
                .map_err(ManagerError::PackageUrl)?;
            PackSource::Url(url)
        } else if let Some(git) = &cfg.git {
            // A trigger's build clones with its deploy key; other git builds need none.
            let private_key = match &trigger {
                Some(t) => self
                    .secrets
                    .open_string(&t.secure_private_key)
                    .map_err(|source| ManagerError::DeployKey {
                        uuid: build.uuid.clone(),
                        trigger: t.uuid.clone(),
                        source,
                    })?,
                None => String::new(),
            };
            PackSource::Git {
                url: git.url.clone(),
                sha: git.sha.clone(),
                private_key,
            }
        } else {
            return Err(ManagerError::NoSource(build.uuid.clone()));
        };
        let (context, dockerfile_path) = extract_dockerfile_args(&cfg.build_subdir, &cfg.context);
        let who = JobIdentity {
            build_id: ctx.build_id.clone(),
            job_id: ctx.job_id.clone(),
            attempt_id: ctx.attempt_id.clone(),
        };
        let job_token = self
            .tokens
            .mint(TokenType::Job, &who, self.settings.machine_max_time)?;
        // A webhook's build has no starting user: it pushes as the trigger's user (Quay's
        // `connected_user`).
        let user = build
            .manual_user
            .clone()
            .or_else(|| trigger.map(|t| t.connected_user));
        let (push_token, base_image) = self.mint_credentials(build, user, attempt_id).await?;
        Ok(BuildPackSpec {
            job_token,
            source,
            context,
            dockerfile_path,
            repository: build.repository.clone(),
            registry: self.settings.registry_hostname.clone(),
            pull_token: push_token.clone(),
            push_token,
            tag_names: cfg.docker_tags.clone(),
            base_image,
            build_args: cfg.build_args.clone(),
        })
    }

    /// The trigger that started `build`, if any; a deleted one fails the build.
    async fn trigger_of(&self, build: &Build) -> Result<Option<Trigger>, ManagerError> {
        let Some(trigger) = build.trigger_uuid.clone() else {
            return Ok(None);
        };
        let id = trigger.clone();
        let found = self
            .builds
            .read(move |c| store::get(c, &id))
            .await
            .map_err(|source: StoreError| ManagerError::TriggerRow {
                uuid: build.uuid.clone(),
                trigger: trigger.clone(),
                source: Box::new(source),
            })?;
        match found {
            Some(t) => Ok(Some(t)),
            None => Err(ManagerError::TriggerGone {
                uuid: build.uuid.clone(),
                trigger,
            }),
        }
    }

    /// Create the attempt's scoped registry tokens (titled per attempt, see
    /// [`credential_titles`]): a write token on the build's repository owned by the user or robot
    /// who started it, and a read-capped token of the pull robot. Both expire with
    /// `MACHINE_MAX_TIME` and are deleted when the attempt ends. Nothing is created when either
    /// account is unusable.
    async fn mint_credentials(
        &self,
        build: &Build,
        user: Option<String>,
        attempt_id: &str,
    ) -> Result<(String, Option<BaseImageCredentials>), ManagerError> {
        let uuid = build.uuid.clone();
        let robot = build.pull_robot.clone();
        let repository = build
            .repository
            .parse()
            .map_err(|_| ManagerError::NoPushUser {
                uuid: uuid.clone(),
                problem: format!("repository name {:?} is invalid", build.repository),
            })?;
        let expires_at_ms = Some(now_ms() + ms(self.settings.machine_max_time));
        let [push_title, pull_title] = credential_titles(&uuid, attempt_id);
        self.registry
            .db
            .write(move |tx| {
                let Some(name) = user else {
                    return Ok(Err(ManagerError::NoPushUser {
                        uuid,
                        problem: "it was started by no user".to_owned(),
                    }));
                };
                // REST lets robots start builds: the push token is then the robot's, capped by
                // the robot's own rights on the repository.
                let owner = match accounts::find(tx, &name)? {
                    Some(a) if a.kind == AccountKind::Org => {
                        return Ok(Err(ManagerError::NoPushUser {
                            uuid,
                            problem: format!("{name:?} is an organization, not a user or robot"),
                        }));
                    }
                    Some(a) if a.enabled => a,
                    _ => {
                        return Ok(Err(ManagerError::NoPushUser {
                            uuid,
                            problem: format!("account {name:?} no longer exists or is disabled"),
                        }));
                    }
                };
                let puller = match robot {
                    None => None,
                    Some(robot) => match accounts::find(tx, &robot)? {
                        Some(a) if a.kind == AccountKind::Robot && a.enabled => Some(a),
                        _ => return Ok(Err(ManagerError::NoPullRobot { uuid, robot })),
                    },
                };
                // A re-run of this attempt's registration cannot happen (one-shot), but never
                // leave two tokens under one title.
                tokens::delete_by_title(tx, &push_title)?;
                tokens::delete_by_title(tx, &pull_title)?;
                let push = tokens::create_scoped(
                    tx,
                    &owner,
                    &push_title,
                    &TokenScope {
                        repository: Some(repository),
                        max_role: Role::Write,
                        expires_at_ms,
                    },
                )?;
                let base = match puller {
                    None => None,
                    Some(robot) => {
                        let password = tokens::create_scoped(
                            tx,
                            &robot,
                            &pull_title,
                            &TokenScope {
                                repository: None,
                                max_role: Role::Read,
                                expires_at_ms,
                            },
                        )?;
                        Some(BaseImageCredentials {
                            username: robot.name,
                            password,
                        })
                    }
                };
                Ok::<_, registry_core::accounts::AccountError>(Ok((push, base)))
            })
            .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_args_follow_quay() {
        let cases = [
            (("/sub/Dockerfile", "/sub"), ("/sub", "Dockerfile")),
            (("/Dockerfile", "/"), ("/", "Dockerfile")),
            (("/a/b/Dockerfile.dev", "/a"), ("/a", "b/Dockerfile.dev")),
            // Outside the context: the Dockerfile's directory becomes the context.
            (("/a/Dockerfile", "/b"), ("/a", "Dockerfile")),
            (("/Dockerfile", "/b"), ("/", "Dockerfile")),
            // Missing parts pass through.
            (("", "/"), ("/", "")),
            (("/Dockerfile", ""), ("", "/Dockerfile")),
        ];
        for ((path, ctx), (want_ctx, want_file)) in cases {
            assert_eq!(
                extract_dockerfile_args(path, ctx),
                (want_ctx.to_owned(), want_file.to_owned()),
                "{path} in {ctx}"
            );
        }
    }
}
