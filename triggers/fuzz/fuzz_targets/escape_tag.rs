//! Quay's tag escaping: any text becomes a valid tag (`^[\w][\w.-]{0,126}$`, ASCII), and escaping
//! an escaped tag changes nothing.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use regex::Regex;
use triggers::tags::escape_tag;

static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,126}$").expect("valid regex"));

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let tag = escape_tag(&text);
    assert!(TAG.is_match(&tag), "{text:?} -> {tag:?}");
    assert_eq!(escape_tag(&tag), tag, "escaping is idempotent");
});
