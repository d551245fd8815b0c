//! Encryption at rest of the secrets buildman stores (trigger deploy keys, webhook tokens and
//! secrets), as Quay's `secure_*` fields: AES-256-GCM with a random 96-bit nonce per value.
//!
//! The key is SHA-256 of `DATABASE_SECRET_KEY` when set, else 32 random bytes generated once in
//! `DATA_DIR/buildman-secret.key` (mode 0600). Losing that file (or changing the key) makes the
//! stored secrets unreadable: triggers then answer with an error that says so, nothing crashes.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use sha2::{Digest as _, Sha256};

use crate::config::Secret;

/// The key file's name in `DATA_DIR`.
pub const KEY_FILE: &str = "buildman-secret.key";
/// Prefix of a sealed value: a format version, so the scheme can change later.
const VERSION: u8 = 1;

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key file could not be read or created.
    #[error("failed to read or create the secret key file {path:?} (check DATA_DIR's permissions)")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold 32 bytes.
    #[error(
        "secret key file {path:?} is damaged ({len} bytes, expected 32): restore it from a backup, \
         or set DATABASE_SECRET_KEY to the key the secrets were stored with"
    )]
    KeyFileSize {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: usize,
    },
    /// A sealed value did not open: another key, or damaged data.
    #[error(
        "a stored secret could not be decrypted: DATABASE_SECRET_KEY or {KEY_FILE} changed since \
         it was stored (recreate the trigger's keys, or restore the old key)"
    )]
    Open,
    /// The system's random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// Seals and opens secrets with one key. `Debug` never shows the key.
pub struct SecretBox {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<key>)")
    }
}

impl SecretBox {
    /// The box of `DATABASE_SECRET_KEY` when given, else of the key file in `data_dir` (created
    /// on first use).
    pub fn open_or_create(
        data_dir: &Path,
        configured: Option<&Secret>,
    ) -> Result<SecretBox, SecretError> {
        if let Some(secret) = configured {
            return Ok(SecretBox::from_material(secret.expose().as_bytes()));
        }
        let path = data_dir.join(KEY_FILE);
        let key_file = |source| SecretError::KeyFile {
            path: path.clone(),
            source,
        };
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => Ok(SecretBox::from_key(&bytes)),
            Ok(bytes) => Err(SecretError::KeyFileSize {
                path: path.clone(),
                len: bytes.len(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| SecretError::Random)?;
                std::fs::create_dir_all(data_dir).map_err(key_file)?;
                // create_new: two processes starting at once must not each write a key.
                let written = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode_0600()
                    .open(&path)
                    .and_then(|mut f| f.write_all(&key).and_then(|()| f.sync_all()));
                match written {
                    Ok(()) => Ok(SecretBox::from_key(&key)),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        SecretBox::open_or_create(data_dir, None)
                    }
                    Err(e) => Err(key_file(e)),
                }
            }
            Err(e) => Err(key_file(e)),
        }
    }

    /// The box whose key is SHA-256 of `material` (a passphrase such as `DATABASE_SECRET_KEY`).
    pub fn from_material(material: &[u8]) -> SecretBox {
        SecretBox::from_key(&Sha256::digest(material))
    }

    fn from_key(key: &[u8]) -> SecretBox {
        let unbound =
            UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key is valid for AES-256");
        SecretBox {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Encrypt `plaintext`: version byte, nonce, ciphertext and tag.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretError::Random)?;
        let mut data = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .map_err(|_| SecretError::Random)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + data.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// Decrypt what [`SecretBox::seal`] made.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SecretError> {
        let Some((&VERSION, rest)) = sealed.split_first() else {
            return Err(SecretError::Open);
        };
        if rest.len() < NONCE_LEN {
            return Err(SecretError::Open);
        }
        let (nonce, data) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Open)?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut data)
            .map_err(|_| SecretError::Open)?;
        Ok(plain.to_vec())
    }

    /// [`SecretBox::open`] for a UTF-8 secret.
    pub fn open_string(&self, sealed: &[u8]) -> Result<String, SecretError> {
        String::from_utf8(self.open(sealed)?).map_err(|_| SecretError::Open)
    }
}

/// `OpenOptions::mode(0o600)` behind a name that reads well above.
trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt as _;
        self.mode(0o600)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn seal_then_open_round_trips_and_nonces_differ() {
        let b = SecretBox::from_material(b"passphrase");
        let one = b.seal(b"-----BEGIN RSA PRIVATE KEY-----").unwrap();
        let two = b.seal(b"-----BEGIN RSA PRIVATE KEY-----").unwrap();
        assert_ne!(one, two);
        assert!(!one.windows(5).any(|w| w == b"BEGIN"));
        assert_eq!(
            b.open_string(&one).unwrap(),
            "-----BEGIN RSA PRIVATE KEY-----"
        );
    }

    #[test]
    fn another_key_or_damaged_data_does_not_open() {
        let sealed = SecretBox::from_material(b"a").seal(b"secret").unwrap();
        let other = SecretBox::from_material(b"b");
        assert!(matches!(other.open(&sealed), Err(SecretError::Open)));
        let b = SecretBox::from_material(b"a");
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(b.open(&bad), Err(SecretError::Open)));
        assert!(matches!(b.open(&sealed[..5]), Err(SecretError::Open)));
        assert!(matches!(b.open(&[]), Err(SecretError::Open)));
    }

    #[test]
    fn the_key_file_is_created_once_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = SecretBox::open_or_create(dir.path(), None).unwrap();
        let sealed = a.seal(b"x").unwrap();
        let meta = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        let b = SecretBox::open_or_create(dir.path(), None).unwrap();
        assert_eq!(b.open(&sealed).unwrap(), b"x");
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        let err = SecretBox::open_or_create(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    #[test]
    fn a_configured_key_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let configured = Secret::new("k");
        let a = SecretBox::open_or_create(dir.path(), Some(&configured)).unwrap();
        assert!(!dir.path().join(KEY_FILE).exists());
        let sealed = a.seal(b"x").unwrap();
        assert_eq!(SecretBox::from_material(b"k").open(&sealed).unwrap(), b"x");
    }
}
