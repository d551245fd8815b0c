//! One build, start to end, in Quay's agent call order (reference 1.3) with Quarry's fixes: dial
//! (10 s), `Ping`, open the `LogMessage` stream, `RegisterBuildJob`, heartbeats every 2 s, then
//! the phases of [`crate::steps`], and finally `SetPhase(COMPLETE)` with the manifest digests or
//! `SetPhase(ERROR)` with the error text and whether a retry could help.
//!
//! Before registration there is no job token, so nothing can be reported: those failures are
//! [`AgentError`]s and buildman sees the registration window expire.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use buildman_proto::{
    BuildJobArgs, BuildManagerClient, BuildPack, Phase, PingRequest, SetPhaseRequest,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::engine::{Engine, EngineError};
use crate::env::AgentConfig;
use crate::heartbeat;
use crate::logs::{self, LogLine, Logs};
use crate::steps::{self, Stop};

/// Quay's dial and unary-call timeouts.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// `SetPhase` may wait on buildman's database; allow more.
const SET_PHASE_TIMEOUT: Duration = Duration::from_secs(30);
/// Sends of one `SetPhase` when the transport fails (buildman restarting).
const SET_PHASE_ATTEMPTS: u32 = 3;
/// How long the log stream may take to deliver what is queued when the agent ends.
const LOG_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Failures before the job token exists: nothing can be reported to buildman.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The endpoint could not be built or dialled.
    #[error("failed to dial grpc server {server}")]
    Dial {
        /// `SERVER`.
        server: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// Dialling took longer than the limit.
    #[error("failed to dial grpc server {server}: no connection within {after:?}")]
    DialTimeout {
        /// `SERVER`.
        server: String,
        /// The limit.
        after: Duration,
    },
    /// The CA file could not be read.
    #[error("failed to read TLS_CERT_PATH {path:?}")]
    TlsCert {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `Ping` failed.
    #[error("ping to the build manager failed")]
    Ping(#[source] tonic::Status),
    /// `RegisterBuildJob` failed (an expired or invalid registration token, most often).
    #[error("registering the build job failed")]
    Register(#[source] tonic::Status),
    /// The work directory could not be prepared.
    #[error("failed to prepare the work directory {path:?}")]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How a registered build ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Pushed; COMPLETE was accepted.
    Complete {
        /// One manifest digest per pushed tag, in `tag_names` order.
        manifest_digests: Vec<String>,
    },
    /// The user's input failed the build; ERROR (not retryable) was reported.
    UserError {
        /// What was reported.
        message: String,
    },
    /// The machine or a service failed the build; ERROR (retryable) was reported.
    InfraError {
        /// What was reported.
        message: String,
    },
    /// buildman refused a phase change (the build was cancelled or it lost the job).
    Rejected {
        /// The phase that was refused.
        phase: Phase,
    },
    /// buildman refused heartbeats: the job is gone.
    JobGone,
    /// buildman could not be reached to report a phase.
    ServerLost {
        /// The last transport error.
        message: String,
    },
    /// The shutdown signal arrived; the build was stopped.
    Terminated,
}

impl Outcome {
    /// The process exit code: 0 when the build's result was delivered (success or the user's
    /// error), 1 for an infrastructure failure, 3 when buildman refused or lost the job, 143
    /// after SIGTERM (128 + 15, as a shell reports it).
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Complete { .. } | Outcome::UserError { .. } => 0,
            Outcome::InfraError { .. } | Outcome::ServerLost { .. } => 1,
            Outcome::Rejected { .. } | Outcome::JobGone => 3,
            Outcome::Terminated => 143,
        }
    }
}

/// Dial buildman at `SERVER` (TLS unless `INSECURE=true`) within Quay's 10 s.
pub async fn connect(config: &AgentConfig) -> Result<BuildManagerClient<Channel>, AgentError> {
    let dial = |source| AgentError::Dial {
        server: config.server.clone(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(config.server_uri())
        .map_err(dial)?
        .connect_timeout(DIAL_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if !config.insecure {
        let host = config
            .server
            .rsplit_once(':')
            .map_or(config.server.as_str(), |(h, _)| h);
        let mut tls = ClientTlsConfig::new().domain_name(host.trim_matches(['[', ']']));
        tls = match &config.tls_cert_path {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| AgentError::TlsCert {
                    path: path.clone(),
                    source,
                })?;
                tls.ca_certificate(Certificate::from_pem(pem))
            }
            None => tls.with_native_roots(),
        };
        endpoint = endpoint.tls_config(tls).map_err(dial)?;
    }
    let channel = tokio::time::timeout(DIAL_TIMEOUT, endpoint.connect())
        .await
        .map_err(|_| AgentError::DialTimeout {
            server: config.server.clone(),
            after: DIAL_TIMEOUT,
        })?
        .map_err(dial)?;
    Ok(BuildManagerClient::new(channel))
}

async fn with_timeout<T>(
    limit: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {limit:?}"
        ))),
    }
}

/// The job's side of the protocol after registration: phases with sequence numbers.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) client: BuildManagerClient<Channel>,
    pub(crate) job_jwt: String,
    pub(crate) logs: Logs,
    sequence: i32,
}

impl Session {
    /// Send `SetPhase` (`req.phase` and extras; token and sequence number are filled in).
    /// A refusal stops the build; transport failures are retried a few times.
    pub(crate) async fn set_phase(&mut self, mut req: SetPhaseRequest) -> Result<(), Stop> {
        let phase = req.phase();
        self.logs.set_phase(phase_name(phase));
        self.sequence += 1;
        req.job_jwt.clone_from(&self.job_jwt);
        req.sequence_number = self.sequence;
        let mut last_error = String::new();
        for attempt in 1..=SET_PHASE_ATTEMPTS {
            match with_timeout(SET_PHASE_TIMEOUT, self.client.set_phase(req.clone())).await {
                Ok(resp) if resp.success && resp.sequence_number == req.sequence_number => {
                    tracing::info!(
                        phase = phase_name(phase),
                        sequence = req.sequence_number,
                        "phase set"
                    );
                    return Ok(());
                }
                Ok(resp) => {
                    tracing::error!(
                        phase = phase_name(phase),
                        success = resp.success,
                        echoed = resp.sequence_number,
                        sent = req.sequence_number,
                        "buildman refused the phase change"
                    );
                    return Err(Stop::Rejected(phase));
                }
                // An invalid job token: the job is over as far as buildman is concerned.
                Err(status) if status.code() == tonic::Code::Unauthenticated => {
                    tracing::error!(phase = phase_name(phase), error = %status.message(), "buildman refused the job token");
                    return Err(Stop::Rejected(phase));
                }
                Err(status) => {
                    last_error = format!(
                        "SetPhase({}) failed: {}",
                        phase_name(phase),
                        status.message()
                    );
                    tracing::warn!(attempt, error = %last_error, "retrying");
                    if attempt < SET_PHASE_ATTEMPTS {
                        tokio::time::sleep(logs::backoff(attempt + 2)).await;
                    }
                }
            }
        }
        Err(Stop::ServerLost(last_error))
    }
}

/// Quay's lower-case phase names, as in the log's `phase` field.
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Waiting => "waiting",
        Phase::Unpacking => "unpacking",
        Phase::Pulling => "pulling",
        Phase::Building => "building",
        Phase::Pushing => "pushing",
        Phase::Complete => "complete",
        Phase::Error => "error",
    }
}

/// Run one build: register, build, report. `engine` connects to the container engine (it is
/// awaited after UNPACKING is set, so an unreachable engine is reported as a retryable ERROR);
/// `shutdown` resolving (SIGTERM) stops the build and drops the engine.
pub async fn run<E: Engine>(
    config: &AgentConfig,
    engine: impl Future<Output = Result<E, EngineError>>,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome, AgentError> {
    let client = connect(config).await?;
    with_timeout(CALL_TIMEOUT, client.clone().ping(PingRequest {}))
        .await
        .map_err(AgentError::Ping)?;
    let (logs, log_rx) = logs::channel();
    let log_task = logs::spawn_stream(client.clone(), log_rx);
    let pack: BuildPack = with_timeout(
        CALL_TIMEOUT,
        client.clone().register_build_job(BuildJobArgs {
            register_jwt: config.token.clone(),
        }),
    )
    .await
    .map_err(AgentError::Register)?;
    tracing::info!(repository = %pack.repository, tags = ?pack.tag_names, "registered the build job");
    logs.set_job_jwt(&pack.job_jwt);

    let work = match &config.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| AgentError::WorkDir {
                path: dir.clone(),
                source,
            })?;
            tempfile::Builder::new().prefix("source-").tempdir_in(dir)
        }
        None => tempfile::Builder::new().prefix("quarry-source-").tempdir(),
    }
    .map_err(|source| AgentError::WorkDir {
        path: config.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        source,
    })?;

    let mut session = Session {
        client: client.clone(),
        job_jwt: pack.job_jwt.clone(),
        logs: logs.clone(),
        sequence: 0,
    };
    let mut beats = heartbeat::start(client, pack.job_jwt.clone(), heartbeat::PERIOD);
    let mut engine_slot: Option<E> = None;
    let mut images: Vec<String> = Vec::new();
    let result = {
        let build = async {
            session
                .set_phase(SetPhaseRequest {
                    phase: Phase::Unpacking as i32,
                    ..SetPhaseRequest::default()
                })
                .await?;
            let engine = engine_slot.insert(engine.await.map_err(|e| Stop::engine(&e))?);
            let build = steps::Build {
                config,
                pack: &pack,
                engine,
                work: work.path(),
                images: &mut images,
            };
            build.run(&mut session).await
        };
        tokio::select! {
            r = build => r,
            () = beats.job_gone() => Err(Stop::JobGone),
            () = shutdown => Err(Stop::Terminated),
        }
    };
    let stats = beats.stop().await;
    tracing::debug!(?stats, "heartbeats stopped");

    let outcome = match result {
        Ok(manifest_digests) => {
            let done = session
                .set_phase(SetPhaseRequest {
                    phase: Phase::Complete as i32,
                    manifest_digests: manifest_digests.clone(),
                    ..SetPhaseRequest::default()
                })
                .await;
            match done {
                Ok(()) => Outcome::Complete { manifest_digests },
                Err(stop) => stop_outcome(stop),
            }
        }
        Err(Stop::Failed { message, retryable }) => {
            logs.send(LogLine::error(&message)).await;
            let reported = session
                .set_phase(SetPhaseRequest {
                    phase: Phase::Error as i32,
                    error_message: message.clone(),
                    retryable,
                    ..SetPhaseRequest::default()
                })
                .await;
            match (reported, retryable) {
                (Err(stop), _) => stop_outcome(stop),
                (Ok(()), true) => Outcome::InfraError { message },
                (Ok(()), false) => Outcome::UserError { message },
            }
        }
        Err(stop) => stop_outcome(stop),
    };

    if let Some(engine) = engine_slot {
        if outcome != Outcome::Terminated {
            // Best effort: the work directory (and a private podman's storage) goes anyway.
            for image in images.iter().rev() {
                if let Err(e) = engine.remove(image).await {
                    tracing::debug!(image, error = %e, "cleanup: could not remove image");
                }
            }
        }
        engine.shutdown().await;
    }
    drop(session);
    drop(logs);
    // After SIGTERM the executor kills us within seconds: do not wait on a slow stream then.
    let drain = if outcome == Outcome::Terminated {
        Duration::from_secs(2)
    } else {
        LOG_DRAIN_TIMEOUT
    };
    match tokio::time::timeout(drain, log_task).await {
        Ok(Ok(stats)) => tracing::debug!(?stats, "log stream finished"),
        _ => tracing::warn!("the log stream did not finish in time"),
    }
    Ok(outcome)
}

fn stop_outcome(stop: Stop) -> Outcome {
    match stop {
        Stop::Failed { message, retryable } if retryable => Outcome::InfraError { message },
        Stop::Failed { message, .. } => Outcome::UserError { message },
        Stop::Rejected(phase) => Outcome::Rejected { phase },
        Stop::JobGone => Outcome::JobGone,
        Stop::ServerLost(message) => Outcome::ServerLost { message },
        Stop::Terminated => Outcome::Terminated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_separate_delivered_infra_and_refused() {
        let complete = Outcome::Complete {
            manifest_digests: vec![],
        };
        assert_eq!(complete.exit_code(), 0);
        assert_eq!(
            Outcome::UserError {
                message: "x".into()
            }
            .exit_code(),
            0
        );
        assert_eq!(
            Outcome::InfraError {
                message: "x".into()
            }
            .exit_code(),
            1
        );
        assert_eq!(
            Outcome::ServerLost {
                message: "x".into()
            }
            .exit_code(),
            1
        );
        assert_eq!(
            Outcome::Rejected {
                phase: Phase::Building
            }
            .exit_code(),
            3
        );
        assert_eq!(Outcome::JobGone.exit_code(), 3);
        assert_eq!(Outcome::Terminated.exit_code(), 143);
    }

    fn tls_config(tls_cert_path: Option<PathBuf>) -> AgentConfig {
        // A port nothing listens on: bind, read it, release it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let vars = [("SERVER", format!("127.0.0.1:{port}"))];
        let mut config = AgentConfig::from_lookup(|k| {
            vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        })
        .unwrap();
        config.tls_cert_path = tls_cert_path;
        config
    }

    #[tokio::test]
    async fn tls_dial_reads_the_ca_file_and_fails_cleanly() {
        let missing = tls_config(Some(PathBuf::from("/nonexistent/ca.pem")));
        let err = connect(&missing).await.unwrap_err();
        assert!(matches!(err, AgentError::TlsCert { .. }), "{err:?}");
        assert!(err.to_string().contains("TLS_CERT_PATH"), "{err}");
        // The machine's roots, TLS to a closed port: a dial error, not a crypto-provider panic.
        let err = connect(&tls_config(None)).await.unwrap_err();
        assert!(
            matches!(
                err,
                AgentError::Dial { .. } | AgentError::DialTimeout { .. }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("failed to dial grpc server"),
            "{err}"
        );
    }

    #[test]
    fn phase_names_are_quays() {
        assert_eq!(phase_name(Phase::Unpacking), "unpacking");
        assert_eq!(phase_name(Phase::Complete), "complete");
    }
}
