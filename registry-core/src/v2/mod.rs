//! The OCI distribution API under `/v2/` (distribution-spec v1.1 plus upload cancel,
//! `digest-algorithm` and `?tag=` on manifest PUT).
//!
//! Routing: axum cannot match names containing `/` followed by fixed suffixes, so we route `/v2/`
//! (the ping) and `/v2/{*rest}`, and `path::parse` splits `rest` into the repository name and
//! what is addressed. The static `/v2/auth` route of the token endpoint wins over the wildcard.
//! Every handler calls [`crate::auth::authorize`] before touching anything.

mod blobs;
mod manifests;
mod path;
mod referrers;
mod tags;
#[cfg(test)]
mod test_support;
mod uploads;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use rusqlite::Connection;

use crate::error::{ApiError, ErrorCode};
use crate::names::{Reference, RepoName};
use crate::repos::Visibility;
use crate::state::AppState;
use path::{Kind, Target};

pub(crate) const API_VERSION: HeaderName =
    HeaderName::from_static("docker-distribution-api-version");
pub(crate) const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
pub(crate) const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
pub(crate) const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
pub(crate) const OCI_TAG: HeaderName = HeaderName::from_static("oci-tag");
pub(crate) const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

/// Routes of the distribution API.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/", get(ping))
        .route("/v2", get(ping))
        .route("/v2/{*rest}", any(dispatch))
        .layer(axum::middleware::map_response(api_version_header))
}

async fn api_version_header(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    resp
}

/// `GET /v2/`: 200 `{}` for any valid token of ours, else the 401 challenge that starts the
/// token flow.
async fn ping(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "))
        .map(|v| v[7..].trim());
    let valid = token.is_some_and(|t| state.keys.verify(t, &state.config.server_hostname).is_ok());
    if valid {
        return (
            StatusCode::OK,
            [(CONTENT_TYPE, "application/json")],
            Body::from("{}"),
        )
            .into_response();
    }
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        "authentication required",
    )
    .with_header(WWW_AUTHENTICATE, &crate::auth::base_challenge(&state))
    .into_response()
}

async fn dispatch(
    State(state): State<AppState>,
    method: Method,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let query = Query::parse(query.as_deref());
    match route(&state, &method, &rest, &query, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn route(
    state: &AppState,
    method: &Method,
    rest: &str,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Target { name, kind } = path::parse(rest)?;
    let head = *method == Method::HEAD;
    match (kind, method.clone()) {
        (Kind::Blob(d), Method::GET | Method::HEAD) => {
            blobs::get(state, &name, &d, headers, head).await
        }
        (Kind::Blob(d), Method::DELETE) => blobs::delete(state, &name, &d, headers).await,
        (Kind::UploadStart, Method::POST) => {
            uploads::start(state, &name, query, headers, body).await
        }
        (Kind::Upload(u), Method::GET) => uploads::status(state, &name, u, headers).await,
        (Kind::Upload(u), Method::PATCH) => uploads::patch(state, &name, u, headers, body).await,
        (Kind::Upload(u), Method::PUT) => {
            uploads::finish(state, &name, u, query, headers, body).await
        }
        (Kind::Upload(u), Method::DELETE) => uploads::cancel(state, &name, u, headers).await,
        (Kind::Manifest(r), Method::GET | Method::HEAD) => {
            manifests::get(state, &name, &r, headers, head).await
        }
        (Kind::Manifest(r), Method::PUT) => {
            manifests::put(state, &name, r, query, headers, body).await
        }
        (Kind::Manifest(r), Method::DELETE) => manifests::delete(state, &name, r, headers).await,
        (Kind::TagsList, Method::GET) => tags::list(state, &name, query, headers).await,
        (Kind::Referrers(d), Method::GET) => {
            referrers::list(state, &name, &d, query, headers).await
        }
        (_, m) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            format!("method {m} is not supported on /v2/{rest}"),
        )),
    }
}

/// Decoded query parameters, in order, keeping repeated keys (`?tag=a&tag=b`).
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Query {
        Query(
            raw.and_then(|q| serde_urlencoded::from_str(q).ok())
                .unwrap_or_default(),
        )
    }

    /// The first value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`.
    pub(crate) fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A response from its parts; header values are ours (digests, names, numbers), so building can
/// only fail on a bug, reported as a 500.
pub(crate) fn respond(
    status: StatusCode,
    headers: &[(HeaderName, &str)],
    body: Body,
) -> Result<Response, ApiError> {
    let mut b = http::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(k, *v);
    }
    b.body(body).map_err(ApiError::internal)
}

/// An empty-bodied response with `Content-Length: 0`.
pub(crate) fn empty(
    status: StatusCode,
    headers: &[(HeaderName, &str)],
) -> Result<Response, ApiError> {
    let mut all = headers.to_vec();
    all.push((CONTENT_LENGTH, "0"));
    respond(status, &all, Body::empty())
}

pub(crate) fn name_unknown(name: &RepoName) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NameUnknown,
        format!("repository {name} is not known to the registry"),
    )
    .with_detail(serde_json::json!({ "name": name.as_str() }))
}

/// The id of repository `name` (a read on `conn`).
pub(crate) fn repo_id(conn: &Connection, name: &RepoName) -> Result<Option<i64>, ApiError> {
    Ok(crate::repos::find(conn, name)?.map(|r| r.id))
}

/// The id of repository `name`, created on this first push when missing (in `conn`'s write
/// transaction); 404 NAME_UNKNOWN when its namespace does not exist.
pub(crate) fn ensure_repo(
    conn: &Connection,
    name: &RepoName,
    new: &NewRepo,
) -> Result<i64, ApiError> {
    if let Some(id) = repo_id(conn, name)? {
        return Ok(id);
    }
    match crate::repos::create(conn, name, new.visibility)? {
        Some(repo) => {
            // As in Quay, the creator becomes admin of what it created, so an organisation member
            // whose team has the `creator` role keeps access once its push token expires.
            crate::accounts::permissions::grant_creator_named(
                conn,
                name,
                new.creator.as_deref(),
                &new.super_users,
            )
            .map_err(ApiError::internal)?;
            tracing::info!(repository = %name, creator = ?new.creator, "created repository on push");
            Ok(repo.id)
        }
        None => Err(name_unknown(name)),
    }
}

/// How a push creates a repository that does not exist yet.
#[derive(Debug)]
pub(crate) struct NewRepo {
    /// `CREATE_PRIVATE_REPO_ON_PUSH`.
    visibility: Visibility,
    /// The pusher (token subject), made admin of the new repository.
    creator: Option<String>,
    super_users: Vec<String>,
}

/// The [`NewRepo`] for a push authorised by `grant`.
pub(crate) fn new_repo(state: &AppState, grant: &crate::auth::Grant) -> NewRepo {
    NewRepo {
        visibility: if state.config.create_private_repo_on_push {
            Visibility::Private
        } else {
            Visibility::Public
        },
        creator: grant.subject.clone(),
        super_users: state.config.super_users.clone(),
    }
}

/// [`ensure_repo`] for the async handlers: a read first, a write only on the first push.
pub(crate) async fn repo_for_push(
    state: &AppState,
    name: &RepoName,
    grant: &crate::auth::Grant,
) -> Result<i64, ApiError> {
    let n = name.clone();
    if let Some(id) = state.db.read(move |c| repo_id(c, &n)).await? {
        return Ok(id);
    }
    let n = name.clone();
    let new = new_repo(state, grant);
    state.db.write(move |tx| ensure_repo(tx, &n, &new)).await
}

/// `Location` of a manifest.
pub(crate) fn manifest_location(name: &RepoName, reference: &Reference) -> String {
    format!("/v2/{name}/manifests/{reference}")
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[tokio::test]
    async fn ping_challenges_without_a_token_and_accepts_ours() {
        let h = Harness::new().await;
        let r = h
            .send(req("GET", "/v2/").body(Body::empty()).unwrap())
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let challenge = r.header("www-authenticate").unwrap();
        assert!(
            challenge.starts_with("Bearer realm=\"http://localhost:5000/v2/auth\""),
            "{challenge}"
        );
        assert_eq!(
            r.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );
        let r = h
            .send(h.authed("GET", "/v2/", &[]).body(Body::empty()).unwrap())
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "{}");
        assert_eq!(
            r.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );
        let r = h
            .send(
                req("GET", "/v2/")
                    .header("authorization", "Bearer not.a.token")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn token_endpoint_route_is_not_shadowed() {
        // Another module owns `/v2/auth`; axum must prefer its static route over our wildcard.
        let h = Harness::new().await;
        let app = Router::new()
            .merge(routes())
            .route("/v2/auth", get(|| async { "token endpoint" }))
            .with_state(h.state.clone());
        let resp =
            tower::ServiceExt::oneshot(app, req("GET", "/v2/auth").body(Body::empty()).unwrap())
                .await
                .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        // And our own routes alone do not answer it.
        let ours = routes().with_state(h.state.clone());
        let resp =
            tower::ServiceExt::oneshot(ours, req("GET", "/v2/auth").body(Body::empty()).unwrap())
                .await
                .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn errors_carry_the_api_version_and_spec_body() {
        let h = Harness::new().await;
        let r = h
            .send(
                h.authed("GET", "/v2/Bad/Name/tags/list", &[])
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.code(), "NAME_INVALID");
        assert_eq!(
            r.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );
        let r = h
            .send(
                h.authed("POST", "/v2/acme/app/tags/list", &["push"])
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn reads_of_a_missing_repo_are_name_unknown() {
        let h = Harness::new().await;
        let r = h.get("/v2/acme/nothing/tags/list").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.code(), "NAME_UNKNOWN");
        let r = h.get("/v2/acme/nothing/manifests/latest").await;
        assert_eq!(r.code(), "NAME_UNKNOWN");
    }

    #[tokio::test]
    async fn push_to_a_missing_namespace_is_name_unknown() {
        let h = Harness::new().await;
        let r = h
            .send(
                h.authed("POST", "/v2/ghost/app/blobs/uploads/", &["push"])
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.code(), "NAME_UNKNOWN");
    }

    #[test]
    fn query_keeps_repeated_keys_and_decodes() {
        let q = Query::parse(Some("tag=a&tag=b&from=x%2Fy&n=1"));
        assert_eq!(q.all("tag").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(q.get("from"), Some("x/y"));
        assert_eq!(q.get("none"), None);
    }
}
