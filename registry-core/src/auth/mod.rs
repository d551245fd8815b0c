//! Authentication and authorisation of distribution API calls.
//!
//! Clients authenticate with the Docker token flow: a call without a usable token gets `401` and a
//! `WWW-Authenticate: Bearer realm=...,service=...,scope=...` challenge; the client exchanges its
//! credentials at `/v2/auth` (see [`crate::auth::endpoint`]) for a signed token scoped down to what
//! it may do, and retries with `Authorization: Bearer <token>`. Anonymous calls may pull public
//! repositories when `FEATURE_ANONYMOUS_ACCESS` is on; nothing else works without credentials.

pub mod endpoint;
pub mod token;

use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, StatusCode};

use crate::error::{ApiError, ErrorCode};
use crate::names::RepoName;
use crate::state::AppState;

/// What a distribution API call needs on its repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read manifests, blobs, tags and referrers.
    Pull,
    /// Upload blobs and manifests, mount, move tags.
    Push,
    /// Delete tags, manifests and blobs.
    Delete,
}

impl Action {
    /// The scope action name.
    pub fn scope_name(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    fn scope_actions(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "pull,push",
            Action::Delete => "delete",
        }
    }
}

/// Who is making an authorised call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The account name (user or `ns+robot`); `None` for anonymous.
    pub subject: Option<String>,
}

fn challenge(state: &AppState, repo: &RepoName, action: Action, error: Option<&str>) -> String {
    let cfg = &state.config;
    let mut c = format!(
        "Bearer realm=\"{}\",service=\"{}\",scope=\"repository:{}:{}\"",
        cfg.token_realm(),
        cfg.server_hostname,
        repo,
        action.scope_actions()
    );
    if let Some(e) = error {
        c.push_str(&format!(",error=\"{e}\""));
    }
    c
}

/// The `401` answered to `/v2/` and to calls without a usable token.
pub fn unauthorized(challenge_value: &str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
        .with_header(WWW_AUTHENTICATE, challenge_value)
}

/// The challenge for `GET /v2/` (no scope).
pub fn base_challenge(state: &AppState) -> String {
    format!(
        "Bearer realm=\"{}\",service=\"{}\"",
        state.config.token_realm(),
        state.config.server_hostname
    )
}

/// Check that the caller may perform `action` on `repo`.
///
/// - a valid bearer token whose `access` lists the repository with the action (or `*`): allowed;
/// - a valid token without the action, for an account that may not perform it now: `403 DENIED`;
/// - no token, or a token that does not grant an action the account may perform: `401` with a
///   challenge naming the scope to ask for, except that anonymous pulls of public repositories are
///   allowed.
pub async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    repo: &RepoName,
    action: Action,
) -> Result<Grant, ApiError> {
    let auth = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    match auth {
        Some(value) if value.len() > 7 && value[..7].eq_ignore_ascii_case("bearer ") => {
            let claims = state
                .keys
                .verify(value[7..].trim(), &state.config.server_hostname)
                .map_err(|_| {
                    unauthorized(
                        &challenge(state, repo, action, Some("invalid_token")),
                        "the bearer token is invalid or expired; request a new one at /v2/auth",
                    )
                })?;
            let entry = claims
                .access
                .iter()
                .find(|a| a.kind == "repository" && a.name == repo.as_str());
            let Some(entry) = entry else {
                return Err(unauthorized(
                    &challenge(state, repo, action, Some("insufficient_scope")),
                    "the token does not cover this repository",
                ));
            };
            let wanted = action.scope_name();
            if entry.actions.iter().any(|a| a == wanted || a == "*") {
                Ok(Grant {
                    subject: (!claims.sub.is_empty()).then_some(claims.sub),
                })
            } else if account_lacks(state, &claims, repo, action).await? {
                // The account itself may not do this: 403 DENIED, so clients say "denied"
                // rather than asking for credentials again.
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    ErrorCode::Denied,
                    format!(
                        "requested access to the resource is denied: {} may not {wanted} on {repo}",
                        match claims.context.token_scope {
                            Some(_) => format!("the scoped access token of {}", claims.sub),
                            None => claims.sub.clone(),
                        }
                    ),
                ))
            } else {
                // The account may, but this token was not issued for it (say a pull,push token
                // before a DELETE): 401 `insufficient_scope`, as distribution and Quay answer, with
                // a challenge naming the scope to ask /v2/auth for.
                Err(unauthorized(
                    &challenge(state, repo, action, Some("insufficient_scope")),
                    &format!(
                        "the token does not grant {wanted} on {repo}; request scope repository:{repo}:{} at /v2/auth",
                        action.scope_actions()
                    ),
                ))
            }
        }
        _ => {
            if action == Action::Pull
                && state.config.anonymous_access
                && crate::repos::is_public(&state.db, repo).await?
            {
                return Ok(Grant { subject: None });
            }
            Err(unauthorized(
                &challenge(state, repo, action, None),
                "authentication required",
            ))
        }
    }
}

/// Whether the token's subject (empty = anonymous), capped by the access-token scope the token
/// was issued for (if any), lacks the permission for `action` on `repo`.
/// Only called on the refusal path, so the database lookup costs nothing on allowed calls.
async fn account_lacks(
    state: &AppState,
    claims: &token::Claims,
    repo: &RepoName,
    action: Action,
) -> Result<bool, ApiError> {
    let scope = match &claims.context.token_scope {
        None => None,
        // A scope claim we cannot read grants nothing.
        Some(claim) => match claim.to_scope() {
            Some(scope) => Some(scope),
            None => return Ok(true),
        },
    };
    let (subject, repo) = (claims.sub.clone(), repo.clone());
    let super_users = state.config.super_users.clone();
    let wanted = vec![action.scope_name().to_owned()];
    state
        .db
        .read(move |conn| {
            let who = if subject.is_empty() {
                None
            } else {
                crate::accounts::find(conn, &subject)?
            };
            let scope = scope.as_ref();
            endpoint::allowed_actions(conn, who.as_ref(), scope, &super_users, &repo, &wanted)
                .map(|granted| granted.is_empty())
        })
        .await
        .map_err(ApiError::internal)
}
