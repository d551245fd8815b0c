//! `manifest.json`: an image's inputs, its package versions, and every output file's size and
//! sha256; [`Image::open`] checks the files against it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::inputs::{Inputs, sha256_file};
use super::{INITRD_FILE, Image, KERNEL_FILE, MANIFEST_FILE, ROOTFS_FILE};

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image's lease lock could not be taken (see [`Image::hold`]).
    #[error("cannot take a lease on the VM image via {path:?}: retry, or run `qemu-image build`")]
    Lease {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// There is no `current` link: nothing was built yet.
    #[error("no VM image found at {link:?}: run `qemu-image build` first")]
    NoCurrent {
        /// The link.
        link: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is missing or unreadable.
    #[error("cannot read the VM image manifest {path:?}: run `qemu-image build` (with --force)")]
    ReadManifest {
        /// The manifest path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("the VM image manifest {path:?} is invalid: run `qemu-image build --force`")]
    ParseManifest {
        /// The manifest path.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An output file is missing or unreadable.
    #[error("cannot read VM image file {path:?}: run `qemu-image build --force`")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An output file does not match the manifest (size or sha256).
    #[error(
        "VM image file {path:?} does not match its manifest (expected sha256 {expected}, found \
         {found}): the image is corrupt or was modified; run `qemu-image build --force`"
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The manifest's sha256.
        expected: String,
        /// The file's actual sha256.
        found: String,
    },
    /// The manifest does not list a file every image has.
    #[error("the VM image manifest {path:?} does not list {file}: run `qemu-image build --force`")]
    Unlisted {
        /// The manifest path.
        path: PathBuf,
        /// The missing entry.
        file: &'static str,
    },
}

/// One output file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Size in bytes.
    pub size: u64,
    /// sha256, lowercase hex.
    pub sha256: String,
}

/// The kernel an image boots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelInfo {
    /// The Debian package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// Its Debian version, e.g. `6.1.192-2`.
    pub version: String,
    /// `uname -r`, the `/lib/modules` directory name, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// sha256 of the `.deb` (as apt's index lists it).
    pub deb_sha256: String,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The image id (the directory name): [`Inputs::id`].
    pub id: String,
    /// What the image was made from.
    pub inputs: Inputs,
    /// The Debian mirror debootstrap used.
    pub mirror: String,
    /// Every package in the root filesystem, `name=version` (from `dpkg-query -W`), sorted.
    pub packages: Vec<String>,
    /// The kernel.
    pub kernel: KernelInfo,
    /// Modules in the initramfs (paths below `/lib/modules/<release>`).
    pub initrd_modules: Vec<String>,
    /// Output files by name.
    pub files: BTreeMap<String, FileEntry>,
}

impl Manifest {
    /// Reads `<dir>/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest, ImageError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(|source| ImageError::ReadManifest {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| ImageError::ParseManifest { path, source })
    }

    /// The manifest as pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings, integers and maps with string keys always serialise.
        let mut out = serde_json::to_vec_pretty(self).expect("manifest serialises to JSON");
        out.push(b'\n');
        out
    }

    /// Checks that every image file is listed and that every listed file in `dir` has its size
    /// and sha256.
    pub fn verify(&self, dir: &Path) -> Result<(), ImageError> {
        for file in [KERNEL_FILE, INITRD_FILE, ROOTFS_FILE] {
            if !self.files.contains_key(file) {
                return Err(ImageError::Unlisted {
                    path: dir.join(MANIFEST_FILE),
                    file,
                });
            }
        }
        for (name, want) in &self.files {
            let path = dir.join(name);
            let found = file_entry(&path)?;
            if &found != want {
                return Err(ImageError::Mismatch {
                    path,
                    expected: want.sha256.clone(),
                    found: found.sha256,
                });
            }
        }
        Ok(())
    }
}

/// Size and sha256 of `path`.
pub fn file_entry(path: &Path) -> Result<FileEntry, ImageError> {
    let read = |source| ImageError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read)?.len();
    let sha256 = sha256_file(path).map_err(read)?;
    Ok(FileEntry { size, sha256 })
}

impl Image {
    /// The image at `dir`, after checking every file against its manifest's sha256.
    pub fn open(dir: &Path) -> Result<Image, ImageError> {
        Manifest::read(dir)?.verify(dir)?;
        Ok(Image::at(dir))
    }

    /// The image's manifest (not verified; see [`Image::open`]).
    pub fn read_manifest(&self) -> Result<Manifest, ImageError> {
        Manifest::read(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::inputs::{BASE_RECIPE_VERSION, RECIPE_VERSION, SUITE};

    fn write_image(dir: &Path) -> Manifest {
        let mut files = BTreeMap::new();
        for (name, content) in [
            (KERNEL_FILE, &b"kernel"[..]),
            (INITRD_FILE, b"initrd"),
            (ROOTFS_FILE, b"rootfs"),
        ] {
            std::fs::write(dir.join(name), content).unwrap();
            files.insert(name.to_string(), file_entry(&dir.join(name)).unwrap());
        }
        let inputs = Inputs {
            recipe_version: RECIPE_VERSION,
            base_recipe_version: BASE_RECIPE_VERSION,
            suite: SUITE.into(),
            packages: vec!["podman".into()],
            kernel_package: "linux-image-x".into(),
            kernel_version: "1".into(),
            busybox_version: "2".into(),
            agent_sha256: "a".into(),
            init_sha256: "b".into(),
            stage1_sha256: "c".into(),
            recipe_sha256: "d".into(),
            base_recipe_sha256: "e".into(),
            package_versions: vec![],
        };
        let manifest = Manifest {
            id: inputs.id(),
            inputs,
            mirror: "http://deb.debian.org/debian".into(),
            packages: vec!["podman=4.3.1+ds1-8+deb12u1".into()],
            kernel: KernelInfo {
                package: "linux-image-x".into(),
                version: "1".into(),
                release: "6.1.0-56-cloud-amd64".into(),
                deb_sha256: "d".into(),
            },
            initrd_modules: vec!["kernel/fs/overlayfs/overlay.ko".into()],
            files,
        };
        std::fs::write(dir.join(MANIFEST_FILE), manifest.to_json()).unwrap();
        manifest
    }

    #[test]
    fn manifest_round_trips_and_a_good_image_opens() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_image(dir.path());
        assert_eq!(Manifest::read(dir.path()).unwrap(), written);
        let image = Image::open(dir.path()).unwrap();
        assert_eq!(image.read_manifest().unwrap(), written);
        assert_eq!(
            written.files[KERNEL_FILE].sha256,
            crate::image::inputs::sha256_hex(b"kernel")
        );
    }

    #[test]
    fn a_modified_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        write_image(dir.path());
        std::fs::write(dir.path().join(ROOTFS_FILE), b"rootfX").unwrap();
        let err = Image::open(dir.path()).unwrap_err();
        assert!(matches!(err, ImageError::Mismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(ROOTFS_FILE) && msg.contains("qemu-image build"),
            "{msg}"
        );
    }

    #[test]
    fn missing_file_or_manifest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Image::open(dir.path()).unwrap_err(),
            ImageError::ReadManifest { .. }
        ));
        write_image(dir.path());
        std::fs::remove_file(dir.path().join(INITRD_FILE)).unwrap();
        let err = Image::open(dir.path()).unwrap_err();
        assert!(matches!(err, ImageError::ReadFile { .. }), "{err}");
        std::fs::write(dir.path().join(MANIFEST_FILE), b"{}").unwrap();
        let err = Image::open(dir.path()).unwrap_err();
        assert!(matches!(err, ImageError::ParseManifest { .. }), "{err}");
    }

    #[test]
    fn a_manifest_without_the_rootfs_entry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = write_image(dir.path());
        m.files.remove(ROOTFS_FILE);
        std::fs::write(dir.path().join(MANIFEST_FILE), m.to_json()).unwrap();
        let err = Image::open(dir.path()).unwrap_err();
        assert!(matches!(err, ImageError::Unlisted { .. }), "{err}");
    }
}
