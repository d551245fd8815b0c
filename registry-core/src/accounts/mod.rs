//! Users, organisations, teams, robot accounts, access tokens and repository permissions.
//!
//! The tenant model is Quay's: every repository belongs to a namespace, which is a user or an
//! organisation. Organisations hold teams (roles member, creator, admin) whose members are users
//! and the organisation's robots; a robot `<namespace>+<short>` belongs to one namespace and gets
//! only what permissions and teams give it. Superusers are listed in `SUPER_USERS`.
//!
//! Every function here takes a `rusqlite::Connection` (a `Transaction` derefs to one), so the same
//! code serves the async handlers (inside `Db::write`/`Db::read`) and the admin CLI
//! (`Db::write_blocking`). Argon2 hashing is CPU-heavy and is done by the callers outside the
//! database closures (see [`secrets`] and [`credentials`]).

pub mod credentials;
pub mod orgs;
pub mod permissions;
pub mod repositories;
pub mod robots;
pub mod secrets;
pub mod tokens;
pub mod users;

use rusqlite::{Connection, OptionalExtension as _, Row, params};

use crate::db::{DbError, now_ms};
use crate::names::NameError;

/// Why an account operation failed; every variant names the field or object concerned.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// A user, organisation, team or robot name breaks the naming rules.
    #[error("{field} is invalid")]
    InvalidName {
        /// Which name, e.g. `organisation name`.
        field: &'static str,
        /// The rule that was broken.
        #[source]
        source: NameError,
    },
    /// The object already exists.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// What kind of object (`account`, `team`, `repository`).
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The object does not exist.
    #[error("{kind} {name:?} does not exist")]
    NotFound {
        /// What kind of object (`namespace`, `user`, `organisation`, `robot`, `team`, ...).
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The account exists but is of another kind than the operation needs.
    #[error("account {name:?} is of kind {actual}, expected {expected}")]
    WrongKind {
        /// The account name.
        name: String,
        /// What the operation needs.
        expected: &'static str,
        /// What the account is.
        actual: &'static str,
    },
    /// A value is not one of the allowed choices (roles, visibility).
    #[error("{field} {value:?} is invalid: expected one of {expected}")]
    InvalidChoice {
        /// The field.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// The allowed values.
        expected: &'static str,
    },
    /// An email address without `@`.
    #[error("email {value:?} is invalid: expected an address such as user@example.com")]
    InvalidEmail {
        /// The rejected address.
        value: String,
    },
    /// A free-text field that must not be empty.
    #[error("{field} must not be empty")]
    Empty {
        /// The field.
        field: &'static str,
    },
    /// A robot of one namespace used in another (Quay limits robots to their namespace).
    #[error("robot {robot:?} belongs to another namespace than {namespace:?}")]
    ForeignRobot {
        /// The robot's full name.
        robot: String,
        /// The namespace it was used in.
        namespace: String,
    },
    /// A team given a permission on a repository outside its organisation.
    #[error(
        "team {team:?} cannot hold permissions on repository {repository:?} of another namespace"
    )]
    ForeignTeam {
        /// `org/team`.
        team: String,
        /// The repository.
        repository: String,
    },
    /// Demoting the `owners` team would leave the organisation without its administrators.
    #[error("the owners team of organisation {org:?} must keep the admin role")]
    OwnersRole {
        /// The organisation.
        org: String,
    },
    /// Removing the last member of the `owners` team would leave the organisation unmanaged.
    #[error("the owners team of organisation {org:?} must keep at least one member")]
    LastOwner {
        /// The organisation.
        org: String,
    },
    /// Hashing a password failed.
    #[error("failed to hash the password")]
    Hash(#[source] argon2::password_hash::Error),
    /// A password check task could not be run.
    #[error("password check task failed")]
    Join(#[source] tokio::task::JoinError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for AccountError {
    fn from(e: rusqlite::Error) -> Self {
        AccountError::Db(DbError::from(e))
    }
}

/// What an account is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountKind {
    /// A person who logs in with a password.
    User,
    /// An organisation: a namespace shared through teams; it never logs in.
    Org,
    /// A robot `<namespace>+<short>` that logs in with a token.
    Robot,
}

impl AccountKind {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::User => "user",
            AccountKind::Org => "org",
            AccountKind::Robot => "robot",
        }
    }

    /// The word used in messages.
    pub fn noun(self) -> &'static str {
        match self {
            AccountKind::User => "user",
            AccountKind::Org => "organisation",
            AccountKind::Robot => "robot",
        }
    }

    fn from_stored(s: &str) -> AccountKind {
        match s {
            "org" => AccountKind::Org,
            "robot" => AccountKind::Robot,
            // The CHECK constraint allows only the three values.
            _ => AccountKind::User,
        }
    }
}

/// An account row (never carries secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Row id.
    pub id: i64,
    /// Name; for robots `<namespace>+<short>`.
    pub name: String,
    /// User, organisation or robot.
    pub kind: AccountKind,
    /// Email address, if known.
    pub email: Option<String>,
    /// Free text (robots).
    pub description: String,
    /// Disabled accounts cannot log in.
    pub enabled: bool,
    /// Robots: the owning user or organisation.
    pub robot_owner_id: Option<i64>,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
}

impl Account {
    /// Whether this is a user named in `SUPER_USERS` (robots and organisations never are).
    pub fn is_superuser(&self, super_users: &[String]) -> bool {
        self.kind == AccountKind::User && super_users.contains(&self.name)
    }
}

const COLUMNS: &str = "id, name, kind, email, description, enabled, robot_owner_id, created_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Account> {
    let kind: String = r.get(2)?;
    Ok(Account {
        id: r.get(0)?,
        name: r.get(1)?,
        kind: AccountKind::from_stored(&kind),
        email: r.get(3)?,
        description: r.get(4)?,
        enabled: r.get::<_, i64>(5)? != 0,
        robot_owner_id: r.get(6)?,
        created_at: r.get(7)?,
    })
}

/// Look an account up by name.
pub fn find(conn: &Connection, name: &str) -> Result<Option<Account>, AccountError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM account WHERE name = ?1"),
            params![name],
            from_row,
        )
        .optional()?)
}

/// Look an account up by id.
pub fn find_by_id(conn: &Connection, id: i64) -> Result<Option<Account>, AccountError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM account WHERE id = ?1"),
            params![id],
            from_row,
        )
        .optional()?)
}

/// The account `name`, which must be of `kind`.
pub fn get_kind(conn: &Connection, name: &str, kind: AccountKind) -> Result<Account, AccountError> {
    let account = find(conn, name)?.ok_or_else(|| AccountError::NotFound {
        kind: kind.noun(),
        name: name.to_owned(),
    })?;
    if account.kind != kind {
        return Err(AccountError::WrongKind {
            name: name.to_owned(),
            expected: kind.noun(),
            actual: account.kind.noun(),
        });
    }
    Ok(account)
}

/// The user or organisation `name` (a namespace that can hold repositories and robots).
pub fn get_namespace(conn: &Connection, name: &str) -> Result<Account, AccountError> {
    match find(conn, name)? {
        Some(a) if a.kind != AccountKind::Robot => Ok(a),
        Some(a) => Err(AccountError::WrongKind {
            name: a.name,
            expected: "user or organisation",
            actual: "robot",
        }),
        None => Err(AccountError::NotFound {
            kind: "namespace",
            name: name.to_owned(),
        }),
    }
}

/// Fields of a new account row.
#[derive(Debug, Default)]
pub(crate) struct NewAccount<'a> {
    pub(crate) email: Option<&'a str>,
    pub(crate) password_hash: Option<&'a str>,
    pub(crate) robot_owner_id: Option<i64>,
    pub(crate) robot_token_hash: Option<&'a str>,
    pub(crate) description: &'a str,
}

/// Insert an account; the name must be free across users, organisations and robots.
pub(crate) fn insert(
    conn: &Connection,
    name: &str,
    kind: AccountKind,
    fields: &NewAccount<'_>,
) -> Result<Account, AccountError> {
    if find(conn, name)?.is_some() {
        return Err(AccountError::AlreadyExists {
            kind: "account",
            name: name.to_owned(),
        });
    }
    conn.execute(
        "INSERT INTO account (name, kind, email, password_hash, robot_owner_id, robot_token_hash,
                              description, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            name,
            kind.as_str(),
            fields.email,
            fields.password_hash,
            fields.robot_owner_id,
            fields.robot_token_hash,
            fields.description,
            now_ms()
        ],
    )?;
    let id = conn.last_insert_rowid();
    find_by_id(conn, id)?.ok_or_else(|| AccountError::NotFound {
        kind: kind.noun(),
        name: name.to_owned(),
    })
}

/// Validate a user, organisation, team or robot short name with Quay's namespace rules.
pub fn validate_name(field: &'static str, name: &str) -> Result<(), AccountError> {
    crate::names::validate_namespace(name)
        .map_err(|source| AccountError::InvalidName { field, source })
}

/// Validate an optional email address (only that it looks like one).
pub fn validate_email(email: Option<&str>) -> Result<(), AccountError> {
    match email {
        Some(e) if !e.contains('@') || e.starts_with('@') || e.ends_with('@') || e.len() > 255 => {
            Err(AccountError::InvalidEmail {
                value: e.to_owned(),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! An in-memory database with the real schema, for the unit tests of this module tree.

    use rusqlite::Connection;

    pub(crate) fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        conn.execute_batch(include_str!("../db/schema.sql"))
            .unwrap();
        conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_across_kinds_and_kinds_are_checked() {
        let c = test_support::db();
        let alice = insert(&c, "alice", AccountKind::User, &NewAccount::default()).unwrap();
        assert_eq!(alice.kind, AccountKind::User);
        let err = insert(&c, "alice", AccountKind::Org, &NewAccount::default()).unwrap_err();
        assert_eq!(err.to_string(), "account \"alice\" already exists");
        let err = get_kind(&c, "alice", AccountKind::Org).unwrap_err();
        assert_eq!(
            err.to_string(),
            "account \"alice\" is of kind user, expected organisation"
        );
        let err = get_namespace(&c, "nobody").unwrap_err();
        assert_eq!(err.to_string(), "namespace \"nobody\" does not exist");
    }

    #[test]
    fn superusers_are_users_only() {
        let c = test_support::db();
        let su = vec!["root".to_owned()];
        let root = insert(&c, "root", AccountKind::User, &NewAccount::default()).unwrap();
        assert!(root.is_superuser(&su));
        let mut as_org = root.clone();
        as_org.kind = AccountKind::Org;
        assert!(!as_org.is_superuser(&su));
    }

    #[test]
    fn email_and_names_are_validated_with_the_field_named() {
        assert!(validate_email(Some("a@b.c")).is_ok());
        assert!(validate_email(None).is_ok());
        assert!(validate_email(Some("nope")).is_err());
        let err = validate_name("team name", "Bad!").unwrap_err();
        assert_eq!(err.to_string(), "team name is invalid");
    }
}
