//! `branchtag_regex`: compiling any pattern and matching any ref never panics; a literal filter of
//! a ref's own subject (`heads/x`) lets exactly that ref in; text that is not a ref never passes.
//!
//! Input: the pattern, a newline, then the ref.
#![no_main]

use libfuzzer_sys::fuzz_target;
use triggers::filter::BranchTagFilter;
use triggers::refs::ParsedRef;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, git_ref) = text.split_once('\n').unwrap_or((text, ""));
    if let Ok(filter) = BranchTagFilter::new(pattern) {
        let _ = filter.allows(Some(git_ref));
    }
    if let Some(parsed) = ParsedRef::parse(git_ref) {
        let literal = BranchTagFilter::new(&regex::escape(&parsed.filter_subject()))
            .expect("an escaped literal compiles");
        assert!(literal.allows(Some(git_ref)), "{git_ref:?}");
        assert!(!literal.allows(Some(&format!("{git_ref}x"))));
    } else {
        let any = BranchTagFilter::new(".*").expect("compiles");
        assert!(
            !any.allows(Some(git_ref)),
            "not a ref, so nothing to match: {git_ref:?}"
        );
    }
});
