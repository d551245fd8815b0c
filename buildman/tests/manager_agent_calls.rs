//! Agent calls that must not change a build they do not belong to: log lines of a stale attempt
//! or an ended build, a replayed registration, phases going backwards; and resends that must
//! be acknowledged (issue 3 review).
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

mod manager_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildman::model::Phase;
use buildman_proto::{BuildJobArgs, Phase as P, SetPhaseRequest};
use manager_support::{
    FakeAgent, FakeExecutor, Harness, REPO, WAIT, fast_settings, registering_agent, script,
};

/// Agents handed from the fake workers to the test, in start order.
type Agents = Arc<Mutex<Vec<FakeAgent>>>;

async fn take_agent(agents: &Agents, what: &str) -> FakeAgent {
    manager_support::wait_for(what, WAIT, || async {
        let mut a = agents.lock().unwrap();
        (!a.is_empty()).then(|| a.remove(0))
    })
    .await
}

/// Workers whose agent registers and is handed to the test, which plays it (a call that ends
/// the attempt stops the worker, so the test, not the worker task, must make it).
fn handing(agents: &Agents) -> manager_support::AgentScript {
    let keep = Arc::clone(agents);
    registering_agent(move |agent| {
        let keep = Arc::clone(&keep);
        async move { keep.lock().unwrap().push(agent) }
    })
}

#[tokio::test]
async fn log_lines_of_a_stale_attempt_or_an_ended_build_are_refused_and_end_the_stream() {
    let agents: Agents = Arc::default();
    let exec = FakeExecutor::new("a", 0, handing(&agents));
    let mut h = Harness::new(fast_settings(), vec![Arc::clone(&exec)]).await;
    h.run();
    let build = h.submit(REPO).await;
    // Attempt 1 logs a line, then fails with an infrastructure error; attempt 2 logs a line.
    let mut stale = take_agent(&agents, "attempt 1's agent").await;
    assert!(stale.log("attempt 1 line").await);
    let r = stale
        .set_phase(SetPhaseRequest {
            phase: P::Error as i32,
            error_message: "engine unreachable".into(),
            retryable: true,
            ..SetPhaseRequest::default()
        })
        .await;
    assert!(r.success);
    let mut live = take_agent(&agents, "attempt 2's agent").await;
    assert!(live.phase(P::Building).await);
    assert!(live.log("attempt 2 line").await);

    // Attempt 1's token is still valid (MACHINE_MAX_TIME), but its attempt is over: refused
    // without a sequence number, and the stream is closed.
    let r = stale.log_reply("stale line").await.unwrap();
    assert_eq!((r.success, r.sequence_number), (false, 0));
    assert!(
        stale.log_reply("stale again").await.is_none(),
        "stream ended"
    );

    assert!(live.log("live line").await);
    let done = live
        .set_phase(SetPhaseRequest {
            phase: P::Complete as i32,
            ..SetPhaseRequest::default()
        })
        .await;
    assert!(done.success);
    let b = h.wait_phase(&build.uuid, Phase::Complete, WAIT).await;
    assert_eq!(b.attempts, 2);
    // The build is over: the live attempt's later lines are refused too.
    let r = live.log_reply("after the end").await.unwrap();
    assert_eq!((r.success, r.sequence_number), (false, 0));
    assert!(live.log_reply("after the end again").await.is_none());

    let lines: Vec<String> = h
        .log(&build.uuid)
        .await
        .into_iter()
        .filter(|(k, _)| k.is_none())
        .map(|(_, m)| m)
        .collect();
    assert_eq!(lines, ["attempt 1 line", "attempt 2 line", "live line"]);
    h.shutdown().await;
}

#[tokio::test]
async fn a_resent_phase_is_acknowledged_and_phases_never_go_backwards() {
    let agents: Agents = Arc::default();
    let exec = FakeExecutor::new("a", 0, handing(&agents));
    let mut h = Harness::new(fast_settings(), vec![exec]).await;
    h.run();
    let build = h.submit(REPO).await;
    let mut agent = take_agent(&agents, "the agent").await;
    let mut results = Vec::new();
    for (seq, phase) in [
        (1, P::Unpacking),
        (1, P::Unpacking), // resend after a lost answer
        (1, P::Pulling),   // same number, another phase
        (2, P::Pushing),
        (3, P::Unpacking), // backwards
        (4, P::Building),  // backwards
        (5, P::Pushing),   // same phase: no-op
        (6, P::Complete),
        (6, P::Complete), // resend of the call that ended the attempt
        (6, P::Error),
        (7, P::Complete),
    ] {
        let resp = agent
            .set_phase(SetPhaseRequest {
                sequence_number: seq,
                phase: phase as i32,
                ..SetPhaseRequest::default()
            })
            .await;
        assert_eq!(resp.sequence_number, seq, "echoed");
        results.push(resp.success);
    }
    assert_eq!(
        results,
        [
            true, true, false, true, false, false, true, true, true, false, false
        ]
    );
    assert_eq!(h.build(&build.uuid).await.phase, Phase::Complete);
    assert_eq!(
        h.phases(&build.uuid).await,
        ["build-scheduled", "unpacking", "pushing", "complete"]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_registration_token_registers_once() {
    let agents: Agents = Arc::default();
    let jobs = Arc::new(Mutex::new(Vec::new()));
    let (keep, seen) = (Arc::clone(&agents), Arc::clone(&jobs));
    let exec = FakeExecutor::new(
        "a",
        0,
        script(move |job, addr| {
            let (keep, seen) = (Arc::clone(&keep), Arc::clone(&seen));
            async move {
                seen.lock().unwrap().push(job.clone());
                let agent = FakeAgent::register(&job, addr).await.unwrap();
                keep.lock().unwrap().push(agent);
                std::future::pending::<()>().await;
            }
        }),
    );
    let mut settings = fast_settings();
    settings.registration_timeout = Duration::from_secs(30);
    let mut h = Harness::new(settings, vec![Arc::clone(&exec)]).await;
    h.run();
    let build = h.submit(REPO).await;
    let mut agent = take_agent(&agents, "the registered agent").await;
    let job = jobs.lock().unwrap()[0].clone();
    let titles = h.token_titles(&build.uuid).await;

    // A replay within the token's life is refused...
    let mut client = FakeAgent::client(h.addr).await;
    let replay = client
        .register_build_job(BuildJobArgs {
            register_jwt: job.registration_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(replay.code(), tonic::Code::FailedPrecondition, "{replay:?}");
    assert!(
        replay.message().contains("registered already"),
        "{replay:?}"
    );
    // ...and changes nothing: the first agent's credentials and job token still work.
    assert_eq!(h.token_titles(&build.uuid).await, titles);
    assert!(h.token_valid(&agent.pack.push_token).await);
    assert!(agent.phase(P::Unpacking).await);
    assert_eq!(h.build(&build.uuid).await.phase, Phase::Unpacking);
    assert_eq!(exec.start_count(), 1);
    h.shutdown().await;
}
