//! Content-addressed blob store on the local filesystem, and the upload area.
//!
//! Layout under the data directory: `blobs/<alg>/<2 hex>/<hex>` for verified blobs and
//! `uploads/<uuid>` for upload sessions in progress.

pub mod cleanup;

use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A filesystem operation failed.
    #[error("failed to {op} {path:?}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Handle to the blob store; cheap to clone.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Open (creating directories as needed) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<BlobStore, StorageError> {
        for sub in ["blobs", "uploads"] {
            let p = data_dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|source| StorageError::Io {
                op: "create directory",
                path: p,
                source,
            })?;
        }
        Ok(BlobStore {
            root: data_dir.to_owned(),
        })
    }

    /// Where a verified blob lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(&digest.hex()[..2])
            .join(digest.hex())
    }

    /// Where an upload session's bytes live.
    pub fn upload_path(&self, uuid: &uuid::Uuid) -> PathBuf {
        self.root.join("uploads").join(uuid.to_string())
    }
}
