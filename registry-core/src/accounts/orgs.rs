//! Organisations and their teams.
//!
//! As in Quay, the user who creates an organisation becomes a member of its `owners` team, which
//! has the admin role. Team roles: `member` (the team's repository permissions only), `creator`
//! (also creates repositories in the organisation), `admin` (full control of the organisation).

use rusqlite::{Connection, OptionalExtension as _, Row, params};

use super::{
    Account, AccountError, AccountKind, NewAccount, insert, validate_email, validate_name,
};

/// The team created with every organisation.
pub const OWNERS_TEAM: &str = "owners";

/// A team's role in its organisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TeamRole {
    /// Inherits the team's repository permissions.
    Member,
    /// Member, and may create repositories in the organisation.
    Creator,
    /// Full control of the organisation.
    Admin,
}

impl TeamRole {
    /// The stored and wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            TeamRole::Member => "member",
            TeamRole::Creator => "creator",
            TeamRole::Admin => "admin",
        }
    }
}

impl std::str::FromStr for TeamRole {
    type Err = AccountError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "member" => Ok(TeamRole::Member),
            "creator" => Ok(TeamRole::Creator),
            "admin" => Ok(TeamRole::Admin),
            _ => Err(AccountError::InvalidChoice {
                field: "team role",
                value: s.to_owned(),
                expected: "member, creator, admin",
            }),
        }
    }
}

/// A team row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Team {
    /// Row id.
    pub id: i64,
    /// The organisation's account id.
    pub org_id: i64,
    /// Name, unique in the organisation.
    pub name: String,
    /// Role in the organisation.
    pub role: TeamRole,
    /// Free text.
    pub description: String,
}

const TEAM_COLUMNS: &str = "id, org_id, name, role, description";

fn team_row(r: &Row<'_>) -> rusqlite::Result<Team> {
    let role: String = r.get(3)?;
    Ok(Team {
        id: r.get(0)?,
        org_id: r.get(1)?,
        name: r.get(2)?,
        // The CHECK constraint allows only the three roles.
        role: role.parse().unwrap_or(TeamRole::Member),
        description: r.get(4)?,
    })
}

/// Create an organisation owned by the user `owner` (made a member of the `owners` admin team).
pub fn create(
    conn: &Connection,
    name: &str,
    email: Option<&str>,
    owner: &Account,
) -> Result<Account, AccountError> {
    validate_name("organisation name", name)?;
    validate_email(email)?;
    if owner.kind != AccountKind::User {
        return Err(AccountError::WrongKind {
            name: owner.name.clone(),
            expected: "user",
            actual: owner.kind.noun(),
        });
    }
    let org = insert(
        conn,
        name,
        AccountKind::Org,
        &NewAccount {
            email,
            ..NewAccount::default()
        },
    )?;
    let owners = create_team(conn, &org, OWNERS_TEAM, TeamRole::Admin, "")?;
    add_member(conn, &org, &owners, owner)?;
    Ok(org)
}

/// The team `name` of `org`, if any.
pub fn find_team(
    conn: &Connection,
    org: &Account,
    name: &str,
) -> Result<Option<Team>, AccountError> {
    Ok(conn
        .query_row(
            &format!("SELECT {TEAM_COLUMNS} FROM team WHERE org_id = ?1 AND name = ?2"),
            params![org.id, name],
            team_row,
        )
        .optional()?)
}

/// The organisation `org` and its team `team`, or a `NotFound` naming `org/team`.
pub fn get_team(conn: &Connection, org: &str, team: &str) -> Result<(Account, Team), AccountError> {
    let org = super::get_kind(conn, org, AccountKind::Org)?;
    let t = find_team(conn, &org, team)?.ok_or_else(|| AccountError::NotFound {
        kind: "team",
        name: format!("{}/{team}", org.name),
    })?;
    Ok((org, t))
}

/// Create a team; fails if it exists.
pub fn create_team(
    conn: &Connection,
    org: &Account,
    name: &str,
    role: TeamRole,
    description: &str,
) -> Result<Team, AccountError> {
    validate_name("team name", name)?;
    if find_team(conn, org, name)?.is_some() {
        return Err(AccountError::AlreadyExists {
            kind: "team",
            name: format!("{}/{name}", org.name),
        });
    }
    conn.execute(
        "INSERT INTO team (org_id, name, role, description) VALUES (?1, ?2, ?3, ?4)",
        params![org.id, name, role.as_str(), description],
    )?;
    find_team(conn, org, name)?.ok_or_else(|| AccountError::NotFound {
        kind: "team",
        name: format!("{}/{name}", org.name),
    })
}

/// Create the team or update its role and description (`None` keeps the description).
pub fn upsert_team(
    conn: &Connection,
    org: &Account,
    name: &str,
    role: TeamRole,
    description: Option<&str>,
) -> Result<Team, AccountError> {
    let Some(existing) = find_team(conn, org, name)? else {
        return create_team(conn, org, name, role, description.unwrap_or(""));
    };
    if existing.name == OWNERS_TEAM && role != TeamRole::Admin {
        return Err(AccountError::OwnersRole {
            org: org.name.clone(),
        });
    }
    conn.execute(
        "UPDATE team SET role = ?1, description = COALESCE(?2, description) WHERE id = ?3",
        params![role.as_str(), description, existing.id],
    )?;
    find_team(conn, org, name)?.ok_or_else(|| AccountError::NotFound {
        kind: "team",
        name: format!("{}/{name}", org.name),
    })
}

/// Add a user, or a robot of the organisation, to a team (no-op when already a member).
pub fn add_member(
    conn: &Connection,
    org: &Account,
    team: &Team,
    member: &Account,
) -> Result<(), AccountError> {
    match member.kind {
        AccountKind::User => {}
        AccountKind::Robot if member.robot_owner_id == Some(org.id) => {}
        AccountKind::Robot => {
            return Err(AccountError::ForeignRobot {
                robot: member.name.clone(),
                namespace: org.name.clone(),
            });
        }
        AccountKind::Org => {
            return Err(AccountError::WrongKind {
                name: member.name.clone(),
                expected: "user or robot",
                actual: "organisation",
            });
        }
    }
    conn.execute(
        "INSERT OR IGNORE INTO team_member (team_id, account_id) VALUES (?1, ?2)",
        params![team.id, member.id],
    )?;
    Ok(())
}

/// Remove a member from a team; `false` when it was not a member. The `owners` team keeps at
/// least one member, so that the organisation always has an administrator.
pub fn remove_member(
    conn: &Connection,
    org: &Account,
    team: &Team,
    member: &Account,
) -> Result<bool, AccountError> {
    if team.name == OWNERS_TEAM {
        let others = members(conn, team)?
            .iter()
            .filter(|m| m.id != member.id)
            .count();
        if others == 0 {
            return Err(AccountError::LastOwner {
                org: org.name.clone(),
            });
        }
    }
    let n = conn.execute(
        "DELETE FROM team_member WHERE team_id = ?1 AND account_id = ?2",
        params![team.id, member.id],
    )?;
    Ok(n > 0)
}

/// The members of a team, by name.
pub fn members(conn: &Connection, team: &Team) -> Result<Vec<Account>, AccountError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM account WHERE id IN (SELECT account_id FROM team_member WHERE team_id = ?1)
         ORDER BY name",
        super::COLUMNS
    ))?;
    let rows = stmt.query_map(params![team.id], super::from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The teams of an organisation with their member counts, by name.
pub fn teams(conn: &Connection, org: &Account) -> Result<Vec<(Team, u64)>, AccountError> {
    let mut stmt = conn.prepare(
        "SELECT t.id, t.org_id, t.name, t.role, t.description,
                (SELECT COUNT(*) FROM team_member m WHERE m.team_id = t.id)
         FROM team t WHERE t.org_id = ?1 ORDER BY t.name",
    )?;
    let rows = stmt.query_map(params![org.id], |r| {
        Ok((
            team_row(r)?,
            u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The teams `account` belongs to in the organisation `org_id`.
pub fn teams_of(
    conn: &Connection,
    account_id: i64,
    org_id: i64,
) -> Result<Vec<Team>, AccountError> {
    let mut stmt = conn.prepare(
        "SELECT t.id, t.org_id, t.name, t.role, t.description FROM team t
         JOIN team_member m ON m.team_id = t.id
         WHERE m.account_id = ?1 AND t.org_id = ?2 ORDER BY t.name",
    )?;
    let rows = stmt.query_map(params![account_id, org_id], team_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The organisations `account` belongs to (through any team), with its best team role in each.
pub fn orgs_of(
    conn: &Connection,
    account_id: i64,
) -> Result<Vec<(Account, TeamRole)>, AccountError> {
    let mut stmt = conn.prepare(
        "SELECT DISTINCT t.org_id FROM team t JOIN team_member m ON m.team_id = t.id
         WHERE m.account_id = ?1",
    )?;
    let ids = stmt
        .query_map(params![account_id], |r| r.get::<_, i64>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(org) = super::find_by_id(conn, id)? else {
            continue;
        };
        let best = teams_of(conn, account_id, id)?
            .iter()
            .map(|t| t.role)
            .max()
            .unwrap_or(TeamRole::Member);
        out.push((org, best));
    }
    out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{robots, test_support, users};
    use super::*;

    #[test]
    fn creator_joins_the_owners_admin_team() {
        let c = test_support::db();
        let alice = users::create(&c, "alice", None, None).unwrap();
        let org = create(&c, "acme", Some("ops@acme.test"), &alice).unwrap();
        let t = teams(&c, &org).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].0.name.as_str(), t[0].0.role, t[0].1),
            ("owners", TeamRole::Admin, 1)
        );
        assert_eq!(
            orgs_of(&c, alice.id).unwrap()[0],
            (org.clone(), TeamRole::Admin)
        );
        let err = create(&c, "acme2", None, &org).unwrap_err();
        assert!(matches!(err, AccountError::WrongKind { .. }), "{err}");
    }

    #[test]
    fn teams_take_users_and_own_robots_only() {
        let c = test_support::db();
        let alice = users::create(&c, "alice", None, None).unwrap();
        let bob = users::create(&c, "bob", None, None).unwrap();
        let org = create(&c, "acme", None, &alice).unwrap();
        let other = create(&c, "other", None, &alice).unwrap();
        let devs = create_team(&c, &org, "devs", TeamRole::Member, "").unwrap();
        assert!(create_team(&c, &org, "devs", TeamRole::Member, "").is_err());
        assert!(create_team(&c, &org, "Devs!", TeamRole::Member, "").is_err());
        let (own, _) = robots::create(&c, &org, "ci", "").unwrap();
        let (foreign, _) = robots::create(&c, &other, "ci", "").unwrap();
        add_member(&c, &org, &devs, &bob).unwrap();
        add_member(&c, &org, &devs, &bob).unwrap();
        add_member(&c, &org, &devs, &own).unwrap();
        let err = add_member(&c, &org, &devs, &foreign).unwrap_err();
        assert!(matches!(err, AccountError::ForeignRobot { .. }), "{err}");
        assert!(add_member(&c, &org, &devs, &other).is_err());
        let names: Vec<_> = members(&c, &devs)
            .unwrap()
            .into_iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, ["acme+ci", "bob"]);
        assert!(remove_member(&c, &org, &devs, &bob).unwrap());
        assert!(!remove_member(&c, &org, &devs, &bob).unwrap());
        let (_, owners) = get_team(&c, "acme", OWNERS_TEAM).unwrap();
        let err = remove_member(&c, &org, &owners, &alice).unwrap_err();
        assert!(matches!(err, AccountError::LastOwner { .. }), "{err}");
    }

    #[test]
    fn upsert_updates_role_but_owners_stay_admin() {
        let c = test_support::db();
        let alice = users::create(&c, "alice", None, None).unwrap();
        let org = create(&c, "acme", None, &alice).unwrap();
        let t = upsert_team(&c, &org, "builders", TeamRole::Member, Some("ci")).unwrap();
        assert_eq!((t.role, t.description.as_str()), (TeamRole::Member, "ci"));
        let t = upsert_team(&c, &org, "builders", TeamRole::Creator, None).unwrap();
        assert_eq!((t.role, t.description.as_str()), (TeamRole::Creator, "ci"));
        let err = upsert_team(&c, &org, OWNERS_TEAM, TeamRole::Member, None).unwrap_err();
        assert!(matches!(err, AccountError::OwnersRole { .. }));
        assert!("boss".parse::<TeamRole>().is_err());
        let err = get_team(&c, "acme", "nope").unwrap_err();
        assert_eq!(err.to_string(), "team \"acme/nope\" does not exist");
    }
}
