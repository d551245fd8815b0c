//! Driving the notification loops from the tests: one delivery round, the running loops and
//! their stop, polling with a deadline, waiting until nothing is pending, and rewinding every
//! delivery to due.

use std::time::{Duration, Instant};

use buildman::notify;

use super::pending;
use super::support::Fixture;

/// One delivery round over `parts`, now: how many deliveries it made.
pub(crate) async fn round(parts: &notify::NotifyParts) -> usize {
    let ctx = notify::context(parts).unwrap();
    notify::deliver::round(&ctx, parts.settings.retry_base)
        .await
        .unwrap()
}

/// Wait (up to 5 s) until no delivery is pending.
pub(crate) async fn drained(f: &Fixture) {
    eventually(Duration::from_secs(5), async || {
        pending(f).await.is_empty().then_some(())
    })
    .await;
}

/// The notification loops (`notify::spawn`) running over a fixture, until [`Loops::stop`].
pub(crate) struct Loops {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Loops {
    pub(crate) fn start(f: &Fixture) -> Loops {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = notify::spawn(f.parts(Duration::from_secs(30)), stop_rx);
        Loops { stop, task }
    }

    /// Ask the loops to stop and wait (up to 5 s) until they have.
    pub(crate) async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// Every delivery due now (their leases and back-offs rewound).
pub(crate) async fn make_all_due(f: &Fixture) {
    f.state
        .builds
        .write(|tx| {
            tx.execute("UPDATE notification_delivery SET available_after = 0", [])
                .map_err(buildman::db::BuildDbError::from)
        })
        .await
        .unwrap();
}

/// Poll `check` until it returns `Some`, failing after `within`.
pub(crate) async fn eventually<T>(
    within: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
