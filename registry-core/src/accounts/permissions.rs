//! Who may do what on a repository.
//!
//! The decision is a pure function over a few facts ([`RoleFacts`] -> [`resolve`]); the rest of the
//! module gathers those facts from the database and edits the permission rows.
//!
//! - a superuser is admin everywhere;
//! - the user whose namespace it is is admin of its repositories;
//! - a member (user or robot) of an organisation team with the admin role is admin of every
//!   repository of the organisation;
//! - otherwise the best of the direct permission rows for the account and for its teams;
//! - a public repository gives at least read to everyone, anonymous callers included.
//!
//! Robots get only what permissions and teams give them, never their owner's rights.

use rusqlite::{Connection, params};

use super::orgs::{Team, TeamRole};
use super::{Account, AccountError, AccountKind};
use crate::names::RepoName;
use crate::repos::{self, Repo, Visibility};

/// An account's role on a repository, ordered from none to admin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Nothing.
    #[default]
    None,
    /// Pull and view.
    Read,
    /// Read, push, delete tags.
    Write,
    /// Write, plus settings and permissions.
    Admin,
}

impl Role {
    /// The stored and wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = AccountError;

    /// Parse a grantable role (`none` is not one: delete the permission instead).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            _ => Err(AccountError::InvalidChoice {
                field: "role",
                value: s.to_owned(),
                expected: "read, write, admin",
            }),
        }
    }
}

fn stored_role(s: &str) -> Role {
    s.parse().unwrap_or(Role::None)
}

/// What decides an account's role on one repository.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoleFacts {
    /// The caller is a superuser.
    pub superuser: bool,
    /// The caller is the user whose namespace holds the repository.
    pub owns_namespace: bool,
    /// The caller is in an admin team of the organisation holding the repository.
    pub org_admin: bool,
    /// The best direct or team permission row.
    pub granted: Role,
    /// The repository exists and is public.
    pub public: bool,
}

/// The role the facts give.
pub fn resolve(f: &RoleFacts) -> Role {
    if f.superuser || f.owns_namespace || f.org_admin {
        return Role::Admin;
    }
    let floor = if f.public { Role::Read } else { Role::None };
    floor.max(f.granted)
}

/// Whether a caller may create repositories in a namespace: its own user namespace, any namespace
/// as superuser, or an organisation where one of its teams has the creator or admin role.
pub fn may_create(superuser: bool, owns_namespace: bool, best_team_role: Option<TeamRole>) -> bool {
    superuser || owns_namespace || best_team_role.is_some_and(|r| r >= TeamRole::Creator)
}

fn owns(who: &Account, namespace: &Account) -> bool {
    who.kind == AccountKind::User && who.id == namespace.id
}

fn best_team_role(
    conn: &Connection,
    who: &Account,
    org: &Account,
) -> Result<Option<TeamRole>, AccountError> {
    if org.kind != AccountKind::Org {
        return Ok(None);
    }
    Ok(super::orgs::teams_of(conn, who.id, org.id)?
        .iter()
        .map(|t| t.role)
        .max())
}

/// Gather the facts for `who` (`None` = anonymous) on `repo`, which need not exist yet.
pub fn facts(
    conn: &Connection,
    who: Option<&Account>,
    super_users: &[String],
    repo: &RepoName,
) -> Result<RoleFacts, AccountError> {
    let row = repos::find(conn, repo)?;
    let mut f = RoleFacts {
        public: row
            .as_ref()
            .is_some_and(|r| r.visibility == Visibility::Public),
        ..RoleFacts::default()
    };
    let Some(who) = who else { return Ok(f) };
    f.superuser = who.is_superuser(super_users);
    if let Some(ns) = super::find(conn, repo.namespace())? {
        f.owns_namespace = owns(who, &ns);
        f.org_admin = best_team_role(conn, who, &ns)? == Some(TeamRole::Admin);
    }
    if let Some(row) = row {
        let mut stmt = conn.prepare_cached(
            "SELECT role FROM repo_permission WHERE repository_id = ?1 AND (account_id = ?2
               OR team_id IN (SELECT team_id FROM team_member WHERE account_id = ?2))",
        )?;
        let roles = stmt.query_map(params![row.id, who.id], |r| r.get::<_, String>(0))?;
        for role in roles {
            f.granted = f.granted.max(stored_role(&role?));
        }
    }
    Ok(f)
}

/// The role of `who` (`None` = anonymous) on `repo`.
pub fn repo_role(
    conn: &Connection,
    who: Option<&Account>,
    super_users: &[String],
    repo: &RepoName,
) -> Result<Role, AccountError> {
    Ok(resolve(&facts(conn, who, super_users, repo)?))
}

/// Whether `who` may create repositories in `namespace` (which must exist).
pub fn can_create(
    conn: &Connection,
    who: Option<&Account>,
    super_users: &[String],
    namespace: &str,
) -> Result<bool, AccountError> {
    let (Some(who), Some(ns)) = (who, super::find(conn, namespace)?) else {
        return Ok(false);
    };
    if ns.kind == AccountKind::Robot {
        return Ok(false);
    }
    Ok(may_create(
        who.is_superuser(super_users),
        owns(who, &ns),
        best_team_role(conn, who, &ns)?,
    ))
}

/// Whether `who` administers the namespace: itself (users), an admin team member (organisations),
/// or a superuser. Namespace administrators manage robots, teams and every repository there.
pub fn administers(
    conn: &Connection,
    who: &Account,
    super_users: &[String],
    namespace: &Account,
) -> Result<bool, AccountError> {
    Ok(who.is_superuser(super_users)
        || owns(who, namespace)
        || best_team_role(conn, who, namespace)? == Some(TeamRole::Admin))
}

fn existing_repo(conn: &Connection, repo: &RepoName) -> Result<Repo, AccountError> {
    repos::find(conn, repo)?.ok_or_else(|| AccountError::NotFound {
        kind: "repository",
        name: repo.to_string(),
    })
}

/// Give a user or a robot of the repository's namespace `role` on `repo` (replacing any row).
pub fn set_for_account(
    conn: &Connection,
    repo: &RepoName,
    account: &Account,
    role: Role,
) -> Result<(), AccountError> {
    let row = existing_repo(conn, repo)?;
    match account.kind {
        AccountKind::User => {}
        AccountKind::Robot if account.robot_owner_id == Some(row.namespace_id) => {}
        AccountKind::Robot => {
            return Err(AccountError::ForeignRobot {
                robot: account.name.clone(),
                namespace: repo.namespace().to_owned(),
            });
        }
        AccountKind::Org => {
            return Err(AccountError::WrongKind {
                name: account.name.clone(),
                expected: "user or robot",
                actual: "organisation",
            });
        }
    }
    conn.execute(
        "DELETE FROM repo_permission WHERE repository_id = ?1 AND account_id = ?2",
        params![row.id, account.id],
    )?;
    conn.execute(
        "INSERT INTO repo_permission (repository_id, account_id, role) VALUES (?1, ?2, ?3)",
        params![row.id, account.id, role.as_str()],
    )?;
    Ok(())
}

/// Give a team of the repository's organisation `role` on `repo` (replacing any row).
pub fn set_for_team(
    conn: &Connection,
    repo: &RepoName,
    team: &Team,
    role: Role,
) -> Result<(), AccountError> {
    let row = existing_repo(conn, repo)?;
    if team.org_id != row.namespace_id {
        return Err(AccountError::ForeignTeam {
            team: team.name.clone(),
            repository: repo.to_string(),
        });
    }
    conn.execute(
        "DELETE FROM repo_permission WHERE repository_id = ?1 AND team_id = ?2",
        params![row.id, team.id],
    )?;
    conn.execute(
        "INSERT INTO repo_permission (repository_id, team_id, role) VALUES (?1, ?2, ?3)",
        params![row.id, team.id, role.as_str()],
    )?;
    Ok(())
}

/// Remove the direct permission of an account; `false` when there was none.
pub fn remove_for_account(
    conn: &Connection,
    repo: &RepoName,
    account: &Account,
) -> Result<bool, AccountError> {
    let row = existing_repo(conn, repo)?;
    let n = conn.execute(
        "DELETE FROM repo_permission WHERE repository_id = ?1 AND account_id = ?2",
        params![row.id, account.id],
    )?;
    Ok(n > 0)
}

/// Remove the permission of a team; `false` when there was none.
pub fn remove_for_team(
    conn: &Connection,
    repo: &RepoName,
    team: &Team,
) -> Result<bool, AccountError> {
    let row = existing_repo(conn, repo)?;
    let n = conn.execute(
        "DELETE FROM repo_permission WHERE repository_id = ?1 AND team_id = ?2",
        params![row.id, team.id],
    )?;
    Ok(n > 0)
}

/// The direct account permissions on `repo`, by account name.
pub fn list_accounts(
    conn: &Connection,
    repo: &RepoName,
) -> Result<Vec<(Account, Role)>, AccountError> {
    let row = existing_repo(conn, repo)?;
    let mut stmt = conn.prepare(
        "SELECT account_id, role FROM repo_permission WHERE repository_id = ?1 AND account_id IS NOT NULL",
    )?;
    let pairs = stmt
        .query_map(params![row.id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(pairs.len());
    for (id, role) in pairs {
        if let Some(a) = super::find_by_id(conn, id)? {
            out.push((a, stored_role(&role)));
        }
    }
    out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok(out)
}

/// The team permissions on `repo`, by team name.
pub fn list_teams(conn: &Connection, repo: &RepoName) -> Result<Vec<(Team, Role)>, AccountError> {
    let row = existing_repo(conn, repo)?;
    let mut stmt = conn.prepare(
        "SELECT t.id, t.org_id, t.name, t.role, t.description, p.role FROM repo_permission p
         JOIN team t ON t.id = p.team_id WHERE p.repository_id = ?1 ORDER BY t.name",
    )?;
    let rows = stmt.query_map(params![row.id], |r| {
        let team_role: String = r.get(3)?;
        let role: String = r.get(5)?;
        Ok((
            Team {
                id: r.get(0)?,
                org_id: r.get(1)?,
                name: r.get(2)?,
                role: team_role.parse().unwrap_or(TeamRole::Member),
                description: r.get(4)?,
            },
            stored_role(&role),
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// After `creator` created `repo`: make it admin of the repository when it is not already (as
/// Quay does), so that an organisation `creator`-role member can keep pushing to what it created.
pub fn grant_creator(
    conn: &Connection,
    repo: &RepoName,
    creator: &Account,
    super_users: &[String],
) -> Result<(), AccountError> {
    if creator.kind == AccountKind::Org
        || repo_role(conn, Some(creator), super_users, repo)? == Role::Admin
    {
        return Ok(());
    }
    set_for_account(conn, repo, creator, Role::Admin)
}

/// [`grant_creator`] for the distribution API, which knows the creator only as the token's subject
/// (`auth::Grant::subject`); nothing happens for anonymous or unknown subjects.
pub fn grant_creator_named(
    conn: &Connection,
    repo: &RepoName,
    subject: Option<&str>,
    super_users: &[String],
) -> Result<(), AccountError> {
    match subject.map(|s| super::find(conn, s)).transpose()?.flatten() {
        Some(creator) => grant_creator(conn, repo, &creator, super_users),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{orgs, robots, test_support, users};
    use super::*;

    #[test]
    fn resolve_matrix() {
        let none = RoleFacts::default();
        let public = RoleFacts {
            public: true,
            ..none
        };
        let granted = |r| RoleFacts { granted: r, ..none };
        let cases = [
            (none, Role::None),
            (public, Role::Read),
            (granted(Role::Read), Role::Read),
            (granted(Role::Write), Role::Write),
            (
                RoleFacts {
                    granted: Role::Write,
                    ..public
                },
                Role::Write,
            ),
            (
                RoleFacts {
                    superuser: true,
                    ..none
                },
                Role::Admin,
            ),
            (
                RoleFacts {
                    owns_namespace: true,
                    ..none
                },
                Role::Admin,
            ),
            (
                RoleFacts {
                    org_admin: true,
                    ..none
                },
                Role::Admin,
            ),
            (
                RoleFacts {
                    org_admin: true,
                    granted: Role::Read,
                    ..public
                },
                Role::Admin,
            ),
        ];
        for (facts, want) in cases {
            assert_eq!(resolve(&facts), want, "{facts:?}");
        }
    }

    #[test]
    fn may_create_matrix() {
        assert!(may_create(true, false, None));
        assert!(may_create(false, true, None));
        assert!(may_create(false, false, Some(TeamRole::Creator)));
        assert!(may_create(false, false, Some(TeamRole::Admin)));
        assert!(!may_create(false, false, Some(TeamRole::Member)));
        assert!(!may_create(false, false, None));
    }

    /// alice owns user namespace `alice` and org `acme`; bob is in acme's `devs` (member) team,
    /// carol in its `builders` (creator) team; `acme+ci` is a robot of acme; root is superuser.
    struct World {
        c: Connection,
        alice: Account,
        bob: Account,
        carol: Account,
        dave: Account,
        root: Account,
        ci: Account,
        alice_bot: Account,
        devs: Team,
    }

    fn world() -> World {
        let c = test_support::db();
        let u = |n: &str| users::create(&c, n, None, None).unwrap();
        let (alice, bob, carol, dave, root) =
            (u("alice"), u("bob"), u("carol"), u("dave"), u("root"));
        let acme = orgs::create(&c, "acme", None, &alice).unwrap();
        let devs = orgs::create_team(&c, &acme, "devs", TeamRole::Member, "").unwrap();
        let builders = orgs::create_team(&c, &acme, "builders", TeamRole::Creator, "").unwrap();
        orgs::add_member(&c, &acme, &devs, &bob).unwrap();
        orgs::add_member(&c, &acme, &builders, &carol).unwrap();
        let (ci, _) = robots::create(&c, &acme, "ci", "").unwrap();
        let (alice_bot, _) = robots::create(&c, &alice, "bot", "").unwrap();
        for (name, vis) in [
            ("acme/app", Visibility::Private),
            ("acme/pub", Visibility::Public),
            ("alice/app", Visibility::Private),
        ] {
            repos::create(&c, &name.parse().unwrap(), vis).unwrap();
        }
        World {
            c,
            alice,
            bob,
            carol,
            dave,
            root,
            ci,
            alice_bot,
            devs,
        }
    }

    fn role(w: &World, who: Option<&Account>, repo: &str) -> Role {
        repo_role(&w.c, who, &["root".to_owned()], &repo.parse().unwrap()).unwrap()
    }

    #[test]
    fn repo_role_matrix() {
        let w = world();
        let app: RepoName = "acme/app".parse().unwrap();
        set_for_team(&w.c, &app, &w.devs, Role::Write).unwrap();
        set_for_account(&w.c, &app, &w.ci, Role::Read).unwrap();
        let cases: [(Option<&Account>, &str, Role); 16] = [
            (Some(&w.root), "acme/app", Role::Admin),
            (Some(&w.root), "dave/none", Role::Admin),
            (Some(&w.alice), "acme/app", Role::Admin),
            (Some(&w.alice), "alice/app", Role::Admin),
            (Some(&w.alice), "alice/notyet", Role::Admin),
            (Some(&w.bob), "acme/app", Role::Write),
            (Some(&w.bob), "acme/pub", Role::Read),
            (Some(&w.bob), "alice/app", Role::None),
            (Some(&w.carol), "acme/app", Role::None),
            (Some(&w.dave), "acme/app", Role::None),
            (Some(&w.ci), "acme/app", Role::Read),
            (Some(&w.ci), "acme/pub", Role::Read),
            (Some(&w.alice_bot), "alice/app", Role::None),
            (None, "acme/pub", Role::Read),
            (None, "acme/app", Role::None),
            (None, "acme/missing", Role::None),
        ];
        for (who, repo, want) in cases {
            let name = who.map_or("anonymous", |a| a.name.as_str());
            assert_eq!(role(&w, who, repo), want, "{name} on {repo}");
        }
        // The best of direct and team rows wins.
        set_for_account(&w.c, &app, &w.bob, Role::Admin).unwrap();
        assert_eq!(role(&w, Some(&w.bob), "acme/app"), Role::Admin);
        assert!(remove_for_account(&w.c, &app, &w.bob).unwrap());
        assert!(remove_for_team(&w.c, &app, &w.devs).unwrap());
        assert_eq!(role(&w, Some(&w.bob), "acme/app"), Role::None);
    }

    #[test]
    fn can_create_matrix() {
        let w = world();
        let su = ["root".to_owned()];
        let can = |who: &Account, ns: &str| can_create(&w.c, Some(who), &su, ns).unwrap();
        assert!(can(&w.alice, "alice"));
        assert!(can(&w.alice, "acme"));
        assert!(can(&w.carol, "acme"));
        assert!(!can(&w.bob, "acme"));
        assert!(!can(&w.bob, "alice"));
        assert!(can(&w.root, "alice"));
        assert!(!can(&w.root, "nonexistent"));
        assert!(!can(&w.alice_bot, "alice"));
        assert!(!can(&w.ci, "acme"));
        assert!(!can_create(&w.c, None, &su, "acme").unwrap());
        let acme = super::super::find(&w.c, "acme").unwrap().unwrap();
        assert!(administers(&w.c, &w.alice, &su, &acme).unwrap());
        assert!(!administers(&w.c, &w.carol, &su, &acme).unwrap());
        assert!(administers(&w.c, &w.root, &su, &acme).unwrap());
    }

    #[test]
    fn permission_rows_are_checked_and_listed() {
        let w = world();
        let app: RepoName = "acme/app".parse().unwrap();
        let mine: RepoName = "alice/app".parse().unwrap();
        let err = set_for_account(&w.c, &mine, &w.ci, Role::Read).unwrap_err();
        assert!(matches!(err, AccountError::ForeignRobot { .. }), "{err}");
        let err = set_for_team(&w.c, &mine, &w.devs, Role::Read).unwrap_err();
        assert!(matches!(err, AccountError::ForeignTeam { .. }), "{err}");
        let acme = super::super::find(&w.c, "acme").unwrap().unwrap();
        assert!(set_for_account(&w.c, &app, &acme, Role::Read).is_err());
        let err = set_for_account(&w.c, &"acme/nope".parse().unwrap(), &w.bob, Role::Read);
        assert_eq!(
            err.unwrap_err().to_string(),
            "repository \"acme/nope\" does not exist"
        );
        set_for_account(&w.c, &app, &w.dave, Role::Read).unwrap();
        set_for_account(&w.c, &app, &w.dave, Role::Write).unwrap();
        set_for_team(&w.c, &app, &w.devs, Role::Read).unwrap();
        let accounts = list_accounts(&w.c, &app).unwrap();
        assert_eq!(accounts.len(), 1);
        assert_eq!(
            (accounts[0].0.name.as_str(), accounts[0].1),
            ("dave", Role::Write)
        );
        let teams = list_teams(&w.c, &app).unwrap();
        assert_eq!((teams[0].0.name.as_str(), teams[0].1), ("devs", Role::Read));
        assert!("none".parse::<Role>().is_err());
    }

    #[test]
    fn creators_become_admin_of_what_they_create() {
        let w = world();
        let su = ["root".to_owned()];
        let new: RepoName = "acme/new".parse().unwrap();
        repos::create(&w.c, &new, Visibility::Private).unwrap();
        grant_creator(&w.c, &new, &w.carol, &su).unwrap();
        assert_eq!(role(&w, Some(&w.carol), "acme/new"), Role::Admin);
        // Already admin through the namespace: no row added.
        grant_creator(&w.c, &new, &w.alice, &su).unwrap();
        grant_creator_named(&w.c, &new, Some("alice"), &su).unwrap();
        grant_creator_named(&w.c, &new, Some("ghost"), &su).unwrap();
        grant_creator_named(&w.c, &new, None, &su).unwrap();
        assert_eq!(list_accounts(&w.c, &new).unwrap().len(), 1);
    }
}
