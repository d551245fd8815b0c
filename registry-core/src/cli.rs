//! Command line of the `registry-core` binary: clap structs only, no logic (the binary and
//! [`crate::admin`] act on them).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Quarry's OCI registry.
#[derive(Debug, Parser)]
#[command(name = "registry-core", version)]
pub struct Cli {
    /// Quay-style YAML configuration file (defaults apply to every missing key).
    #[arg(long, global = true, env = "REGISTRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override DATA_DIR: the directory holding the database, blobs and signing key.
    #[arg(long, global = true, env = "REGISTRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the registry.
    Serve {
        /// Override LISTEN_ADDR (port 0 picks a free port; the bound address is printed).
        #[arg(long, env = "REGISTRY_LISTEN")]
        listen: Option<String>,
        /// Override SERVER_HOSTNAME.
        #[arg(long, env = "REGISTRY_SERVER_HOSTNAME")]
        server_hostname: Option<String>,
    },
    /// Validate the configuration and exit.
    CheckConfig,
    /// Administer accounts, repositories and permissions directly in the database (works while
    /// the server runs).
    Admin {
        /// The administration command.
        #[command(subcommand)]
        command: AdminCommand,
    },
}

/// `registry-core admin ...`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// User accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Organisations.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Teams of an organisation.
    #[command(subcommand)]
    Team(TeamCommand),
    /// Robot accounts.
    #[command(subcommand)]
    Robot(RobotCommand),
    /// Repositories.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Repository permissions.
    #[command(subcommand)]
    Permission(PermissionCommand),
    /// Access tokens (`$token` login, REST API bearer).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `admin user ...`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; the password comes from REGISTRY_ADMIN_PASSWORD, else one line on stdin.
    Create {
        /// User name.
        name: String,
        /// Email address.
        #[arg(long)]
        email: Option<String>,
    },
}

/// `admin org ...`.
#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organisation; the owner joins its `owners` (admin) team.
    Create {
        /// Organisation name.
        name: String,
        /// The user who owns it.
        #[arg(long)]
        owner: String,
        /// Email address.
        #[arg(long)]
        email: Option<String>,
    },
}

/// `admin team ...`.
#[derive(Debug, Subcommand)]
pub enum TeamCommand {
    /// Create a team.
    Create {
        /// Organisation.
        org: String,
        /// Team name.
        team: String,
        /// Role in the organisation: member, creator or admin.
        #[arg(long, default_value = "member")]
        role: String,
    },
    /// Add a user or a robot of the organisation (`org+short`) to a team.
    AddMember {
        /// Organisation.
        org: String,
        /// Team name.
        team: String,
        /// User or robot name.
        account: String,
    },
}

/// `admin robot ...`.
#[derive(Debug, Subcommand)]
pub enum RobotCommand {
    /// Create a robot; prints `<namespace>+<short> <token>`.
    Create {
        /// The owning user or organisation.
        namespace: String,
        /// Short name.
        short: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Replace a robot's token (the old one stops working); prints the new token.
    Regenerate {
        /// Full robot name, `<namespace>+<short>`.
        name: String,
    },
}

/// `admin repo ...`.
#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Create a repository (private unless --public).
    Create {
        /// `<namespace>/<repository>`.
        name: String,
        /// Make it public.
        #[arg(long)]
        public: bool,
    },
    /// Make a repository public or private.
    SetVisibility {
        /// `<namespace>/<repository>`.
        name: String,
        /// public or private.
        visibility: String,
    },
}

/// `admin permission ...`.
#[derive(Debug, Subcommand)]
pub enum PermissionCommand {
    /// Give a user, robot or team a role on a repository (replacing any previous one).
    Set {
        /// `<namespace>/<repository>`.
        repo: String,
        /// Who gets the role.
        #[command(flatten)]
        target: PermissionTarget,
        /// read, write or admin.
        #[arg(long)]
        role: String,
    },
}

/// Exactly one of `--user`, `--robot`, `--team`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct PermissionTarget {
    /// A user.
    #[arg(long)]
    pub user: Option<String>,
    /// A robot, `<namespace>+<short>`.
    #[arg(long)]
    pub robot: Option<String>,
    /// A team, `<organisation>/<team>`.
    #[arg(long)]
    pub team: Option<String>,
}

/// `admin token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an access token for a user; prints the token. With any of `--repo`, `--role`,
    /// `--expires-in` it is a scoped token (owner may then also be a robot): it reaches only
    /// repositories, never namespace administration.
    Create {
        /// The user (or, for a scoped token, the robot `<namespace>+<short>`).
        user: String,
        /// What the token is for.
        title: String,
        /// Scoped: the only repository the token reaches (default: all of the owner's).
        #[arg(long)]
        repo: Option<String>,
        /// Scoped: the role ceiling, read (pull), write (pull, push) or admin (default).
        #[arg(long)]
        role: Option<String>,
        /// Scoped: seconds until the token stops working (default: never).
        #[arg(long, value_name = "SECONDS")]
        expires_in: Option<u64>,
    },
}

/// Log to stderr as `text` or `json`, filtered by `RUST_LOG`, else by `default_filter`. Shared by
/// the `registry-core` and `buildman` binaries.
pub fn init_tracing(format: &str, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGINT or SIGTERM (never, if the handler cannot be installed).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received: stopping and draining connections");
}

/// Print `e` and its causes on stderr, one per line (`error:` then `caused by:`).
pub fn print_chain(e: &(dyn std::error::Error + 'static)) {
    eprintln!("error: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        eprintln!("  caused by: {c}");
        cause = c.source();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interface_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn permission_needs_exactly_one_target() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(
                ["registry-core", "admin", "permission", "set", "a/b"]
                    .iter()
                    .chain(args),
            )
        };
        assert!(parse(&["--user", "u", "--role", "read"]).is_ok());
        assert!(parse(&["--role", "read"]).is_err());
        assert!(parse(&["--user", "u", "--team", "o/t", "--role", "read"]).is_err());
    }
}
