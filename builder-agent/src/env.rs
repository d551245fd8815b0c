//! The agent's configuration, read from the environment as Quay's agent reads it (`SERVER`,
//! `TOKEN`, `CONTAINER_RUNTIME`, `DOCKER_HOST`, `TLS_CERT_PATH`, `INSECURE`) plus Quarry's
//! additions (`QUARRY_WORK_DIR`, `REGISTRY_HOSTNAME`, `QUARRY_MAX_CONTEXT_BYTES`, `DEBUG`).
//!
//! Parsing takes a lookup function instead of reading `std::env` directly, so tests need not
//! mutate the process environment.

use std::path::PathBuf;

/// Default engine socket when `DOCKER_HOST` is unset and no private podman service is started.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// Default cap on the unpacked build source (`QUARRY_MAX_CONTEXT_BYTES`): 2 GiB.
pub const DEFAULT_MAX_CONTEXT_BYTES: u64 = 2 << 30;

/// Why the environment is not a usable configuration; each names the variable.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A required variable is unset or empty.
    #[error("environment variable {var} is required: {hint}")]
    Missing {
        /// The variable.
        var: &'static str,
        /// What to set it to.
        hint: &'static str,
    },
    /// A variable has a value of the wrong form.
    #[error("environment variable {var}={value:?} is invalid: expected {expected}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// The accepted form.
        expected: &'static str,
    },
}

/// Which container engine the agent drives (`CONTAINER_RUNTIME`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// dockerd (Quay's default).
    Docker,
    /// podman's Docker-compatible API service.
    Podman,
}

/// Everything the agent reads from its environment, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// `host:port` of buildman's gRPC service (`SERVER`).
    pub server: String,
    /// The registration JWT (`TOKEN`); may be empty, the server then refuses registration.
    pub token: String,
    /// `CONTAINER_RUNTIME`.
    pub runtime: Runtime,
    /// `DOCKER_HOST` as given; `None` when unset.
    pub docker_host: Option<String>,
    /// `TLS_CERT_PATH`: a PEM CA bundle that verifies the gRPC server.
    pub tls_cert_path: Option<PathBuf>,
    /// `INSECURE=true`: plaintext gRPC (and the registry marked insecure for a private podman).
    pub insecure: bool,
    /// `QUARRY_WORK_DIR`: sources and the private podman service live here.
    pub work_dir: Option<PathBuf>,
    /// `REGISTRY_HOSTNAME`: the registry (`host[:port]`) the build pushes to.
    pub registry_hostname: Option<String>,
    /// `QUARRY_MAX_CONTEXT_BYTES`: cap on the unpacked build source.
    pub max_context_bytes: u64,
    /// `DEBUG=true`: debug logging.
    pub debug: bool,
}

// Hand-written so the registration token never reaches a log line.
impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("server", &self.server)
            .field(
                "token",
                &if self.token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("runtime", &self.runtime)
            .field("docker_host", &self.docker_host)
            .field("tls_cert_path", &self.tls_cert_path)
            .field("insecure", &self.insecure)
            .field("work_dir", &self.work_dir)
            .field("registry_hostname", &self.registry_hostname)
            .field("max_context_bytes", &self.max_context_bytes)
            .field("debug", &self.debug)
            .finish()
    }
}

impl AgentConfig {
    /// Read the configuration from the process environment.
    pub fn from_env() -> Result<AgentConfig, EnvError> {
        AgentConfig::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read the configuration through `lookup` (a variable's value, `None` when unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<AgentConfig, EnvError> {
        // Empty counts as unset, as a shell `VAR=` usually means "no value".
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let server = get("SERVER").ok_or(EnvError::Missing {
            var: "SERVER",
            hint: "set it to the build manager's gRPC address as host:port",
        })?;
        validate_host_port(&server)?;
        let runtime = match get("CONTAINER_RUNTIME").as_deref() {
            None | Some("docker") => Runtime::Docker,
            Some("podman") => Runtime::Podman,
            Some(other) => {
                return Err(EnvError::Invalid {
                    var: "CONTAINER_RUNTIME",
                    value: other.to_owned(),
                    expected: "docker or podman",
                });
            }
        };
        let docker_host = get("DOCKER_HOST");
        if let Some(host) = &docker_host
            && !(host.starts_with("unix://")
                || host.starts_with("tcp://")
                || host.starts_with("http://"))
        {
            return Err(EnvError::Invalid {
                var: "DOCKER_HOST",
                value: host.clone(),
                expected: "unix:///path/to.sock, tcp://host:port or http://host:port",
            });
        }
        let max_context_bytes = match get("QUARRY_MAX_CONTEXT_BYTES") {
            None => DEFAULT_MAX_CONTEXT_BYTES,
            Some(v) => {
                v.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(EnvError::Invalid {
                        var: "QUARRY_MAX_CONTEXT_BYTES",
                        value: v,
                        expected: "a positive number of bytes",
                    })?
            }
        };
        let registry_hostname = get("REGISTRY_HOSTNAME");
        if let Some(reg) = &registry_hostname
            && (reg.contains('/') || reg.contains(char::is_whitespace))
        {
            return Err(EnvError::Invalid {
                var: "REGISTRY_HOSTNAME",
                value: reg.clone(),
                expected: "host or host:port, without a scheme or path",
            });
        }
        Ok(AgentConfig {
            server,
            token: lookup("TOKEN").unwrap_or_default(),
            runtime,
            docker_host,
            tls_cert_path: get("TLS_CERT_PATH").map(PathBuf::from),
            insecure: parse_bool("INSECURE", get("INSECURE").as_deref())?,
            work_dir: get("QUARRY_WORK_DIR").map(PathBuf::from),
            registry_hostname,
            max_context_bytes,
            debug: parse_bool("DEBUG", get("DEBUG").as_deref())?,
        })
    }

    /// Whether the agent starts its own podman service: podman runtime, a work directory to put
    /// it in, and no engine socket given.
    pub fn wants_private_podman(&self) -> bool {
        self.runtime == Runtime::Podman && self.docker_host.is_none() && self.work_dir.is_some()
    }

    /// The gRPC endpoint URI: `http://` with `INSECURE=true`, `https://` otherwise.
    pub fn server_uri(&self) -> String {
        let scheme = if self.insecure { "http" } else { "https" };
        format!("{scheme}://{}", self.server)
    }
}

fn validate_host_port(server: &str) -> Result<(), EnvError> {
    let invalid = || EnvError::Invalid {
        var: "SERVER",
        value: server.to_owned(),
        expected: "host:port, without a scheme",
    };
    if server.contains("://") || server.contains('/') {
        return Err(invalid());
    }
    let (host, port) = server.rsplit_once(':').ok_or_else(invalid)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(invalid());
    }
    Ok(())
}

fn parse_bool(var: &'static str, value: Option<&str>) -> Result<bool, EnvError> {
    match value.map(str::trim) {
        None => Ok(false),
        Some(v) if ["true", "1", "yes"].contains(&v.to_ascii_lowercase().as_str()) => Ok(true),
        Some(v) if ["false", "0", "no"].contains(&v.to_ascii_lowercase().as_str()) => Ok(false),
        Some(v) => Err(EnvError::Invalid {
            var,
            value: v.to_owned(),
            expected: "true or false",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<AgentConfig, EnvError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        AgentConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_follow_quays_agent() {
        let c = parse(&[("SERVER", "buildman:50051"), ("TOKEN", "jwt")]).unwrap();
        assert_eq!(c.runtime, Runtime::Docker);
        assert_eq!(c.docker_host, None);
        assert!(!c.insecure);
        assert_eq!(c.server_uri(), "https://buildman:50051");
        assert_eq!(c.max_context_bytes, DEFAULT_MAX_CONTEXT_BYTES);
        assert!(!c.wants_private_podman());
        assert!(
            !format!("{c:?}").contains("jwt"),
            "token must not be printed"
        );
    }

    #[test]
    fn quarry_additions_are_read() {
        let c = parse(&[
            ("SERVER", "127.0.0.1:50051"),
            ("CONTAINER_RUNTIME", "podman"),
            ("INSECURE", "true"),
            ("QUARRY_WORK_DIR", "/data/builds/x-1"),
            ("REGISTRY_HOSTNAME", "127.0.0.1:5000"),
            ("QUARRY_MAX_CONTEXT_BYTES", "1024"),
            ("DEBUG", "1"),
        ])
        .unwrap();
        assert_eq!(c.server_uri(), "http://127.0.0.1:50051");
        assert!(c.wants_private_podman());
        assert_eq!(c.max_context_bytes, 1024);
        assert_eq!(c.registry_hostname.as_deref(), Some("127.0.0.1:5000"));
        assert!(c.debug);
        let with_host = parse(&[
            ("SERVER", "h:1"),
            ("CONTAINER_RUNTIME", "podman"),
            ("QUARRY_WORK_DIR", "/w"),
            ("DOCKER_HOST", "unix:///run/podman.sock"),
        ])
        .unwrap();
        assert!(
            !with_host.wants_private_podman(),
            "an explicit DOCKER_HOST wins"
        );
    }

    #[test]
    fn errors_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "SERVER"),
            (&[("SERVER", "")], "SERVER"),
            (&[("SERVER", "http://h:1")], "SERVER"),
            (&[("SERVER", "h")], "SERVER"),
            (&[("SERVER", "h:99999")], "SERVER"),
            (
                &[("SERVER", "h:1"), ("CONTAINER_RUNTIME", "rkt")],
                "CONTAINER_RUNTIME",
            ),
            (&[("SERVER", "h:1"), ("INSECURE", "maybe")], "INSECURE"),
            (
                &[("SERVER", "h:1"), ("DOCKER_HOST", "/x.sock")],
                "DOCKER_HOST",
            ),
            (
                &[("SERVER", "h:1"), ("QUARRY_MAX_CONTEXT_BYTES", "0")],
                "QUARRY_MAX_CONTEXT_BYTES",
            ),
            (
                &[("SERVER", "h:1"), ("REGISTRY_HOSTNAME", "http://r/x")],
                "REGISTRY_HOSTNAME",
            ),
        ];
        for (vars, var) in cases {
            let err = parse(vars).unwrap_err().to_string();
            assert!(err.contains(var), "{vars:?}: {err}");
        }
    }
}
