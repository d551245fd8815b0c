//! GitLab's push and tag push webhooks (Quay's GitLab handler, without its API lookups: the
//! default branch comes from `project.default_branch`, the author's user name from the pusher
//! when the commit's author email is the pusher's).
//!
//! Other kinds of event, pushes without commits and pushes to a deleted ref (an all-zero
//! `checkout_sha`/`after`) are skipped, not errors.

use serde::Deserialize;

use crate::metadata::{CommitInfo, Metadata, Person, Push, checked_commit, is_null_commit};

/// A delivery that claims to be a push but is not a usable one.
#[derive(Debug, thiserror::Error)]
#[error("gitlab push payload is not valid: {0}")]
pub struct GitlabError(String);

#[derive(Deserialize)]
struct Kind {
    object_kind: String,
}

#[derive(Deserialize)]
struct Body {
    #[serde(rename = "ref", default)]
    git_ref: Option<String>,
    #[serde(default)]
    checkout_sha: Option<String>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    user_username: Option<String>,
    #[serde(default)]
    user_email: Option<String>,
    #[serde(default)]
    project: Option<Project>,
    repository: Option<Repository>,
    #[serde(default)]
    commits: Vec<Commit>,
}

#[derive(Deserialize)]
struct Project {
    #[serde(default)]
    default_branch: Option<String>,
    #[serde(default)]
    path_with_namespace: Option<String>,
}

#[derive(Deserialize)]
struct Repository {
    git_ssh_url: String,
}

#[derive(Deserialize)]
struct Commit {
    id: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    author: Option<Author>,
}

#[derive(Deserialize)]
struct Author {
    #[serde(default)]
    email: Option<String>,
}

/// Whether `body` has the shape of a GitLab event (custom-git's fallback).
pub(crate) fn fits(body: &serde_json::Value) -> bool {
    body.get("object_kind")
        .is_some_and(serde_json::Value::is_string)
}

/// Parse a delivery (the `X-Gitlab-Event` header is informative only: `object_kind` decides):
/// the push, and the project's `path_with_namespace` (`group/project`) when it is given.
pub fn parse(body: &[u8]) -> Result<(Push, Option<String>), GitlabError> {
    // The kind first: other events (merge requests, notes) have other shapes for the same keys.
    let kind: Kind = serde_json::from_slice(body).map_err(|e| GitlabError(e.to_string()))?;
    if kind.object_kind != "push" && kind.object_kind != "tag_push" {
        return Ok((Push::not_a_push("gitlab", &kind.object_kind), None));
    }
    let b: Body = serde_json::from_slice(body).map_err(|e| GitlabError(e.to_string()))?;
    let commit = b.checkout_sha.or(b.after).unwrap_or_default();
    if commit.is_empty() || is_null_commit(&commit) {
        let why = "gitlab push without a commit (a deleted branch or tag)";
        return Ok((Push::Skip(why.into()), None));
    }
    if kind.object_kind == "push" && b.commits.is_empty() {
        return Ok((Push::Skip("gitlab push without commits".into()), None));
    }
    let Some(commit) = checked_commit(&commit) else {
        return Err(GitlabError(format!(
            "checkout_sha {commit:?} is not a commit SHA"
        )));
    };
    let repo = b
        .repository
        .ok_or_else(|| GitlabError("missing field `repository`".into()))?;
    let git_ref = b
        .git_ref
        .ok_or_else(|| GitlabError("missing field `ref`".into()))?;
    let commit_info = b
        .commits
        .into_iter()
        .find(|c| c.id.eq_ignore_ascii_case(&commit))
        .map(|c| {
            let by_pusher = c
                .author
                .and_then(|a| a.email)
                .is_some_and(|e| b.user_email.as_deref() == Some(e.as_str()));
            CommitInfo {
                url: c.url,
                message: c.message,
                date: c.timestamp,
                author: b.user_username.filter(|_| by_pusher).map(Person::named),
                committer: None,
            }
        });
    let (default_branch, full_name) = b
        .project
        .map(|p| (p.default_branch, p.path_with_namespace))
        .unwrap_or_default();
    let metadata = Metadata {
        commit,
        git_url: repo.git_ssh_url,
        git_ref: Some(git_ref),
        default_branch,
        commit_info,
    };
    Ok((Push::Build(Box::new(metadata)), full_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7";

    fn push(kind: &str, checkout: &str, commits: &str) -> Vec<u8> {
        format!(
            r#"{{"object_kind": "{kind}", "ref": "refs/heads/main",
                "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
                "after": "{checkout}", "checkout_sha": "{checkout}",
                "user_username": "jsmith", "user_email": "john@example.com",
                "project": {{"default_branch": "main", "path_with_namespace": "acme/app"}},
                "repository": {{"git_ssh_url": "git@gitlab.example.com:acme/app.git"}},
                "commits": {commits}, "total_commits_count": 1}}"#
        )
        .into_bytes()
    }

    fn commit(author_email: &str) -> String {
        format!(
            r#"[{{"id": "{SHA}", "message": "fix it", "timestamp": "2026-11-27T10:00:00+01:00",
                 "url": "https://gitlab.example.com/acme/app/-/commit/{SHA}",
                 "author": {{"name": "John Smith", "email": "{author_email}"}}}}]"#
        )
    }

    #[test]
    fn a_push_maps_like_quay() {
        let Push::Build(m) = parse(&push("push", SHA, &commit("john@example.com")))
            .unwrap()
            .0
        else {
            panic!("skipped");
        };
        assert_eq!(m.commit, SHA);
        assert_eq!(m.git_url, "git@gitlab.example.com:acme/app.git");
        assert_eq!(m.default_branch.as_deref(), Some("main"));
        let info = m.commit_info.unwrap();
        assert_eq!(info.message, "fix it");
        assert_eq!(info.author.unwrap().username, "jsmith");
        // Someone else's commit: no user name is guessed.
        let Push::Build(m) = parse(&push("push", SHA, &commit("other@example.com")))
            .unwrap()
            .0
        else {
            panic!("skipped");
        };
        assert_eq!(m.commit_info.unwrap().author, None);
    }

    #[test]
    fn tag_pushes_build_and_other_events_skip() {
        assert!(matches!(
            parse(&push("tag_push", SHA, "[]")).unwrap().0,
            Push::Build(_)
        ));
        for (body, want) in [
            (push("push", SHA, "[]"), "gitlab push without commits"),
            (
                push("merge_request", SHA, "[]"),
                "gitlab merge_request event, not a push",
            ),
            (
                push("tag_push", &"0".repeat(40), "[]"),
                "gitlab push without a commit (a deleted branch or tag)",
            ),
        ] {
            let Push::Skip(why) = parse(&body).unwrap().0 else {
                panic!("{want}: not skipped");
            };
            assert_eq!(why, want);
        }
    }

    #[test]
    fn broken_pushes_are_errors_naming_the_field() {
        let e = parse(b"{}").unwrap_err().to_string();
        assert!(e.contains("missing field `object_kind`"), "{e}");
        let e = parse(&push("push", "xyz", &commit("a@b")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("checkout_sha \"xyz\" is not a commit SHA"),
            "{e}"
        );
        let no_repo =
            br#"{"object_kind": "tag_push", "ref": "refs/tags/v1", "checkout_sha": "da15608"}"#;
        let e = parse(no_repo).unwrap_err().to_string();
        assert!(e.contains("missing field `repository`"), "{e}");
    }
}
