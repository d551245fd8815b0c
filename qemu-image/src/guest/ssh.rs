//! Debug SSH access: root's `authorized_keys` and a foreground `dropbear`.
//!
//! Only started when the host gave keys; password logins are off (`-s`, `-g`), host keys are
//! generated on first connection (`-R`) into `/etc/dropbear` on the throw-away overlay.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Child;

use super::exec::{self, ExecError};
use super::net::under;

/// Root's authorized keys file.
pub const AUTHORIZED_KEYS: &str = "/root/.ssh/authorized_keys";

/// Setting up SSH failed.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// A key spans several lines or is empty.
    #[error(
        "ssh_authorized_keys[{index}] is not one non-empty line: give one OpenSSH public key per entry"
    )]
    BadKey {
        /// Position in the list.
        index: usize,
    },
    /// A file or directory could not be written.
    #[error("cannot write {path:?}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// dropbear could not be found or started.
    #[error("cannot start dropbear")]
    Start(#[from] ExecError),
    /// dropbear could not be spawned.
    #[error("cannot spawn dropbear")]
    Spawn(#[source] std::io::Error),
}

/// Write `keys` to `root`+[`AUTHORIZED_KEYS`]: directory 0700, file 0600 (dropbear refuses
/// group- or world-writable ones).
pub fn write_authorized_keys(root: &Path, keys: &[String]) -> Result<PathBuf, SshError> {
    let mut text = String::new();
    for (index, key) in keys.iter().enumerate() {
        let key = key.trim();
        if key.is_empty() || key.contains(['\n', '\r']) {
            return Err(SshError::BadKey { index });
        }
        text.push_str(key);
        text.push('\n');
    }
    let file = under(root, AUTHORIZED_KEYS);
    let dir = file.parent().unwrap_or(root).to_path_buf();
    let wrap = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SshError::Write { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(wrap(&dir))?;
    // create(true) keeps an existing directory's mode: force it.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(wrap(&dir))?;
    let _ = std::fs::remove_file(&file);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .map_err(wrap(&file))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).map_err(wrap(&file))?;
    Ok(file)
}

/// dropbear's arguments: foreground, log to stderr (the console), no password logins at all,
/// host keys made on first connection, port 22.
pub const DROPBEAR_ARGS: &[&str] = &["-F", "-E", "-s", "-g", "-R", "-p", "22"];

/// Start dropbear (its stderr goes to the console, inherited from PID 1). The caller's reaper
/// waits for it.
pub fn start_dropbear(root: &Path) -> Result<Child, SshError> {
    let keys_dir = under(root, "/etc/dropbear");
    std::fs::create_dir_all(&keys_dir).map_err(|source| SshError::Write {
        path: keys_dir,
        source,
    })?;
    exec::command("dropbear")?
        .args(DROPBEAR_ARGS)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(SshError::Spawn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_file_and_dir_have_strict_modes() {
        let root = tempfile::tempdir().unwrap();
        // A pre-existing, too open directory is tightened.
        std::fs::create_dir_all(root.path().join("root/.ssh")).unwrap();
        std::fs::set_permissions(
            root.path().join("root/.ssh"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        let keys = vec![
            "ssh-ed25519 AAAAC3Nza one@host\n".to_owned(),
            "ssh-rsa AAAAB3Nza two@host".to_owned(),
        ];
        let file = write_authorized_keys(root.path(), &keys).unwrap();
        assert_eq!(file, root.path().join("root/.ssh/authorized_keys"));
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "ssh-ed25519 AAAAC3Nza one@host\nssh-rsa AAAAB3Nza two@host\n"
        );
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(file.parent().unwrap()), 0o700);
    }

    #[test]
    fn rewriting_replaces_old_keys() {
        let root = tempfile::tempdir().unwrap();
        write_authorized_keys(root.path(), &["ssh-ed25519 OLD".to_owned()]).unwrap();
        let file = write_authorized_keys(root.path(), &["ssh-ed25519 NEW".to_owned()]).unwrap();
        assert_eq!(std::fs::read_to_string(file).unwrap(), "ssh-ed25519 NEW\n");
    }

    #[test]
    fn multi_line_or_empty_keys_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let bad = vec![
            "ssh-ed25519 A".to_owned(),
            "ssh-ed25519 B\nssh-rsa C".to_owned(),
        ];
        assert!(matches!(
            write_authorized_keys(root.path(), &bad),
            Err(SshError::BadKey { index: 1 })
        ));
        assert!(matches!(
            write_authorized_keys(root.path(), &["  ".to_owned()]),
            Err(SshError::BadKey { index: 0 })
        ));
        assert!(!root.path().join("root/.ssh/authorized_keys").exists());
    }

    #[test]
    fn dropbear_never_allows_passwords() {
        assert!(DROPBEAR_ARGS.contains(&"-s") && DROPBEAR_ARGS.contains(&"-g"));
        assert!(DROPBEAR_ARGS.contains(&"-F"));
    }
}
