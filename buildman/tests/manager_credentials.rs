//! The registry tokens handed to agents are per attempt: a stale attempt's end deletes only its
//! own, the build's end deletes every attempt's, and startup deletes those of ended builds
//! (issue 3 review).
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

mod manager_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildman::control::BuildControl;
use buildman::model::Phase;
use buildman::orchestrator::{EventKind, KeyEvent};
use buildman_proto::{Phase as P, SetPhaseRequest};
use manager_support::{
    FakeAgent, FakeExecutor, Harness, OTHER_REPO, REPO, WAIT, fast_settings, registering_agent,
    silent,
};
use registry_core::accounts::tokens;

#[tokio::test]
async fn a_stale_attempts_end_keeps_the_running_attempts_credentials() {
    let agents: Arc<Mutex<Vec<FakeAgent>>> = Arc::default();
    let keep = Arc::clone(&agents);
    let exec = FakeExecutor::new(
        "a",
        0,
        registering_agent(move |agent| {
            let keep = Arc::clone(&keep);
            async move { keep.lock().unwrap().push(agent) }
        }),
    );
    let mut h = Harness::new(fast_settings(), vec![Arc::clone(&exec)]).await;
    h.run();
    let build = h.submit(REPO).await;
    let take = |what: &'static str| {
        let agents = Arc::clone(&agents);
        async move {
            manager_support::wait_for(what, WAIT, || async {
                let mut a = agents.lock().unwrap();
                (!a.is_empty()).then(|| a.remove(0))
            })
            .await
        }
    };
    let job_key = format!("building/{}", build.uuid);

    // Attempt 1 registers (its job record is kept for later), then fails.
    let mut first = take("attempt 1's agent").await;
    let first_record = h.orchestrator.get_key(&job_key).await.unwrap().unwrap();
    let first_titles = h.token_titles(&build.uuid).await;
    assert_eq!(first_titles.len(), 1, "{first_titles:?}");
    assert!(first_titles[0].ends_with(":push"));
    let r = first
        .set_phase(SetPhaseRequest {
            phase: P::Error as i32,
            retryable: true,
            error_message: "engine unreachable".into(),
            ..SetPhaseRequest::default()
        })
        .await;
    assert!(r.success);
    assert!(
        !h.token_valid(&first.pack.push_token).await,
        "its end deletes its tokens"
    );

    // Attempt 2 runs with tokens of its own.
    let mut second = take("attempt 2's agent").await;
    assert!(second.phase(P::Building).await);
    let second_titles = h.token_titles(&build.uuid).await;

    // Attempt 1's expiry is reported late (a missed keyspace event found by a sweep): finishing
    // that stale attempt again must leave attempt 2 alone.
    h.chaos.inject(KeyEvent {
        kind: EventKind::Expire,
        key: job_key.clone(),
        value: first_record,
    });
    // Handling the expiry stops attempt 1's worker (again) once its records are done.
    manager_support::wait_for("the stale expiry to be handled", WAIT, || async {
        (exec.stop_count() == 2).then_some(())
    })
    .await;
    let stops = exec.stops.lock().unwrap().clone();
    assert!(stops.iter().all(|(id, _)| id.ends_with("-0")), "{stops:?}");
    assert!(h.token_valid(&second.pack.push_token).await);
    assert_eq!(h.token_titles(&build.uuid).await, second_titles);
    assert_eq!(second_titles.len(), 1);
    assert_ne!(second_titles, first_titles, "titled per attempt");
    let metric = format!("metric/{}", build.uuid);
    assert!(h.orchestrator.get_key(&metric).await.unwrap().is_some());
    assert!(second.phase(P::Pushing).await, "attempt 2's job is intact");

    // The build's end deletes every attempt's tokens.
    let done = second
        .set_phase(SetPhaseRequest {
            phase: P::Complete as i32,
            ..SetPhaseRequest::default()
        })
        .await;
    assert!(done.success);
    let b = h.wait_phase(&build.uuid, Phase::Complete, WAIT).await;
    assert_eq!(b.attempts, 2);
    assert!(h.token_titles(&build.uuid).await.is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn startup_deletes_the_tokens_of_ended_builds() {
    let exec = FakeExecutor::new("a", 0, silent());
    let mut settings = fast_settings();
    settings.registration_timeout = Duration::from_secs(60);
    let mut h = Harness::new(settings, vec![exec]).await;
    // Loops not running yet: a cancelled build, a waiting one, and tokens a crashed manager
    // left behind for both, for a build that no longer exists, and a user's own token.
    let ended = h.submit(REPO).await;
    h.manager.cancel(&ended.uuid).await.unwrap();
    let waiting = h.submit(OTHER_REPO).await;
    let titles = [
        format!("build:{}:claim-1:push", ended.uuid),
        format!("build:{}:claim-1:pull", ended.uuid),
        format!("build:{}:push", ended.uuid),
        format!("build:{}:claim-2:push", waiting.uuid),
        "build:no-such-build:claim-3:push".to_owned(),
        "laptop".to_owned(),
    ];
    h.registry
        .db
        .write(move |tx| {
            let alice = registry_core::accounts::find(tx, "alice")?.unwrap();
            for t in &titles {
                tokens::create(tx, &alice, t)?;
            }
            Ok::<_, registry_core::accounts::AccountError>(())
        })
        .await
        .unwrap();
    h.run();
    manager_support::wait_for("the ended build's tokens to go", WAIT, || async {
        h.token_titles(&ended.uuid).await.is_empty().then_some(())
    })
    .await;
    assert!(h.token_titles("no-such-build").await.is_empty());
    assert_eq!(
        h.token_titles(&waiting.uuid).await,
        [format!("build:{}:claim-2:push", waiting.uuid)],
        "a build that is not over keeps its tokens"
    );
    let laptop = h
        .registry
        .db
        .read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM access_token WHERE title = 'laptop'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(registry_core::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(laptop, 1, "tokens of users are not touched");
    h.shutdown().await;
}
