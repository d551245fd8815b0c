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

use super::common::{Access, Caller, forbidden, parse_body, rfc3339_ms};
use super::error::ApiV1Error;
use crate::accounts::credentials::Principal;
use crate::accounts::{self, Account, AccountKind, robots};
use crate::state::AppState;

/// Whose robots a route manages.
#[derive(Clone, Debug)]
enum Owner {
    /// The calling user's own.
    Me,
    /// An organisation's.
    Org(String),
}

impl Owner {
    /// The organisation named in the path, or the caller without one.
    fn of(org: Option<String>) -> Owner {
        org.map_or(Owner::Me, Owner::Org)
    }
}

/// The namespace account whose robots `caller` may manage through `owner`.
fn namespace(
    conn: &Connection,
    caller: &Principal,
    super_users: &[String],
    owner: &Owner,
) -> Result<Account, ApiV1Error> {
    match owner {
        Owner::Me => match caller.unscoped() {
            Some(a) if a.kind == AccountKind::User => Ok(a.clone()),
            _ => Err(forbidden(
                "manage robots: only users own robots, and not through a scoped token",
            )),
        },
        Owner::Org(org) => {
            let org = accounts::get_kind(conn, org, AccountKind::Org)?;
            if !caller.administers(conn, super_users, &org)? {
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

/// The path of a robot route: `{org}` on an organisation's routes, absent on the caller's own.
#[derive(Debug, Deserialize)]
pub struct RobotPath {
    #[serde(default)]
    org: Option<String>,
    short: String,
}

/// Run `f` with the namespace account whose robots `caller` manages: the organisation `org`, or
/// the caller's own without one.
async fn with_namespace<T, F>(
    state: &AppState,
    caller: Principal,
    org: Option<String>,
    access: Access,
    f: F,
) -> Result<T, ApiV1Error>
where
    T: Send + 'static,
    F: FnOnce(&Connection, &Account) -> Result<T, ApiV1Error> + Send + 'static,
{
    let (owner, su) = (Owner::of(org), state.config.super_users.clone());
    access
        .run(&state.db, move |conn| {
            let ns = namespace(conn, &caller, &su, &owner)?;
            f(conn, &ns)
        })
        .await
}

/// `GET /api/v1/user/robots` and `GET /api/v1/organization/{org}/robots`.
pub async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    org: Option<Path<String>>,
) -> Result<Json<Value>, ApiV1Error> {
    let org = org.map(|Path(org)| org);
    with_namespace(&state, caller, org, Access::Read, |conn, ns| {
        let robots: Vec<Value> = robots::list(conn, ns)?
            .iter()
            .map(|r| view(r, None))
            .collect();
        Ok(Json(json!({ "robots": robots })))
    })
    .await
}

/// `GET /api/v1/user/robots/{short}` and `GET /api/v1/organization/{org}/robots/{short}`.
pub async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(RobotPath { org, short }): Path<RobotPath>,
) -> Result<Json<Value>, ApiV1Error> {
    with_namespace(&state, caller, org, Access::Read, move |conn, ns| {
        let robot = robots::get(conn, &robots::full_name(&ns.name, &short)?)?;
        Ok(Json(view(&robot, None)))
    })
    .await
}

/// `PUT .../robots/{short}` `[{description}]` (the user's or an organisation's) -> 201 with the
/// token.
pub async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(RobotPath { org, short }): Path<RobotPath>,
    body: Bytes,
) -> Result<Response, ApiV1Error> {
    let req: NewRobot = parse_body(&body)?;
    with_namespace(&state, caller, org, Access::Write, move |tx, ns| {
        let (robot, token) = robots::create(tx, ns, &short, &req.description)?;
        Ok((StatusCode::CREATED, Json(view(&robot, Some(&token)))).into_response())
    })
    .await
}

/// `POST .../robots/{short}/regenerate` (the user's or an organisation's) -> the robot with its
/// new token.
pub async fn regenerate(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(RobotPath { org, short }): Path<RobotPath>,
) -> Result<Json<Value>, ApiV1Error> {
    with_namespace(&state, caller, org, Access::Write, move |tx, ns| {
        let (robot, token) = robots::regenerate(tx, &robots::full_name(&ns.name, &short)?)?;
        Ok(Json(view(&robot, Some(&token))))
    })
    .await
}

/// `DELETE .../robots/{short}` (the user's or an organisation's) -> 204.
pub async fn delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(RobotPath { org, short }): Path<RobotPath>,
) -> Result<StatusCode, ApiV1Error> {
    with_namespace(&state, caller, org, Access::Write, move |tx, ns| {
        robots::delete(tx, &robots::full_name(&ns.name, &short)?)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
