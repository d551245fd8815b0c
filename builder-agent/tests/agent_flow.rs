//! The agent's protocol against a mock buildman (a real gRPC server on 127.0.0.1) with a fake
//! container engine: call order, phases and their sequence numbers, logs, heartbeats, error
//! classification, refusals, re-opened streams and shutdown. The source is a real archive URL
//! served on loopback, fetched by the real `source` module.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    unreachable_pub,
    missing_debug_implementations
)]

mod agent_mock;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_mock::{Call, MockConfig, MockServer, wait_until};
use builder_agent::agent::{self, Outcome};
use builder_agent::engine::{BuildSpec, Credentials, Engine, EngineError, ImageInfo, Op};
use builder_agent::env::{AgentConfig, Runtime};
use builder_agent::logs::{LogLine, Logs};
use buildman_proto::{BaseImage, BuildPackSource, Phase};

const REGISTRY: &str = "127.0.0.1:5000";
const BASE: &str = "127.0.0.1:5000/ns/base";

/// What the fake engine does and what it was asked.
#[derive(Default)]
struct Fake {
    build_delay: Duration,
    build_error: Option<String>,
    /// Status and text of every base-image pull failure.
    pull_error: Option<(u16, String)>,
    calls: Mutex<Vec<String>>,
    spec: Mutex<Option<BuildSpec>>,
}

#[derive(Clone, Default)]
struct FakeEngine(Arc<Fake>);

impl FakeEngine {
    fn calls(&self) -> Vec<String> {
        self.0.calls.lock().unwrap().clone()
    }

    fn record(&self, call: String) {
        self.0.calls.lock().unwrap().push(call);
    }
}

fn who(creds: Option<&Credentials>) -> String {
    creds.map_or_else(
        || "anonymous".into(),
        |c| format!("{}/{}", c.username, c.password),
    )
}

fn digest_of(tag: &str) -> String {
    let hex: String = tag.bytes().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex:0<64}")
}

impl Engine for FakeEngine {
    async fn pull(
        &self,
        reference: &str,
        creds: Option<&Credentials>,
        logs: &Logs,
    ) -> Result<(), EngineError> {
        self.record(format!("pull {reference} as {}", who(creds)));
        if reference.starts_with(BASE)
            && let Some((status, message)) = &self.0.pull_error
        {
            return Err(EngineError::Failed {
                op: Op::Pull,
                status: Some(*status),
                message: message.clone(),
            });
        }
        logs.send(LogLine::stream(&format!("pulled {reference}\n")))
            .await;
        Ok(())
    }

    async fn build(&self, spec: &BuildSpec, logs: &Logs) -> Result<(), EngineError> {
        self.record(format!("build {}", spec.image));
        *self.0.spec.lock().unwrap() = Some(spec.clone());
        logs.send(LogLine::stream("STEP 1/2: FROM base\n")).await;
        logs.send(LogLine::stream("STEP 2/2: RUN echo hello\n"))
            .await;
        tokio::time::sleep(self.0.build_delay).await;
        if let Some(message) = &self.0.build_error {
            return Err(EngineError::Failed {
                op: Op::Build,
                status: None,
                message: message.clone(),
            });
        }
        logs.send(LogLine::stream("hello\n")).await;
        Ok(())
    }

    async fn tag(&self, image: &str, repo: &str, tag: &str) -> Result<(), EngineError> {
        assert!(image.starts_with("quarry-build-"), "{image}");
        self.record(format!("tag {repo}:{tag}"));
        Ok(())
    }

    async fn push(
        &self,
        repo: &str,
        tag: &str,
        creds: &Credentials,
        logs: &Logs,
    ) -> Result<Option<String>, EngineError> {
        self.record(format!("push {repo}:{tag} as {}", who(Some(creds))));
        logs.send(LogLine::stream(&format!("pushed {tag}\n"))).await;
        // The second tag's digest comes from inspect, as when the engine prints none.
        Ok((tag == "latest").then(|| digest_of(tag)))
    }

    async fn inspect(&self, image: &str) -> Result<ImageInfo, EngineError> {
        let (repo, tag) = image.rsplit_once(':').unwrap();
        Ok(ImageInfo {
            id: "sha256:feed".into(),
            repo_digests: vec![format!("{repo}@{}", digest_of(tag))],
        })
    }

    async fn remove(&self, image: &str) -> Result<(), EngineError> {
        self.record(format!("remove {image}"));
        Ok(())
    }

    async fn shutdown(self) {
        self.record("shutdown".into());
    }
}

struct Setup {
    mock: MockServer,
    config: AgentConfig,
    _work: tempfile::TempDir,
}

async fn setup(dockerfile: &str, mut mock_config: MockConfig) -> Setup {
    let base = agent_mock::serve_files(vec![("/Dockerfile", dockerfile.as_bytes().to_vec())]).await;
    let pack = &mut mock_config.pack;
    pack.build_pack = Some(BuildPackSource::PackageUrl(format!("{base}/Dockerfile")));
    pack.registry = REGISTRY.into();
    pack.repository = "ns/app".into();
    if pack.tag_names.is_empty() {
        pack.tag_names = vec!["latest".into(), "v1".into()];
    }
    pack.push_token = "push-secret".into();
    pack.pull_token = "pull-secret".into();
    pack.base_image = Some(BaseImage {
        username: "ns+robot".into(),
        password: "robot-secret".into(),
    });
    pack.build_args = HashMap::from([("TAG".to_owned(), "v1".to_owned())]);
    let mock = agent_mock::start(mock_config).await;
    let work = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        server: mock.server(),
        token: "registration-jwt".into(),
        runtime: Runtime::Podman,
        docker_host: None,
        tls_cert_path: None,
        insecure: true,
        work_dir: Some(work.path().to_owned()),
        registry_hostname: Some(REGISTRY.into()),
        max_context_bytes: 1 << 20,
        debug: true,
    };
    Setup {
        mock,
        config,
        _work: work,
    }
}

const DOCKERFILE: &str = "ARG TAG=v0\nFROM 127.0.0.1:5000/ns/base:${TAG}\nRUN echo hello\n";

async fn run(s: &Setup, engine: &FakeEngine) -> Outcome {
    let engine = engine.clone();
    tokio::time::timeout(
        Duration::from_secs(60),
        agent::run(&s.config, async { Ok(engine) }, std::future::pending()),
    )
    .await
    .expect("the agent finished in time")
    .expect("the agent registered")
}

fn sequence_numbers_increase(values: &[i32]) {
    assert!(
        values.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers not increasing: {values:?}"
    );
}

#[tokio::test]
async fn complete_build_follows_quays_call_order_with_digests() {
    let s = setup(
        DOCKERFILE,
        MockConfig {
            cached_tag: "previous".into(),
            ..MockConfig::default()
        },
    )
    .await;
    let engine = FakeEngine(Arc::new(Fake {
        // Long enough to see heartbeats arrive every ~2 s.
        build_delay: Duration::from_millis(4500),
        ..Fake::default()
    }));
    let outcome = run(&s, &engine).await;
    let digests = vec![digest_of("latest"), digest_of("v1")];
    assert_eq!(
        outcome,
        Outcome::Complete {
            manifest_digests: digests.clone()
        }
    );
    assert_eq!(outcome.exit_code(), 0);

    // Ping, then registration with TOKEN, before anything else.
    let calls = s.mock.calls();
    assert!(matches!(calls[0].1, Call::Ping), "{:?}", calls[0].1);
    assert!(
        matches!(&calls[1].1, Call::Register(t) if t == "registration-jwt"),
        "{:?}",
        calls[1].1
    );

    // Phases in Quay's order, numbered 1.., with pull metadata and digests.
    let phases = s.mock.phases();
    assert_eq!(
        s.mock.phase_list(),
        [
            Phase::Unpacking,
            Phase::Pulling,
            Phase::Building,
            Phase::Pushing,
            Phase::Complete
        ]
    );
    assert_eq!(
        phases.iter().map(|p| p.sequence_number).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(phases.iter().all(|p| p.job_jwt == agent_mock::JOB_JWT));
    let meta = phases[1].pull_metadata.clone().unwrap();
    assert_eq!(
        (
            meta.registry_url.as_str(),
            meta.base_image.as_str(),
            meta.base_image_tag.as_str(),
            meta.pull_username.as_str()
        ),
        (REGISTRY, BASE, "v1", "ns+robot"),
        "the build argument TAG=v1 replaced the ARG default"
    );
    assert_eq!(phases[4].manifest_digests, digests);

    // The engine: base pulled with the robot, cache primed with the pull token, build with the
    // context, build args and cache source, every tag pushed with the push token.
    let calls = engine.calls();
    let expected_prefix = [
        format!("pull {BASE}:v1 as ns+robot/robot-secret"),
        format!("pull {REGISTRY}/ns/app:previous as $token/pull-secret"),
    ];
    assert_eq!(calls[..2], expected_prefix, "{calls:?}");
    assert!(calls[2].starts_with("build quarry-build-"), "{calls:?}");
    assert_eq!(
        calls[3..7],
        [
            format!("tag {REGISTRY}/ns/app:latest"),
            format!("push {REGISTRY}/ns/app:latest as $token/push-secret"),
            format!("tag {REGISTRY}/ns/app:v1"),
            format!("push {REGISTRY}/ns/app:v1 as $token/push-secret"),
        ]
    );
    assert!(
        calls.iter().any(|c| c.starts_with("remove quarry-build-")),
        "cleanup: {calls:?}"
    );
    assert_eq!(calls.last().unwrap(), "shutdown");
    let spec = engine.0.spec.lock().unwrap().clone().unwrap();
    assert_eq!(spec.dockerfile, "Dockerfile");
    assert_eq!(spec.build_args.get("TAG").map(String::as_str), Some("v1"));
    assert_eq!(spec.cache_from, [format!("{REGISTRY}/ns/app:previous")]);
    assert_eq!(
        std::fs::read_to_string(spec.context_dir.join("Dockerfile")).unwrap_or_default(),
        "",
        "the source is removed after the build"
    );

    // DetermineCachedTag got the base image.
    let cached = calls_of(&s.mock, |c| match c {
        Call::CachedTag(r) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(
        (
            cached[0].base_image_name.as_str(),
            cached[0].base_image_tag.as_str()
        ),
        (BASE, "v1")
    );

    // Logs: our lines and the engine's, in order, each numbered above the last, with the job token.
    let logs = s.mock.logs();
    sequence_numbers_increase(
        &logs
            .iter()
            .map(|(_, r)| r.sequence_number)
            .collect::<Vec<_>>(),
    );
    assert!(logs.iter().all(|(_, r)| r.job_jwt == agent_mock::JOB_JWT));
    let texts = s.mock.log_texts();
    let position = |needle: &str| {
        texts
            .iter()
            .position(|t| t.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not in the log: {texts:#?}"))
    };
    let order = [
        position("fetching the build source"),
        position("pulled 127.0.0.1:5000/ns/base:v1"),
        position("STEP 1/2"),
        position("STEP 2/2"),
        texts
            .iter()
            .position(|t| t == LogLine::stream("hello\n").as_str())
            .expect("the build's own output line"),
        position("pushed latest"),
        position("pushed v1"),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "log order {order:?}: {texts:#?}"
    );
    assert!(
        texts
            .iter()
            .all(|t| serde_json::from_str::<serde_json::Value>(t).is_ok()),
        "every line is JSON"
    );

    // Heartbeats with the job token, every ~2 s during the build.
    let beats = s.mock.heartbeat_times();
    assert!(beats.len() >= 3, "{} heartbeats", beats.len());
    for gap in beats.windows(2).map(|w| w[1] - w[0]) {
        assert!(
            gap >= Duration::from_millis(1500) && gap <= Duration::from_millis(3500),
            "heartbeat gap {gap:?}"
        );
    }
}

fn calls_of<T>(mock: &MockServer, f: impl Fn(&Call) -> Option<T>) -> Vec<T> {
    mock.calls().iter().filter_map(|(_, c)| f(c)).collect()
}

#[tokio::test]
async fn failing_run_reports_the_engine_text_without_retry() {
    let s = setup(DOCKERFILE, MockConfig::default()).await;
    let text = "building at STEP \"RUN false\": while running runtime: exit status 1";
    let engine = FakeEngine(Arc::new(Fake {
        build_error: Some(format!("{text}\n")),
        ..Fake::default()
    }));
    let outcome = run(&s, &engine).await;
    assert_eq!(
        outcome,
        Outcome::UserError {
            message: text.into()
        }
    );
    assert_eq!(outcome.exit_code(), 0);
    assert_eq!(
        s.mock.phase_list(),
        [
            Phase::Unpacking,
            Phase::Pulling,
            Phase::Building,
            Phase::Error
        ]
    );
    let error = s.mock.phases().pop().unwrap();
    assert_eq!(error.error_message, text);
    assert!(!error.retryable);
    assert_eq!(error.sequence_number, 4);
    // The error reaches the user's log too (Quay's agent kept it back).
    let texts = s.mock.log_texts();
    assert!(
        texts.iter().any(|t| t == LogLine::error(text).as_str()),
        "{texts:#?}"
    );
    assert!(!engine.calls().iter().any(|c| c.starts_with("push")));
}

#[tokio::test]
async fn dockerfile_errors_end_before_pulling() {
    let s = setup("RUN echo no base\n", MockConfig::default()).await;
    let engine = FakeEngine::default();
    let outcome = run(&s, &engine).await;
    let Outcome::UserError { message } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(message.contains("RUN before the first FROM"), "{message}");
    assert_eq!(s.mock.phase_list(), [Phase::Unpacking, Phase::Error]);
    assert!(!s.mock.phases()[1].retryable);
    assert!(engine.calls().iter().all(|c| !c.starts_with("build")));
}

#[tokio::test]
async fn missing_base_image_is_the_users_error_and_not_retried() {
    let s = setup(DOCKERFILE, MockConfig::default()).await;
    let engine = FakeEngine(Arc::new(Fake {
        pull_error: Some((404, "manifest unknown: manifest unknown".into())),
        ..Fake::default()
    }));
    let outcome = run(&s, &engine).await;
    assert!(
        matches!(&outcome, Outcome::UserError { message } if message.contains("manifest unknown")),
        "{outcome:?}"
    );
    let pulls = engine
        .calls()
        .iter()
        .filter(|c| c.starts_with("pull"))
        .count();
    assert_eq!(pulls, 1, "a missing image is not pulled again");
}

#[tokio::test]
async fn registry_outage_is_retried_then_reported_retryable() {
    let s = setup(DOCKERFILE, MockConfig::default()).await;
    let engine = FakeEngine(Arc::new(Fake {
        pull_error: Some((
            500,
            "received unexpected HTTP status: 502 Bad Gateway".into(),
        )),
        ..Fake::default()
    }));
    let outcome = run(&s, &engine).await;
    assert!(matches!(outcome, Outcome::InfraError { .. }), "{outcome:?}");
    assert_eq!(outcome.exit_code(), 1);
    assert_eq!(
        engine
            .calls()
            .iter()
            .filter(|c| c.starts_with("pull"))
            .count(),
        3
    );
    let error = s.mock.phases().pop().unwrap();
    assert_eq!(error.phase(), Phase::Error);
    assert!(error.retryable);
    let texts = s.mock.log_texts();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("attempt 1 of 3") && t.contains("502")),
        "{texts:#?}"
    );
}

#[tokio::test]
async fn unreachable_engine_is_reported_as_retryable() {
    let s = setup(DOCKERFILE, MockConfig::default()).await;
    let engine = async {
        Err::<FakeEngine, _>(EngineError::Connect {
            endpoint: "unix:///nowhere.sock".into(),
            source: Box::new(std::io::Error::from(std::io::ErrorKind::NotFound)),
        })
    };
    let outcome = agent::run(&s.config, engine, std::future::pending())
        .await
        .unwrap();
    let Outcome::InfraError { message } = &outcome else {
        panic!("{outcome:?}")
    };
    assert!(message.contains("unix:///nowhere.sock"), "{message}");
    assert_eq!(s.mock.phase_list(), [Phase::Unpacking, Phase::Error]);
    assert!(s.mock.phases()[1].retryable);
}

#[tokio::test]
async fn a_refused_phase_stops_the_build_at_once() {
    let s = setup(
        DOCKERFILE,
        MockConfig {
            reject_phase: Some(Phase::Building),
            ..MockConfig::default()
        },
    )
    .await;
    let engine = FakeEngine::default();
    let outcome = run(&s, &engine).await;
    assert_eq!(
        outcome,
        Outcome::Rejected {
            phase: Phase::Building
        }
    );
    assert_eq!(outcome.exit_code(), 3);
    assert_eq!(
        s.mock.phase_list(),
        [Phase::Unpacking, Phase::Pulling, Phase::Building],
        "nothing after the refusal, not even ERROR"
    );
    assert!(engine.calls().iter().all(|c| !c.starts_with("build")));
}

#[tokio::test]
async fn refused_heartbeats_stop_a_running_build() {
    let s = setup(
        DOCKERFILE,
        MockConfig {
            refuse_heartbeats: true,
            ..MockConfig::default()
        },
    )
    .await;
    let engine = FakeEngine(Arc::new(Fake {
        build_delay: Duration::from_secs(120),
        ..Fake::default()
    }));
    let started = Instant::now();
    let outcome = run(&s, &engine).await;
    assert_eq!(outcome, Outcome::JobGone);
    assert_eq!(outcome.exit_code(), 3);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let phases = s.mock.phase_list();
    assert!(
        !phases.contains(&Phase::Complete) && !phases.contains(&Phase::Error),
        "{phases:?}"
    );
    assert_eq!(
        s.mock.heartbeat_times().len(),
        3,
        "three refusals, then stop"
    );
}

#[tokio::test]
async fn shutdown_signal_stops_the_build() {
    let s = setup(DOCKERFILE, MockConfig::default()).await;
    let engine = FakeEngine(Arc::new(Fake {
        build_delay: Duration::from_secs(120),
        ..Fake::default()
    }));
    let mock = &s.mock;
    let shutdown = async {
        wait_until(Duration::from_secs(20), "the BUILDING phase", || {
            mock.phase_list().contains(&Phase::Building)
        })
        .await;
    };
    let e = engine.clone();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        agent::run(&s.config, async { Ok(e) }, shutdown),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(outcome, Outcome::Terminated);
    assert_eq!(outcome.exit_code(), 143);
    assert_eq!(
        engine.calls().last().unwrap(),
        "shutdown",
        "the engine was released"
    );
    assert_eq!(
        s.mock.phase_list(),
        [Phase::Unpacking, Phase::Pulling, Phase::Building]
    );
}

#[tokio::test]
async fn a_broken_log_stream_is_reopened_and_no_line_is_lost() {
    let s = setup(
        DOCKERFILE,
        MockConfig {
            close_first_log_stream_after: Some(2),
            ..MockConfig::default()
        },
    )
    .await;
    let engine = FakeEngine::default();
    let outcome = run(&s, &engine).await;
    assert!(matches!(outcome, Outcome::Complete { .. }), "{outcome:?}");
    assert!(s.mock.log_streams_opened() >= 2);
    let logs = s.mock.logs();
    assert!(
        logs.iter().any(|(stream, _)| *stream >= 2),
        "lines went to a new stream"
    );
    // Every number from 1 to the last arrived (the unanswered one was resent).
    let mut numbers: Vec<i32> = logs.iter().map(|(_, r)| r.sequence_number).collect();
    numbers.dedup();
    let last = *numbers.last().unwrap();
    assert_eq!(numbers, (1..=last).collect::<Vec<_>>());
    let texts = s.mock.log_texts();
    assert!(texts.iter().any(|t| t.contains("hello")), "{texts:#?}");
}

#[test]
fn the_binary_exits_2_naming_a_missing_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_builder-agent"))
        .env_clear()
        .env("CONTAINER_RUNTIME", "podman")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SERVER"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_builder-agent"))
        .env_clear()
        .env("SERVER", "127.0.0.1:1")
        .env("CONTAINER_RUNTIME", "lxc")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CONTAINER_RUNTIME"));
}

#[test]
fn the_binary_exits_1_when_buildman_is_unreachable() {
    // A port nothing listens on: bind, read it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_builder-agent"))
        .env_clear()
        .env("SERVER", format!("127.0.0.1:{port}"))
        .env("INSECURE", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed to dial grpc server"), "{stderr}");
}
