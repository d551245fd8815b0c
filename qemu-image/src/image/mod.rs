//! The builder VM image: what it contains, where it lives, and how `qemu-image build` makes it.
//!
//! An image is a directory named after the hash of its inputs, holding [`KERNEL_FILE`],
//! [`INITRD_FILE`], [`ROOTFS_FILE`] and [`MANIFEST_FILE`]. [`Image::open`] verifies every file
//! against the manifest's sha256 before anything boots it.

use std::path::{Path, PathBuf};

pub mod build;
pub mod cache;
pub mod debs;
pub mod initrd;
pub mod inputs;
pub mod lease;
pub mod manifest;
pub mod rootfs;
mod run;

pub use build::{BuildError, BuildOptions, build};
pub use cache::{cache_dir, current};
pub use lease::ImageLease;
pub use manifest::{ImageError, Manifest};
pub use run::RunError;

/// The kernel (Debian's cloud kernel, `vmlinuz`).
pub const KERNEL_FILE: &str = "vmlinuz";
/// The stage-1 initramfs (busybox, the virtio/squashfs/overlay modules, our stage-1 script).
pub const INITRD_FILE: &str = "initrd.img";
/// The read-only root filesystem (squashfs): podman, runc, CA certificates, dropbear,
/// `builder-agent`, `quarry-init`.
pub const ROOTFS_FILE: &str = "rootfs.squashfs";
/// The manifest: inputs (package versions, binary hashes) and outputs (sizes, sha256).
pub const MANIFEST_FILE: &str = "manifest.json";

/// A built image directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The directory.
    pub dir: PathBuf,
}

impl Image {
    /// The kernel path.
    pub fn kernel(&self) -> PathBuf {
        self.dir.join(KERNEL_FILE)
    }
    /// The initramfs path.
    pub fn initrd(&self) -> PathBuf {
        self.dir.join(INITRD_FILE)
    }
    /// The root filesystem path.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join(ROOTFS_FILE)
    }
    /// The manifest path.
    pub fn manifest(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }
    /// An image at `dir`, not yet verified.
    pub fn at(dir: impl AsRef<Path>) -> Image {
        Image {
            dir: dir.as_ref().to_path_buf(),
        }
    }
}
