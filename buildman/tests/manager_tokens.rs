//! Build tokens at the gRPC boundary: the wrong type, an expired token, another audience,
//! another key, another build and an earlier attempt are all refused.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

mod manager_support;

use std::time::Duration;

use buildman::tokens::{BuildTokens, JobIdentity, TokenType};
use buildman_proto::{BuildJobArgs, HeartbeatRequest, Phase as P, SetPhaseRequest};
use manager_support::{FakeAgent, REPO, WAIT};
use tokio_stream::wrappers::ReceiverStream;

const AUDIENCE: &str = "buildman.test:50051";

fn set_phase(jwt: &str, seq: i32) -> SetPhaseRequest {
    SetPhaseRequest {
        job_jwt: jwt.to_owned(),
        sequence_number: seq,
        phase: P::Unpacking as i32,
        ..SetPhaseRequest::default()
    }
}

/// `r` is an UNAUTHENTICATED "Invalid build token: ..." mentioning `needle`.
fn unauthenticated<T: std::fmt::Debug>(r: Result<T, tonic::Status>, needle: &str) {
    let status = r.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().starts_with("Invalid build token: ") && status.message().contains(needle),
        "{:?} should mention {needle:?}",
        status.message()
    );
}

/// One heartbeat on a fresh stream: the reply, or the stream's error status.
async fn heartbeat(
    client: &mut buildman_proto::BuildManagerClient<tonic::transport::Channel>,
    jwt: &str,
) -> Result<bool, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(HeartbeatRequest {
        job_jwt: jwt.to_owned(),
    })
    .await
    .unwrap();
    let mut replies = client
        .heartbeat(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let reply = replies.message().await?.unwrap().reply;
    Ok(reply)
}

#[tokio::test]
async fn forged_stale_and_misused_tokens_are_refused() {
    // The worker records its start job and never calls in by itself.
    let (h, _exec, jobs) = manager_support::recording_harness(Duration::from_secs(30)).await;
    let build = h.submit(REPO).await;
    let job = manager_support::wait_for("the worker start", WAIT, || async {
        jobs.lock().unwrap().first().cloned()
    })
    .await;
    let mut client = FakeAgent::client(h.addr).await;

    // The registration token is not a job token.
    let r = client
        .set_phase(set_phase(&job.registration_token, 1))
        .await;
    unauthenticated(r.map(|_| ()), "build_job_registration");

    let tokens = BuildTokens::new(&h.registry.keys, AUDIENCE);
    let who = |build: &str, job_id: &str, attempt: &str| JobIdentity {
        build_id: build.to_owned(),
        job_id: job_id.to_owned(),
        attempt_id: attempt.to_owned(),
    };
    let job_key = format!("building/{}", build.uuid);

    // Another manager's audience.
    let other_aud = BuildTokens::new(&h.registry.keys, "elsewhere:50051")
        .mint(
            TokenType::Job,
            &who(&build.uuid, &job_key, ""),
            Duration::from_secs(60),
        )
        .unwrap();
    let r = client.set_phase(set_phase(&other_aud, 1)).await;
    unauthenticated(r.map(|_| ()), "audience");

    // Another installation's key.
    let dir = tempfile::tempdir().unwrap();
    let foreign =
        registry_core::auth::token::TokenKeys::load_or_generate(&dir.path().join("k.pem")).unwrap();
    let forged = BuildTokens::new(&foreign, AUDIENCE)
        .mint(
            TokenType::Job,
            &who(&build.uuid, &job_key, ""),
            Duration::from_secs(60),
        )
        .unwrap();
    let r = client.set_phase(set_phase(&forged, 1)).await;
    unauthenticated(r.map(|_| ()), "key id");

    // Expired (past the 30 s leeway), signed with the right key.
    let now = registry_core::auth::token::now_s();
    let claims = serde_json::json!({
        "iss": registry_core::auth::token::ISSUER, "aud": AUDIENCE, "sub": "(anonymous)",
        "nbf": now - 200, "iat": now - 200, "exp": now - 100, "access": {},
        "context": {"token_type": "build_job_token", "build_id": build.uuid,
                    "job_id": job_key, "expiration": 100}
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(h.registry.keys.kid().to_owned());
    let expired = jsonwebtoken::encode(&header, &claims, h.registry.keys.encoding_key()).unwrap();
    let r = client.set_phase(set_phase(&expired, 1)).await;
    unauthenticated(r.map(|_| ()), "expired");
    let r = heartbeat(&mut client, &expired).await;
    unauthenticated(r, "expired");

    // A job id naming another build than the token's.
    let crossed = tokens
        .mint(
            TokenType::Job,
            &who(&build.uuid, "building/other", ""),
            Duration::from_secs(60),
        )
        .unwrap();
    let r = client.set_phase(set_phase(&crossed, 1)).await;
    unauthenticated(r.map(|_| ()), "job id");
    let crossed_reg = tokens
        .mint(
            TokenType::Registration,
            &who(&build.uuid, "building/other", ""),
            Duration::from_secs(60),
        )
        .unwrap();
    let r = client
        .register_build_job(BuildJobArgs {
            register_jwt: crossed_reg,
        })
        .await;
    unauthenticated(r.map(|_| ()), "job id");

    // A well-formed token of an earlier attempt (another claim id) acts on nothing.
    let stale = tokens
        .mint(
            TokenType::Job,
            &who(&build.uuid, &job_key, "earlier-claim"),
            Duration::from_secs(60),
        )
        .unwrap();
    let r = client
        .set_phase(set_phase(&stale, 1))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.success);
    assert!(!heartbeat(&mut client, &stale).await.unwrap());
    // The real registration token works: the job token it returns drives the build.
    let pack = client
        .register_build_job(BuildJobArgs {
            register_jwt: job.registration_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    // A job token is not a registration token.
    let r = client
        .register_build_job(BuildJobArgs {
            register_jwt: pack.job_jwt.clone(),
        })
        .await;
    unauthenticated(r.map(|_| ()), "build_job_token");
    let r = client
        .set_phase(set_phase(&pack.job_jwt, 1))
        .await
        .unwrap()
        .into_inner();
    assert!(r.success);
    assert!(heartbeat(&mut client, &pack.job_jwt).await.unwrap());
    assert_eq!(
        h.build(&build.uuid).await.phase,
        buildman::model::Phase::Unpacking
    );
    h.shutdown().await;
}
