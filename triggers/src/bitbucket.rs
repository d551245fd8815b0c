//! Bitbucket Cloud's `repo:push` webhook (Quay's Bitbucket handler, without its API lookups: the
//! default branch comes from `repository.mainbranch.name` when the payload carries it).
//!
//! The last entry of `push.changes` decides. A push whose last change has no `new` state (a
//! deleted branch or tag), a push without changes and other events (`X-Event-Key` other than
//! `repo:push`) are skipped, not errors. The clone URL is `git@bitbucket.org:<full_name>.git`,
//! as Quay builds it.

use serde::Deserialize;

use crate::metadata::{CommitInfo, Metadata, Person, Push, checked_commit};
use crate::refs::RefKind;

/// A delivery that claims to be a push but is not a usable one; the message names the field.
#[derive(Debug, thiserror::Error)]
#[error("bitbucket push payload is not valid: {0}")]
pub struct BitbucketError(String);

// Every field is optional here so that a missing one is reported with its full path
// (`push.changes[-1].new.target.hash`) rather than serde's bare field name.
#[derive(Deserialize)]
struct Body {
    push: Option<PushBody>,
    actor: Option<Account>,
    repository: Option<Repository>,
}

#[derive(Deserialize)]
struct PushBody {
    changes: Option<Vec<Change>>,
}

#[derive(Deserialize)]
struct Change {
    new: Option<RefState>,
}

#[derive(Deserialize)]
struct RefState {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    target: Option<Target>,
}

#[derive(Deserialize)]
struct Target {
    hash: Option<String>,
    message: Option<String>,
    date: Option<String>,
    author: Option<Author>,
    links: Option<Links>,
}

#[derive(Deserialize)]
struct Author {
    user: Option<Account>,
}

#[derive(Deserialize)]
struct Account {
    display_name: Option<String>,
    links: Option<Links>,
}

#[derive(Deserialize)]
struct Links {
    html: Option<Href>,
    avatar: Option<Href>,
}

#[derive(Deserialize)]
struct Href {
    href: Option<String>,
}

#[derive(Deserialize)]
struct Repository {
    full_name: Option<String>,
    mainbranch: Option<MainBranch>,
}

#[derive(Deserialize)]
struct MainBranch {
    name: Option<String>,
}

fn missing(field: &str) -> BitbucketError {
    BitbucketError(format!("{field} is missing"))
}

fn href(links: Option<Links>, pick: fn(Links) -> Option<Href>) -> Option<String> {
    links.and_then(pick).and_then(|h| h.href)
}

/// An account as a commit person: Bitbucket's display name is what Quay uses as the user name.
/// An author known only by its raw `Name <email>` line has no account, so no person.
fn person(account: Option<Account>) -> Option<Person> {
    let account = account?;
    let username = account.display_name.filter(|n| !n.is_empty())?;
    Some(Person {
        username,
        url: None,
        avatar_url: href(account.links, |l| l.avatar),
    })
}

/// Whether `body` has the shape of a Bitbucket push (custom-git's fallback).
pub(crate) fn fits(body: &serde_json::Value) -> bool {
    body.get("push")
        .and_then(|p| p.get("changes"))
        .is_some_and(serde_json::Value::is_array)
}

/// Parse a delivery whose `X-Event-Key` header is `event` (`None` when absent): the push, and
/// the repository's `full_name` (`workspace/repo`) for a push to build.
pub fn parse(event: Option<&str>, body: &[u8]) -> Result<(Push, Option<String>), BitbucketError> {
    match event {
        Some("repo:push") | None => {}
        Some(other) => return Ok((Push::not_a_push("bitbucket", other), None)),
    }
    let b: Body = serde_json::from_slice(body).map_err(|e| BitbucketError(e.to_string()))?;
    let changes = b
        .push
        .ok_or_else(|| missing("push"))?
        .changes
        .ok_or_else(|| missing("push.changes"))?;
    let Some(last) = changes.into_iter().next_back() else {
        return Ok((Push::Skip("bitbucket push without changes".into()), None));
    };
    let Some(new) = last.new else {
        let why = "bitbucket push deleting a branch or tag (push.changes[-1].new is null)";
        return Ok((Push::Skip(why.into()), None));
    };
    let kind = new
        .kind
        .ok_or_else(|| missing("push.changes[-1].new.type"))?;
    // As Quay: `branch` is a branch, any other type (`tag`, `annotated_tag`, ...) a tag.
    let kind = if kind == "branch" {
        RefKind::Branch
    } else {
        RefKind::Tag
    };
    let name = new
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| missing("push.changes[-1].new.name"))?;
    let target = new
        .target
        .ok_or_else(|| missing("push.changes[-1].new.target"))?;
    let hash = target
        .hash
        .ok_or_else(|| missing("push.changes[-1].new.target.hash"))?;
    let Some(commit) = checked_commit(&hash) else {
        return Err(BitbucketError(format!(
            "push.changes[-1].new.target.hash {hash:?} is not a commit SHA"
        )));
    };
    let repo = b.repository.ok_or_else(|| missing("repository"))?;
    let full_name = repo
        .full_name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| missing("repository.full_name"))?;
    let metadata = Metadata {
        commit,
        git_url: format!("git@bitbucket.org:{full_name}.git"),
        git_ref: Some(format!("refs/{}/{name}", kind.dir())),
        default_branch: repo.mainbranch.and_then(|m| m.name),
        commit_info: Some(CommitInfo {
            url: href(target.links, |l| l.html),
            message: target.message.unwrap_or_default(),
            date: target.date,
            author: person(target.author.and_then(|a| a.user)),
            committer: person(b.actor),
        }),
    };
    Ok((Push::Build(Box::new(metadata)), Some(full_name)))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const SHA: &str = "7e3b0c9a54d1f2e8b6a4c0d9e1f2a3b4c5d6e7f8";

    fn push(new: &Value) -> Vec<u8> {
        json!({
            "actor": {"display_name": "Rin Okabe", "links": {"avatar": {"href": "https://a.example/rin.png"}}},
            "repository": {"full_name": "tidepool/harbor", "name": "harbor",
                           "mainbranch": {"type": "branch", "name": "trunk"}},
            "push": {"changes": [
                {"new": null, "old": {"type": "branch", "name": "gone"}},
                {"new": new}
            ]}
        })
        .to_string()
        .into_bytes()
    }

    fn branch(author: &Value) -> Value {
        json!({"type": "branch", "name": "trunk", "target": {
            "type": "commit", "hash": SHA, "message": "tune the pump\n", "date": "2026-11-20T08:30:00+00:00",
            "author": author,
            "links": {"html": {"href": "https://bitbucket.org/tidepool/harbor/commits/7e3b0c9"}}
        }})
    }

    #[test]
    fn the_last_change_maps_like_quay() {
        let author = json!({"raw": "Mio Tanaka <mio@example.net>", "type": "author",
                            "user": {"display_name": "Mio Tanaka",
                                     "links": {"avatar": {"href": "https://a.example/mio.png"}}}});
        let (Push::Build(m), name) = parse(Some("repo:push"), &push(&branch(&author))).unwrap()
        else {
            panic!("skipped");
        };
        assert_eq!(name.as_deref(), Some("tidepool/harbor"));
        assert_eq!(m.commit, SHA);
        assert_eq!(m.git_url, "git@bitbucket.org:tidepool/harbor.git");
        assert_eq!(m.git_ref.as_deref(), Some("refs/heads/trunk"));
        assert_eq!(m.default_branch.as_deref(), Some("trunk"));
        let info = m.commit_info.unwrap();
        assert_eq!(info.message, "tune the pump\n");
        assert_eq!(info.date.as_deref(), Some("2026-11-20T08:30:00+00:00"));
        let a = info.author.unwrap();
        assert_eq!(a.username, "Mio Tanaka");
        assert_eq!(a.avatar_url.as_deref(), Some("https://a.example/mio.png"));
        assert_eq!(info.committer.unwrap().username, "Rin Okabe");
    }

    #[test]
    fn a_raw_only_author_gets_no_invented_user_name() {
        let author = json!({"raw": "Someone <someone@example.net>", "type": "author"});
        let Push::Build(m) = parse(None, &push(&branch(&author))).unwrap().0 else {
            panic!("skipped");
        };
        assert_eq!(m.commit_info.unwrap().author, None);
    }

    #[test]
    fn tags_deletions_empty_pushes_and_other_events() {
        let mut tag = branch(&json!({}));
        tag["type"] = json!("tag");
        tag["name"] = json!("v2.0");
        let Push::Build(m) = parse(None, &push(&tag)).unwrap().0 else {
            panic!("skipped");
        };
        assert_eq!(m.git_ref.as_deref(), Some("refs/tags/v2.0"));
        // Any type but `branch` is a tag, as in Quay.
        for kind in ["annotated_tag", "named_branch", "bookmark"] {
            tag["type"] = json!(kind);
            let Push::Build(m) = parse(None, &push(&tag)).unwrap().0 else {
                panic!("{kind}: skipped");
            };
            assert_eq!(m.git_ref.as_deref(), Some("refs/tags/v2.0"), "{kind}");
        }
        for (event, body, want) in [
            (
                None,
                push(&Value::Null),
                "bitbucket push deleting a branch or tag (push.changes[-1].new is null)",
            ),
            (
                None,
                br#"{"push": {"changes": []}}"#.to_vec(),
                "bitbucket push without changes",
            ),
            (
                Some("pullrequest:created"),
                b"anything".to_vec(),
                "bitbucket pullrequest:created event, not a push",
            ),
        ] {
            let Push::Skip(why) = parse(event, &body).unwrap().0 else {
                panic!("{want}: not skipped");
            };
            assert_eq!(why, want);
        }
    }

    #[test]
    fn broken_pushes_are_errors_naming_the_field() {
        let mut no_hash = branch(&json!({}));
        no_hash["target"].as_object_mut().unwrap().remove("hash");
        let mut bad_hash = branch(&json!({}));
        bad_hash["target"]["hash"] = json!("zz");
        let mut no_type = branch(&json!({}));
        no_type.as_object_mut().unwrap().remove("type");
        let mut no_repo: Value = serde_json::from_slice(&push(&branch(&json!({})))).unwrap();
        no_repo["repository"]
            .as_object_mut()
            .unwrap()
            .remove("full_name");
        let cases: [(Vec<u8>, &str); 6] = [
            (b"[".to_vec(), "EOF while parsing"),
            (b"{}".to_vec(), "push is missing"),
            (
                push(&no_hash),
                "push.changes[-1].new.target.hash is missing",
            ),
            (
                push(&bad_hash),
                "push.changes[-1].new.target.hash \"zz\" is not a commit SHA",
            ),
            (push(&no_type), "push.changes[-1].new.type is missing"),
            (
                no_repo.to_string().into_bytes(),
                "repository.full_name is missing",
            ),
        ];
        for (body, want) in cases {
            let e = parse(Some("repo:push"), &body).unwrap_err().to_string();
            assert!(e.starts_with("bitbucket push payload is not valid"), "{e}");
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
    }

    #[test]
    fn the_push_shape_is_recognised() {
        assert!(fits(&json!({"push": {"changes": []}})));
        assert!(!fits(&json!({"push": {}})));
        assert!(!fits(&json!({"commit": "abc"})));
    }
}
