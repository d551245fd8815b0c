//! Quay's tag escaping: any text becomes a valid tag (`^[\w][\w.-]{0,126}$`, ASCII), and escaping
//! an escaped tag changes nothing.
#![no_main]

mod common;

use common::TAG;
use libfuzzer_sys::fuzz_target;
use triggers::tags::escape_tag;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let tag = escape_tag(&text);
    assert!(TAG.is_match(&tag), "{text:?} -> {tag:?}");
    assert_eq!(escape_tag(&tag), tag, "escaping is idempotent");
});
