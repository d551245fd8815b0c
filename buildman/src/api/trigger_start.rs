//! `POST .../trigger/{uuid}/start` (reference 5.6; repository admin, Quay's rule and what the
//! view's `can_invoke` says) and `GET .../trigger/{uuid}/builds` (read).

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

use super::builds;
use super::trigger_error::TriggerApiError;
use super::triggers::{authorize, load};
use super::{Caller, MaybeCaller, Shared, parse_json, view};
use crate::model;
use crate::trigger::push::{self, QueueRequest, Queued};
use crate::trigger::store;

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

/// The `ref` a manual start names: `refs`, else `branch_name`; a blank name is refused.
fn start_ref(req: &StartRequest) -> Result<Option<String>, TriggerApiError> {
    if let Some(r) = &req.refs {
        let kind = match r.kind {
            RefKind::Branch => "heads",
            RefKind::Tag => "tags",
        };
        let name = r.name.trim();
        if name.is_empty() {
            return Err(TriggerApiError::BlankRef { field: "refs.name" });
        }
        return Ok(Some(format!("refs/{kind}/{name}")));
    }
    match req.branch_name.as_deref().map(str::trim) {
        None => Ok(None),
        Some("") => Err(TriggerApiError::BlankRef {
            field: "branch_name",
        }),
        Some(branch) => Ok(Some(format!("refs/heads/{branch}"))),
    }
}

/// `POST .../trigger/{uuid}/start` (admin): build `commit_sha`; 201 + build view + `Location`.
pub(super) async fn start(
    State(state): State<Shared>,
    Caller(caller): Caller,
    Path((ns, repo, uuid)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, TriggerApiError> {
    let name = repo_name(&ns, &repo).map_err(super::BuildApiError::from)?;
    let access = authorize(&state, Some(caller.clone()), &name, Role::Admin).await?;
    let req: StartRequest = parse_json(&body)?;
    let t = load(&state, &name, &uuid).await?;
    push::check_usable(&t)?;
    let Some(sha) = req.commit_sha.as_deref().filter(|s| !s.trim().is_empty()) else {
        return Err(TriggerApiError::NoCommit {
            service: t.service.as_str(),
        });
    };
    let metadata = Metadata {
        // Checked and normalised by `queue`.
        commit: sha.to_owned(),
        // Replaced by the trigger's clone URL.
        git_url: String::new(),
        git_ref: start_ref(&req)?,
        default_branch: None,
        commit_info: None,
    };
    let viewer = builds::viewer(&state, access);
    let allow_local = state.settings.allow_local_git_sources;
    let max_retries = state.settings.max_retries;
    let repository = name.to_string();
    let user = caller.account.name.clone();
    let (build_uuid, view) = state
        .builds
        .write(move |tx| {
            let queued = push::queue(
                tx,
                QueueRequest {
                    uuid: &uuid,
                    repository: Some(&repository),
                    sealed_token: None,
                    metadata,
                    manual_user: Some(user),
                    allow_local,
                    max_retries,
                },
            )
            .map_err(|e| match e {
                push::QueueError::Gone { uuid } => TriggerApiError::NoTrigger {
                    uuid,
                    repository: Some(repository.clone()),
                },
                e => e.into(),
            })?;
            let b = match queued {
                Queued::Build(b) => b,
                Queued::Skipped(reason) => return Err(TriggerApiError::ManualSkip { reason }),
            };
            Ok::<_, TriggerApiError>((b.uuid.clone(), view::build_view(tx, &b, viewer, None)?))
        })
        .await?;
    state.control.wake();
    tracing::info!(build_id = %build_uuid, trigger = %t.uuid, repository = %name,
        "build queued by a manual trigger start");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, builds::location(&name, &build_uuid))],
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
        assert_eq!(start_ref(&req).unwrap().as_deref(), Some("refs/tags/v1"));
        let req: StartRequest = serde_json::from_value(json!({"branch_name": "main"})).unwrap();
        assert_eq!(start_ref(&req).unwrap().as_deref(), Some("refs/heads/main"));
        assert_eq!(start_ref(&StartRequest::default()).unwrap(), None);
        for blank in [
            json!({"refs": {"kind": "branch", "name": " "}}),
            json!({"branch_name": ""}),
        ] {
            let req: StartRequest = serde_json::from_value(blank).unwrap();
            assert!(matches!(
                start_ref(&req),
                Err(TriggerApiError::BlankRef { .. })
            ));
        }
        assert!(serde_json::from_value::<StartRequest>(json!({"sha": "a"})).is_err());
    }
}
