//! Restart recovery: a new manager over the same `builds.db` (and a fresh in-process
//! orchestrator, as after a crash) finishes every build the old one left behind.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

mod manager_support;

use std::sync::Arc;
use std::time::Duration;

use buildman::model::{self, Phase};
use buildman::queue;
use manager_support::{
    FakeExecutor, Harness, OTHER_REPO, REPO, WAIT, completing_agent, fast_settings,
    registering_agent,
};

#[tokio::test]
async fn a_restarted_manager_retries_or_closes_builds_left_running() {
    // First manager: a build reaches `building`, then the manager dies (its loops stop and the
    // in-process orchestrator with it); a second build is claimed on its last attempt.
    let exec = FakeExecutor::new(
        "a",
        0,
        registering_agent(|mut agent| async move {
            agent.start_heartbeats(Duration::from_millis(200)).await;
            assert!(agent.phase(buildman_proto::Phase::Building).await);
            std::future::pending::<()>().await;
        }),
    );
    let mut h = Harness::new(fast_settings(), vec![Arc::clone(&exec)]).await;
    h.run();
    let running = h.submit(REPO).await;
    h.wait_phase(&running.uuid, Phase::Building, WAIT).await;
    let dir = h.shutdown().await;

    // A build of another repository whose last attempt was claimed by the dead manager and had
    // reached `pulling`, and a waiting one claimed but never started.
    let builds = buildman::db::open(dir.path()).unwrap();
    let (last, claimed) = builds
        .write(|tx| {
            let new = |repo: &str, retries| model::NewBuild {
                repository: repo.into(),
                display_name: "t".into(),
                job_config: model::JobConfig {
                    archive_url: Some("http://archive.test/x.tgz".into()),
                    ..model::JobConfig::default()
                },
                manual_user: Some("alice".into()),
                max_retries: retries,
                ..model::NewBuild::default()
            };
            let last = model::create(tx, &new(OTHER_REPO, 1))?;
            // The running build's item is still claimed by the dead manager: this claims `last`.
            let item = queue::claim(tx, 600_000, false)?.unwrap();
            assert_eq!(item.build_uuid, last.uuid);
            model::start_attempt(tx, &last.uuid)?;
            model::set_phase_cas(tx, &last.uuid, None, Phase::Pulling, None)?;
            let claimed = model::create(tx, &new("alice/third", 3))?;
            let item = queue::claim(tx, 600_000, false)?.unwrap();
            assert_eq!(item.build_uuid, claimed.uuid);
            Ok::<_, buildman::db::BuildDbError>((last, claimed))
        })
        .await
        .unwrap();
    drop(builds);
    // alice/third needs its repository.
    let _ = registry_core::state::AppState::open(registry_core::config::Config {
        data_dir: dir.path().to_owned(),
        ..registry_core::config::Config::default()
    })
    .unwrap()
    .db
    .write(|tx| {
        registry_core::accounts::repositories::create(
            tx,
            &"alice/third".parse().unwrap(),
            registry_core::repos::Visibility::Private,
            "",
        )
        .map(|_| ())
    })
    .await;

    // Second manager, whose agents complete.
    let exec2 = FakeExecutor::new("a", 0, completing_agent());
    let mut h = Harness::open(dir, fast_settings(), vec![Arc::clone(&exec2)]).await;
    h.run();

    // The running build was failed as lost and retried to completion.
    let done = h.wait_phase(&running.uuid, Phase::Complete, WAIT).await;
    assert_eq!(done.attempts, 2);
    let log = h.log(&running.uuid).await;
    assert!(
        log.iter()
            .any(|(k, m)| k.as_deref() == Some("error") && m.contains("worker was lost")),
        "{log:?}"
    );
    // The build on its last attempt was closed with the reason, not left stuck.
    let closed = h.wait_closed(&last.uuid, WAIT).await;
    assert_eq!(closed.phase, Phase::InternalError);
    let reason = closed.error.unwrap();
    assert!(
        reason.starts_with("the build did not finish after 1 attempt: the build's worker was lost"),
        "{reason}"
    );
    assert_eq!(h.retries(&last.uuid).await, None);
    // The claimed-but-never-started build got its claim (and retry) back and ran on attempt 1.
    let third = h.wait_phase(&claimed.uuid, Phase::Complete, WAIT).await;
    assert_eq!(third.attempts, 1);
    h.shutdown().await;
}

/// An agent that reports `unpacking` and then stays silent.
fn stalling_agent() -> manager_support::AgentScript {
    registering_agent(|mut agent| async move {
        assert!(agent.phase(buildman_proto::Phase::Unpacking).await);
        std::future::pending::<()>().await;
    })
}

/// Drop build `uuid`'s job record behind the manager's back (a lost keyspace event: no expiry is
/// reported) and let its queue claim lapse.
async fn lose_job(h: &Harness, uuid: &str) {
    let id = uuid.to_owned();
    h.builds
        .write(move |tx| {
            tx.execute(
                "UPDATE queue_item SET processing_expires = 0 WHERE build_uuid = ?1",
                [&id],
            )?;
            Ok::<_, buildman::db::BuildDbError>(())
        })
        .await
        .unwrap();
    h.orchestrator
        .delete_key(&format!("building/{uuid}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_running_build_whose_job_vanished_is_retried_once_its_claim_lapses() {
    let exec = FakeExecutor::new("a", 0, stalling_agent());
    let mut h = Harness::new(fast_settings(), vec![Arc::clone(&exec)]).await;
    h.run();
    let build = h.submit(REPO).await;
    h.wait_phase(&build.uuid, Phase::Unpacking, WAIT).await;
    exec.set_script(completing_agent());
    lose_job(&h, &build.uuid).await;
    let done = h.wait_phase(&build.uuid, Phase::Complete, WAIT).await;
    assert_eq!(done.attempts, 2);
    // The first worker was stopped (the key's Delete event), and the log says what happened.
    assert!(exec.stop_count() >= 1);
    let log = h.log(&build.uuid).await;
    assert!(
        log.iter()
            .any(|(k, m)| k.as_deref() == Some("error") && m.contains("was lost")),
        "{log:?}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn the_sweeper_closes_a_last_attempt_whose_job_vanished() {
    let exec = FakeExecutor::new("a", 0, stalling_agent());
    let mut h = Harness::new(fast_settings(), vec![Arc::clone(&exec)]).await;
    h.run();
    let build = h.submit_with(REPO, |b| b.max_retries = 1).await;
    h.wait_phase(&build.uuid, Phase::Unpacking, WAIT).await;
    lose_job(&h, &build.uuid).await;
    // No retry is left, so the scheduler cannot pick it up: only the sweeper can end it.
    let closed = h.wait_closed(&build.uuid, WAIT).await;
    assert_eq!(closed.phase, Phase::InternalError);
    let reason = closed.error.unwrap();
    assert!(
        reason.starts_with("the build did not finish after 1 attempt: the build's worker was lost"),
        "{reason}"
    );
    assert_eq!(h.retries(&build.uuid).await, None);
    assert_eq!(exec.start_count(), 1);
    h.shutdown().await;
}

/// Regression (issue 3 review): a failed startup recovery made `Manager::run` return, leaving
/// the servers up with no scheduler.
#[tokio::test]
async fn startup_recovery_is_retried_until_the_orchestrator_answers() {
    let exec = FakeExecutor::new("a", 0, completing_agent());
    let mut h = Harness::new(fast_settings(), vec![Arc::clone(&exec)]).await;
    // A build a previous manager left in `building` (its job record is gone).
    let build = h.submit(REPO).await;
    let id = build.uuid.clone();
    h.builds
        .write(move |tx| {
            queue::claim(tx, 600_000, true)?.unwrap();
            model::start_attempt(tx, &id)?;
            model::set_phase_cas(tx, &id, None, Phase::Building, None)?;
            Ok::<_, buildman::db::BuildDbError>(())
        })
        .await
        .unwrap();
    h.chaos.set_down(true);
    h.run();
    // Recovery fails while the orchestrator is down; the manager keeps trying.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(h.is_running(), "run must not return when recovery fails");
    assert_eq!(h.build(&build.uuid).await.phase, Phase::Building);
    assert_eq!(
        exec.start_count(),
        0,
        "nothing is scheduled before recovery"
    );
    h.chaos.set_down(false);
    let done = h.wait_phase(&build.uuid, Phase::Complete, WAIT).await;
    assert_eq!(done.attempts, 2);
    let log = h.log(&build.uuid).await;
    assert!(
        log.iter()
            .any(|(k, m)| k.as_deref() == Some("error") && m.contains("worker was lost")),
        "{log:?}"
    );
    h.shutdown().await;
}
