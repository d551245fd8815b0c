//! The Redis orchestrator: Quay's key layout (reference 2.5), shared by every manager.
//!
//! Each mutation is one Lua script, so the key, its twins and the `PUBLISH` on
//! `<prefix>orchestrator_events` change together: no other manager (and no [`Orchestrator::sweep`])
//! can see a key without its `/expiring` twin half-way through a `set_key`. Expiry claims are a
//! script too: "the twin is gone, the key still has a TTL, take it with `GETDEL`" is one atomic
//! step, so exactly one manager reports each expiry. Keyspace events and the event channel are
//! read by [`super::redis_listener`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo as _, RedisConnectionInfo, Script,
};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::redis_listener;
use super::{
    EVENT_CAPACITY, EVENTS_CHANNEL, EXPIRED_SUFFIX, EXPIRING_SUFFIX, EventKind, KeyEvent,
    LOCK_PREFIX, Orchestrator, OrchestratorError, RedisSettings, SAFETY_NET, check_writable_key,
    escape_glob, is_twin, normalize_prefix,
};

/// Bound on each connection attempt (Quay's `socket_connect_timeout=1`).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on each command's reply, so that a hung server fails calls instead of blocking them.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys asked for per `SCAN` step.
const SCAN_COUNT: usize = 1000;

/// KEYS: key, twin, expired copy. ARGV: value, overwrite (1/0), expiration ms or "", safety-net
/// ms, channel, relative key, origin. Returns the event kind (1 create, 2 set) or -1 if present.
const SET_KEY: &str = r"
local existed = redis.call('EXISTS', KEYS[1]) == 1
if existed and ARGV[2] == '0' then return -1 end
local ms = tonumber(ARGV[3])
if ms then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ms + tonumber(ARGV[4]))
  redis.call('SET', KEYS[2], '', 'PX', ms)
else
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
end
redis.call('DEL', KEYS[3])
local kind = 1
if existed then kind = 2 end
redis.call('PUBLISH', ARGV[5],
  cjson.encode({event = kind, key = ARGV[6], value = ARGV[1], origin = ARGV[7]}))
return kind
";

/// KEYS: key, twin, expired copy. ARGV: channel, relative key, origin. Returns the old value.
const DELETE_KEY: &str = r"
local value = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
if value then
  redis.call('PUBLISH', ARGV[1],
    cjson.encode({event = 3, key = ARGV[2], value = value, origin = ARGV[3]}))
end
return value
";

/// KEYS: key, twin, expired copy. ARGV: the safety net in ms (also how long the copy is kept).
/// Returns the claimed value, or nil when the twin is still there, someone claimed the key first,
/// or the key does not look like one set with an expiration: no TTL, or a TTL longer than the
/// safety net (which a key whose twin ran out cannot have). The TTL checks keep a sweep from
/// taking other applications' keys when the prefix is empty on a shared Redis.
const CLAIM_EXPIRED: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 or ttl > tonumber(ARGV[1]) then return false end
local value = redis.call('GETDEL', KEYS[1])
if not value then return false end
redis.call('SET', KEYS[3], value, 'PX', ARGV[1])
return value
";

/// The Redis [`Orchestrator`] (`backend() == "redis"`).
pub struct RedisOrchestrator {
    shared: Arc<Shared>,
    listener: JoinHandle<()>,
}

/// What the orchestrator and its listener task share.
pub(super) struct Shared {
    pub(super) client: Client,
    pub(super) conn: ConnectionManager,
    /// `host:port`, for errors and logs.
    pub(super) addr: String,
    pub(super) prefix: String,
    pub(super) db: u32,
    /// Marks this process's own messages on the event channel, which it already emitted.
    pub(super) origin: String,
    pub(super) events: broadcast::Sender<KeyEvent>,
    set_script: Script,
    delete_script: Script,
    claim_script: Script,
}

impl RedisOrchestrator {
    /// Connect, enable keyspace events (unless `skip_keyspace_event_setup`), subscribe to them
    /// and to the event channel, and start the listener task that keeps those subscriptions.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, OrchestratorError> {
        let addr = format!("{}:{}", settings.host, settings.port);
        let client = client(settings, &addr)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2);
        let connecting = ConnectionManager::new_with_config(client.clone(), config);
        // The manager bounds each attempt; this bounds the attempts and their back-off together.
        let overall = CONNECT_TIMEOUT * 4;
        let conn = tokio::time::timeout(overall, connecting)
            .await
            .map_err(|_| OrchestratorError::ConnectTimeout {
                addr: addr.clone(),
                timeout: overall,
            })?
            .map_err(|source| OrchestratorError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let shared = Arc::new(Shared {
            client,
            conn,
            addr,
            prefix: normalize_prefix(&settings.prefix),
            db: settings.db,
            origin: uuid::Uuid::new_v4().to_string(),
            events: broadcast::channel(EVENT_CAPACITY).0,
            set_script: Script::new(SET_KEY),
            delete_script: Script::new(DELETE_KEY),
            claim_script: Script::new(CLAIM_EXPIRED),
        });
        if settings.skip_keyspace_event_setup {
            redis_listener::check_keyspace_events(&shared).await;
        } else {
            redis_listener::enable_keyspace_events(&shared).await?;
        }
        let pubsub = redis_listener::subscribe(&shared).await?;
        let listener = tokio::spawn(redis_listener::run(Arc::clone(&shared), pubsub));
        if shared.prefix.is_empty() {
            tracing::warn!(
                addr = %shared.addr,
                db = shared.db,
                "ORCHESTRATOR_PREFIX is empty: the sweep considers every key of this redis \
                 database; set a prefix when the database is shared with anything else"
            );
        }
        tracing::info!(addr = %shared.addr, prefix = %shared.prefix, "redis orchestrator connected");
        Ok(Self { shared, listener })
    }
}

/// The client for `settings`: plain TCP, or TLS with the system roots or the given CA and
/// client certificate.
fn client(settings: &RedisSettings, addr: &str) -> Result<Client, OrchestratorError> {
    let connect_err = |source| OrchestratorError::Connect {
        addr: addr.to_owned(),
        source,
    };
    let host = settings.host.clone();
    let port = settings.port;
    let target = if settings.ssl {
        // rustls needs a process-wide crypto provider; an error means one is installed already.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host, port)
    };
    let mut redis_info = RedisConnectionInfo::default().set_db(i64::from(settings.db));
    if let Some(password) = &settings.password {
        redis_info = redis_info.set_password(password);
    }
    let info: ConnectionInfo = target
        .into_connection_info()
        .map_err(connect_err)?
        .set_redis_settings(redis_info);
    if !settings.ssl || (settings.ca_cert.is_none() && settings.cert_and_key.is_none()) {
        return Client::open(info).map_err(connect_err);
    }
    let read = |what: &'static str, path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|source| OrchestratorError::TlsFile {
            addr: addr.to_owned(),
            what,
            path: path.clone(),
            source,
        })
    };
    let root_cert = match &settings.ca_cert {
        Some(path) => Some(read("REDIS_CA_CERT", path)?),
        None => None,
    };
    let client_tls = match &settings.cert_and_key {
        // One PEM file holds both: the certificate parser skips the key and vice versa.
        Some(path) => {
            let pem = read("REDIS_CERT_AND_KEY", path)?;
            Some(redis::ClientTlsConfig {
                client_cert: pem.clone(),
                client_key: pem,
            })
        }
        None => None,
    };
    let certificates = redis::TlsCertificates {
        client_tls,
        root_cert,
    };
    Client::build_with_tls(info, certificates).map_err(connect_err)
}

impl Shared {
    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(super) fn channel(&self) -> String {
        format!("{}{EVENTS_CHANNEL}", self.prefix)
    }

    pub(super) fn err(
        &self,
        op: &'static str,
    ) -> impl FnOnce(redis::RedisError) -> OrchestratorError {
        let addr = self.addr.clone();
        move |source| OrchestratorError::Command { op, addr, source }
    }

    pub(super) fn emit(&self, kind: EventKind, key: &str, value: String) {
        // No receivers is fine: nobody is listening yet.
        let _ = self.events.send(KeyEvent {
            kind,
            key: key.to_owned(),
            value,
        });
    }

    /// Claim the relative `key` if its twin is gone and it had an expiration; emit Expire.
    pub(super) async fn claim(&self, key: &str) -> Result<bool, OrchestratorError> {
        let full = self.full(key);
        let value: Option<String> = self
            .claim_script
            .key(&full)
            .key(format!("{full}{EXPIRING_SUFFIX}"))
            .key(format!("{full}{EXPIRED_SUFFIX}"))
            .arg(millis(SAFETY_NET))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(self.err("expiry claim"))?;
        match value {
            Some(value) => {
                tracing::debug!(key, "orchestrator key expired");
                self.emit(EventKind::Expire, key, value);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Every full key matching `<prefix><relative>*`, via `SCAN` (never `KEYS`, which blocks
    /// the server).
    async fn scan(&self, relative: &str) -> Result<Vec<String>, OrchestratorError> {
        let pattern = format!("{}*", escape_glob(&self.full(relative)));
        let mut conn = self.conn.clone();
        let mut cursor = 0u64;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut conn)
                .await
                .map_err(self.err("SCAN"))?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    pub(super) async fn sweep(&self) -> Result<usize, OrchestratorError> {
        let keys = self.scan("").await?;
        let present: std::collections::HashSet<&str> = keys.iter().map(String::as_str).collect();
        let lock_prefix = self.full(LOCK_PREFIX);
        let mut claimed = 0;
        for full in &keys {
            let twin = format!("{full}{EXPIRING_SUFFIX}");
            // The scan pre-filters; the claim script re-checks atomically.
            if is_twin(full) || full.starts_with(&lock_prefix) || present.contains(twin.as_str()) {
                continue;
            }
            let Some(key) = full.strip_prefix(&self.prefix) else {
                continue;
            };
            if self.claim(key).await? {
                claimed += 1;
            }
        }
        if claimed > 0 {
            tracing::info!(claimed, "orchestrator sweep reported missed expiries");
        }
        Ok(claimed)
    }
}

/// `d` in whole milliseconds, at least 1 (Redis refuses `PX 0`), saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Drop for RedisOrchestrator {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl std::fmt::Debug for RedisOrchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOrchestrator")
            .field("addr", &self.shared.addr)
            .field("db", &self.shared.db)
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Orchestrator for RedisOrchestrator {
    async fn set_key(
        &self,
        key: &str,
        value: &str,
        overwrite: bool,
        expiration: Option<Duration>,
    ) -> Result<(), OrchestratorError> {
        check_writable_key(key)?;
        let s = &self.shared;
        let full = s.full(key);
        let kind: i64 = s
            .set_script
            .key(&full)
            .key(format!("{full}{EXPIRING_SUFFIX}"))
            .key(format!("{full}{EXPIRED_SUFFIX}"))
            .arg(value)
            .arg(if overwrite { "1" } else { "0" })
            .arg(
                expiration
                    .map(|e| millis(e).to_string())
                    .unwrap_or_default(),
            )
            .arg(millis(SAFETY_NET))
            .arg(s.channel())
            .arg(key)
            .arg(&s.origin)
            .invoke_async(&mut s.conn.clone())
            .await
            .map_err(s.err("set_key"))?;
        let kind = match kind {
            1 => EventKind::Create,
            2 => EventKind::Set,
            _ => {
                return Err(OrchestratorError::KeyExists {
                    key: key.to_owned(),
                });
            }
        };
        s.emit(kind, key, value.to_owned());
        Ok(())
    }

    async fn get_key(&self, key: &str) -> Result<Option<String>, OrchestratorError> {
        let s = &self.shared;
        redis::cmd("GET")
            .arg(s.full(key))
            .query_async(&mut s.conn.clone())
            .await
            .map_err(s.err("GET"))
    }

    async fn delete_key(&self, key: &str) -> Result<Option<String>, OrchestratorError> {
        check_writable_key(key)?;
        let s = &self.shared;
        let full = s.full(key);
        let old: Option<String> = s
            .delete_script
            .key(&full)
            .key(format!("{full}{EXPIRING_SUFFIX}"))
            .key(format!("{full}{EXPIRED_SUFFIX}"))
            .arg(s.channel())
            .arg(key)
            .arg(&s.origin)
            .invoke_async(&mut s.conn.clone())
            .await
            .map_err(s.err("delete_key"))?;
        if let Some(value) = &old {
            s.emit(EventKind::Delete, key, value.clone());
        }
        Ok(old)
    }

    async fn get_prefixed_keys(
        &self,
        prefix: &str,
    ) -> Result<BTreeMap<String, String>, OrchestratorError> {
        let s = &self.shared;
        let keys: Vec<String> = s
            .scan(prefix)
            .await?
            .into_iter()
            .filter(|k| !is_twin(k))
            .collect();
        let mut out = BTreeMap::new();
        for chunk in keys.chunks(SCAN_COUNT) {
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(chunk)
                .query_async(&mut s.conn.clone())
                .await
                .map_err(s.err("MGET"))?;
            // A key that vanished since the scan reads as nil and is left out.
            for (full, value) in chunk.iter().zip(values) {
                if let (Some(key), Some(value)) = (full.strip_prefix(&s.prefix), value) {
                    out.insert(key.to_owned(), value);
                }
            }
        }
        Ok(out)
    }

    async fn lock(&self, key: &str, ttl: Duration) -> Result<bool, OrchestratorError> {
        let relative = format!("{LOCK_PREFIX}{key}");
        check_writable_key(&relative)?;
        let s = &self.shared;
        let reply: Option<String> = redis::cmd("SET")
            .arg(s.full(&relative))
            .arg("")
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut s.conn.clone())
            .await
            .map_err(s.err("lock"))?;
        Ok(reply.is_some())
    }

    fn subscribe(&self) -> broadcast::Receiver<KeyEvent> {
        self.shared.events.subscribe()
    }

    async fn sweep(&self) -> Result<usize, OrchestratorError> {
        self.shared.sweep().await
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_is_at_least_one_and_saturates() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_secs(2)), 2000);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn tls_files_that_cannot_be_read_name_the_setting_and_path() {
        let settings = RedisSettings {
            ssl: true,
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..RedisSettings::default()
        };
        let err = client(&settings, "127.0.0.1:6379").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("REDIS_CA_CERT") && text.contains("/nonexistent/ca.pem"),
            "{text}"
        );
    }
}
