//! `quay_notification`: in-app notifications for the users of `config.target`
//! (`{"kind": "user"|"team"|"org", "name"}`): a user; the members of a team of the repository's
//! organisation; or the organisation's administrators (members of its admin-role teams, the
//! `owners` team among them). Robots never receive any.

use registry_core::accounts::orgs::{self, TeamRole};
use registry_core::accounts::{self, AccountError, AccountKind};
use rusqlite::Connection;
use serde_json::Value;

use super::{Ctx, MethodError};
use crate::notify::inbox;
use crate::notify::model::Notification;

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

/// Write one in-app notification of `event` per recipient.
pub async fn deliver(
    ctx: &Ctx,
    notification: &Notification,
    event: &str,
    data: &Value,
) -> Result<(), MethodError> {
    let namespace = notification
        .repository
        .split_once('/')
        .map_or(notification.repository.as_str(), |(ns, _)| ns)
        .to_owned();
    let config = notification.config.clone();
    let who = ctx
        .registry
        .read(move |conn| {
            let t = target(&config)?;
            recipients(conn, &namespace, t).map_err(MethodError::from)
        })
        .await?;
    let (kind, metadata) = (event.to_owned(), data.clone());
    ctx.builds
        .write(move |tx| inbox::add(tx, &who, &kind, &metadata).map_err(MethodError::from))
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
            assert!(target(&json!({})).is_err());
            Ok::<_, AccountError>(())
        })
        .unwrap();
    }
}
