//! `quay_notification`: in-app notifications for the users of `config.target`
//! (`{"kind": "user"|"team"|"org", "name"}`): a user; the members of a team of the repository's
//! organisation; or the organisation's administrators (members of its admin-role teams, the
//! `owners` team among them). Robots never receive any. Every recipient must be able to read
//! the repository: checked at creation (400) and again at each delivery, where recipients who
//! lost read are skipped. Superuser powers do not count here: a superuser receives a
//! repository's notifications only with a role on it, like everyone else.

use registry_core::accounts::orgs::{self, TeamRole};
use registry_core::accounts::permissions::{self, Role};
use registry_core::accounts::{self, AccountError, AccountKind};
use registry_core::names::{NameError, RepoName};
use rusqlite::Connection;
use serde_json::Value;

use super::{Ctx, MethodError};
use crate::notify::delivery_rows::{self, Delivery};
use crate::notify::inbox;

/// Why a `target` is refused.
#[derive(Debug, thiserror::Error)]
pub enum InAppTargetError {
    /// No or a malformed target.
    #[error(
        "config.target is invalid: expected {{\"kind\": \"user\", \"team\" or \"org\", \"name\": ...}}"
    )]
    Shape,
    /// No such user.
    #[error("config.target names user {name:?}, which does not exist")]
    NoUser {
        /// The name.
        name: String,
    },
    /// No such team in the repository's organisation.
    #[error("config.target names team {name:?}, which organisation {org:?} does not have")]
    NoTeam {
        /// The team.
        name: String,
        /// The repository's namespace.
        org: String,
    },
    /// An organisation other than the repository's, or a user namespace.
    #[error(
        "config.target names organisation {name:?}: only the repository's own organisation \
         ({namespace:?}) can be notified"
    )]
    WrongOrg {
        /// The name given.
        name: String,
        /// The repository's namespace.
        namespace: String,
    },
    /// A recipient cannot read the repository.
    #[error(
        "config.target {who} has no read access to repository {repository:?}: grant read on \
         the repository first"
    )]
    NoAccess {
        /// `user "name"` or `team "name" (member "user")`.
        who: String,
        /// The repository.
        repository: String,
    },
    /// The notification's repository name is invalid (a hand-edited row).
    #[error(transparent)]
    Repository(#[from] NameError),
    /// Reading accounts failed.
    #[error("reading accounts failed")]
    Accounts(#[from] AccountError),
}

/// A parsed target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// One user.
    User(&'a str),
    /// A team of the repository's organisation.
    Team(&'a str),
    /// The organisation's administrators.
    Org(&'a str),
}

/// Parse `config.target`.
pub fn target(config: &Value) -> Result<Target<'_>, InAppTargetError> {
    let t = config.get("target").ok_or(InAppTargetError::Shape)?;
    let name = t
        .get("name")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or(InAppTargetError::Shape)?;
    match t.get("kind").and_then(Value::as_str) {
        Some("user") => Ok(Target::User(name)),
        Some("team") => Ok(Target::Team(name)),
        Some("org") => Ok(Target::Org(name)),
        _ => Err(InAppTargetError::Shape),
    }
}

fn users(members: Vec<accounts::Account>) -> Vec<String> {
    members
        .into_iter()
        .filter(|a| a.kind == AccountKind::User)
        .map(|a| a.name)
        .collect()
}

/// The user names `target` reaches for a repository of `namespace`, from registry-core's
/// accounts; an unknown target is an error (at creation: 400; at delivery: a failure).
pub fn recipients(
    conn: &Connection,
    namespace: &str,
    target: Target<'_>,
) -> Result<Vec<String>, InAppTargetError> {
    match target {
        Target::User(name) => match accounts::find(conn, name)? {
            Some(a) if a.kind == AccountKind::User => Ok(vec![a.name]),
            _ => Err(InAppTargetError::NoUser {
                name: name.to_owned(),
            }),
        },
        Target::Team(name) => {
            let no_team = || InAppTargetError::NoTeam {
                name: name.to_owned(),
                org: namespace.to_owned(),
            };
            let org = match accounts::find(conn, namespace)? {
                Some(a) if a.kind == AccountKind::Org => a,
                _ => return Err(no_team()),
            };
            let team = orgs::find_team(conn, &org, name)?.ok_or_else(no_team)?;
            Ok(users(orgs::members(conn, &team)?))
        }
        Target::Org(name) => {
            let wrong = || InAppTargetError::WrongOrg {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
            };
            if name != namespace {
                return Err(wrong());
            }
            let org = match accounts::find(conn, namespace)? {
                Some(a) if a.kind == AccountKind::Org => a,
                _ => return Err(wrong()),
            };
            let mut out = Vec::new();
            for (team, _) in orgs::teams(conn, &org)? {
                if team.role == TeamRole::Admin {
                    out.extend(users(orgs::members(conn, &team)?));
                }
            }
            out.sort();
            out.dedup();
            Ok(out)
        }
    }
}

/// Split `users` into those with at least read on `repo` and those without (superuser powers
/// not counted; an account gone meanwhile has no access).
pub fn split_readers(
    conn: &Connection,
    repo: &RepoName,
    users: Vec<String>,
) -> Result<(Vec<String>, Vec<String>), InAppTargetError> {
    let (mut readers, mut others) = (Vec::new(), Vec::new());
    for name in users {
        let role = match accounts::find(conn, &name)? {
            Some(account) => permissions::repo_role(conn, Some(&account), &[], repo)?,
            None => Role::None,
        };
        if role >= Role::Read {
            readers.push(name);
        } else {
            others.push(name);
        }
    }
    Ok((readers, others))
}

/// The creation check: `target` exists and every recipient can read `repo`.
pub fn check_recipients(
    conn: &Connection,
    repo: &RepoName,
    target: Target<'_>,
) -> Result<(), InAppTargetError> {
    let users = recipients(conn, repo.namespace(), target)?;
    let (_, lacking) = split_readers(conn, repo, users)?;
    let Some(user) = lacking.first() else {
        return Ok(());
    };
    let who = match target {
        Target::User(name) => format!("user {name:?}"),
        Target::Team(name) => format!("team {name:?} (member {user:?})"),
        Target::Org(name) => format!("organisation {name:?} (administrator {user:?})"),
    };
    Err(InAppTargetError::NoAccess {
        who,
        repository: repo.to_string(),
    })
}

/// Write one in-app notification of the delivery's event per recipient who can still read the
/// repository, and record the delivery as made, in one transaction.
pub async fn deliver(ctx: &Ctx, delivery: &Delivery) -> Result<(), MethodError> {
    let n = &delivery.notification;
    let repo: RepoName = n
        .repository
        .parse()
        .map_err(|e: NameError| MethodError::InApp(e.into()))?;
    let config = n.config.clone();
    let r2 = repo.clone();
    let (who, lost) = ctx
        .registry
        .read(move |conn| {
            let t = target(&config)?;
            let users = recipients(conn, r2.namespace(), t)?;
            split_readers(conn, &r2, users).map_err(MethodError::from)
        })
        .await?;
    for user in &lost {
        tracing::info!(notification = %n.uuid, repository = %repo, user = %user,
            "in-app notification not written: the user can no longer read the repository");
    }
    let d = delivery.clone();
    ctx.builds
        .write(move |tx| {
            inbox::add(tx, &who, &d.event, &d.payload)?;
            delivery_rows::delivered(tx, &d).map_err(MethodError::from)
        })
        .await
}

#[cfg(test)]
mod tests {
    use registry_core::accounts::{orgs, robots, users};
    use serde_json::json;

    use super::*;

    #[test]
    fn users_teams_and_org_admins() {
        let dir = tempfile::tempdir().unwrap();
        let db = registry_core::db::Db::open(&dir.path().join("meta.db")).unwrap();
        db.write_blocking(|tx| {
            let alice = users::create(tx, "alice", None, None)?;
            let bob = users::create(tx, "bob", None, None)?;
            users::create(tx, "carol", None, None)?;
            let acme = orgs::create(tx, "acme", None, &alice)?;
            let devs = orgs::create_team(tx, &acme, "devs", TeamRole::Member, "")?;
            orgs::add_member(tx, &acme, &devs, &bob)?;
            let bot = robots::create(tx, &acme, "bot", "")?.0;
            orgs::add_member(tx, &acme, &devs, &bot)?;
            let r = |v: Value| recipients(tx, "acme", target(&json!({ "target": v })).unwrap());
            assert_eq!(
                r(json!({"kind": "user", "name": "carol"})).unwrap(),
                ["carol"]
            );
            assert_eq!(r(json!({"kind": "team", "name": "devs"})).unwrap(), ["bob"]);
            assert_eq!(
                r(json!({"kind": "org", "name": "acme"})).unwrap(),
                ["alice"]
            );
            for (t, want) in [
                (json!({"kind": "user", "name": "nobody"}), "does not exist"),
                (json!({"kind": "user", "name": "acme"}), "does not exist"),
                (json!({"kind": "team", "name": "ghosts"}), "does not have"),
                (json!({"kind": "org", "name": "other"}), "own organisation"),
            ] {
                let err = r(t.clone()).unwrap_err().to_string();
                assert!(err.contains(want), "{t}: {err}");
            }
            assert!(target(&json!({"target": {"kind": "robot", "name": "x"}})).is_err());
            // Read access: the org admin and team members of a private repository without a
            // team permission lack it; carol gets it by a direct permission.
            let app: RepoName = "acme/app".parse().unwrap();
            registry_core::accounts::repositories::create(
                tx,
                &app,
                registry_core::repos::Visibility::Private,
                "",
            )?;
            let check = |v: Value| {
                check_recipients(tx, &app, target(&json!({ "target": v })).unwrap())
                    .map_err(|e| e.to_string())
            };
            check(json!({"kind": "org", "name": "acme"})).unwrap();
            let err = check(json!({"kind": "user", "name": "carol"})).unwrap_err();
            assert!(err.contains("user \"carol\" has no read access"), "{err}");
            let err = check(json!({"kind": "team", "name": "devs"})).unwrap_err();
            assert!(err.contains("team \"devs\" (member \"bob\")"), "{err}");
            let carol = accounts::find(tx, "carol")?.unwrap();
            permissions::set_for_account(tx, &app, &carol, Role::Read)?;
            check(json!({"kind": "user", "name": "carol"})).unwrap();
            let (readers, others) =
                split_readers(tx, &app, vec!["carol".into(), "bob".into(), "gone".into()]).unwrap();
            assert_eq!(
                (readers, others),
                (
                    vec!["carol".to_owned()],
                    vec!["bob".to_owned(), "gone".to_owned()]
                )
            );
            assert!(target(&json!({})).is_err());
            Ok::<_, AccountError>(())
        })
        .unwrap();
    }
}
