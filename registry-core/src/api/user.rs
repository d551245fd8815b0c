//! `/api/v1/user/` (the caller) and `/api/v1/superuser/users/` (superusers only).

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::common::{Caller, forbidden, parse_body};
use super::error::ApiV1Error;
use crate::accounts::credentials::Principal;
use crate::accounts::orgs::{self, TeamRole};
use crate::accounts::{AccountError, AccountKind, secrets, users};
use crate::state::AppState;

/// `GET /api/v1/user/`: who the caller is and which organisations it belongs to.
pub async fn me(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<Value>, ApiV1Error> {
    let super_user = caller.is_superuser(&state.config.super_users);
    state
        .db
        .read(move |conn| {
            let account = &caller.account;
            let organizations: Vec<Value> = orgs::orgs_of(conn, account.id)?
                .iter()
                .map(|(org, role)| {
                    json!({
                        "name": org.name,
                        "is_org_admin": *role == TeamRole::Admin,
                        "can_create_repo": *role >= TeamRole::Creator,
                        "preferred_namespace": false,
                    })
                })
                .collect();
            Ok(Json(json!({
                "anonymous": false,
                "username": account.name,
                "email": account.email,
                "verified": true,
                "is_robot": account.kind == AccountKind::Robot,
                "super_user": super_user,
                "can_create_repo": account.kind == AccountKind::User,
                "organizations": organizations,
            })))
        })
        .await
}

fn require_superuser(state: &AppState, caller: &Principal) -> Result<(), ApiV1Error> {
    if caller.is_superuser(&state.config.super_users) {
        Ok(())
    } else {
        Err(forbidden("use the superuser API: only superusers may"))
    }
}

/// `GET /api/v1/superuser/users/`.
pub async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<Value>, ApiV1Error> {
    require_superuser(&state, &caller)?;
    let su = state.config.super_users.clone();
    state
        .db
        .read(move |conn| {
            let users: Vec<Value> = users::list(conn)?
                .iter()
                .map(|u| {
                    json!({
                        "kind": "user",
                        "name": u.name,
                        "username": u.name,
                        "email": u.email,
                        "verified": true,
                        "super_user": u.is_superuser(&su),
                        "enabled": u.enabled,
                    })
                })
                .collect();
            Ok(Json(json!({ "users": users })))
        })
        .await
}

#[derive(Debug, Deserialize)]
struct NewUser {
    username: String,
    #[serde(default)]
    email: Option<String>,
}

/// `POST /api/v1/superuser/users/` `{username, email}` -> `{username, email, password}` with a
/// generated password, shown only here.
pub async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    body: Bytes,
) -> Result<Json<Value>, ApiV1Error> {
    require_superuser(&state, &caller)?;
    let req: NewUser = parse_body(&body)?;
    let password = secrets::new_password();
    let for_hash = password.clone();
    let hash = tokio::task::spawn_blocking(move || secrets::hash_password(&for_hash))
        .await
        .map_err(AccountError::Join)??;
    let email = req.email.clone();
    let username = req.username.clone();
    state
        .db
        .write(move |tx| {
            users::create(tx, &username, email.as_deref(), Some(&hash))?;
            Ok::<_, ApiV1Error>(())
        })
        .await?;
    Ok(Json(json!({
        "username": req.username,
        "email": req.email,
        "password": password,
    })))
}
