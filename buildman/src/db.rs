//! buildman's database: `builds.db` in `DATA_DIR`, a separate SQLite file from registry-core's
//! `meta.db`, with registry-core's connection handling (WAL, one writer, pooled readers).

use std::path::Path;

use registry_core::db::{Db, DbError, Schema};

/// buildman's schema; `migrations[i]` upgrades version `i + 1` to `i + 2`.
pub const BUILD_SCHEMA: Schema = Schema {
    create: concat!(include_str!("schema.sql"), include_str!("schema_v2.sql")),
    migrations: &[include_str!("schema_v2.sql")],
};

/// Why a build-database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildDbError {
    /// The database layer failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A stored JSON column did not parse (a bug or a hand-edited database).
    #[error("stored {column} of build {uuid} is not valid JSON")]
    Json {
        /// The column.
        column: &'static str,
        /// The build.
        uuid: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A stored phase is not one buildman knows.
    #[error("build {uuid} has unknown phase {phase:?}")]
    UnknownPhase {
        /// The build.
        uuid: String,
        /// The stored text.
        phase: String,
    },
    /// No build with that id.
    #[error("build {0} not found")]
    NotFound(String),
}

impl From<rusqlite::Error> for BuildDbError {
    fn from(e: rusqlite::Error) -> Self {
        BuildDbError::Db(DbError::from(e))
    }
}

/// Open (creating or migrating) `builds.db` under `data_dir`.
pub fn open(data_dir: &Path) -> Result<Db, DbError> {
    Db::open_with_schema(&data_dir.join("builds.db"), &BUILD_SCHEMA)
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A fresh database in a temp dir (kept alive by the returned guard).
    pub(crate) fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path()).expect("open builds.db");
        (dir, db)
    }
}
