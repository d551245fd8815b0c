//! buildman's configuration against whole files: the samples under `fixtures/config/` and
//! `tests/configs/` load as documented, and each class of mistake is reported with its full key
//! path and the expected form.
#![allow(clippy::tests_outside_test_module)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use buildman::config::{
    Config, ConfigError, ExecutorKind, OrchestratorConfig, ProblemKind, WarningKind,
};

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(path)
}

fn sample(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/configs")
        .join(path)
}

fn messages(err: &ConfigError) -> Vec<String> {
    err.problems().iter().map(ToString::to_string).collect()
}

#[test]
fn quay_config_with_redis_and_two_executors_loads_and_validates() {
    let c = Config::load(&fixture("config/buildman-quay-redis.yaml")).unwrap();
    c.validate().unwrap();
    assert!(c.builds_enabled());
    assert_eq!(c.allowed_worker_count(), 4);
    assert_eq!(c.registration_timeout(), Duration::from_secs(240));
    assert_eq!(c.machine_max_time(), Duration::from_secs(3600));
    assert_eq!(c.orchestrator_prefix(), "buildman/production/");
    let OrchestratorConfig::Redis(redis) = c.orchestrator() else {
        panic!("expected redis, got {:?}", c.orchestrator());
    };
    assert_eq!(
        (redis.host.as_str(), redis.port, redis.db),
        ("redis.example.com", 6379, 2)
    );
    assert_eq!(redis.password, None, "an empty password is no password");
    let names: Vec<&str> = c.executors().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["primary", "fallback"]);
    assert_eq!(c.executors()[0].minimum_retry_threshold, 1);
    assert_eq!(
        c.executors()[1].minimum_retry_threshold,
        0,
        "a bare key means the default"
    );
    assert_eq!(
        c.executors()[1].builder_binary_location.as_deref(),
        Some(Path::new("/usr/local/bin/builder-agent"))
    );
    assert_eq!(c.registry.server_hostname, "quay.example.com");
    assert_eq!(c.registry.super_users, ["quayadmin"]);
    assert_eq!(c.data_dir(), Path::new("/var/lib/quarry"));
    // BUILDMAN_HOSTNAME is set in the file; the environment may override it at run time.
    if std::env::var_os("BUILDMAN_HOSTNAME").is_none() {
        assert_eq!(c.manager_hostname(), "builds.quay.example.com:443");
    }
    // Quay keys for features Quarry lacks are warnings, one per key, nothing else.
    let warned: Vec<&str> = c.warnings().iter().map(|w| w.key.as_str()).collect();
    for key in [
        "DB_URI",
        "DISTRIBUTED_STORAGE_CONFIG",
        "BUILDLOGS_REDIS",
        "SECRET_KEY",
    ] {
        assert!(warned.contains(&key), "{key} not in {warned:?}");
    }
    assert!(c.warnings().iter().all(|w| w.kind == WarningKind::QuayOnly));
}

#[test]
fn legacy_executor_form_loads_with_a_warning() {
    let c = Config::load(&fixture("config/buildman-legacy-executor.yaml")).unwrap();
    c.validate().unwrap();
    assert_eq!(c.allowed_worker_count(), 1);
    assert_eq!(c.orchestrator(), &OrchestratorConfig::Memory);
    let [e] = c.executors() else {
        panic!("{:?}", c.executors())
    };
    assert_eq!(
        (e.kind, e.name.as_str(), e.setup_time_s, e.debug),
        (ExecutorKind::Popen, "local", 120, true)
    );
    let w: Vec<String> = c.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("BUILD_MANAGER[1].EXECUTOR: legacy EXECUTOR + EXECUTOR_CONFIG form"));
}

#[test]
fn embedded_default_is_a_working_single_machine_setup() {
    let c = Config::default();
    c.validate().unwrap();
    assert_eq!(c.allowed_worker_count(), 2);
    assert_eq!(c.orchestrator(), &OrchestratorConfig::Memory);
    assert_eq!(c.executors()[0].kind, ExecutorKind::Popen);
    assert_eq!(c.grpc_listen_addr().to_string(), "127.0.0.1:50051");
    assert!(c.ordered_builds_per_repo());
    // An empty file is the same configuration.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("config.yaml");
    std::fs::write(&empty, "").unwrap();
    assert_eq!(Config::load(&empty).unwrap().manager, c.manager);
}

#[test]
fn quay_guide_openshift_sample_loads_but_kubernetes_podman_is_not_implemented() {
    let c = Config::load(&sample("quay-guide-kubernetes-podman.yaml")).unwrap();
    let e = &c.executors()[0];
    assert_eq!(e.kind, ExecutorKind::KubernetesPodman);
    assert_eq!(
        e.kubernetes.builder_namespace.as_deref(),
        Some("virtual-builders")
    );
    assert_eq!(e.kubernetes.distribution, Some("openshift"));
    assert_eq!(e.volume_size.as_ref().map(|s| s.bytes()), Some(8 << 30));
    let token = e.kubernetes.service_account_token.as_ref().unwrap();
    assert!(
        !format!("{c:?}").contains(token.expose()),
        "secrets stay out of Debug"
    );
    let err = c.validate().unwrap_err();
    assert_eq!(
        messages(&err),
        [
            "BUILD_MANAGER[1].EXECUTORS[0].EXECUTOR: executor kubernetesPodman is not implemented yet \
          (issue 6); use EXECUTOR: popen for now"
        ]
    );
}

#[test]
fn guide_pdf_indentation_mistakes_say_where_keys_belong() {
    let err = Config::load(&sample("guide-pdf-indentation.yaml")).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("guide-pdf-indentation.yaml"), "{text}");
    assert_eq!(
        messages(&err),
        [
            "ORCHESTRATOR_PREFIX: this key belongs inside BUILD_MANAGER[1]; move it there",
            "ORCHESTRATOR: this key belongs inside BUILD_MANAGER[1]; move it there",
            "EXECUTORS: this key belongs inside BUILD_MANAGER[1]; move it there",
            "BUILDER_NAMESPACE: this key belongs inside an entry of BUILD_MANAGER[1].EXECUTORS; \
             move it there",
            "SETUP_TIME: this key belongs inside an entry of BUILD_MANAGER[1].EXECUTORS; move it there",
        ]
    );
}

/// A manager settings map with one line changed, for the mistake table.
fn with_settings(line: &str) -> String {
    format!("BUILD_MANAGER:\n- ephemeral\n- EXECUTORS: [{{EXECUTOR: popen}}]\n  {line}\n")
}

fn with_executor(line: &str) -> String {
    format!("BUILD_MANAGER:\n- ephemeral\n- EXECUTORS:\n  - EXECUTOR: popen\n    {line}\n")
}

#[test]
fn each_class_of_mistake_names_the_key_and_the_expected_form() {
    let cases: Vec<(String, &str)> = vec![
        (
            with_settings("ALLOWED_WORKERS: 3"),
            "unknown key BUILD_MANAGER[1].ALLOWED_WORKERS (did you mean ALLOWED_WORKER_COUNT?)",
        ),
        (
            "FEATURE_BUILD_SUPORT: true\n".to_owned(),
            "unknown key FEATURE_BUILD_SUPORT (did you mean FEATURE_BUILD_SUPPORT?)",
        ),
        (
            "NOT_A_QUAY_KEY: 1\n".to_owned(),
            "unknown key NOT_A_QUAY_KEY",
        ),
        (
            with_settings("ORCHESTRATOR: {REDIS_HOST: r, REDIS_PORT: abc}"),
            r#"BUILD_MANAGER[1].ORCHESTRATOR.REDIS_PORT: expected an integer port 1-65535, got "abc""#,
        ),
        (
            with_settings("ORCHESTRATOR: {REDIS_HOST: r, REDIS_KEY_PREFIX: x}"),
            "BUILD_MANAGER[1].ORCHESTRATOR.REDIS_KEY_PREFIX: legacy prefix key inside ORCHESTRATOR; \
             set BUILD_MANAGER[1].ORCHESTRATOR_PREFIX instead",
        ),
        (
            with_settings("ALLOWED_WORKER_COUNT: 0"),
            "BUILD_MANAGER[1].ALLOWED_WORKER_COUNT: expected a whole number of workers, at least 1, got 0",
        ),
        (
            with_settings("JOB_REGISTRATION_TIMEOUT: 1m"),
            r#"BUILD_MANAGER[1].JOB_REGISTRATION_TIMEOUT: expected a whole number of seconds, at least 1, got "1m""#,
        ),
        (
            with_settings("GRPC_LISTEN_ADDR: here"),
            r#"BUILD_MANAGER[1].GRPC_LISTEN_ADDR: expected an address such as 127.0.0.1:50051, got "here""#,
        ),
        (
            with_settings("MAX_ARCHIVE_SIZE: lots"),
            r#"BUILD_MANAGER[1].MAX_ARCHIVE_SIZE: expected a size such as 2G, 512M or a number of bytes, got "lots""#,
        ),
        (
            with_settings("SETUP_TIME: 60"),
            "BUILD_MANAGER[1].SETUP_TIME: this key belongs inside an entry of \
             BUILD_MANAGER[1].EXECUTORS; move it there",
        ),
        (
            with_settings("EXECUTOR: popen"),
            "BUILD_MANAGER[1].EXECUTOR: use either EXECUTORS or the legacy EXECUTOR + \
             EXECUTOR_CONFIG, not both",
        ),
        (
            "FEATURE_BUILD_SUPPORT: maybe\n".to_owned(),
            r#"FEATURE_BUILD_SUPPORT: expected true or false, got "maybe""#,
        ),
        (
            "BUILD_MANAGER: ephemeral\n".to_owned(),
            r#"BUILD_MANAGER: expected a list of two items: ["ephemeral", {settings}], got "ephemeral""#,
        ),
        (
            with_executor("SSH_AUTHORIZED_KEYS: [ssh-ed25519 AAAA, 42]"),
            "BUILD_MANAGER[1].EXECUTORS[0].SSH_AUTHORIZED_KEYS[1]: expected a string, got 42",
        ),
        (
            with_executor("CONTAINER_RUNTIME: rkt"),
            r#"BUILD_MANAGER[1].EXECUTORS[0].CONTAINER_RUNTIME: expected one of podman, docker, got "rkt""#,
        ),
        (
            with_executor("SETUP_TIM: 60"),
            "unknown key BUILD_MANAGER[1].EXECUTORS[0].SETUP_TIM (did you mean SETUP_TIME?)",
        ),
        (
            "BUILD_MANAGER:\n- ephemeral\n- EXECUTORS: [{NAME: x}]\n".to_owned(),
            "BUILD_MANAGER[1].EXECUTORS[0].EXECUTOR: required, expected one of popen, qemu, \
             kubernetes, kubernetesPodman, ec2",
        ),
        (
            "SERVER_HOSTNAME: [a, b]\n".to_owned(),
            "SERVER_HOSTNAME: invalid type: sequence, expected a string",
        ),
    ];
    for (yaml, expected) in cases {
        let err = Config::from_yaml_str(&yaml).unwrap_err();
        assert_eq!(messages(&err), [expected], "for:\n{yaml}");
    }
}

#[test]
fn validation_mistakes_are_named_too() {
    let cases: Vec<(String, &str)> = vec![
        (
            "BUILD_MANAGER:\n- ephemeral\n- EXECUTORS: [{EXECUTOR: kubernetes}]\n".to_owned(),
            "BUILD_MANAGER[1].EXECUTORS[0].EXECUTOR: executor kubernetes is not implemented yet \
             (issue 6); use EXECUTOR: popen for now",
        ),
        (
            "BUILD_MANAGER:\n- ephemeral\n- EXECUTORS: [{EXECUTOR: ec2, EC2_REGION: us-east-1}]\n"
                .to_owned(),
            "BUILD_MANAGER[1].EXECUTORS[0].EXECUTOR: executor ec2 is not implemented yet \
             (no issue planned yet); use EXECUTOR: popen for now",
        ),
        (
            "BUILD_MANAGER:\n- ephemeral\n- {ALLOWED_WORKER_COUNT: 2}\n".to_owned(),
            "BUILD_MANAGER[1].EXECUTORS: required, expected at least one executor, \
             e.g. EXECUTORS: [{EXECUTOR: popen}]",
        ),
        (
            "BUILDMAN_HOSTNAME: https://builds.example.com/\n".to_owned(),
            r#"BUILDMAN_HOSTNAME: expected a host:port such as builds.example.com:443, without scheme or path, got "https://builds.example.com/""#,
        ),
        (
            "SERVER_HOSTNAME: http://quay.example.com\n".to_owned(),
            r#"SERVER_HOSTNAME: "http://quay.example.com" must be a host or host:port, without scheme or path"#,
        ),
    ];
    for (yaml, expected) in cases {
        let c = Config::from_yaml_str(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        let err = c.validate().unwrap_err();
        assert_eq!(messages(&err), [expected], "for:\n{yaml}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = "FEATURE_BUILD_SUPORT: true\nBUILD_MANAGER:\n- ephemeral\n- ALLOWED_WORKERS: 1\n  \
                EXECUTORS: [{EXECUTOR: popen, SETUP_TIME: soon}]\n";
    let err = Config::from_yaml_str(yaml).unwrap_err();
    assert_eq!(err.problems().len(), 3, "{err}");
    assert!(
        err.to_string()
            .starts_with("config text is invalid: 3 problems\n  "),
        "{err}"
    );
    assert!(
        err.problems()
            .iter()
            .any(|p| matches!(p.kind, ProblemKind::WrongValue { .. })),
        "{err}"
    );
}

#[test]
fn unreadable_and_malformed_files_are_reported_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.yaml");
    let err = Config::load(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("absent.yaml"), "{err}");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "BUILD_MANAGER: [ephemeral\n").unwrap();
    let err = Config::load(&bad).unwrap_err();
    assert!(matches!(err, ConfigError::Yaml { .. }));
    assert!(err.to_string().contains("bad.yaml"), "{err}");
    let dup = dir.path().join("dup.yaml");
    std::fs::write(&dup, "SERVER_HOSTNAME: a\nSERVER_HOSTNAME: b\n").unwrap();
    assert!(
        matches!(Config::load(&dup), Err(ConfigError::Yaml { .. })),
        "duplicate keys"
    );
}
