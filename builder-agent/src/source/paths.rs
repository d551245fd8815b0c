//! Path rules for archive entries and symlink targets, as pure functions over `Path`s (plus
//! `resolves_inside`, which reads links from disk).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::error::{SourceError, UnsafeReason};

/// Most symlinks followed while resolving one path (Linux's own limit is 40).
const MAX_LINK_HOPS: u32 = 40;

/// The entry's path made relative and normal, `None` for the root itself ("./", "").
/// Refuses absolute paths and `..` rather than stripping them, so a hostile archive is named.
pub(super) fn clean_entry_path(raw: &[u8]) -> Result<Option<PathBuf>, SourceError> {
    let path = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for comp in path.components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(SourceError::unsafe_entry(raw, UnsafeReason::ParentDir));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(SourceError::unsafe_entry(raw, UnsafeReason::Absolute));
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// `base` joined with the relative `target`, resolving `..` lexically; `None` if it climbs
/// above the root.
pub(super) fn lexical_join(base: &Path, target: &Path) -> Option<PathBuf> {
    let mut parts: Vec<&OsStr> = base
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    for comp in target.components() {
        match comp {
            Component::Normal(n) => parts.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

/// Resolves `rel` (relative to `root`) the way the kernel would, following every symlink hop by
/// hop; `Err(target)` names the offending link target when resolution would leave `root`.
/// Missing components are taken lexically (a dangling link inside the root is harmless).
pub(super) fn resolves_inside(root: &Path, rel: &Path) -> Result<(), String> {
    let mut real: Vec<OsString> = Vec::new();
    let mut pending: VecDeque<OsString> = VecDeque::new();
    for comp in rel.components() {
        pending.push_back(comp.as_os_str().to_owned());
    }
    let mut hops = 0;
    while let Some(comp) = pending.pop_front() {
        if comp == "." || comp.is_empty() {
            continue;
        }
        if comp == ".." {
            if real.pop().is_none() {
                return Err(rel.display().to_string());
            }
            continue;
        }
        let mut path = root.to_path_buf();
        path.extend(&real);
        path.push(&comp);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                let target = fs::read_link(&path).map_err(|_| path.display().to_string())?;
                if hops > MAX_LINK_HOPS || target.is_absolute() {
                    return Err(target.display().to_string());
                }
                for c in target.components().rev() {
                    pending.push_front(c.as_os_str().to_owned());
                }
            }
            _ => real.push(comp),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(e: SourceError) -> UnsafeReason {
        match e {
            SourceError::UnsafeEntry { reason, .. } => reason,
            other => panic!("expected UnsafeEntry, got {other:?}"),
        }
    }

    #[test]
    fn entry_paths_are_normalised_or_refused() {
        assert_eq!(
            clean_entry_path(b"./a/./b").unwrap(),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(clean_entry_path(b"./").unwrap(), None);
        assert_eq!(
            reason(clean_entry_path(b"a/../../x").unwrap_err()),
            UnsafeReason::ParentDir
        );
        assert_eq!(
            reason(clean_entry_path(b"/etc/passwd").unwrap_err()),
            UnsafeReason::Absolute
        );
    }

    #[test]
    fn lexical_join_stops_at_the_root() {
        assert_eq!(
            lexical_join(Path::new("a/b"), Path::new("../c")),
            Some("a/c".into())
        );
        assert_eq!(lexical_join(Path::new("a"), Path::new("../../c")), None);
        assert_eq!(lexical_join(Path::new(""), Path::new("/etc")), None);
    }

    #[test]
    fn resolution_follows_links_like_the_kernel() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink("a/b", root.join("deep")).unwrap();
        // deep/../.. is a/b/../.. = the root: inside. deep/../../.. leaves it.
        std::os::unix::fs::symlink("deep/../..", root.join("ok")).unwrap();
        std::os::unix::fs::symlink("deep/../../..", root.join("out")).unwrap();
        std::os::unix::fs::symlink("missing/x", root.join("dangling")).unwrap();
        assert!(resolves_inside(root, Path::new("ok")).is_ok());
        assert!(resolves_inside(root, Path::new("dangling")).is_ok());
        assert!(resolves_inside(root, Path::new("out")).is_err());
    }
}
