//! The phases of one registered build: UNPACKING (fetch the source, find the Dockerfile and its
//! base image), PULLING (base image, then the cached tag as a cache source), BUILDING, PUSHING
//! (every tag, collecting manifest digests). Each failure is classified: the user's input
//! (ERROR, not retried) or the infrastructure (ERROR, retried by buildman).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use buildman_proto::{
    BuildPack, BuildPackSource, CachedTagRequest, Phase, PullMetadata, SetPhaseRequest,
};

use crate::agent::Session;
use crate::dockerfile::{self, BaseImage};
use crate::engine::{BuildSpec, Credentials, Engine, EngineError, digest_for_repo};
use crate::env::AgentConfig;
use crate::logs::{LogLine, Logs, backoff};
use crate::source::{self, Limits, Source};

/// Attempts of a pull or a push (Quay's count).
const ATTEMPTS: u32 = 3;
/// Limit of `DetermineCachedTag`.
const CACHED_TAG_TIMEOUT: Duration = Duration::from_secs(10);
/// The user name that logs in with an access token.
const TOKEN_USER: &str = "$token";

/// Why a build stopped before COMPLETE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// A step failed; reported as ERROR with `message`.
    Failed {
        /// The error text the user sees.
        message: String,
        /// Whether buildman should retry (not the user's fault).
        retryable: bool,
    },
    /// buildman refused a phase change.
    Rejected(Phase),
    /// buildman refused heartbeats.
    JobGone,
    /// buildman could not be reached for a phase change.
    ServerLost(String),
    /// The shutdown signal arrived.
    Terminated,
}

impl Stop {
    fn user(message: impl Into<String>) -> Stop {
        Stop::Failed {
            message: message.into(),
            retryable: false,
        }
    }

    fn infra(message: impl Into<String>) -> Stop {
        Stop::Failed {
            message: message.into(),
            retryable: true,
        }
    }

    /// An engine failure, with the engine's text and its classification.
    pub fn engine(e: &EngineError) -> Stop {
        Stop::Failed {
            message: e.user_message(),
            retryable: !e.is_user_error(),
        }
    }

    fn source(e: &source::SourceError) -> Stop {
        Stop::Failed {
            message: crate::error_chain(e),
            retryable: !e.is_user_error(),
        }
    }
}

/// One build's inputs and the images it leaves in the engine (removed afterwards).
pub(crate) struct Build<'a, E> {
    pub(crate) config: &'a AgentConfig,
    pub(crate) pack: &'a BuildPack,
    pub(crate) engine: &'a E,
    pub(crate) work: &'a Path,
    pub(crate) images: &'a mut Vec<String>,
}

impl<E: Engine> Build<'_, E> {
    /// Run every phase after UNPACKING was set; returns one digest per pushed tag.
    pub(crate) async fn run(self, s: &mut Session) -> Result<Vec<String>, Stop> {
        let logs = s.logs.clone();
        let Build {
            config,
            pack,
            engine,
            work,
            images,
        } = self;
        let registry = if pack.registry.is_empty() {
            config.registry_hostname.clone().unwrap_or_default()
        } else {
            pack.registry.clone()
        };

        // UNPACKING: the source, the context, the base image.
        let src = match &pack.build_pack {
            Some(BuildPackSource::PackageUrl(url)) if !url.is_empty() => {
                Source::Archive { url: url.clone() }
            }
            Some(BuildPackSource::GitPackage(git)) => Source::Git {
                url: git.url.clone(),
                sha: git.sha.clone(),
                private_key: Some(git.private_key.clone()).filter(|k| !k.is_empty()),
            },
            _ => {
                return Err(Stop::infra(
                    "the build pack names no source: neither package_url nor git_package",
                ));
            }
        };
        logs.send(LogLine::stream("fetching the build source\n"))
            .await;
        let dest = work.join("src");
        let limits = Limits {
            max_bytes: config.max_context_bytes,
            ..Limits::default()
        };
        let progress = |line: &str| logs.post(LogLine::stream(&with_newline(line)));
        source::fetch(&src, &dest, &limits, &progress)
            .await
            .map_err(|e| Stop::source(&e))?;
        let (context_dir, dockerfile) =
            source::resolve_context(&dest, &pack.context, &pack.dockerfile_path)
                .map_err(|e| Stop::source(&e))?;
        let text = std::fs::read_to_string(context_dir.join(&dockerfile))
            .map_err(|e| Stop::user(format!("cannot read the Dockerfile {dockerfile:?}: {e}")))?;
        let build_args: BTreeMap<String, String> = pack
            .build_args
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let base =
            dockerfile::base_image(&text, &build_args).map_err(|e| Stop::user(e.to_string()))?;

        // PULLING: the base image, with the pull robot's credentials only for our registry.
        let base_ref = match &base {
            BaseImage::Scratch => None,
            BaseImage::Image(r) => Some(r),
        };
        let robot = pack.base_image.as_ref().filter(|b| !b.username.is_empty());
        let base_creds = match (base_ref, robot) {
            (Some(r), Some(b))
                if r.domain()
                    .is_some_and(|d| d.eq_ignore_ascii_case(&registry)) =>
            {
                Some(Credentials {
                    username: b.username.clone(),
                    password: b.password.clone(),
                })
            }
            _ => None,
        };
        s.set_phase(SetPhaseRequest {
            phase: Phase::Pulling as i32,
            pull_metadata: Some(PullMetadata {
                registry_url: registry.clone(),
                base_image: base_ref.map_or_else(|| "scratch".to_owned(), |r| r.name.clone()),
                base_image_tag: base_ref.map(|r| r.tag.clone()).unwrap_or_default(),
                pull_username: base_creds
                    .as_ref()
                    .map(|c| c.username.clone())
                    .unwrap_or_default(),
            }),
            ..SetPhaseRequest::default()
        })
        .await?;
        let mut base_id = String::new();
        if let Some(r) = base_ref {
            let reference = r.pull_ref();
            pull(engine, &reference, base_creds.as_ref(), &logs).await?;
            images.push(reference.clone());
            base_id = engine
                .inspect(&reference)
                .await
                .map(|i| i.id)
                .unwrap_or_default();
        }

        // Checking and priming the cache: failures here only cost the cache.
        let cached = s.client.determine_cached_tag(CachedTagRequest {
            job_jwt: s.job_jwt.clone(),
            base_image_name: base_ref.map(|r| r.name.clone()).unwrap_or_default(),
            base_image_tag: base_ref.map(|r| r.tag.clone()).unwrap_or_default(),
            base_image_id: base_id,
        });
        let cached = match tokio::time::timeout(CACHED_TAG_TIMEOUT, cached).await {
            Ok(Ok(resp)) => resp.into_inner().cached_tag,
            Ok(Err(status)) => {
                tracing::warn!(error = %status.message(), "DetermineCachedTag failed; building without a cache");
                String::new()
            }
            Err(_) => String::new(),
        };
        let repo = format!("{registry}/{}", pack.repository);
        let mut cache_from = Vec::new();
        if !cached.is_empty() && !pack.pull_token.is_empty() {
            let cache_ref = format!("{repo}:{cached}");
            logs.send(LogLine::stream(&format!(
                "priming the cache from {cache_ref}\n"
            )))
            .await;
            let creds = Credentials {
                username: TOKEN_USER.to_owned(),
                password: pack.pull_token.clone(),
            };
            match pull(engine, &cache_ref, Some(&creds), &logs).await {
                Ok(()) => {
                    images.push(cache_ref.clone());
                    cache_from.push(cache_ref);
                }
                Err(_) => {
                    logs.send(LogLine::stream(
                        "could not pull the cached image; building without it\n",
                    ))
                    .await;
                }
            }
        }

        // BUILDING.
        s.set_phase(SetPhaseRequest {
            phase: Phase::Building as i32,
            ..SetPhaseRequest::default()
        })
        .await?;
        let image = format!("quarry-build-{}", uuid::Uuid::new_v4().simple());
        images.push(image.clone());
        let spec = BuildSpec {
            context_dir,
            dockerfile,
            image: image.clone(),
            build_args,
            cache_from,
        };
        engine
            .build(&spec, &logs)
            .await
            .map_err(|e| Stop::engine(&e))?;

        // PUSHING: every tag, each with its manifest digest.
        s.set_phase(SetPhaseRequest {
            phase: Phase::Pushing as i32,
            ..SetPhaseRequest::default()
        })
        .await?;
        let push_creds = Credentials {
            username: TOKEN_USER.to_owned(),
            password: pack.push_token.clone(),
        };
        let default_tags = vec!["latest".to_owned()];
        let tags = if pack.tag_names.is_empty() {
            &default_tags
        } else {
            &pack.tag_names
        };
        let mut digests = Vec::with_capacity(tags.len());
        for tag in tags {
            engine
                .tag(&image, &repo, tag)
                .await
                .map_err(|e| Stop::engine(&e))?;
            images.push(format!("{repo}:{tag}"));
            let from_output = push(engine, &repo, tag, &push_creds, &logs).await?;
            let digest = match from_output {
                Some(d) => d,
                None => {
                    let info = engine
                        .inspect(&format!("{repo}:{tag}"))
                        .await
                        .map_err(|e| Stop::engine(&e))?;
                    digest_for_repo(&info.repo_digests, &repo).ok_or_else(|| {
                        Stop::infra(format!(
                            "pushed {repo}:{tag} but the engine reported no manifest digest for it"
                        ))
                    })?
                }
            };
            logs.send(LogLine::stream(&format!(
                "pushed {repo}:{tag} as {digest}\n"
            )))
            .await;
            digests.push(digest);
        }
        Ok(digests)
    }
}

fn with_newline(line: &str) -> String {
    if line.ends_with('\n') {
        line.to_owned()
    } else {
        format!("{line}\n")
    }
}

/// Pull with [`ATTEMPTS`] tries; the user's errors (no such image, no access) are not retried.
async fn pull<E: Engine>(
    engine: &E,
    reference: &str,
    creds: Option<&Credentials>,
    logs: &Logs,
) -> Result<(), Stop> {
    let mut attempt = 1;
    loop {
        match engine.pull(reference, creds, logs).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_user_error() || attempt == ATTEMPTS => return Err(Stop::engine(&e)),
            Err(e) => {
                retry_line(logs, "pull", reference, attempt, &e).await;
                attempt += 1;
            }
        }
    }
}

/// Push with [`ATTEMPTS`] tries; returns the digest the engine printed, if any.
async fn push<E: Engine>(
    engine: &E,
    repo: &str,
    tag: &str,
    creds: &Credentials,
    logs: &Logs,
) -> Result<Option<String>, Stop> {
    let mut attempt = 1;
    loop {
        match engine.push(repo, tag, creds, logs).await {
            Ok(digest) => return Ok(digest),
            Err(e) if attempt == ATTEMPTS => {
                // A push failure is never the Dockerfile's fault: retry the build elsewhere.
                return Err(Stop::infra(e.user_message()));
            }
            Err(e) => {
                retry_line(logs, "push", &format!("{repo}:{tag}"), attempt, &e).await;
                attempt += 1;
            }
        }
    }
}

async fn retry_line(logs: &Logs, what: &str, target: &str, attempt: u32, e: &EngineError) {
    let text = format!(
        "{what} of {target} failed (attempt {attempt} of {ATTEMPTS}): {}; retrying\n",
        e.user_message()
    );
    tracing::warn!("{}", text.trim_end());
    logs.send(LogLine::stream(&text)).await;
    tokio::time::sleep(backoff(attempt + 2)).await;
}
