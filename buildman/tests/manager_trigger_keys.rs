//! A trigger's build gets the trigger's deploy key in its build pack and pushes as the trigger's
//! user; a build whose trigger was deleted ends as `error` at registration, saying so (issue 5).
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

mod manager_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildman::executor::StartJob;
use buildman::model::{Build, GitSource, NewBuild, Phase};
use buildman::secrets::SecretBox;
use buildman::trigger::store::{self, NewTrigger};
use buildman_proto::BuildPackSource;
use manager_support::{FakeExecutor, Harness, REPO, WAIT};
use triggers::webhook::Service;

const PEM: &str =
    "-----BEGIN RSA PRIVATE KEY-----\nnot a real key\n-----END RSA PRIVATE KEY-----\n";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

async fn harness() -> (Harness, Arc<FakeExecutor>, Arc<Mutex<Vec<StartJob>>>) {
    manager_support::recording_harness(Duration::from_secs(60)).await
}

/// A trigger of alice on `REPO` whose deploy key is `PEM`, sealed with the harness's key.
async fn trigger(h: &Harness) -> String {
    let sealed = SecretBox::from_material(b"test key")
        .seal(PEM.as_bytes())
        .unwrap();
    h.builds
        .write(move |tx| {
            store::create(
                tx,
                &NewTrigger {
                    service: Service::CustomGit,
                    repository: REPO,
                    connected_user: "alice",
                    public_key: "ssh-rsa AAAA test",
                    secure_private_key: &sealed,
                },
            )
        })
        .await
        .unwrap()
        .uuid
}

/// Queue a webhook-like build of `trigger` (no starting user) and register its worker.
async fn register(
    h: &Harness,
    jobs: &Mutex<Vec<StartJob>>,
    trigger: &str,
) -> (Build, Result<buildman_proto::BuildPack, tonic::Status>) {
    let trigger = trigger.to_owned();
    manager_support::submit_and_register(h, jobs, move |b: &mut NewBuild| {
        b.manual_user = None;
        b.trigger_uuid = Some(trigger);
        b.job_config.archive_url = None;
        b.job_config.git = Some(GitSource {
            url: "git@git.example:acme/app.git".into(),
            sha: SHA.into(),
        });
    })
    .await
}

/// Set `column` of the trigger `uuid`'s row to `value` behind the API's back.
async fn set_column(
    h: &Harness,
    uuid: &str,
    column: &'static str,
    value: impl rusqlite::ToSql + Send + 'static,
) {
    let id = uuid.to_owned();
    h.builds
        .write(move |tx| {
            tx.execute(
                &format!("UPDATE build_trigger SET {column} = ?1 WHERE uuid = ?2"),
                rusqlite::params![value, id],
            )
            .map_err(registry_core::db::DbError::from)
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_trigger_build_carries_the_deploy_key_and_pushes_as_the_triggers_user() {
    let (h, _exec, jobs) = harness().await;
    let uuid = trigger(&h).await;
    let (build, r) = register(&h, &jobs, &uuid).await;
    let pack = r.unwrap();
    let Some(BuildPackSource::GitPackage(git)) = pack.build_pack else {
        panic!("not a git pack: {:?}", pack.build_pack)
    };
    assert_eq!(
        (git.url.as_str(), git.sha.as_str(), git.private_key.as_str()),
        ("git@git.example:acme/app.git", SHA, PEM)
    );
    // The push token is alice's (the trigger's user), scoped to the repository.
    let token = pack.push_token.clone();
    let owner = h
        .registry
        .db
        .read(move |c| registry_core::accounts::tokens::check(c, &token))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner.account.name, "alice");
    assert!(!h.token_titles(&build.uuid).await.is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn a_build_whose_trigger_was_deleted_ends_as_error_saying_so() {
    let (h, exec, jobs) = harness().await;
    let uuid = trigger(&h).await;
    let id = uuid.clone();
    h.builds
        .write(move |tx| store::delete(tx, &id))
        .await
        .unwrap();
    let (build, r) = register(&h, &jobs, &uuid).await;
    let status = r.unwrap_err();
    let reason = format!(
        "build {} cannot fetch its source: its build trigger {uuid} was deleted, and its deploy \
         key with it",
        build.uuid
    );
    let b = h
        .wait_phase(&build.uuid, Phase::Error, Duration::from_secs(5))
        .await;
    assert_eq!(b.error.as_deref(), Some(reason.as_str()));
    assert!(status.message().ends_with(&reason), "{status:?}");
    assert_eq!(h.retries(&build.uuid).await, None, "never retried");
    manager_support::wait_for("the worker to be stopped", WAIT, || async {
        (exec.stop_count() == 1).then_some(())
    })
    .await;
    assert!(h.token_titles(&build.uuid).await.is_empty());
    h.shutdown().await;
}

/// Register a build of `uuid` and check it ends as `error` with a message containing `needle`,
/// never retried.
async fn assert_permanent_error(
    h: &Harness,
    exec: &FakeExecutor,
    jobs: &Mutex<Vec<StartJob>>,
    uuid: &str,
    needle: &str,
) -> String {
    let (build, r) = register(h, jobs, uuid).await;
    let status = r.unwrap_err();
    let b = h
        .wait_phase(&build.uuid, Phase::Error, Duration::from_secs(5))
        .await;
    let error = b.error.clone().unwrap_or_default();
    assert!(error.contains(needle), "{error}");
    assert!(status.message().contains(needle), "{status:?}");
    assert_eq!(h.retries(&build.uuid).await, None, "never retried");
    manager_support::wait_for("the worker to be stopped", WAIT, || async {
        (exec.stop_count() == 1).then_some(())
    })
    .await;
    error
}

#[tokio::test]
async fn a_deploy_key_that_does_not_open_fails_the_build_for_good() {
    let (h, exec, jobs) = harness().await;
    let uuid = trigger(&h).await;
    // Sealed under another key (a lost or replaced DATABASE_SECRET_KEY).
    let foreign = SecretBox::from_material(b"another install's key")
        .seal(PEM.as_bytes())
        .unwrap();
    set_column(&h, &uuid, "secure_private_key", foreign).await;
    let error = assert_permanent_error(
        &h,
        &exec,
        &jobs,
        &uuid,
        &format!("the deploy key of trigger {uuid} does not open"),
    )
    .await;
    assert!(!error.contains("PRIVATE KEY"), "{error}");
    h.shutdown().await;
}

#[tokio::test]
async fn a_trigger_row_that_does_not_parse_fails_the_build_for_good() {
    let (h, exec, jobs) = harness().await;
    let uuid = trigger(&h).await;
    set_column(&h, &uuid, "service", "svn").await;
    let error = assert_permanent_error(
        &h,
        &exec,
        &jobs,
        &uuid,
        &format!("its build trigger {uuid} could not be read"),
    )
    .await;
    assert!(error.contains("unknown service \"svn\""), "{error}");
    h.shutdown().await;
}
