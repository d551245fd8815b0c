//! One executor entry: an element of `BUILD_MANAGER[1].EXECUTORS`, or the legacy
//! `EXECUTOR` + `EXECUTOR_CONFIG` pair (reference 3.1).

use std::path::PathBuf;
use std::time::Duration;

use serde_yaml::Value;

use super::cloud::{
    EC2_KEYS, Ec2Settings, KUBERNETES_KEYS, KubernetesSettings, WORKER_KEYS, WorkerSettings,
};
use super::error::{ProblemKind, WarningKind};
use super::qemu::{QEMU_KEYS, QemuSettings};
use super::reader::{Ctx, Level, MapReader};
use super::values::ByteSize;

/// Keys every executor kind reads; the kind-specific ones are in [`super::cloud`].
pub(super) const COMMON_KEYS: &[&str] = &[
    "EXECUTOR",
    "NAME",
    "SETUP_TIME",
    "MINIMUM_RETRY_THRESHOLD",
    "NAMESPACE_WHITELIST",
    "STAGED_ROLLOUT",
    "MAX_LIFETIME_S",
    "DEBUG",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "CONTAINER_RUNTIME",
    "SSH_AUTHORIZED_KEYS",
    "VOLUME_SIZE",
    "CA_CERT",
    "BUILDER_BINARY_LOCATION",
];

/// Where an executor key belongs, for "misplaced" hints at the other levels.
pub(super) const PLACE: &str = "an entry of BUILD_MANAGER[1].EXECUTORS";

/// All executor keys, by group, as other levels' `misplaced` tables want them.
pub(super) const MISPLACED: [(&[&str], &str); 5] = [
    (COMMON_KEYS, PLACE),
    (WORKER_KEYS, PLACE),
    (KUBERNETES_KEYS, PLACE),
    (EC2_KEYS, PLACE),
    (QEMU_KEYS, PLACE),
];

/// Quay's default `SETUP_TIME` (`EPHEMERAL_SETUP_TIMEOUT`), seconds.
const DEFAULT_SETUP_TIME_S: u64 = 500;
/// Quay's default `MAX_LIFETIME_S`, seconds.
const DEFAULT_MAX_LIFETIME_S: u64 = 10_800;

/// The `EXECUTOR` value of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutorKind {
    /// A local `builder-agent` process per build.
    Popen,
    /// A local QEMU VM per build (issue 4).
    Qemu,
    /// A Kubernetes Job booting the builder VM (issue 6).
    Kubernetes,
    /// A Kubernetes Job running podman unprivileged (issue 6).
    KubernetesPodman,
    /// An EC2 instance per build (Quay's; not planned yet).
    Ec2,
}

impl ExecutorKind {
    const ALL: [ExecutorKind; 5] = [
        ExecutorKind::Popen,
        ExecutorKind::Qemu,
        ExecutorKind::Kubernetes,
        ExecutorKind::KubernetesPodman,
        ExecutorKind::Ec2,
    ];
    const NAMES: [&'static str; 5] = ["popen", "qemu", "kubernetes", "kubernetesPodman", "ec2"];

    /// The config spelling, e.g. `kubernetesPodman`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Popen => "popen",
            ExecutorKind::Qemu => "qemu",
            ExecutorKind::Kubernetes => "kubernetes",
            ExecutorKind::KubernetesPodman => "kubernetesPodman",
            ExecutorKind::Ec2 => "ec2",
        }
    }

    /// Whether buildman can run builds with this kind in this release.
    pub fn is_implemented(self) -> bool {
        matches!(self, ExecutorKind::Popen | ExecutorKind::Qemu)
    }

    fn planned(self) -> &'static str {
        match self {
            ExecutorKind::Popen | ExecutorKind::Qemu => "implemented",
            ExecutorKind::Kubernetes | ExecutorKind::KubernetesPodman => "issue 6",
            ExecutorKind::Ec2 => "no issue planned yet",
        }
    }
}

/// The container engine the agent drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerRuntime {
    /// podman's Docker-compatible API (Quarry's default: there is no Docker engine here).
    Podman,
    /// dockerd (Quay's default).
    Docker,
}

impl ContainerRuntime {
    /// The config spelling and the agent's `CONTAINER_RUNTIME` value.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerRuntime::Podman => "podman",
            ContainerRuntime::Docker => "docker",
        }
    }
}

/// One configured executor. Fields carry Quay's key names in their docs.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutorConfig {
    /// `EXECUTOR`.
    pub kind: ExecutorKind,
    /// `NAME` (default: the kind); unique among executors.
    pub name: String,
    /// `SETUP_TIME` (default: 500): seconds from scheduling to the agent's first heartbeat.
    pub setup_time_s: u64,
    /// `MINIMUM_RETRY_THRESHOLD` (default: 0): used only while `retries_remaining >= this`.
    pub minimum_retry_threshold: u32,
    /// `NAMESPACE_WHITELIST`: namespaces always allowed on this executor.
    pub namespace_whitelist: Option<Vec<String>>,
    /// `STAGED_ROLLOUT`: fraction (0-1) of other namespaces allowed, by hash.
    pub staged_rollout: Option<f64>,
    /// `MAX_LIFETIME_S` (default: 10800): hard cap on a worker's life.
    pub max_lifetime_s: u64,
    /// `DEBUG`: keep workers after the build (VM executors); agent debug logging.
    pub debug: bool,
    /// `HTTP_PROXY` for the worker.
    pub http_proxy: Option<String>,
    /// `HTTPS_PROXY` for the worker.
    pub https_proxy: Option<String>,
    /// `NO_PROXY` for the worker.
    pub no_proxy: Option<String>,
    /// `CONTAINER_RUNTIME` (default: podman).
    pub container_runtime: ContainerRuntime,
    /// `SSH_AUTHORIZED_KEYS`: keys installed in VM workers for debugging.
    pub ssh_authorized_keys: Vec<String>,
    /// `VOLUME_SIZE`: the worker's scratch disk (VM executors).
    pub volume_size: Option<ByteSize>,
    /// `CA_CERT`: PEM text of an extra CA the worker trusts.
    pub ca_cert: Option<String>,
    /// `BUILDER_BINARY_LOCATION` (popen): the agent binary; default `builder-agent` next to
    /// buildman's own executable.
    pub builder_binary_location: Option<PathBuf>,
    /// `QUAY_USERNAME`, `QUAY_PASSWORD`, `WORKER_IMAGE`, `WORKER_TAG`.
    pub worker: WorkerSettings,
    /// Kubernetes keys.
    pub kubernetes: KubernetesSettings,
    /// EC2 keys.
    pub ec2: Ec2Settings,
    /// `qemu` keys (`VM_MEMORY`, `SSH_PORT`, ...), defaults applied.
    pub qemu: QemuSettings,
    /// Where this entry is in the file, for messages.
    path: String,
    /// Where its `EXECUTOR` key is (differs in the legacy form).
    kind_key: String,
}

/// Key groups that only some kinds use; present elsewhere they earn a warning.
const KIND_GROUPS: &[(&[&str], &[ExecutorKind])] = &[
    (&["BUILDER_BINARY_LOCATION"], &[ExecutorKind::Popen]),
    (WORKER_KEYS, &[ExecutorKind::Kubernetes, ExecutorKind::Ec2]),
    (
        KUBERNETES_KEYS,
        &[ExecutorKind::Kubernetes, ExecutorKind::KubernetesPodman],
    ),
    (EC2_KEYS, &[ExecutorKind::Ec2]),
    (QEMU_KEYS, &[ExecutorKind::Qemu]),
];

impl ExecutorConfig {
    /// Where this entry is in the config file, e.g. `BUILD_MANAGER[1].EXECUTORS[0]`.
    pub fn config_path(&self) -> &str {
        &self.path
    }

    /// `SETUP_TIME` as a duration.
    pub fn setup_time(&self) -> Duration {
        Duration::from_secs(self.setup_time_s)
    }

    /// `MAX_LIFETIME_S` as a duration.
    pub fn max_lifetime(&self) -> Duration {
        Duration::from_secs(self.max_lifetime_s)
    }

    /// Report kinds this release cannot run.
    pub(super) fn validate(&self, ctx: &mut Ctx) {
        if !self.kind.is_implemented() {
            ctx.problem(
                self.kind_key.clone(),
                ProblemKind::NotImplemented {
                    executor: self.kind.as_str().to_owned(),
                    planned: self.kind.planned(),
                },
            );
        }
    }

    /// Parse one entry at `path`. In the legacy form the kind comes from outside the map:
    /// `outer_kind` is `BUILD_MANAGER[1].EXECUTOR` and its path.
    pub(super) fn parse(
        ctx: &mut Ctx,
        path: &str,
        value: &Value,
        outer_kind: Option<(&Value, &str)>,
    ) -> Option<ExecutorConfig> {
        let Value::Mapping(map) = value else {
            ctx.wrong(
                path,
                "a map of executor settings such as {EXECUTOR: popen}",
                value,
            );
            return None;
        };
        let mut r = MapReader::new(path, map);
        let inner = r.raw("EXECUTOR").map(|v| (v, r.key("EXECUTOR")));
        let (kind_value, kind_key) = match (outer_kind, inner) {
            (Some((v, key)), None) => (Some(v), key.to_owned()),
            (Some((v, key)), Some((inner, inner_key))) => {
                if inner != v {
                    ctx.problem(
                        inner_key,
                        ProblemKind::Conflict {
                            problem: format!("differs from {key}; remove one of them"),
                        },
                    );
                }
                (Some(v), key.to_owned())
            }
            (None, Some((v, key))) => (Some(v), key),
            (None, None) => (None, r.key("EXECUTOR")),
        };
        let expected = format!("one of {}", ExecutorKind::NAMES.join(", "));
        let kind = match kind_value {
            None => {
                ctx.problem(kind_key.clone(), ProblemKind::Missing { expected });
                None
            }
            Some(v) => {
                let found = v
                    .as_str()
                    .and_then(|s| ExecutorKind::ALL.into_iter().find(|k| k.as_str() == s));
                if found.is_none() {
                    ctx.wrong(kind_key.clone(), &expected, v);
                }
                found
            }
        };
        let runtime = r.one_of(ctx, "CONTAINER_RUNTIME", &["podman", "docker"]);
        let staged_rollout = r.raw("STAGED_ROLLOUT").and_then(|v| {
            let f = v.as_f64().filter(|f| (0.0..=1.0).contains(f));
            if f.is_none() {
                ctx.wrong(r.key("STAGED_ROLLOUT"), "a fraction between 0 and 1", v);
            }
            f
        });
        let config = ExecutorConfig {
            kind: kind.unwrap_or(ExecutorKind::Popen),
            name: r
                .string(ctx, "NAME")
                .filter(|n| !n.is_empty())
                .unwrap_or_default(),
            setup_time_s: r
                .seconds(ctx, "SETUP_TIME", 1)
                .unwrap_or(DEFAULT_SETUP_TIME_S),
            minimum_retry_threshold: r
                .uint32(
                    ctx,
                    "MINIMUM_RETRY_THRESHOLD",
                    0..=u32::MAX,
                    "a whole number, 0 or more",
                )
                .unwrap_or(0),
            namespace_whitelist: r.strings(ctx, "NAMESPACE_WHITELIST"),
            staged_rollout,
            max_lifetime_s: r
                .seconds(ctx, "MAX_LIFETIME_S", 1)
                .unwrap_or(DEFAULT_MAX_LIFETIME_S),
            debug: r.bool(ctx, "DEBUG").unwrap_or(false),
            http_proxy: r.string(ctx, "HTTP_PROXY"),
            https_proxy: r.string(ctx, "HTTPS_PROXY"),
            no_proxy: r.string(ctx, "NO_PROXY"),
            container_runtime: match runtime {
                Some("docker") => ContainerRuntime::Docker,
                _ => ContainerRuntime::Podman,
            },
            ssh_authorized_keys: r.strings(ctx, "SSH_AUTHORIZED_KEYS").unwrap_or_default(),
            volume_size: r.size(ctx, "VOLUME_SIZE"),
            ca_cert: r.string(ctx, "CA_CERT"),
            builder_binary_location: r.string(ctx, "BUILDER_BINARY_LOCATION").map(PathBuf::from),
            worker: WorkerSettings::parse(&mut r, ctx),
            kubernetes: KubernetesSettings::parse(&mut r, ctx),
            ec2: Ec2Settings::parse(&mut r, ctx),
            qemu: QemuSettings::parse(&mut r, ctx),
            path: path.to_owned(),
            kind_key,
        };
        let kind = kind?;
        for (keys, kinds) in KIND_GROUPS {
            if kinds.contains(&kind) {
                continue;
            }
            for key in keys.iter().filter(|k| r.has(k)) {
                let executor = kind.as_str();
                ctx.warn(r.key(key), WarningKind::NotForExecutor { executor });
            }
        }
        r.finish(ctx, &LEVEL);
        let name = if config.name.is_empty() {
            kind.as_str().to_owned()
        } else {
            config.name
        };
        Some(ExecutorConfig {
            kind,
            name,
            ..config
        })
    }
}

/// Keys of other levels commonly put inside an executor entry by mistake.
const LEVEL: Level = Level {
    quay_only: &[],
    quay_only_suffixes: &[],
    misplaced: &[
        (super::manager::KEYS, "BUILD_MANAGER[1]"),
        (
            super::orchestrator::REDIS_KEYS,
            "BUILD_MANAGER[1].ORCHESTRATOR",
        ),
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> (Option<ExecutorConfig>, Ctx) {
        let v: Value = serde_yaml::from_str(yaml).unwrap();
        let mut ctx = Ctx::default();
        let e = ExecutorConfig::parse(&mut ctx, "EXECUTORS[0]", &v, None);
        (e, ctx)
    }

    #[test]
    fn defaults_follow_quay_and_name_defaults_to_kind() {
        let (e, ctx) = parse("EXECUTOR: popen\nMINIMUM_RETRY_THRESHOLD:\n");
        assert!(ctx.problems.is_empty(), "{:?}", ctx.problems);
        let e = e.unwrap();
        assert_eq!(e.name, "popen");
        assert_eq!(e.setup_time(), Duration::from_secs(500));
        assert_eq!(e.minimum_retry_threshold, 0);
        assert_eq!(e.max_lifetime_s, 10_800);
        assert_eq!(e.container_runtime, ContainerRuntime::Podman);
    }

    #[test]
    fn kind_is_required_and_spelled_exactly() {
        let (e, ctx) = parse("NAME: x\n");
        assert!(e.is_none());
        assert_eq!(
            ctx.problems[0].to_string(),
            "EXECUTORS[0].EXECUTOR: required, expected one of popen, qemu, kubernetes, \
             kubernetesPodman, ec2"
        );
        let (_, ctx) = parse("EXECUTOR: kubernetespodman\n");
        assert!(
            ctx.problems[0]
                .to_string()
                .ends_with(r#"got "kubernetespodman""#)
        );
    }

    #[test]
    fn keys_of_other_kinds_are_warnings() {
        let (e, ctx) = parse("EXECUTOR: popen\nEC2_REGION: us-east-1\nBUILDER_NAMESPACE: b\n");
        assert!(e.is_some() && ctx.problems.is_empty());
        let w: Vec<String> = ctx.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            w,
            [
                "EXECUTORS[0].BUILDER_NAMESPACE: not used by the popen executor; ignored",
                "EXECUTORS[0].EC2_REGION: not used by the popen executor; ignored",
            ]
        );
    }

    /// Every key in the published list (used for "misplaced" hints elsewhere) is read here.
    #[test]
    fn every_listed_key_is_read() {
        let all: String = MISPLACED
            .iter()
            .flat_map(|(keys, _)| keys.iter())
            .map(|k| {
                if *k == "EXECUTOR" {
                    "EXECUTOR: popen\n".to_owned()
                } else {
                    format!("{k}: ~\n")
                }
            })
            .collect();
        let (e, ctx) = parse(&all);
        assert!(e.is_some());
        assert!(ctx.problems.is_empty(), "{:?}", ctx.problems);
        for (keys, _) in KIND_GROUPS {
            for k in *keys {
                let listed = MISPLACED.iter().any(|(group, _)| group.contains(k));
                assert!(listed, "{k} missing from the key groups");
            }
        }
    }

    #[test]
    fn staged_rollout_is_a_fraction() {
        let (e, ctx) = parse("EXECUTOR: popen\nSTAGED_ROLLOUT: 0.25\nNAMESPACE_WHITELIST: [a]\n");
        assert!(ctx.problems.is_empty());
        let e = e.unwrap();
        assert_eq!(e.staged_rollout, Some(0.25));
        assert_eq!(
            e.namespace_whitelist.as_deref(),
            Some(&["a".to_owned()][..])
        );
        let (_, ctx) = parse("EXECUTOR: popen\nSTAGED_ROLLOUT: 25\n");
        assert_eq!(
            ctx.problems[0].to_string(),
            "EXECUTORS[0].STAGED_ROLLOUT: expected a fraction between 0 and 1, got 25"
        );
    }
}
