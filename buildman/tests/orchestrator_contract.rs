//! The orchestrator contract: one suite of generic checks over `Arc<dyn Orchestrator>`, run
//! against the in-process backend and against Redis (a real `redis-server` per test on a free
//! loopback port, with two `RedisOrchestrator`s on it where the check needs a second manager),
//! then Redis-only checks: Quay's key layout and event format, keyspace-event setup, losing the
//! pub/sub connection, TLS with a client certificate, a password and a non-zero database.
//!
//! TTLs are 1 s so that the whole file runs in a few seconds; every wait has a deadline.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

// Only the Redis helper of tests/common: the other helpers need the buildman binary and crates
// this test does not, and each test binary uses a different subset of them.
#[allow(dead_code, unreachable_pub)]
#[path = "common/redis.rs"]
mod redis_server;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use buildman::orchestrator::{
    EventKind, KeyEvent, MemoryOrchestrator, Orchestrator, OrchestratorError, RedisOrchestrator,
    RedisSettings,
};
use redis_server::RedisServer;
use tokio::sync::broadcast::Receiver;

/// Expiration used by the checks.
const TTL: Duration = Duration::from_secs(1);
/// Bound on every wait for an event that must come.
const WAIT: Duration = Duration::from_secs(10);
/// How long to keep listening to be sure an event does *not* come (or comes only once).
const QUIET: Duration = Duration::from_millis(1000);

type Orch = Arc<dyn Orchestrator>;

// ---------------------------------------------------------------------------------------------
// Backends

fn memory_pair() -> (Orch, Orch) {
    let orch: Orch = Arc::new(MemoryOrchestrator::new());
    (Arc::clone(&orch), orch)
}

fn settings(server: &RedisServer, prefix: &str) -> RedisSettings {
    RedisSettings {
        host: server.host().to_owned(),
        port: server.port(),
        prefix: prefix.to_owned(),
        ..RedisSettings::default()
    }
}

async fn redis_orch(server: &RedisServer, prefix: &str) -> Orch {
    Arc::new(
        RedisOrchestrator::connect(&settings(server, prefix))
            .await
            .unwrap(),
    )
}

/// Two managers' orchestrators on one Redis.
async fn redis_pair(server: &RedisServer, prefix: &str) -> (Orch, Orch) {
    (
        redis_orch(server, prefix).await,
        redis_orch(server, prefix).await,
    )
}

/// A plain connection for checking what the orchestrator wrote, and for sabotage.
async fn admin(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(server.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

async fn query<T: redis::FromRedisValue>(
    conn: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> T {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(conn).await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// Event helpers

/// The next event, or a panic after [`WAIT`].
async fn next_event(rx: &mut Receiver<KeyEvent>) -> KeyEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no orchestrator event within {WAIT:?}"))
        .unwrap()
}

/// The next `kind` event for `key`, skipping others.
async fn wait_for(rx: &mut Receiver<KeyEvent>, kind: EventKind, key: &str) -> KeyEvent {
    loop {
        let event = next_event(rx).await;
        if event.kind == kind && event.key == key {
            return event;
        }
    }
}

/// Everything that arrives within `window`.
async fn drain(rx: &mut Receiver<KeyEvent>, window: Duration) -> Vec<KeyEvent> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        events.push(event);
    }
    events
}

/// Subscriptions to every distinct orchestrator of a backend: an expiry is reported by whichever
/// one claims it, so checks about expiries listen to all of them.
struct AllEvents(Vec<Receiver<KeyEvent>>);

impl AllEvents {
    fn of(a: &Orch, b: &Orch) -> Self {
        let mut receivers = vec![a.subscribe()];
        if !Arc::ptr_eq(a, b) {
            receivers.push(b.subscribe());
        }
        Self(receivers)
    }

    fn take(&mut self) -> Vec<KeyEvent> {
        let mut events = Vec::new();
        for rx in &mut self.0 {
            while let Ok(event) = rx.try_recv() {
                events.push(event);
            }
        }
        events
    }

    /// Everything any of them reports within `window`.
    async fn drain(&mut self, window: Duration) -> Vec<KeyEvent> {
        let deadline = Instant::now() + window;
        let mut events = self.take();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            events.extend(self.take());
        }
        events
    }

    /// The first `kind` event for `key` any of them reports, skipping others.
    async fn wait_for(&mut self, kind: EventKind, key: &str) -> KeyEvent {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self
                .take()
                .into_iter()
                .find(|e| e.kind == kind && e.key == key);
            if let Some(event) = found {
                return event;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind:?} for {key} within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn expiries(events: &[KeyEvent]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e.kind == EventKind::Expire)
        .map(|e| e.key.as_str())
        .collect()
}

fn event(kind: EventKind, key: &str, value: &str) -> KeyEvent {
    KeyEvent {
        kind,
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// The suite: `a` and `b` share one backend (for memory they are the same orchestrator).

async fn set_get_delete_overwrite(a: Orch, b: Orch) {
    assert_eq!(a.get_key("building/a").await.unwrap(), None);
    a.set_key("building/a", "v1", false, None).await.unwrap();
    assert_eq!(
        b.get_key("building/a").await.unwrap().as_deref(),
        Some("v1")
    );

    let err = b
        .set_key("building/a", "v2", false, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, OrchestratorError::KeyExists { key } if key == "building/a"),
        "{err}"
    );
    assert_eq!(
        a.get_key("building/a").await.unwrap().as_deref(),
        Some("v1")
    );

    b.set_key("building/a", "v2", true, None).await.unwrap();
    assert_eq!(
        a.get_key("building/a").await.unwrap().as_deref(),
        Some("v2")
    );
    // overwrite = true creates a missing key (Quay's `SET XX` silently did not).
    a.set_key("building/b", "new", true, None).await.unwrap();
    assert_eq!(
        b.get_key("building/b").await.unwrap().as_deref(),
        Some("new")
    );

    assert_eq!(
        b.delete_key("building/a").await.unwrap().as_deref(),
        Some("v2")
    );
    assert_eq!(a.get_key("building/a").await.unwrap(), None);
    assert_eq!(a.delete_key("building/a").await.unwrap(), None);
    a.set_key("building/a", "v3", false, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(
        b.get_key("building/a").await.unwrap().as_deref(),
        Some("v3")
    );

    for bad in ["", "building/a/expiring", "building/a/expired"] {
        let err = a.set_key(bad, "x", true, None).await.unwrap_err();
        assert!(
            matches!(err, OrchestratorError::InvalidKey { .. }),
            "{bad:?}: {err}"
        );
        let err = a.delete_key(bad).await.unwrap_err();
        assert!(
            matches!(err, OrchestratorError::InvalidKey { .. }),
            "{bad:?}: {err}"
        );
    }
}

async fn prefixed_keys_exclude_twins(a: Orch, b: Orch) {
    let hour = Some(Duration::from_secs(3600));
    a.set_key("building/a", "A", false, hour).await.unwrap();
    a.set_key("building/b", "B", false, None).await.unwrap();
    a.set_key("metric/a", "M", false, hour).await.unwrap();
    a.set_key("buildingz/c", "Z", false, None).await.unwrap();
    // The twin exists (same layout on both backends), but is never listed.
    assert_eq!(
        a.get_key("building/a/expiring").await.unwrap().as_deref(),
        Some("")
    );

    let building = b.get_prefixed_keys("building/").await.unwrap();
    let expected = BTreeMap::from([
        ("building/a".to_owned(), "A".to_owned()),
        ("building/b".to_owned(), "B".to_owned()),
    ]);
    assert_eq!(building, expected);
    let all = b.get_prefixed_keys("").await.unwrap();
    let keys: Vec<&str> = all.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["building/a", "building/b", "buildingz/c", "metric/a"]
    );

    // An expired key leaves its value in `/expired`, which is readable but not listed.
    let mut all = AllEvents::of(&a, &b);
    a.set_key("building/short", "S", false, Some(TTL))
        .await
        .unwrap();
    all.wait_for(EventKind::Expire, "building/short").await;
    let listed = b.get_prefixed_keys("building/").await.unwrap();
    assert_eq!(listed, expected);
    let copy = b.get_key("building/short/expired").await.unwrap();
    assert_eq!(copy.as_deref(), Some("S"));
}

async fn lock_is_exclusive_and_expires(a: Orch, b: Orch) {
    let mut rx = a.subscribe();
    assert!(a.lock("u1", TTL).await.unwrap());
    assert!(!a.lock("u1", TTL).await.unwrap());
    assert!(!b.lock("u1", TTL).await.unwrap());
    assert!(
        b.lock("u2", TTL).await.unwrap(),
        "locks on other keys are independent"
    );
    assert!(
        b.get_prefixed_keys("lock/")
            .await
            .unwrap()
            .contains_key("lock/u1")
    );

    tokio::time::sleep(TTL / 2).await;
    assert!(
        !b.lock("u1", TTL).await.unwrap(),
        "lock freed before its TTL"
    );
    let start = Instant::now();
    while !b.lock("u1", TTL).await.unwrap() {
        assert!(start.elapsed() < WAIT, "lock never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!a.lock("u1", TTL).await.unwrap(), "b holds it now");
    // Locks are not job keys: their end is neither an event nor something to sweep.
    assert_eq!(a.sweep().await.unwrap() + b.sweep().await.unwrap(), 0);
    assert_eq!(drain(&mut rx, Duration::from_millis(300)).await, []);
}

async fn events_reach_every_subscriber(a: Orch, b: Orch) {
    let mut on_a = a.subscribe();
    let mut on_b = b.subscribe();
    a.set_key("building/e", "1", false, None).await.unwrap();
    a.set_key("building/e", "2", true, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    b.delete_key("building/e").await.unwrap();
    let expected = [
        event(EventKind::Create, "building/e", "1"),
        event(EventKind::Set, "building/e", "2"),
        event(EventKind::Delete, "building/e", "2"),
    ];
    for rx in [&mut on_a, &mut on_b] {
        let mut seen = Vec::new();
        for _ in 0..expected.len() {
            seen.push(next_event(rx).await);
        }
        assert_eq!(seen, expected);
    }
    // Deleting a missing key changes nothing and says nothing.
    assert_eq!(b.delete_key("building/none").await.unwrap(), None);
    assert_eq!(drain(&mut on_a, Duration::from_millis(300)).await, []);
    assert_eq!(drain(&mut on_b, Duration::from_millis(300)).await, []);
}

async fn expiry_is_reported_exactly_once(a: Orch, b: Orch) {
    let mut all = AllEvents::of(&a, &b);
    a.set_key("building/x", "job", false, Some(TTL))
        .await
        .unwrap();
    let start = Instant::now();
    let expired = all.wait_for(EventKind::Expire, "building/x").await;
    assert!(
        start.elapsed() >= TTL - Duration::from_millis(100),
        "expired early"
    );
    assert_eq!(expired.value, "job");
    let later = all.drain(QUIET).await;
    assert_eq!(
        expiries(&later),
        Vec::<&str>::new(),
        "reported twice: {later:?}"
    );

    assert_eq!(a.get_key("building/x").await.unwrap(), None);
    let copy = b.get_key("building/x/expired").await.unwrap();
    assert_eq!(copy.as_deref(), Some("job"));
    assert_eq!(a.sweep().await.unwrap() + b.sweep().await.unwrap(), 0);
}

async fn deleted_or_refreshed_keys_do_not_expire(a: Orch, b: Orch) {
    let mut all = AllEvents::of(&a, &b);
    a.set_key("building/d", "D", false, Some(TTL))
        .await
        .unwrap();
    b.delete_key("building/d").await.unwrap();
    a.set_key("building/r", "R1", false, Some(TTL))
        .await
        .unwrap();
    tokio::time::sleep(TTL / 2).await;
    // A heartbeat: the same key again with a fresh, longer expiration.
    b.set_key("building/r", "R2", true, Some(TTL * 2))
        .await
        .unwrap();
    // Past the first deadline: neither the deleted key nor the refreshed one expired.
    let events = all.drain(TTL + Duration::from_millis(500)).await;
    assert_eq!(expiries(&events), Vec::<&str>::new(), "{events:?}");
    assert_eq!(a.sweep().await.unwrap(), 0);
    assert_eq!(
        a.get_key("building/r").await.unwrap().as_deref(),
        Some("R2")
    );
    // The refreshed deadline still holds.
    let expired = all.wait_for(EventKind::Expire, "building/r").await;
    assert_eq!(expired.value, "R2");
}

/// `deafen` makes `orch` miss keyspace events from then on.
async fn missed_expiry_is_found_by_sweep(orch: Orch, deafen: Pin<Box<dyn Future<Output = ()>>>) {
    let mut rx = orch.subscribe();
    orch.set_key("building/m", "job", false, Some(TTL))
        .await
        .unwrap();
    orch.set_key("building/live", "L", false, Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    orch.set_key("building/forever", "F", false, None)
        .await
        .unwrap();
    deafen.await;
    let events = drain(&mut rx, TTL + Duration::from_millis(700)).await;
    assert_eq!(expiries(&events), Vec::<&str>::new(), "{events:?}");
    assert_eq!(
        orch.get_key("building/m").await.unwrap().as_deref(),
        Some("job")
    );

    assert_eq!(orch.sweep().await.unwrap(), 1);
    let expired = wait_for(&mut rx, EventKind::Expire, "building/m").await;
    assert_eq!(expired.value, "job");
    assert_eq!(orch.sweep().await.unwrap(), 0, "reported twice");
    assert_eq!(orch.get_key("building/m").await.unwrap(), None);
    for key in ["building/live", "building/forever"] {
        assert!(
            orch.get_key(key).await.unwrap().is_some(),
            "{key} was swept"
        );
    }
}

/// `a` and `b` use different prefixes on one backend.
async fn prefixes_are_isolated(a: Orch, b: Orch) {
    let mut on_a = a.subscribe();
    let mut on_b = b.subscribe();
    a.set_key("building/p", "A", false, Some(TTL))
        .await
        .unwrap();
    b.set_key("building/p", "B", false, None).await.unwrap();
    assert_eq!(a.get_key("building/p").await.unwrap().as_deref(), Some("A"));
    assert_eq!(b.get_key("building/p").await.unwrap().as_deref(), Some("B"));
    let only = |v: &str| BTreeMap::from([("building/p".to_owned(), v.to_owned())]);
    assert_eq!(a.get_prefixed_keys("").await.unwrap(), only("A"));
    assert_eq!(b.get_prefixed_keys("").await.unwrap(), only("B"));
    assert!(a.lock("p", TTL).await.unwrap() && b.lock("p", TTL).await.unwrap());

    wait_for(&mut on_a, EventKind::Expire, "building/p").await;
    let seen_by_b = drain(&mut on_b, QUIET).await;
    assert_eq!(seen_by_b, [event(EventKind::Create, "building/p", "B")]);
    assert_eq!(b.get_key("building/p").await.unwrap().as_deref(), Some("B"));
    assert_eq!(b.sweep().await.unwrap(), 0);
    assert_eq!(a.delete_key("building/p").await.unwrap(), None);
    assert_eq!(b.get_key("building/p").await.unwrap().as_deref(), Some("B"));
}

macro_rules! on_both_backends {
    ($($suite:ident),* $(,)?) => {$(
        mod $suite {
            #[tokio::test]
            async fn memory() {
                let (a, b) = super::memory_pair();
                super::$suite(a, b).await;
            }

            #[tokio::test]
            async fn redis() {
                let server = super::RedisServer::start();
                let (a, b) = super::redis_pair(&server, "quarry/test/").await;
                super::$suite(a, b).await;
            }
        }
    )*};
}

on_both_backends!(
    set_get_delete_overwrite,
    prefixed_keys_exclude_twins,
    lock_is_exclusive_and_expires,
    events_reach_every_subscriber,
    expiry_is_reported_exactly_once,
    deleted_or_refreshed_keys_do_not_expire,
);

mod missed_expiry_is_found_by_sweep {
    use super::*;

    #[tokio::test]
    async fn memory() {
        let orch: Orch = Arc::new(MemoryOrchestrator::sweep_only());
        missed_expiry_is_found_by_sweep(orch, Box::pin(async {})).await;
    }

    #[tokio::test]
    async fn redis() {
        let server = RedisServer::start();
        let orch = redis_orch(&server, "quarry/").await;
        let mut conn = admin(&server).await;
        let deafen = Box::pin(async move {
            let () = query(&mut conn, &["CONFIG", "SET", "notify-keyspace-events", ""]).await;
        });
        missed_expiry_is_found_by_sweep(orch, deafen).await;
    }
}

mod prefixes_are_isolated {
    use super::*;

    #[tokio::test]
    async fn memory() {
        let a: Orch = Arc::new(MemoryOrchestrator::new());
        let b: Orch = Arc::new(MemoryOrchestrator::new());
        prefixes_are_isolated(a, b).await;
    }

    #[tokio::test]
    async fn redis() {
        let server = RedisServer::start();
        let a = redis_orch(&server, "alpha/").await;
        let b = redis_orch(&server, "beta/").await;
        prefixes_are_isolated(a, b).await;
    }
}
