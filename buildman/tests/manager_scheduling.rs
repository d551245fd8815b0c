//! Scheduling: capacity waits that never consume a retry, executor failover by
//! MINIMUM_RETRY_THRESHOLD and on start errors, and an attempt no executor can start.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

mod manager_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use buildman::model::Phase;
use manager_support::{
    FakeExecutor, Harness, OTHER_REPO, REPO, WAIT, completing_agent, fast_settings,
    registering_agent, silent,
};

#[tokio::test]
async fn a_full_worker_pool_never_consumes_a_retry() {
    // The first build's agent registers and heartbeats but never finishes.
    let exec = FakeExecutor::new(
        "a",
        0,
        registering_agent(|mut agent| async move {
            agent.start_heartbeats(Duration::from_millis(200)).await;
            assert!(agent.phase(buildman_proto::Phase::Building).await);
            std::future::pending::<()>().await;
        }),
    );
    let mut settings = fast_settings();
    settings.allowed_worker_count = 1;
    let mut h = Harness::new(settings, vec![Arc::clone(&exec)]).await;
    h.run();
    let first = h.submit(REPO).await;
    h.wait_phase(&first.uuid, Phase::Building, WAIT).await;
    let second = h.submit(OTHER_REPO).await;
    // Many scheduler ticks (200 ms) pass while the pool is full.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = h.build(&second.uuid).await;
    assert_eq!(waiting.phase, Phase::Waiting);
    assert_eq!(waiting.attempts, 0);
    assert_eq!(h.retries(&second.uuid).await, Some(3), "retries intact");
    assert_eq!(exec.started_builds(), std::slice::from_ref(&first.uuid));

    // When the first build ends, the second starts on its first attempt.
    exec.set_script(completing_agent());
    buildman::control::BuildControl::cancel(&*h.manager, &first.uuid)
        .await
        .unwrap();
    let done = h.wait_phase(&second.uuid, Phase::Complete, WAIT).await;
    assert_eq!(done.attempts, 1);
    h.shutdown().await;
}

#[tokio::test]
async fn attempts_one_and_two_use_the_first_executor_and_attempt_three_the_next() {
    // Neither agent ever registers: every attempt expires after the registration window.
    let a = FakeExecutor::new("a", 1, silent());
    let b = FakeExecutor::new("b", 0, silent());
    let mut settings = fast_settings();
    settings.registration_timeout = Duration::from_secs(1);
    let mut h = Harness::new(settings, vec![Arc::clone(&a), Arc::clone(&b)]).await;
    h.run();
    let build = h.submit(REPO).await;
    let closed = h.wait_closed(&build.uuid, Duration::from_secs(20)).await;
    assert_eq!((a.start_count(), b.start_count()), (2, 1));
    // Every expired worker was stopped.
    assert_eq!((a.stop_count(), b.stop_count()), (2, 1));
    assert_eq!(closed.phase, Phase::InternalError);
    assert_eq!(closed.attempts, 3);
    assert_eq!(
        closed.error.as_deref(),
        Some(
            "the build did not finish after 3 attempts: the build agent did not register \
             within 1 s (JOB_REGISTRATION_TIMEOUT)"
        )
    );
    assert_eq!(h.retries(&build.uuid).await, None, "not stuck in the queue");
    let phases = h.phases(&build.uuid).await;
    assert_eq!(
        phases,
        [
            "build-scheduled",
            "internalerror",
            "build-scheduled",
            "internalerror",
            "build-scheduled",
            "internalerror"
        ]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_start_error_falls_through_to_the_next_executor_in_the_same_attempt() {
    let a = FakeExecutor::new("a", 0, completing_agent());
    a.fail_start.store(true, Ordering::SeqCst);
    let b = FakeExecutor::new("b", 0, completing_agent());
    let mut h = Harness::new(fast_settings(), vec![Arc::clone(&a), Arc::clone(&b)]).await;
    h.run();
    let build = h.submit(REPO).await;
    let done = h.wait_phase(&build.uuid, Phase::Complete, WAIT).await;
    assert_eq!(done.attempts, 1);
    assert_eq!((a.start_count(), b.start_count()), (0, 1));
    h.shutdown().await;
}

#[tokio::test]
async fn no_startable_executor_keeps_the_retry_and_says_why() {
    let a = FakeExecutor::new("a", 0, completing_agent());
    a.fail_start.store(true, Ordering::SeqCst);
    let mut settings = fast_settings();
    settings.retry_after = Duration::from_secs(1);
    let mut h = Harness::new(settings, vec![Arc::clone(&a)]).await;
    h.run();
    let build = h.submit(REPO).await;
    let log = manager_support::wait_for("the unschedulable log entry", WAIT, || async {
        let log = h.log(&build.uuid).await;
        (!log.is_empty()).then_some(log)
    })
    .await;
    let (kind, message) = &log[0];
    assert_eq!(kind.as_deref(), Some("error"));
    assert!(
        message.starts_with("no executor could start the build (a: builder-agent binary not found"),
        "{message}"
    );
    assert!(message.ends_with("retrying in 1 s"), "{message}");
    let b = h.build(&build.uuid).await;
    assert_eq!((b.phase, b.attempts), (Phase::Waiting, 0));
    assert_eq!(h.retries(&build.uuid).await, Some(3));
    // Once the executor works again, the build runs on its first attempt.
    a.fail_start.store(false, Ordering::SeqCst);
    let done = h.wait_phase(&build.uuid, Phase::Complete, WAIT).await;
    assert_eq!(done.attempts, 1);
    h.shutdown().await;
}
