//! Tag templates: parsing never panics; a template that parses renders without panicking against
//! any JSON, a template without `${` renders to itself, and a rendered tag escapes to a valid tag.
//!
//! Input: the template, a newline, then the metadata: JSON if it parses, else a metadata object
//! whose string fields are that text.
#![no_main]

mod common;

use common::TAG;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use triggers::tags::escape_tag;
use triggers::template::{TagTemplate, context};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (template, rest) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(t) = TagTemplate::parse(template) else {
        return;
    };
    let metadata = serde_json::from_str::<Value>(rest).unwrap_or_else(|_| {
        json!({"commit": rest, "ref": rest, "default_branch": rest,
               "commit_info": {"message": rest, "author": {"username": rest}}})
    });
    let rendered = t.render(&context(&metadata));
    if !template.contains("${") {
        assert_eq!(rendered.as_deref(), Some(template));
    }
    if let Some(raw) = rendered {
        let tag = escape_tag(&raw);
        assert!(TAG.is_match(&tag), "{raw:?} -> {tag:?}");
    }
});
