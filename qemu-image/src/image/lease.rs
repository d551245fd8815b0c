//! [`ImageLease`]: a shared `flock` on an image's [`LOCK_FILE`] that keeps [`super::cache::prune`]
//! from deleting an image a running buildman (or `qemu-image boot`) still uses. Prune takes the
//! lock exclusively without blocking and skips the image when it cannot.
//!
//! `flock(2)` through nix (std's `File::try_lock*` is newer than the workspace's MSRV).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::{Image, ImageError};

/// The lock file inside an image directory.
pub const LOCK_FILE: &str = ".lease.lock";

/// A held image: the shared lock lasts as long as this value.
#[derive(Debug)]
pub struct ImageLease {
    /// The locked file (the lock is released when it is dropped).
    _lock: Flock<File>,
    /// The image directory.
    dir: PathBuf,
}

impl ImageLease {
    /// The held image's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Image {
    /// Takes a shared lease on the image: while it lives, [`super::cache::prune`] leaves the
    /// image alone. Fails without waiting when a prune is deleting the image right now.
    pub fn hold(&self) -> Result<ImageLease, ImageError> {
        let path = self.dir.join(LOCK_FILE);
        let err = |source| ImageError::Lease {
            path: path.clone(),
            source,
        };
        let file = open_lock(&path).map_err(err)?;
        let file = match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "the image is being pruned",
                )));
            }
            Err((_, e)) => return Err(err(e.into())),
        };
        // A prune that held the lock until it deleted the directory leaves us a lock on an
        // unlinked file: the path must still name the file we locked.
        let same = match (file.metadata(), std::fs::metadata(&path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if !same {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the image was pruned",
            )));
        }
        Ok(ImageLease {
            _lock: file,
            dir: self.dir.clone(),
        })
    }
}

fn open_lock(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// For prune: an exclusive lock on `dir`'s lock file, or `None` when a lease holds it.
pub(crate) fn try_exclusive(dir: &Path) -> std::io::Result<Option<Flock<File>>> {
    let file = open_lock(&dir.join(LOCK_FILE))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_blocks_the_exclusive_lock_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let image = Image::at(dir.path());
        let lease = image.hold().unwrap();
        assert_eq!(lease.dir(), dir.path());
        // Shared leases coexist.
        let second = image.hold().unwrap();
        assert!(try_exclusive(dir.path()).unwrap().is_none());
        drop(lease);
        assert!(try_exclusive(dir.path()).unwrap().is_none());
        drop(second);
        let exclusive = try_exclusive(dir.path()).unwrap();
        assert!(exclusive.is_some());
        // While prune holds it, hold fails at once.
        let err = image.hold().unwrap_err();
        assert!(err.to_string().contains("lease"), "{err}");
    }

    #[test]
    fn hold_fails_on_a_missing_image() {
        let dir = tempfile::tempdir().unwrap();
        let image = Image::at(dir.path().join("gone"));
        assert!(matches!(image.hold(), Err(ImageError::Lease { .. })));
    }
}
