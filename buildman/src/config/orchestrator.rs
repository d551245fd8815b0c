//! `BUILD_MANAGER[1].ORCHESTRATOR`: which backend holds the running jobs' keys (reference 2.5).
//!
//! As in Quay, the key family selects the backend: `REDIS_*` keys mean Redis, `MEM_CONFIG` (or no
//! `ORCHESTRATOR`, or an empty map) means the in-process orchestrator, and a key ending in
//! `_PREFIX` is rejected as the legacy way of setting `ORCHESTRATOR_PREFIX`.

use std::path::PathBuf;

use serde_yaml::Value;

use super::error::ProblemKind;
use super::reader::{Ctx, Level, MapReader, join};
use super::values::Secret;

/// The keys of the Redis backend.
pub(super) const REDIS_KEYS: &[&str] = &[
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_PASSWORD",
    "REDIS_DB",
    "REDIS_SSL",
    "REDIS_CERT_AND_KEY",
    "REDIS_CA_CERT",
    "REDIS_SKIP_KEYSPACE_EVENT_SETUP",
];

/// The orchestrator backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum OrchestratorConfig {
    /// In-process (single buildman); Quay's `MEM_CONFIG`.
    #[default]
    Memory,
    /// A Redis server shared by every buildman.
    Redis(RedisConfig),
}

/// Connection settings of the Redis orchestrator (Quay's defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// `REDIS_HOST` (default: 127.0.0.1).
    pub host: String,
    /// `REDIS_PORT` (default: 6379).
    pub port: u16,
    /// `REDIS_PASSWORD`; an empty string means none.
    pub password: Option<Secret>,
    /// `REDIS_DB` (default: 0).
    pub db: u32,
    /// `REDIS_SSL` (default: false): connect with TLS.
    pub ssl: bool,
    /// `REDIS_CERT_AND_KEY`: client certificate and key paths for TLS.
    pub cert_and_key: Option<(PathBuf, PathBuf)>,
    /// `REDIS_CA_CERT`: CA bundle path for TLS.
    pub ca_cert: Option<PathBuf>,
    /// `REDIS_SKIP_KEYSPACE_EVENT_SETUP` (default: false): do not run `CONFIG SET notify-keyspace-events`
    /// (managed Redis that forbids `CONFIG`; an operator must set `Kx` there).
    pub skip_keyspace_event_setup: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            host: "127.0.0.1".to_owned(),
            port: 6379,
            password: None,
            db: 0,
            ssl: false,
            cert_and_key: None,
            ca_cert: None,
            skip_keyspace_event_setup: false,
        }
    }
}

/// Quay's test for a legacy key: more than one `_`-separated word, the last one `prefix`.
fn is_legacy_prefix(key: &str) -> bool {
    key.rsplit_once('_')
        .is_some_and(|(_, last)| last.eq_ignore_ascii_case("prefix"))
}

/// Parse the `ORCHESTRATOR` value at `path` (absent or null: in-process).
pub(super) fn parse(ctx: &mut Ctx, path: &str, value: Option<&Value>) -> OrchestratorConfig {
    let Some(value) = value else {
        return OrchestratorConfig::Memory;
    };
    let Value::Mapping(map) = value else {
        ctx.wrong(
            path,
            "a map of REDIS_* settings, or {} for the in-process orchestrator",
            value,
        );
        return OrchestratorConfig::Memory;
    };
    let mut r = MapReader::new(path, map);
    let keys: Vec<&str> = r.keys().collect();
    for key in &keys {
        if is_legacy_prefix(key) {
            ctx.problem(join(path, key), ProblemKind::LegacyPrefix);
            r.handled(key);
        } else if key.starts_with("ETCD_") {
            ctx.problem(
                join(path, key),
                ProblemKind::Conflict {
                    problem: "the etcd orchestrator is not supported; use REDIS_* keys, \
                              or {} for the in-process orchestrator"
                        .to_owned(),
                },
            );
            r.handled(key);
        }
    }
    let redis = keys.iter().any(|k| k.starts_with("REDIS_"));
    let memory = keys.iter().any(|k| k.starts_with("MEM_"));
    if redis && memory {
        ctx.problem(
            path,
            ProblemKind::Conflict {
                problem: "mixes REDIS_* and MEM_* keys; keep the keys of one backend".to_owned(),
            },
        );
    }
    let config = if redis {
        let defaults = RedisConfig::default();
        let cert_and_key = r.raw("REDIS_CERT_AND_KEY").and_then(|v| {
            let pair = match v.as_sequence().map(Vec::as_slice) {
                Some([Value::String(cert), Value::String(key)]) => {
                    Some((PathBuf::from(cert), PathBuf::from(key)))
                }
                _ => None,
            };
            if pair.is_none() {
                ctx.wrong(
                    r.key("REDIS_CERT_AND_KEY"),
                    "a list of two paths [cert, key]",
                    v,
                );
            }
            pair
        });
        OrchestratorConfig::Redis(RedisConfig {
            host: r.string(ctx, "REDIS_HOST").unwrap_or(defaults.host),
            port: r.port(ctx, "REDIS_PORT").unwrap_or(defaults.port),
            password: r.secret(ctx, "REDIS_PASSWORD"),
            db: r
                .uint32(
                    ctx,
                    "REDIS_DB",
                    0..=u32::MAX,
                    "a database number, 0 or more",
                )
                .unwrap_or(defaults.db),
            ssl: r.bool(ctx, "REDIS_SSL").unwrap_or(false),
            cert_and_key,
            ca_cert: r.string(ctx, "REDIS_CA_CERT").map(PathBuf::from),
            skip_keyspace_event_setup: r
                .bool(ctx, "REDIS_SKIP_KEYSPACE_EVENT_SETUP")
                .unwrap_or(false),
        })
    } else {
        // Quay passes MEM_CONFIG's value to its memory orchestrator, which ignores it.
        r.raw("MEM_CONFIG");
        OrchestratorConfig::Memory
    };
    r.finish(ctx, &LEVEL);
    config
}

/// Manager keys commonly indented one level too deep.
const LEVEL: Level = Level {
    quay_only: &[],
    quay_only_suffixes: &[],
    misplaced: &[(super::manager::KEYS, "BUILD_MANAGER[1]")],
};

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(yaml: &str) -> (OrchestratorConfig, Vec<String>) {
        let v: Value = serde_yaml::from_str(yaml).unwrap();
        let mut ctx = Ctx::default();
        let v = (!v.is_null()).then_some(&v);
        let c = parse(&mut ctx, "O", v);
        (c, ctx.problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn backend_follows_key_family() {
        assert_eq!(parse_str("~").0, OrchestratorConfig::Memory);
        assert_eq!(parse_str("{}").0, OrchestratorConfig::Memory);
        assert_eq!(parse_str("MEM_CONFIG: ~").0, OrchestratorConfig::Memory);
        let (c, p) = parse_str("REDIS_HOST: r\nREDIS_PASSWORD: ''\nREDIS_SSL: true\n");
        assert!(p.is_empty(), "{p:?}");
        let OrchestratorConfig::Redis(r) = c else {
            panic!("{c:?}")
        };
        assert_eq!(
            (r.host.as_str(), r.port, r.password, r.ssl),
            ("r", 6379, None, true)
        );
    }

    #[test]
    fn mistakes_are_named() {
        let (_, p) = parse_str("REDIS_HOST: r\nORCHESTRATOR_PREFIX: x/\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("O.ORCHESTRATOR_PREFIX: legacy prefix key"),
            "{p:?}"
        );
        let (_, p) = parse_str("REDIS_HOST: r\nMEM_CONFIG: ~\n");
        assert!(p[0].starts_with("O: mixes REDIS_* and MEM_*"), "{p:?}");
        let (_, p) = parse_str("REDIS_CERT_AND_KEY: /one.pem\n");
        assert_eq!(
            p,
            [r#"O.REDIS_CERT_AND_KEY: expected a list of two paths [cert, key], got "/one.pem""#]
        );
        let (_, p) = parse_str("REDIS_HOTS: r\n");
        assert_eq!(p, ["unknown key O.REDIS_HOTS (did you mean REDIS_HOST?)"]);
        let (_, p) = parse_str("ETCD_HOST: e\n");
        assert!(
            p[0].starts_with("O.ETCD_HOST: the etcd orchestrator is not supported"),
            "{p:?}"
        );
    }
}
