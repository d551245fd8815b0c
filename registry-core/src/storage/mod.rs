//! Content-addressed blob store on the local filesystem, and the upload area.
//!
//! Layout under the data directory: `blobs/<alg>/<2 hex>/<hex>` for verified blobs and
//! `uploads/<uuid>` for upload sessions in progress. A blob file is only ever created by renaming a
//! fully written, fsynced and digest-verified upload into place ([`upload::UploadFile::persist`]),
//! so a file in `blobs/` always matches its name.

pub mod cleanup;
pub mod upload;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    /// A blocking filesystem task panicked or was cancelled.
    #[error("storage task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// Per-upload locks: requests on one upload uuid run one at a time, uploads never wait for each
/// other. Entries are removed when the last holder or waiter lets go.
type LockMap = Mutex<HashMap<uuid::Uuid, Arc<tokio::sync::Mutex<()>>>>;

/// Handle to the blob store; cheap to clone.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
    locks: Arc<LockMap>,
}

/// Exclusive access to one upload session, released on drop.
#[derive(Debug)]
pub struct UploadGuard {
    uuid: uuid::Uuid,
    locks: Arc<LockMap>,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Two references mean the map's and ours: nobody is waiting, so forget the entry. New
        // waiters clone under the map lock, which we hold, so this cannot race with them.
        if map
            .get(&self.uuid)
            .is_some_and(|m| Arc::strong_count(m) <= 2)
        {
            map.remove(&self.uuid);
        }
    }
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
            locks: Arc::default(),
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

    /// The directory holding upload session files.
    pub fn uploads_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }

    /// Where an upload session's bytes live.
    pub fn upload_path(&self, uuid: &uuid::Uuid) -> PathBuf {
        self.uploads_dir().join(uuid.to_string())
    }

    fn lock_entry(&self, uuid: uuid::Uuid) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(uuid).or_default().clone()
    }

    /// Wait for exclusive access to upload `uuid`.
    pub async fn lock_upload(&self, uuid: uuid::Uuid) -> UploadGuard {
        let held = self.lock_entry(uuid).lock_owned().await;
        UploadGuard {
            uuid,
            locks: self.locks.clone(),
            _held: held,
        }
    }

    /// Exclusive access to upload `uuid` if nobody holds it now (for the cleanup pass).
    pub fn try_lock_upload(&self, uuid: uuid::Uuid) -> Option<UploadGuard> {
        let entry = self.lock_entry(uuid);
        match entry.try_lock_owned() {
            Ok(held) => Some(UploadGuard {
                uuid,
                locks: self.locks.clone(),
                _held: held,
            }),
            Err(_) => None,
        }
    }

    /// Remove an upload session's file; a missing file is not an error.
    pub async fn remove_upload_file(&self, uuid: &uuid::Uuid) -> Result<(), StorageError> {
        let path = self.upload_path(uuid);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StorageError::Io {
                op: "remove upload file",
                path,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn upload_locks_serialise_one_uuid_and_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let a = uuid::Uuid::new_v4();
        let b = uuid::Uuid::new_v4();
        let guard = store.lock_upload(a).await;
        assert!(store.try_lock_upload(a).is_none());
        // Another upload is independent.
        assert!(store.try_lock_upload(b).is_some());
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.lock_upload(a).await })
        };
        tokio::task::yield_now().await;
        drop(guard);
        let again = waiter.await.unwrap();
        drop(again);
        assert!(store.locks.lock().unwrap().is_empty());
    }

    #[test]
    fn blob_paths_fan_out_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::of(crate::digest::Algorithm::Sha256, b"");
        let p = store.blob_path(&d);
        assert!(p.ends_with(format!("blobs/sha256/e3/{}", d.hex())));
    }
}
