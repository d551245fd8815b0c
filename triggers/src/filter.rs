//! Which pushes start a build: the trigger's `branchtag_regex` and the commit-message skip
//! markers (Quay's `raise_if_skipped_build`, applied to webhook builds only, not manual starts).

use regex::{Regex, RegexBuilder};

use crate::refs::ParsedRef;

/// Commit-message markers that skip the build, as in Quay.
pub const SKIP_MARKERS: [&str; 2] = ["[skip build]", "[build skip]"];

/// Longest `branchtag_regex` accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;

/// Memory a compiled `branchtag_regex` may take (the compiled program and the lazy DFA's cache
/// each): enough for any sensible branch filter, small enough that a hostile pattern such as
/// `(a{100}){100}` is refused at configuration time instead of costing every webhook.
const COMPILED_LIMIT: usize = 256 * 1024;

/// A `branchtag_regex` that cannot be used. Quay silently replaces an invalid one with `.*`
/// (every push builds); Quarry refuses it when the trigger is configured.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// Not a valid regular expression on its own, or too big once compiled.
    #[error("branchtag_regex {pattern:?} is not a valid regular expression: {reason}")]
    Invalid {
        /// The pattern as given (at most [`MAX_PATTERN_LEN`] bytes).
        pattern: String,
        /// The parser's explanation.
        reason: String,
    },
    /// Longer than [`MAX_PATTERN_LEN`].
    #[error(
        "branchtag_regex is {len} bytes long, more than the {MAX_PATTERN_LEN} allowed: use a shorter pattern"
    )]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
}

/// A compiled `branchtag_regex`, matched against `heads/<branch>` or `tags/<tag>` as Quay does:
/// Python's `re.match` (anchored at the start, leftmost-first) must match the whole subject.
/// That is not "some match covers the whole subject": `heads/(main|main-.*)` does not let
/// `heads/main-x` through, because the first alternative matches `heads/main` and stops there.
#[derive(Clone, Debug)]
pub struct BranchTagFilter {
    anchored: Regex,
}

fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .size_limit(COMPILED_LIMIT)
        .dfa_size_limit(COMPILED_LIMIT)
        .build()
}

impl BranchTagFilter {
    /// Compile `pattern` (e.g. `heads/(master|release-.*)`, `tags/v.*`).
    pub fn new(pattern: &str) -> Result<BranchTagFilter, FilterError> {
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(FilterError::TooLong { len: pattern.len() });
        }
        let invalid = |e: regex::Error| FilterError::Invalid {
            pattern: pattern.to_owned(),
            reason: e.to_string(),
        };
        // The pattern alone first: wrapped in a group, `x)|(?:y` would balance and compile.
        compile(pattern).map_err(invalid)?;
        compile(&format!("^(?:{pattern})"))
            .map(|anchored| BranchTagFilter { anchored })
            .map_err(invalid)
    }

    /// Whether a push of `git_ref` (`refs/heads/x`, `refs/tags/y`) passes. A push without a
    /// parsable ref never passes a filter (Quay: nothing to match against).
    pub fn allows(&self, git_ref: Option<&str>) -> bool {
        git_ref.and_then(ParsedRef::parse).is_some_and(|r| {
            let subject = r.filter_subject();
            // `find` is leftmost-first like Python's `re`; anchored, it starts at 0.
            self.anchored
                .find(&subject)
                .is_some_and(|m| m.end() == subject.len())
        })
    }
}

/// The skip marker in `message`, if any.
pub fn skip_marker(message: &str) -> Option<&'static str> {
    SKIP_MARKERS.into_iter().find(|m| message.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_regex_must_match_the_whole_kind_and_name() {
        let f = BranchTagFilter::new("heads/(master|release-.*)").unwrap();
        assert!(f.allows(Some("refs/heads/master")));
        assert!(f.allows(Some("refs/heads/release-1.2")));
        assert!(!f.allows(Some("refs/heads/master2")), "prefix match only");
        assert!(!f.allows(Some("refs/heads/old-master")));
        assert!(!f.allows(Some("refs/tags/master")), "a tag is not a branch");
        assert!(!f.allows(None));
        assert!(!f.allows(Some("master")));
    }

    #[test]
    fn a_bare_branch_name_does_not_match_because_the_kind_is_part_of_the_subject() {
        let f = BranchTagFilter::new("master").unwrap();
        assert!(!f.allows(Some("refs/heads/master")));
        let tags = BranchTagFilter::new("tags/v.*").unwrap();
        assert!(tags.allows(Some("refs/tags/v1.0")));
        assert!(!tags.allows(Some("refs/heads/v1.0")));
    }

    #[test]
    fn alternation_stays_inside_the_anchors() {
        let f = BranchTagFilter::new("heads/a|tags/b").unwrap();
        assert!(f.allows(Some("refs/heads/a")));
        assert!(f.allows(Some("refs/tags/b")));
        assert!(!f.allows(Some("refs/heads/ab")));
        assert!(!f.allows(Some("refs/tags/xb")));
    }

    #[test]
    fn the_first_match_python_finds_must_cover_the_subject() {
        // Checked with python3: re.match(p, s) and len(m.group(0)) == len(s).
        for (pattern, subject, want) in [
            ("heads/(main|main-.*)", "refs/heads/main-x", false),
            ("heads/(main-.*|main)", "refs/heads/main-x", true),
            ("heads/(main|main-.*)", "refs/heads/main", true),
            ("heads/.*?", "refs/heads/a", false),
            ("heads/.*", "refs/heads/a", true),
            ("heads/a|heads/ab", "refs/heads/ab", false),
        ] {
            let f = BranchTagFilter::new(pattern).unwrap();
            assert_eq!(f.allows(Some(subject)), want, "{pattern} on {subject}");
        }
    }

    #[test]
    fn an_invalid_regex_is_an_error_naming_it() {
        for pattern in ["heads/(master", "heads/x)|(?:y"] {
            let e = BranchTagFilter::new(pattern).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!(
                    "branchtag_regex {pattern:?} is not a valid regular expression"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn long_and_huge_patterns_are_refused() {
        let e = BranchTagFilter::new(&"a".repeat(MAX_PATTERN_LEN + 1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "branchtag_regex is 1025 bytes long, more than the 1024 allowed: use a shorter pattern"
        );
        assert!(BranchTagFilter::new(&"a".repeat(MAX_PATTERN_LEN)).is_ok());
        let e = BranchTagFilter::new("heads/(\\w{100}){100}").unwrap_err();
        assert!(matches!(e, FilterError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("size limit"), "{e}");
    }

    #[test]
    fn skip_markers_anywhere_in_the_message() {
        assert_eq!(skip_marker("fix typo [skip build]"), Some("[skip build]"));
        assert_eq!(skip_marker("[build skip]\n\nbody"), Some("[build skip]"));
        assert_eq!(skip_marker("skip build"), None);
        assert_eq!(skip_marker("[skip ci]"), None);
        assert_eq!(skip_marker(""), None);
    }
}
