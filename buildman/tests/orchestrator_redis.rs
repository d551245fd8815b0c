//! Redis-only orchestrator checks, beside the shared contract in `orchestrator_contract.rs`:
//! Quay's key layout and event format (so Quay managers and ours could read each other),
//! keyspace-event setup, a lost pub/sub connection, failures that name what to fix, and TLS with
//! a client certificate, a password and a non-zero database. Each test runs its own
//! `redis-server` on a free loopback port.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

// Only the Redis helper of tests/common (see orchestrator_contract.rs).
#[allow(dead_code, unreachable_pub)]
#[path = "common/redis.rs"]
mod redis_server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use buildman::orchestrator::{
    EventKind, KeyEvent, Orchestrator, OrchestratorError, RedisOrchestrator, RedisSettings,
};
use futures_util::StreamExt as _;
use redis::aio::MultiplexedConnection;
use redis_server::{RedisServer, TlsFiles, free_port};
use tokio::sync::broadcast::Receiver;

const TTL: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(10);

fn settings(server: &RedisServer, prefix: &str) -> RedisSettings {
    RedisSettings {
        host: server.host().to_owned(),
        port: server.port(),
        prefix: prefix.to_owned(),
        ..RedisSettings::default()
    }
}

async fn admin(server: &RedisServer) -> MultiplexedConnection {
    let client = redis::Client::open(server.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

async fn query<T: redis::FromRedisValue>(conn: &mut MultiplexedConnection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(conn).await.unwrap()
}

async fn flags(conn: &mut MultiplexedConnection) -> String {
    let (_, flags): (String, String) =
        query(conn, &["CONFIG", "GET", "notify-keyspace-events"]).await;
    flags
}

async fn wait_for(rx: &mut Receiver<KeyEvent>, kind: EventKind, key: &str) -> KeyEvent {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {kind:?} for {key} within {WAIT:?}"))
            .unwrap();
        if event.kind == kind && event.key == key {
            return event;
        }
    }
}

#[tokio::test]
async fn uses_quays_key_layout_and_event_format() {
    let server = RedisServer::start();
    // Quay normalises the prefix to end with '/'.
    let orch = RedisOrchestrator::connect(&settings(&server, "buildman/production"))
        .await
        .unwrap();
    let mut conn = admin(&server).await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_async_pubsub().await.unwrap();
    raw.subscribe("buildman/production/orchestrator_events")
        .await
        .unwrap();

    let job = r#"{"job_queue_item":{},"max_expiration":1}"#;
    orch.set_key("building/u1", job, false, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let main = "buildman/production/building/u1";
    let twin = "buildman/production/building/u1/expiring";
    let main_ttl: i64 = query(&mut conn, &["PTTL", main]).await;
    let twin_ttl: i64 = query(&mut conn, &["PTTL", twin]).await;
    assert!((86_455_000..=86_460_000).contains(&main_ttl), "{main_ttl}");
    assert!((55_000..=60_000).contains(&twin_ttl), "{twin_ttl}");
    assert_eq!(query::<String>(&mut conn, &["GET", main]).await, job);
    assert_eq!(query::<String>(&mut conn, &["GET", twin]).await, "");

    // What a Quay manager subscribed to the channel reads.
    let mut messages = raw.on_message();
    let message = tokio::time::timeout(WAIT, messages.next())
        .await
        .unwrap()
        .unwrap();
    let wire: serde_json::Value =
        serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
    assert_eq!(wire["event"], 1);
    assert_eq!(wire["key"], "building/u1");
    assert_eq!(wire["value"], job);

    // What a Quay manager publishes (no origin field) reaches our subscribers.
    let mut rx = orch.subscribe();
    let quay = r#"{"event": 2, "key": "building/u9", "value": "from quay"}"#;
    let _: i64 = query(
        &mut conn,
        &["PUBLISH", "buildman/production/orchestrator_events", quay],
    )
    .await;
    let seen = wait_for(&mut rx, EventKind::Set, "building/u9").await;
    assert_eq!(seen.value, "from quay");

    assert_eq!(
        orch.delete_key("building/u1").await.unwrap().as_deref(),
        Some(job)
    );
    // Skip the Quay-style message published above.
    let wire = loop {
        let message = tokio::time::timeout(WAIT, messages.next())
            .await
            .unwrap()
            .unwrap();
        let payload = message.get_payload::<String>().unwrap();
        let wire: serde_json::Value = serde_json::from_str(&payload).unwrap();
        if wire["key"] == "building/u1" {
            break wire;
        }
    };
    assert_eq!(
        (wire["event"].as_u64(), wire["value"].as_str()),
        (Some(3), Some(job))
    );
    let left: i64 = query(
        &mut conn,
        &["EXISTS", main, twin, &format!("{main}/expired")],
    )
    .await;
    assert_eq!(left, 0);
}

#[tokio::test]
async fn keyspace_setup_merges_existing_flags() {
    let server = RedisServer::start_with(&["--notify-keyspace-events", "Eg"]);
    let _orch = RedisOrchestrator::connect(&settings(&server, "q/"))
        .await
        .unwrap();
    let flags = flags(&mut admin(&server).await).await;
    for c in ['E', 'g', 'K', 'x'] {
        assert!(flags.contains(c), "{c} missing from {flags:?}");
    }
}

#[tokio::test]
async fn skipped_keyspace_setup_leaves_the_server_alone() {
    let server = RedisServer::start();
    let mut conn = admin(&server).await;
    let before = flags(&mut conn).await;
    let skip = RedisSettings {
        skip_keyspace_event_setup: true,
        ..settings(&server, "q/")
    };
    let orch = RedisOrchestrator::connect(&skip).await.unwrap();
    assert_eq!(flags(&mut conn).await, before);
    orch.set_key("k", "v", false, None).await.unwrap();
}

#[tokio::test]
async fn forbidden_config_names_the_setting_to_make() {
    // Managed Redis often disables CONFIG, as this server does.
    let server = RedisServer::start_with(&["--rename-command", "CONFIG", ""]);
    let err = RedisOrchestrator::connect(&settings(&server, "q/"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OrchestratorError::KeyspaceSetup { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    for needle in [
        server.addr().as_str(),
        "notify-keyspace-events Kx",
        "REDIS_SKIP_KEYSPACE_EVENT_SETUP",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text:?}");
    }
    let skip = RedisSettings {
        skip_keyspace_event_setup: true,
        ..settings(&server, "q/")
    };
    RedisOrchestrator::connect(&skip).await.unwrap();
}

#[tokio::test]
async fn unreachable_server_fails_fast_naming_the_address() {
    let port = free_port().unwrap();
    let unreachable = RedisSettings {
        port,
        ..RedisSettings::default()
    };
    let start = Instant::now();
    let err = RedisOrchestrator::connect(&unreachable).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("REDIS_HOST"), "{text}");
}

/// The listener pings its pub/sub connection every 2 s to notice a dead one; a healthy one must
/// survive the pings rather than be re-opened (which would lose events each time).
#[tokio::test]
async fn healthy_pubsub_connection_survives_its_pings() {
    let server = RedisServer::start();
    let _orch = RedisOrchestrator::connect(&settings(&server, "q/"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let clients: String = query(
        &mut admin(&server).await,
        &["CLIENT", "LIST", "TYPE", "pubsub"],
    )
    .await;
    let ages: Vec<u64> = clients
        .lines()
        .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("age=")))
        .map(|age| age.parse().unwrap())
        .collect();
    assert_eq!(ages.len(), 1, "{clients}");
    assert!(
        ages[0] >= 4,
        "the pub/sub connection was re-opened: {clients}"
    );
}

/// The listener cannot re-subscribe while the key expires, so the keyspace event is lost; the
/// sweep it runs once it is back reports the expiry anyway.
#[tokio::test]
async fn resubscribes_after_losing_pubsub_and_sweeps_what_it_missed() {
    let server = RedisServer::start();
    let orch = RedisOrchestrator::connect(&settings(&server, "q/"))
        .await
        .unwrap();
    let mut conn = admin(&server).await;
    orch.set_key("building/r", "job", false, Some(TTL))
        .await
        .unwrap();
    let mut rx = orch.subscribe();

    // Refuse new connections (the admin one and the orchestrator's command connection stay),
    // then cut the pub/sub connection.
    let () = query(&mut conn, &["CONFIG", "SET", "maxclients", "2"]).await;
    let killed: i64 = query(&mut conn, &["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert_eq!(killed, 1);
    tokio::time::sleep(TTL + Duration::from_millis(700)).await;
    assert!(rx.try_recv().is_err(), "an event arrived while deaf");

    let () = query(&mut conn, &["CONFIG", "SET", "maxclients", "10000"]).await;
    let expired = wait_for(&mut rx, EventKind::Expire, "building/r").await;
    assert_eq!(expired.value, "job");
    // Subscribed again: other managers' events arrive.
    let quay = r#"{"event": 1, "key": "building/after", "value": "v"}"#;
    let _: i64 = query(&mut conn, &["PUBLISH", "q/orchestrator_events", quay]).await;
    wait_for(&mut rx, EventKind::Create, "building/after").await;
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate with its key in one PEM
/// file (REDIS_CERT_AND_KEY's form).
fn certificates(dir: &Path) -> (TlsFiles, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose};

    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "quarry test ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |name: &str, sans: Vec<String>, usage: Eku| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("redis", vec!["127.0.0.1".into()], Eku::ServerAuth);
    let (client_cert, client_key) = leaf("buildman", vec![], Eku::ClientAuth);

    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let files = TlsFiles {
        cert: write("server.pem", &server_cert),
        key: write("server.key", &server_key),
        ca: write("ca.pem", &ca_pem),
    };
    let client = write("client.pem", &format!("{client_cert}{client_key}"));
    (files, client)
}

#[tokio::test]
async fn tls_with_client_certificate_password_and_db() {
    let dir = tempfile::tempdir().unwrap();
    let (files, client_pem) = certificates(dir.path());
    let server = RedisServer::start_tls(
        &files,
        &["--tls-auth-clients", "yes", "--requirepass", "s3cret"],
    );
    let tls = RedisSettings {
        host: server.host().to_owned(),
        port: server.port(),
        password: Some("s3cret".to_owned()),
        db: 3,
        ssl: true,
        ca_cert: Some(files.ca.clone()),
        cert_and_key: Some(client_pem),
        prefix: "tls/".to_owned(),
        ..RedisSettings::default()
    };
    let orch = RedisOrchestrator::connect(&tls)
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", std::error::Error::source(&e), server.log()));
    let mut rx = orch.subscribe();
    orch.set_key("building/t", "job", false, Some(TTL))
        .await
        .unwrap();
    assert_eq!(
        orch.get_key("building/t").await.unwrap().as_deref(),
        Some("job")
    );
    // Keyspace events of database 3 reach the listener.
    let expired = wait_for(&mut rx, EventKind::Expire, "building/t").await;
    assert_eq!(expired.value, "job");

    let wrong = RedisSettings {
        password: Some("wrong".to_owned()),
        ..tls.clone()
    };
    let err = RedisOrchestrator::connect(&wrong).await.unwrap_err();
    assert!(matches!(err, OrchestratorError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&server.addr()), "{err}");

    let no_client_cert = RedisSettings {
        cert_and_key: None,
        ..tls
    };
    let refused = RedisOrchestrator::connect(&no_client_cert).await;
    assert!(
        refused.is_err(),
        "a server requiring client certificates accepted none"
    );
}
