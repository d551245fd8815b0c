//! `/api/v1/repository/{ns}/{repo}/build/...`: start, list, view, logs and cancel builds.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{StatusCode, header};
use registry_core::accounts::credentials::{self, Principal};
use registry_core::accounts::permissions::Role;
use registry_core::accounts::{self, AccountError, robots};
use registry_core::api::common::{forbidden, repo_name};
use registry_core::api::error::ApiV1Error;
use registry_core::names::RepoName;
use registry_core::repos;
use serde_json::{Value, json};

use super::error::{BuildApiError, InvalidRequest};
use super::request::{self, BuildRequest, Source};
use super::view::{self, Viewer};
use super::{ApiState, Caller, MaybeCaller, Shared, filedrop, parse_json};
use crate::control::CancelOutcome;
use crate::logs;
use crate::model::{self, Build, JobConfig, NewBuild};

/// How long an upload's download URL shown in a build view stays valid.
const VIEW_URL_TTL: Duration = Duration::from_secs(3600);
const DEFAULT_LIMIT: i64 = 5;
const MAX_LIMIT: i64 = 100;

/// The caller's standing on a repository, once checked.
#[derive(Clone, Copy, Debug)]
pub(super) struct Access {
    pub(super) role: Role,
}

/// Check that `caller` has at least `need` on `name` and that the repository exists.
///
/// As registry-core: an anonymous caller lacking the role gets 401, a known one 403; a missing
/// repository is 404 for those the role check lets through (owners, superusers), so others cannot
/// probe for private names.
async fn authorize(
    state: &Shared,
    caller: Option<Principal>,
    name: RepoName,
    need: Role,
) -> Result<Access, BuildApiError> {
    let verb = match need {
        Role::Admin => "cancel builds of",
        Role::Write => "start builds in",
        _ => "view builds of",
    };
    authorize_to(state, caller, name, need, verb).await
}

/// [`authorize`] with the action a refusal names (`"<verb> repository \"ns/repo\""`).
pub(super) async fn authorize_to(
    state: &Shared,
    caller: Option<Principal>,
    name: RepoName,
    need: Role,
    verb: &'static str,
) -> Result<Access, BuildApiError> {
    let su = state.registry.config.super_users.clone();
    let anonymous_access = state.registry.config.anonymous_access;
    state
        .registry
        .db
        .read(move |conn| {
            let mut role = credentials::repo_role(conn, caller.as_ref(), &su, &name)?;
            if caller.is_none() && !anonymous_access {
                role = Role::None;
            }
            if role < need {
                return Err(match caller {
                    None => ApiV1Error::Unauthenticated.into(),
                    Some(_) => forbidden(format!("{verb} repository {:?}", name.as_str())).into(),
                });
            }
            if repos::find(conn, &name)?.is_none() {
                return Err(ApiV1Error::NotFound {
                    kind: "repository",
                    name: name.to_string(),
                }
                .into());
            }
            Ok(Access { role })
        })
        .await
}

pub(super) fn viewer(state: &Shared, access: Access) -> Viewer {
    let writer = access.role >= Role::Write;
    Viewer {
        writer,
        sees_archive: writer || (state.settings.reader_build_logs && access.role >= Role::Read),
        admin: access.role >= Role::Admin,
    }
}

/// The signed download URL of `build`'s upload, when the viewer may see sources.
pub(super) fn upload_url(
    state: &ApiState,
    build: &Build,
    viewer: Viewer,
) -> Result<Option<String>, BuildApiError> {
    match (&build.resource_key, viewer.sees_archive) {
        (Some(file_id), true) => {
            filedrop::package_url(&state.settings, &state.registry.keys, file_id, VIEW_URL_TTL)
                .map(Some)
                .map_err(BuildApiError::Sign)
        }
        _ => Ok(None),
    }
}

/// The build `uuid` if it belongs to `repository`.
fn build_in(
    conn: &rusqlite::Connection,
    uuid: &str,
    repository: &str,
) -> Result<Build, BuildApiError> {
    match model::get(conn, uuid)? {
        Some(b) if b.repository == repository => Ok(b),
        _ => Err(BuildApiError::NoBuild {
            uuid: uuid.to_owned(),
            repository: repository.to_owned(),
        }),
    }
}

fn int_param(
    q: &HashMap<String, String>,
    name: &'static str,
    expected: &'static str,
    min: i64,
) -> Result<Option<i64>, InvalidRequest> {
    let Some(raw) = q.get(name) else {
        return Ok(None);
    };
    match raw.trim().parse::<i64>() {
        Ok(v) if v >= min => Ok(Some(v)),
        _ => Err(InvalidRequest::Query {
            name,
            value: raw.clone(),
            expected,
        }),
    }
}

/// `GET .../build/?limit=5&since=<unix seconds>`: newest first.
pub(crate) async fn list(
    State(state): State<Shared>,
    MaybeCaller(caller): MaybeCaller,
    Path((ns, repo)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, BuildApiError> {
    let name = repo_name(&ns, &repo)?;
    let limit = int_param(
        &q,
        "limit",
        "a positive integer (above 100 counts as 100)",
        1,
    )?
    .unwrap_or(DEFAULT_LIMIT)
    .min(MAX_LIMIT);
    let since_ms = int_param(&q, "since", "unix seconds", 0)?.map(|s| s.saturating_mul(1000));
    let access = authorize(&state, caller, name.clone(), Role::Read).await?;
    let viewer = viewer(&state, access);
    let st = state.clone();
    state
        .builds
        .read(move |conn| {
            let limit = u32::try_from(limit).unwrap_or(5);
            let mut out = Vec::new();
            for b in model::list(conn, name.as_str(), limit, since_ms)? {
                let url = upload_url(&st, &b, viewer)?;
                out.push(view::build_view(conn, &b, viewer, url)?);
            }
            Ok(Json(json!({ "builds": out })))
        })
        .await
}

/// `GET .../build/{uuid}` and `GET .../build/{uuid}/status`.
pub(crate) async fn get(
    State(state): State<Shared>,
    MaybeCaller(caller): MaybeCaller,
    Path((ns, repo, uuid)): Path<(String, String, String)>,
) -> Result<Json<Value>, BuildApiError> {
    let name = repo_name(&ns, &repo)?;
    let access = authorize(&state, caller, name.clone(), Role::Read).await?;
    let viewer = viewer(&state, access);
    let st = state.clone();
    state
        .builds
        .read(move |conn| {
            let b = build_in(conn, &uuid, name.as_str())?;
            let url = upload_url(&st, &b, viewer)?;
            Ok(Json(view::build_view(conn, &b, viewer, url)?))
        })
        .await
}

/// `GET .../build/{uuid}/logs?start=N` -> `{"start", "total", "logs"}`: every entry from `start`
/// (Quay's clients ask again from `total`). Needs write, or read with `reader_build_logs`.
pub(crate) async fn logs(
    State(state): State<Shared>,
    MaybeCaller(caller): MaybeCaller,
    Path((ns, repo, uuid)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, BuildApiError> {
    let name = repo_name(&ns, &repo)?;
    let start = int_param(&q, "start", "a non-negative integer", 0)?.unwrap_or(0);
    let logged_in = caller.is_some();
    let access = authorize(&state, caller, name.clone(), Role::Read).await?;
    if !viewer(&state, access).sees_archive {
        return Err(if logged_in {
            forbidden(format!("read build logs of repository {:?}", name.as_str())).into()
        } else {
            ApiV1Error::Unauthenticated.into()
        });
    }
    state
        .builds
        .read(move |conn| {
            let b = build_in(conn, &uuid, name.as_str())?;
            let (total, entries) = logs::list(conn, b.id, start, u32::MAX)?;
            Ok(Json(
                json!({"start": start, "total": total, "logs": entries}),
            ))
        })
        .await
}

/// `DELETE .../build/{uuid}` (repository admins): `201 "Okay"`, or 400 when it is too late.
pub(crate) async fn cancel(
    State(state): State<Shared>,
    Caller(caller): Caller,
    Path((ns, repo, uuid)): Path<(String, String, String)>,
) -> Result<Response, BuildApiError> {
    let name = repo_name(&ns, &repo)?;
    authorize(&state, Some(caller), name.clone(), Role::Admin).await?;
    let id = uuid.clone();
    let repository = name.to_string();
    state
        .builds
        .read(move |conn| build_in(conn, &id, &repository).map(|_| ()))
        .await?;
    match state.control.cancel(&uuid).await {
        Ok(CancelOutcome::Cancelled) => Ok((StatusCode::CREATED, Json("Okay")).into_response()),
        Ok(CancelOutcome::TooLate(_)) => Err(BuildApiError::TooLateToCancel),
        Ok(CancelOutcome::NotFound) => Err(BuildApiError::NoBuild {
            uuid,
            repository: name.to_string(),
        }),
        Err(reason) => Err(BuildApiError::Cancel { uuid, reason }),
    }
}

/// `POST .../build/`: validate, check the pull robot and the upload, insert the build and its
/// queue item in one transaction, wake the scheduler; 201 with the view and `Location`.
pub(crate) async fn create(
    State(state): State<Shared>,
    Caller(caller): Caller,
    Path((ns, repo)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, BuildApiError> {
    let name = repo_name(&ns, &repo)?;
    let access = authorize(&state, Some(caller.clone()), name.clone(), Role::Write).await?;
    let req: BuildRequest = parse_json(&body)?;
    let source = request::source(&req)?;
    if let Source::Git(git) = &source
        && !state.settings.allow_local_git_sources
        && crate::trigger::git_url::is_local(&git.url)
    {
        return Err(InvalidRequest::LocalGitSource {
            url: git.url.clone(),
        }
        .into());
    }
    let docker_tags = request::tags(&req.docker_tags)?;
    request::build_args(&req.build_args)?;
    let (build_subdir, context) = request::dockerfile_context(&req)?;
    let pull_robot = match req.pull_robot.as_deref().map(str::trim) {
        Some(robot) if !robot.is_empty() => {
            Some(check_pull_robot(&state, &caller, &name, robot.to_owned()).await?)
        }
        _ => None,
    };

    let mut job_config = JobConfig {
        docker_tags,
        build_subdir,
        context,
        build_args: req.build_args,
        ..JobConfig::default()
    };
    let mut new = NewBuild {
        repository: name.to_string(),
        pull_robot,
        manual_user: Some(caller.account.name.clone()),
        max_retries: state.settings.max_retries,
        ..NewBuild::default()
    };
    let file_id = match source {
        Source::File(id) => Some(id),
        Source::Archive(url) => {
            new.display_name = short_hash(url.as_bytes());
            job_config.archive_url = Some(url);
            None
        }
        Source::Git(git) => {
            new.display_name = git.sha.chars().take(7).collect();
            job_config.git = Some(git);
            None
        }
    };
    new.job_config = job_config;
    let viewer = viewer(&state, access);
    let account = caller.account.name;
    let st = state.clone();
    let (uuid, view) = state
        .builds
        .write(move |tx| {
            if let Some(id) = file_id {
                let sha = filedrop::usable_upload(tx, &id, &account)?;
                new.display_name = sha.chars().take(7).collect();
                new.resource_key = Some(id);
            }
            let b = model::create(tx, &new)?;
            let url = upload_url(&st, &b, viewer)?;
            Ok::<_, BuildApiError>((b.uuid.clone(), view::build_view(tx, &b, viewer, url)?))
        })
        .await?;
    state.control.wake();
    tracing::info!(build_id = %uuid, repository = %name, "build queued");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location(&name, &uuid))],
        Json(view),
    )
        .into_response())
}

/// The `Location` of a created build: its status URL. A repository name with more components is
/// one path segment, its slashes as %2F.
pub(super) fn location(name: &RepoName, uuid: &str) -> String {
    format!(
        "/api/v1/repository/{}/{}/build/{uuid}/status",
        name.namespace(),
        name.repository().replace('/', "%2F")
    )
}

/// Quay's rules for `pull_robot`: a robot of the repository's namespace (else 400), existing
/// (else 404), whose namespace the caller administers (else 403).
pub(super) async fn check_pull_robot(
    state: &Shared,
    caller: &Principal,
    repo: &RepoName,
    robot: String,
) -> Result<String, BuildApiError> {
    let Some((robot_ns, _)) = robots::split_name(&robot) else {
        return Err(InvalidRequest::PullRobotName { name: robot }.into());
    };
    if robot_ns != repo.namespace() {
        return Err(AccountError::ForeignRobot {
            robot,
            namespace: repo.namespace().to_owned(),
        }
        .into());
    }
    let namespace = robot_ns.to_owned();
    let su = state.registry.config.super_users.clone();
    let caller = caller.clone();
    state
        .registry
        .db
        .read(move |conn| {
            let account = robots::get(conn, &robot)?;
            let owner = accounts::get_namespace(conn, &namespace)?;
            if !caller.administers(conn, &su, &owner)? {
                return Err(
                    forbidden(format!("use robot {:?} as pull robot", account.name)).into(),
                );
            }
            Ok(account.name)
        })
        .await
}

/// Quay's display name for archive builds: a short hash of the URL.
fn short_hash(bytes: &[u8]) -> String {
    use registry_core::digest::{Algorithm, Digest};
    Digest::of(Algorithm::Sha256, bytes).hex()[..7].to_owned()
}
