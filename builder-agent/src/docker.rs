//! [`Engine`] over the Docker API with bollard: dockerd, or podman's Docker-compatible service
//! (ours from [`crate::podman`] or one given by `DOCKER_HOST`). The API version is negotiated
//! with the engine when connecting.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateImageOptionsBuilder, PushImageOptionsBuilder,
    RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::engine::{BuildSpec, Credentials, Engine, EngineError, ImageInfo, Op, digest_in_status};
use crate::logs::{EngineMessage, LogLine, Logs, Progress};
use crate::podman::PodmanService;

/// bollard's per-request limit (until response headers), in seconds. Builds stream for long
/// after that; a build's whole duration is bounded by buildman's machine lifetime instead.
const REQUEST_TIMEOUT_SECS: u64 = 600;
/// Limit of the quick calls (tag, inspect, remove).
const QUICK_TIMEOUT: Duration = Duration::from_secs(120);
/// Size of the chunks the context tar is streamed in.
const CHUNK: usize = 64 * 1024;

/// The engine behind `DOCKER_HOST`, holding the private podman service (if any) alive.
#[derive(Debug)]
pub struct DockerEngine {
    docker: Docker,
    endpoint: String,
    service: Option<PodmanService>,
}

impl DockerEngine {
    /// Connect to `host` (`unix://...`, `tcp://...` or `http://...`) and negotiate the API
    /// version. `service` is kept (and killed with this engine) when it is ours.
    pub async fn connect(
        host: &str,
        service: Option<PodmanService>,
    ) -> Result<DockerEngine, EngineError> {
        let connect_err = |source: BollardError| EngineError::Connect {
            endpoint: host.to_owned(),
            source: Box::new(source),
        };
        let docker = if host.starts_with("unix://") {
            Docker::connect_with_unix(host, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
        } else {
            let http = host.replacen("tcp://", "http://", 1);
            Docker::connect_with_http(&http, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
        }
        .map_err(connect_err)?;
        let docker = docker.negotiate_version().await.map_err(connect_err)?;
        tracing::info!(endpoint = host, version = ?docker.client_version(), "connected to the container engine");
        Ok(DockerEngine {
            docker,
            endpoint: host.to_owned(),
            service,
        })
    }

    /// The endpoint this engine talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

fn docker_creds(c: &Credentials) -> DockerCredentials {
    DockerCredentials {
        username: Some(c.username.clone()),
        password: Some(c.password.clone()),
        ..DockerCredentials::default()
    }
}

/// Map a bollard error of `op` to ours.
fn map_err(op: Op, e: BollardError) -> EngineError {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => EngineError::Failed {
            op,
            status: Some(status_code),
            message,
        },
        BollardError::DockerStreamError { error } => EngineError::Failed {
            op,
            status: None,
            message: error,
        },
        BollardError::RequestTimeoutError => EngineError::Timeout {
            op,
            after: Duration::from_secs(REQUEST_TIMEOUT_SECS),
        },
        other => EngineError::Transport {
            op,
            source: Box::new(other),
        },
    }
}

fn progress(p: Option<&bollard::models::ProgressDetail>) -> Option<Progress> {
    let p = p?;
    (p.current.is_some() || p.total.is_some()).then(|| Progress {
        current: p.current.unwrap_or(0),
        total: p.total.unwrap_or(0),
    })
}

async fn quick<T>(
    op: Op,
    fut: impl Future<Output = Result<T, BollardError>>,
) -> Result<T, EngineError> {
    tokio::time::timeout(QUICK_TIMEOUT, fut)
        .await
        .map_err(|_| EngineError::Timeout {
            op,
            after: QUICK_TIMEOUT,
        })?
        .map_err(|e| map_err(op, e))
}

impl Engine for DockerEngine {
    async fn pull(
        &self,
        reference: &str,
        creds: Option<&Credentials>,
        logs: &Logs,
    ) -> Result<(), EngineError> {
        // fromImage=name plus tag=<tag or digest>, as the API wants them split.
        let (name, tag) = match reference.split_once('@') {
            Some((n, d)) => (n, d),
            None => match reference.rfind(':') {
                Some(i) if !reference[i..].contains('/') => (&reference[..i], &reference[i + 1..]),
                _ => (reference, "latest"),
            },
        };
        let options = CreateImageOptionsBuilder::default()
            .from_image(name)
            .tag(tag)
            .build();
        let mut stream = self
            .docker
            .create_image(Some(options), None, creds.map(docker_creds));
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    let msg = EngineMessage {
                        status: info.status.as_deref().unwrap_or(""),
                        id: info.id.as_deref().unwrap_or(""),
                        progress_detail: progress(info.progress_detail.as_ref()),
                        ..EngineMessage::default()
                    };
                    if let Some(line) = LogLine::from_engine(&msg) {
                        logs.send(line).await;
                    }
                }
                Err(e) => return Err(map_err(Op::Pull, e)),
            }
        }
        Ok(())
    }

    async fn build(&self, spec: &BuildSpec, logs: &Logs) -> Result<(), EngineError> {
        let build_args: HashMap<String, String> = spec.build_args.clone().into_iter().collect();
        let mut options = BuildImageOptionsBuilder::default()
            .dockerfile(&spec.dockerfile)
            .t(&spec.image)
            .rm(true)
            .forcerm(true)
            .buildargs(&build_args);
        if !spec.cache_from.is_empty() {
            options = options.cachefrom(&spec.cache_from);
        }
        let (body, packer) = context_tar(spec.context_dir.clone());
        let mut stream =
            self.docker
                .build_image(options.build(), None, Some(bollard::body_try_stream(body)));
        let mut result = Ok(());
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    let msg = EngineMessage {
                        stream: info.stream.as_deref().unwrap_or(""),
                        status: info.status.as_deref().unwrap_or(""),
                        id: info.id.as_deref().unwrap_or(""),
                        progress_detail: progress(info.progress_detail.as_ref()),
                        ..EngineMessage::default()
                    };
                    if let Some(line) = LogLine::from_engine(&msg) {
                        logs.send(line).await;
                    }
                }
                Err(e) => {
                    result = Err(map_err(Op::Build, e));
                    break;
                }
            }
        }
        drop(stream);
        // A context that could not be read explains a failed build better than the engine's
        // "unexpected EOF"; report it first.
        match packer.await {
            Ok(Err(source)) => Err(EngineError::Context {
                path: spec.context_dir.clone(),
                source,
            }),
            _ => result,
        }
    }

    async fn tag(&self, image: &str, repo: &str, tag: &str) -> Result<(), EngineError> {
        let options = TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        quick(Op::Tag, self.docker.tag_image(image, Some(options))).await
    }

    async fn push(
        &self,
        repo: &str,
        tag: &str,
        creds: &Credentials,
        logs: &Logs,
    ) -> Result<Option<String>, EngineError> {
        let options = PushImageOptionsBuilder::default().tag(tag).build();
        let mut stream = self
            .docker
            .push_image(repo, Some(options), Some(docker_creds(creds)));
        let mut digest = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    let status = info.status.as_deref().unwrap_or("");
                    // The last digest printed is the manifest's (layers come before it).
                    if let Some(d) = digest_in_status(status) {
                        digest = Some(d);
                    }
                    let msg = EngineMessage {
                        status,
                        progress_detail: progress(info.progress_detail.as_ref()),
                        ..EngineMessage::default()
                    };
                    if let Some(line) = LogLine::from_engine(&msg) {
                        logs.send(line).await;
                    }
                }
                Err(e) => return Err(map_err(Op::Push, e)),
            }
        }
        Ok(digest)
    }

    async fn inspect(&self, image: &str) -> Result<ImageInfo, EngineError> {
        let info = quick(Op::Inspect, self.docker.inspect_image(image)).await?;
        Ok(ImageInfo {
            id: info.id.unwrap_or_default(),
            repo_digests: info.repo_digests.unwrap_or_default(),
        })
    }

    async fn remove(&self, image: &str) -> Result<(), EngineError> {
        let options = RemoveImageOptionsBuilder::default().force(true).build();
        quick(
            Op::Remove,
            self.docker.remove_image(image, Some(options), None),
        )
        .await
        .map(|_| ())
    }

    async fn shutdown(mut self) {
        // Dropping would SIGKILL the service; a SIGTERM first lets podman clean up.
        if let Some(service) = self.service.take() {
            service.shutdown().await;
        }
    }
}

/// Stream `dir` as an uncompressed tar, written on a blocking thread in [`CHUNK`]-sized pieces.
/// Symlinks are stored as links, never followed, so a link in the context cannot pull a file of
/// the agent's machine into the build. The handle reports read errors of the context.
fn context_tar(
    dir: PathBuf,
) -> (
    impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let packer = tokio::task::spawn_blocking(move || {
        let writer = ChunkWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let result = write_tar(&dir, writer);
        if let Err(e) = &result {
            // The engine sees a broken upload rather than a silently truncated context.
            let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
        }
        result
    });
    (ReceiverStream::new(rx), packer)
}

fn write_tar(dir: &Path, writer: ChunkWriter) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(writer);
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    let mut writer = builder.into_inner()?;
    writer.flush()
}

struct ChunkWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the engine stopped reading the build context",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn context_tar_keeps_symlinks_as_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/big"), vec![7u8; 3 * CHUNK + 5]).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("escape")).unwrap();
        let (stream, packer) = context_tar(dir.path().to_owned());
        let chunks: Vec<Bytes> = stream.map(Result::unwrap).collect().await;
        packer.await.unwrap().unwrap();
        let bytes: Vec<u8> = chunks.concat();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            if path.ends_with("escape") {
                assert_eq!(entry.header().entry_type(), tar::EntryType::Symlink);
                assert_eq!(
                    entry.link_name().unwrap().unwrap().to_string_lossy(),
                    "/etc/hostname"
                );
            }
            if path.ends_with("big") {
                assert_eq!(entry.size(), u64::try_from(3 * CHUNK + 5).unwrap());
            }
            seen.push(path);
        }
        for want in ["Dockerfile", "sub/big", "escape"] {
            assert!(
                seen.iter().any(|p| p.ends_with(want)),
                "{want} missing from {seen:?}"
            );
        }
    }

    #[tokio::test]
    async fn unreachable_engine_is_an_infrastructure_error() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        let err = DockerEngine::connect(&format!("unix://{}", sock.display()), None)
            .await
            .unwrap_err();
        assert!(matches!(err, EngineError::Connect { .. }), "{err:?}");
        assert!(!err.is_user_error());
        assert!(err.to_string().contains("none.sock"), "{err}");
    }
}
