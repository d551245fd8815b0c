//! Repository notifications (reference 7.2, repository admins):
//! `GET|POST /api/v1/repository/{ns}/{repo}/notification/`,
//! `GET|DELETE|POST(reset) .../notification/{uuid}`, `POST .../notification/{uuid}/test`; and
//! the caller's in-app list: `GET /api/v1/user/notifications`,
//! `PUT /api/v1/user/notifications/{uuid}` `{"dismissed": bool}`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use http::StatusCode;
use registry_core::accounts::credentials::Principal;
use registry_core::accounts::permissions::Role;
use registry_core::api::common::{forbidden, repo_name};
use registry_core::api::error::quay_error_response;
use registry_core::names::RepoName;
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Value, json};

use super::builds::authorize_to;
use super::trigger_error::forward_to_build_api;
use super::view::rfc2822_ms;
use super::{BuildApiError, Caller, Shared, both, parse_json};
use crate::db::BuildDbError;
use crate::notify::check::{self, NotificationConfigError, NotificationRequest};
use crate::notify::methods::{Method, inapp};
use crate::notify::model::{self, NewNotification, Notification};
use crate::notify::payload::{self, Urls};
use crate::notify::{delivery_rows, inbox};

/// How many in-app notifications the list shows.
const INBOX_LIMIT: u32 = 100;

/// An error of these routes.
#[derive(Debug, thiserror::Error)]
enum NotificationApiError {
    /// Authentication, permissions, names, databases: as the builds API answers.
    #[error(transparent)]
    Api(#[from] BuildApiError),
    /// The notification is refused (400).
    #[error(transparent)]
    Invalid(#[from] NotificationConfigError),
    /// No such notification in this repository.
    #[error("notification {uuid:?} does not exist in repository {repository:?}")]
    NoNotification { uuid: String, repository: String },
    /// No such in-app notification of the caller.
    #[error("notification {uuid:?} does not exist")]
    NoUserNotification { uuid: String },
}

forward_to_build_api!(NotificationApiError);

impl From<inapp::InAppTargetError> for NotificationApiError {
    fn from(e: inapp::InAppTargetError) -> Self {
        match e {
            inapp::InAppTargetError::Accounts(a) => a.into(),
            other => NotificationApiError::Invalid(other.into()),
        }
    }
}

impl IntoResponse for NotificationApiError {
    fn into_response(self) -> Response {
        let status = match self {
            NotificationApiError::Api(e) => return e.into_response(),
            NotificationApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            NotificationApiError::NoNotification { .. }
            | NotificationApiError::NoUserNotification { .. } => StatusCode::NOT_FOUND,
        };
        quay_error_response(status, &self)
    }
}

type Result<T> = std::result::Result<T, NotificationApiError>;

/// Register this module's routes on `r`.
pub(super) fn routes(r: Router<Shared>) -> Router<Shared> {
    const LIST: &str = "/api/v1/repository/{ns}/{repo}/notification/";
    const ONE: &str = "/api/v1/repository/{ns}/{repo}/notification/{uuid}";
    let mut r = both(r, LIST, get(list).post(create));
    r = both(r, ONE, get(get_one).delete(delete).post(reset));
    r = both(r, &format!("{ONE}/test"), post(test));
    r = both(r, "/api/v1/user/notifications", get(user_list));
    both(r, "/api/v1/user/notifications/{uuid}", put(user_update))
}

/// Check that `caller` administers the existing repository `name` (401/403/404 as the builds
/// API answers).
async fn admin(state: &Shared, caller: Principal, name: RepoName) -> Result<()> {
    authorize_to(
        state,
        Some(caller),
        name,
        Role::Admin,
        "manage notifications of",
    )
    .await?;
    Ok(())
}

/// The caller of the in-app list: a user's own credentials, never a scoped token (a trigger's
/// webhook token is scoped to one repository and must not read its owner's notifications).
fn inbox_owner(caller: &Principal) -> Result<String> {
    match caller.unscoped() {
        Some(account) => Ok(account.name.clone()),
        None => Err(BuildApiError::from(forbidden(
            "read or change in-app notifications with a repository-scoped token: use the \
             user's own credentials",
        ))
        .into()),
    }
}

fn urls(state: &Shared) -> Urls {
    Urls {
        public_base_url: state.settings.public_base_url.clone(),
        server_hostname: state.registry.config.server_hostname.clone(),
    }
}

/// Quay's notification view.
fn view(n: &Notification) -> Value {
    json!({
        "uuid": n.uuid,
        "title": n.title,
        "event": n.event,
        "method": n.method,
        "config": n.config,
        "event_config": n.event_config,
        "number_of_failures": n.number_of_failures,
    })
}

async fn list(
    State(state): State<Shared>,
    Caller(caller): Caller,
    Path((ns, repo)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let name = repo_name(&ns, &repo)?;
    admin(&state, caller, name.clone()).await?;
    let all = state
        .builds
        .read(move |conn| model::list(conn, name.as_str()))
        .await?;
    let views: Vec<Value> = all.iter().map(view).collect();
    Ok(Json(json!({ "notifications": views })))
}

async fn create(
    State(state): State<Shared>,
    Caller(caller): Caller,
    Path((ns, repo)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response> {
    let name = repo_name(&ns, &repo)?;
    admin(&state, caller.clone(), name.clone()).await?;
    let req: NotificationRequest = parse_json(&body)?;
    let (method, config, event_config) = check::check(
        &req,
        &state.settings.notifications,
        &urls(&state),
        name.as_str(),
    )?;
    if method == Method::QuayNotification {
        let (repo, cfg) = (name.clone(), config.clone());
        state
            .registry
            .db
            .read(move |conn| {
                let target = inapp::target(&cfg)?;
                inapp::check_recipients(conn, &repo, target)?;
                Ok::<_, NotificationApiError>(())
            })
            .await?;
    }
    let new = NewNotification {
        repository: name.to_string(),
        event: req.event,
        method: method.as_str().to_owned(),
        title: req
            .title
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty()),
        config,
        event_config,
        created_by: caller.account.name,
    };
    let n = state
        .builds
        .write(move |tx| model::create(tx, &new))
        .await?;
    tracing::info!(notification = %n.uuid, repository = %n.repository, event = %n.event,
        method = %n.method, "notification created");
    Ok((StatusCode::CREATED, Json(view(&n))).into_response())
}

/// The notification `uuid` of the repository, after the admin check.
async fn find(
    state: &Shared,
    caller: Principal,
    ns: &str,
    repo: &str,
    uuid: String,
) -> Result<Notification> {
    let name = repo_name(ns, repo)?;
    admin(state, caller, name.clone()).await?;
    let repository = name.to_string();
    let (r2, u2) = (repository.clone(), uuid.clone());
    state
        .builds
        .read(move |conn| model::get(conn, &r2, &u2))
        .await?
        .ok_or(NotificationApiError::NoNotification { uuid, repository })
}

/// [`find`], then `change` (a `model` function of the repository and uuid) on that row in a write
/// transaction. Returns the notification as found.
async fn find_and_write(
    state: &Shared,
    caller: Principal,
    ns: &str,
    repo: &str,
    uuid: String,
    change: fn(&Connection, &str, &str) -> std::result::Result<bool, BuildDbError>,
) -> Result<Notification> {
    let n = find(state, caller, ns, repo, uuid).await?;
    let (repository, uuid) = (n.repository.clone(), n.uuid.clone());
    state
        .builds
        .write(move |tx| change(tx, &repository, &uuid))
        .await?;
    Ok(n)
}

async fn get_one(
    State(state): State<Shared>,
    Caller(caller): Caller,
    Path((ns, repo, uuid)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    let n = find(&state, caller, &ns, &repo, uuid).await?;
    Ok(Json(view(&n)))
}

async fn delete(
    State(state): State<Shared>,
    Caller(caller): Caller,
    Path((ns, repo, uuid)): Path<(String, String, String)>,
) -> Result<StatusCode> {
    let n = find_and_write(&state, caller, &ns, &repo, uuid, model::delete).await?;
    tracing::info!(notification = %n.uuid, repository = %n.repository, "notification deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Quay's `POST .../notification/{uuid}`: reset the failure count (204).
async fn reset(
    State(state): State<Shared>,
    Caller(caller): Caller,
    Path((ns, repo, uuid)): Path<(String, String, String)>,
) -> Result<StatusCode> {
    find_and_write(&state, caller, &ns, &repo, uuid, model::reset_failures).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST .../notification/{uuid}/test`: queue one delivery with sample data of its event.
async fn test(
    State(state): State<Shared>,
    Caller(caller): Caller,
    Path((ns, repo, uuid)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    let n = find(&state, caller, &ns, &repo, uuid).await?;
    let data = payload::sample(&urls(&state), &n.repository, &n.event);
    let (uuid, event) = (n.uuid.clone(), n.event.clone());
    state
        .builds
        .write(move |tx| delivery_rows::queue(tx, &uuid, &event, &data))
        .await?;
    Ok(Json(json!({})))
}

async fn user_list(State(state): State<Shared>, Caller(caller): Caller) -> Result<Json<Value>> {
    let user = inbox_owner(&caller)?;
    let rows = state
        .builds
        .read(move |conn| inbox::list(conn, &user, INBOX_LIMIT))
        .await?;
    let views: Vec<Value> = rows
        .iter()
        .map(|n| {
            json!({
                "id": n.uuid,
                "kind": n.kind,
                "created": rfc2822_ms(n.created_ms),
                "metadata": n.metadata,
                "dismissed": n.dismissed,
                "organization": null,
            })
        })
        .collect();
    Ok(Json(json!({ "notifications": views })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Dismiss {
    dismissed: bool,
}

async fn user_update(
    State(state): State<Shared>,
    Caller(caller): Caller,
    Path(uuid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let user = inbox_owner(&caller)?;
    let req: Dismiss = parse_json(&body)?;
    let u2 = uuid.clone();
    let found = state
        .builds
        .write(move |tx| inbox::set_dismissed(tx, &user, &u2, req.dismissed))
        .await?;
    if !found {
        return Err(NotificationApiError::NoUserNotification { uuid });
    }
    Ok(Json(json!({"id": uuid, "dismissed": req.dismissed})))
}
