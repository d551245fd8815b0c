//! `/api/v1/repository/{ns}/{repo}/trigger/...` (reference 6.2): create (Quarry's replacement
//! for Quay's OAuth setup pages), list, view, activate, enable or disable, delete, start by hand,
//! and the builds of a trigger. Repository admins only, except the builds list (read).

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::StatusCode;
use registry_core::accounts::credentials::Principal;
use registry_core::accounts::permissions::Role;
use registry_core::accounts::tokens::{self, TokenScope};
use registry_core::accounts::{self, AccountKind};
use registry_core::api::common::repo_name;
use registry_core::names::RepoName;
use serde::Deserialize;
use serde_json::{Value, json};
use triggers::webhook::Service;

use super::builds::{self, Access};
use super::trigger_error::TriggerApiError;
use super::{Caller, Shared, both, parse_json, trigger_start, view};
use crate::trigger::push::QueueError;
use crate::trigger::store::{self, Activation, NewTrigger, Trigger};
use crate::trigger::{activate, deploy_key};

const ADMIN: &str = "manage build triggers of";

/// Register this module's routes on `r`.
pub(super) fn routes(r: Router<Shared>) -> Router<Shared> {
    const TRIGGERS: &str = "/api/v1/repository/{ns}/{repo}/trigger/";
    const TRIGGER: &str = "/api/v1/repository/{ns}/{repo}/trigger/{uuid}";
    let mut r = both(r, TRIGGERS, get(list).post(create));
    r = both(r, TRIGGER, get(get_one).put(toggle).delete(delete));
    r = both(r, &format!("{TRIGGER}/activate"), post(activate));
    r = both(r, &format!("{TRIGGER}/start"), post(trigger_start::start));
    both(
        r,
        &format!("{TRIGGER}/builds"),
        get(trigger_start::trigger_builds),
    )
}

pub(super) async fn authorize(
    state: &Shared,
    caller: Option<Principal>,
    name: &RepoName,
    need: Role,
) -> Result<Access, TriggerApiError> {
    let verb = match need {
        Role::Admin => ADMIN,
        Role::Write => "start builds in",
        _ => "view builds of",
    };
    Ok(builds::authorize_to(state, caller, name.clone(), need, verb).await?)
}

/// The trigger `uuid` of `repository`, else 404.
pub(super) async fn load(
    state: &Shared,
    name: &RepoName,
    uuid: &str,
) -> Result<Trigger, TriggerApiError> {
    let id = uuid.to_owned();
    let found = state.builds.read(move |c| store::get(c, &id)).await?;
    match found {
        Some(t) if t.repository == name.as_str() => Ok(t),
        _ => Err(TriggerApiError::NoTrigger {
            uuid: uuid.to_owned(),
            repository: Some(name.to_string()),
        }),
    }
}

/// The repository `ns/repo`, once `caller` is found to administer it.
async fn admin_repo(
    state: &Shared,
    caller: Principal,
    ns: &str,
    repo: &str,
) -> Result<RepoName, TriggerApiError> {
    let name = repo_name(ns, repo).map_err(super::BuildApiError::from)?;
    authorize(state, Some(caller), &name, Role::Admin).await?;
    Ok(name)
}

/// [`admin_repo`], then its trigger `uuid` (else 404).
async fn admin_trigger(
    state: &Shared,
    caller: Principal,
    ns: &str,
    repo: &str,
    uuid: &str,
) -> Result<(RepoName, Trigger), TriggerApiError> {
    let name = admin_repo(state, caller, ns, repo).await?;
    let t = load(state, &name, uuid).await?;
    Ok((name, t))
}

/// `<scheme>://$token:<token>@<host>/webhooks/push/trigger/<uuid>` (Quay's
/// `_prepare_webhook_url`), from `public_base_url`.
pub(super) fn webhook_url(public_base_url: &str, token: &str, uuid: &str) -> String {
    let base = public_base_url.trim_end_matches('/');
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    format!("{scheme}://$token:{token}@{rest}/webhooks/push/trigger/{uuid}")
}

/// The admin view of `t`, with the webhook URL when the token opens.
fn admin_view(state: &Shared, t: &Trigger) -> Value {
    let url = t.secure_webhook_token.as_deref().and_then(|sealed| {
        match state.secrets.open_string(sealed) {
            Ok(token) => Some(webhook_url(
                &state.settings.public_base_url,
                &token,
                &t.uuid,
            )),
            Err(e) => {
                tracing::warn!(trigger = %t.uuid, error = %e,
                    "webhook token of a trigger does not open; its URL is not shown");
                None
            }
        }
    });
    view::trigger_view(t, true, false, url.as_deref())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    service: String,
}

/// `POST .../trigger/` `{"service"}`: an inactive trigger with a fresh deploy key.
async fn create(
    State(state): State<Shared>,
    Caller(caller): Caller,
    Path((ns, repo)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, TriggerApiError> {
    let name = admin_repo(&state, caller.clone(), &ns, &repo).await?;
    let req: CreateRequest = parse_json(&body)?;
    let service: Service = req.service.trim().parse()?;
    let comment = format!("{} Builder", state.settings.triggers.registry_title);
    let key = deploy_key::generate(comment).await?;
    let sealed = state.secrets.seal(key.private_pem.as_bytes())?;
    let user = caller.account.name.clone();
    let repository = name.to_string();
    let t = state
        .builds
        .write(move |tx| {
            store::create(
                tx,
                &NewTrigger {
                    service,
                    repository: &repository,
                    connected_user: &user,
                    public_key: &key.public_openssh,
                    secure_private_key: &sealed,
                },
            )
        })
        .await?;
    tracing::info!(trigger = %t.uuid, repository = %name, service = service.as_str(),
        "build trigger created");
    Ok((StatusCode::CREATED, Json(admin_view(&state, &t))).into_response())
}

/// `GET .../trigger/`.
async fn list(
    State(state): State<Shared>,
    Caller(caller): Caller,
    Path((ns, repo)): Path<(String, String)>,
) -> Result<Json<Value>, TriggerApiError> {
    let name = admin_repo(&state, caller, &ns, &repo).await?;
    let repository = name.to_string();
    let all = state
        .builds
        .read(move |c| store::list(c, &repository))
        .await?;
    let views: Vec<Value> = all.iter().map(|t| admin_view(&state, t)).collect();
    Ok(Json(json!({ "triggers": views })))
}

/// `GET .../trigger/{uuid}`.
async fn get_one(
    State(state): State<Shared>,
    Caller(caller): Caller,
    Path((ns, repo, uuid)): Path<(String, String, String)>,
) -> Result<Json<Value>, TriggerApiError> {
    let (_, t) = admin_trigger(&state, caller, &ns, &repo, &uuid).await?;
    Ok(Json(admin_view(&state, &t)))
}

#[derive(Debug, Deserialize)]
struct ActivateRequest {
    #[serde(default)]
    config: Option<Value>,
    #[serde(default)]
    pull_robot: Option<String>,
}

/// `POST .../trigger/{uuid}/activate` `{"config", "pull_robot"?}`: check the config, mint the
/// webhook token (a write token of the trigger's user on this repository), seal it and the
/// webhook secret, store.
async fn activate(
    State(state): State<Shared>,
    Caller(caller): Caller,
    Path((ns, repo, uuid)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Json<Value>, TriggerApiError> {
    let (name, t) = admin_trigger(&state, caller.clone(), &ns, &repo, &uuid).await?;
    let req: ActivateRequest = parse_json(&body)?;
    let checked = activate::check(
        t.service,
        req.config,
        state.settings.allow_local_git_sources,
    )?;
    let pull_robot = match req.pull_robot.as_deref().map(str::trim) {
        Some(robot) if !robot.is_empty() => {
            Some(builds::check_pull_robot(&state, &caller, &name, robot.to_owned()).await?)
        }
        _ => None,
    };

    let user = t.connected_user.clone();
    let title = store::token_title(&t.uuid);
    let scope = TokenScope {
        repository: Some(name.clone()),
        max_role: Role::Write,
        expires_at_ms: None,
    };
    let token = state
        .registry
        .db
        .write(move |tx| {
            let owner = match accounts::find(tx, &user)? {
                Some(a) if a.enabled && a.kind != AccountKind::Org => a,
                _ => return Ok(Err(TriggerApiError::NoConnectedUser { user })),
            };
            tokens::delete_by_title(tx, &title)?;
            Ok::<_, TriggerApiError>(Ok(tokens::create_scoped(tx, &owner, &title, &scope)?))
        })
        .await??;
    let sealed_token = state.secrets.seal(token.as_bytes())?;
    let sealed_secret = checked
        .webhook_secret
        .as_deref()
        .map(|s| state.secrets.seal(s.as_bytes()))
        .transpose()?;
    let id = t.uuid.clone();
    let stored = state
        .builds
        .write(move |tx| {
            let found = store::activate(
                tx,
                &id,
                &Activation {
                    config: &checked.stored,
                    secure_webhook_token: &sealed_token,
                    secure_webhook_secret: sealed_secret.as_deref(),
                    pull_robot: pull_robot.as_deref(),
                },
            )?;
            if found { store::get(tx, &id) } else { Ok(None) }
        })
        .await;
    let t = match stored {
        Ok(Some(t)) => t,
        // Deleted meanwhile, or not stored: the new token must not outlive the failure.
        failed => {
            drop_token(&state, &uuid).await;
            return Err(match failed {
                Err(e) => e.into(),
                _ => TriggerApiError::NoTrigger {
                    uuid,
                    repository: Some(name.to_string()),
                },
            });
        }
    };
    tracing::info!(trigger = %t.uuid, repository = %name, "build trigger activated");
    Ok(Json(admin_view(&state, &t)))
}

/// Delete the webhook token of trigger `uuid` after a failed activation (logged, not answered:
/// the activation's own error is).
async fn drop_token(state: &Shared, uuid: &str) {
    let title = store::token_title(uuid);
    let deleted = state
        .registry
        .db
        .write(move |tx| tokens::delete_by_title(tx, &title))
        .await;
    if let Err(e) = deleted {
        tracing::warn!(trigger = %uuid, error = %crate::manager::error_chain(&e),
            "the webhook token of a failed activation could not be deleted");
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToggleRequest {
    enabled: bool,
}

/// `PUT .../trigger/{uuid}` `{"enabled": bool}` (active triggers only).
async fn toggle(
    State(state): State<Shared>,
    Caller(caller): Caller,
    Path((ns, repo, uuid)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Json<Value>, TriggerApiError> {
    let name = admin_repo(&state, caller, &ns, &repo).await?;
    let req: ToggleRequest = parse_json(&body)?;
    let t = load(&state, &name, &uuid).await?;
    if !t.is_active() {
        return Err(TriggerApiError::Queue(QueueError::NotActive { uuid }));
    }
    let id = t.uuid.clone();
    let enabled = req.enabled;
    let t = state
        .builds
        .write(move |tx| {
            store::set_enabled(tx, &id, enabled)?;
            store::get(tx, &id)
        })
        .await?
        .ok_or(TriggerApiError::NoTrigger {
            uuid,
            repository: Some(name.to_string()),
        })?;
    tracing::info!(trigger = %t.uuid, enabled, "build trigger toggled");
    Ok(Json(admin_view(&state, &t)))
}

/// `DELETE .../trigger/{uuid}`: the row and its webhook token; 204.
async fn delete(
    State(state): State<Shared>,
    Caller(caller): Caller,
    Path((ns, repo, uuid)): Path<(String, String, String)>,
) -> Result<StatusCode, TriggerApiError> {
    let (name, t) = admin_trigger(&state, caller, &ns, &repo, &uuid).await?;
    // The token first: if the row's deletion then fails, a retry finds the row and finishes.
    let title = store::token_title(&t.uuid);
    state
        .registry
        .db
        .write(move |tx| tokens::delete_by_title(tx, &title))
        .await?;
    let id = t.uuid.clone();
    state.builds.write(move |tx| store::delete(tx, &id)).await?;
    tracing::info!(trigger = %t.uuid, repository = %name, "build trigger deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_carry_the_token_in_the_userinfo() {
        assert_eq!(
            webhook_url("https://quarry.example:8443/", "tok", "u1"),
            "https://$token:tok@quarry.example:8443/webhooks/push/trigger/u1"
        );
        assert_eq!(
            webhook_url("127.0.0.1:8080", "t", "u"),
            "http://$token:t@127.0.0.1:8080/webhooks/push/trigger/u"
        );
    }
}
