//! Reading and checking the [`GuestConfig`] that the host passes through `fw_cfg`.
//!
//! Parsing is separate from reading the file so that tests feed bytes directly. Checks go
//! beyond serde's: every address `quarry-init` will use is parsed here, before anything is set
//! up, so that a bad config fails with one clear line instead of half a booted guest.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use super::{GuestConfig, GuestForward};

/// Why the guest configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The fw_cfg file could not be read.
    #[error(
        "cannot read the guest config at {path:?}: check that QEMU got \
         -fw_cfg name=opt/quarry/config,file=... and that stage 1 loaded qemu_fw_cfg"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid `GuestConfig` JSON document.
    #[error("the guest config is not valid GuestConfig JSON (the host wrote a bad file)")]
    Json {
        /// serde_json's message names the field, line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A field has a value quarry-init cannot use.
    #[error("the guest config field {field} is invalid: {problem}")]
    Invalid {
        /// The field, e.g. `forwards[1].listen`.
        field: String,
        /// What is wrong with it (never the value of a secret).
        problem: String,
    },
}

/// Read the configuration file at `path` (normally [`super::FW_CFG_GUEST_PATH`]).
pub fn read(path: &Path) -> Result<GuestConfig, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&bytes)
}

/// Parse and check a configuration.
pub fn parse(bytes: &[u8]) -> Result<GuestConfig, ConfigError> {
    let config: GuestConfig =
        serde_json::from_slice(bytes).map_err(|source| ConfigError::Json { source })?;
    check(&config)?;
    Ok(config)
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

fn check(config: &GuestConfig) -> Result<(), ConfigError> {
    let uuid = &config.build_uuid;
    // It becomes the hostname: a DNS label-ish string the kernel accepts (at most 64 bytes).
    if uuid.is_empty()
        || uuid.len() > 64
        || !uuid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(invalid(
            "build_uuid",
            format!("{uuid:?} must be 1-64 characters of letters, digits, '-' or '.'"),
        ));
    }
    if config.max_lifetime_s == 0 {
        return Err(invalid("max_lifetime_s", "must be at least 1 second"));
    }
    if config
        .agent_env
        .keys()
        .any(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
    {
        return Err(invalid(
            "agent_env",
            "variable names must be non-empty and contain neither '=' nor NUL",
        ));
    }
    if config.agent_env.values().any(|v| v.contains('\0')) {
        return Err(invalid("agent_env", "values must not contain NUL"));
    }
    let net = &config.network;
    interface_address(&net.address).ok_or_else(|| {
        invalid(
            "network.address",
            format!("{:?} is not IP/PREFIX", net.address),
        )
    })?;
    if let Some(gateway) = &net.gateway {
        gateway.parse::<IpAddr>().map_err(|_| {
            invalid(
                "network.gateway",
                format!("{gateway:?} is not an IP address"),
            )
        })?;
    }
    for (i, ns) in net.nameservers.iter().enumerate() {
        ns.parse::<IpAddr>().map_err(|_| {
            invalid(
                format!("network.nameservers[{i}]"),
                format!("{ns:?} is not an IP address"),
            )
        })?;
    }
    for (i, (addr, name)) in net.hosts.iter().enumerate() {
        addr.parse::<IpAddr>().map_err(|_| {
            invalid(
                format!("network.hosts[{i}]"),
                format!("{addr:?} is not an IP address"),
            )
        })?;
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return Err(invalid(
                format!("network.hosts[{i}]"),
                format!("{name:?} is not a host name"),
            ));
        }
    }
    for (i, forward) in config.forwards.iter().enumerate() {
        socket_addrs(forward).map_err(|(which, value)| {
            invalid(
                format!("forwards[{i}].{which}"),
                format!("{value:?} is not IP:PORT"),
            )
        })?;
    }
    Ok(())
}

/// `10.0.2.15/24` -> (10.0.2.15, 24); `None` unless a valid address and prefix length.
pub fn interface_address(cidr: &str) -> Option<(IpAddr, u8)> {
    let (ip, prefix) = cidr.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((ip, prefix))
}

/// A forward's `(listen, target)` as socket addresses; on error, which field and its value.
pub fn socket_addrs(forward: &GuestForward) -> Result<(SocketAddr, SocketAddr), (&str, &str)> {
    let listen = forward
        .listen
        .parse()
        .map_err(|_| ("listen", forward.listen.as_str()))?;
    let target = forward
        .target
        .parse()
        .map_err(|_| ("target", forward.target.as_str()))?;
    Ok((listen, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "build_uuid": "0b5c6f2e-1111-4c4c-9d9d-aaaaaaaaaaaa",
        "agent_env": {"SERVER": "127.0.0.1:50051", "TOKEN": "sekrit"},
        "network": {"address": "10.0.2.15/24", "hosts": [["10.0.2.101", "quay.example.com"]]},
        "forwards": [{"listen": "127.0.0.1:50051", "target": "10.0.2.100:50051"}],
        "max_lifetime_s": 3600
    }"#;

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD.as_bytes()).unwrap();
        assert_eq!(c.agent_env["SERVER"], "127.0.0.1:50051");
        assert_eq!(c.network.gateway, None);
        assert!(c.network.nameservers.is_empty());
        assert_eq!(c.forwards[0].target, "10.0.2.100:50051");
        assert!(!c.debug);
        assert!(c.ssh_authorized_keys.is_empty());
        assert_eq!(c.ca_cert, None);
        // The token never shows in Debug.
        assert!(!format!("{c:?}").contains("sekrit"));
    }

    #[test]
    fn missing_field_is_named() {
        let text = GOOD.replace(r#""max_lifetime_s": 3600"#, r#""debug": true"#);
        let err = parse(text.as_bytes()).unwrap_err();
        assert!(matches!(err, ConfigError::Json { .. }));
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(
            source.contains("missing field `max_lifetime_s`"),
            "{source}"
        );
    }

    #[test]
    fn unknown_field_is_refused() {
        let text = GOOD.replace(r#""max_lifetime_s""#, r#""surprise": 1, "max_lifetime_s""#);
        let err = parse(text.as_bytes()).unwrap_err();
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("unknown field `surprise`"), "{source}");
    }

    #[test]
    fn garbage_is_a_json_error() {
        let err = parse(b"\x00\xffnot json").unwrap_err();
        assert!(matches!(err, ConfigError::Json { .. }));
        assert!(err.to_string().contains("not valid GuestConfig JSON"));
        assert!(matches!(parse(b"").unwrap_err(), ConfigError::Json { .. }));
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (r#""10.0.2.15/24""#, r#""10.0.2.15""#, "network.address"),
            (
                r#""10.0.2.100:50051""#,
                r#""buildman:50051""#,
                "forwards[0].target",
            ),
            (
                r#""127.0.0.1:50051""#,
                r#""127.0.0.1""#,
                "forwards[0].listen",
            ),
            (
                r#""0b5c6f2e-1111-4c4c-9d9d-aaaaaaaaaaaa""#,
                r#""a b""#,
                "build_uuid",
            ),
            (
                r#""max_lifetime_s": 3600"#,
                r#""max_lifetime_s": 0"#,
                "max_lifetime_s",
            ),
            (r#"["10.0.2.101""#, r#"["quay""#, "network.hosts[0]"),
        ];
        for (from, to, field) in cases {
            let text = GOOD.replace(from, to);
            match parse(text.as_bytes()) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{to}"),
                other => panic!("{to}: expected invalid {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn read_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(&dir.path().join("raw")).unwrap_err();
        assert!(err.to_string().contains("-fw_cfg name=opt/quarry/config"));
        std::fs::write(dir.path().join("raw"), GOOD).unwrap();
        assert_eq!(read(&dir.path().join("raw")).unwrap().max_lifetime_s, 3600);
    }

    #[test]
    fn interface_address_rules() {
        assert_eq!(
            interface_address("10.0.2.15/24"),
            Some(("10.0.2.15".parse().unwrap(), 24))
        );
        assert_eq!(interface_address("10.0.2.15/33"), None);
        assert_eq!(interface_address("fd00::2/64").map(|a| a.1), Some(64));
        assert_eq!(interface_address("10.0.2.15"), None);
    }
}
