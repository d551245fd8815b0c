//! Shared state of the server, handed to every handler.

use std::sync::Arc;

use crate::auth::token::{TokenError, TokenKeys};
use crate::config::Config;
use crate::db::{Db, DbError};
use crate::storage::{BlobStore, StorageError};

/// Why the server state could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The data directory could not be created.
    #[error("failed to create data directory {path:?}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error("failed to open the metadata database")]
    Db(#[from] DbError),
    /// The blob store could not be opened.
    #[error("failed to open the blob store")]
    Storage(#[from] StorageError),
    /// The signing key could not be loaded.
    #[error("failed to load the token signing key")]
    Keys(#[from] TokenError),
}

/// Everything a handler needs; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Metadata database.
    pub db: Db,
    /// Content-addressed blob store and upload area.
    pub blobs: BlobStore,
    /// Token signing key.
    pub keys: Arc<TokenKeys>,
}

impl AppState {
    /// Open everything under `config.data_dir`: `meta.db`, `blobs/`, `uploads/`, `signing-key.pem`.
    pub fn open(config: Config) -> Result<AppState, StateError> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| StateError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let db = Db::open(&dir.join("meta.db"))?;
        let blobs = BlobStore::open(&dir)?;
        let keys = TokenKeys::load_or_generate(&dir.join("signing-key.pem"))?;
        Ok(AppState {
            config: Arc::new(config),
            db,
            blobs,
            keys: Arc::new(keys),
        })
    }
}
