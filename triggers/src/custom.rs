//! The custom-git webhook: a JSON body in Quay's custom schema (`commit`, `ref`,
//! `default_branch`, optional `commit_info`), built from the trigger's own `build_source` URL.
//! Quay falls back to the GitHub, Bitbucket and GitLab schemas for a body that is not in the
//! custom one; that fallback comes with those mappings.

use serde::Deserialize;

use crate::metadata::{CommitInfo, Metadata, is_commit_sha};
use crate::refs::ParsedRef;

/// Why a custom-git body cannot start a build; the message says what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum CustomError {
    /// Not JSON, or not an object with the required fields of the right types.
    #[error(
        "custom git webhook body is not valid: {0}; expected JSON with commit, ref and default_branch"
    )]
    Invalid(String),
    /// `commit` is not a commit SHA.
    #[error("custom git webhook: commit {0:?} is not a commit SHA (7 to 64 hex characters)")]
    Commit(String),
    /// `ref` is not `refs/heads/...` or `refs/tags/...`.
    #[error("custom git webhook: ref {0:?} is not refs/heads/<branch> or refs/tags/<tag>")]
    Ref(String),
}

#[derive(Deserialize)]
struct Body {
    commit: String,
    #[serde(rename = "ref")]
    git_ref: String,
    default_branch: String,
    #[serde(default)]
    commit_info: Option<CommitInfo>,
}

/// Parse a custom-git webhook `body` for a trigger whose `build_source` is `git_url` (the URL in
/// the body, if any, is never used: a push cannot point the build elsewhere).
pub fn parse(body: &[u8], git_url: &str) -> Result<Metadata, CustomError> {
    let b: Body = serde_json::from_slice(body).map_err(|e| CustomError::Invalid(e.to_string()))?;
    if !is_commit_sha(&b.commit) {
        return Err(CustomError::Commit(b.commit));
    }
    if ParsedRef::parse(&b.git_ref).is_none() {
        return Err(CustomError::Ref(b.git_ref));
    }
    Ok(Metadata {
        commit: b.commit.to_ascii_lowercase(),
        git_url: git_url.to_owned(),
        git_ref: Some(b.git_ref),
        default_branch: Some(b.default_branch),
        commit_info: b.commit_info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "ssh://git@127.0.0.1:2222/srv/app.git";

    #[test]
    fn a_full_body_maps_to_metadata_with_the_triggers_url() {
        let body = br#"{
            "commit": "1C002DD4B536E7479FE34593E72E6C6C1819E53B",
            "ref": "refs/heads/main",
            "default_branch": "main",
            "git_url": "git@evil.example.com:x/y.git",
            "commit_info": {
                "url": "https://git.example.com/c/1c002dd",
                "message": "add a thing [skip build]",
                "date": "2026-11-27T10:00:00Z",
                "author": {"username": "jdoe", "url": "https://git.example.com/jdoe",
                           "avatar_url": "https://git.example.com/jdoe.png"},
                "committer": {"username": "ci"}
            }
        }"#;
        let m = parse(body, URL).unwrap();
        assert_eq!(m.commit, "1c002dd4b536e7479fe34593e72e6c6c1819e53b");
        assert_eq!(m.git_url, URL, "the body's URL is ignored");
        assert_eq!(m.git_ref.as_deref(), Some("refs/heads/main"));
        let info = m.commit_info.unwrap();
        assert_eq!(info.author.unwrap().username, "jdoe");
        assert_eq!(info.committer.unwrap().url, None);
        assert!(info.message.contains("[skip build]"));
    }

    #[test]
    fn the_minimal_body_has_no_commit_info() {
        let m = parse(
            br#"{"commit": "1c002dd", "ref": "refs/tags/v1", "default_branch": "main"}"#,
            URL,
        )
        .unwrap();
        assert_eq!(m.commit_info, None);
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        let cases: [(&[u8], &str); 6] = [
            (
                b"not json",
                "custom git webhook body is not valid: expected ident",
            ),
            (b"[]", "custom git webhook body is not valid"),
            (
                br#"{"ref": "refs/heads/a", "default_branch": "a"}"#,
                "missing field `commit`",
            ),
            (
                br#"{"commit": "xyz1234", "ref": "refs/heads/a", "default_branch": "a"}"#,
                "commit \"xyz1234\" is not a commit SHA",
            ),
            (
                br#"{"commit": "1c002dd", "ref": "main", "default_branch": "a"}"#,
                "ref \"main\" is not refs/heads/<branch> or refs/tags/<tag>",
            ),
            (
                br#"{"commit": "1c002dd", "ref": "refs/heads/a", "default_branch": "a",
                     "commit_info": {"url": "u"}}"#,
                "missing field `message`",
            ),
        ];
        for (body, want) in cases {
            let e = parse(body, URL).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
    }
}
