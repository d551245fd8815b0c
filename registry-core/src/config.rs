//! registry-core configuration: a Quay-style YAML file with upper-case keys.
//!
//! Keys shared with Quay keep Quay's names and meaning (`SERVER_HOSTNAME`, `SUPER_USERS`,
//! `PREFERRED_URL_SCHEME`, `FEATURE_ANONYMOUS_ACCESS`, `CREATE_PRIVATE_REPO_ON_PUSH`,
//! `MAXIMUM_LAYER_SIZE`); the rest are ours and say so below. Every key has a default, so an empty
//! file (or none) is a working single-machine configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a configuration was rejected; each variant names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file {path:?}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed, has an unknown key or a value of the wrong type.
    #[error("config file {path:?} is invalid")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause, which names the key and the expected form.
        #[source]
        source: serde_yaml::Error,
    },
    /// A key has a value of the right type but outside what is allowed.
    #[error("config key {key}: {problem}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// What is wrong and what is expected.
        problem: String,
    },
}

/// The whole registry-core configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Host (and port) clients use to reach the registry; the token `service` and audience.
    #[serde(rename = "SERVER_HOSTNAME")]
    pub server_hostname: String,
    /// `http` or `https`: the scheme of the token realm URL in `WWW-Authenticate`.
    #[serde(rename = "PREFERRED_URL_SCHEME")]
    pub preferred_url_scheme: String,
    /// Users with full control of every namespace.
    #[serde(rename = "SUPER_USERS")]
    pub super_users: Vec<String>,
    /// Whether anonymous clients may pull public repositories.
    #[serde(rename = "FEATURE_ANONYMOUS_ACCESS")]
    pub anonymous_access: bool,
    /// Whether a repository created by a push is private (Quay's default) or public.
    #[serde(rename = "CREATE_PRIVATE_REPO_ON_PUSH")]
    pub create_private_repo_on_push: bool,
    /// Largest accepted blob, Quay's size syntax (`20G`, `512M`, bytes).
    #[serde(rename = "MAXIMUM_LAYER_SIZE")]
    pub maximum_layer_size: String,
    /// Ours: the directory holding the database, blobs, uploads and the signing key.
    #[serde(rename = "DATA_DIR")]
    pub data_dir: PathBuf,
    /// Ours: address to listen on.
    #[serde(rename = "LISTEN_ADDR")]
    pub listen_addr: String,
    /// Ours: largest accepted manifest in bytes (413 above it; the spec asks for at least 4 MB).
    #[serde(rename = "MAXIMUM_MANIFEST_SIZE")]
    pub maximum_manifest_size: u64,
    /// Ours: an upload session untouched for this many seconds is removed.
    #[serde(rename = "UPLOAD_MAX_AGE_S")]
    pub upload_max_age_s: u64,
    /// Ours: how often abandoned uploads are looked for, in seconds.
    #[serde(rename = "UPLOAD_CLEANUP_INTERVAL_S")]
    pub upload_cleanup_interval_s: u64,
    /// Lifetime of the registry tokens `/v2/auth` issues, in seconds (Quay: 3600).
    #[serde(rename = "TOKEN_VALIDITY_LIFETIME_S")]
    pub token_validity_lifetime_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_hostname: "localhost:5000".to_owned(),
            preferred_url_scheme: "http".to_owned(),
            super_users: Vec::new(),
            anonymous_access: true,
            create_private_repo_on_push: true,
            maximum_layer_size: "20G".to_owned(),
            data_dir: PathBuf::from("quarry-data"),
            listen_addr: "127.0.0.1:5000".to_owned(),
            maximum_manifest_size: 4 * 1024 * 1024,
            upload_max_age_s: 2 * 24 * 3600,
            upload_cleanup_interval_s: 600,
            token_validity_lifetime_s: 3600,
        }
    }
}

/// Parse Quay's size syntax: a number with an optional `K`, `M`, `G` or `T` suffix (powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        (i, 'T' | 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

impl Config {
    /// Load from a YAML file (an empty file gives the defaults) and validate.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?
        };
        config.validate()?;
        Ok(config)
    }

    /// Check every value; the error names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: String| Err(ConfigError::Invalid { key, problem });
        if self.server_hostname.is_empty()
            || self.server_hostname.contains("://")
            || self.server_hostname.contains('/')
        {
            return invalid(
                "SERVER_HOSTNAME",
                format!(
                    "{:?} must be a host or host:port, without scheme or path",
                    self.server_hostname
                ),
            );
        }
        if !matches!(self.preferred_url_scheme.as_str(), "http" | "https") {
            return invalid(
                "PREFERRED_URL_SCHEME",
                format!("{:?} must be http or https", self.preferred_url_scheme),
            );
        }
        for u in &self.super_users {
            if crate::names::validate_namespace(u).is_err() {
                return invalid("SUPER_USERS", format!("{u:?} is not a valid user name"));
            }
        }
        if parse_size(&self.maximum_layer_size).is_none_or(|n| n == 0) {
            return invalid(
                "MAXIMUM_LAYER_SIZE",
                format!(
                    "{:?} must be a size such as 20G, 512M or a number of bytes",
                    self.maximum_layer_size
                ),
            );
        }
        if self.listen_addr.parse::<SocketAddr>().is_err() {
            return invalid(
                "LISTEN_ADDR",
                format!(
                    "{:?} must be an address such as 127.0.0.1:5000",
                    self.listen_addr
                ),
            );
        }
        if self.maximum_manifest_size < 4_000_000 {
            return invalid(
                "MAXIMUM_MANIFEST_SIZE",
                format!(
                    "{} is below the 4 MB the distribution spec requires",
                    self.maximum_manifest_size
                ),
            );
        }
        if self.upload_max_age_s == 0 || self.upload_cleanup_interval_s == 0 {
            return invalid(
                "UPLOAD_MAX_AGE_S",
                "UPLOAD_MAX_AGE_S and UPLOAD_CLEANUP_INTERVAL_S must be above 0".to_owned(),
            );
        }
        if !(60..=86_400).contains(&self.token_validity_lifetime_s) {
            return invalid(
                "TOKEN_VALIDITY_LIFETIME_S",
                format!(
                    "{} must be between 60 and 86400 seconds",
                    self.token_validity_lifetime_s
                ),
            );
        }
        Ok(())
    }

    /// The largest accepted blob in bytes (validated, so always a number).
    pub fn max_blob_size(&self) -> u64 {
        parse_size(&self.maximum_layer_size).unwrap_or(20 << 30)
    }

    /// The realm URL of the token service, for `WWW-Authenticate`.
    pub fn token_realm(&self) -> String {
        format!(
            "{}://{}/v2/auth",
            self.preferred_url_scheme, self.server_hostname
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(yaml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.yaml");
        std::fs::write(&p, yaml).unwrap();
        Config::load(&p)
    }

    #[test]
    fn empty_file_gives_valid_defaults() {
        let c = load_str("").unwrap();
        assert_eq!(c.server_hostname, "localhost:5000");
        assert_eq!(c.max_blob_size(), 20 << 30);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_str("SERVER_HOSTNAM: x\n").unwrap_err();
        let chain = format!("{:?}", std::error::Error::source(&err));
        assert!(chain.contains("SERVER_HOSTNAM"), "{chain}");
    }

    #[test]
    fn invalid_values_name_their_key() {
        for (yaml, key) in [
            ("SERVER_HOSTNAME: http://x\n", "SERVER_HOSTNAME"),
            ("PREFERRED_URL_SCHEME: ftp\n", "PREFERRED_URL_SCHEME"),
            ("SUPER_USERS: [Bad!]\n", "SUPER_USERS"),
            ("MAXIMUM_LAYER_SIZE: lots\n", "MAXIMUM_LAYER_SIZE"),
            ("LISTEN_ADDR: here\n", "LISTEN_ADDR"),
            ("MAXIMUM_MANIFEST_SIZE: 1000\n", "MAXIMUM_MANIFEST_SIZE"),
            (
                "TOKEN_VALIDITY_LIFETIME_S: 5\n",
                "TOKEN_VALIDITY_LIFETIME_S",
            ),
        ] {
            let err = load_str(yaml).unwrap_err();
            assert!(err.to_string().contains(key), "{yaml}: {err}");
        }
    }

    #[test]
    fn sizes_parse_quay_syntax() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("2k"), Some(2048));
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("-1"), None);
    }
}
