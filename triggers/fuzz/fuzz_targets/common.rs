//! Shared by the fuzz targets (`mod common;`).

use std::sync::LazyLock;

use regex::Regex;

/// A valid tag as Quay's `escape_tag` makes them: `^[\w][\w.-]{0,126}$`, ASCII.
pub static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,126}$").expect("valid regex"));
