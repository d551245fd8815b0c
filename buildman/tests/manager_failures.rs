//! Infrastructure failures: a lost agent (heartbeats stop) is retried, a stale heartbeat ends the
//! attempt, and a missed expiry is found by the sweeper.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

mod manager_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use buildman::model::Phase;
use buildman_proto::Phase as P;
use manager_support::{
    FakeExecutor, Harness, REPO, WAIT, completing_agent, fast_settings, registering_agent,
};

#[tokio::test]
async fn an_agent_whose_heartbeats_stop_is_failed_and_retried() {
    // Attempt 1: the agent heartbeats, reaches `building`, then dies (its task keeps running
    // but sends nothing). Attempt 2 completes.
    let dying = registering_agent(|mut agent| async move {
        agent.start_heartbeats(Duration::from_millis(200)).await;
        assert!(agent.phase(P::Building).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
        agent.stop_heartbeats();
        std::future::pending::<()>().await;
    });
    let completing = completing_agent();
    let calls = Arc::new(AtomicUsize::new(0));
    let exec = FakeExecutor::new(
        "a",
        0,
        Arc::new(move |job, addr| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                dying(job, addr)
            } else {
                completing(job, addr)
            }
        }),
    );
    let mut h = Harness::new(fast_settings(), vec![Arc::clone(&exec)]).await;
    h.run();
    let build = h.submit(REPO).await;
    let done = h.wait_phase(&build.uuid, Phase::Complete, WAIT).await;
    assert_eq!(done.attempts, 2);
    let log = h.log(&build.uuid).await;
    assert!(
        log.iter().any(|(k, m)| k.as_deref() == Some("error")
            && m.starts_with("attempt 1 failed: the build agent stopped sending heartbeats")),
        "{log:?}"
    );
    let phases = h.phases(&build.uuid).await;
    assert_eq!(
        &phases[..3],
        ["build-scheduled", "building", "internalerror"]
    );
    // The dead worker was stopped before the retry.
    let stops = exec.stops.lock().unwrap().clone();
    assert!(stops.iter().any(|(id, _)| id.ends_with("-0")), "{stops:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn a_worker_that_exits_mid_build_is_retried_without_waiting_for_heartbeats() {
    // Attempt 1: the agent reaches `building`, then its worker ends (a process that exited or a
    // VM killed from outside). The executor reports it, and the manager ends the attempt at once:
    // with a 60 s heartbeat TTL, waiting for the heartbeats to lapse would take far longer.
    let exiting = manager_support::script(|job, addr| async move {
        let mut agent = manager_support::FakeAgent::register(&job, addr)
            .await
            .unwrap();
        agent.start_heartbeats(Duration::from_millis(200)).await;
        assert!(agent.phase(P::Building).await);
        agent.stop_heartbeats();
    });
    let completing = completing_agent();
    let calls = Arc::new(AtomicUsize::new(0));
    let exec = FakeExecutor::new(
        "a",
        0,
        Arc::new(move |job, addr| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                exiting(job, addr)
            } else {
                completing(job, addr)
            }
        }),
    );
    let mut settings = fast_settings();
    settings.heartbeat_ttl = Duration::from_secs(60);
    let mut h = Harness::new(settings, vec![Arc::clone(&exec)]).await;
    h.run();
    let started = std::time::Instant::now();
    let build = h.submit(REPO).await;
    let done = h
        .wait_phase(&build.uuid, Phase::Complete, Duration::from_secs(20))
        .await;
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(done.attempts, 2);
    let log = h.log(&build.uuid).await;
    assert!(
        log.iter().any(|(k, m)| k.as_deref() == Some("error")
            && m.starts_with("attempt 1 failed: the fake worker ended before the build finished")),
        "{log:?}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn an_agent_that_never_registers_ends_internalerror_after_the_last_attempt() {
    let exec = FakeExecutor::new("a", 0, manager_support::silent());
    let mut settings = fast_settings();
    settings.registration_timeout = Duration::from_secs(1);
    // Long enough to see the `internalerror` between attempts.
    settings.retry_after = Duration::from_secs(1);
    let mut h = Harness::new(settings, vec![Arc::clone(&exec)]).await;
    h.run();
    let build = h.submit(REPO).await;
    // Each attempt expires 1 s after its start.
    let first = h.wait_phase(&build.uuid, Phase::InternalError, WAIT).await;
    assert!(first.completed_ms.is_none(), "retried, not closed");
    assert_eq!(h.retries(&build.uuid).await, Some(2));
    let closed = h.wait_closed(&build.uuid, Duration::from_secs(20)).await;
    assert_eq!(closed.phase, Phase::InternalError);
    assert!(
        closed
            .error
            .as_deref()
            .unwrap()
            .contains("did not register within 1 s"),
        "{closed:?}"
    );
    assert_eq!(exec.start_count(), 3);
    assert_eq!(h.retries(&build.uuid).await, None);
    // Nothing is left running for it.
    manager_support::wait_for("every worker stopped", WAIT, || async {
        (exec.stop_count() == 3).then_some(())
    })
    .await;
    let keys = h.orchestrator.get_prefixed_keys("").await.unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn a_late_heartbeat_after_the_heartbeat_delta_fails_the_attempt() {
    // The agent heartbeats once, then again only after more than HEARTBEAT_DELTA; the key's TTL
    // is longer than the delta here, so the stale-heartbeat check (not the expiry) ends it.
    let exec = FakeExecutor::new(
        "a",
        0,
        registering_agent(|mut agent| async move {
            agent.start_heartbeats(Duration::from_millis(1500)).await;
            std::future::pending::<()>().await;
        }),
    );
    let mut settings = fast_settings();
    settings.heartbeat_delta = Duration::from_secs(1);
    settings.heartbeat_ttl = Duration::from_secs(5);
    settings.retry_after = Duration::from_secs(30);
    let mut h = Harness::new(settings, vec![Arc::clone(&exec)]).await;
    h.run();
    let build = h.submit(REPO).await;
    // The second heartbeat, 1.5 s after the first, is refused and fails the attempt (its reply
    // may not reach the agent: the worker is stopped at the same time).
    let b = h.wait_phase(&build.uuid, Phase::InternalError, WAIT).await;
    let reason = b.error.unwrap();
    assert!(
        reason.starts_with("the build agent sent no heartbeat for 1."),
        "{reason}"
    );
    assert!(reason.ends_with("(the limit is 1 s)"), "{reason}");
    assert_eq!(h.retries(&build.uuid).await, Some(2));
    eprintln!(
        "LOG {:?} STARTS {} STOPS {}",
        h.log(&build.uuid).await,
        exec.start_count(),
        exec.stop_count()
    );
    manager_support::wait_for("the worker to be stopped", WAIT, || async {
        (exec.stop_count() == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(exec.stop_count(), 1, "stopped once");
    h.shutdown().await;
}
