//! `builder-agent`: runs one build for buildman. Configured by environment variables only (Quay's
//! names), as executors start it; `--help` lists them.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use builder_agent::docker::DockerEngine;
use builder_agent::env::{AgentConfig, DEFAULT_DOCKER_HOST};
use builder_agent::podman::PodmanService;
use builder_agent::{agent, engine::EngineError};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// Exit code for a missing or invalid environment variable.
const EXIT_CONFIG: u8 = 2;
/// Exit code when the build could not start (buildman unreachable, registration refused).
const EXIT_INFRA: u8 = 1;

/// Runs one container build for Quarry's build manager and reports the outcome.
///
/// Environment: SERVER (host:port of buildman's gRPC service, required), TOKEN (registration
/// JWT), CONTAINER_RUNTIME (docker|podman, default docker), DOCKER_HOST (default
/// unix:///var/run/docker.sock), TLS_CERT_PATH (CA file for gRPC TLS), INSECURE=true (plaintext
/// gRPC), QUARRY_WORK_DIR (sources; with podman and no DOCKER_HOST, a private podman service
/// too), REGISTRY_HOSTNAME, QUARRY_MAX_CONTEXT_BYTES, DEBUG=true.
///
/// Exit codes: 0 build delivered (COMPLETE, or ERROR caused by the build's input), 1
/// infrastructure failure, 2 bad environment, 3 buildman refused or lost the job, 143 SIGTERM.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {}

fn main() -> ExitCode {
    Cli::parse();
    let config = match AgentConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("builder-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(config.debug);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("builder-agent: failed to start the async runtime: {e}");
            return ExitCode::from(EXIT_INFRA);
        }
    };
    match runtime.block_on(try_main(&config)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::error!("{}", chain(&e));
            eprintln!("builder-agent: {}", chain(&e));
            ExitCode::from(EXIT_INFRA)
        }
    }
}

async fn try_main(config: &AgentConfig) -> anyhow::Result<u8> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::warn!("SIGTERM: stopping the build"),
            _ = sigint.recv() => tracing::warn!("SIGINT: stopping the build"),
        }
    };
    let engine = connect_engine(config);
    let outcome = agent::run(config, engine, shutdown).await?;
    tracing::info!(?outcome, "build finished");
    Ok(outcome.exit_code())
}

/// The engine: a private podman service under QUARRY_WORK_DIR when asked for one, else
/// DOCKER_HOST (or dockerd's default socket).
async fn connect_engine(config: &AgentConfig) -> Result<DockerEngine, EngineError> {
    if config.wants_private_podman()
        && let Some(work) = &config.work_dir
    {
        let service =
            PodmanService::start(work, config.registry_hostname.as_deref(), config.insecure)
                .await?;
        let host = service.docker_host();
        return DockerEngine::connect(&host, Some(service)).await;
    }
    let host = config.docker_host.as_deref().unwrap_or(DEFAULT_DOCKER_HOST);
    DockerEngine::connect(host, None).await
}

fn chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

fn init_tracing(debug: bool) {
    let default = if debug {
        "builder_agent=debug,info"
    } else {
        "builder_agent=info,warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // stderr: the executor captures it into the build's work-dir log, so colour only on a tty.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
