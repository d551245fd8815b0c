//! The dispatcher's robustness: poison events, and running without a delivery context.

use std::time::Duration;

use buildman::notify;
use serde_json::json;

use super::driving::eventually;
use super::support::Fixture;
use super::{event_rows, local, pending, pending_all, trigger_build};

#[tokio::test]
async fn a_poison_build_event_is_dropped_and_the_next_one_still_goes_out() {
    let f = Fixture::new(local).await;
    f.notification(json!({"event": "build_queued", "method": "webhook",
                          "config": {"url": "http://127.0.0.1:9/hook"}}))
        .await;
    let (_, bad) = trigger_build(&f, "github").await;
    let (_, good) = trigger_build(&f, "github").await;
    let b = bad.uuid.clone();
    f.state
        .builds
        .write(move |tx| {
            tx.execute(
                "UPDATE build SET job_config = 'not json' WHERE uuid = ?1",
                rusqlite::params![b],
            )
            .map_err(buildman::db::BuildDbError::from)
        })
        .await
        .unwrap();
    let parts = f.parts(Duration::from_secs(30));
    assert_eq!(notify::dispatch_pending(&parts).await.unwrap(), 2);
    let queued = pending(&f).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].payload["build_id"], good.uuid.as_str());
    let left = event_rows(&f).await;
    assert_eq!(left, 0, "the poison event is deleted");
}

#[tokio::test]
async fn the_dispatcher_runs_even_when_delivery_cannot_start() {
    let f = Fixture::new(local).await;
    f.notification(json!({"event": "build_queued", "method": "webhook",
                          "config": {"url": "http://127.0.0.1:9/hook"}}))
        .await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let broken = Err(notify::NotifyError::Db(
        buildman::db::BuildDbError::NotFound("no HTTP client in this test".into()),
    ));
    let task = notify::spawn_with(f.parts(Duration::from_secs(30)), broken, stop_rx);
    trigger_build(&f, "github").await;
    eventually(Duration::from_secs(10), async || {
        (pending(&f).await.len() == 1).then_some(())
    })
    .await;
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pending_all(&f).await[0].0, 0, "queued, never attempted");
}
