//! The bytes of an upload session: append a request body to `uploads/<uuid>` while hashing it,
//! roll back a failed append, and move a verified upload into the blob store.
//!
//! Crash safety comes from the caller's protocol: after [`UploadFile::append`] succeeds, the caller
//! stores the new offset and [`crate::digest::Hasher::save`] state in one database transaction.
//! [`UploadFile::open`] then discards whatever lies past the committed offset (a crash or a client
//! disconnect mid-write), so the file and the saved hash state always describe the same bytes.
//! We do not fsync per chunk: a killed process leaves its writes in the page cache; only the final
//! blob is fsynced. After a power loss, a session whose file is shorter than its offset is reported
//! as lost ([`UploadFile::open`] returns `None`) and the client starts over.

use std::fs::{File, OpenOptions};
use std::io::{Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};

use crate::digest::Hasher;
use crate::storage::{StorageError, UploadGuard};

/// Chunks in flight between the request body and the writer thread. hyper's frames can be a few
/// hundred KiB, so this bounds per-upload memory; 32 cost ~25 MiB of peak RSS in
/// bench-registry.sh for no throughput gain over 4 (the disk, not the socket, is the limit).
const CHANNEL_DEPTH: usize = 4;
/// Writes are coalesced to about this size: fewer, larger `write` calls than hyper's frames.
const WRITE_BUFFER: usize = 256 << 10;

/// Why appending a request body failed; the file is back at its previous length in every case.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Writing the upload file failed.
    #[error("failed to write upload file {path:?}")]
    Io {
        /// The upload file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The request body stream failed (client disconnect, bad chunked encoding).
    #[error("request body failed after {received} bytes")]
    Body {
        /// Bytes received before the failure.
        received: u64,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The upload would grow past the blob size limit.
    #[error("upload exceeds the blob size limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The body length differs from what `Content-Range` announced.
    #[error("Content-Range announced {expected} bytes but the body had {received}")]
    LengthMismatch {
        /// Announced length.
        expected: u64,
        /// Received length (at least; reading stops once it is exceeded).
        received: u64,
    },
    /// The writer task panicked or was cancelled.
    #[error("upload writer task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// An open upload session file positioned at its committed end, with the hash of its contents.
///
/// It owns the session's lock ([`UploadGuard`]) and moves it into the blocking writer thread: if
/// the request is dropped mid-body (client disconnect), the thread still drains its chunks, and
/// the next request on the session must not touch the file before it has finished.
#[derive(Debug)]
pub struct UploadFile {
    file: File,
    path: PathBuf,
    offset: u64,
    hasher: Hasher,
    guard: Option<UploadGuard>,
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

impl UploadFile {
    /// Open (creating if needed) the file of a session whose committed length is `offset` and
    /// whose hash state is `hasher`, holding the session's lock `guard` (none for a file no other
    /// request can know). Bytes past `offset` are discarded. `None` when the file is shorter than
    /// `offset`: the session's bytes are lost and it cannot continue.
    pub async fn open(
        path: PathBuf,
        offset: u64,
        hasher: Hasher,
        guard: Option<UploadGuard>,
    ) -> Result<Option<UploadFile>, StorageError> {
        tokio::task::spawn_blocking(move || {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err("open upload file", &path))?;
            let len = file
                .metadata()
                .map_err(io_err("stat upload file", &path))?
                .len();
            if len < offset {
                return Ok(None);
            }
            if len > offset {
                tracing::warn!(
                    ?path,
                    len,
                    offset,
                    "discarding upload bytes past the committed offset"
                );
                file.set_len(offset)
                    .map_err(io_err("truncate upload file", &path))?;
            }
            (&file)
                .seek(SeekFrom::Start(offset))
                .map_err(io_err("seek upload file", &path))?;
            Ok(Some(UploadFile {
                file,
                path,
                offset,
                hasher,
                guard,
            }))
        })
        .await?
    }

    /// The file's length (everything appended so far).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The hash of everything in the file.
    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// Stream `body` onto the end of the file, hashing as it goes; never buffers the whole body.
    /// The network side and the disk side run concurrently: this task reads the body while a
    /// blocking thread writes and hashes. The file may not grow past `limit` bytes; `expected` is
    /// the length announced by `Content-Range`. On any failure the file is truncated back.
    pub async fn append<S, E>(
        self,
        body: S,
        limit: u64,
        expected: Option<u64>,
    ) -> Result<UploadFile, AppendError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::error::Error + Send + Sync + 'static,
    {
        let start = self.offset;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_DEPTH);
        let writer = tokio::task::spawn_blocking(move || {
            let mut this = self;
            let res = this.pump(rx);
            (this, res)
        });
        let mut received = 0u64;
        let mut failure = None;
        let mut body = std::pin::pin!(body);
        while let Some(item) = body.next().await {
            match item {
                Ok(chunk) => {
                    received += chunk.len() as u64;
                    if start.saturating_add(received) > limit {
                        failure = Some(AppendError::TooLarge { limit });
                        break;
                    }
                    if let Some(expected) = expected.filter(|e| received > *e) {
                        failure = Some(AppendError::LengthMismatch { expected, received });
                        break;
                    }
                    if tx.send(chunk).await.is_err() {
                        // The writer stopped on an I/O error, reported below.
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(AppendError::Body {
                        received,
                        source: Box::new(e),
                    });
                    break;
                }
            }
        }
        drop(tx);
        let (this, written) = writer.await?;
        let failure = match (failure, written) {
            (Some(f), _) => Some(f),
            (None, Err(source)) => Some(AppendError::Io {
                path: this.path.clone(),
                source,
            }),
            (None, Ok(())) => expected
                .filter(|e| *e != received)
                .map(|expected| AppendError::LengthMismatch { expected, received }),
        };
        match failure {
            None => Ok(this),
            Some(f) => {
                let path = this.path.clone();
                // `this` (and so the lock) goes with the truncation, which finishes even if this
                // request is dropped meanwhile.
                tokio::task::spawn_blocking(move || {
                    let this = this; // the whole value, not just the `file` field
                    this.file.set_len(start)
                })
                .await?
                .map_err(|source| AppendError::Io { path, source })?;
                Err(f)
            }
        }
    }

    // Runs on the blocking pool: write and hash every chunk until the sender is dropped. Chunks
    // are coalesced into writes of about WRITE_BUFFER bytes; the buffer grows on demand, so a
    // small upload does not pay for a large allocation.
    fn pump(&mut self, mut rx: tokio::sync::mpsc::Receiver<Bytes>) -> std::io::Result<()> {
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            self.hasher.update(&chunk);
            self.offset += chunk.len() as u64;
            if buf.is_empty() && chunk.len() >= WRITE_BUFFER {
                (&self.file).write_all(&chunk)?;
                continue;
            }
            buf.extend_from_slice(&chunk);
            if buf.len() >= WRITE_BUFFER {
                (&self.file).write_all(&buf)?;
                buf.clear();
            }
        }
        (&self.file).write_all(&buf)
    }

    /// Make the (verified) upload the blob at `dest`: fsync, create the fan-out directory, rename.
    /// Renaming onto an existing file is fine: blob files are named by their content, so an
    /// existing file holds the same bytes (two concurrent uploads of one blob both succeed).
    /// Returns the session's lock, for the caller to hold until the blob rows are committed.
    pub async fn persist(self, dest: PathBuf) -> Result<Option<UploadGuard>, StorageError> {
        tokio::task::spawn_blocking(move || {
            self.file
                .sync_data()
                .map_err(io_err("fsync upload file", &self.path))?;
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(io_err("create blob directory", parent))?;
            }
            std::fs::rename(&self.path, &dest).map_err(io_err("rename upload into", &dest))?;
            // Make the rename itself durable before the caller inserts the blob row, so that a
            // power loss cannot keep the row and lose the file.
            if let Some(parent) = dest.parent() {
                std::fs::File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err("fsync blob directory", parent))?;
            }
            Ok(self.guard)
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{Algorithm, Digest};

    fn chunks(parts: &[&[u8]]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
        let v: Vec<_> = parts
            .iter()
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect();
        futures_util::stream::iter(v)
    }

    #[tokio::test]
    async fn append_writes_hashes_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u");
        let f = UploadFile::open(path.clone(), 0, Hasher::new(Algorithm::Sha256), None)
            .await
            .unwrap()
            .unwrap();
        let f = f
            .append(chunks(&[b"hello ", b"world"]), 100, None)
            .await
            .unwrap();
        assert_eq!(f.offset(), 11);
        assert_eq!(
            f.hasher().current(),
            Digest::of(Algorithm::Sha256, b"hello world")
        );
        let dest = dir.path().join("blobs/x/y");
        f.persist(dest.clone()).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello world");
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn failed_body_and_limits_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u");
        let open = |off| UploadFile::open(path.clone(), off, Hasher::new(Algorithm::Sha256), None);
        let f = open(0).await.unwrap().unwrap();
        let f = f.append(chunks(&[b"abc"]), 100, Some(3)).await.unwrap();
        drop(f);
        let broken = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"defg")),
            Err(std::io::Error::other("client went away")),
        ]);
        let err = open(3)
            .await
            .unwrap()
            .unwrap()
            .append(broken, 100, None)
            .await;
        assert!(matches!(err, Err(AppendError::Body { received: 4, .. })));
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        let err = open(3)
            .await
            .unwrap()
            .unwrap()
            .append(chunks(&[b"xxxx"]), 5, None)
            .await;
        assert!(matches!(err, Err(AppendError::TooLarge { limit: 5 })));
        let err = open(3)
            .await
            .unwrap()
            .unwrap()
            .append(chunks(&[b"xy"]), 100, Some(3))
            .await;
        assert!(matches!(err, Err(AppendError::LengthMismatch { .. })));
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
    }

    #[tokio::test]
    async fn an_abandoned_append_keeps_the_lock_until_its_writer_ends() {
        // A client disconnect drops the request future mid-body; the writer thread still owns the
        // lock, so no other request can touch the file until it is done.
        let dir = tempfile::tempdir().unwrap();
        let store = crate::storage::BlobStore::open(dir.path()).unwrap();
        let id = uuid::Uuid::new_v4();
        let guard = store.lock_upload(id).await;
        let path = store.upload_path(&id);
        let f = UploadFile::open(path.clone(), 0, Hasher::new(Algorithm::Sha256), Some(guard))
            .await
            .unwrap()
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let body = futures_util::stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|item| (item, rx))
        });
        let request = tokio::spawn(f.append(body, u64::MAX, None));
        tx.send(Ok(Bytes::from(vec![7u8; 1 << 20]))).await.unwrap();
        assert!(
            store.try_lock_upload(id).is_none(),
            "lock held during the append"
        );
        request.abort();
        drop(tx);
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), store.lock_upload(id))
            .await
            .expect("the lock is released once the writer has finished");
        // The next request discards the uncommitted bytes.
        let f = UploadFile::open(path.clone(), 0, Hasher::new(Algorithm::Sha256), Some(next))
            .await
            .unwrap()
            .unwrap();
        drop(f);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[tokio::test]
    async fn open_truncates_extra_bytes_and_detects_lost_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u");
        std::fs::write(&path, b"committed+garbage").unwrap();
        let f = UploadFile::open(path.clone(), 9, Hasher::new(Algorithm::Sha256), None)
            .await
            .unwrap()
            .unwrap();
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), b"committed");
        let lost = UploadFile::open(path, 100, Hasher::new(Algorithm::Sha256), None)
            .await
            .unwrap();
        assert!(lost.is_none());
    }
}
