//! GitHub's `push` webhook (Quay's `get_transformed_webhook_payload`, without its API lookups:
//! the default branch comes from the payload's `repository.default_branch`).
//!
//! Pings (`X-GitHub-Event: ping`, or a body with `zen`), other events, and pushes without a head
//! commit (a deleted branch) are skipped, not errors.

use serde::Deserialize;

use crate::metadata::{CommitInfo, Metadata, Person, Push, checked_commit};

/// A delivery that claims to be a push but is not a usable one.
#[derive(Debug, thiserror::Error)]
#[error("github push payload is not valid: {0}")]
pub struct GithubError(String);

#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    zen: Option<serde_json::Value>,
    #[serde(rename = "ref", default)]
    git_ref: Option<String>,
    #[serde(default)]
    head_commit: Option<HeadCommit>,
    repository: Option<Repository>,
}

#[derive(Deserialize)]
struct HeadCommit {
    id: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    author: Option<Who>,
    #[serde(default)]
    committer: Option<Who>,
}

#[derive(Deserialize)]
struct Who {
    #[serde(default)]
    username: Option<String>,
}

#[derive(Deserialize)]
struct Repository {
    ssh_url: String,
    #[serde(default)]
    full_name: Option<String>,
    #[serde(default)]
    default_branch: Option<String>,
}

fn person(who: Option<Who>) -> Option<Person> {
    who.and_then(|w| w.username).map(Person::named)
}

/// Parse a JSON delivery whose `X-GitHub-Event` header is `event` (`None` when absent: the body
/// decides): the push, and the repository's `full_name` (`owner/repo`) when the push names it.
pub fn parse(event: Option<&str>, body: &[u8]) -> Result<(Push, Option<String>), GithubError> {
    match event {
        Some("ping") => return Ok((Push::Skip("github ping".into()), None)),
        Some("push") | None => {}
        Some(other) => return Ok((Push::not_a_push("github", other), None)),
    }
    let b: Body = serde_json::from_slice(body).map_err(|e| GithubError(e.to_string()))?;
    if b.zen.is_some() {
        return Ok((Push::Skip("github ping".into()), None));
    }
    let Some(head) = b.head_commit else {
        return Ok((
            Push::Skip("github push without a head commit (a deleted branch)".into()),
            None,
        ));
    };
    let repo = b
        .repository
        .ok_or_else(|| GithubError("missing field `repository`".into()))?;
    let Some(commit) = checked_commit(&head.id) else {
        return Err(GithubError(format!(
            "head_commit.id {:?} is not a commit SHA",
            head.id
        )));
    };
    let git_ref = b
        .git_ref
        .ok_or_else(|| GithubError("missing field `ref`".into()))?;
    let metadata = Metadata {
        commit,
        git_url: repo.ssh_url,
        git_ref: Some(git_ref),
        default_branch: repo.default_branch,
        commit_info: Some(CommitInfo {
            url: head.url,
            message: head.message,
            date: head.timestamp,
            author: person(head.author),
            committer: person(head.committer),
        }),
    };
    Ok((Push::Build(Box::new(metadata)), repo.full_name))
}

/// Whether `body` has the shape of a GitHub push or ping (custom-git's fallback).
pub(crate) fn fits(body: &serde_json::Value) -> bool {
    body.get("zen").is_some()
        || (body.get("head_commit").is_some()
            && body
                .get("repository")
                .is_some_and(serde_json::Value::is_object))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUSH: &[u8] = br#"{
        "ref": "refs/heads/main",
        "before": "0000000000000000000000000000000000000000",
        "after": "1c002dd4b536e7479fe34593e72e6c6c1819e53b",
        "head_commit": {
            "id": "1c002dd4b536e7479fe34593e72e6c6c1819e53b",
            "message": "add a thing",
            "timestamp": "2026-11-27T10:00:00-05:00",
            "url": "https://github.com/acme/app/commit/1c002dd4b536e7479fe34593e72e6c6c1819e53b",
            "author": {"name": "J Doe", "email": "j@example.com", "username": "jdoe"},
            "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"}
        },
        "repository": {
            "name": "app", "full_name": "acme/app", "owner": {"name": "acme"},
            "ssh_url": "git@github.com:acme/app.git", "default_branch": "main"
        }
    }"#;

    #[test]
    fn a_push_maps_like_quay() {
        let Push::Build(m) = parse(Some("push"), PUSH).unwrap().0 else {
            panic!("skipped");
        };
        assert_eq!(m.commit, "1c002dd4b536e7479fe34593e72e6c6c1819e53b");
        assert_eq!(m.git_url, "git@github.com:acme/app.git");
        assert_eq!(m.git_ref.as_deref(), Some("refs/heads/main"));
        assert_eq!(m.default_branch.as_deref(), Some("main"));
        let info = m.commit_info.unwrap();
        assert_eq!(info.message, "add a thing");
        assert_eq!(info.author.unwrap().username, "jdoe");
        assert_eq!(info.committer.unwrap().username, "web-flow");
        assert!(matches!(parse(None, PUSH).unwrap().0, Push::Build(_)));
    }

    #[test]
    fn pings_other_events_and_deleted_branches_are_skipped() {
        assert!(matches!(
            parse(Some("ping"), b"{}").unwrap().0,
            Push::Skip(_)
        ));
        assert!(matches!(
            parse(
                None,
                br#"{"zen": "Keep it logically awesome.", "hook_id": 1}"#
            )
            .unwrap()
            .0,
            Push::Skip(_)
        ));
        let Push::Skip(why) = parse(Some("issues"), b"garbage").unwrap().0 else {
            panic!("an issues event must be skipped");
        };
        assert_eq!(why, "github issues event, not a push");
        let deleted = br#"{"ref": "refs/heads/old", "deleted": true, "head_commit": null,
                           "repository": {"ssh_url": "git@github.com:a/b.git"}}"#;
        assert!(matches!(
            parse(Some("push"), deleted).unwrap().0,
            Push::Skip(_)
        ));
    }

    #[test]
    fn broken_pushes_are_errors_naming_the_field() {
        let cases: [(&[u8], &str); 4] = [
            (b"{", "EOF while parsing"),
            (
                br#"{"ref": "refs/heads/a", "head_commit": {"id": "1c002dd"}}"#,
                "`repository`",
            ),
            (
                br#"{"ref": "refs/heads/a", "head_commit": {"id": "nothex!"},
                     "repository": {"ssh_url": "u"}}"#,
                "head_commit.id \"nothex!\" is not a commit SHA",
            ),
            (
                br#"{"head_commit": {"id": "1c002dd"}, "repository": {"ssh_url": "u"}}"#,
                "missing field `ref`",
            ),
        ];
        for (body, want) in cases {
            let e = parse(Some("push"), body).unwrap_err().to_string();
            assert!(e.starts_with("github push payload is not valid"), "{e}");
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
    }
}
