//! Checks before the `qemu` executor starts: the programs it runs, that `VM_RUN_AS` can be used,
//! and that the work root has room for another VM.

use std::path::{Path, PathBuf};

use super::QemuError;

/// `program` as given when it names a file (has a `/`), else the first match in `PATH`.
pub(super) fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 || program.is_absolute() {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Fail unless `user` exists and buildman (`is_root`) can switch QEMU to it.
pub(super) fn check_run_as(user: &str, is_root: bool) -> Result<(), QemuError> {
    match nix::unistd::User::from_name(user) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(QemuError::NoSuchUser {
                user: user.to_owned(),
                source: None,
            });
        }
        Err(e) => {
            return Err(QemuError::NoSuchUser {
                user: user.to_owned(),
                source: Some(e),
            });
        }
    }
    if !is_root {
        return Err(QemuError::RunAsNeedsRoot {
            user: user.to_owned(),
        });
    }
    Ok(())
}

/// Whether `free` bytes on the work root leave the `min_free` (`VM_MIN_FREE_SPACE`) a VM needs
/// to start. `VOLUME_SIZE` is not the measure: the scratch disk is sparse, so a build uses only
/// what it writes, and a check at start reserves nothing for VMs started at the same time.
pub(super) fn check_space(dir: &Path, free: u64, min_free: u64) -> Result<(), QemuError> {
    if free >= min_free {
        return Ok(());
    }
    Err(QemuError::DiskSpace {
        dir: dir.to_path_buf(),
        free,
        min_free,
    })
}

/// Bytes available to buildman on the filesystem of `dir` (or of its nearest existing
/// ancestor: the work root is made on the first start).
pub(super) fn free_space(dir: &Path) -> Result<u64, QemuError> {
    let existing = dir.ancestors().find(|d| d.exists()).unwrap_or(dir);
    let st = nix::sys::statvfs::statvfs(existing).map_err(|source| QemuError::StatFs {
        dir: existing.to_path_buf(),
        source,
    })?;
    Ok(st.blocks_available().saturating_mul(st.fragment_size()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_in_path_or_by_path() {
        assert_eq!(
            find_program(Path::new("sh")).map(|p| p.is_file()),
            Some(true)
        );
        assert_eq!(
            find_program(Path::new("/bin/sh")),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(find_program(Path::new("no-such-program-quarry")), None);
        assert_eq!(find_program(Path::new("/nonexistent/qemu")), None);
    }

    #[test]
    fn a_vm_needs_vm_min_free_space_free() {
        let dir = Path::new("/srv/builds");
        assert!(check_space(dir, 1 << 30, 1 << 30).is_ok());
        let e = check_space(dir, (1 << 30) - 1, 1 << 30).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("VM_MIN_FREE_SPACE") && msg.contains("/srv/builds"),
            "{msg}"
        );
        assert!(msg.contains(&((1u64 << 30) - 1).to_string()), "{msg}");
        assert!(msg.contains(&(1u64 << 30).to_string()), "{msg}");
        // The real filesystem of a directory that does not exist yet: its parent's.
        let tmp = tempfile::tempdir().unwrap();
        assert!(free_space(&tmp.path().join("builds/not/yet")).unwrap() > 0);
    }

    #[test]
    fn run_as_must_name_an_existing_user_and_needs_root() {
        assert!(check_run_as("root", true).is_ok());
        let e = check_run_as("no-such-user-quarry", true).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("VM_RUN_AS user \"no-such-user-quarry\" does not exist"),
            "{e}"
        );
        let e = check_run_as("root", false).unwrap_err();
        assert!(
            e.to_string().contains("needs buildman to run as root"),
            "{e}"
        );
    }
}
