//! buildman's configuration: Quay's `config.yaml`, shared with registry-core.
//!
//! One document holds the registry keys (`SERVER_HOSTNAME`, `DATA_DIR`, `SUPER_USERS`, ...), which
//! become a [`registry_core::config::Config`], and the build keys: `FEATURE_BUILD_SUPPORT`,
//! `BUILDMAN_HOSTNAME` and `BUILD_MANAGER: [ephemeral, {settings}]` with the orchestrator and the
//! executors. Quay keys for features Quarry does not implement are accepted with a warning
//! ([`Config::warnings`]), so an existing Quay config loads; keys Quay does not know are errors
//! naming the full key path, with a suggestion when one is close.
//!
//! [`Config::load`] and [`Config::from_yaml_str`] check keys and value types;
//! [`Config::validate`] checks what needs the whole document (executor kinds this release can
//! run, unique names, registry-core's rules). Durations are whole seconds, as in Quay.

mod cloud;
mod error;
mod events;
mod executor;
mod manager;
mod orchestrator;
mod qemu;
mod quay_keys;
mod reader;
mod values;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_yaml::{Mapping, Value};

pub use cloud::{Ec2Settings, KubernetesSettings, WorkerSettings};
pub use error::{ConfigError, ConfigProblem, ConfigWarning, ProblemKind, WarningKind};
pub use events::{MailConfig, NotificationConfig, TriggerConfig};
pub use executor::{ContainerRuntime, ExecutorConfig, ExecutorKind};
pub use manager::{ManagerConfig, ManagerKind};
pub use orchestrator::{OrchestratorConfig, RedisConfig};
pub use qemu::QemuSettings;
pub use values::{ByteSize, Secret};

use reader::{Ctx, Level, MapReader};

/// The embedded default configuration (also documents the defaults).
const DEFAULT_YAML: &str = include_str!("default.yaml");

/// The whole buildman configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// `FEATURE_BUILD_SUPPORT` (default: true).
    pub build_support: bool,
    /// `BUILDMAN_HOSTNAME`: host:port agents and JWT audiences use for the manager.
    pub buildman_hostname: Option<String>,
    /// `BUILD_MANAGER` (the embedded default's when the document has none).
    pub manager: ManagerConfig,
    /// The registry keys, for registry-core.
    pub registry: registry_core::config::Config,
    /// Build trigger keys (`DATABASE_SECRET_KEY`, disable thresholds, `REGISTRY_TITLE`).
    pub triggers: TriggerConfig,
    /// Repository notification keys (`NOTIFICATION_SEND_TIMEOUT`, `MAIL_*`, ...).
    pub notifications: NotificationConfig,
    warnings: Vec<ConfigWarning>,
    origin: String,
}

impl Default for Config {
    /// The embedded defaults: builds on, two workers, the in-process orchestrator, one `popen`
    /// executor, registry-core's defaults.
    fn default() -> Self {
        parse(DEFAULT_YAML, "embedded default config".to_owned())
            .expect("the embedded default config parses (tested below)")
    }
}

impl Config {
    /// Read and parse a config file; an empty file gives the embedded defaults. Call
    /// [`Config::validate`] before starting anything.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        parse(&text, format!("config file {path:?}"))
    }

    /// Parse config text (see [`Config::load`]).
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        parse(text, "config text".to_owned())
    }

    /// Check what needs the whole document; every problem found is reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut ctx = Ctx::default();
        if let Err(e) = self.registry.validate() {
            let (key, problem) = match e {
                registry_core::config::ConfigError::Invalid { key, problem } => {
                    (key.to_owned(), problem)
                }
                other => ("(registry settings)".to_owned(), other.to_string()),
            };
            ctx.problem(key, ProblemKind::Conflict { problem });
        }
        if let Some(h) = &self.buildman_hostname
            && (h.is_empty() || h.contains('/'))
        {
            let expected = "a host:port such as builds.example.com:443, without scheme or path";
            ctx.wrong("BUILDMAN_HOSTNAME", expected, &Value::String(h.clone()));
        }
        if self.build_support {
            self.manager.validate(&mut ctx);
        }
        if ctx.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                origin: self.origin.clone(),
                problems: ctx.problems,
            })
        }
    }

    /// Accepted keys that have no effect, for `check-config` and the startup log.
    pub fn warnings(&self) -> &[ConfigWarning] {
        &self.warnings
    }

    /// Whether this process schedules builds (`FEATURE_BUILD_SUPPORT` and not `external`).
    pub fn builds_enabled(&self) -> bool {
        self.build_support && self.manager.kind == ManagerKind::Ephemeral
    }

    /// The manager's public host:port (token audience): env `BUILDMAN_HOSTNAME`, else the config
    /// key `BUILDMAN_HOSTNAME`, else `SERVER_HOSTNAME`, as Quay resolves it.
    pub fn manager_hostname(&self) -> String {
        self.manager_hostname_with(std::env::var("BUILDMAN_HOSTNAME").ok())
    }

    fn manager_hostname_with(&self, env: Option<String>) -> String {
        env.filter(|h| !h.is_empty())
            .or_else(|| self.buildman_hostname.clone())
            .unwrap_or_else(|| self.registry.server_hostname.clone())
    }

    /// `JOB_REGISTRATION_TIMEOUT`.
    pub fn registration_timeout(&self) -> Duration {
        self.manager.registration_timeout()
    }

    /// `MACHINE_MAX_TIME`.
    pub fn machine_max_time(&self) -> Duration {
        self.manager.machine_max_time()
    }

    /// `ALLOWED_WORKER_COUNT`.
    pub fn allowed_worker_count(&self) -> usize {
        usize::try_from(self.manager.allowed_worker_count).unwrap_or(usize::MAX)
    }

    /// The executors, in failover order.
    pub fn executors(&self) -> &[ExecutorConfig] {
        &self.manager.executors
    }

    /// The orchestrator backend.
    pub fn orchestrator(&self) -> &OrchestratorConfig {
        &self.manager.orchestrator
    }

    /// `ORCHESTRATOR_PREFIX`, empty or ending with `/`.
    pub fn orchestrator_prefix(&self) -> &str {
        &self.manager.orchestrator_prefix
    }

    /// `ORDERED_BUILDS_PER_REPO`.
    pub fn ordered_builds_per_repo(&self) -> bool {
        self.manager.ordered_builds_per_repo
    }

    /// `MAX_RETRIES`: attempts per build.
    pub fn max_retries(&self) -> u32 {
        self.manager.max_retries
    }

    /// `RETRY_AFTER_S`.
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs(self.manager.retry_after_s)
    }

    /// `GRPC_LISTEN_ADDR`.
    pub fn grpc_listen_addr(&self) -> SocketAddr {
        self.manager.grpc_listen_addr
    }

    /// `MAX_ARCHIVE_SIZE` in bytes.
    pub fn max_archive_size(&self) -> u64 {
        self.manager.max_archive_size.bytes()
    }

    /// registry-core's `DATA_DIR`; buildman keeps `builds.db` and work directories there too.
    pub fn data_dir(&self) -> &Path {
        &self.registry.data_dir
    }
}

/// Top-level keys that belong inside `BUILD_MANAGER[1]` or deeper: the seed guide's PDF shows
/// some of them unindented, so they are a common copy-and-paste mistake.
const TOP_LEVEL: Level = Level {
    quay_only: quay_keys::TOP_QUAY_ONLY,
    quay_only_suffixes: quay_keys::TOP_QUAY_ONLY_SUFFIXES,
    misplaced: &[
        (manager::KEYS, "BUILD_MANAGER[1]"),
        (orchestrator::REDIS_KEYS, "BUILD_MANAGER[1].ORCHESTRATOR"),
        executor::MISPLACED[0],
        executor::MISPLACED[1],
        executor::MISPLACED[2],
        executor::MISPLACED[3],
        executor::MISPLACED[4],
    ],
};

fn parse(text: &str, origin: String) -> Result<Config, ConfigError> {
    let yaml_err = |source| ConfigError::Yaml {
        origin: origin.clone(),
        source,
    };
    let mut doc: Value = serde_yaml::from_str(text).map_err(yaml_err)?;
    // PyYAML (Quay) honours `<<: *anchor` merge keys; serde_yaml applies them on request.
    doc.apply_merge().map_err(yaml_err)?;
    let empty = Mapping::new();
    let map = match &doc {
        Value::Null => &empty,
        Value::Mapping(m) => m,
        other => {
            let mut ctx = Ctx::default();
            ctx.wrong("(top level)", "a map of settings", other);
            let problems = ctx.problems;
            return Err(ConfigError::Invalid { origin, problems });
        }
    };
    let mut ctx = Ctx::default();
    let mut r = MapReader::new("", map);
    let build_support = r.bool(&mut ctx, "FEATURE_BUILD_SUPPORT").unwrap_or(true);
    let buildman_hostname = r.string(&mut ctx, "BUILDMAN_HOSTNAME");
    let manager = match r.raw("BUILD_MANAGER") {
        Some(v) => ManagerConfig::parse(&mut ctx, v),
        None => Config::default().manager,
    };
    let registry = registry_part(&mut ctx, &mut r);
    let (triggers, notifications) = events::parse(&mut ctx, &mut r);
    r.finish(&mut ctx, &TOP_LEVEL);
    if !ctx.problems.is_empty() {
        let problems = ctx.problems;
        return Err(ConfigError::Invalid { origin, problems });
    }
    Ok(Config {
        build_support,
        buildman_hostname,
        manager,
        registry,
        triggers,
        notifications,
        warnings: ctx.warnings,
        origin,
    })
}

/// Hand the registry keys to registry-core's own (serde) parser, one key at a time first so that
/// a type error names its key.
fn registry_part(ctx: &mut Ctx, r: &mut MapReader<'_>) -> registry_core::config::Config {
    use registry_core::config::Config as RegistryConfig;
    let one = |key: &str, v: &Value| {
        let single = Mapping::from_iter([(Value::String(key.to_owned()), v.clone())]);
        serde_yaml::from_value::<RegistryConfig>(Value::Mapping(single))
    };
    let mut accepted = Mapping::new();
    for &key in quay_keys::REGISTRY_KEYS {
        let Some(v) = r.raw(key) else { continue };
        let mut v = v.clone();
        let mut result = one(key, &v);
        // YAML 1.1 booleans (`yes`, `off`) as Quay reads them.
        if let (Err(_), Some(b)) = (&result, v.as_str().and_then(reader::yaml11_bool)) {
            v = Value::Bool(b);
            result = one(key, &v);
        }
        match result {
            Ok(_) => {
                accepted.insert(Value::String(key.to_owned()), v);
            }
            Err(e) => ctx.problem(
                key,
                ProblemKind::Conflict {
                    problem: e.to_string(),
                },
            ),
        }
    }
    serde_yaml::from_value(Value::Mapping(accepted)).unwrap_or_else(|e| {
        ctx.problem(
            "(registry settings)",
            ProblemKind::Conflict {
                problem: e.to_string(),
            },
        );
        RegistryConfig::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_validates_and_has_the_documented_values() {
        let c = Config::default();
        c.validate().unwrap();
        assert!(c.builds_enabled());
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        assert_eq!(c.allowed_worker_count(), 2);
        assert_eq!(c.orchestrator(), &OrchestratorConfig::Memory);
        assert_eq!(c.executors().len(), 1);
        assert_eq!(c.executors()[0].kind, ExecutorKind::Popen);
        assert_eq!(c.executors()[0].setup_time(), Duration::from_secs(60));
        assert_eq!(c.registration_timeout(), Duration::from_secs(30));
        assert_eq!(c.machine_max_time(), Duration::from_secs(7200));
        assert_eq!(c.max_retries(), 3);
        assert_eq!(c.retry_after(), Duration::from_secs(30));
        assert_eq!(c.max_archive_size(), 2 << 30);
        assert_eq!(c.registry.server_hostname, "localhost:5000");
    }

    #[test]
    fn empty_and_registry_only_documents_get_the_embedded_manager() {
        let c = Config::from_yaml_str("").unwrap();
        assert_eq!(c.manager, Config::default().manager);
        let c =
            Config::from_yaml_str("SERVER_HOSTNAME: quay.example.com\nDATA_DIR: /srv\n").unwrap();
        assert_eq!(c.manager, Config::default().manager);
        assert_eq!(c.data_dir(), Path::new("/srv"));
    }

    #[test]
    fn manager_hostname_prefers_env_then_key_then_server_hostname() {
        let mut c = Config::from_yaml_str("SERVER_HOSTNAME: reg:5000\n").unwrap();
        assert_eq!(c.manager_hostname_with(None), "reg:5000");
        c.buildman_hostname = Some("bm:50051".to_owned());
        assert_eq!(c.manager_hostname_with(Some(String::new())), "bm:50051");
        assert_eq!(c.manager_hostname_with(Some("env:1".to_owned())), "env:1");
    }

    #[test]
    fn registry_keys_reach_registry_core_with_named_type_errors() {
        let c =
            Config::from_yaml_str("FEATURE_ANONYMOUS_ACCESS: off\nSUPER_USERS: [admin]\n").unwrap();
        assert!(!c.registry.anonymous_access);
        assert_eq!(c.registry.super_users, ["admin"]);
        let err = Config::from_yaml_str("FEATURE_ANONYMOUS_ACCESS: maybe\n").unwrap_err();
        assert!(
            err.problems()[0]
                .to_string()
                .starts_with("FEATURE_ANONYMOUS_ACCESS: "),
            "{err}"
        );
        let c = Config::from_yaml_str("PREFERRED_URL_SCHEME: ftp\n").unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("PREFERRED_URL_SCHEME"), "{err}");
    }

    #[test]
    fn yaml_errors_and_non_map_documents_are_reported() {
        assert!(matches!(
            Config::from_yaml_str("a: [\n"),
            Err(ConfigError::Yaml { .. })
        ));
        let err = Config::from_yaml_str("- a\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "config text is invalid: (top level): expected a map of settings, got a list"
        );
    }
}
