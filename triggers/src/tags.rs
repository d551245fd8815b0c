//! The tags a triggered build pushes (Quay's `_determine_tags` without templates, which come
//! later): the branch or tag name, `latest` for the default branch, the short commit otherwise,
//! each escaped into a valid tag.

use std::collections::BTreeSet;

use crate::metadata::short_sha;
use crate::refs::{ParsedRef, RefKind};

/// Longest tag Quay produces (it truncates to 127 characters).
pub const MAX_TAG_LEN: usize = 127;

/// The trigger's tagging options (Quay's `default_tag_from_ref` and
/// `latest_for_default_branch`, both true by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagOptions {
    /// Tag with the branch or tag name.
    pub default_tag_from_ref: bool,
    /// Tag `latest` when the push is to the default branch.
    pub latest_for_default_branch: bool,
}

impl Default for TagOptions {
    fn default() -> Self {
        TagOptions {
            default_tag_from_ref: true,
            latest_for_default_branch: true,
        }
    }
}

/// Make `raw` a valid tag as Quay's `escape_tag` does: empty becomes `latest`, a first character
/// that is not a word character becomes `_`, every character outside `[A-Za-z0-9_.-]` becomes
/// `_`, and the result is cut to [`MAX_TAG_LEN`]. Unlike Quay (Python's Unicode `\w`), non-ASCII
/// letters are replaced too: the distribution spec's tag grammar is ASCII.
pub fn escape_tag(raw: &str) -> String {
    if raw.is_empty() {
        return "latest".to_owned();
    }
    raw.chars()
        .enumerate()
        .map(|(i, c)| {
            let word = c.is_ascii_alphanumeric() || c == '_';
            if word || (i > 0 && (c == '.' || c == '-')) {
                c
            } else {
                '_'
            }
        })
        .take(MAX_TAG_LEN)
        .collect()
}

/// The tags of a push of `git_ref` (if any) at `commit`, before templates: the ref's name and
/// `latest` on the default branch per `options` ([`ref_tags`]), sorted; [`short_sha_tag`] when
/// that leaves nothing. `latest` is given for a branch only (Quay also gives it to a tag named like
/// the default branch).
pub fn default_tags(
    git_ref: Option<&str>,
    default_branch: Option<&str>,
    commit: &str,
    options: TagOptions,
) -> Vec<String> {
    let mut tags = ref_tags(git_ref, default_branch, options);
    if tags.is_empty() {
        tags.insert(short_sha_tag(commit));
    }
    tags.into_iter().collect()
}

/// The tags a ref gives, escaped, without the short-commit fallback (templates come before that
/// fallback, see `plan::decide`): the ref's name if `default_tag_from_ref`, `latest` for a push
/// to the default branch if `latest_for_default_branch`.
pub fn ref_tags(
    git_ref: Option<&str>,
    default_branch: Option<&str>,
    options: TagOptions,
) -> BTreeSet<String> {
    let mut tags = BTreeSet::new();
    if let Some(parsed) = git_ref.and_then(ParsedRef::parse) {
        if options.default_tag_from_ref {
            tags.insert(escape_tag(&parsed.name));
        }
        if options.latest_for_default_branch
            && parsed.kind == RefKind::Branch
            && default_branch == Some(parsed.name.as_str())
        {
            tags.insert("latest".to_owned());
        }
    }
    tags
}

/// The tag of last resort: the first 7 characters of `commit`, escaped.
pub fn short_sha_tag(commit: &str) -> String {
    escape_tag(&short_sha(commit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_follows_quay() {
        assert_eq!(escape_tag(""), "latest");
        assert_eq!(escape_tag("feature/x"), "feature_x");
        assert_eq!(
            escape_tag("2015-09-11T14:26:16-04:00"),
            "2015-09-11T14_26_16-04_00"
        );
        assert_eq!(escape_tag(".hidden"), "_hidden");
        assert_eq!(escape_tag("-dash"), "_dash");
        assert_eq!(escape_tag("v1.2-rc.1"), "v1.2-rc.1");
        assert_eq!(escape_tag("a b\tc"), "a_b_c");
        assert_eq!(escape_tag("ünï"), "_n_");
        assert_eq!(escape_tag(&"x".repeat(300)).len(), MAX_TAG_LEN);
    }

    #[test]
    fn branch_name_and_latest_on_the_default_branch() {
        let o = TagOptions::default();
        assert_eq!(
            default_tags(Some("refs/heads/main"), Some("main"), "abcdef0123", o),
            ["latest", "main"]
        );
        assert_eq!(
            default_tags(Some("refs/heads/feature/x"), Some("main"), "abcdef0123", o),
            ["feature_x"]
        );
        assert_eq!(
            default_tags(Some("refs/tags/v1.0"), Some("main"), "abcdef0123", o),
            ["v1.0"]
        );
        // A tag that happens to be named like the default branch is not `latest`.
        assert_eq!(
            default_tags(Some("refs/tags/main"), Some("main"), "abcdef0123", o),
            ["main"]
        );
    }

    #[test]
    fn options_and_the_short_sha_fallback() {
        let none = TagOptions {
            default_tag_from_ref: false,
            latest_for_default_branch: false,
        };
        assert_eq!(
            default_tags(Some("refs/heads/main"), Some("main"), "abcdef0123", none),
            ["abcdef0"]
        );
        let only_latest = TagOptions {
            default_tag_from_ref: false,
            latest_for_default_branch: true,
        };
        assert_eq!(
            default_tags(
                Some("refs/heads/main"),
                Some("main"),
                "abcdef0123",
                only_latest
            ),
            ["latest"]
        );
        // No ref at all (a custom-git manual start): the short commit.
        assert_eq!(
            default_tags(None, None, "abcdef0123", TagOptions::default()),
            ["abcdef0"]
        );
        assert_eq!(
            default_tags(Some("garbage"), Some("main"), "abc", TagOptions::default()),
            ["abc"]
        );
    }
}
