//! Deploy keys of triggers (reference 5.1, Quay's `util/security/ssh.py`): RSA 2048, the private
//! half as a traditional PEM (`-----BEGIN RSA PRIVATE KEY-----`, what libssh2 and OpenSSH read),
//! the public half as an OpenSSH line (`ssh-rsa AAAA... <REGISTRY_TITLE> Builder`).
//!
//! aws-lc-rs (already our crypto) generates the key but exports PKCS#8 only; the PKCS#1
//! `RSAPrivateKey` is the PKCS#8 envelope's payload, taken out with the `pkcs8` crate and armoured
//! with `pem`.

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;

/// Why a deploy key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DeployKeyError {
    /// aws-lc-rs refused to generate or export the key.
    #[error("failed to generate an RSA 2048 deploy key")]
    Generate,
    /// The PKCS#8 export did not parse.
    #[error("failed to convert the deploy key from PKCS#8 to PKCS#1")]
    Pkcs8(#[source] pkcs8::Error),
    /// The key generation task panicked or was cancelled.
    #[error("the deploy key generation task failed")]
    Join(#[source] tokio::task::JoinError),
}

/// A fresh deploy key. `Debug` never shows the private half.
pub struct DeployKey {
    /// `ssh-rsa <base64> <comment>`.
    pub public_openssh: String,
    /// `-----BEGIN RSA PRIVATE KEY-----` PEM.
    pub private_pem: String,
}

impl std::fmt::Debug for DeployKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeployKey")
            .field("public_openssh", &self.public_openssh)
            .finish_non_exhaustive()
    }
}

/// Generate an RSA 2048 deploy key whose public line ends with `comment`, on the blocking pool
/// (key generation takes tens to hundreds of milliseconds).
pub async fn generate(comment: String) -> Result<DeployKey, DeployKeyError> {
    tokio::task::spawn_blocking(move || generate_blocking(&comment))
        .await
        .map_err(DeployKeyError::Join)?
}

/// [`generate`] on the calling thread.
pub fn generate_blocking(comment: &str) -> Result<DeployKey, DeployKeyError> {
    let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| DeployKeyError::Generate)?;
    let pkcs8_der = pair.as_der().map_err(|_| DeployKeyError::Generate)?;
    let info =
        pkcs8::PrivateKeyInfo::try_from(pkcs8_der.as_ref()).map_err(DeployKeyError::Pkcs8)?;
    // LF endings, as OpenSSH writes them (pem's default is CRLF).
    let private_pem = pem::encode_config(
        &pem::Pem::new("RSA PRIVATE KEY", info.private_key.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    let public = pair.public_key();
    let public_openssh = openssh_rsa_line(
        public.exponent().big_endian_without_leading_zero(),
        public.modulus().big_endian_without_leading_zero(),
        comment,
    );
    Ok(DeployKey {
        public_openssh,
        private_pem,
    })
}

/// The OpenSSH public key line of an RSA key (RFC 4253 6.6: string "ssh-rsa", mpint e, mpint n).
///
/// Written by hand rather than with the `ssh-key` crate: these dozen lines are all we need of
/// it, and a unit test checks them against `ssh-keygen -y`.
pub fn openssh_rsa_line(e: &[u8], n: &[u8], comment: &str) -> String {
    fn string(out: &mut Vec<u8>, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).expect("an RSA key part is far below 4 GiB");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(bytes);
    }
    fn mpint(out: &mut Vec<u8>, magnitude: &[u8]) {
        let trimmed = match magnitude.iter().position(|b| *b != 0) {
            Some(i) => &magnitude[i..],
            None => &[],
        };
        // A positive mpint whose top bit is set gets a leading zero byte.
        if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
            let mut padded = Vec::with_capacity(trimmed.len() + 1);
            padded.push(0);
            padded.extend_from_slice(trimmed);
            string(out, &padded);
        } else {
            string(out, trimmed);
        }
    }
    let mut blob = Vec::with_capacity(n.len() + e.len() + 32);
    string(&mut blob, b"ssh-rsa");
    mpint(&mut blob, e);
    mpint(&mut blob, n);
    let encoded = base64::engine::general_purpose::STANDARD.encode(blob);
    let comment = comment.trim();
    if comment.is_empty() {
        format!("ssh-rsa {encoded}")
    } else {
        format!("ssh-rsa {encoded} {comment}")
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn mpints_get_a_zero_byte_when_the_top_bit_is_set() {
        let line = openssh_rsa_line(&[1, 0, 1], &[0, 0x80, 1], "c");
        let blob = base64::engine::general_purpose::STANDARD
            .decode(line.split(' ').nth(1).unwrap())
            .unwrap();
        let want: Vec<u8> = [
            &[0, 0, 0, 7][..],
            b"ssh-rsa",
            &[0, 0, 0, 3, 1, 0, 1],
            &[0, 0, 0, 3, 0, 0x80, 1],
        ]
        .concat();
        assert_eq!(blob, want);
        assert!(line.ends_with(" c"));
        assert!(!openssh_rsa_line(&[3], &[5], " ").ends_with(' '));
    }

    /// The PEM is what OpenSSH reads, and `ssh-keygen -y` derives our public line from it.
    #[test]
    fn ssh_keygen_derives_the_same_public_key_from_the_pem() {
        let key = generate_blocking("Quarry Builder").unwrap();
        assert!(
            key.private_pem
                .starts_with("-----BEGIN RSA PRIVATE KEY-----\n"),
            "traditional PEM expected"
        );
        assert!(key.public_openssh.starts_with("ssh-rsa AAAA"));
        assert!(key.public_openssh.ends_with(" Quarry Builder"));
        assert!(!format!("{key:?}").contains("PRIVATE"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_rsa");
        std::fs::write(&path, &key.private_pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("ssh-keygen (OpenSSH) must be installed: apt-get install openssh-client");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let derived = String::from_utf8(out.stdout).unwrap();
        let fields = |s: &str| s.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        assert_eq!(fields(&derived), fields(&key.public_openssh));
        // 2048-bit modulus: 256 bytes plus the sign byte.
        let blob = base64::engine::general_purpose::STANDARD
            .decode(key.public_openssh.split(' ').nth(1).unwrap())
            .unwrap();
        assert_eq!(blob.len(), 4 + 7 + 4 + 3 + 4 + 257);
    }
}
