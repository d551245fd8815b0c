//! User accounts: creation, passwords, and what a user belongs to.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{
    Account, AccountError, AccountKind, NewAccount, insert, validate_email, validate_name,
};

/// Create a user. `password_hash` is an argon2id PHC string from
/// [`super::secrets::hash_password`] (hashed by the caller, outside the transaction); `None` creates
/// a user who cannot log in with a password until one is set.
pub fn create(
    conn: &Connection,
    name: &str,
    email: Option<&str>,
    password_hash: Option<&str>,
) -> Result<Account, AccountError> {
    validate_name("user name", name)?;
    validate_email(email)?;
    insert(
        conn,
        name,
        AccountKind::User,
        &NewAccount {
            email,
            password_hash,
            ..NewAccount::default()
        },
    )
}

/// Replace a user's password hash.
pub fn set_password(
    conn: &Connection,
    name: &str,
    password_hash: &str,
) -> Result<(), AccountError> {
    let user = super::get_kind(conn, name, AccountKind::User)?;
    conn.execute(
        "UPDATE account SET password_hash = ?1 WHERE id = ?2",
        params![password_hash, user.id],
    )?;
    Ok(())
}

/// The enabled user `name` and its stored password hash, for a login check.
pub fn login_record(
    conn: &Connection,
    name: &str,
) -> Result<Option<(Account, String)>, AccountError> {
    let Some(account) = super::find(conn, name)? else {
        return Ok(None);
    };
    if account.kind != AccountKind::User || !account.enabled {
        return Ok(None);
    }
    let hash: Option<String> = conn
        .query_row(
            "SELECT password_hash FROM account WHERE id = ?1",
            params![account.id],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    Ok(hash.map(|h| (account, h)))
}

/// All users, by name.
pub fn list(conn: &Connection) -> Result<Vec<Account>, AccountError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM account WHERE kind = 'user' ORDER BY name",
        super::COLUMNS
    ))?;
    let rows = stmt.query_map([], super::from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::super::test_support;
    use super::*;

    #[test]
    fn create_validates_and_login_record_needs_a_password() {
        let c = test_support::db();
        let err = create(&c, "Alice", None, None).unwrap_err();
        assert_eq!(err.to_string(), "user name is invalid");
        let err = create(&c, "alice", Some("nope"), None).unwrap_err();
        assert!(matches!(err, AccountError::InvalidEmail { .. }));
        create(&c, "alice", Some("a@example.com"), None).unwrap();
        assert!(login_record(&c, "alice").unwrap().is_none());
        set_password(&c, "alice", "$argon2id$x").unwrap();
        let (a, h) = login_record(&c, "alice").unwrap().unwrap();
        assert_eq!((a.name.as_str(), h.as_str()), ("alice", "$argon2id$x"));
        assert!(login_record(&c, "bob").unwrap().is_none());
        c.execute("UPDATE account SET enabled = 0", []).unwrap();
        assert!(login_record(&c, "alice").unwrap().is_none());
        assert_eq!(list(&c).unwrap().len(), 1);
    }
}
