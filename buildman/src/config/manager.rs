//! `BUILD_MANAGER: [ephemeral, {settings}]`: the manager's timers, capacity, orchestrator and
//! executors (reference 2.4 and 3.1), plus Quarry's own settings.

use std::net::SocketAddr;
use std::time::Duration;

use serde_yaml::{Mapping, Value};

use super::error::{ProblemKind, WarningKind};
use super::executor::{self, ExecutorConfig};
use super::orchestrator::{self, OrchestratorConfig};
use super::reader::{Ctx, Level, MapReader};
use super::values::ByteSize;

/// Every key of the settings map.
pub(super) const KEYS: &[&str] = &[
    "ALLOWED_WORKER_COUNT",
    "ORCHESTRATOR_PREFIX",
    "ORCHESTRATOR",
    "JOB_REGISTRATION_TIMEOUT",
    "MACHINE_MAX_TIME",
    "EXECUTORS",
    "EXECUTOR",
    "EXECUTOR_CONFIG",
    "ORDERED_BUILDS_PER_REPO",
    "MAX_RETRIES",
    "RETRY_AFTER_S",
    "GRPC_LISTEN_ADDR",
    "MAX_ARCHIVE_SIZE",
    "ALLOW_LOCAL_GIT_SOURCES",
];

const SHAPE: &str = r#"a list of two items: ["ephemeral", {settings}]"#;
const PATH: &str = "BUILD_MANAGER[1]";

/// `BUILD_MANAGER[0]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagerKind {
    /// This process schedules builds on its executors.
    Ephemeral,
    /// Another process runs builds; this one schedules none (Quay's `external`).
    External,
}

/// The build manager settings, `BUILD_MANAGER[1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ManagerConfig {
    /// `BUILD_MANAGER[0]`.
    pub kind: ManagerKind,
    /// `ALLOWED_WORKER_COUNT` (default: 1 in Quay; 2 in the embedded default): running builders, summed
    /// over executors.
    pub allowed_worker_count: u32,
    /// `ORCHESTRATOR_PREFIX` (default: ""), normalised to end with `/` when not empty.
    pub orchestrator_prefix: String,
    /// `ORCHESTRATOR` (default: in-process).
    pub orchestrator: OrchestratorConfig,
    /// `JOB_REGISTRATION_TIMEOUT` (default: 30) seconds.
    pub job_registration_timeout_s: u64,
    /// `MACHINE_MAX_TIME` (default: 7200) seconds.
    pub machine_max_time_s: u64,
    /// `EXECUTORS` (or the legacy `EXECUTOR` + `EXECUTOR_CONFIG`), in failover order.
    pub executors: Vec<ExecutorConfig>,
    /// Quarry: `ORDERED_BUILDS_PER_REPO` (default: true): one running build per repository, in order.
    pub ordered_builds_per_repo: bool,
    /// Quarry: `MAX_RETRIES` (default: 3): attempts per build (Quay's queue `retries_remaining`).
    pub max_retries: u32,
    /// Quarry: `RETRY_AFTER_S` (default: 30): delay before a failed attempt is retried.
    pub retry_after_s: u64,
    /// Quarry: `GRPC_LISTEN_ADDR` (default: 127.0.0.1:50051): where agents dial.
    pub grpc_listen_addr: SocketAddr,
    /// Quarry: `MAX_ARCHIVE_SIZE` (default: 2G): largest uploaded or fetched build archive.
    pub max_archive_size: ByteSize,
    /// Quarry: `ALLOW_LOCAL_GIT_SOURCES` (default: false): builds may clone a path or `file://`
    /// URL on the build host. Only for trusted, single-tenant installs: with the popen executor
    /// any writer could read the host's repositories.
    pub allow_local_git_sources: bool,
}

impl ManagerConfig {
    /// Quay's defaults, used for keys a given `BUILD_MANAGER` leaves out.
    fn quay_defaults() -> ManagerConfig {
        ManagerConfig {
            kind: ManagerKind::Ephemeral,
            allowed_worker_count: 1,
            orchestrator_prefix: String::new(),
            orchestrator: OrchestratorConfig::Memory,
            job_registration_timeout_s: 30,
            machine_max_time_s: 7200,
            executors: Vec::new(),
            ordered_builds_per_repo: true,
            max_retries: 3,
            retry_after_s: 30,
            grpc_listen_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_archive_size: ByteSize::parse("2G").expect("2G is a valid size"),
            allow_local_git_sources: false,
        }
    }

    /// `JOB_REGISTRATION_TIMEOUT` as a duration.
    pub fn registration_timeout(&self) -> Duration {
        Duration::from_secs(self.job_registration_timeout_s)
    }

    /// `MACHINE_MAX_TIME` as a duration.
    pub fn machine_max_time(&self) -> Duration {
        Duration::from_secs(self.machine_max_time_s)
    }

    /// Parse the `BUILD_MANAGER` value.
    pub(super) fn parse(ctx: &mut Ctx, value: &Value) -> ManagerConfig {
        let mut m = ManagerConfig::quay_defaults();
        let Value::Sequence(items) = value else {
            ctx.wrong("BUILD_MANAGER", SHAPE, value);
            return m;
        };
        if items.is_empty() || items.len() > 2 {
            let problem = format!("expected {SHAPE}, got {} items", items.len());
            ctx.problem("BUILD_MANAGER", ProblemKind::Conflict { problem });
            return m;
        }
        match items[0].as_str() {
            Some("ephemeral") => {}
            Some("external") => {
                m.kind = ManagerKind::External;
                ctx.warn("BUILD_MANAGER[0]", WarningKind::ExternalManager);
            }
            _ => ctx.wrong(
                "BUILD_MANAGER[0]",
                r#""ephemeral" (or "external")"#,
                &items[0],
            ),
        }
        match items.get(1) {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(map)) => m.read_settings(ctx, map),
            Some(other) => ctx.wrong(PATH, "a map of build manager settings", other),
        }
        m
    }

    fn read_settings(&mut self, ctx: &mut Ctx, map: &Mapping) {
        let mut r = MapReader::new(PATH, map);
        let workers = "a whole number of workers, at least 1";
        if let Some(n) = r.uint32(ctx, "ALLOWED_WORKER_COUNT", 1..=u32::MAX, workers) {
            self.allowed_worker_count = n;
        }
        if let Some(p) = r.string(ctx, "ORCHESTRATOR_PREFIX") {
            self.orchestrator_prefix = normalise_prefix(&p);
        }
        let orchestrator = r.raw("ORCHESTRATOR");
        self.orchestrator = orchestrator::parse(ctx, &r.key("ORCHESTRATOR"), orchestrator);
        if let Some(s) = r.seconds(ctx, "JOB_REGISTRATION_TIMEOUT", 1) {
            self.job_registration_timeout_s = s;
        }
        if let Some(s) = r.seconds(ctx, "MACHINE_MAX_TIME", 1) {
            self.machine_max_time_s = s;
        }
        self.read_executors(ctx, &mut r);
        if let Some(b) = r.bool(ctx, "ORDERED_BUILDS_PER_REPO") {
            self.ordered_builds_per_repo = b;
        }
        let attempts = "a whole number of attempts, 1-100";
        if let Some(n) = r.uint32(ctx, "MAX_RETRIES", 1..=100, attempts) {
            self.max_retries = n;
        }
        if let Some(s) = r.seconds(ctx, "RETRY_AFTER_S", 0) {
            self.retry_after_s = s;
        }
        if let Some(v) = r.raw("GRPC_LISTEN_ADDR") {
            match v.as_str().and_then(|s| s.parse::<SocketAddr>().ok()) {
                Some(addr) => self.grpc_listen_addr = addr,
                None => ctx.wrong(
                    r.key("GRPC_LISTEN_ADDR"),
                    "an address such as 127.0.0.1:50051",
                    v,
                ),
            }
        }
        if let Some(size) = r.size(ctx, "MAX_ARCHIVE_SIZE") {
            self.max_archive_size = size;
        }
        if let Some(b) = r.bool(ctx, "ALLOW_LOCAL_GIT_SOURCES") {
            self.allow_local_git_sources = b;
        }
        r.finish(ctx, &LEVEL);
    }

    /// `EXECUTORS`, or Quay's legacy pair `EXECUTOR` (the kind) + `EXECUTOR_CONFIG` (the rest).
    fn read_executors(&mut self, ctx: &mut Ctx, r: &mut MapReader<'_>) {
        let list = r.raw("EXECUTORS");
        let legacy_kind = r.raw("EXECUTOR");
        let legacy_config = r.raw("EXECUTOR_CONFIG");
        if let Some(list) = list {
            if legacy_kind.is_some() || legacy_config.is_some() {
                let key = if legacy_kind.is_some() {
                    "EXECUTOR"
                } else {
                    "EXECUTOR_CONFIG"
                };
                let problem = "use either EXECUTORS or the legacy EXECUTOR + EXECUTOR_CONFIG, \
                               not both"
                    .to_owned();
                ctx.problem(r.key(key), ProblemKind::Conflict { problem });
            }
            let Value::Sequence(items) = list else {
                let expected = "a list of executors such as [{EXECUTOR: popen}]";
                ctx.wrong(r.key("EXECUTORS"), expected, list);
                return;
            };
            for (i, item) in items.iter().enumerate() {
                let path = format!("{}[{i}]", r.key("EXECUTORS"));
                self.executors
                    .extend(ExecutorConfig::parse(ctx, &path, item, None));
            }
        } else if let Some(kind) = legacy_kind {
            ctx.warn(r.key("EXECUTOR"), WarningKind::LegacyExecutorForm);
            let empty = Value::Mapping(Mapping::new());
            let config = legacy_config.unwrap_or(&empty);
            let kind_key = r.key("EXECUTOR");
            let path = r.key("EXECUTOR_CONFIG");
            self.executors.extend(ExecutorConfig::parse(
                ctx,
                &path,
                config,
                Some((kind, &kind_key)),
            ));
        } else if legacy_config.is_some() {
            let expected = "the executor kind EXECUTOR_CONFIG is for, e.g. popen".to_owned();
            ctx.problem(r.key("EXECUTOR"), ProblemKind::Missing { expected });
        }
    }

    /// Cross-key checks: at least one executor, unique names, only implemented kinds.
    pub(super) fn validate(&self, ctx: &mut Ctx) {
        if self.kind == ManagerKind::External {
            return;
        }
        if self.executors.is_empty() {
            let expected = "at least one executor, e.g. EXECUTORS: [{EXECUTOR: popen}]".to_owned();
            ctx.problem(
                format!("{PATH}.EXECUTORS"),
                ProblemKind::Missing { expected },
            );
        }
        for (i, e) in self.executors.iter().enumerate() {
            if let Some(first) = self.executors[..i].iter().find(|o| o.name == e.name) {
                let problem = format!(
                    "duplicate executor name {:?} (also used by {}); give each executor a unique NAME",
                    e.name,
                    first.config_path()
                );
                ctx.problem(
                    format!("{}.NAME", e.config_path()),
                    ProblemKind::Conflict { problem },
                );
            }
            e.validate(ctx);
        }
    }
}

/// Quay joins the prefix and the key with a `/`; keep that form once, here.
fn normalise_prefix(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_owned()
    } else {
        format!("{prefix}/")
    }
}

/// Executor and orchestrator keys commonly written one level too high.
const LEVEL: Level = Level {
    quay_only: &[],
    quay_only_suffixes: &[],
    misplaced: &[
        (orchestrator::REDIS_KEYS, "BUILD_MANAGER[1].ORCHESTRATOR"),
        executor::MISPLACED[0],
        executor::MISPLACED[1],
        executor::MISPLACED[2],
        executor::MISPLACED[3],
        executor::MISPLACED[4],
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> (ManagerConfig, Ctx) {
        let v: Value = serde_yaml::from_str(yaml).unwrap();
        let mut ctx = Ctx::default();
        let m = ManagerConfig::parse(&mut ctx, &v);
        (m, ctx)
    }

    fn problems(ctx: &Ctx) -> Vec<String> {
        ctx.problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn quay_defaults_apply_when_settings_are_short() {
        let (m, ctx) = parse("[ephemeral, {EXECUTORS: [{EXECUTOR: popen}]}]");
        assert!(ctx.problems.is_empty(), "{:?}", problems(&ctx));
        assert_eq!(m.allowed_worker_count, 1);
        assert_eq!(m.registration_timeout(), Duration::from_secs(30));
        assert_eq!(m.machine_max_time(), Duration::from_secs(7200));
        assert_eq!(m.max_retries, 3);
        assert_eq!(m.grpc_listen_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(m.max_archive_size.bytes(), 2 << 30);
        let (m, _) = parse("[ephemeral, {ORCHESTRATOR_PREFIX: buildman/production}]");
        assert_eq!(m.orchestrator_prefix, "buildman/production/");
    }

    #[test]
    fn shape_errors_name_build_manager() {
        let (_, ctx) = parse("ephemeral");
        assert_eq!(
            problems(&ctx),
            [
                r#"BUILD_MANAGER: expected a list of two items: ["ephemeral", {settings}], got "ephemeral""#
            ]
        );
        let (_, ctx) = parse("[enterprise, {}]");
        assert_eq!(
            problems(&ctx),
            [r#"BUILD_MANAGER[0]: expected "ephemeral" (or "external"), got "enterprise""#]
        );
        let (_, ctx) = parse("[ephemeral, {}, {}]");
        assert!(problems(&ctx)[0].ends_with("got 3 items"));
    }

    #[test]
    fn legacy_executor_form_parses_with_a_warning() {
        let (m, ctx) = parse("[ephemeral, {EXECUTOR: popen, EXECUTOR_CONFIG: {SETUP_TIME: 90}}]");
        assert!(ctx.problems.is_empty(), "{:?}", problems(&ctx));
        assert_eq!(m.executors.len(), 1);
        assert_eq!(m.executors[0].setup_time_s, 90);
        assert_eq!(
            m.executors[0].config_path(),
            "BUILD_MANAGER[1].EXECUTOR_CONFIG"
        );
        assert_eq!(ctx.warnings[0].kind, WarningKind::LegacyExecutorForm);
        let (_, ctx) = parse("[ephemeral, {EXECUTOR_CONFIG: {SETUP_TIME: 90}}]");
        assert!(problems(&ctx)[0].starts_with("BUILD_MANAGER[1].EXECUTOR: required"));
    }

    #[test]
    fn validate_catches_duplicates_and_unimplemented_kinds() {
        let (m, _) = parse(
            "[ephemeral, {EXECUTORS: [{EXECUTOR: popen}, {EXECUTOR: popen}, {EXECUTOR: kubernetes, NAME: k8s}]}]",
        );
        let mut ctx = Ctx::default();
        m.validate(&mut ctx);
        assert_eq!(
            problems(&ctx),
            [
                "BUILD_MANAGER[1].EXECUTORS[1].NAME: duplicate executor name \"popen\" (also used by \
                 BUILD_MANAGER[1].EXECUTORS[0]); give each executor a unique NAME",
                "BUILD_MANAGER[1].EXECUTORS[2].EXECUTOR: executor kubernetes is not implemented \
                 yet (issue 6); use EXECUTOR: popen for now",
            ]
        );
        let (m, _) = parse("[ephemeral]");
        let mut ctx = Ctx::default();
        m.validate(&mut ctx);
        assert!(problems(&ctx)[0].starts_with("BUILD_MANAGER[1].EXECUTORS: required"));
    }
}
