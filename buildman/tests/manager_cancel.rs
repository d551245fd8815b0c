//! Cancellation: while waiting, while building (the worker is stopped within a second and the
//! agent's later calls are refused), while pushing (too late) and after the end.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

mod manager_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buildman::control::{BuildControl, CancelOutcome};
use buildman::model::Phase;
use buildman_proto::Phase as P;
use manager_support::{
    FakeAgent, FakeExecutor, Harness, REPO, WAIT, fast_settings, registering_agent,
};

#[tokio::test]
async fn cancelling_a_waiting_build_removes_it_from_the_queue() {
    // The manager's loops are not running: the build stays waiting.
    let exec = FakeExecutor::new("a", 0, manager_support::silent());
    let h = Harness::new(fast_settings(), vec![Arc::clone(&exec)]).await;
    let build = h.submit(REPO).await;
    assert_eq!(
        h.manager.cancel(&build.uuid).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let b = h.build(&build.uuid).await;
    assert_eq!(b.phase, Phase::Cancelled);
    assert!(b.completed_ms.is_some());
    assert_eq!(h.retries(&build.uuid).await, None);
    assert_eq!(h.phases(&build.uuid).await, ["cancelled"]);
    // Again, and for an unknown build.
    assert_eq!(
        h.manager.cancel(&build.uuid).await.unwrap(),
        CancelOutcome::TooLate(Phase::Cancelled)
    );
    assert_eq!(
        h.manager.cancel("nope").await.unwrap(),
        CancelOutcome::NotFound
    );
    h.shutdown().await;
}

/// Calls the agent made after the cancel, and their results.
#[derive(Debug, Default, Clone)]
struct AfterCancel {
    set_phase: Option<bool>,
    heartbeat: Option<bool>,
}

#[tokio::test]
async fn cancelling_a_running_build_stops_its_worker_and_refuses_the_agent() {
    let agents: Arc<Mutex<Vec<FakeAgent>>> = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&agents);
    let exec = FakeExecutor::new(
        "a",
        0,
        registering_agent(move |mut agent| {
            let keep = Arc::clone(&keep);
            async move {
                assert!(agent.phase(P::Unpacking).await);
                assert!(agent.phase(P::Building).await);
                // Hand the agent to the test, which plays it after the cancel.
                keep.lock().unwrap().push(agent);
            }
        }),
    );
    let mut h = Harness::new(fast_settings(), vec![Arc::clone(&exec)]).await;
    h.run();
    let build = h.submit(REPO).await;
    h.wait_phase(&build.uuid, Phase::Building, WAIT).await;
    let mut agent =
        manager_support::wait_for("the agent", WAIT, || async { agents.lock().unwrap().pop() })
            .await;

    let asked = Instant::now();
    assert_eq!(
        h.manager.cancel(&build.uuid).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let stopped_at = manager_support::wait_for("the worker to be stopped", WAIT, || async {
        exec.stops.lock().unwrap().first().map(|(_, at)| *at)
    })
    .await;
    assert!(
        stopped_at.duration_since(asked) < Duration::from_secs(1),
        "stopped after {:?}",
        stopped_at.duration_since(asked)
    );

    let set_phase = agent.phase(P::Pushing).await;
    agent.start_heartbeats(Duration::from_millis(100)).await;
    let heartbeat = manager_support::wait_for("a heartbeat reply", WAIT, || async {
        agent.beats.lock().unwrap().first().copied()
    })
    .await;
    let after = AfterCancel {
        set_phase: Some(set_phase),
        heartbeat: Some(heartbeat),
    };
    assert_eq!(after.set_phase, Some(false), "{after:?}");
    assert_eq!(after.heartbeat, Some(false), "{after:?}");

    let b = h.build(&build.uuid).await;
    assert_eq!(b.phase, Phase::Cancelled);
    assert_eq!(
        h.phases(&build.uuid).await,
        ["build-scheduled", "unpacking", "building", "cancelled"]
    );
    // Nothing is left: no queue item, no job, no cancel signal, and no new attempt.
    assert_eq!(h.retries(&build.uuid).await, None);
    manager_support::wait_for("the orchestrator to be empty", WAIT, || async {
        h.orchestrator
            .get_prefixed_keys("")
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(exec.start_count(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn a_pushing_build_cannot_be_cancelled() {
    let exec = FakeExecutor::new(
        "a",
        0,
        registering_agent(|mut agent| async move {
            agent.start_heartbeats(Duration::from_millis(200)).await;
            assert!(agent.phase(P::Pushing).await);
            std::future::pending::<()>().await;
        }),
    );
    let mut h = Harness::new(fast_settings(), vec![Arc::clone(&exec)]).await;
    h.run();
    let build = h.submit(REPO).await;
    h.wait_phase(&build.uuid, Phase::Pushing, WAIT).await;
    assert_eq!(
        h.manager.cancel(&build.uuid).await.unwrap(),
        CancelOutcome::TooLate(Phase::Pushing)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.build(&build.uuid).await.phase, Phase::Pushing);
    assert_eq!(exec.stop_count(), 0);
    h.shutdown().await;
}
