//! Writing archive entries into a directory without ever writing outside it.
//!
//! Hand-written rather than `tar::Entry::unpack_in` / `zip::ZipArchive::extract`, because those
//! helpers are lenient where we must not be: they keep absolute symlinks and symlinks pointing out
//! of the directory, create device nodes and fifos when run as root (the agent is root), keep
//! setuid bits, and have no size or entry-count budget. The rules here:
//! - entry paths must be relative with no `..` (refused, not silently stripped);
//! - no write follows a symlink: every parent of an entry must be a real directory (checked with
//!   `symlink_metadata`, never `metadata`), and files are created with `O_CREAT|O_EXCL`, which does
//!   not follow a symlink at the final component;
//! - a symlink's target must be relative and stay inside the directory, first lexically when the
//!   entry is written (a clear early error), then once more at the end by resolving every link
//!   the way the kernel would, hop by hop, which catches chains such as `a -> ..` plus
//!   `b/l -> a/../x`;
//! - hard links may only point at a regular file written earlier;
//! - devices, fifos and sockets are refused; setuid, setgid and sticky bits are dropped;
//! - the total bytes written and the number of entries are capped by `Limits`.
//!
//! The archive is the only writer of the (fresh, private) staging directory, so checking a path
//! and then using it is not racy.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::Limits;
use super::error::{SourceError, UnsafeReason};
use super::paths::{clean_entry_path, lexical_join, resolves_inside};

/// Counts of what an extraction wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Summary {
    pub(super) files: u64,
    pub(super) dirs: u64,
    pub(super) links: u64,
    pub(super) bytes: u64,
}

/// Writes entries under `root` following the rules in the module docs.
#[derive(Debug)]
pub(super) struct Extractor<'a> {
    root: &'a Path,
    limits: &'a Limits,
    /// Names the archive in errors (the redacted URL).
    label: &'a str,
    /// "tar", "tar.gz" or "zip", for corrupt-archive errors.
    kind: &'static str,
    entries: u64,
    summary: Summary,
    /// Directories and the mode to give them once every entry is written (a read-only directory
    /// must stay writable until its children are in).
    dir_modes: Vec<(PathBuf, u32)>,
    symlinks: Vec<PathBuf>,
}

impl<'a> Extractor<'a> {
    pub(super) fn new(
        root: &'a Path,
        limits: &'a Limits,
        label: &'a str,
        kind: &'static str,
    ) -> Self {
        Extractor {
            root,
            limits,
            label,
            kind,
            entries: 0,
            summary: Summary::default(),
            dir_modes: Vec::new(),
            symlinks: Vec::new(),
        }
    }

    /// A corrupt-archive error for a read failure of the archive itself.
    pub(super) fn corrupt(&self, source: io::Error) -> SourceError {
        SourceError::CorruptArchive {
            url: self.label.to_owned(),
            kind: self.kind,
            source,
        }
    }

    /// Fails once the archive has more entries than allowed; call for every entry.
    pub(super) fn count_entry(&mut self) -> Result<(), SourceError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(SourceError::TooManyEntries {
                what: format!("the archive from {}", self.label),
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    pub(super) fn dir(&mut self, raw: &[u8], mode: u32) -> Result<(), SourceError> {
        let Some(rel) = clean_entry_path(raw)? else {
            return Ok(()); // "./": the root itself
        };
        self.prepare_parents(&rel, raw)?;
        let path = self.root.join(&rel);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                remove_file(&path)?;
                create_dir(&path)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir(&path)?,
            Err(e) => return Err(io_error("inspecting", &path, e)),
        }
        self.summary.dirs += 1;
        self.dir_modes.push((rel, (mode & 0o777) | 0o700));
        Ok(())
    }

    pub(super) fn file(
        &mut self,
        raw: &[u8],
        mode: u32,
        mtime: Option<u64>,
        content: &mut dyn Read,
    ) -> Result<(), SourceError> {
        let rel = clean_entry_path(raw)?
            .ok_or_else(|| SourceError::unsafe_entry(raw, UnsafeReason::EmptyPath))?;
        self.prepare_parents(&rel, raw)?;
        let path = self.root.join(&rel);
        self.clear_for_non_dir(&path, raw)?;
        // create_new = O_CREAT|O_EXCL: fails instead of following a symlink at `path`.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_error("creating", &path, e))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.corrupt(e)),
            };
            self.add_bytes(n as u64)?;
            file.write_all(&buf[..n])
                .map_err(|e| io_error("writing", &path, e))?;
        }
        // fchmod on the open file: never follows a path. Drops setuid, setgid and sticky bits.
        file.set_permissions(fs::Permissions::from_mode(mode & 0o777))
            .map_err(|e| io_error("setting permissions on", &path, e))?;
        if let Some(secs) = mtime {
            // Best effort: a timestamp outside SystemTime's range is not worth failing a build.
            if let Some(t) = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)) {
                let _ = file.set_modified(t);
            }
        }
        self.summary.files += 1;
        Ok(())
    }

    pub(super) fn symlink(&mut self, raw: &[u8], target_raw: &[u8]) -> Result<(), SourceError> {
        let rel = clean_entry_path(raw)?
            .ok_or_else(|| SourceError::unsafe_entry(raw, UnsafeReason::EmptyPath))?;
        let target = Path::new(OsStr::from_bytes(target_raw));
        let outside = || {
            SourceError::unsafe_entry(
                raw,
                UnsafeReason::LinkOutside {
                    target: String::from_utf8_lossy(target_raw).into_owned(),
                },
            )
        };
        if target_raw.is_empty() || target.is_absolute() {
            return Err(outside());
        }
        // Lexical check from the link's directory; chains through other links are checked in
        // `finish`, once every link exists.
        let base = rel.parent().unwrap_or(Path::new(""));
        if lexical_join(base, target).is_none() {
            return Err(outside());
        }
        self.prepare_parents(&rel, raw)?;
        let path = self.root.join(&rel);
        self.clear_for_non_dir(&path, raw)?;
        std::os::unix::fs::symlink(target, &path)
            .map_err(|e| io_error("creating symlink", &path, e))?;
        self.add_bytes(target_raw.len() as u64)?;
        self.summary.links += 1;
        self.symlinks.push(rel);
        Ok(())
    }

    pub(super) fn hardlink(&mut self, raw: &[u8], target_raw: &[u8]) -> Result<(), SourceError> {
        let rel = clean_entry_path(raw)?
            .ok_or_else(|| SourceError::unsafe_entry(raw, UnsafeReason::EmptyPath))?;
        let bad_target = || {
            SourceError::unsafe_entry(
                raw,
                UnsafeReason::HardLinkTarget {
                    target: String::from_utf8_lossy(target_raw).into_owned(),
                },
            )
        };
        let target_rel = match clean_entry_path(target_raw) {
            Ok(Some(t)) => t,
            _ => return Err(bad_target()),
        };
        // The target must be reachable without symlinks and be a regular file we wrote.
        let target = self.root.join(&target_rel);
        if !self.no_symlink_in_parents(&target_rel)?
            || !fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_file())
        {
            return Err(bad_target());
        }
        if rel == target_rel {
            return Ok(()); // a link to itself: nothing to do
        }
        self.prepare_parents(&rel, raw)?;
        let path = self.root.join(&rel);
        self.clear_for_non_dir(&path, raw)?;
        fs::hard_link(&target, &path).map_err(|e| io_error("creating hard link", &path, e))?;
        // Counted at full size: whatever packs the context later may store the content twice.
        let size = fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
        self.add_bytes(size)?;
        self.summary.files += 1;
        Ok(())
    }

    /// Checks every symlink against escapes through chains, then applies directory modes.
    pub(super) fn finish(mut self) -> Result<Summary, SourceError> {
        for link in &self.symlinks {
            if let Err(target) = resolves_inside(self.root, link) {
                return Err(SourceError::unsafe_entry(
                    link.as_os_str().as_bytes(),
                    UnsafeReason::LinkOutside { target },
                ));
            }
        }
        // Deepest first, so a read-only parent is locked after its children are done.
        self.dir_modes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (rel, mode) in &self.dir_modes {
            let path = self.root.join(rel);
            // Directories are never replaced by links (see `clear_for_non_dir`), but check anyway:
            // set_permissions follows symlinks.
            if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
                    .map_err(|e| io_error("setting permissions on", &path, e))?;
            }
        }
        Ok(self.summary)
    }

    fn add_bytes(&mut self, n: u64) -> Result<(), SourceError> {
        self.summary.bytes = self.summary.bytes.saturating_add(n);
        if self.summary.bytes > self.limits.max_bytes {
            return Err(SourceError::TooLarge {
                what: format!("the extracted archive from {}", self.label),
                limit: self.limits.max_bytes,
            });
        }
        Ok(())
    }

    /// Creates missing parent directories of `rel`; refuses a parent that is a symlink or a file.
    fn prepare_parents(&mut self, rel: &Path, raw: &[u8]) -> Result<(), SourceError> {
        let mut path = self.root.to_path_buf();
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        for comp in parent.components() {
            path.push(comp);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(SourceError::unsafe_entry(raw, UnsafeReason::ThroughSymlink));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(SourceError::unsafe_entry(raw, UnsafeReason::Conflict)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    create_dir(&path)?;
                    self.summary.dirs += 1;
                }
                Err(e) => return Err(io_error("inspecting", &path, e)),
            }
        }
        Ok(())
    }

    /// True when no parent of `rel` is a symlink (missing parents count as fine).
    fn no_symlink_in_parents(&self, rel: &Path) -> Result<bool, SourceError> {
        let mut path = self.root.to_path_buf();
        for comp in rel.parent().into_iter().flat_map(Path::components) {
            path.push(comp);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => return Ok(false),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
                Err(e) => return Err(io_error("inspecting", &path, e)),
            }
        }
        Ok(true)
    }

    /// A later entry replaces an earlier file or link of the same path (as tar does), but never
    /// a directory: that would let a symlink take a directory's place under its children.
    fn clear_for_non_dir(&self, path: &Path, raw: &[u8]) -> Result<(), SourceError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Err(SourceError::unsafe_entry(raw, UnsafeReason::Conflict)),
            Ok(_) => remove_file(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("inspecting", path, e)),
        }
    }
}

fn io_error(op: &'static str, path: &Path, source: io::Error) -> SourceError {
    SourceError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn create_dir(path: &Path) -> Result<(), SourceError> {
    fs::create_dir(path).map_err(|e| io_error("creating directory", path, e))
}

fn remove_file(path: &Path) -> Result<(), SourceError> {
    fs::remove_file(path).map_err(|e| io_error("replacing", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_inside(root: &Path, rel: &str) -> String {
        fs::read_to_string(root.join(rel)).unwrap()
    }

    fn limits() -> Limits {
        Limits {
            max_bytes: 1000,
            max_entries: 10,
            git_idle_timeout: Duration::from_secs(5),
        }
    }

    fn reason(e: SourceError) -> UnsafeReason {
        match e {
            SourceError::UnsafeEntry { reason, .. } => reason,
            other => panic!("expected UnsafeEntry, got {other:?}"),
        }
    }

    #[test]
    fn files_get_content_and_lose_setuid() {
        let tmp = tempfile::tempdir().unwrap();
        let l = limits();
        let mut ex = Extractor::new(tmp.path(), &l, "test", "tar");
        ex.file(b"bin/tool", 0o4755, Some(1_000_000), &mut &b"hello"[..])
            .unwrap();
        let summary = ex.finish().unwrap();
        assert_eq!(summary.files, 1);
        assert_eq!(summary.bytes, 5);
        assert_eq!(read_inside(tmp.path(), "bin/tool"), "hello");
        let mode = fs::metadata(tmp.path().join("bin/tool"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
    }

    #[test]
    fn a_write_through_a_symlinked_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let l = limits();
        let mut ex = Extractor::new(&root, &l, "test", "tar");
        ex.dir(b"real", 0o755).unwrap();
        ex.symlink(b"alias", b"real").unwrap();
        let err = ex
            .file(b"alias/x", 0o644, None, &mut &b"x"[..])
            .unwrap_err();
        assert_eq!(reason(err), UnsafeReason::ThroughSymlink);
    }

    #[test]
    fn a_symlink_chain_escaping_through_another_link_is_caught_at_finish() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let l = limits();
        let mut ex = Extractor::new(&root, &l, "test", "tar");
        // d/up -> .. resolves to the root: fine on its own.
        ex.symlink(b"d/up", b"..").unwrap();
        // d/l -> up/../x is lexically d/x, but the kernel goes root/.. -> outside.
        ex.symlink(b"d/l", b"up/../x").unwrap();
        let err = ex.finish().unwrap_err();
        assert!(matches!(reason(err), UnsafeReason::LinkOutside { .. }));
    }

    #[test]
    fn symlinks_inside_are_kept_and_loops_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let l = limits();
        let mut ex = Extractor::new(tmp.path(), &l, "test", "tar");
        ex.file(b"a/real", 0o644, None, &mut &b"x"[..]).unwrap();
        ex.symlink(b"b/link", b"../a/real").unwrap();
        ex.finish().unwrap();
        assert_eq!(read_inside(tmp.path(), "b/link"), "x");

        let tmp = tempfile::tempdir().unwrap();
        let mut ex = Extractor::new(tmp.path(), &l, "test", "tar");
        ex.symlink(b"p", b"q").unwrap();
        ex.symlink(b"q", b"p").unwrap();
        assert!(matches!(
            reason(ex.finish().unwrap_err()),
            UnsafeReason::LinkOutside { .. }
        ));
    }

    #[test]
    fn hard_links_need_an_earlier_regular_file() {
        let tmp = tempfile::tempdir().unwrap();
        let l = limits();
        let mut ex = Extractor::new(tmp.path(), &l, "test", "tar");
        ex.file(b"a", 0o644, None, &mut &b"abc"[..]).unwrap();
        ex.hardlink(b"b", b"a").unwrap();
        ex.symlink(b"s", b"a").unwrap();
        assert!(matches!(
            reason(ex.hardlink(b"c", b"s").unwrap_err()),
            UnsafeReason::HardLinkTarget { .. }
        ));
        assert!(matches!(
            reason(ex.hardlink(b"d", b"/etc/passwd").unwrap_err()),
            UnsafeReason::HardLinkTarget { .. }
        ));
        assert_eq!(read_inside(tmp.path(), "b"), "abc");
    }

    #[test]
    fn a_directory_is_never_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let l = limits();
        let mut ex = Extractor::new(tmp.path(), &l, "test", "tar");
        ex.dir(b"d", 0o755).unwrap();
        assert_eq!(
            reason(ex.symlink(b"d", b".").unwrap_err()),
            UnsafeReason::Conflict
        );
        // A later file replaces an earlier one, as tar does.
        ex.file(b"f", 0o644, None, &mut &b"1"[..]).unwrap();
        ex.file(b"f", 0o644, None, &mut &b"2"[..]).unwrap();
        assert_eq!(read_inside(tmp.path(), "f"), "2");
    }

    #[test]
    fn budgets_are_enforced() {
        let tmp = tempfile::tempdir().unwrap();
        let l = limits();
        let mut ex = Extractor::new(tmp.path(), &l, "test", "tar");
        let big = vec![0u8; 1001];
        assert!(matches!(
            ex.file(b"big", 0o644, None, &mut &big[..]).unwrap_err(),
            SourceError::TooLarge { .. }
        ));
        for _ in 0..10 {
            ex.count_entry().unwrap();
        }
        assert!(matches!(
            ex.count_entry().unwrap_err(),
            SourceError::TooManyEntries { .. }
        ));
    }

    #[test]
    fn read_only_directories_get_their_mode_last() {
        let tmp = tempfile::tempdir().unwrap();
        let l = limits();
        let mut ex = Extractor::new(tmp.path(), &l, "test", "tar");
        ex.dir(b"ro", 0o2555).unwrap();
        ex.file(b"ro/f", 0o644, None, &mut &b"x"[..]).unwrap();
        ex.finish().unwrap();
        let mode = fs::metadata(tmp.path().join("ro"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
    }
}
