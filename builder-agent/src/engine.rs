//! The container engine seen by the agent: pull, build, tag, push, inspect, remove. The real
//! implementation ([`crate::docker::DockerEngine`]) speaks the Docker API through bollard to
//! dockerd or podman's API service; tests use a fake.
//!
//! Errors keep the engine's own text (it is what the user needs to read, and becomes the build's
//! error message) and are classified as the user's fault or the infrastructure's.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::logs::Logs;
use crate::podman::PodmanError;

/// Registry credentials for a pull or push.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name (`$token` for an access token).
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One image build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The context directory, sent to the engine as a tar stream.
    pub context_dir: PathBuf,
    /// The Dockerfile, relative to the context directory.
    pub dockerfile: String,
    /// The name the built image gets (`t`).
    pub image: String,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// Images to use as cache sources.
    pub cache_from: Vec<String>,
}

/// What the agent needs from an image inspection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageInfo {
    /// Image id (`sha256:...`).
    pub id: String,
    /// `name@sha256:...` entries: the manifests this image was pushed as or pulled from.
    pub repo_digests: Vec<String>,
}

/// Which engine operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Pulling an image.
    Pull,
    /// Building.
    Build,
    /// Tagging.
    Tag,
    /// Pushing.
    Push,
    /// Inspecting.
    Inspect,
    /// Removing.
    Remove,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Pull => "pull",
            Op::Build => "build",
            Op::Tag => "tag",
            Op::Push => "push",
            Op::Inspect => "inspect",
            Op::Remove => "remove",
        })
    }
}

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine could not be reached at all.
    #[error("the container engine at {endpoint} is unreachable")]
    Connect {
        /// `DOCKER_HOST` or the private socket.
        endpoint: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The private podman service did not start.
    #[error("failed to start the private podman service")]
    Service(#[from] PodmanError),
    /// The engine answered with an error: an HTTP status, or an error in the output stream.
    #[error("{op} failed: {message}")]
    Failed {
        /// The operation.
        op: Op,
        /// The HTTP status, when the error came as one.
        status: Option<u16>,
        /// The engine's text.
        message: String,
    },
    /// The connection to the engine broke during the operation.
    #[error("{op} failed: lost the connection to the container engine")]
    Transport {
        /// The operation.
        op: Op,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The operation took too long.
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// The operation.
        op: Op,
        /// The limit.
        after: Duration,
    },
    /// The build context could not be read.
    #[error("failed to read the build context {path:?}")]
    Context {
        /// The context directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Texts that mark a pull failure as the user's: the base image does not exist or the given
/// credentials may not read it.
const PULL_USER_MARKERS: &[&str] = &[
    "unauthorized",
    "authentication required",
    "denied",
    "forbidden",
    "not found",
    "manifest unknown",
    "name unknown",
    "does not exist",
    "invalid reference format",
    "repository name must",
];

/// Texts that mark a build failure as the machine's, not the Dockerfile's.
const BUILD_INFRA_MARKERS: &[&str] = &[
    "no space left on device",
    "input/output error",
    "cannot allocate memory",
    "read-only file system",
    "too many open files",
];

impl EngineError {
    /// Whether the user's input caused this (a failing `RUN`, a Dockerfile error, a base image
    /// that does not exist or may not be read): such a build ends without retry.
    pub fn is_user_error(&self) -> bool {
        match self {
            EngineError::Failed {
                op: Op::Build,
                message,
                ..
            } => {
                let m = message.to_ascii_lowercase();
                !BUILD_INFRA_MARKERS.iter().any(|k| m.contains(k))
            }
            EngineError::Failed {
                op: Op::Pull,
                status,
                message,
            } => {
                if matches!(status, Some(401 | 403 | 404)) {
                    return true;
                }
                let m = message.to_ascii_lowercase();
                PULL_USER_MARKERS.iter().any(|k| m.contains(k))
            }
            _ => false,
        }
    }

    /// The engine's own text for a failure it reported, else this error's chain.
    pub fn user_message(&self) -> String {
        match self {
            EngineError::Failed { message, .. } => message.trim().to_owned(),
            other => crate::error_chain(other),
        }
    }
}

/// The container engine operations a build needs. Every output line goes to `logs` in order; the
/// caller logs failures (as `{"error": ...}` lines) once it knows whether it will retry.
pub trait Engine: Send + Sync {
    /// Pull `reference` (`name:tag` or `name@digest`).
    fn pull(
        &self,
        reference: &str,
        creds: Option<&Credentials>,
        logs: &Logs,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Build `spec`; the image is then known as `spec.image`.
    fn build(
        &self,
        spec: &BuildSpec,
        logs: &Logs,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Tag `image` as `repo:tag`.
    fn tag(
        &self,
        image: &str,
        repo: &str,
        tag: &str,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Push `repo:tag`; returns the manifest digest when the engine's output names it.
    fn push(
        &self,
        repo: &str,
        tag: &str,
        creds: &Credentials,
        logs: &Logs,
    ) -> impl Future<Output = Result<Option<String>, EngineError>> + Send;

    /// Inspect `image`.
    fn inspect(&self, image: &str) -> impl Future<Output = Result<ImageInfo, EngineError>> + Send;

    /// Remove `image` (forcibly; missing is not an error worth reporting).
    fn remove(&self, image: &str) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Release the engine: stop a private podman service gracefully.
    fn shutdown(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized;
}

/// The manifest digest in a push status line: Docker prints `<tag>: digest: sha256:<hex> size:
/// <n>`; podman prints the bare `sha256:<hex>` of what it wrote.
pub fn digest_in_status(status: &str) -> Option<String> {
    let start = status.find("sha256:")?;
    let hex: String = status[start + 7..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    (hex.len() == 64).then(|| format!("sha256:{hex}"))
}

/// The digest of `repo` among an image's `RepoDigests` (`repo@sha256:...`).
pub fn digest_for_repo(repo_digests: &[String], repo: &str) -> Option<String> {
    repo_digests.iter().find_map(|entry| {
        let (name, digest) = entry.rsplit_once('@')?;
        (name == repo && digest.starts_with("sha256:")).then(|| digest.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(op: Op, status: Option<u16>, message: &str) -> EngineError {
        EngineError::Failed {
            op,
            status,
            message: message.into(),
        }
    }

    #[test]
    fn build_failures_are_the_users_unless_the_machine_failed() {
        let run = failed(
            Op::Build,
            None,
            "building at STEP \"RUN false\": while running runtime: exit status 1\n",
        );
        assert!(run.is_user_error());
        assert_eq!(
            run.user_message(),
            "building at STEP \"RUN false\": while running runtime: exit status 1"
        );
        assert!(
            failed(
                Op::Build,
                None,
                "Dockerfile parse error line 2: unknown instruction: FORM"
            )
            .is_user_error()
        );
        assert!(!failed(Op::Build, None, "write /x: no space left on device").is_user_error());
    }

    #[test]
    fn pull_failures_split_on_status_and_text() {
        assert!(failed(Op::Pull, Some(404), "").is_user_error());
        assert!(failed(Op::Pull, Some(403), "").is_user_error());
        assert!(
            failed(
                Op::Pull,
                Some(500),
                "reading manifest v1 in r/x: manifest unknown: manifest unknown"
            )
            .is_user_error()
        );
        assert!(failed(Op::Pull, None, "unauthorized: authentication required").is_user_error());
        assert!(
            !failed(
                Op::Pull,
                Some(500),
                "received unexpected HTTP status: 502 Bad Gateway"
            )
            .is_user_error()
        );
        assert!(
            !failed(
                Op::Pull,
                None,
                "dial tcp 127.0.0.1:5000: connect: connection refused"
            )
            .is_user_error()
        );
    }

    #[test]
    fn push_and_infrastructure_failures_are_retryable() {
        assert!(!failed(Op::Push, Some(401), "unauthorized").is_user_error());
        let timeout = EngineError::Timeout {
            op: Op::Build,
            after: Duration::from_secs(1),
        };
        assert!(!timeout.is_user_error());
        assert_eq!(timeout.user_message(), "build timed out after 1s");
    }

    #[test]
    fn digests_are_found_in_status_lines_and_repo_digests() {
        let hex = "ab".repeat(32);
        assert_eq!(
            digest_in_status(&format!("latest: digest: sha256:{hex} size: 528")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(
            digest_in_status(&format!("sha256:{hex}\n")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(digest_in_status("sha256:abc"), None);
        assert_eq!(digest_in_status("Pushing"), None);
        let digests = vec![
            format!("r/other@sha256:{hex}"),
            format!("127.0.0.1:5000/ns/repo@sha256:{}", "cd".repeat(32)),
        ];
        assert_eq!(
            digest_for_repo(&digests, "127.0.0.1:5000/ns/repo"),
            Some(format!("sha256:{}", "cd".repeat(32)))
        );
        assert_eq!(digest_for_repo(&digests, "127.0.0.1:5000/ns"), None);
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let c = Credentials {
            username: "$token".into(),
            password: "secret".into(),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
