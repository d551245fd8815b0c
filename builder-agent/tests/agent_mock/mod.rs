//! A mock buildman for agent tests: a real tonic `BuildManager` server on 127.0.0.1:0 that
//! answers from a fixed build pack and records every call with the time it arrived.
#![allow(
    dead_code,
    unreachable_pub,
    missing_debug_implementations,
    clippy::unwrap_used
)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buildman_proto::{
    BuildJobArgs, BuildManager, BuildManagerServer, BuildPack, CachedTag, CachedTagRequest,
    HeartbeatRequest, HeartbeatResponse, LogMessageRequest, LogMessageResponse, Phase, PingReply,
    PingRequest, SetPhaseRequest, SetPhaseResponse,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// How the mock answers.
#[derive(Clone, Default)]
pub struct MockConfig {
    /// Returned by RegisterBuildJob (job_jwt defaults to "job-jwt").
    pub pack: BuildPack,
    /// Returned by DetermineCachedTag.
    pub cached_tag: String,
    /// SetPhase of this phase answers success=false.
    pub reject_phase: Option<Phase>,
    /// Heartbeats answer reply=false.
    pub refuse_heartbeats: bool,
    /// The first LogMessage stream is closed by the server after this many messages.
    pub close_first_log_stream_after: Option<usize>,
}

/// One recorded call.
#[derive(Clone, Debug)]
pub enum Call {
    Ping,
    Register(String),
    Phase(SetPhaseRequest),
    Log {
        stream: usize,
        req: LogMessageRequest,
    },
    Heartbeat {
        stream: usize,
        jwt: String,
    },
    CachedTag(CachedTagRequest),
}

#[derive(Default)]
struct State {
    config: MockConfig,
    calls: Mutex<Vec<(Instant, Call)>>,
    log_streams: Mutex<usize>,
    heartbeat_streams: Mutex<usize>,
}

impl State {
    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push((Instant::now(), call));
    }
}

#[derive(Clone)]
struct Mock(Arc<State>);

/// A running mock; stopped on drop.
pub struct MockServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    _stop: oneshot::Sender<()>,
}

pub const JOB_JWT: &str = "job-jwt";

/// Start the mock on 127.0.0.1:0.
pub async fn start(mut config: MockConfig) -> MockServer {
    if config.pack.job_jwt.is_empty() {
        config.pack.job_jwt = JOB_JWT.to_owned();
    }
    let state = Arc::new(State {
        config,
        ..State::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let (stop, stopped) = oneshot::channel::<()>();
    let service = BuildManagerServer::new(Mock(state.clone()));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    MockServer {
        addr,
        state,
        _stop: stop,
    }
}

impl MockServer {
    /// `127.0.0.1:PORT`, the agent's SERVER.
    pub fn server(&self) -> String {
        self.addr.to_string()
    }

    pub fn calls(&self) -> Vec<(Instant, Call)> {
        self.state.calls.lock().unwrap().clone()
    }

    /// SetPhase requests in arrival order.
    pub fn phases(&self) -> Vec<SetPhaseRequest> {
        self.calls()
            .into_iter()
            .filter_map(|(_, c)| match c {
                Call::Phase(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    pub fn phase_list(&self) -> Vec<Phase> {
        self.phases().iter().map(SetPhaseRequest::phase).collect()
    }

    /// `(stream number, request)` of every log message, in arrival order.
    pub fn logs(&self) -> Vec<(usize, LogMessageRequest)> {
        self.calls()
            .into_iter()
            .filter_map(|(_, c)| match c {
                Call::Log { stream, req } => Some((stream, req)),
                _ => None,
            })
            .collect()
    }

    /// The text of every log line, in order.
    pub fn log_texts(&self) -> Vec<String> {
        self.logs()
            .into_iter()
            .map(|(_, r)| r.log_message)
            .collect()
    }

    /// Arrival times of heartbeats.
    pub fn heartbeat_times(&self) -> Vec<Instant> {
        self.calls()
            .into_iter()
            .filter_map(|(at, c)| matches!(c, Call::Heartbeat { .. }).then_some(at))
            .collect()
    }

    pub fn log_streams_opened(&self) -> usize {
        *self.state.log_streams.lock().unwrap()
    }
}

#[tonic::async_trait]
impl BuildManager for Mock {
    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        self.0.record(Call::Ping);
        Ok(Response::new(PingReply {
            reply: "pong".into(),
        }))
    }

    async fn register_build_job(
        &self,
        request: Request<BuildJobArgs>,
    ) -> Result<Response<BuildPack>, Status> {
        self.0
            .record(Call::Register(request.into_inner().register_jwt));
        Ok(Response::new(self.0.config.pack.clone()))
    }

    type HeartbeatStream = ReceiverStream<Result<HeartbeatResponse, Status>>;

    async fn heartbeat(
        &self,
        request: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        let stream = {
            let mut n = self.0.heartbeat_streams.lock().unwrap();
            *n += 1;
            *n
        };
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let state = self.0.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                state.record(Call::Heartbeat {
                    stream,
                    jwt: req.job_jwt,
                });
                let reply = !state.config.refuse_heartbeats;
                if tx.send(Ok(HeartbeatResponse { reply })).await.is_err() {
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
        let success = self.0.config.reject_phase != Some(req.phase());
        let sequence_number = req.sequence_number;
        self.0.record(Call::Phase(req));
        Ok(Response::new(SetPhaseResponse {
            success,
            sequence_number,
        }))
    }

    type LogMessageStream = ReceiverStream<Result<LogMessageResponse, Status>>;

    async fn log_message(
        &self,
        request: Request<Streaming<LogMessageRequest>>,
    ) -> Result<Response<Self::LogMessageStream>, Status> {
        let stream = {
            let mut n = self.0.log_streams.lock().unwrap();
            *n += 1;
            *n
        };
        let close_after = self
            .0
            .config
            .close_first_log_stream_after
            .filter(|_| stream == 1);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let state = self.0.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut seen = 0;
            while let Ok(Some(req)) = inbound.message().await {
                if close_after == Some(seen) {
                    // Drop the response sender without answering: the stream ends mid-call.
                    return;
                }
                seen += 1;
                let sequence_number = req.sequence_number;
                let fresh = sequence_number > last && req.job_jwt == JOB_JWT;
                state.record(Call::Log { stream, req });
                let resp = if fresh {
                    last = sequence_number;
                    LogMessageResponse {
                        success: true,
                        sequence_number,
                    }
                } else {
                    LogMessageResponse {
                        success: false,
                        sequence_number: 0,
                    }
                };
                if tx.send(Ok(resp)).await.is_err() {
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
        self.0.record(Call::CachedTag(request.into_inner()));
        Ok(Response::new(CachedTag {
            cached_tag: self.0.config.cached_tag.clone(),
        }))
    }
}

/// Serve `files` (path -> body) over HTTP on 127.0.0.1:0; returns the base URL. The server
/// lives as long as the runtime.
pub async fn serve_files(files: Vec<(&'static str, Vec<u8>)>) -> String {
    use axum::routing::get;
    let mut app = axum::Router::new();
    for (path, body) in files {
        app = app.route(path, get(move || async move { body.clone() }));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// Wait until `check` holds, polling, or panic after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
