//! Credential checks shared by `/v2/auth` and the REST API.
//!
//! Basic credentials are a user and password, a robot `ns+short` and its token, or `$token` and an
//! access token; the REST API also takes `Authorization: Bearer <access token>`. A robot may also
//! log in with a scoped access token it owns (see [`tokens::create_scoped`]). A failed check
//! never says which part was wrong.
//!
//! What a [`Principal`] may do is computed here, from the account's rights capped by the token's
//! [`TokenScope`]: handlers ask the principal, not `permissions`, so no path forgets the cap.

use base64::Engine as _;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use rusqlite::Connection;

use super::permissions::{self, Role};
use super::tokens::{TOKEN_USER, TokenScope};
use super::{Account, AccountError, robots, secrets, tokens, users};
use crate::db::Db;
use crate::names::RepoName;

/// How a caller proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// A user's password.
    Password,
    /// A robot's token.
    RobotToken,
    /// An access token (`$token` or API bearer).
    AccessToken,
}

impl CredentialKind {
    /// The `kind` of the registry token's `context` claim.
    pub fn context_kind(self) -> &'static str {
        match self {
            CredentialKind::Password => "user",
            CredentialKind::RobotToken => "robot",
            CredentialKind::AccessToken => "token",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The user or robot.
    pub account: Account,
    /// The credential it used.
    pub via: CredentialKind,
    /// The scope of a scoped access token; `None` for passwords, robot and unscoped tokens.
    pub scope: Option<TokenScope>,
}

impl Principal {
    /// The account, when the credential may act for it beyond single repositories (administer
    /// namespaces, manage robots and teams, create organisations, superuser API): every credential
    /// but a scoped token.
    pub fn unscoped(&self) -> Option<&Account> {
        self.scope.is_none().then_some(&self.account)
    }

    /// Whether the caller acts as a superuser (never through a scoped token).
    pub fn is_superuser(&self, super_users: &[String]) -> bool {
        self.unscoped().is_some_and(|a| a.is_superuser(super_users))
    }

    /// The caller's role on `repo`: the account's, capped by the token scope.
    pub fn repo_role(
        &self,
        conn: &Connection,
        super_users: &[String],
        repo: &RepoName,
    ) -> Result<Role, AccountError> {
        let role = permissions::repo_role(conn, Some(&self.account), super_users, repo)?;
        Ok(self.scope.as_ref().map_or(role, |s| s.cap(repo, role)))
    }

    /// Whether the caller may create `repo`: the account may create in its namespace and the
    /// scope (if any) covers it with at least write.
    pub fn can_create(
        &self,
        conn: &Connection,
        super_users: &[String],
        repo: &RepoName,
    ) -> Result<bool, AccountError> {
        if self.scope.as_ref().is_some_and(|s| !s.may_create(repo)) {
            return Ok(false);
        }
        permissions::can_create(conn, Some(&self.account), super_users, repo.namespace())
    }

    /// Whether the caller administers `namespace` (never through a scoped token).
    pub fn administers(
        &self,
        conn: &Connection,
        super_users: &[String],
        namespace: &Account,
    ) -> Result<bool, AccountError> {
        match self.unscoped() {
            Some(account) => permissions::administers(conn, account, super_users, namespace),
            None => Ok(false),
        }
    }
}

/// The role of `who` (`None` = anonymous) on `repo`, scope caps applied.
pub fn repo_role(
    conn: &Connection,
    who: Option<&Principal>,
    super_users: &[String],
    repo: &RepoName,
) -> Result<Role, AccountError> {
    match who {
        Some(p) => p.repo_role(conn, super_users, repo),
        None => permissions::repo_role(conn, None, super_users, repo),
    }
}

/// The credentials found in an `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub enum Presented {
    /// No `Authorization` header.
    None,
    /// `Basic` user and secret.
    Basic {
        /// The user name (`$token` and `ns+robot` included).
        username: String,
        /// The password or token.
        secret: String,
    },
    /// `Bearer` token.
    Bearer(String),
    /// A header we cannot read; treated as wrong credentials.
    Malformed,
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        match self {
            Presented::None => f.write_str("None"),
            Presented::Basic { username, .. } => write!(f, "Basic({username:?}, <redacted>)"),
            Presented::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Presented::Malformed => f.write_str("Malformed"),
        }
    }
}

/// Parse the `Authorization` header.
pub fn from_headers(headers: &HeaderMap) -> Presented {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Presented::None;
    };
    let Ok(value) = value.to_str() else {
        return Presented::Malformed;
    };
    let Some((scheme, rest)) = value.trim().split_once(' ') else {
        return Presented::Malformed;
    };
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        parse_basic(rest)
            .map(|(username, secret)| Presented::Basic { username, secret })
            .unwrap_or(Presented::Malformed)
    } else if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        Presented::Bearer(rest.to_owned())
    } else {
        Presented::Malformed
    }
}

/// Decode the base64 `user:secret` of a Basic header (the secret may contain `:`).
pub fn parse_basic(encoded: &str) -> Option<(String, String)> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, secret) = text.split_once(':')?;
    Some((user.to_owned(), secret.to_owned()))
}

/// Check Basic credentials; `None` when they are wrong (whichever part).
pub async fn check_basic(
    db: &Db,
    username: &str,
    secret: &str,
) -> Result<Option<Principal>, AccountError> {
    if secret.is_empty() {
        return Ok(None);
    }
    if username == TOKEN_USER {
        return check_access_token(db, secret).await;
    }
    let name = username.to_owned();
    let secret = secret.to_owned();
    if robots::split_name(username).is_some() {
        let robot = db
            .read(move |c| {
                if let Some(account) = robots::check_token(c, &name, &secret)? {
                    return Ok(Some(Principal {
                        account,
                        via: CredentialKind::RobotToken,
                        scope: None,
                    }));
                }
                // An access token the robot owns (a build's pull token) also logs it in.
                Ok::<_, AccountError>(
                    tokens::check(c, &secret)?
                        .filter(|t| t.account.name == name)
                        .map(access_principal),
                )
            })
            .await?;
        return Ok(robot);
    }
    let record = db.read(move |c| users::login_record(c, &name)).await?;
    // argon2 is deliberately slow: run it on the blocking pool, not on the async threads.
    let account = tokio::task::spawn_blocking(move || match record {
        Some((account, hash)) => secrets::verify_password(&secret, &hash).then_some(account),
        None => {
            secrets::burn_password_check(&secret);
            None
        }
    })
    .await
    .map_err(AccountError::Join)?;
    Ok(account.map(|account| Principal {
        account,
        via: CredentialKind::Password,
        scope: None,
    }))
}

fn access_principal(t: tokens::CheckedToken) -> Principal {
    Principal {
        account: t.account,
        via: CredentialKind::AccessToken,
        scope: t.scope,
    }
}

/// Check an access token; `None` when it is unknown, expired or its account disabled.
pub async fn check_access_token(db: &Db, token: &str) -> Result<Option<Principal>, AccountError> {
    let token = token.to_owned();
    let checked = db.read(move |c| tokens::check(c, &token)).await?;
    Ok(checked.map(access_principal))
}

/// Who the caller of a request is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// No credentials were presented.
    Anonymous,
    /// Valid credentials.
    Known(Principal),
    /// Credentials were presented but are wrong or unreadable.
    BadCredentials,
}

/// Check whatever the `Authorization` header presents.
pub async fn identify(db: &Db, presented: &Presented) -> Result<Identity, AccountError> {
    let checked = match presented {
        Presented::None => return Ok(Identity::Anonymous),
        Presented::Basic { username, secret } => check_basic(db, username, secret).await?,
        Presented::Bearer(token) => check_access_token(db, token).await?,
        Presented::Malformed => None,
    };
    Ok(checked.map_or(Identity::BadCredentials, Identity::Known))
}

/// A Basic header value for `user:secret` (tests and clients).
pub fn basic_header(user: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
    )
}

#[cfg(test)]
mod tests {
    use super::super::{orgs, repositories, robots, tokens, users};
    use super::*;
    use crate::repos::Visibility;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn authorization_headers_parse() {
        assert_eq!(from_headers(&HeaderMap::new()), Presented::None);
        assert_eq!(
            from_headers(&headers(&basic_header("alice", "pa:ss"))),
            Presented::Basic {
                username: "alice".into(),
                secret: "pa:ss".into()
            }
        );
        assert_eq!(
            from_headers(&headers("bearer abc")),
            Presented::Bearer("abc".into())
        );
        assert_eq!(from_headers(&headers("Basic !!!")), Presented::Malformed);
        assert_eq!(from_headers(&headers("Digest x")), Presented::Malformed);
        let dbg = format!(
            "{:?}",
            from_headers(&headers(&basic_header("u", "hunter2")))
        );
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    #[tokio::test]
    async fn every_credential_kind_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.db")).unwrap();
        let hash = secrets::hash_password("pw").unwrap();
        let (robot_token, access_token) = db
            .write(move |tx| {
                let alice = users::create(tx, "alice", None, Some(&hash))?;
                let org = orgs::create(tx, "acme", None, &alice)?;
                let (_, rt) = robots::create(tx, &org, "ci", "")?;
                let at = tokens::create(tx, &alice, "laptop")?;
                Ok::<_, AccountError>((rt, at))
            })
            .await
            .unwrap();
        let p = check_basic(&db, "alice", "pw").await.unwrap().unwrap();
        assert_eq!(
            (p.account.name.as_str(), p.via),
            ("alice", CredentialKind::Password)
        );
        assert!(check_basic(&db, "alice", "wrong").await.unwrap().is_none());
        assert!(check_basic(&db, "nobody", "pw").await.unwrap().is_none());
        assert!(check_basic(&db, "acme", "pw").await.unwrap().is_none());
        assert!(check_basic(&db, "alice", "").await.unwrap().is_none());
        let p = check_basic(&db, "acme+ci", &robot_token)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.via, CredentialKind::RobotToken);
        assert!(check_basic(&db, "acme+ci", "pw").await.unwrap().is_none());
        let p = check_basic(&db, "$token", &access_token)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.account.name.as_str(), p.via),
            ("alice", CredentialKind::AccessToken)
        );
        assert!(
            check_basic(&db, "$token", &robot_token)
                .await
                .unwrap()
                .is_none()
        );
        let bearer = Presented::Bearer(access_token);
        assert!(matches!(
            identify(&db, &bearer).await,
            Ok(Identity::Known(_))
        ));
        assert_eq!(
            identify(&db, &Presented::Malformed).await.unwrap(),
            Identity::BadCredentials
        );
        assert_eq!(
            identify(&db, &Presented::None).await.unwrap(),
            Identity::Anonymous
        );
    }

    fn scope(repo: Option<&str>, max_role: Role) -> TokenScope {
        TokenScope {
            repository: repo.map(|r| r.parse().unwrap()),
            max_role,
            expires_at_ms: None,
        }
    }

    #[tokio::test]
    async fn scoped_tokens_log_in_and_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.db")).unwrap();
        let (push, pull) = db
            .write(move |tx| {
                let root = users::create(tx, "root", None, None)?;
                let acme = orgs::create(tx, "acme", None, &root)?;
                for r in ["acme/app", "acme/base"] {
                    let name = r.parse().unwrap();
                    repositories::create(tx, &name, Visibility::Private, "")?;
                }
                let (bot, _) = robots::create(tx, &acme, "puller", "")?;
                robots::create(tx, &acme, "other", "")?;
                let base = "acme/base".parse().unwrap();
                permissions::set_for_account(tx, &base, &bot, Role::Read)?;
                let push = scope(Some("acme/app"), Role::Write);
                let push = tokens::create_scoped(tx, &root, "build:1:push", &push)?;
                let pull = scope(None, Role::Read);
                let pull = tokens::create_scoped(tx, &bot, "build:1:pull", &pull)?;
                Ok::<_, AccountError>((push, pull))
            })
            .await
            .unwrap();
        let su = ["root".to_owned()];
        // root is superuser and owns acme, but its build token only writes acme/app.
        let p = check_basic(&db, "$token", &push).await.unwrap().unwrap();
        assert_eq!(p.scope, Some(scope(Some("acme/app"), Role::Write)));
        assert!(!p.is_superuser(&su) && p.unscoped().is_none());
        let (app, base, new, elsewhere): (RepoName, RepoName, RepoName, RepoName) = (
            "acme/app".parse().unwrap(),
            "acme/base".parse().unwrap(),
            "acme/new".parse().unwrap(),
            "root/new".parse().unwrap(),
        );
        let p2 = p.clone();
        let (roles, creates, admin) = db
            .read(move |c| {
                let acme = super::super::find(c, "acme")?.unwrap();
                Ok::<_, AccountError>((
                    [&app, &base].map(|r| p2.repo_role(c, &su, r).unwrap()),
                    [&app, &new, &elsewhere].map(|r| p2.can_create(c, &su, r).unwrap()),
                    p2.administers(c, &su, &acme)?,
                ))
            })
            .await
            .unwrap();
        assert_eq!(roles, [Role::Write, Role::None]);
        assert_eq!(creates, [true, false, false]);
        assert!(!admin);
        // The robot's pull token logs in under the robot's name (or $token), never another's.
        let r = check_basic(&db, "acme+puller", &pull)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.account.name.as_str(), r.via),
            ("acme+puller", CredentialKind::AccessToken)
        );
        assert!(check_basic(&db, "$token", &pull).await.unwrap().is_some());
        assert!(
            check_basic(&db, "acme+other", &pull)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            check_basic(&db, "acme+puller", &push)
                .await
                .unwrap()
                .is_none()
        );
        let role = db
            .read(move |c| r.repo_role(c, &[], &"acme/base".parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(role, Role::Read);
        // Once deleted (the build ended), the tokens stop working.
        let push2 = push.clone();
        db.write(move |tx| {
            assert!(tokens::delete(tx, &push2)?);
            assert_eq!(tokens::delete_by_title(tx, "build:1:pull")?, 1);
            Ok::<_, AccountError>(())
        })
        .await
        .unwrap();
        assert!(check_basic(&db, "$token", &push).await.unwrap().is_none());
        assert!(
            check_basic(&db, "acme+puller", &pull)
                .await
                .unwrap()
                .is_none()
        );
    }
}
