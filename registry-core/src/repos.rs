//! Repository rows: lookup by name and creation on first push.

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::db::{Db, DbError, now_ms};
use crate::names::RepoName;

/// Public or private.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// Anyone (including anonymous clients, when allowed) may pull.
    Public,
    /// Only accounts with a permission may pull.
    Private,
}

impl Visibility {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
        }
    }
}

/// A repository row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repo {
    /// Row id.
    pub id: i64,
    /// Owning namespace's account id.
    pub namespace_id: i64,
    /// Visibility.
    pub visibility: Visibility,
}

/// Look a repository up by full name.
pub fn find(conn: &Connection, name: &RepoName) -> Result<Option<Repo>, DbError> {
    // Cached: every distribution call looks its repository up through here.
    Ok(conn
        .prepare_cached("SELECT id, namespace_id, visibility FROM repository WHERE name = ?1")?
        .query_row(params![name.as_str()], |r| {
            let vis: String = r.get(2)?;
            Ok(Repo {
                id: r.get(0)?,
                namespace_id: r.get(1)?,
                visibility: if vis == "public" {
                    Visibility::Public
                } else {
                    Visibility::Private
                },
            })
        })
        .optional()?)
}

/// Whether the repository exists and is public.
pub async fn is_public(db: &Db, name: &RepoName) -> Result<bool, DbError> {
    let name = name.clone();
    db.read(move |c| Ok(find(c, &name)?.is_some_and(|r| r.visibility == Visibility::Public)))
        .await
}

/// Create the repository (its namespace must be an existing user or organisation); returns the row,
/// or the existing row when it already exists. `None` when the namespace does not exist.
pub fn create(
    conn: &Connection,
    name: &RepoName,
    visibility: Visibility,
) -> Result<Option<Repo>, DbError> {
    if let Some(r) = find(conn, name)? {
        return Ok(Some(r));
    }
    let ns: Option<i64> = conn
        .query_row(
            "SELECT id FROM account WHERE name = ?1 AND kind IN ('user', 'org')",
            params![name.namespace()],
            |r| r.get(0),
        )
        .optional()?;
    let Some(ns) = ns else { return Ok(None) };
    conn.execute(
        "INSERT INTO repository (namespace_id, name, visibility, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![ns, name.as_str(), visibility.as_str(), now_ms()],
    )?;
    find(conn, name)
}
