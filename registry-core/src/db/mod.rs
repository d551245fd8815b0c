//! The metadata database: SQLite in WAL mode.
//!
//! rusqlite is synchronous, so every call runs on tokio's blocking pool. There is one writer
//! connection (SQLite allows one writer at a time anyway; serialising here avoids `SQLITE_BUSY`
//! retries) and a small pool of reader connections that WAL lets run beside the writer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

/// registry-core's schema: `schema.sql` is always the latest version; `migrations[i]` upgrades a
/// version `i + 1` file to version `i + 2`.
pub const REGISTRY_SCHEMA: Schema = Schema {
    create: include_str!("schema.sql"),
    migrations: &[include_str!("migrations/v2_access_token_scope.sql")],
};
const READERS: usize = 4;

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite reported an error.
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// The database file could not be opened.
    #[error("failed to open database {path:?}")]
    Open {
        /// The database path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The file has a schema this binary does not know.
    #[error(
        "database {path:?} has schema version {found}, this binary knows up to {known}: run a newer Quarry"
    )]
    SchemaVersion {
        /// The database path.
        path: PathBuf,
        /// The version found in the file.
        found: i64,
        /// The newest version this binary knows.
        known: i64,
    },
    /// The blocking task running the query panicked or was cancelled.
    #[error("database task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// A database schema: the SQL creating the latest version, and the steps upgrading older files.
#[derive(Clone, Copy, Debug)]
pub struct Schema {
    /// SQL creating the latest version from nothing.
    pub create: &'static str,
    /// `migrations[i]` upgrades a version `i + 1` database to version `i + 2`.
    pub migrations: &'static [&'static str],
}

impl Schema {
    /// The latest version (`PRAGMA user_version`): 1 plus the number of migrations.
    pub fn version(&self) -> i64 {
        1 + i64::try_from(self.migrations.len()).unwrap_or(i64::MAX - 1)
    }
}

/// Handle to the metadata database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    // WAL: readers never block the writer. synchronous=NORMAL is durable across process crashes
    // (the case we promise); a power loss may lose the last transactions but never corrupts.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(())
}

impl Db {
    /// Open (creating and migrating if needed) registry-core's database at `path`.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        Db::open_with_schema(path, &REGISTRY_SCHEMA)
    }

    /// Open (creating and migrating if needed) a database at `path` with the given schema; other
    /// crates (buildman) keep their own database files with the same connection handling.
    pub fn open_with_schema(path: &Path, schema: &Schema) -> Result<Db, DbError> {
        let open = |flags| {
            Connection::open_with_flags(path, flags).map_err(|source| DbError::Open {
                path: path.to_owned(),
                source,
            })
        };
        let writer = open(OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE)?;
        configure(&writer)?;
        let version: i64 = writer.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let latest = schema.version();
        if version == 0 {
            writer.execute_batch(&format!(
                "BEGIN; {} PRAGMA user_version = {latest}; COMMIT;",
                schema.create
            ))?;
        } else if version < latest {
            // Each step moves one version up, all of them in one transaction.
            let skip = usize::try_from(version - 1).unwrap_or(usize::MAX);
            let steps: String = schema.migrations.iter().skip(skip).copied().collect();
            writer.execute_batch(&format!(
                "BEGIN; {steps} PRAGMA user_version = {latest}; COMMIT;"
            ))?;
        } else if version > latest {
            return Err(DbError::SchemaVersion {
                path: path.to_owned(),
                found: version,
                known: latest,
            });
        }
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = open(OpenFlags::SQLITE_OPEN_READ_WRITE)?;
            configure(&r)?;
            readers.push(Mutex::new(r));
        }
        Ok(Db {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                readers,
                next_reader: std::sync::atomic::AtomicUsize::new(0),
            }),
        })
    }

    /// Run `f` inside an immediate (write-locking) transaction, committed when `f` returns `Ok`.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // A poisoned lock means a panic mid-transaction; the transaction was rolled back on
            // unwind, so the connection itself is still usable.
            let mut conn = inner.writer.lock().unwrap_or_else(|e| e.into_inner());
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(DbError::from)?;
            let out = f(&tx)?;
            tx.commit().map_err(DbError::from)?;
            Ok(out)
        })
        .await
        .map_err(DbError::from)?
    }

    /// Run read-only `f` on a reader connection (a consistent snapshot for its duration when it
    /// opens its own transaction).
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let i = inner
                .next_reader
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                % inner.readers.len();
            let conn = inner.readers[i].lock().unwrap_or_else(|e| e.into_inner());
            f(&conn)
        })
        .await
        .map_err(DbError::from)?
    }

    /// Synchronous write access for the administrator CLI (no runtime needed).
    pub fn write_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<DbError>,
        F: FnOnce(&Transaction<'_>) -> Result<T, E>,
    {
        let mut conn = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(DbError::from)?;
        let out = f(&tx)?;
        tx.commit().map_err(DbError::from)?;
        Ok(out)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_migrates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let db = Db::open(&path).unwrap();
        db.write(|tx| {
            tx.execute(
                "INSERT INTO account (name, kind, created_at) VALUES ('alice', 'user', 0)",
                [],
            )
            .map_err(DbError::from)
        })
        .await
        .unwrap();
        drop(db);
        let db = Db::open(&path).unwrap();
        let n: i64 = db
            .read(|c| {
                c.query_row("SELECT COUNT(*) FROM account", [], |r| r.get(0))
                    .map_err(DbError::from)
            })
            .await
            .unwrap();
        assert_eq!(n, 1);
    }

    #[tokio::test]
    async fn failed_closure_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.db")).unwrap();
        let r: Result<(), DbError> = db
            .write(|tx| {
                tx.execute(
                    "INSERT INTO account (name, kind, created_at) VALUES ('bob', 'user', 0)",
                    [],
                )?;
                // violates the CHECK constraint
                tx.execute(
                    "INSERT INTO account (name, kind, created_at) VALUES ('x', 'alien', 0)",
                    [],
                )?;
                Ok(())
            })
            .await;
        assert!(r.is_err());
        let n: i64 = db
            .read(|c| {
                c.query_row("SELECT COUNT(*) FROM account", [], |r| r.get(0))
                    .map_err(DbError::from)
            })
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
}
