//! `/api/v1/repository/{ns}/{repo}/permissions/{user,team}/...` (repository admins only).

use axum::Json;
use axum::extract::{Path, State};
use bytes::Bytes;
use http::StatusCode;
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::common::{Access, Caller, parse_body, repo_name, user_or_robot};
use super::error::ApiV1Error;
use super::repository::as_repo_admin;
use crate::accounts::orgs::{self, Team};
use crate::accounts::permissions::{self, Role};
use crate::accounts::{self, Account, AccountKind};
use crate::names::RepoName;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
struct SetRole {
    role: String,
}

/// Whether `account` belongs to the organisation holding `repo` (team member or its robot).
fn is_org_member(
    conn: &Connection,
    account: &Account,
    repo: &RepoName,
) -> Result<bool, ApiV1Error> {
    let Some(ns) = accounts::find(conn, repo.namespace())? else {
        return Ok(false);
    };
    if ns.kind != AccountKind::Org {
        return Ok(false);
    }
    Ok(account.robot_owner_id == Some(ns.id)
        || !orgs::teams_of(conn, account.id, ns.id)?.is_empty())
}

fn user_view(
    conn: &Connection,
    account: &Account,
    role: Role,
    repo: &RepoName,
) -> Result<Value, ApiV1Error> {
    Ok(json!({
        "role": role.as_str(),
        "name": account.name,
        "is_robot": account.kind == AccountKind::Robot,
        "is_org_member": is_org_member(conn, account, repo)?,
    }))
}

fn team_view(team: &Team, role: Role) -> Value {
    json!({"role": role.as_str(), "name": team.name})
}

fn team_of_repo(conn: &Connection, repo: &RepoName, team: &str) -> Result<Team, ApiV1Error> {
    Ok(orgs::get_team(conn, repo.namespace(), team)?.1)
}

/// `GET .../permissions/user/`: `{"permissions": {name: view}}`.
pub async fn list_users(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((ns, repo)): Path<(String, String)>,
) -> Result<Json<Value>, ApiV1Error> {
    let name = repo_name(&ns, &repo)?;
    as_repo_admin(&state, caller, name, Access::Read, move |conn, name| {
        let mut out = Map::new();
        for (account, role) in permissions::list_accounts(conn, name)? {
            out.insert(account.name.clone(), user_view(conn, &account, role, name)?);
        }
        Ok(Json(json!({ "permissions": out })))
    })
    .await
}

/// `GET .../permissions/user/{username}`.
pub async fn get_user(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((ns, repo, username)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiV1Error> {
    let name = repo_name(&ns, &repo)?;
    as_repo_admin(&state, caller, name, Access::Read, move |conn, name| {
        let account = user_or_robot(conn, &username)?;
        let role = permissions::list_accounts(conn, name)?
            .into_iter()
            .find(|(a, _)| a.id == account.id)
            .map(|(_, r)| r)
            .ok_or_else(|| ApiV1Error::NotFound {
                kind: "permission of",
                name: username.clone(),
            })?;
        Ok(Json(user_view(conn, &account, role, name)?))
    })
    .await
}

/// `PUT .../permissions/user/{username}` `{role}`.
pub async fn put_user(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((ns, repo, username)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiV1Error> {
    let req: SetRole = parse_body(&body)?;
    let role: Role = req.role.parse()?;
    let name = repo_name(&ns, &repo)?;
    as_repo_admin(&state, caller, name, Access::Write, move |tx, name| {
        let account = user_or_robot(tx, &username)?;
        permissions::set_for_account(tx, name, &account, role)?;
        Ok(Json(user_view(tx, &account, role, name)?))
    })
    .await
}

/// `DELETE .../permissions/user/{username}` -> 204.
pub async fn delete_user(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((ns, repo, username)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiV1Error> {
    let name = repo_name(&ns, &repo)?;
    as_repo_admin(&state, caller, name, Access::Write, move |tx, name| {
        let account = user_or_robot(tx, &username)?;
        if !permissions::remove_for_account(tx, name, &account)? {
            return Err(ApiV1Error::NotFound {
                kind: "permission of",
                name: username,
            });
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// `GET .../permissions/team/`: `{"permissions": {team: view}}`.
pub async fn list_teams(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((ns, repo)): Path<(String, String)>,
) -> Result<Json<Value>, ApiV1Error> {
    let name = repo_name(&ns, &repo)?;
    as_repo_admin(&state, caller, name, Access::Read, move |conn, name| {
        let out: Map<String, Value> = permissions::list_teams(conn, name)?
            .iter()
            .map(|(t, r)| (t.name.clone(), team_view(t, *r)))
            .collect();
        Ok(Json(json!({ "permissions": out })))
    })
    .await
}

/// `GET .../permissions/team/{team}`.
pub async fn get_team(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((ns, repo, team)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiV1Error> {
    let name = repo_name(&ns, &repo)?;
    as_repo_admin(&state, caller, name, Access::Read, move |conn, name| {
        let t = team_of_repo(conn, name, &team)?;
        permissions::list_teams(conn, name)?
            .into_iter()
            .find(|(x, _)| x.id == t.id)
            .map(|(x, r)| Json(team_view(&x, r)))
            .ok_or(ApiV1Error::NotFound {
                kind: "permission of team",
                name: team,
            })
    })
    .await
}

/// `PUT .../permissions/team/{team}` `{role}`.
pub async fn put_team(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((ns, repo, team)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiV1Error> {
    let req: SetRole = parse_body(&body)?;
    let role: Role = req.role.parse()?;
    let name = repo_name(&ns, &repo)?;
    as_repo_admin(&state, caller, name, Access::Write, move |tx, name| {
        let t = team_of_repo(tx, name, &team)?;
        permissions::set_for_team(tx, name, &t, role)?;
        Ok(Json(team_view(&t, role)))
    })
    .await
}

/// `DELETE .../permissions/team/{team}` -> 204.
pub async fn delete_team(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((ns, repo, team)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiV1Error> {
    let name = repo_name(&ns, &repo)?;
    as_repo_admin(&state, caller, name, Access::Write, move |tx, name| {
        let t = team_of_repo(tx, name, &team)?;
        if !permissions::remove_for_team(tx, name, &t)? {
            return Err(ApiV1Error::NotFound {
                kind: "permission of team",
                name: team,
            });
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
