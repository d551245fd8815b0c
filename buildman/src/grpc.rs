//! The `buildman_pb.BuildManager` gRPC service the agents dial (reference 1.2).
//!
//! This module only verifies tokens, converts wire types to domain types and back, and delegates
//! to [`Manager`]. It is async throughout (tonic), so the two long-lived streams of every build
//! hold no thread (Quay's thread pool ran out at about 5 builds: 1.5).

use std::sync::Arc;
use std::time::{Duration, Instant};

use buildman_proto::{
    BaseImage, BuildJobArgs, BuildManager, BuildManagerServer, BuildPack, BuildPackSource,
    CachedTag, CachedTagRequest, GitPackage, HeartbeatRequest, HeartbeatResponse,
    LogMessageRequest, LogMessageResponse, PingReply, PingRequest, SetPhaseRequest,
    SetPhaseResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::manager::{
    BuildPackSpec, Manager, ManagerError, PackSource, PhaseReport, PullInfo, error_chain,
};
use crate::model::Phase;
use crate::tokens::{BuildContext, TokenType};

/// Largest message accepted or sent: log lines can be long (Quay raised nginx's limit to 5 MB for
/// them, PROJQUAY-3534).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// A `LogMessage` counts as a heartbeat at most this often per stream (each one writes the job
/// record; a build printing thousands of lines needs no thousands of writes).
const LOG_HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// The gRPC service over a manager.
#[derive(Clone, Debug)]
pub struct BuildManagerService {
    manager: Arc<Manager>,
}

/// The tonic service for `manager`, with generous message size limits.
pub fn service(manager: Arc<Manager>) -> BuildManagerServer<BuildManagerService> {
    BuildManagerServer::new(BuildManagerService { manager })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

impl From<ManagerError> for Status {
    fn from(e: ManagerError) -> Status {
        match e {
            // Quay's wording, which agents and operators grep for.
            ManagerError::Token(t) => Status::unauthenticated(format!("Invalid build token: {t}")),
            ManagerError::JobGone(_) | ManagerError::UnknownBuild(_) => {
                Status::failed_precondition(e.to_string())
            }
            other => {
                tracing::error!(error = %error_chain(&other), "build manager call failed");
                Status::internal(other.to_string())
            }
        }
    }
}

/// A token verified once per stream and reused while the agent sends the same one.
#[derive(Default)]
struct CachedToken(Option<(String, BuildContext)>);

impl CachedToken {
    fn verify(&mut self, manager: &Manager, token: &str) -> Result<BuildContext, Status> {
        if let Some((t, ctx)) = &self.0
            && t == token
        {
            return Ok(ctx.clone());
        }
        let ctx = manager.verify_token(token, TokenType::Job)?;
        self.0 = Some((token.to_owned(), ctx.clone()));
        Ok(ctx)
    }
}

fn wire_pack(pack: BuildPackSpec) -> BuildPack {
    let source = match pack.source {
        PackSource::Url(url) => BuildPackSource::PackageUrl(url),
        PackSource::Git {
            url,
            sha,
            private_key,
        } => BuildPackSource::GitPackage(GitPackage {
            url,
            sha,
            private_key,
        }),
    };
    BuildPack {
        job_jwt: pack.job_token,
        build_pack: Some(source),
        context: pack.context,
        dockerfile_path: pack.dockerfile_path,
        repository: pack.repository,
        registry: pack.registry,
        pull_token: pack.pull_token,
        push_token: pack.push_token,
        tag_names: pack.tag_names,
        base_image: pack.base_image.map(|b| BaseImage {
            username: b.username,
            password: b.password,
        }),
        build_args: pack.build_args.into_iter().collect(),
    }
}

fn domain_phase(req: &SetPhaseRequest) -> Result<Phase, Status> {
    use buildman_proto::Phase as Wire;
    let wire = Wire::try_from(req.phase)
        .map_err(|_| Status::invalid_argument(format!("unknown phase {}", req.phase)))?;
    Ok(match wire {
        Wire::Waiting => Phase::Waiting,
        Wire::Unpacking => Phase::Unpacking,
        Wire::Pulling => Phase::Pulling,
        Wire::Building => Phase::Building,
        Wire::Pushing => Phase::Pushing,
        Wire::Complete => Phase::Complete,
        Wire::Error => Phase::Error,
    })
}

#[tonic::async_trait]
impl BuildManager for BuildManagerService {
    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        Ok(Response::new(PingReply {
            reply: "pong".to_owned(),
        }))
    }

    async fn register_build_job(
        &self,
        request: Request<BuildJobArgs>,
    ) -> Result<Response<BuildPack>, Status> {
        let args = request.into_inner();
        let ctx = self
            .manager
            .verify_token(&args.register_jwt, TokenType::Registration)?;
        match self.manager.start_job(&ctx).await {
            Ok(pack) => Ok(Response::new(wire_pack(pack))),
            // Quay's wording first. Refusals the agent can do nothing about are not internal
            // errors: the job is over or was registered already, or the build cannot run (it
            // has been ended as `error` with the reason).
            Err(
                e @ (ManagerError::JobGone(_)
                | ManagerError::UnknownBuild(_)
                | ManagerError::AlreadyRegistered(_)),
            ) => {
                tracing::warn!(build_id = %ctx.build_id, error = %e, "registration refused");
                Err(Status::failed_precondition(format!(
                    "Build manager unable to start job: {e}"
                )))
            }
            Err(e) if e.is_build_fault() => Err(Status::failed_precondition(format!(
                "Build manager unable to start job: {}",
                error_chain(&e)
            ))),
            Err(e) => {
                tracing::error!(build_id = %ctx.build_id, error = %error_chain(&e),
                    "failed to start job");
                Err(Status::internal(format!(
                    "Build manager unable to start job: {e}"
                )))
            }
        }
    }

    type HeartbeatStream = ReceiverStream<Result<HeartbeatResponse, Status>>;

    async fn heartbeat(
        &self,
        request: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let manager = Arc::clone(&self.manager);
        tokio::spawn(async move {
            let mut token = CachedToken::default();
            while let Ok(Some(req)) = inbound.message().await {
                let reply = match token.verify(&manager, &req.job_jwt) {
                    Ok(ctx) => manager
                        .job_heartbeat(&ctx)
                        .await
                        .map(|reply| HeartbeatResponse { reply })
                        .map_err(Status::from),
                    Err(status) => Err(status),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn set_phase(
        &self,
        request: Request<SetPhaseRequest>,
    ) -> Result<Response<SetPhaseResponse>, Status> {
        let req = request.into_inner();
        let ctx = self.manager.verify_token(&req.job_jwt, TokenType::Job)?;
        let report = PhaseReport {
            sequence_number: req.sequence_number,
            phase: domain_phase(&req)?,
            pull: req.pull_metadata.map(|m| PullInfo {
                registry_url: m.registry_url,
                base_image: m.base_image,
                base_image_tag: m.base_image_tag,
                pull_username: m.pull_username,
            }),
            error_message: req.error_message,
            retryable: req.retryable,
            manifest_digests: req.manifest_digests,
        };
        let success = self.manager.update_job_phase(&ctx, report).await?;
        Ok(Response::new(SetPhaseResponse {
            success,
            sequence_number: req.sequence_number,
        }))
    }

    type LogMessageStream = ReceiverStream<Result<LogMessageResponse, Status>>;

    async fn log_message(
        &self,
        request: Request<Streaming<LogMessageRequest>>,
    ) -> Result<Response<Self::LogMessageStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let manager = Arc::clone(&self.manager);
        tokio::spawn(async move {
            let mut stream = LogStream::default();
            while let Ok(Some(req)) = inbound.message().await {
                let (reply, end) = match stream.handle(&manager, req).await {
                    Ok(Line::Accepted(r) | Line::Refused(r)) => (Ok(r), false),
                    Ok(Line::JobOver(r)) => (Ok(r), true),
                    Err(status) => (Err(status), true),
                };
                if tx.send(reply).await.is_err() || end {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn determine_cached_tag(
        &self,
        request: Request<CachedTagRequest>,
    ) -> Result<Response<CachedTag>, Status> {
        let req = request.into_inner();
        let ctx = self.manager.verify_token(&req.job_jwt, TokenType::Job)?;
        let tag = self.manager.determine_cached_tag(&ctx).await?;
        Ok(Response::new(CachedTag { cached_tag: tag }))
    }
}

/// State of one `LogMessage` stream.
#[derive(Default)]
struct LogStream {
    token: CachedToken,
    last_seq: Option<i32>,
    last_beat: Option<Instant>,
}

/// What became of one log line.
enum Line {
    /// Appended.
    Accepted(LogMessageResponse),
    /// A sequence number not above the last one (Quay refuses it; the stream goes on).
    Refused(LogMessageResponse),
    /// The token's job is gone or belongs to another attempt: refused, and the stream ends.
    JobOver(LogMessageResponse),
}

/// Quay's refusal: `success = false` without an echoed sequence number.
const REFUSED: LogMessageResponse = LogMessageResponse {
    success: false,
    sequence_number: 0,
};

impl LogStream {
    async fn handle(&mut self, manager: &Manager, req: LogMessageRequest) -> Result<Line, Status> {
        if self
            .last_seq
            .is_some_and(|last| req.sequence_number <= last)
        {
            return Ok(Line::Refused(REFUSED));
        }
        let ctx = self.token.verify(manager, &req.job_jwt)?;
        if self
            .last_beat
            .is_none_or(|t| t.elapsed() >= LOG_HEARTBEAT_EVERY)
        {
            self.last_beat = Some(Instant::now());
            if !manager.job_heartbeat(&ctx).await? {
                return Ok(Line::JobOver(REFUSED));
            }
        }
        // Between heartbeats, the append itself checks that the token's attempt still runs.
        if !manager.append_agent_log(&ctx, &req.log_message).await? {
            return Ok(Line::JobOver(REFUSED));
        }
        self.last_seq = Some(req.sequence_number);
        Ok(Line::Accepted(LogMessageResponse {
            success: true,
            sequence_number: req.sequence_number,
        }))
    }
}
