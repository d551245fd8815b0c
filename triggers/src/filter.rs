//! Which pushes start a build: the trigger's `branchtag_regex` and the commit-message skip
//! markers (Quay's `raise_if_skipped_build`, applied to webhook builds only, not manual starts).

use regex::Regex;

use crate::refs::ParsedRef;

/// Commit-message markers that skip the build, as in Quay.
pub const SKIP_MARKERS: [&str; 2] = ["[skip build]", "[build skip]"];

/// A `branchtag_regex` that is not a valid regular expression. Quay silently replaces an invalid
/// one with `.*` (every push builds); Quarry refuses it when the trigger is configured.
#[derive(Debug, thiserror::Error)]
#[error("branchtag_regex {pattern:?} is not a valid regular expression: {reason}")]
pub struct FilterError {
    /// The pattern as given.
    pub pattern: String,
    /// The parser's explanation.
    pub reason: String,
}

/// A compiled `branchtag_regex`, matched in full against `heads/<branch>` or `tags/<tag>`.
#[derive(Clone, Debug)]
pub struct BranchTagFilter {
    full: Regex,
}

impl BranchTagFilter {
    /// Compile `pattern` (e.g. `heads/(master|release-.*)`, `tags/v.*`) for full matches.
    pub fn new(pattern: &str) -> Result<BranchTagFilter, FilterError> {
        // Anchored around a non-capturing group so that an alternation in the pattern stays
        // inside the anchors (`a|b` must not become `^a|b$`).
        Regex::new(&format!("^(?:{pattern})$"))
            .map(|full| BranchTagFilter { full })
            .map_err(|e| FilterError {
                pattern: pattern.to_owned(),
                reason: e.to_string(),
            })
    }

    /// Whether a push of `git_ref` (`refs/heads/x`, `refs/tags/y`) passes. A push without a
    /// parsable ref never passes a filter (Quay: nothing to match against).
    pub fn allows(&self, git_ref: Option<&str>) -> bool {
        git_ref
            .and_then(ParsedRef::parse)
            .is_some_and(|r| self.full.is_match(&r.filter_subject()))
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
    fn an_invalid_regex_is_an_error_naming_it() {
        let e = BranchTagFilter::new("heads/(master").unwrap_err();
        assert_eq!(e.pattern, "heads/(master");
        assert!(
            e.to_string()
                .starts_with("branchtag_regex \"heads/(master\" is not a valid regular expression"),
            "{e}"
        );
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
