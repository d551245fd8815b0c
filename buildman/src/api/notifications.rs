//! (being written: issue 5)

use axum::Router;

use super::Shared;

/// Register this module's routes on `r`.
pub(super) fn routes(r: Router<Shared>) -> Router<Shared> {
    r
}
