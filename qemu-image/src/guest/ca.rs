//! The extra CA ([`super::GuestConfig::ca_cert`]): trusted system-wide and handed to the agent.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::net::under;

/// The system trust bundle (Debian's ca-certificates).
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The CA alone; the agent's default `TLS_CERT_PATH`.
pub const AGENT_CA_PATH: &str = "/etc/quarry/ca.crt";

/// Installing the CA failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The PEM holds no certificate.
    #[error(
        "ca_cert holds no PEM certificate (no BEGIN CERTIFICATE line): fix the CA in the build manager config"
    )]
    NotPem,
    /// A file could not be written.
    #[error("cannot write the CA to {path:?}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Append `pem` to the system bundle and write it alone to [`AGENT_CA_PATH`], below `root`.
pub fn install(root: &Path, pem: &str) -> Result<(), CaError> {
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(CaError::NotPem);
    }
    let mut pem = pem.trim().to_owned();
    pem.push('\n');
    let own = under(root, AGENT_CA_PATH);
    write_with(&own, |path| {
        std::fs::create_dir_all(path.parent().unwrap_or(root))?;
        std::fs::write(path, &pem)
    })?;
    let bundle = under(root, SYSTEM_BUNDLE);
    write_with(&bundle, |path| {
        std::fs::create_dir_all(path.parent().unwrap_or(root))?;
        let existing = std::fs::read(path).unwrap_or_default();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        if existing.last().is_some_and(|&b| b != b'\n') {
            file.write_all(b"\n")?;
        }
        file.write_all(pem.as_bytes())
    })
}

fn write_with(path: &Path, op: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<(), CaError> {
    op(path).map_err(|source| CaError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";

    #[test]
    fn appends_to_bundle_and_writes_own_file() {
        let root = tempfile::tempdir().unwrap();
        let bundle = root.path().join("etc/ssl/certs/ca-certificates.crt");
        std::fs::create_dir_all(bundle.parent().unwrap()).unwrap();
        // A bundle without a final newline must not glue two PEM blocks together.
        std::fs::write(&bundle, "-----END CERTIFICATE-----").unwrap();
        install(root.path(), PEM).unwrap();
        assert_eq!(
            std::fs::read_to_string(&bundle).unwrap(),
            format!("-----END CERTIFICATE-----\n{PEM}\n")
        );
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/quarry/ca.crt")).unwrap(),
            format!("{PEM}\n")
        );
    }

    #[test]
    fn refuses_non_pem() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(
            install(root.path(), "hello"),
            Err(CaError::NotPem)
        ));
        assert!(!root.path().join("etc").exists());
    }
}
