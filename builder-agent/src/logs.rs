//! Build log lines and the `LogMessage` stream that carries them to buildman.
//!
//! Every producer (engine output, the agent's own progress lines, source-fetch progress) holds a
//! [`Logs`] handle; all handles feed one queue, so lines keep the order they were produced in.
//! One task ([`spawn_stream`]) owns the bidi stream: it numbers the lines, sends one at a time and
//! waits for each answer, as Quay's agent does. A rejected line is logged and skipped; a broken
//! stream is re-opened with backoff (Quay's agent died instead) and the unanswered line resent.

use std::time::Duration;

use buildman_proto::{BuildManagerClient, LogMessageRequest, LogMessageResponse};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

/// How long opening the stream or one answer may take before the stream counts as broken.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the eager open before registration may take (it is retried lazily otherwise).
const EAGER_OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Sends of one line (each on a fresh stream after the first) before the line is dropped.
const MAX_ATTEMPTS: u32 = 5;

/// One log line: the JSON object sent as `log_message`, in the shape Quay's agent sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine(String);

/// The fields of an engine message that are forwarded, as Quay's agent re-marshals them:
/// empty fields are omitted.
#[derive(Debug, Default, Serialize)]
pub struct EngineMessage<'a> {
    /// An error reported by the engine.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub error: &'a str,
    /// Build output.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub stream: &'a str,
    /// Pull/push status.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub status: &'a str,
    /// Layer id of a pull/push progress message.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub id: &'a str,
    /// Byte progress, when the engine reports it.
    #[serde(rename = "progressDetail", skip_serializing_if = "Option::is_none")]
    pub progress_detail: Option<Progress>,
}

/// `progressDetail` of an engine message.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Progress {
    /// Bytes done.
    pub current: i64,
    /// Bytes in all.
    pub total: i64,
}

impl LogLine {
    /// `{"stream": text}`: build output and the agent's own progress lines.
    pub fn stream(text: &str) -> LogLine {
        LogLine::engine(&EngineMessage {
            stream: text,
            ..EngineMessage::default()
        })
    }

    /// `{"error": text}`: an error, forwarded to the user's log (Quay's agent kept these back).
    pub fn error(text: &str) -> LogLine {
        LogLine::engine(&EngineMessage {
            error: text,
            ..EngineMessage::default()
        })
    }

    /// An engine message; `None` when it has nothing to show.
    pub fn from_engine(msg: &EngineMessage<'_>) -> Option<LogLine> {
        let empty = msg.error.is_empty()
            && msg.stream.is_empty()
            && msg.status.is_empty()
            && msg.progress_detail.is_none();
        (!empty).then(|| LogLine::engine(msg))
    }

    fn engine(msg: &EngineMessage<'_>) -> LogLine {
        LogLine(serde_json::to_string(msg).expect("a struct of strings and integers serialises"))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug)]
enum Command {
    Line(LogLine, Option<oneshot::Sender<()>>),
    JobJwt(String),
    Phase(&'static str),
}

/// A handle producers write log lines through; cheap to clone.
#[derive(Debug, Clone)]
pub struct Logs {
    tx: mpsc::UnboundedSender<Command>,
}

/// The consuming end of [`Logs`]: what [`spawn_stream`] (or a test) drains.
#[derive(Debug)]
pub struct LogReceiver {
    rx: mpsc::UnboundedReceiver<Command>,
}

/// A connected pair of [`Logs`] and [`LogReceiver`].
pub fn channel() -> (Logs, LogReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Logs { tx }, LogReceiver { rx })
}

impl Logs {
    /// Queue `line` and wait until buildman answered it (or it was given up on). The queue is
    /// unbounded so that sync producers ([`Logs::post`]) never block; `send` is the back-pressure.
    pub async fn send(&self, line: LogLine) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Command::Line(line, Some(ack))).is_ok() {
            // An error means the stream task ended; nothing to wait for then.
            let _ = done.await;
        }
    }

    /// Queue `line` without waiting (for synchronous callbacks); order is kept.
    pub fn post(&self, line: LogLine) {
        let _ = self.tx.send(Command::Line(line, None));
    }

    /// Wait until every line queued so far was answered.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self
            .tx
            .send(Command::Line(LogLine(String::new()), Some(ack)))
            .is_ok()
        {
            let _ = done.await;
        }
    }

    /// The job token to attach to lines from now on.
    pub fn set_job_jwt(&self, jwt: &str) {
        let _ = self.tx.send(Command::JobJwt(jwt.to_owned()));
    }

    /// The phase name (`pulling`, ...) to attach to lines from now on (informational).
    pub fn set_phase(&self, phase: &'static str) {
        let _ = self.tx.send(Command::Phase(phase));
    }
}

impl LogReceiver {
    /// The next line and its acknowledgement, skipping metadata commands (tests use this).
    pub async fn next_line(&mut self) -> Option<(LogLine, Option<oneshot::Sender<()>>)> {
        loop {
            match self.rx.recv().await? {
                Command::Line(line, ack) => return Some((line, ack)),
                Command::JobJwt(_) | Command::Phase(_) => {}
            }
        }
    }
}

/// What the stream task did, returned when every [`Logs`] handle is gone.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    /// Lines buildman accepted.
    pub accepted: u64,
    /// Lines buildman answered with `success=false`.
    pub rejected: u64,
    /// Lines given up on after five sends on broken streams.
    pub dropped: u64,
    /// Streams opened (1 when none broke).
    pub streams_opened: u64,
}

struct OpenStream {
    tx: mpsc::Sender<LogMessageRequest>,
    inbound: Streaming<LogMessageResponse>,
}

struct StreamTask {
    client: BuildManagerClient<Channel>,
    stream: Option<OpenStream>,
    jwt: String,
    phase: &'static str,
    sequence: i32,
    stats: LogStats,
}

/// Run the `LogMessage` stream for `rx` until every [`Logs`] handle is dropped. The stream is
/// opened at once, before any line, as Quay's agent does before registering.
pub fn spawn_stream(
    client: BuildManagerClient<Channel>,
    mut rx: LogReceiver,
) -> tokio::task::JoinHandle<LogStats> {
    tokio::spawn(async move {
        let mut task = StreamTask {
            client,
            stream: None,
            jwt: String::new(),
            phase: "",
            sequence: 0,
            stats: LogStats::default(),
        };
        match tokio::time::timeout(EAGER_OPEN_TIMEOUT, task.open(None)).await {
            Ok(Ok(s)) => task.stream = Some(s),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not open the log stream yet"),
            Err(_) => tracing::warn!("the log stream did not open in time; retrying on first line"),
        }
        while let Some(cmd) = rx.rx.recv().await {
            match cmd {
                Command::JobJwt(jwt) => task.jwt = jwt,
                Command::Phase(phase) => task.phase = phase,
                Command::Line(line, ack) => {
                    // An empty line is a flush marker: everything before it was answered.
                    if !line.0.is_empty() {
                        task.send(line.0).await;
                    }
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                }
            }
        }
        task.stats
    })
}

impl StreamTask {
    async fn open(&mut self, first: Option<LogMessageRequest>) -> Result<OpenStream, String> {
        let (tx, rx) = mpsc::channel(16);
        if let Some(first) = first {
            // Queued before the call so that a server which reads the first message before
            // answering with headers still gets it.
            tx.send(first).await.map_err(|e| e.to_string())?;
        }
        let call = self.client.log_message(ReceiverStream::new(rx));
        let inbound = tokio::time::timeout(ANSWER_TIMEOUT, call)
            .await
            .map_err(|_| "timed out opening the log stream".to_owned())?
            .map_err(|s| format!("opening the log stream failed: {}", s.message()))?
            .into_inner();
        self.stats.streams_opened += 1;
        Ok(OpenStream { tx, inbound })
    }

    async fn send(&mut self, text: String) {
        self.sequence += 1;
        let req = LogMessageRequest {
            job_jwt: self.jwt.clone(),
            sequence_number: self.sequence,
            log_message: text,
            phase: self.phase.to_owned(),
        };
        for attempt in 1..=MAX_ATTEMPTS {
            let sent = match &mut self.stream {
                Some(s) => s.tx.send(req.clone()).await.is_ok(),
                None => match self.open(Some(req.clone())).await {
                    Ok(s) => {
                        self.stream = Some(s);
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, attempt, "log stream unavailable");
                        false
                    }
                },
            };
            if sent && let Some(s) = &mut self.stream {
                match tokio::time::timeout(ANSWER_TIMEOUT, s.inbound.message()).await {
                    Ok(Ok(Some(resp))) => {
                        if resp.success {
                            self.stats.accepted += 1;
                        } else {
                            self.stats.rejected += 1;
                            tracing::warn!(
                                sequence = req.sequence_number,
                                "buildman rejected a log line"
                            );
                        }
                        return;
                    }
                    Ok(Ok(None)) => tracing::warn!(attempt, "log stream closed by buildman"),
                    Ok(Err(status)) => {
                        tracing::warn!(attempt, error = %status.message(), "log stream broke");
                    }
                    Err(_) => tracing::warn!(attempt, "no answer on the log stream in time"),
                }
            }
            self.stream = None;
            if attempt < MAX_ATTEMPTS {
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
        self.stats.dropped += 1;
        tracing::error!(
            sequence = req.sequence_number,
            "dropped a log line: the log stream kept failing"
        );
    }
}

/// 250 ms, 500 ms, 1 s, 2 s, ... capped at 8 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.saturating_sub(1).min(5)))
        .min(Duration::from_secs(8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_use_quays_json_shape() {
        assert_eq!(
            LogLine::stream("Step 1/2\n").as_str(),
            r#"{"stream":"Step 1/2\n"}"#
        );
        assert_eq!(
            LogLine::error("boom \"x\"").as_str(),
            r#"{"error":"boom \"x\""}"#
        );
        let msg = EngineMessage {
            status: "Pushing",
            id: "abc",
            progress_detail: Some(Progress {
                current: 5,
                total: 10,
            }),
            ..EngineMessage::default()
        };
        assert_eq!(
            LogLine::from_engine(&msg).unwrap().as_str(),
            r#"{"status":"Pushing","id":"abc","progressDetail":{"current":5,"total":10}}"#
        );
        // An id alone (a bare layer announcement) shows nothing.
        let id_only = EngineMessage {
            id: "abc",
            ..EngineMessage::default()
        };
        assert_eq!(LogLine::from_engine(&id_only), None);
    }

    #[tokio::test]
    async fn send_waits_for_the_answer_and_post_keeps_order() {
        let (logs, mut rx) = channel();
        logs.post(LogLine::stream("one"));
        let sender = tokio::spawn({
            let logs = logs.clone();
            async move { logs.send(LogLine::stream("two")).await }
        });
        let (first, ack) = rx.next_line().await.unwrap();
        assert_eq!(first, LogLine::stream("one"));
        assert!(ack.is_none(), "post does not wait");
        let (second, ack) = rx.next_line().await.unwrap();
        assert_eq!(second, LogLine::stream("two"));
        tokio::task::yield_now().await;
        assert!(!sender.is_finished(), "send returned before its answer");
        ack.unwrap().send(()).unwrap();
        sender.await.unwrap();
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(30), Duration::from_secs(8));
    }
}
