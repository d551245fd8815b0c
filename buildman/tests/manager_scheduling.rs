//! Scheduling: capacity waits that never consume a retry, executor failover by
//! MINIMUM_RETRY_THRESHOLD and on start errors, and attempts no executor can start (used up; the
//! last closes the build).
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
async fn an_attempt_no_executor_can_start_is_used_up_and_says_why() {
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
        message.starts_with(
            "attempt 1 failed: no executor could start this build: every eligible executor \
             failed (a: builder-agent binary not found"
        ),
        "{message}"
    );
    assert!(
        message.ends_with("retrying in 1 s (2 attempts left)"),
        "{message}"
    );
    // The attempt counts: its retry is not given back.
    let b = h.build(&build.uuid).await;
    assert_eq!((b.phase, b.attempts), (Phase::Waiting, 1));
    assert_eq!(h.retries(&build.uuid).await, Some(2));
    // Once the executor works again, the next attempt runs.
    a.fail_start.store(false, Ordering::SeqCst);
    let done = h.wait_phase(&build.uuid, Phase::Complete, WAIT).await;
    assert_eq!(done.attempts, 2);
    h.shutdown().await;
}

/// Regression (issue 3 review): with one executor of MINIMUM_RETRY_THRESHOLD 1, attempt 3 has no
/// eligible executor; giving its retry back looped forever and blocked the repository.
#[tokio::test]
async fn a_build_no_executor_may_run_closes_instead_of_blocking_its_repository() {
    let a = FakeExecutor::new("a", 1, silent());
    let mut settings = fast_settings();
    settings.registration_timeout = Duration::from_secs(1);
    let mut h = Harness::new(settings, vec![Arc::clone(&a)]).await;
    h.run();
    let stuck = h.submit(REPO).await;
    // Queued behind it (one build per repository at a time).
    let next = h.submit(REPO).await;
    // Attempt 2 runs the silent agent too; the next build's agent completes.
    manager_support::wait_for("attempt 2", WAIT, || async {
        (a.start_count() == 2).then_some(())
    })
    .await;
    a.set_script(completing_agent());
    let closed = h.wait_closed(&stuck.uuid, WAIT).await;
    assert_eq!(closed.phase, Phase::InternalError);
    assert_eq!(
        closed.error.as_deref(),
        Some(
            "no executor could start this build: none is eligible for namespace \"alice\" \
             with 0 retries left (check NAMESPACE_WHITELIST, STAGED_ROLLOUT and \
             MINIMUM_RETRY_THRESHOLD)"
        )
    );
    assert_eq!(closed.attempts, 3);
    assert_eq!(h.retries(&stuck.uuid).await, None, "its queue item is gone");
    assert_eq!(
        h.phases(&stuck.uuid).await,
        [
            "build-scheduled",
            "internalerror",
            "build-scheduled",
            "internalerror"
        ],
        "attempt 3 never reached a worker"
    );
    let done = h.wait_phase(&next.uuid, Phase::Complete, WAIT).await;
    assert_eq!(done.attempts, 1);
    assert_eq!(
        a.started_builds(),
        [stuck.uuid.clone(), stuck.uuid.clone(), next.uuid.clone()]
    );
    h.shutdown().await;
}
