//! The fake agent: Quay's call order over a real tonic client.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildman::executor::StartJob;
use buildman_proto::{
    BuildJobArgs, BuildManagerClient, BuildPack, HeartbeatRequest, LogMessageRequest,
    LogMessageResponse, SetPhaseRequest, SetPhaseResponse,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{AgentScript, script};

/// A fake agent speaking the real protocol over a tonic client.
pub struct FakeAgent {
    pub client: BuildManagerClient<Channel>,
    pub pack: BuildPack,
    seq: i32,
    log_seq: i32,
    logs: Option<(
        mpsc::Sender<LogMessageRequest>,
        tonic::Streaming<buildman_proto::LogMessageResponse>,
    )>,
    heartbeats: Option<JoinHandle<()>>,
    /// Replies of the heartbeat stream, in order.
    pub beats: Arc<Mutex<Vec<bool>>>,
}

impl FakeAgent {
    pub async fn client(addr: SocketAddr) -> BuildManagerClient<Channel> {
        BuildManagerClient::connect(format!("http://{addr}"))
            .await
            .unwrap()
    }

    /// Dial and register with the job's registration token.
    pub async fn register(job: &StartJob, addr: SocketAddr) -> Result<FakeAgent, tonic::Status> {
        let mut client = FakeAgent::client(addr).await;
        let pack = client
            .register_build_job(BuildJobArgs {
                register_jwt: job.registration_token.clone(),
            })
            .await?
            .into_inner();
        Ok(FakeAgent {
            client,
            pack,
            seq: 0,
            log_seq: 0,
            logs: None,
            heartbeats: None,
            beats: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Heartbeat every `period` on one stream, until a `false` reply or
    /// [`FakeAgent::stop_heartbeats`].
    pub async fn start_heartbeats(&mut self, period: Duration) {
        let (tx, rx) = mpsc::channel(4);
        let jwt = self.pack.job_jwt.clone();
        let mut replies = self
            .client
            .heartbeat(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let beats = Arc::clone(&self.beats);
        self.heartbeats = Some(tokio::spawn(async move {
            loop {
                if tx
                    .send(HeartbeatRequest {
                        job_jwt: jwt.clone(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                let reply = match replies.message().await {
                    Ok(Some(r)) => r.reply,
                    _ => return,
                };
                beats.lock().unwrap().push(reply);
                if !reply {
                    return;
                }
                tokio::time::sleep(period).await;
            }
        }));
    }

    pub fn stop_heartbeats(&mut self) {
        if let Some(h) = self.heartbeats.take() {
            h.abort();
        }
    }

    /// `SetPhase` with the next sequence number.
    pub async fn phase(&mut self, phase: buildman_proto::Phase) -> bool {
        self.set_phase(SetPhaseRequest {
            phase: phase as i32,
            ..SetPhaseRequest::default()
        })
        .await
        .success
    }

    /// `SetPhase` with `req` (token and, when 0, the next sequence number filled in).
    pub async fn set_phase(&mut self, mut req: SetPhaseRequest) -> SetPhaseResponse {
        if req.sequence_number == 0 {
            self.seq += 1;
            req.sequence_number = self.seq;
        }
        req.job_jwt = self.pack.job_jwt.clone();
        self.client.set_phase(req).await.unwrap().into_inner()
    }

    /// Send one log line on the agent's log stream; returns `success`.
    pub async fn log(&mut self, line: &str) -> bool {
        self.log_reply(line).await.expect("log stream open").success
    }

    /// Send one log line; the reply, or `None` when the server has ended the stream.
    pub async fn log_reply(&mut self, line: &str) -> Option<LogMessageResponse> {
        if self.logs.is_none() {
            let (tx, rx) = mpsc::channel(4);
            let replies = self
                .client
                .log_message(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            self.logs = Some((tx, replies));
        }
        self.log_seq += 1;
        let (tx, replies) = self.logs.as_mut().unwrap();
        tx.send(LogMessageRequest {
            job_jwt: self.pack.job_jwt.clone(),
            sequence_number: self.log_seq,
            log_message: serde_json::json!({ "stream": line }).to_string(),
            phase: String::new(),
        })
        .await
        .ok()?;
        replies.message().await.ok().flatten()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop_heartbeats();
    }
}

/// The whole successful agent: register, heartbeat, every phase, a RUN line, complete.
pub fn completing_agent() -> AgentScript {
    script(|job, addr| async move {
        use buildman_proto::Phase as P;
        let mut agent = FakeAgent::register(&job, addr).await.unwrap();
        agent.start_heartbeats(Duration::from_millis(300)).await;
        assert!(agent.phase(P::Unpacking).await);
        let pulling = agent
            .set_phase(SetPhaseRequest {
                phase: P::Pulling as i32,
                pull_metadata: Some(buildman_proto::PullMetadata {
                    registry_url: "localhost:5000".into(),
                    base_image: "busybox".into(),
                    base_image_tag: "latest".into(),
                    pull_username: String::new(),
                }),
                ..SetPhaseRequest::default()
            })
            .await;
        assert!(pulling.success);
        assert!(agent.phase(P::Building).await);
        assert!(agent.log("STEP 1/2: FROM busybox").await);
        assert!(agent.log("hello from RUN").await);
        assert!(agent.phase(P::Pushing).await);
        agent.stop_heartbeats();
        let done = agent
            .set_phase(SetPhaseRequest {
                phase: P::Complete as i32,
                manifest_digests: vec![format!("sha256:{}", "a".repeat(64))],
                ..SetPhaseRequest::default()
            })
            .await;
        assert!(done.success);
        std::future::pending::<()>().await;
    })
}

/// An agent that registers and then does what `then` says with the agent.
pub fn registering_agent<F, Fut>(then: F) -> AgentScript
where
    F: Fn(FakeAgent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let then = Arc::new(then);
    script(move |job, addr| {
        let then = Arc::clone(&then);
        async move {
            let agent = FakeAgent::register(&job, addr).await.unwrap();
            then(agent).await;
            std::future::pending::<()>().await;
        }
    })
}
