//! registry-core: Quarry's OCI registry.
//!
//! It owns the OCI distribution API (v1.1 plus referrers and upload cancel), the content-addressed
//! blob store, the SQLite metadata database, namespaces (users and organisations), teams and
//! repository permissions, robot accounts, Docker token authentication at `/v2/auth`, tags, and
//! repository events. It must not know about builds: buildman mounts [`router`] beside its own
//! routes and reads repository events.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = registry_core::config::Config::default();
//! let state = registry_core::state::AppState::open(config)?;
//! let app = registry_core::router(state);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod accounts;
pub mod admin;
pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod digest;
pub mod error;
pub mod manifest;
pub mod names;
pub mod repos;
pub mod state;
pub mod storage;
pub mod v2;

use axum::Router;

use crate::state::AppState;

/// The whole HTTP surface: `/v2/...`, `/v2/auth` and `/api/v1/...`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(v2::routes())
        .merge(api::routes())
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Serve [`router`] on `listener` until `shutdown` completes, with the background maintenance
/// tasks (abandoned-upload cleanup) running beside it.
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(state, listener, Router::new(), shutdown).await
}

/// [`serve`] with `extra` routes (buildman's API) merged beside the registry's.
pub async fn serve_with(
    state: AppState,
    listener: tokio::net::TcpListener,
    extra: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    let maintenance = tokio::spawn(storage::cleanup::run(state.clone()));
    // Without TCP_NODELAY, a response written as headers then body on a keep-alive connection
    // waits ~40 ms for the client's delayed ACK (Nagle); small blob GETs were 6x slower.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let result = axum::serve(listener, router(state).merge(extra))
        .with_graceful_shutdown(shutdown)
        .await;
    maintenance.abort();
    result
}
