//! The orchestrator: the small shared key-value store through which managers track running jobs.
//!
//! It follows Quay's `buildman/orchestrator.py` (reference 2.5). Keys are relative; a backend
//! prepends `ORCHESTRATOR_PREFIX`. A key set with an expiration gets a twin `<key>/expiring` that
//! lives for the expiration, while the key itself lives one more day as a safety net. When the twin
//! expires, exactly one process sharing the backend claims the key (deletes it atomically, leaving
//! a copy in `<key>/expired`) and reports an [`EventKind::Expire`] event. Every `set_key` and
//! `delete_key` is reported to every process as a `Create`, `Set` or `Delete` event.
//!
//! Two backends implement [`Orchestrator`]: [`RedisOrchestrator`] (Quay's key layout, so several
//! managers can share one Redis) and [`MemoryOrchestrator`] (one process, no Redis). Both pass the
//! same contract suite, `buildman/tests/orchestrator_contract.rs`.
//!
//! Unlike Quay:
//! - an expiry is claimed with an atomic check-and-`GETDEL`, so exactly one manager reports it,
//!   and a key re-set since its twin expired is never claimed by mistake;
//! - [`Orchestrator::sweep`] finds expiries whose keyspace event was missed (a manager restart, a
//!   dropped pub/sub connection, `notify-keyspace-events` turned off), so no build stays stuck;
//! - `set_key` with `overwrite = true` creates a missing key (Quay's `SET XX` silently did not);
//! - [`Orchestrator::lock`] is a plain `SET NX PX`, released by Redis itself when its TTL ends.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

mod memory;
mod redis;
mod redis_listener;

pub use self::memory::MemoryOrchestrator;
pub use self::redis::RedisOrchestrator;

/// Suffix of the twin key whose TTL is the real expiration of a key.
pub const EXPIRING_SUFFIX: &str = "/expiring";
/// Suffix of the copy an expired key's value is kept in.
pub const EXPIRED_SUFFIX: &str = "/expired";
/// Relative prefix of the keys [`Orchestrator::lock`] sets; no other key should live under it.
pub const LOCK_PREFIX: &str = "lock/";
/// Name of the pub/sub channel for key events (after the prefix), as in Quay.
pub const EVENTS_CHANNEL: &str = "orchestrator_events";
/// How much longer than its expiration a key itself lives (Quay's `ONE_DAY`).
pub const SAFETY_NET: Duration = Duration::from_secs(86_400);
/// Events a slow subscriber may fall behind by before it sees `RecvError::Lagged`.
pub const EVENT_CAPACITY: usize = 4096;

/// What happened to a key. The numbers are Quay's on the `orchestrator_events` channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The key did not exist and was set.
    Create,
    /// The key existed and was overwritten.
    Set,
    /// The key was deleted.
    Delete,
    /// The key's expiration passed; reported by exactly one process.
    Expire,
}

impl EventKind {
    /// Quay's number for this kind (1 to 4).
    pub fn wire(self) -> u8 {
        match self {
            Self::Create => 1,
            Self::Set => 2,
            Self::Delete => 3,
            Self::Expire => 4,
        }
    }

    /// The kind for Quay's number, if it is one.
    pub fn from_wire(n: u8) -> Option<Self> {
        match n {
            1 => Some(Self::Create),
            2 => Some(Self::Set),
            3 => Some(Self::Delete),
            4 => Some(Self::Expire),
            _ => None,
        }
    }
}

/// A change to a key. `key` is relative (no prefix); `value` is the new value, or for `Delete`
/// and `Expire` the last one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEvent {
    /// What happened.
    pub kind: EventKind,
    /// The relative key.
    pub key: String,
    /// The value set, deleted or expired.
    pub value: String,
}

/// Errors of the orchestrator backends.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// `set_key` with `overwrite = false` found the key present.
    #[error("orchestrator key {key:?} already exists")]
    KeyExists {
        /// The relative key.
        key: String,
    },
    /// A key that callers may not write (empty, or a twin's suffix).
    #[error("invalid orchestrator key {key:?}: {reason}")]
    InvalidKey {
        /// The relative key.
        key: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The first connection to Redis failed.
    #[error(
        "failed to connect to redis at {addr} (check REDIS_HOST, REDIS_PORT, REDIS_PASSWORD, \
         REDIS_DB and REDIS_SSL)"
    )]
    Connect {
        /// `host:port`.
        addr: String,
        /// The client's error.
        #[source]
        source: ::redis::RedisError,
    },
    /// The first connection to Redis did not complete in time.
    #[error(
        "timed out after {timeout:?} connecting to redis at {addr} (check REDIS_HOST and REDIS_PORT)"
    )]
    ConnectTimeout {
        /// `host:port`.
        addr: String,
        /// The bound that passed.
        timeout: Duration,
    },
    /// A TLS file named in the settings could not be read.
    #[error("failed to read {what} {path:?} for redis at {addr}")]
    TlsFile {
        /// `host:port`.
        addr: String,
        /// Which setting: `REDIS_CA_CERT` or `REDIS_CERT_AND_KEY`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// `CONFIG SET notify-keyspace-events` was refused (managed Redis often forbids `CONFIG`).
    #[error(
        "failed to enable keyspace events on redis at {addr}: set `notify-keyspace-events Kx` in \
         the server's configuration (or run `CONFIG SET notify-keyspace-events Kx` as an admin), \
         then set REDIS_SKIP_KEYSPACE_EVENT_SETUP: true"
    )]
    KeyspaceSetup {
        /// `host:port`.
        addr: String,
        /// The server's reply.
        #[source]
        source: ::redis::RedisError,
    },
    /// A command failed (the connection is re-established on the next call).
    #[error("redis {op} failed on {addr}")]
    Command {
        /// What was attempted.
        op: &'static str,
        /// `host:port`.
        addr: String,
        /// The client's error.
        #[source]
        source: ::redis::RedisError,
    },
}

/// How to reach Redis; the lead maps `BUILD_MANAGER[1].ORCHESTRATOR` and `ORCHESTRATOR_PREFIX`
/// to it.
#[derive(Clone)]
pub struct RedisSettings {
    /// `REDIS_HOST`.
    pub host: String,
    /// `REDIS_PORT`.
    pub port: u16,
    /// `REDIS_PASSWORD`.
    pub password: Option<String>,
    /// `REDIS_DB`.
    pub db: u32,
    /// `REDIS_SSL`: TLS, verified against the system roots or `ca_cert`.
    pub ssl: bool,
    /// `REDIS_CA_CERT`: PEM file of the CA(s) to trust instead of the system roots (TLS only).
    pub ca_cert: Option<PathBuf>,
    /// `REDIS_CERT_AND_KEY`: one PEM file with the client certificate chain and its private key,
    /// for servers that require client certificates (TLS only).
    pub cert_and_key: Option<PathBuf>,
    /// `REDIS_SKIP_KEYSPACE_EVENT_SETUP`: the operator set `notify-keyspace-events` already.
    pub skip_keyspace_event_setup: bool,
    /// `ORCHESTRATOR_PREFIX`, e.g. `buildman/production/`; a `/` is appended when missing.
    pub prefix: String,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 6379,
            password: None,
            db: 0,
            ssl: false,
            ca_cert: None,
            cert_and_key: None,
            skip_keyspace_event_setup: false,
            prefix: String::new(),
        }
    }
}

impl std::fmt::Debug for RedisSettings {
    // Hand-written so that the password is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("ssl", &self.ssl)
            .field("ca_cert", &self.ca_cert)
            .field("cert_and_key", &self.cert_and_key)
            .field("skip_keyspace_event_setup", &self.skip_keyspace_event_setup)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The shared store of running jobs. Implementations: [`RedisOrchestrator`],
/// [`MemoryOrchestrator`].
#[async_trait::async_trait]
pub trait Orchestrator: Send + Sync + std::fmt::Debug {
    /// Set `key` to `value`. With `overwrite = false` a present key is
    /// [`OrchestratorError::KeyExists`]. With an `expiration`, the twin `<key>/expiring` lives
    /// `expiration` and its end is reported as an Expire event; the key lives `expiration` plus
    /// one day. Without one, the key no longer expires. Emits Create or Set.
    async fn set_key(
        &self,
        key: &str,
        value: &str,
        overwrite: bool,
        expiration: Option<Duration>,
    ) -> Result<(), OrchestratorError>;

    /// The value of `key`, if it is live.
    async fn get_key(&self, key: &str) -> Result<Option<String>, OrchestratorError>;

    /// Delete `key` and its twins; returns the value it had. Emits Delete when it existed.
    async fn delete_key(&self, key: &str) -> Result<Option<String>, OrchestratorError>;

    /// All live keys under `prefix` (relative), without the `/expiring` and `/expired` twins.
    async fn get_prefixed_keys(
        &self,
        prefix: &str,
    ) -> Result<BTreeMap<String, String>, OrchestratorError>;

    /// Take `lock/<key>` for `ttl` if nobody holds it; true if this caller got it. The lock ends
    /// by itself after `ttl` (or by `delete_key("lock/<key>")`); it emits no events.
    async fn lock(&self, key: &str, ttl: Duration) -> Result<bool, OrchestratorError>;

    /// Events for every set and delete (by any process sharing the backend) and every expiry
    /// (exactly once across those processes). Keys are relative. A receiver that falls more than
    /// [`EVENT_CAPACITY`] events behind gets `RecvError::Lagged` and should resynchronise with
    /// `get_prefixed_keys`.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<KeyEvent>;

    /// Report, as Expire events, keys whose `/expiring` twin is gone but which nobody claimed
    /// (missed keyspace events, a restart); returns how many. Run it periodically and after
    /// subscribing at startup.
    async fn sweep(&self) -> Result<usize, OrchestratorError>;

    /// `"redis"` or `"memory"`.
    fn backend(&self) -> &'static str;
}

/// Refuse keys callers may not write: empty ones and the twins, which the backend manages.
pub(crate) fn check_writable_key(key: &str) -> Result<(), OrchestratorError> {
    let reason = if key.is_empty() {
        "it is empty"
    } else if key.ends_with(EXPIRING_SUFFIX) || key.ends_with(EXPIRED_SUFFIX) {
        "the /expiring and /expired suffixes are reserved for twins the orchestrator manages"
    } else {
        return Ok(());
    };
    Err(OrchestratorError::InvalidKey {
        key: key.to_owned(),
        reason,
    })
}

/// Whether `key` is a twin (`/expiring` or `/expired`) rather than a key callers set.
pub(crate) fn is_twin(key: &str) -> bool {
    key.ends_with(EXPIRING_SUFFIX) || key.ends_with(EXPIRED_SUFFIX)
}

/// `ORCHESTRATOR_PREFIX` ending in `/` (Quay's normalisation); empty stays empty.
pub(crate) fn normalize_prefix(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_owned()
    } else {
        format!("{prefix}/")
    }
}

/// `text` with Redis glob metacharacters escaped, for `SCAN MATCH` and `PSUBSCRIBE` patterns.
pub(crate) fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_numbers_are_quays() {
        let kinds = [
            EventKind::Create,
            EventKind::Set,
            EventKind::Delete,
            EventKind::Expire,
        ];
        for (n, kind) in (1u8..).zip(kinds) {
            assert_eq!(kind.wire(), n);
            assert_eq!(EventKind::from_wire(n), Some(kind));
        }
        assert_eq!(EventKind::from_wire(0), None);
        assert_eq!(EventKind::from_wire(5), None);
    }

    #[test]
    fn twins_and_empty_keys_are_not_writable() {
        assert!(check_writable_key("building/abc").is_ok());
        assert!(check_writable_key("building/abc/expiringly").is_ok());
        for bad in ["", "building/abc/expiring", "building/abc/expired"] {
            let err = check_writable_key(bad).unwrap_err();
            assert!(
                matches!(err, OrchestratorError::InvalidKey { .. }),
                "{bad:?}"
            );
        }
        assert!(is_twin("a/expired") && is_twin("a/expiring") && !is_twin("a"));
    }

    #[test]
    fn prefix_gets_one_trailing_slash() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(
            normalize_prefix("buildman/production"),
            "buildman/production/"
        );
        assert_eq!(normalize_prefix("buildman/"), "buildman/");
    }

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(escape_glob("plain/prefix/"), "plain/prefix/");
        assert_eq!(escape_glob(r"a*b?c[d]e\f"), r"a\*b\?c\[d\]e\\f");
    }

    #[test]
    fn settings_debug_hides_the_password() {
        let settings = RedisSettings {
            password: Some("hunter2".to_owned()),
            ..RedisSettings::default()
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn connect_error_names_the_address_and_the_settings() {
        let err = OrchestratorError::ConnectTimeout {
            addr: "redis.example:6380".to_owned(),
            timeout: Duration::from_secs(1),
        };
        let text = err.to_string();
        assert!(
            text.contains("redis.example:6380") && text.contains("REDIS_HOST"),
            "{text}"
        );
    }
}
