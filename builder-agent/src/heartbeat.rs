//! The `Heartbeat` stream: one `{job_jwt}` every period on a bidi stream, each answered with
//! `reply`. Unlike Quay's agent, a broken stream is re-opened (with backoff) instead of being
//! written to forever after it died, and three `reply=false` in a row (buildman no longer knows
//! the job: it expired or was cancelled) are reported to the agent, which stops the build.

use std::time::Duration;

use buildman_proto::{BuildManagerClient, HeartbeatRequest, HeartbeatResponse};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::logs::backoff;

/// Quay's period between heartbeats.
pub const PERIOD: Duration = Duration::from_secs(2);
/// `reply=false` answers in a row after which the job counts as gone (Quay's count).
pub const FALSE_REPLIES_LIMIT: u32 = 3;
/// How long one answer may take before the stream counts as broken.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before asking again after a `reply=false` (Quay asked again at once).
const FALSE_REPLY_PAUSE: Duration = Duration::from_millis(500);

/// Counters of one heartbeat run, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatStats {
    /// Answers with `reply=true`.
    pub accepted: u64,
    /// Answers with `reply=false`.
    pub refused: u64,
    /// Streams opened (more than 1 means a broken stream was re-opened).
    pub streams_opened: u64,
}

/// A running heartbeat task.
#[derive(Debug)]
pub struct Heartbeat {
    stop: Option<oneshot::Sender<()>>,
    gone: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<HeartbeatStats>,
}

/// Start heartbeating for `job_jwt` every `period`.
pub fn start(client: BuildManagerClient<Channel>, job_jwt: String, period: Duration) -> Heartbeat {
    let (stop_tx, stop_rx) = oneshot::channel();
    let (gone_tx, gone_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut beat = Beat {
            client,
            job_jwt,
            stream: None,
            stats: HeartbeatStats::default(),
        };
        tokio::select! {
            _ = stop_rx => {}
            () = beat.run(period) => {
                tracing::warn!(
                    refused = FALSE_REPLIES_LIMIT,
                    "buildman refused heartbeats: the job is gone (expired or cancelled)"
                );
                let _ = gone_tx.send(true);
            }
        }
        beat.stats
    });
    Heartbeat {
        stop: Some(stop_tx),
        gone: gone_rx,
        task,
    }
}

impl Heartbeat {
    /// Resolves once buildman refused [`FALSE_REPLIES_LIMIT`] heartbeats in a row; pending
    /// forever otherwise (also after [`Heartbeat::stop`]).
    pub async fn job_gone(&mut self) {
        if self.gone.wait_for(|gone| *gone).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Stop heartbeating and return the counters.
    pub async fn stop(mut self) -> HeartbeatStats {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap_or_default()
    }
}

struct Beat {
    client: BuildManagerClient<Channel>,
    job_jwt: String,
    stream: Option<(mpsc::Sender<HeartbeatRequest>, Streaming<HeartbeatResponse>)>,
    stats: HeartbeatStats,
}

impl Beat {
    /// Returns only when the job is gone.
    async fn run(&mut self, period: Duration) {
        let mut refused_in_a_row = 0;
        let mut broken_in_a_row = 0;
        loop {
            match self.beat_once().await {
                Ok(true) => {
                    refused_in_a_row = 0;
                    broken_in_a_row = 0;
                    self.stats.accepted += 1;
                    tokio::time::sleep(period).await;
                }
                Ok(false) => {
                    broken_in_a_row = 0;
                    refused_in_a_row += 1;
                    self.stats.refused += 1;
                    if refused_in_a_row >= FALSE_REPLIES_LIMIT {
                        return;
                    }
                    tokio::time::sleep(FALSE_REPLY_PAUSE).await;
                }
                Err(e) => {
                    broken_in_a_row += 1;
                    self.stream = None;
                    tracing::warn!(error = %e, attempt = broken_in_a_row, "heartbeat stream broke; re-opening");
                    tokio::time::sleep(backoff(broken_in_a_row).min(period)).await;
                }
            }
        }
    }

    async fn beat_once(&mut self) -> Result<bool, String> {
        let req = HeartbeatRequest {
            job_jwt: self.job_jwt.clone(),
        };
        if let Some((tx, _)) = &self.stream {
            tx.send(req).await.map_err(|_| "heartbeat stream closed")?;
        } else {
            let (tx, rx) = mpsc::channel(4);
            // Queued before the call: a server may read it before answering with headers.
            tx.send(req).await.map_err(|_| "heartbeat channel closed")?;
            let call = self.client.heartbeat(ReceiverStream::new(rx));
            let inbound = tokio::time::timeout(ANSWER_TIMEOUT, call)
                .await
                .map_err(|_| "timed out opening the heartbeat stream")?
                .map_err(|s| format!("opening the heartbeat stream failed: {}", s.message()))?
                .into_inner();
            self.stats.streams_opened += 1;
            self.stream = Some((tx, inbound));
        }
        let inbound = &mut self.stream.as_mut().ok_or("heartbeat stream missing")?.1;
        match tokio::time::timeout(ANSWER_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(HeartbeatResponse { reply }))) => Ok(reply),
            Ok(Ok(None)) => Err("heartbeat stream closed by buildman".into()),
            Ok(Err(status)) => Err(format!("heartbeat stream failed: {}", status.message())),
            Err(_) => Err("no heartbeat answer in time".into()),
        }
    }
}
