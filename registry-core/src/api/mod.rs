//! The Quay-shaped REST API under `/api/v1`.

use axum::Router;

use crate::state::AppState;

/// Routes of the REST API.
pub fn routes() -> Router<AppState> {
    Router::new()
}
