//! The Quay-shaped REST API under `/api/v1`, and the route of the token service `/v2/auth`.
//!
//! Callers authenticate with `Authorization: Bearer <access token>` (see `admin token create`) or
//! Basic credentials (user password or robot token). Missing or wrong credentials answer 401, a
//! refused operation 403, with Quay's error body (see [`error::ApiV1Error`]).
//!
//! Repository paths are `/api/v1/repository/{namespace}/{repository}`; a repository name with more
//! components is addressed with `%2F` between them (`acme/team%2Fapp`). Robot names in paths may
//! use a literal `+` or `%2B`.

pub mod common;
pub mod error;
pub mod organization;
pub mod permissions;
pub mod repository;
pub mod robots;
pub mod user;

use axum::Router;
use axum::routing::{MethodRouter, get, post, put};

use crate::state::AppState;

/// Register `route` at `path` and at `path` with (or without) its trailing slash: Quay's clients
/// use both spellings.
fn both(router: Router<AppState>, path: &str, route: MethodRouter<AppState>) -> Router<AppState> {
    let other = match path.strip_suffix('/') {
        Some(bare) => bare.to_owned(),
        None => format!("{path}/"),
    };
    router.route(path, route.clone()).route(&other, route)
}

/// Routes of the REST API and `/v2/auth`.
pub fn routes() -> Router<AppState> {
    use crate::auth::endpoint;

    const REPO: &str = "/api/v1/repository/{ns}/{repo}";
    let mut r = Router::new().route(
        "/v2/auth",
        get(endpoint::get_token).post(endpoint::post_token),
    );
    r = both(r, "/api/v1/user/", get(user::me));
    r = both(
        r,
        "/api/v1/superuser/users/",
        get(user::list).post(user::create),
    );
    r = both(r, "/api/v1/repository", post(repository::create));
    r = r
        .route(REPO, get(repository::get))
        .route(
            &format!("{REPO}/changevisibility"),
            post(repository::change_visibility),
        )
        .route(
            &format!("{REPO}/permissions/user/{{username}}"),
            get(permissions::get_user)
                .put(permissions::put_user)
                .delete(permissions::delete_user),
        )
        .route(
            &format!("{REPO}/permissions/team/{{team}}"),
            get(permissions::get_team)
                .put(permissions::put_team)
                .delete(permissions::delete_team),
        );
    r = both(
        r,
        &format!("{REPO}/permissions/user/"),
        get(permissions::list_users),
    );
    r = both(
        r,
        &format!("{REPO}/permissions/team/"),
        get(permissions::list_teams),
    );

    // The same handlers serve the caller's robots and an organisation's (`{org}` tells them apart).
    for base in ["/api/v1/user/robots", "/api/v1/organization/{org}/robots"] {
        r = both(r, base, get(robots::list));
        r = r
            .route(
                &format!("{base}/{{short}}"),
                get(robots::get).put(robots::create).delete(robots::delete),
            )
            .route(
                &format!("{base}/{{short}}/regenerate"),
                post(robots::regenerate),
            );
    }

    r = both(r, "/api/v1/organization/", post(organization::create));
    r = r
        .route("/api/v1/organization/{org}", get(organization::get))
        .route(
            "/api/v1/organization/{org}/team/{team}",
            put(organization::put_team),
        )
        .route(
            "/api/v1/organization/{org}/team/{team}/members/{member}",
            put(organization::put_member).delete(organization::delete_member),
        );
    both(
        r,
        "/api/v1/organization/{org}/team/{team}/members",
        get(organization::members),
    )
}

#[cfg(test)]
mod tests;
