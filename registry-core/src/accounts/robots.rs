//! Robot accounts: `<namespace>+<short>`, logging in with a random token.
//!
//! Only the SHA-256 of the token is stored, so the token is shown once, when the robot is created
//! or its token regenerated; regenerating replaces the hash, so the old token stops working.

use rusqlite::{Connection, params};

use super::{Account, AccountError, AccountKind, NewAccount, insert, secrets, validate_name};

/// Split `ns+short` into its parts (`None` when there is no `+`).
pub fn split_name(name: &str) -> Option<(&str, &str)> {
    name.split_once('+')
}

/// The full name of robot `short` in `namespace`, validating the short name.
pub fn full_name(namespace: &str, short: &str) -> Result<String, AccountError> {
    validate_name("robot short name", short)?;
    Ok(format!("{namespace}+{short}"))
}

/// Create robot `short` in the user or organisation `namespace`; returns it and its token.
pub fn create(
    conn: &Connection,
    namespace: &Account,
    short: &str,
    description: &str,
) -> Result<(Account, String), AccountError> {
    if namespace.kind == AccountKind::Robot {
        return Err(AccountError::WrongKind {
            name: namespace.name.clone(),
            expected: "user or organisation",
            actual: "robot",
        });
    }
    let name = full_name(&namespace.name, short)?;
    let token = secrets::new_robot_token();
    let hash = secrets::token_hash(&token);
    let robot = insert(
        conn,
        &name,
        AccountKind::Robot,
        &NewAccount {
            robot_owner_id: Some(namespace.id),
            robot_token_hash: Some(&hash),
            description,
            ..NewAccount::default()
        },
    )?;
    Ok((robot, token))
}

/// The robot `ns+short`.
pub fn get(conn: &Connection, full_name: &str) -> Result<Account, AccountError> {
    super::get_kind(conn, full_name, AccountKind::Robot)
}

/// Give robot `full_name` a new token; the old one stops working. Returns the new token.
pub fn regenerate(conn: &Connection, full_name: &str) -> Result<(Account, String), AccountError> {
    let robot = get(conn, full_name)?;
    let token = secrets::new_robot_token();
    conn.execute(
        "UPDATE account SET robot_token_hash = ?1 WHERE id = ?2",
        params![secrets::token_hash(&token), robot.id],
    )?;
    Ok((robot, token))
}

/// The robots of a namespace, by name.
pub fn list(conn: &Connection, namespace: &Account) -> Result<Vec<Account>, AccountError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM account WHERE kind = 'robot' AND robot_owner_id = ?1 ORDER BY name",
        super::COLUMNS
    ))?;
    let rows = stmt.query_map(params![namespace.id], super::from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Delete a robot (its permissions and team memberships go with it).
pub fn delete(conn: &Connection, full_name: &str) -> Result<(), AccountError> {
    let robot = get(conn, full_name)?;
    conn.execute("DELETE FROM account WHERE id = ?1", params![robot.id])?;
    Ok(())
}

/// The enabled robot `full_name` if `token` is its current token.
pub fn check_token(
    conn: &Connection,
    full_name: &str,
    token: &str,
) -> Result<Option<Account>, AccountError> {
    let Some(robot) = super::find(conn, full_name)? else {
        return Ok(None);
    };
    if robot.kind != AccountKind::Robot || !robot.enabled {
        return Ok(None);
    }
    let stored: Option<String> = conn.query_row(
        "SELECT robot_token_hash FROM account WHERE id = ?1",
        params![robot.id],
        |r| r.get(0),
    )?;
    Ok(stored
        .filter(|h| secrets::token_matches(token, h))
        .map(|_| robot))
}

#[cfg(test)]
mod tests {
    use super::super::{test_support, users};
    use super::*;

    #[test]
    fn create_check_regenerate_delete() {
        let c = test_support::db();
        let alice = users::create(&c, "alice", None, None).unwrap();
        let (robot, token) = create(&c, &alice, "deploy", "ci pushes").unwrap();
        assert_eq!(robot.name, "alice+deploy");
        assert_eq!(robot.robot_owner_id, Some(alice.id));
        assert_eq!(robot.description, "ci pushes");
        assert_eq!(
            check_token(&c, "alice+deploy", &token).unwrap(),
            Some(robot.clone())
        );
        assert_eq!(check_token(&c, "alice+deploy", "wrong").unwrap(), None);
        assert_eq!(check_token(&c, "alice", &token).unwrap(), None);

        let (_, new_token) = regenerate(&c, "alice+deploy").unwrap();
        assert_ne!(new_token, token);
        assert_eq!(check_token(&c, "alice+deploy", &token).unwrap(), None);
        assert!(
            check_token(&c, "alice+deploy", &new_token)
                .unwrap()
                .is_some()
        );

        assert_eq!(list(&c, &alice).unwrap().len(), 1);
        assert!(create(&c, &alice, "deploy", "").is_err());
        delete(&c, "alice+deploy").unwrap();
        assert!(list(&c, &alice).unwrap().is_empty());
        let err = regenerate(&c, "alice+deploy").unwrap_err();
        assert_eq!(err.to_string(), "robot \"alice+deploy\" does not exist");
    }

    #[test]
    fn short_names_are_validated_and_robots_own_nothing() {
        let c = test_support::db();
        let alice = users::create(&c, "alice", None, None).unwrap();
        let err = create(&c, &alice, "Bad-Name", "").unwrap_err();
        assert_eq!(err.to_string(), "robot short name is invalid");
        let (robot, _) = create(&c, &alice, "bot", "").unwrap();
        assert!(matches!(
            create(&c, &robot, "sub", ""),
            Err(AccountError::WrongKind { .. })
        ));
        assert_eq!(split_name("alice+bot"), Some(("alice", "bot")));
        assert_eq!(split_name("alice"), None);
    }
}
