//! `/api/v1/repository`: create, view, change visibility.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::common::{Access, Caller, MaybeCaller, forbidden, parse_body, repo_name, rfc3339_ms};
use super::error::ApiV1Error;
use crate::accounts::credentials::{self, Principal};
use crate::accounts::permissions::{self, Role};
use crate::accounts::{self, AccountError, AccountKind, repositories};
use crate::names::RepoName;
use crate::repos::Visibility;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
struct NewRepository {
    namespace: String,
    repository: String,
    #[serde(default = "private")]
    visibility: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    repo_kind: Option<String>,
}

fn private() -> String {
    "private".to_owned()
}

/// `POST /api/v1/repository` `{namespace, repository, visibility, description}` -> 201.
pub async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    body: Bytes,
) -> Result<Response, ApiV1Error> {
    let req: NewRepository = parse_body(&body)?;
    if let Some(kind) = req.repo_kind.as_deref().filter(|k| *k != "image") {
        return Err(AccountError::InvalidChoice {
            field: "repo_kind",
            value: kind.to_owned(),
            expected: "image",
        }
        .into());
    }
    let name = repo_name(&req.namespace, &req.repository)?;
    let visibility = repositories::parse_visibility(&req.visibility)?;
    let su = state.config.super_users.clone();
    let reply = json!({
        "namespace": name.namespace(),
        "name": name.repository(),
        "kind": "image",
    });
    state
        .db
        .write(move |tx| {
            accounts::get_namespace(tx, name.namespace())?;
            // A scoped token creates only the repository it is scoped to.
            if !caller.can_create(tx, &su, &name)? {
                return Err(forbidden(format!(
                    "create repositories in namespace {:?}",
                    name.namespace()
                )));
            }
            repositories::create(tx, &name, visibility, &req.description)?;
            permissions::grant_creator(tx, &name, &caller.account, &su)?;
            Ok(())
        })
        .await?;
    Ok((StatusCode::CREATED, Json(reply)).into_response())
}

/// `GET /api/v1/repository/{ns}/{repo}`; anonymous callers may view public repositories.
pub async fn get(
    State(state): State<AppState>,
    MaybeCaller(caller): MaybeCaller,
    Path((ns, repo)): Path<(String, String)>,
) -> Result<Json<Value>, ApiV1Error> {
    let name = repo_name(&ns, &repo)?;
    let su = state.config.super_users.clone();
    let anonymous_access = state.config.anonymous_access;
    state
        .db
        .read(move |conn| {
            let mut role = credentials::repo_role(conn, caller.as_ref(), &su, &name)?;
            if caller.is_none() && !anonymous_access {
                role = Role::None;
            }
            if role < Role::Read {
                return Err(match caller {
                    None => ApiV1Error::Unauthenticated,
                    Some(_) => forbidden(format!("read repository {:?}", name.as_str())),
                });
            }
            let row = repositories::get(conn, &name)?;
            let is_org =
                accounts::find(conn, name.namespace())?.is_some_and(|a| a.kind == AccountKind::Org);
            let mut tags = Map::new();
            for t in repositories::live_tags(conn, &row)? {
                tags.insert(
                    t.name.clone(),
                    json!({
                        "name": t.name,
                        "manifest_digest": t.manifest_digest,
                        "last_modified": rfc3339_ms(t.last_modified_ms),
                    }),
                );
            }
            Ok(Json(json!({
                "namespace": name.namespace(),
                "name": name.repository(),
                "kind": "image",
                "description": repositories::description(conn, &name)?,
                "is_public": row.visibility == Visibility::Public,
                "is_organization": is_org,
                "can_write": role >= Role::Write,
                "can_admin": role >= Role::Admin,
                "state": "NORMAL",
                "tags": tags,
            })))
        })
        .await
}

#[derive(Debug, Deserialize)]
struct ChangeVisibility {
    visibility: String,
}

/// `POST /api/v1/repository/{ns}/{repo}/changevisibility` `{visibility}` (repository admins).
pub async fn change_visibility(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((ns, repo)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiV1Error> {
    let req: ChangeVisibility = parse_body(&body)?;
    let name = repo_name(&ns, &repo)?;
    let visibility = repositories::parse_visibility(&req.visibility)?;
    as_repo_admin(&state, caller, name, Access::Write, move |tx, name| {
        repositories::set_visibility(tx, name, visibility)?;
        Ok(Json(json!({"success": true})))
    })
    .await
}

/// Run `f` on repository `name` once `caller` is known to administer it (see [`require_admin`]).
pub(crate) async fn as_repo_admin<T, F>(
    state: &AppState,
    caller: Principal,
    name: RepoName,
    access: Access,
    f: F,
) -> Result<T, ApiV1Error>
where
    T: Send + 'static,
    F: FnOnce(&Connection, &RepoName) -> Result<T, ApiV1Error> + Send + 'static,
{
    let su = state.config.super_users.clone();
    access
        .run(&state.db, move |conn| {
            require_admin(conn, &caller, &su, &name)?;
            f(conn, &name)
        })
        .await
}

/// Refuse unless `who` is admin of `name` (a missing repository is then a 404).
fn require_admin(
    conn: &Connection,
    who: &Principal,
    super_users: &[String],
    name: &RepoName,
) -> Result<(), ApiV1Error> {
    if who.repo_role(conn, super_users, name)? < Role::Admin {
        return Err(forbidden(format!(
            "administer repository {:?}",
            name.as_str()
        )));
    }
    repositories::get(conn, name)?;
    Ok(())
}
