//! `/api/v1/organization/...`: organisations, teams and team members.
//!
//! Deviation from Quay: adding a user to a team takes effect at once (Quay e-mails an invitation
//! the user must accept); `invited` is therefore always false.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::common::{Caller, MaybeCaller, forbidden, parse_body, user_or_robot};
use super::error::ApiV1Error;
use crate::accounts::credentials::Principal;
use crate::accounts::orgs::{self, Team, TeamRole};
use crate::accounts::{self, Account, AccountKind, permissions};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
struct NewOrg {
    name: String,
    #[serde(default)]
    email: Option<String>,
}

/// `POST /api/v1/organization/` `{name, email}` -> 201 `"Created"` (Quay's answer).
pub async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    body: Bytes,
) -> Result<Response, ApiV1Error> {
    let req: NewOrg = parse_body(&body)?;
    if caller
        .unscoped()
        .is_none_or(|a| a.kind != AccountKind::User)
    {
        return Err(forbidden(
            "create organisations: only users may, and not with a scoped token",
        ));
    }
    state
        .db
        .write(move |tx| {
            orgs::create(tx, &req.name, req.email.as_deref(), &caller.account)?;
            Ok::<_, ApiV1Error>(())
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!("Created"))).into_response())
}

fn team_view(team: &Team, member_count: u64) -> Value {
    json!({
        "name": team.name,
        "description": team.description,
        "role": team.role.as_str(),
        "member_count": member_count,
        "can_view": true,
        "is_synced": false,
    })
}

/// `GET /api/v1/organization/{org}`: name for everyone; teams for members; email for admins.
pub async fn get(
    State(state): State<AppState>,
    MaybeCaller(caller): MaybeCaller,
    Path(org): Path<String>,
) -> Result<Json<Value>, ApiV1Error> {
    let su = state.config.super_users.clone();
    state
        .db
        .read(move |conn| {
            let org = accounts::get_kind(conn, &org, AccountKind::Org)?;
            // A scoped token sees an organisation as anonymous callers do.
            let who = caller.as_ref().and_then(Principal::unscoped);
            let is_admin = match who {
                Some(w) => permissions::administers(conn, w, &su, &org)?,
                None => false,
            };
            let is_member = is_admin
                || match who {
                    Some(w) => !orgs::teams_of(conn, w.id, org.id)?.is_empty(),
                    None => false,
                };
            let mut v = json!({
                "name": org.name,
                "is_admin": is_admin,
                "is_org_admin": is_admin,
                "is_member": is_member,
            });
            if is_member {
                let teams = orgs::teams(conn, &org)?;
                let ordered: Vec<&str> = teams.iter().map(|(t, _)| t.name.as_str()).collect();
                let map: Map<String, Value> = teams
                    .iter()
                    .map(|(t, n)| (t.name.clone(), team_view(t, *n)))
                    .collect();
                v["teams"] = json!(map);
                v["ordered_teams"] = json!(ordered);
            }
            if is_admin {
                v["email"] = json!(org.email);
            }
            Ok(Json(v))
        })
        .await
}

/// Run `f` in a write transaction on the organisation `org`, once `caller` is known to
/// administer it.
async fn as_org_admin<T, F>(
    state: &AppState,
    caller: Principal,
    org: String,
    f: F,
) -> Result<T, ApiV1Error>
where
    T: Send + 'static,
    F: FnOnce(&Connection, &Account) -> Result<T, ApiV1Error> + Send + 'static,
{
    let su = state.config.super_users.clone();
    state
        .db
        .write(move |tx| {
            let org = accounts::get_kind(tx, &org, AccountKind::Org)?;
            if !caller.administers(tx, &su, &org)? {
                return Err(forbidden(format!("administer organisation {:?}", org.name)));
            }
            f(tx, &org)
        })
        .await
}

#[derive(Debug, Deserialize)]
struct TeamBody {
    role: String,
    #[serde(default)]
    description: Option<String>,
}

/// `PUT /api/v1/organization/{org}/team/{team}` `{role, description}`: create or update.
pub async fn put_team(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((org, team)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiV1Error> {
    let req: TeamBody = parse_body(&body)?;
    let role: TeamRole = req.role.parse()?;
    as_org_admin(&state, caller, org, move |tx, org| {
        let t = orgs::upsert_team(tx, org, &team, role, req.description.as_deref())?;
        let count = orgs::members(tx, &t)?.len();
        Ok(Json(team_view(
            &t,
            u64::try_from(count).unwrap_or(u64::MAX),
        )))
    })
    .await
}

fn member_view(a: &Account) -> Value {
    json!({
        "name": a.name,
        "kind": "user",
        "is_robot": a.kind == AccountKind::Robot,
        "invited": false,
    })
}

/// `GET /api/v1/organization/{org}/team/{team}/members` (organisation members).
pub async fn members(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((org, team)): Path<(String, String)>,
) -> Result<Json<Value>, ApiV1Error> {
    let su = state.config.super_users.clone();
    state
        .db
        .read(move |conn| {
            let (org, t) = orgs::get_team(conn, &org, &team)?;
            let is_admin = caller.administers(conn, &su, &org)?;
            let is_member = match caller.unscoped() {
                Some(a) => !orgs::teams_of(conn, a.id, org.id)?.is_empty(),
                None => false,
            };
            if !is_admin && !is_member {
                return Err(forbidden(format!(
                    "view teams of organisation {:?}",
                    org.name
                )));
            }
            let members: Vec<Value> = orgs::members(conn, &t)?.iter().map(member_view).collect();
            Ok(Json(
                json!({"name": t.name, "members": members, "can_edit": is_admin}),
            ))
        })
        .await
}

/// `PUT /api/v1/organization/{org}/team/{team}/members/{member}` (user or `org+robot`).
pub async fn put_member(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((org, team, member)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiV1Error> {
    as_org_admin(&state, caller, org, move |tx, org| {
        let (_, t) = orgs::get_team(tx, &org.name, &team)?;
        let m = user_or_robot(tx, &member)?;
        orgs::add_member(tx, org, &t, &m)?;
        Ok(Json(member_view(&m)))
    })
    .await
}

/// `DELETE /api/v1/organization/{org}/team/{team}/members/{member}` -> 204.
pub async fn delete_member(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((org, team, member)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiV1Error> {
    as_org_admin(&state, caller, org, move |tx, org| {
        let (_, t) = orgs::get_team(tx, &org.name, &team)?;
        let m = user_or_robot(tx, &member)?;
        if !orgs::remove_member(tx, org, &t, &m)? {
            return Err(ApiV1Error::NotFound {
                kind: "team member",
                name: m.name,
            });
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
