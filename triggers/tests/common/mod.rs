//! Shared helpers of the triggers integration tests.

use std::path::PathBuf;

/// A path under the repository's `fixtures/` folder.
pub(crate) fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(path)
}
