//! `POST .../trigger/{uuid}/start` (reference 5.6; repository write) and
//! `GET .../trigger/{uuid}/builds` (read).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{StatusCode, header};
use registry_core::accounts::permissions::Role;
use registry_core::api::common::repo_name;
use serde::Deserialize;
use serde_json::{Value, json};
use triggers::metadata::Metadata;
use triggers::plan::Decision;

use super::builds;
use super::trigger_error::TriggerApiError;
use super::triggers::{authorize, load};
use super::{Caller, MaybeCaller, Shared, parse_json, view};
use crate::model;
use crate::trigger::push;
use crate::trigger::store::{self, Trigger};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefSpec {
    kind: RefKind,
    name: String,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RefKind {
    Branch,
    Tag,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    #[serde(default)]
    commit_sha: Option<String>,
    #[serde(default)]
    refs: Option<RefSpec>,
    #[serde(default)]
    branch_name: Option<String>,
}

/// The `ref` a manual start names: `refs`, else `branch_name`.
fn start_ref(req: &StartRequest) -> Option<String> {
    if let Some(r) = &req.refs {
        let kind = match r.kind {
            RefKind::Branch => "heads",
            RefKind::Tag => "tags",
        };
        return Some(format!("refs/{kind}/{}", r.name.trim()));
    }
    let branch = req.branch_name.as_deref().map(str::trim)?;
    (!branch.is_empty()).then(|| format!("refs/heads/{branch}"))
}

/// Refuse an inactive or disabled trigger.
pub(super) fn check_usable(t: &Trigger) -> Result<(), TriggerApiError> {
    if !t.is_active() {
        return Err(TriggerApiError::NotActive {
            uuid: t.uuid.clone(),
        });
    }
    if !t.enabled {
        return Err(TriggerApiError::Disabled {
            uuid: t.uuid.clone(),
            reason: t
                .disabled_reason
                .clone()
                .unwrap_or_else(|| "no reason recorded".to_owned()),
        });
    }
    Ok(())
}

/// `POST .../trigger/{uuid}/start` (write): build `commit_sha`; 201 + build view + `Location`.
pub(super) async fn start(
    State(state): State<Shared>,
    Caller(caller): Caller,
    Path((ns, repo, uuid)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, TriggerApiError> {
    let name = repo_name(&ns, &repo).map_err(super::BuildApiError::from)?;
    let access = authorize(&state, Some(caller.clone()), &name, Role::Write).await?;
    let req: StartRequest = parse_json(&body)?;
    let t = load(&state, &name, &uuid).await?;
    check_usable(&t)?;
    let Some(sha) = req.commit_sha.as_deref().filter(|s| !s.trim().is_empty()) else {
        return Err(TriggerApiError::NoCommit {
            service: t.service.as_str(),
        });
    };
    let commit = push::check_commit(sha)?;
    let config = push::stored_config(&t)?;
    let metadata = Metadata {
        commit,
        git_url: push::manual_git_url(t.service, t.build_source()),
        git_ref: start_ref(&req),
        default_branch: None,
        commit_info: None,
    };
    push::check_git_url(&metadata.git_url, state.settings.allow_local_git_sources)?;
    let tags = match triggers::plan::decide(&config, &metadata, true) {
        Decision::Build { tags } => tags,
        Decision::Skip(reason) => return Err(TriggerApiError::ManualSkip { reason }),
    };
    let new = push::new_build(
        &t,
        &config,
        &metadata,
        tags,
        Some(caller.account.name.clone()),
        state.settings.max_retries,
    );
    let viewer = builds::viewer(&state, access);
    let (build_uuid, view) = state
        .builds
        .write(move |tx| {
            let b = model::create(tx, &new)?;
            Ok::<_, TriggerApiError>((b.uuid.clone(), view::build_view(tx, &b, viewer, None)?))
        })
        .await?;
    state.control.wake();
    tracing::info!(build_id = %build_uuid, trigger = %t.uuid, repository = %name,
        "build queued by a manual trigger start");
    let location = format!(
        "/api/v1/repository/{}/{}/build/{build_uuid}/status",
        name.namespace(),
        name.repository().replace('/', "%2F")
    );
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response())
}

/// `GET .../trigger/{uuid}/builds?limit=5` (read): newest first.
pub(super) async fn trigger_builds(
    State(state): State<Shared>,
    MaybeCaller(caller): MaybeCaller,
    Path((ns, repo, uuid)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, TriggerApiError> {
    let name = repo_name(&ns, &repo).map_err(super::BuildApiError::from)?;
    let limit = match q.get("limit").map(|l| l.trim().parse::<u32>()) {
        None => 5,
        Some(Ok(n)) if n >= 1 => n.min(100),
        Some(_) => {
            return Err(
                super::BuildApiError::from(super::error::InvalidRequest::Query {
                    name: "limit",
                    value: q.get("limit").cloned().unwrap_or_default(),
                    expected: "a positive integer (above 100 counts as 100)",
                })
                .into(),
            );
        }
    };
    let access = authorize(&state, caller, &name, Role::Read).await?;
    let t = load(&state, &name, &uuid).await?;
    let viewer = builds::viewer(&state, access);
    let st = state.clone();
    let out = state
        .builds
        .read(move |c| {
            let mut out = Vec::new();
            for id in store::build_uuids(c, &t.uuid, limit)? {
                if let Some(b) = model::get(c, &id)? {
                    let url = builds::upload_url(&st, &b, viewer)?;
                    out.push(view::build_view(c, &b, viewer, url)?);
                }
            }
            Ok::<_, TriggerApiError>(out)
        })
        .await?;
    Ok(Json(json!({ "builds": out })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_refs_come_from_refs_or_branch_name() {
        let req: StartRequest = serde_json::from_value(
            json!({"commit_sha": "a", "refs": {"kind": "tag", "name": "v1"}}),
        )
        .unwrap();
        assert_eq!(start_ref(&req).as_deref(), Some("refs/tags/v1"));
        let req: StartRequest = serde_json::from_value(json!({"branch_name": "main"})).unwrap();
        assert_eq!(start_ref(&req).as_deref(), Some("refs/heads/main"));
        assert_eq!(start_ref(&StartRequest::default()), None);
        assert!(serde_json::from_value::<StartRequest>(json!({"sha": "a"})).is_err());
    }
}
