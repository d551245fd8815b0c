//! Repository administration beside the distribution API: explicit creation, visibility and
//! description. (A push creates repositories too; that path lives in `v2`.)

use rusqlite::{Connection, OptionalExtension as _, params};

use super::AccountError;
use crate::names::RepoName;
use crate::repos::{self, Repo, Visibility};

/// Parse `public` or `private`.
pub fn parse_visibility(s: &str) -> Result<Visibility, AccountError> {
    match s {
        "public" => Ok(Visibility::Public),
        "private" => Ok(Visibility::Private),
        _ => Err(AccountError::InvalidChoice {
            field: "visibility",
            value: s.to_owned(),
            expected: "public, private",
        }),
    }
}

/// Create `name`; its namespace must be an existing user or organisation, and it must not exist.
pub fn create(
    conn: &Connection,
    name: &RepoName,
    visibility: Visibility,
    description: &str,
) -> Result<Repo, AccountError> {
    super::get_namespace(conn, name.namespace())?;
    if repos::find(conn, name)?.is_some() {
        return Err(AccountError::AlreadyExists {
            kind: "repository",
            name: name.to_string(),
        });
    }
    let repo = repos::create(conn, name, visibility)?.ok_or_else(|| AccountError::NotFound {
        kind: "namespace",
        name: name.namespace().to_owned(),
    })?;
    conn.execute(
        "UPDATE repository SET description = ?1 WHERE id = ?2",
        params![description, repo.id],
    )?;
    Ok(repo)
}

/// The existing repository `name`.
pub fn get(conn: &Connection, name: &RepoName) -> Result<Repo, AccountError> {
    repos::find(conn, name)?.ok_or_else(|| AccountError::NotFound {
        kind: "repository",
        name: name.to_string(),
    })
}

/// Make `name` public or private.
pub fn set_visibility(
    conn: &Connection,
    name: &RepoName,
    visibility: Visibility,
) -> Result<(), AccountError> {
    let repo = get(conn, name)?;
    conn.execute(
        "UPDATE repository SET visibility = ?1 WHERE id = ?2",
        params![visibility.as_str(), repo.id],
    )?;
    Ok(())
}

/// The description of `name`.
pub fn description(conn: &Connection, name: &RepoName) -> Result<String, AccountError> {
    conn.query_row(
        "SELECT description FROM repository WHERE name = ?1",
        params![name.as_str()],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| AccountError::NotFound {
        kind: "repository",
        name: name.to_string(),
    })
}

/// A live tag, for the REST view of a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagInfo {
    /// Tag name.
    pub name: String,
    /// The manifest it points to.
    pub manifest_digest: String,
    /// When it was last moved, Unix milliseconds.
    pub last_modified_ms: i64,
}

/// The live tags of `repo`, by name.
pub fn live_tags(conn: &Connection, repo: &Repo) -> Result<Vec<TagInfo>, AccountError> {
    let mut stmt = conn.prepare(
        "SELECT name, manifest_digest, lifetime_start_ms FROM tag
         WHERE repository_id = ?1 AND lifetime_end_ms IS NULL ORDER BY name",
    )?;
    let rows = stmt.query_map(params![repo.id], |r| {
        Ok(TagInfo {
            name: r.get(0)?,
            manifest_digest: r.get(1)?,
            last_modified_ms: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::super::{robots, test_support, users};
    use super::*;

    #[test]
    fn create_checks_namespace_and_duplicates() {
        let c = test_support::db();
        let alice = users::create(&c, "alice", None, None).unwrap();
        robots::create(&c, &alice, "bot", "").unwrap();
        let name: RepoName = "alice/app".parse().unwrap();
        let repo = create(&c, &name, Visibility::Private, "my app").unwrap();
        assert_eq!(repo.visibility, Visibility::Private);
        assert_eq!(description(&c, &name).unwrap(), "my app");
        let err = create(&c, &name, Visibility::Private, "").unwrap_err();
        assert_eq!(err.to_string(), "repository \"alice/app\" already exists");
        let err = create(&c, &"nobody/app".parse().unwrap(), Visibility::Public, "");
        assert_eq!(
            err.unwrap_err().to_string(),
            "namespace \"nobody\" does not exist"
        );
        set_visibility(&c, &name, Visibility::Public).unwrap();
        assert_eq!(get(&c, &name).unwrap().visibility, Visibility::Public);
        assert!(live_tags(&c, &repo).unwrap().is_empty());
        assert!(parse_visibility("internal").is_err());
    }
}
