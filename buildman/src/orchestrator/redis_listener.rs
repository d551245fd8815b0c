//! The Redis orchestrator's listener: keyspace events and the event channel, read on a dedicated
//! pub/sub connection that is re-established with back-off when it drops.
//!
//! Two subscriptions on one connection:
//! - `PSUBSCRIBE __keyspace@<db>__:<prefix>*/expiring`: a twin expired, so its key is claimed
//!   (see [`Shared::claim`]) and, by the one manager that wins the claim, reported as Expire;
//! - `SUBSCRIBE <prefix>orchestrator_events`: Quay's `{"event","key","value"}` messages, forwarded
//!   as events unless they carry this process's own `origin` (those were emitted already, when the
//!   call returned, so that they are not lost while the pub/sub connection is down).
//!
//! Messages published while the connection is down are lost (Redis pub/sub keeps nothing), so after
//! re-subscribing the listener sweeps: expiries are recovered, set/delete events are not.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::Msg;
use redis::aio::{PubSub, PubSubSink};
use serde::Deserialize;

use super::redis::{CONNECT_TIMEOUT, Shared};
use super::{EXPIRING_SUFFIX, EventKind, OrchestratorError, escape_glob};

/// Keyspace event flags the orchestrator needs: `K` (keyspace channel) and `x` (expired).
const NEEDED_FLAGS: [char; 2] = ['K', 'x'];
/// First and longest wait between attempts to re-subscribe.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A silent pub/sub connection is pinged this often, so a dead one is noticed (Quay's
/// `health_check_interval=2`).
const PING_EVERY: Duration = Duration::from_secs(2);

/// One message on the event channel, as Quay and our Lua scripts publish it.
#[derive(Debug, Deserialize)]
struct WireEvent {
    event: u8,
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    origin: Option<String>,
}

/// `CONFIG SET notify-keyspace-events` to the server's flags plus `K` and `x`.
pub(super) async fn enable_keyspace_events(shared: &Shared) -> Result<(), OrchestratorError> {
    let setup_err = |source| OrchestratorError::KeyspaceSetup {
        addr: shared.addr.clone(),
        source,
    };
    let current = read_flags(shared).await.map_err(setup_err)?;
    let Some(merged) = merge_flags(&current) else {
        return Ok(());
    };
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&merged)
        .query_async::<()>(&mut shared.conn.clone())
        .await
        .map_err(setup_err)?;
    tracing::info!(addr = %shared.addr, from = %current, to = %merged, "enabled redis keyspace events");
    Ok(())
}

/// With REDIS_SKIP_KEYSPACE_EVENT_SETUP: warn when the server visibly lacks the flags.
pub(super) async fn check_keyspace_events(shared: &Shared) {
    match read_flags(shared).await {
        Ok(flags) if merge_flags(&flags).is_some() => tracing::warn!(
            addr = %shared.addr,
            flags = %flags,
            "redis notify-keyspace-events lacks K and x: build expiries will only be found by the \
             periodic sweep; set `notify-keyspace-events Kx` on the server"
        ),
        Ok(_) => {}
        // Managed Redis often refuses CONFIG; that is why the operator skipped the setup.
        Err(err) => {
            tracing::debug!(addr = %shared.addr, error = %err, "cannot read notify-keyspace-events")
        }
    }
}

async fn read_flags(shared: &Shared) -> redis::RedisResult<String> {
    let (_, flags): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut shared.conn.clone())
        .await?;
    Ok(flags)
}

/// `current` plus the flags we need, or `None` when it has them (`A` is an alias including `x`).
fn merge_flags(current: &str) -> Option<String> {
    let has = |c: char| current.contains(c) || (c == 'x' && current.contains('A'));
    let missing: String = NEEDED_FLAGS.iter().filter(|&&c| !has(c)).collect();
    (!missing.is_empty()).then(|| format!("{current}{missing}"))
}

/// Open the pub/sub connection and subscribe to the twins' keyspace events and the channel.
pub(super) async fn subscribe(shared: &Shared) -> Result<PubSub, OrchestratorError> {
    let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, shared.client.get_async_pubsub())
        .await
        .map_err(|_| OrchestratorError::ConnectTimeout {
            addr: shared.addr.clone(),
            timeout: CONNECT_TIMEOUT,
        })?
        .map_err(|source| OrchestratorError::Connect {
            addr: shared.addr.clone(),
            source,
        })?;
    pubsub
        .psubscribe(keyspace_pattern(shared.db, &shared.prefix))
        .await
        .map_err(shared.err("PSUBSCRIBE"))?;
    pubsub
        .subscribe(shared.channel())
        .await
        .map_err(shared.err("SUBSCRIBE"))?;
    Ok(pubsub)
}

fn keyspace_pattern(db: u32, prefix: &str) -> String {
    format!(
        "__keyspace@{db}__:{}*{EXPIRING_SUFFIX}",
        escape_glob(prefix)
    )
}

/// The listener task: read `first`, then re-subscribe (and sweep) whenever the connection drops.
pub(super) async fn run(shared: Arc<Shared>, first: PubSub) {
    let mut pubsub = Some(first);
    let mut backoff = MIN_BACKOFF;
    loop {
        let current = match pubsub.take() {
            Some(current) => current,
            None => match subscribe(&shared).await {
                Ok(current) => {
                    tracing::info!(addr = %shared.addr, "re-subscribed to redis events");
                    backoff = MIN_BACKOFF;
                    // Expiries while we were away produced events nobody read.
                    if let Err(err) = shared.sweep().await {
                        tracing::warn!(error = %chain(&err), "sweep after re-subscribing failed");
                    }
                    current
                }
                Err(err) => {
                    tracing::warn!(error = %chain(&err), retry_in = ?backoff, "cannot re-subscribe to redis events");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        listen(&shared, current).await;
        tracing::warn!(addr = %shared.addr, "lost the redis pub/sub connection; re-subscribing");
    }
}

/// Handle messages until the connection ends or stops answering pings.
async fn listen(shared: &Shared, pubsub: PubSub) {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(message) => handle(shared, &message).await,
                None => return,
            },
            _ = ping.tick() => {
                if !alive(&mut sink).await {
                    return;
                }
            }
        }
    }
}

async fn alive(sink: &mut PubSubSink) -> bool {
    let pong = tokio::time::timeout(CONNECT_TIMEOUT * 2, sink.ping::<redis::Value>()).await;
    matches!(pong, Ok(Ok(_)))
}

async fn handle(shared: &Shared, message: &Msg) {
    let channel = message.get_channel_name();
    if message.from_pattern() {
        let payload: String = message.get_payload().unwrap_or_default();
        let Some(key) = expired_key(channel, &payload, shared.db, &shared.prefix) else {
            return;
        };
        // A failed claim is left to the next sweep.
        if let Err(err) = shared.claim(key).await {
            tracing::warn!(key, error = %chain(&err), "cannot claim an expired orchestrator key");
        }
        return;
    }
    let parsed = message
        .get_payload::<String>()
        .ok()
        .and_then(|text| serde_json::from_str::<WireEvent>(&text).ok());
    let Some(wire) = parsed else {
        tracing::warn!(channel, "ignored a malformed orchestrator event");
        return;
    };
    if wire.origin.as_deref() == Some(shared.origin.as_str()) {
        return;
    }
    match EventKind::from_wire(wire.event) {
        // Expiries are never published; each manager claims them from keyspace events.
        Some(EventKind::Expire) | None => {
            tracing::debug!(event = wire.event, "ignored an orchestrator event kind");
        }
        Some(kind) => shared.emit(kind, &wire.key, wire.value.unwrap_or_default()),
    }
}

/// The relative key whose twin expired, from a keyspace message
/// (`__keyspace@<db>__:<prefix><key>/expiring`, payload `expired`).
fn expired_key<'a>(channel: &'a str, payload: &str, db: u32, prefix: &str) -> Option<&'a str> {
    if payload != "expired" {
        return None;
    }
    channel
        .strip_prefix(&format!("__keyspace@{db}__:"))?
        .strip_suffix(EXPIRING_SUFFIX)?
        .strip_prefix(prefix)
}

/// `err` and its sources, `: `-separated, for one log line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_merged_not_replaced() {
        assert_eq!(merge_flags("").as_deref(), Some("Kx"));
        assert_eq!(merge_flags("Eg").as_deref(), Some("EgKx"));
        assert_eq!(merge_flags("xE").as_deref(), Some("xEK"));
        assert_eq!(merge_flags("Kx"), None);
        assert_eq!(merge_flags("xK"), None);
        assert_eq!(merge_flags("AK"), None);
        assert_eq!(merge_flags("KA").as_deref(), None);
        assert_eq!(merge_flags("A").as_deref(), Some("AK"));
    }

    #[test]
    fn keyspace_pattern_escapes_the_prefix_and_names_the_db() {
        assert_eq!(keyspace_pattern(0, "bm/"), "__keyspace@0__:bm/*/expiring");
        assert_eq!(
            keyspace_pattern(3, "a*b/"),
            r"__keyspace@3__:a\*b/*/expiring"
        );
    }

    #[test]
    fn expired_keys_are_parsed_from_keyspace_channels() {
        let channel = "__keyspace@2__:bm/building/u1/expiring";
        assert_eq!(
            expired_key(channel, "expired", 2, "bm/"),
            Some("building/u1")
        );
        assert_eq!(expired_key(channel, "expired", 0, "bm/"), None, "other db");
        assert_eq!(
            expired_key(channel, "expired", 2, "other/"),
            None,
            "other prefix"
        );
        assert_eq!(expired_key(channel, "set", 2, "bm/"), None, "not an expiry");
        let main = "__keyspace@2__:bm/building/u1";
        assert_eq!(expired_key(main, "expired", 2, "bm/"), None, "not a twin");
    }

    #[test]
    fn quay_events_parse_with_and_without_origin() {
        let quay: WireEvent =
            serde_json::from_str(r#"{"event": 2, "key": "building/u", "value": "{}"}"#).unwrap();
        assert_eq!((quay.event, quay.key.as_str()), (2, "building/u"));
        assert_eq!((quay.value.as_deref(), quay.origin), (Some("{}"), None));
        // Quay publishes the GET result on delete, which is null for a missing key.
        let null: WireEvent =
            serde_json::from_str(r#"{"event":3,"key":"k","value":null,"origin":"o"}"#).unwrap();
        assert_eq!((null.value, null.origin.as_deref()), (None, Some("o")));
        // cjson escapes '/' as "\/".
        let lua: WireEvent =
            serde_json::from_str(r#"{"event":1,"key":"building\/u","value":"v"}"#).unwrap();
        assert_eq!(lua.key, "building/u");
    }
}
