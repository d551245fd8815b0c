//! Trigger metadata: what every provider's push payload is turned into (Quay's
//! `METADATA_SCHEMA`), and the input to filters, tags and templates.

use serde::{Deserialize, Serialize};

/// One person of a commit (`commit_info.author` / `.committer`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// Their user name at the provider.
    pub username: String,
    /// Their profile page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Their avatar image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

impl Person {
    /// A person known by user name only (no profile page or avatar).
    pub fn named(username: String) -> Person {
        Person {
            username,
            url: None,
            avatar_url: None,
        }
    }
}

/// `commit_info`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInfo {
    /// The commit's page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The commit message (required by Quay's schema).
    pub message: String,
    /// The commit date as the provider wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    /// The author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Person>,
    /// The committer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committer: Option<Person>,
}

/// What a push builds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The commit SHA (hex, at least 7 characters).
    pub commit: String,
    /// Where the agent clones from.
    pub git_url: String,
    /// `refs/heads/...` or `refs/tags/...`, when the push names one.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// The repository's default branch, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_branch: Option<String>,
    /// About the commit, when the payload says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_info: Option<CommitInfo>,
}

/// What a provider's webhook delivery asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Push {
    /// Build this.
    Build(Box<Metadata>),
    /// Nothing to build (a ping, another kind of event, a deleted branch), and why: for the
    /// webhook's answer and the log. Not an error.
    Skip(String),
}

impl Push {
    /// The skip for a delivery of another kind of event: `<provider> <event> event, not a push`.
    pub fn not_a_push(provider: &str, event: &str) -> Push {
        Push::Skip(format!("{provider} {event} event, not a push"))
    }
}

/// Whether `commit` looks like a commit SHA: hex, 7 to 64 characters (Quay: hex, at least 7).
pub fn is_commit_sha(commit: &str) -> bool {
    (7..=64).contains(&commit.len()) && commit.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `commit` in lower case if it is a commit SHA ([`is_commit_sha`]): every provider's commit
/// goes through here, so metadata always carries a lower-case SHA.
pub fn checked_commit(commit: &str) -> Option<String> {
    is_commit_sha(commit).then(|| commit.to_ascii_lowercase())
}

/// Whether `commit` is all zeros: git's "no object", the new value of a deleted ref.
pub fn is_null_commit(commit: &str) -> bool {
    !commit.is_empty() && commit.bytes().all(|b| b == b'0')
}

/// The first 7 characters of `commit` (Quay's short SHA, for the fallback tag and templates).
pub fn short_sha(commit: &str) -> String {
    commit.chars().take(7).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_shas_are_hex_of_7_to_64() {
        assert!(is_commit_sha("1c002dd"));
        assert!(is_commit_sha(&"a".repeat(40)));
        assert!(is_commit_sha(&"A".repeat(64)));
        assert!(!is_commit_sha("1c002d"));
        assert!(!is_commit_sha(&"a".repeat(65)));
        assert!(!is_commit_sha("1c002dz"));
        assert!(!is_commit_sha(""));
        assert_eq!(checked_commit("ABCDEF0").as_deref(), Some("abcdef0"));
        assert_eq!(checked_commit("xyz1234"), None);
        assert!(is_null_commit(&"0".repeat(40)));
        assert!(!is_null_commit("") && !is_null_commit("0000001"));
        assert_eq!(short_sha("1c002dd4b536"), "1c002dd");
        assert_eq!(short_sha("abc"), "abc");
    }

    #[test]
    fn ref_is_serialised_under_its_quay_name() {
        let m = Metadata {
            commit: "1c002dd".into(),
            git_url: "git@example.com:a/b.git".into(),
            git_ref: Some("refs/heads/main".into()),
            default_branch: None,
            commit_info: None,
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["ref"], "refs/heads/main");
        assert!(v.get("default_branch").is_none());
        let back: Metadata = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
    }
}
