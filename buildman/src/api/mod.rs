//! Quay's REST API for builds (reference 6.1), uploads for builds (`/api/v1/filedrop/`), and the
//! signed `/buildpack/{file_id}` download the agents use.
//!
//! Callers authenticate as for registry-core's `/api/v1` (Basic or Bearer, see
//! [`registry_core::accounts::credentials`]); repository roles decide: read to view, write to
//! start (and to read logs, unless `reader_build_logs`), admin to cancel. The buildpack download
//! takes no user credentials: only a short-lived token bound to one file (see [`filedrop`]).
//!
//! ```no_run
//! # async fn demo(state: buildman::api::ApiState, registry: registry_core::state::AppState)
//! # -> std::io::Result<()> {
//! let app = registry_core::router(registry).merge(buildman::api::routes(state));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

mod buildpack;
mod builds;
pub mod error;
pub mod filedrop;
mod notifications;
mod request;
mod trigger_error;
mod trigger_start;
mod triggers;
mod view;
mod webhook;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::routing::{MethodRouter, get, post, put};
use http::request::Parts;
use registry_core::accounts::credentials::{self, Identity, Principal};
use registry_core::api::error::ApiV1Error;
use registry_core::db::Db;
use registry_core::state::AppState;

use crate::control::BuildControl;
pub use error::BuildApiError;

/// Settings of the builds API.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// Queue attempts of a new build (Quay: 3).
    pub max_retries: u32,
    /// Where uploads are stored (`<file_id>`, and `<file_id>.partial` while being written).
    pub upload_dir: PathBuf,
    /// Largest upload accepted, in bytes.
    pub max_upload_bytes: u64,
    /// How agents and clients reach this server, e.g. `http://127.0.0.1:8080`; upload and
    /// buildpack URLs start with it.
    pub public_base_url: String,
    /// `FEATURE_READER_BUILD_LOGS`: readers may see logs and sources, not only writers.
    pub reader_build_logs: bool,
    /// `ALLOW_LOCAL_GIT_SOURCES`: `git.url` may be a path or `file://` URL on the build host.
    pub allow_local_git_sources: bool,
    /// Build trigger keys (thresholds, `REGISTRY_TITLE`).
    pub triggers: crate::config::TriggerConfig,
    /// Notification keys (webhook target rules, mail, timeouts).
    pub notifications: crate::config::NotificationConfig,
}

/// What the handlers need.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// registry-core: accounts, permissions, repositories, the token signing key.
    pub registry: AppState,
    /// `builds.db`.
    pub builds: Db,
    /// The running manager (wake the scheduler, cancel builds).
    pub control: Arc<dyn BuildControl>,
    /// Seals and opens stored secrets (deploy keys, webhook tokens and secrets).
    pub secrets: Arc<crate::secrets::SecretBox>,
    /// Settings.
    pub settings: ApiSettings,
}

type Shared = Arc<ApiState>;

/// Register `route` at `path` and at `path` with (or without) its trailing slash, as
/// registry-core does: Quay's clients use both spellings.
fn both(router: Router<Shared>, path: &str, route: MethodRouter<Shared>) -> Router<Shared> {
    let other = match path.strip_suffix('/') {
        Some(bare) => bare.to_owned(),
        None => format!("{path}/"),
    };
    router.route(path, route.clone()).route(&other, route)
}

/// The builds API, uploads and the buildpack download, with `state` applied; merge it with
/// `registry_core::router`.
pub fn routes(state: ApiState) -> Router {
    const BUILDS: &str = "/api/v1/repository/{ns}/{repo}/build/";
    const BUILD: &str = "/api/v1/repository/{ns}/{repo}/build/{uuid}";
    let mut r = Router::new();
    r = both(r, BUILDS, get(builds::list).post(builds::create));
    r = both(r, BUILD, get(builds::get).delete(builds::cancel));
    r = both(r, &format!("{BUILD}/status"), get(builds::get));
    r = both(r, &format!("{BUILD}/logs"), get(builds::logs));
    r = both(r, "/api/v1/filedrop/", post(filedrop::create));
    r = r
        .route("/api/v1/filedrop/{file_id}", put(filedrop::upload))
        .route("/buildpack/{file_id}", get(buildpack::download));
    r = triggers::routes(r);
    r = webhook::routes(r);
    r = notifications::routes(r);
    r.with_state(Arc::new(state))
}

/// An authenticated caller; no or wrong credentials answer 401.
#[derive(Clone, Debug)]
pub(crate) struct Caller(pub(crate) Principal);

/// A caller that may be anonymous; wrong credentials still answer 401.
#[derive(Clone, Debug)]
pub(crate) struct MaybeCaller(pub(crate) Option<Principal>);

impl FromRequestParts<Shared> for MaybeCaller {
    type Rejection = BuildApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        let presented = credentials::from_headers(&parts.headers);
        match credentials::identify(&state.registry.db, &presented).await? {
            Identity::Anonymous => Ok(MaybeCaller(None)),
            Identity::Known(p) => Ok(MaybeCaller(Some(p))),
            Identity::BadCredentials => Err(ApiV1Error::Unauthenticated.into()),
        }
    }
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = BuildApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        MaybeCaller::from_request_parts(parts, state)
            .await?
            .0
            .map(Caller)
            .ok_or(ApiV1Error::Unauthenticated.into())
    }
}

/// Parse a JSON body; an empty body parses as `{}`.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, BuildApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| error::InvalidRequest::Body(e).into())
}
