//! Access tokens (Quay's application tokens): the password of the `$token` user at `/v2/auth` and
//! the `Authorization: Bearer` credential of the REST API. Stored as SHA-256 hex, shown once.
//!
//! A token may carry a [`TokenScope`]: one repository (or all), a role ceiling and an expiry.
//! buildman hands such tokens to build agents (`build:<uuid>:push`, role write on the build's
//! repository) and, owned by a pull robot, for a build's base image (role read); it deletes them by
//! title when the build ends. Scoped tokens act only through repository roles: they never
//! administer namespaces, manage robots or teams, or use the superuser API.
//!
//! Role ceilings map to registry actions as Quay's build token does: `read` = pull,
//! `write` = pull + push, `admin` = everything the account may do (`delete` and `*` included).
//! So a `write` build token cannot delete tags or manifests even when its owner could.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::permissions::Role;
use super::{Account, AccountError, AccountKind, secrets};
use crate::db::now_ms;
use crate::names::RepoName;

/// The user name that logs in with an access token as password.
pub const TOKEN_USER: &str = "$token";

/// What a scoped token may reach: the holder's role is the owner's, capped by this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenScope {
    /// The only repository the token reaches; `None` = every repository of the owner.
    pub repository: Option<RepoName>,
    /// The role ceiling; `Role::None` is refused at creation.
    pub max_role: Role,
    /// When the token stops working, Unix milliseconds; `None` = never.
    pub expires_at_ms: Option<i64>,
}

impl TokenScope {
    /// Whether the scope reaches `repo` at all.
    pub fn covers(&self, repo: &RepoName) -> bool {
        self.repository.as_ref().is_none_or(|r| r == repo)
    }

    /// The role a holder has on `repo` when the owner's role there is `role`.
    pub fn cap(&self, repo: &RepoName, role: Role) -> Role {
        if self.covers(repo) {
            role.min(self.max_role)
        } else {
            Role::None
        }
    }

    /// Whether a holder may create `repo` (the owner must also be allowed to): only a repository
    /// the scope covers, with at least write.
    pub fn may_create(&self, repo: &RepoName) -> bool {
        self.covers(repo) && self.max_role >= Role::Write
    }

    /// Whether the ceiling allows the registry scope action `action` (`pull`, `push`, `delete`,
    /// `*`); see the module docs for why `delete` needs `admin`.
    pub fn permits(&self, action: &str) -> bool {
        let needs = match action {
            "pull" => Role::Read,
            "push" => Role::Write,
            _ => Role::Admin,
        };
        self.max_role >= needs
    }
}

/// An accepted token: its owner and its scope (`None` for an unscoped token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedToken {
    /// The enabled user or robot owning the token.
    pub account: Account,
    /// The scope, when the token has one.
    pub scope: Option<TokenScope>,
}

fn check_title(title: &str) -> Result<(), AccountError> {
    if title.trim().is_empty() {
        return Err(AccountError::Empty {
            field: "token title",
        });
    }
    Ok(())
}

fn insert(
    conn: &Connection,
    owner: &Account,
    title: &str,
    scope: Option<&TokenScope>,
) -> Result<String, AccountError> {
    check_title(title)?;
    let token = secrets::new_access_token();
    conn.execute(
        "INSERT INTO access_token
           (account_id, title, token_hash, created_at, expires_at, scope_repository, scope_role)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            owner.id,
            title,
            secrets::token_hash(&token),
            now_ms(),
            scope.and_then(|s| s.expires_at_ms),
            scope.and_then(|s| s.repository.as_ref().map(RepoName::as_str)),
            scope.map(|s| s.max_role.as_str()),
        ],
    )?;
    Ok(token)
}

/// Create an unscoped access token for the user `account`, titled `title`; returns the token.
pub fn create(conn: &Connection, account: &Account, title: &str) -> Result<String, AccountError> {
    if account.kind != AccountKind::User {
        return Err(AccountError::WrongKind {
            name: account.name.clone(),
            expected: "user",
            actual: account.kind.noun(),
        });
    }
    insert(conn, account, title, None)
}

/// Create a token for the user or robot `owner`, limited by `scope`; returns the token.
///
/// A robot's token logs in with the robot's name as user name (or `$token`); robots' own tokens
/// are stored hashed, so this is how a robot's pull right is handed to a build without its secret.
pub fn create_scoped(
    conn: &Connection,
    owner: &Account,
    title: &str,
    scope: &TokenScope,
) -> Result<String, AccountError> {
    if owner.kind == AccountKind::Org {
        return Err(AccountError::WrongKind {
            name: owner.name.clone(),
            expected: "user or robot",
            actual: owner.kind.noun(),
        });
    }
    if scope.max_role == Role::None {
        return Err(AccountError::InvalidChoice {
            field: "token role",
            value: Role::None.as_str().to_owned(),
            expected: "read, write, admin",
        });
    }
    insert(conn, owner, title, Some(scope))
}

/// The owner and scope of the unexpired token `token` whose owner is enabled; `None` otherwise.
///
/// The token is found by its hash through the unique index, so no secret is compared here.
pub fn check(conn: &Connection, token: &str) -> Result<Option<CheckedToken>, AccountError> {
    type Row = (i64, Option<i64>, Option<String>, Option<String>);
    let row: Option<Row> = conn
        .prepare_cached(
            "SELECT account_id, expires_at, scope_repository, scope_role
               FROM access_token WHERE token_hash = ?1",
        )?
        .query_row(params![secrets::token_hash(token)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((account_id, expires_at_ms, repository, role)) = row else {
        return Ok(None);
    };
    if expires_at_ms.is_some_and(|e| e <= now_ms()) {
        return Ok(None);
    }
    let scope = match role {
        None => None,
        Some(role) => {
            // Both were validated on the way in; a row that no longer parses is refused rather
            // than read as a wider scope.
            let (Ok(max_role), Ok(repository)) = (
                role.parse::<Role>(),
                repository.map(|r| r.parse::<RepoName>()).transpose(),
            ) else {
                return Ok(None);
            };
            Some(TokenScope {
                repository,
                max_role,
                expires_at_ms,
            })
        }
    };
    let account = super::find_by_id(conn, account_id)?.filter(|a| a.enabled);
    Ok(account.map(|account| CheckedToken { account, scope }))
}

/// Delete the token `token`; `false` when there is no such token.
pub fn delete(conn: &Connection, token: &str) -> Result<bool, AccountError> {
    let n = conn.execute(
        "DELETE FROM access_token WHERE token_hash = ?1",
        params![secrets::token_hash(token)],
    )?;
    Ok(n > 0)
}

/// Delete every token titled `title` (of any owner); returns how many there were.
pub fn delete_by_title(conn: &Connection, title: &str) -> Result<usize, AccountError> {
    Ok(conn.execute("DELETE FROM access_token WHERE title = ?1", params![title])?)
}

#[cfg(test)]
mod tests {
    use super::super::{orgs, robots, test_support, users};
    use super::*;

    fn scope(repo: Option<&str>, max_role: Role) -> TokenScope {
        TokenScope {
            repository: repo.map(|r| r.parse().unwrap()),
            max_role,
            expires_at_ms: None,
        }
    }

    #[test]
    fn tokens_identify_their_user_until_expiry() {
        let c = test_support::db();
        let alice = users::create(&c, "alice", None, None).unwrap();
        let token = create(&c, &alice, "ci").unwrap();
        let got = check(&c, &token).unwrap().unwrap();
        assert_eq!((got.account.name.as_str(), got.scope), ("alice", None));
        assert_eq!(check(&c, "nope").unwrap(), None);
        c.execute("UPDATE access_token SET expires_at = 1", [])
            .unwrap();
        assert_eq!(check(&c, &token).unwrap(), None);
        assert!(matches!(
            create(&c, &alice, " "),
            Err(AccountError::Empty { .. })
        ));
    }

    #[test]
    fn scoped_tokens_round_trip_and_expire() {
        let c = test_support::db();
        let alice = users::create(&c, "alice", None, None).unwrap();
        let acme = orgs::create(&c, "acme", None, &alice).unwrap();
        let (bot, _) = robots::create(&c, &acme, "puller", "").unwrap();
        let push = TokenScope {
            expires_at_ms: Some(now_ms() + 60_000),
            ..scope(Some("acme/app"), Role::Write)
        };
        let t = create_scoped(&c, &alice, "build:1:push", &push).unwrap();
        let got = check(&c, &t).unwrap().unwrap();
        assert_eq!((got.account.id, got.scope), (alice.id, Some(push.clone())));
        // Robots may own scoped tokens; organisations may not.
        let pull = scope(None, Role::Read);
        let rt = create_scoped(&c, &bot, "build:1:pull", &pull).unwrap();
        assert_eq!(check(&c, &rt).unwrap().unwrap().account.id, bot.id);
        let err = create_scoped(&c, &acme, "x", &pull).unwrap_err();
        assert!(matches!(err, AccountError::WrongKind { .. }), "{err}");
        let err = create_scoped(&c, &alice, "x", &scope(None, Role::None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "token role \"none\" is invalid: expected one of read, write, admin"
        );
        // An expired scoped token is refused like a wrong one.
        let dead = TokenScope {
            expires_at_ms: Some(now_ms() - 1),
            ..push.clone()
        };
        let t2 = create_scoped(&c, &alice, "old", &dead).unwrap();
        assert_eq!(check(&c, &t2).unwrap(), None);
        // A corrupt stored scope fails closed.
        c.execute(
            "UPDATE access_token SET scope_repository = 'Not A Name' WHERE title = 'build:1:push'",
            [],
        )
        .unwrap();
        assert_eq!(check(&c, &t).unwrap(), None);
    }

    #[test]
    fn tokens_are_deleted_by_value_and_by_title() {
        let c = test_support::db();
        let alice = users::create(&c, "alice", None, None).unwrap();
        let s = scope(Some("alice/app"), Role::Write);
        let a = create_scoped(&c, &alice, "build:7:push", &s).unwrap();
        let b = create_scoped(&c, &alice, "build:7:push", &s).unwrap();
        let keep = create_scoped(&c, &alice, "build:8:push", &s).unwrap();
        assert!(delete(&c, &a).unwrap());
        assert!(!delete(&c, &a).unwrap());
        assert_eq!(check(&c, &a).unwrap(), None);
        assert_eq!(delete_by_title(&c, "build:7:push").unwrap(), 1);
        assert_eq!(check(&c, &b).unwrap(), None);
        assert_eq!(delete_by_title(&c, "build:7:push").unwrap(), 0);
        assert!(check(&c, &keep).unwrap().is_some());
    }

    /// A version-1 database (before scoped tokens) is upgraded in place: its tokens keep working,
    /// unscoped, and scoped ones can be added.
    #[test]
    fn version_1_files_gain_the_scope_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE account (
                 id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                 kind TEXT NOT NULL CHECK (kind IN ('user', 'org', 'robot')), email TEXT,
                 password_hash TEXT, robot_owner_id INTEGER REFERENCES account(id) ON DELETE CASCADE,
                 robot_token_hash TEXT, description TEXT NOT NULL DEFAULT '',
                 enabled INTEGER NOT NULL DEFAULT 1, created_at INTEGER NOT NULL);
             CREATE TABLE access_token (
                 id INTEGER PRIMARY KEY,
                 account_id INTEGER NOT NULL REFERENCES account(id) ON DELETE CASCADE,
                 title TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE,
                 created_at INTEGER NOT NULL, expires_at INTEGER);
             INSERT INTO account (id, name, kind, created_at) VALUES (1, 'alice', 'user', 0);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        old.execute(
            "INSERT INTO access_token (account_id, title, token_hash, created_at)
             VALUES (1, 'laptop', ?1, 0)",
            params![secrets::token_hash("old-token")],
        )
        .unwrap();
        drop(old);
        let db = crate::db::Db::open(&path).unwrap();
        db.write_blocking(|c| {
            let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
            assert_eq!(version, crate::db::REGISTRY_SCHEMA.version());
            let mut stmt = c.prepare("SELECT name FROM pragma_table_info('access_token')")?;
            let cols = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            assert!(cols.iter().any(|n| n == "scope_repository"), "{cols:?}");
            assert!(cols.iter().any(|n| n == "scope_role"), "{cols:?}");
            let got = check(c, "old-token")?.unwrap();
            assert_eq!((got.account.name.as_str(), got.scope), ("alice", None));
            let t = create_scoped(c, &got.account, "build", &scope(None, Role::Read))?;
            assert_eq!(check(c, &t)?.unwrap().scope, Some(scope(None, Role::Read)));
            assert_eq!(delete_by_title(c, "build")?, 1);
            Ok::<_, AccountError>(())
        })
        .unwrap();
    }

    #[test]
    fn scopes_cap_roles_and_actions() {
        let app: RepoName = "acme/app".parse().unwrap();
        let other: RepoName = "acme/other".parse().unwrap();
        let w = scope(Some("acme/app"), Role::Write);
        assert_eq!(w.cap(&app, Role::Admin), Role::Write);
        assert_eq!(w.cap(&app, Role::Read), Role::Read);
        assert_eq!(w.cap(&other, Role::Admin), Role::None);
        assert!(w.may_create(&app) && !w.may_create(&other));
        assert!(w.permits("pull") && w.permits("push"));
        assert!(!w.permits("delete") && !w.permits("*") && !w.permits("fly"));
        let r = scope(None, Role::Read);
        assert_eq!(r.cap(&other, Role::Write), Role::Read);
        assert!(!r.may_create(&app));
        assert!(r.permits("pull") && !r.permits("push"));
        let a = scope(None, Role::Admin);
        assert_eq!(a.cap(&other, Role::Admin), Role::Admin);
        assert!(a.permits("delete") && a.permits("*"));
    }
}
