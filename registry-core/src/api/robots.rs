//! Robot accounts: `/api/v1/user/robots/...` (the caller's own) and
//! `/api/v1/organization/{org}/robots/...` (organisation admins only).
//!
//! Deviation from Quay: Quay can show a robot's token on `GET` to admins because it stores it; we
//! store only its SHA-256, so the token appears only in the answers to create and regenerate.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Value, json};

use super::common::{Caller, forbidden, parse_body, rfc3339_ms};
use super::error::ApiV1Error;
use crate::accounts::credentials::Principal;
use crate::accounts::{self, Account, AccountKind, permissions, robots};
use crate::state::AppState;

/// Whose robots a route manages.
#[derive(Clone, Debug)]
enum Owner {
    /// The calling user's own.
    Me,
    /// An organisation's.
    Org(String),
}

/// The namespace account whose robots `caller` may manage through `owner`.
fn namespace(
    conn: &Connection,
    caller: &Principal,
    super_users: &[String],
    owner: &Owner,
) -> Result<Account, ApiV1Error> {
    match owner {
        Owner::Me if caller.account.kind == AccountKind::User => Ok(caller.account.clone()),
        Owner::Me => Err(forbidden("manage robots: only users own robots")),
        Owner::Org(org) => {
            let org = accounts::get_kind(conn, org, AccountKind::Org)?;
            if !permissions::administers(conn, &caller.account, super_users, &org)? {
                return Err(forbidden(format!(
                    "manage robots of organisation {:?}",
                    org.name
                )));
            }
            Ok(org)
        }
    }
}

fn view(robot: &Account, token: Option<&str>) -> Value {
    let mut v = json!({
        "name": robot.name,
        "description": robot.description,
        "created": rfc3339_ms(robot.created_at),
        "last_accessed": null,
        "unstructured_metadata": {},
    });
    if let Some(t) = token {
        v["token"] = json!(t);
    }
    v
}

#[derive(Debug, Default, Deserialize)]
struct NewRobot {
    #[serde(default)]
    description: String,
}

async fn list(state: AppState, caller: Principal, owner: Owner) -> Result<Json<Value>, ApiV1Error> {
    let su = state.config.super_users.clone();
    state
        .db
        .read(move |conn| {
            let ns = namespace(conn, &caller, &su, &owner)?;
            let robots: Vec<Value> = robots::list(conn, &ns)?
                .iter()
                .map(|r| view(r, None))
                .collect();
            Ok(Json(json!({ "robots": robots })))
        })
        .await
}

async fn get(
    state: AppState,
    caller: Principal,
    owner: Owner,
    short: String,
) -> Result<Json<Value>, ApiV1Error> {
    let su = state.config.super_users.clone();
    state
        .db
        .read(move |conn| {
            let ns = namespace(conn, &caller, &su, &owner)?;
            let robot = robots::get(conn, &robots::full_name(&ns.name, &short)?)?;
            Ok(Json(view(&robot, None)))
        })
        .await
}

async fn create(
    state: AppState,
    caller: Principal,
    owner: Owner,
    short: String,
    body: Bytes,
) -> Result<Response, ApiV1Error> {
    let req: NewRobot = parse_body(&body)?;
    let su = state.config.super_users.clone();
    state
        .db
        .write(move |tx| {
            let ns = namespace(tx, &caller, &su, &owner)?;
            let (robot, token) = robots::create(tx, &ns, &short, &req.description)?;
            Ok((StatusCode::CREATED, Json(view(&robot, Some(&token)))).into_response())
        })
        .await
}

async fn regenerate(
    state: AppState,
    caller: Principal,
    owner: Owner,
    short: String,
) -> Result<Json<Value>, ApiV1Error> {
    let su = state.config.super_users.clone();
    state
        .db
        .write(move |tx| {
            let ns = namespace(tx, &caller, &su, &owner)?;
            let (robot, token) = robots::regenerate(tx, &robots::full_name(&ns.name, &short)?)?;
            Ok(Json(view(&robot, Some(&token))))
        })
        .await
}

async fn delete(
    state: AppState,
    caller: Principal,
    owner: Owner,
    short: String,
) -> Result<StatusCode, ApiV1Error> {
    let su = state.config.super_users.clone();
    state
        .db
        .write(move |tx| {
            let ns = namespace(tx, &caller, &su, &owner)?;
            robots::delete(tx, &robots::full_name(&ns.name, &short)?)?;
            Ok(StatusCode::NO_CONTENT)
        })
        .await
}

/// `GET /api/v1/user/robots`.
pub async fn user_list(
    State(s): State<AppState>,
    Caller(c): Caller,
) -> Result<Json<Value>, ApiV1Error> {
    list(s, c, Owner::Me).await
}

/// `GET /api/v1/user/robots/{short}`.
pub async fn user_get(
    State(s): State<AppState>,
    Caller(c): Caller,
    Path(short): Path<String>,
) -> Result<Json<Value>, ApiV1Error> {
    get(s, c, Owner::Me, short).await
}

/// `PUT /api/v1/user/robots/{short}` `[{description}]` -> 201 with the token.
pub async fn user_create(
    State(s): State<AppState>,
    Caller(c): Caller,
    Path(short): Path<String>,
    body: Bytes,
) -> Result<Response, ApiV1Error> {
    create(s, c, Owner::Me, short, body).await
}

/// `POST /api/v1/user/robots/{short}/regenerate` -> the robot with its new token.
pub async fn user_regenerate(
    State(s): State<AppState>,
    Caller(c): Caller,
    Path(short): Path<String>,
) -> Result<Json<Value>, ApiV1Error> {
    regenerate(s, c, Owner::Me, short).await
}

/// `DELETE /api/v1/user/robots/{short}` -> 204.
pub async fn user_delete(
    State(s): State<AppState>,
    Caller(c): Caller,
    Path(short): Path<String>,
) -> Result<StatusCode, ApiV1Error> {
    delete(s, c, Owner::Me, short).await
}

/// `GET /api/v1/organization/{org}/robots`.
pub async fn org_list(
    State(s): State<AppState>,
    Caller(c): Caller,
    Path(org): Path<String>,
) -> Result<Json<Value>, ApiV1Error> {
    list(s, c, Owner::Org(org)).await
}

/// `GET /api/v1/organization/{org}/robots/{short}`.
pub async fn org_get(
    State(s): State<AppState>,
    Caller(c): Caller,
    Path((org, short)): Path<(String, String)>,
) -> Result<Json<Value>, ApiV1Error> {
    get(s, c, Owner::Org(org), short).await
}

/// `PUT /api/v1/organization/{org}/robots/{short}` -> 201 with the token.
pub async fn org_create(
    State(s): State<AppState>,
    Caller(c): Caller,
    Path((org, short)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiV1Error> {
    create(s, c, Owner::Org(org), short, body).await
}

/// `POST /api/v1/organization/{org}/robots/{short}/regenerate`.
pub async fn org_regenerate(
    State(s): State<AppState>,
    Caller(c): Caller,
    Path((org, short)): Path<(String, String)>,
) -> Result<Json<Value>, ApiV1Error> {
    regenerate(s, c, Owner::Org(org), short).await
}

/// `DELETE /api/v1/organization/{org}/robots/{short}` -> 204.
pub async fn org_delete(
    State(s): State<AppState>,
    Caller(c): Caller,
    Path((org, short)): Path<(String, String)>,
) -> Result<StatusCode, ApiV1Error> {
    delete(s, c, Owner::Org(org), short).await
}
