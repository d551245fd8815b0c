//! Registration failures that are the build's own fault end it as `error` with the reason at
//! once (not "the agent did not register" after three attempts), and a build a robot started
//! pushes with a token the robot owns (issue 3 review).
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

mod manager_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildman::executor::StartJob;
use buildman::model::{Build, NewBuild, Phase};

use manager_support::{FakeExecutor, Harness, REPO, ROBOT, WAIT};
use registry_core::accounts::{self, tokens, users};

/// A manager whose workers only record their start job (the test registers for them), with a
/// registration window far longer than the test: an expiry cannot end the build.
async fn harness() -> (Harness, Arc<FakeExecutor>, Arc<Mutex<Vec<StartJob>>>) {
    manager_support::recording_harness(Duration::from_secs(60)).await
}

/// Submit a build edited by `edit`, register its worker, and return the build and the
/// registration's result.
async fn register(
    h: &Harness,
    jobs: &Mutex<Vec<StartJob>>,
    edit: impl FnOnce(&mut NewBuild),
) -> (Build, Result<buildman_proto::BuildPack, tonic::Status>) {
    manager_support::submit_and_register(h, jobs, edit).await
}

/// The build ended as `error` with `reason` at once, was never retried, its worker was stopped
/// and no credentials are left; the agent was told why.
async fn assert_failed_at_once(
    h: &Harness,
    exec: &FakeExecutor,
    build: &Build,
    status: &tonic::Status,
    reason: &str,
) {
    let b = h
        .wait_phase(&build.uuid, Phase::Error, Duration::from_secs(5))
        .await;
    assert_eq!(b.error.as_deref(), Some(reason));
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        status.message(),
        format!("Build manager unable to start job: {reason}")
    );
    assert!(b.completed_ms.is_some());
    assert_eq!(h.retries(&build.uuid).await, None, "never retried");
    let log = h.log(&build.uuid).await;
    assert!(
        log.contains(&(Some("error".into()), reason.to_owned())),
        "{log:?}"
    );
    manager_support::wait_for("the worker to be stopped", WAIT, || async {
        (exec.stop_count() == 1).then_some(())
    })
    .await;
    assert!(h.token_titles(&build.uuid).await.is_empty());
}

#[tokio::test]
async fn a_build_without_source_ends_as_error_at_registration() {
    let (h, exec, jobs) = harness().await;
    let (build, r) = register(&h, &jobs, |b| b.job_config.archive_url = None).await;
    let reason = format!(
        "build {} has no source: no archive URL, upload or git repository",
        build.uuid
    );
    assert_failed_at_once(&h, &exec, &build, &r.unwrap_err(), &reason).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(exec.start_count(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_disabled_starting_account_ends_the_build_as_error() {
    let (h, exec, jobs) = harness().await;
    let (build, r) = register(&h, &jobs, |b| b.manual_user = Some("ghost".into())).await;
    let reason = format!(
        "build {} cannot push: account \"ghost\" no longer exists or is disabled",
        build.uuid
    );
    assert_failed_at_once(&h, &exec, &build, &r.unwrap_err(), &reason).await;
    h.shutdown().await;

    let (h, exec, jobs) = harness().await;
    h.registry
        .db
        .write(|tx| {
            users::create(tx, "bob", None, None)?;
            tx.execute("UPDATE account SET enabled = 0 WHERE name = 'bob'", [])
                .map_err(registry_core::db::DbError::from)?;
            Ok::<_, accounts::AccountError>(())
        })
        .await
        .unwrap();
    let (build, r) = register(&h, &jobs, |b| b.manual_user = Some("bob".into())).await;
    let reason = format!(
        "build {} cannot push: account \"bob\" no longer exists or is disabled",
        build.uuid
    );
    assert_failed_at_once(&h, &exec, &build, &r.unwrap_err(), &reason).await;
    h.shutdown().await;
}

#[tokio::test]
async fn a_deleted_pull_robot_ends_the_build_as_error() {
    let (h, exec, jobs) = harness().await;
    let (build, r) = register(&h, &jobs, |b| b.pull_robot = Some("alice+gone".into())).await;
    let reason = format!(
        "build {} cannot pull its base image: pull robot \"alice+gone\" no longer exists or is \
         disabled",
        build.uuid
    );
    assert_failed_at_once(&h, &exec, &build, &r.unwrap_err(), &reason).await;
    h.shutdown().await;
}

#[tokio::test]
async fn a_build_a_robot_started_pushes_with_a_token_the_robot_owns() {
    let (h, _exec, jobs) = harness().await;
    let (build, r) = register(&h, &jobs, |b| b.manual_user = Some(ROBOT.into())).await;
    let pack = r.unwrap();
    let push = pack.push_token.clone();
    let checked = h
        .registry
        .db
        .read(move |c| tokens::check(c, &push))
        .await
        .unwrap()
        .expect("a live push token");
    assert_eq!(checked.account.name, ROBOT);
    let scope = checked.scope.unwrap();
    assert_eq!(scope.repository.unwrap().as_str(), REPO);
    assert_eq!(scope.max_role.as_str(), "write");
    assert_eq!(h.build(&build.uuid).await.phase, Phase::BuildScheduled);
    h.shutdown().await;
}
