//! The generated client and server talk over an in-memory duplex pipe (no sockets): the service
//! and method names on the wire are Quay's, and a streaming RPC echoes sequence numbers.
#![allow(
    clippy::unwrap_used,
    clippy::tests_outside_test_module,
    unreachable_pub,
    missing_debug_implementations
)]

use std::pin::Pin;

use buildman_proto::*;
use hyper_util::rt::TokioIo;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::{Endpoint, Server, Uri};
use tonic::{Request, Response, Status, Streaming};

struct Echo;

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl BuildManager for Echo {
    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        Ok(Response::new(PingReply {
            reply: "pong".into(),
        }))
    }
    async fn register_build_job(
        &self,
        _: Request<BuildJobArgs>,
    ) -> Result<Response<BuildPack>, Status> {
        Err(Status::unauthenticated("Invalid build token: test"))
    }
    type HeartbeatStream = Out<HeartbeatResponse>;
    async fn heartbeat(
        &self,
        _: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn set_phase(
        &self,
        _: Request<SetPhaseRequest>,
    ) -> Result<Response<SetPhaseResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    type LogMessageStream = Out<LogMessageResponse>;
    async fn log_message(
        &self,
        req: Request<Streaming<LogMessageRequest>>,
    ) -> Result<Response<Self::LogMessageStream>, Status> {
        let out = req.into_inner().map(|m| {
            m.map(|m| LogMessageResponse {
                success: true,
                sequence_number: m.sequence_number,
            })
        });
        Ok(Response::new(Box::pin(out)))
    }
    async fn determine_cached_tag(
        &self,
        _: Request<CachedTagRequest>,
    ) -> Result<Response<CachedTag>, Status> {
        Err(Status::unimplemented("test"))
    }
}

async fn client() -> BuildManagerClient<tonic::transport::Channel> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(
        Server::builder()
            .add_service(BuildManagerServer::new(Echo))
            .serve_with_incoming(tokio_stream::iter(vec![Ok::<_, std::io::Error>(server_io)])),
    );
    let mut client_io = Some(client_io);
    let channel = Endpoint::try_from("http://duplex.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let io = client_io.take();
            async move {
                io.map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the duplex pipe is used once"))
            }
        }))
        .await
        .unwrap();
    BuildManagerClient::new(channel)
}

#[tokio::test]
async fn ping_register_and_a_log_stream_cross_the_wire() {
    let mut c = client().await;
    assert_eq!(
        c.ping(PingRequest {}).await.unwrap().into_inner().reply,
        "pong"
    );
    let err = c
        .register_build_job(BuildJobArgs {
            register_jwt: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let msgs = (1..=3).map(|n| LogMessageRequest {
        job_jwt: "j".into(),
        sequence_number: n,
        log_message: format!("line {n}"),
        phase: String::new(),
    });
    let mut replies = c
        .log_message(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(r) = replies.next().await {
        let r = r.unwrap();
        assert!(r.success);
        seen.push(r.sequence_number);
    }
    assert_eq!(seen, vec![1, 2, 3]);
}
