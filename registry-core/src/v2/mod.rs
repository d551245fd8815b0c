//! The OCI distribution API under `/v2/`.

use axum::Router;

use crate::state::AppState;

/// Routes of the distribution API.
pub fn routes() -> Router<AppState> {
    Router::new()
}
