//! Credential checks shared by `/v2/auth` and the REST API.
//!
//! Basic credentials are a user and password, a robot `ns+short` and its token, or `$token` and an
//! access token; the REST API also takes `Authorization: Bearer <access token>`. A failed check
//! never says which part was wrong.

use base64::Engine as _;
use http::HeaderMap;
use http::header::AUTHORIZATION;

use super::tokens::TOKEN_USER;
use super::{Account, AccountError, robots, secrets, tokens, users};
use crate::db::Db;

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
            .read(move |c| robots::check_token(c, &name, &secret))
            .await?;
        return Ok(robot.map(|account| Principal {
            account,
            via: CredentialKind::RobotToken,
        }));
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
    }))
}

/// Check an access token; `None` when it is unknown, expired or its account disabled.
pub async fn check_access_token(db: &Db, token: &str) -> Result<Option<Principal>, AccountError> {
    let token = token.to_owned();
    let account = db.read(move |c| tokens::check(c, &token)).await?;
    Ok(account.map(|account| Principal {
        account,
        via: CredentialKind::AccessToken,
    }))
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
    use super::super::{orgs, robots, tokens, users};
    use super::*;

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
}
