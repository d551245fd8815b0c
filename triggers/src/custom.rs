//! The custom-git webhook: a JSON body in Quay's custom schema (`commit`, `ref`,
//! `default_branch`, optional `commit_info`), built from the trigger's own `build_source` URL.
//! A body that is not in the custom schema is mapped from the first of the GitHub, Bitbucket and
//! GitLab push shapes that fits, as Quay does ([`crate::webhook::parse`] calls `parse_any`).
//!
//! The ref must be a branch or a tag (`refs/remotes/...` is refused: Quay documents only those
//! two for the custom schema, and a remote-tracking ref is never what a server hook pushes). An
//! all-zero commit, what a post-receive hook sees for a deleted ref, is skipped.

use serde::Deserialize;

use crate::metadata::{CommitInfo, Metadata, Push, checked_commit, is_null_commit};
use crate::refs::{ParsedRef, RefKind};
use crate::webhook::PayloadError;
use crate::{bitbucket, github, gitlab};

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
pub fn parse(body: &[u8], git_url: &str) -> Result<Push, CustomError> {
    let b: Body = serde_json::from_slice(body).map_err(|e| CustomError::Invalid(e.to_string()))?;
    let Some(commit) = checked_commit(&b.commit) else {
        return Err(CustomError::Commit(b.commit));
    };
    let branch_or_tag = ParsedRef::parse(&b.git_ref)
        .is_some_and(|r| matches!(r.kind, RefKind::Branch | RefKind::Tag));
    if !branch_or_tag {
        return Err(CustomError::Ref(b.git_ref));
    }
    if is_null_commit(&commit) {
        return Ok(Push::Skip(format!(
            "custom git push deleting {} (the commit is all zeros)",
            b.git_ref
        )));
    }
    Ok(Push::Build(Box::new(Metadata {
        commit,
        git_url: git_url.to_owned(),
        git_ref: Some(b.git_ref),
        default_branch: Some(b.default_branch),
        commit_info: b.commit_info,
    })))
}

/// Quay's custom-git handler: the custom schema as is, else the first of the GitHub, Bitbucket
/// and GitLab shapes that fits, mapped without API calls; the clone URL is always the trigger's.
///
/// `events` are the `X-GitHub-Event` and `X-Event-Key` headers, for the provider shapes.
pub(crate) fn parse_any(
    body: &[u8],
    git_url: &str,
    (github_event, bitbucket_event): (Option<&str>, Option<&str>),
) -> Result<Push, PayloadError> {
    let custom_error = match parse(body, git_url) {
        Ok(push) => return Ok(push),
        Err(e) => e,
    };
    let fallback = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) if github::fits(&value) => Some(github::parse(github_event, body)?.0),
        Ok(value) if bitbucket::fits(&value) => Some(bitbucket::parse(bitbucket_event, body)?.0),
        Ok(value) if gitlab::fits(&value) => Some(gitlab::parse(body)?.0),
        _ => None,
    };
    match fallback {
        Some(Push::Build(mut metadata)) => {
            git_url.clone_into(&mut metadata.git_url);
            Ok(Push::Build(metadata))
        }
        Some(skip) => Ok(skip),
        None => Err(PayloadError::Custom {
            custom: custom_message(&custom_error),
        }),
    }
}

fn custom_message(e: &CustomError) -> String {
    match e {
        CustomError::Invalid(reason) => reason.clone(),
        other => other.to_string(),
    }
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
        let m = build(parse(body, URL).unwrap());
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
        let m = build(
            parse(
                br#"{"commit": "1c002dd", "ref": "refs/tags/v1", "default_branch": "main"}"#,
                URL,
            )
            .unwrap(),
        );
        assert_eq!(m.commit_info, None);
    }

    #[test]
    fn a_deleted_ref_is_skipped() {
        let zeros = "0".repeat(40);
        let body = format!(
            r#"{{"commit": "{zeros}", "ref": "refs/heads/old", "default_branch": "main"}}"#
        );
        assert_eq!(
            parse(body.as_bytes(), URL).unwrap(),
            Push::Skip("custom git push deleting refs/heads/old (the commit is all zeros)".into())
        );
    }

    fn build(push: Push) -> Metadata {
        match push {
            Push::Build(m) => *m,
            Push::Skip(why) => panic!("skipped: {why}"),
        }
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        let cases: [(&[u8], &str); 7] = [
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
                br#"{"commit": "1c002dd", "ref": "refs/remotes/origin/a", "default_branch": "a"}"#,
                "ref \"refs/remotes/origin/a\" is not refs/heads/<branch> or refs/tags/<tag>",
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

    const NO_EVENTS: (Option<&str>, Option<&str>) = (None, None);

    #[test]
    fn custom_git_uses_its_schema_then_the_providers_with_the_triggers_url() {
        let url = "ssh://git@git.example.net/srv/app.git";
        let custom = br#"{"commit": "1c002dd", "ref": "refs/heads/a", "default_branch": "a",
                          "git_url": "elsewhere"}"#;
        let Push::Build(m) = parse_any(custom, url, NO_EVENTS).unwrap() else {
            panic!("skipped");
        };
        assert_eq!((m.commit.as_str(), m.git_url.as_str()), ("1c002dd", url));
        let Push::Build(m) = parse_any(
            crate::webhook::tests::GITHUB_PUSH.as_bytes(),
            url,
            NO_EVENTS,
        )
        .unwrap() else {
            panic!("skipped");
        };
        assert_eq!(m.git_url, url, "the payload's ssh_url is replaced");
        assert_eq!(m.git_ref.as_deref(), Some("refs/heads/main"));
        let gitlab = br#"{"object_kind": "note"}"#;
        assert!(matches!(
            parse_any(gitlab, url, NO_EVENTS),
            Ok(Push::Skip(_))
        ));
        let e = parse_any(br#"{"hello": 1}"#, url, NO_EVENTS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "custom git webhook body is neither the custom schema (missing field `commit` at line 1 \
             column 12) nor a GitHub push, Bitbucket repo:push or GitLab push payload"
        );
        let e = parse_any(b"not json", url, NO_EVENTS).unwrap_err();
        assert!(e.to_string().contains("expected ident"), "{e}");
    }
}
