//! The `registry-core` binary: serve the registry, check a config, administer accounts.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use registry_core::cli::{Cli, Command};
use registry_core::config::Config;
use registry_core::state::AppState;

/// Exit codes: 1 = runtime failure, 2 = bad configuration (clap also uses 2 for bad arguments).
const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(d) = &cli.data_dir {
        config.data_dir = d.clone();
    }
    if let Command::Serve {
        listen,
        server_hostname,
    } = &cli.command
    {
        if let Some(l) = listen {
            config.listen_addr = l.clone();
        }
        if let Some(h) = server_hostname {
            config.server_hostname = h.clone();
        }
    }
    config.validate()?;
    Ok(config)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.listen_addr.clone();
    let state = AppState::open(config).context("opening the registry state")?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line (stdout) to learn the port when LISTEN_ADDR ends in :0.
    println!("registry-core listening on http://{addr}");
    tracing::info!(%addr, data_dir = ?state.config.data_dir, "registry-core started");
    registry_core::serve(state, listener, registry_core::cli::shutdown_signal()).await?;
    Ok(())
}

fn admin(config: &Config, command: &registry_core::cli::AdminCommand) -> anyhow::Result<()> {
    let io = registry_core::admin::AdminIo {
        password_env: std::env::var(registry_core::admin::PASSWORD_ENV).ok(),
        stdin: &mut std::io::stdin().lock(),
        stdout: &mut std::io::stdout().lock(),
    };
    Ok(registry_core::admin::run(config, command, io)?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    registry_core::cli::init_tracing(&cli.log_format, "registry_core=info,tower_http=warn");
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            registry_core::cli::print_chain(e.as_ref());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match cli.command {
        Command::CheckConfig => {
            println!("configuration is valid");
            Ok(())
        }
        Command::Serve { .. } => tokio::runtime::Runtime::new()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(serve(config))),
        Command::Admin { command } => admin(&config, &command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            registry_core::cli::print_chain(e.as_ref());
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
