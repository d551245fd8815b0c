//! Where images live: the cache directory, the `current` link, and pruning of old images.
//!
//! Layout below the cache directory:
//! - `debs/`: downloaded `.deb` files (debootstrap's `--cache-dir` and the kernel package);
//! - `vm-base/<hash16>/`: debootstrapped root trees, keyed by the package inputs only;
//! - `vm-images/<hash16>/`: finished images, keyed by every input;
//! - `vm-images/current`: a symbolic link to the newest image's directory name.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::lease::try_exclusive;
use super::{Image, ImageError, MANIFEST_FILE};

/// The images directory below the cache.
pub const IMAGES_DIR: &str = "vm-images";
/// The base-tree directory below the cache.
pub const BASE_DIR: &str = "vm-base";
/// The downloaded-packages directory below the cache.
pub const DEBS_DIR: &str = "debs";
/// The link naming the newest image, inside [`IMAGES_DIR`].
pub const CURRENT_LINK: &str = "current";
/// How many finished images [`prune`] keeps.
pub const KEEP_IMAGES: usize = 2;

/// The cache directory: `$QUARRY_CACHE_DIR`, else `$XDG_CACHE_HOME/quarry`, else
/// `$HOME/.cache/quarry` (else `/var/cache/quarry` when even `HOME` is unset).
pub fn cache_dir() -> PathBuf {
    cache_dir_from(
        std::env::var_os("QUARRY_CACHE_DIR"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
}

/// [`cache_dir`] from explicit values; empty values count as unset.
pub fn cache_dir_from(
    quarry: Option<OsString>,
    xdg: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(quarry) {
        return dir;
    }
    if let Some(dir) = set(xdg) {
        return dir.join("quarry");
    }
    match set(home) {
        Some(home) => home.join(".cache").join("quarry"),
        None => PathBuf::from("/var/cache/quarry"),
    }
}

/// The current image below `cache`, verified (see [`Image::open`]).
pub fn current(cache: &Path) -> Result<Image, ImageError> {
    let link = cache.join(IMAGES_DIR).join(CURRENT_LINK);
    let target = std::fs::read_link(&link).map_err(|source| ImageError::NoCurrent {
        link: link.clone(),
        source,
    })?;
    Image::open(&cache.join(IMAGES_DIR).join(target))
}

/// Points `<images>/current` at `<images>/<name>`, atomically (new link, then rename over).
pub fn set_current(images: &Path, name: &str) -> Result<(), std::io::Error> {
    let tmp = images.join(format!(".{CURRENT_LINK}.tmp"));
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(name, &tmp)?;
    std::fs::rename(&tmp, images.join(CURRENT_LINK))
}

/// What [`prune`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Deleted image and staging directories.
    pub deleted: Vec<PathBuf>,
    /// Images due for deletion but left alone because a lease ([`Image::hold`]) holds them.
    pub in_use: Vec<PathBuf>,
}

/// Deletes finished images beyond the [`KEEP_IMAGES`] newest (by manifest time), never the one
/// `current` names nor one held by a lease ([`Image::hold`]; such images are listed in
/// [`Pruned::in_use`]), and staging directories (`.<name>.tmp-*`) left by builds that are no
/// longer running.
pub fn prune(images: &Path) -> Result<Pruned, std::io::Error> {
    let current = std::fs::read_link(images.join(CURRENT_LINK))
        .ok()
        .and_then(|t| t.to_str().map(str::to_string));
    let mut finished = Vec::new();
    let mut pruned = Pruned::default();
    for entry in std::fs::read_dir(images)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_dir() {
            continue;
        }
        if name.starts_with('.') && name.contains(".tmp-") {
            if !staging_owner_alive(&name) {
                remove_dir_all(&entry.path())?;
                pruned.deleted.push(entry.path());
            }
            continue;
        }
        // A directory without a manifest is not an image (or a broken one): left alone.
        if let Ok(meta) = std::fs::metadata(entry.path().join(MANIFEST_FILE)) {
            finished.push((name, meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        }
    }
    for name in to_prune(finished, KEEP_IMAGES, current.as_deref()) {
        let path = images.join(&name);
        // Held exclusively while the directory is moved aside, so a lease taken meanwhile
        // either fails at once or sees that its lock file is gone (see `Image::hold`).
        let Some(_lock) = try_exclusive(&path)? else {
            pruned.in_use.push(path);
            continue;
        };
        let aside = images.join(format!(".{name}.tmp-old-{}", std::process::id()));
        std::fs::rename(&path, &aside)?;
        remove_dir_all(&aside)?;
        pruned.deleted.push(path);
    }
    Ok(pruned)
}

/// `remove_dir_all`, where a directory already gone is no error.
pub(crate) fn remove_dir_all(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether the build that made staging directory `name` (`.<id>.tmp-<pid>`, or
/// `.<id>.tmp-old-<pid>`) is still running: its leftovers are only deleted once it is gone.
fn staging_owner_alive(name: &str) -> bool {
    match name
        .rsplit('-')
        .next()
        .and_then(|pid| pid.parse::<u32>().ok())
    {
        Some(pid) => Path::new("/proc").join(pid.to_string()).exists(),
        None => false,
    }
}

/// Which of `images` (name, time) to delete: all but the `keep` newest, and never `protect`.
pub fn to_prune(
    mut images: Vec<(String, SystemTime)>,
    keep: usize,
    protect: Option<&str>,
) -> Vec<String> {
    // Newest first; the name breaks ties so the choice does not depend on read_dir order.
    images.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    images
        .into_iter()
        .skip(keep)
        .map(|(name, _)| name)
        .filter(|name| Some(name.as_str()) != protect)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn cache_dir_prefers_quarry_then_xdg_then_home() {
        assert_eq!(
            cache_dir_from(os("/q"), os("/x"), os("/h")),
            PathBuf::from("/q")
        );
        assert_eq!(
            cache_dir_from(None, os("/x"), os("/h")),
            PathBuf::from("/x/quarry")
        );
        assert_eq!(
            cache_dir_from(os(""), os(""), os("/h")),
            PathBuf::from("/h/.cache/quarry")
        );
        assert_eq!(
            cache_dir_from(None, None, None),
            PathBuf::from("/var/cache/quarry")
        );
    }

    #[test]
    fn prune_choice_keeps_the_newest_and_the_current_one() {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let images = vec![
            ("a".to_string(), t(10)),
            ("b".to_string(), t(30)),
            ("c".to_string(), t(20)),
            ("d".to_string(), t(5)),
        ];
        assert_eq!(to_prune(images.clone(), 2, None), vec!["a", "d"]);
        assert_eq!(to_prune(images.clone(), 2, Some("d")), vec!["a"]);
        assert!(to_prune(images, 4, None).is_empty());
    }

    #[test]
    fn prune_deletes_old_images_and_staging_dirs_only() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path();
        for (i, name) in ["old", "mid", "new", "newest"].iter().enumerate() {
            let d = images.join(name);
            std::fs::create_dir(&d).unwrap();
            let f = std::fs::File::create(d.join(MANIFEST_FILE)).unwrap();
            let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1000 * (i as u64 + 1));
            f.set_modified(when).unwrap();
        }
        std::fs::create_dir(images.join("not-an-image")).unwrap();
        std::fs::create_dir(images.join(".abc.tmp-999999999")).unwrap();
        let alive = format!(".abc.tmp-{}", std::process::id());
        std::fs::create_dir(images.join(&alive)).unwrap();
        set_current(images, "old").unwrap();
        let mut deleted = prune(images).unwrap().deleted;
        deleted.sort();
        // "old" is current, so only "mid" is beyond the two newest and unprotected.
        assert_eq!(
            deleted,
            vec![images.join(".abc.tmp-999999999"), images.join("mid")]
        );
        assert!(
            images.join(alive).is_dir(),
            "a running build's staging dir was deleted"
        );
        assert!(images.join("old").is_dir() && images.join("new").is_dir());
        assert!(images.join("newest").is_dir());
        assert!(images.join("not-an-image").is_dir());
        set_current(images, "new").unwrap();
        assert_eq!(
            std::fs::read_link(images.join(CURRENT_LINK)).unwrap(),
            PathBuf::from("new")
        );
    }

    #[test]
    fn prune_skips_an_image_held_by_a_lease() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path();
        for (i, name) in ["held", "free", "new", "newest"].iter().enumerate() {
            let d = images.join(name);
            std::fs::create_dir(&d).unwrap();
            let f = std::fs::File::create(d.join(MANIFEST_FILE)).unwrap();
            f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(10 * (i as u64 + 1)))
                .unwrap();
        }
        set_current(images, "newest").unwrap();
        let lease = Image::at(images.join("held")).hold().unwrap();
        let pruned = prune(images).unwrap();
        assert_eq!(pruned.deleted, vec![images.join("free")]);
        assert_eq!(pruned.in_use, vec![images.join("held")]);
        assert!(images.join("held").join(MANIFEST_FILE).is_file());
        drop(lease);
        let pruned = prune(images).unwrap();
        assert_eq!(pruned.deleted, vec![images.join("held")]);
        assert!(pruned.in_use.is_empty());
        assert!(!images.join("held").exists());
    }

    #[test]
    fn current_without_link_says_to_build() {
        let dir = tempfile::tempdir().unwrap();
        let err = current(dir.path()).unwrap_err().to_string();
        assert!(err.contains("qemu-image build"), "{err}");
    }
}
