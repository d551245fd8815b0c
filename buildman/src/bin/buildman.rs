//! The `buildman` binary: serve Quarry (registry, builds API, agent gRPC service, scheduler),
//! check a configuration, administer accounts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use buildman::config::Config;
use clap::{Parser, Subcommand};

/// Exit codes: 1 = runtime failure, 2 = bad configuration (clap also uses 2 for bad arguments).
const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

/// Quarry's build manager. With no --config it runs on embedded defaults: SQLite and blobs under
/// DATA_DIR, the in-process orchestrator, and the popen executor.
#[derive(Debug, Parser)]
#[command(name = "buildman", version)]
struct Cli {
    /// Quay-style config.yaml (registry and BUILD_MANAGER keys).
    #[arg(long, global = true, env = "QUARRY_CONFIG")]
    config: Option<PathBuf>,
    /// Override DATA_DIR.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Log format on stderr: text or json.
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the registry, the REST API and the agents' gRPC service, and schedule builds.
    Serve {
        /// Override LISTEN_ADDR (HTTP).
        #[arg(long)]
        listen: Option<String>,
        /// Override BUILD_MANAGER[1].GRPC_LISTEN_ADDR.
        #[arg(long)]
        grpc_listen: Option<std::net::SocketAddr>,
    },
    /// Validate the configuration without starting anything; print warnings for Quay keys that
    /// Quarry accepts but does not use.
    CheckConfig,
    /// Administer accounts, repositories and tokens (registry-core's admin commands).
    Admin {
        #[command(subcommand)]
        command: registry_core::cli::AdminCommand,
    },
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = match &cli.config {
        Some(p) => Config::load(p).with_context(|| format!("loading {}", p.display()))?,
        None => Config::default(),
    };
    if let Some(d) = &cli.data_dir {
        config.registry.data_dir = d.clone();
    }
    if let Command::Serve {
        listen,
        grpc_listen,
    } = &cli.command
    {
        if let Some(l) = listen {
            config.registry.listen_addr = l.clone();
        }
        if let Some(g) = grpc_listen {
            config.manager.grpc_listen_addr = *g;
        }
    }
    config.validate()?;
    Ok(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    registry_core::cli::init_tracing(
        &cli.log_format,
        "buildman=info,registry_core=info,tower_http=warn",
    );
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            registry_core::cli::print_chain(e.as_ref());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match cli.command {
        Command::CheckConfig => {
            for w in config.warnings() {
                println!("warning: {w}");
            }
            println!("configuration is valid");
            Ok(())
        }
        Command::Serve { .. } => tokio::runtime::Runtime::new()
            .context("starting the async runtime")
            .and_then(|rt| {
                rt.block_on(async {
                    buildman::server::serve(
                        config,
                        registry_core::cli::shutdown_signal(),
                        |bound| {
                            // Tests and scripts read these lines (stdout) to learn the ports.
                            println!("buildman listening on http://{}", bound.http);
                            match bound.grpc {
                                Some(grpc) => println!("buildman gRPC for agents on {grpc}"),
                                None => println!("buildman: builds are disabled, registry only"),
                            }
                        },
                    )
                    .await
                    .context("serving")
                })
            }),
        Command::Admin { command } => {
            let io = registry_core::admin::AdminIo {
                password_env: std::env::var(registry_core::admin::PASSWORD_ENV).ok(),
                stdin: &mut std::io::stdin().lock(),
                stdout: &mut std::io::stdout().lock(),
            };
            registry_core::admin::run(&config.registry, &command, io).map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            registry_core::cli::print_chain(e.as_ref());
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
