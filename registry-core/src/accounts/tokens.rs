//! Access tokens (Quay's application tokens): the password of the `$token` user at `/v2/auth` and
//! the `Authorization: Bearer` credential of the REST API. Stored as SHA-256 hex, shown once.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{Account, AccountError, AccountKind, secrets};
use crate::db::now_ms;

/// The user name that logs in with an access token as password.
pub const TOKEN_USER: &str = "$token";

/// Create an access token for the user `account`, titled `title`; returns the token.
pub fn create(conn: &Connection, account: &Account, title: &str) -> Result<String, AccountError> {
    if account.kind != AccountKind::User {
        return Err(AccountError::WrongKind {
            name: account.name.clone(),
            expected: "user",
            actual: account.kind.noun(),
        });
    }
    if title.trim().is_empty() {
        return Err(AccountError::Empty {
            field: "token title",
        });
    }
    let token = secrets::new_access_token();
    conn.execute(
        "INSERT INTO access_token (account_id, title, token_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![account.id, title, secrets::token_hash(&token), now_ms()],
    )?;
    Ok(token)
}

/// The enabled account owning the unexpired access token `token`.
///
/// The token is found by its hash through the unique index, so no secret is compared here.
pub fn check(conn: &Connection, token: &str) -> Result<Option<Account>, AccountError> {
    let row: Option<(i64, Option<i64>)> = conn
        .query_row(
            "SELECT account_id, expires_at FROM access_token WHERE token_hash = ?1",
            params![secrets::token_hash(token)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((account_id, expires_at)) = row else {
        return Ok(None);
    };
    if expires_at.is_some_and(|e| e <= now_ms()) {
        return Ok(None);
    }
    Ok(super::find_by_id(conn, account_id)?.filter(|a| a.enabled))
}

#[cfg(test)]
mod tests {
    use super::super::{test_support, users};
    use super::*;

    #[test]
    fn tokens_identify_their_user_until_expiry() {
        let c = test_support::db();
        let alice = users::create(&c, "alice", None, None).unwrap();
        let token = create(&c, &alice, "ci").unwrap();
        assert_eq!(
            check(&c, &token).unwrap().map(|a| a.name),
            Some("alice".into())
        );
        assert_eq!(check(&c, "nope").unwrap(), None);
        c.execute("UPDATE access_token SET expires_at = 1", [])
            .unwrap();
        assert_eq!(check(&c, &token).unwrap(), None);
        assert!(matches!(
            create(&c, &alice, " "),
            Err(AccountError::Empty { .. })
        ));
    }
}
