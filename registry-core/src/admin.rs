//! `registry-core admin ...`: account and permission administration straight on the database.
//!
//! Every command is one IMMEDIATE transaction through `Db::write_blocking`; SQLite's WAL lets it
//! run while the server is up. Secrets never come from argv: a new user's password is read from
//! `REGISTRY_ADMIN_PASSWORD`, else as one line on stdin. Commands that create a secret print it on
//! stdout, alone (`robot create` prints `<name> <token>`), so scripts can capture it.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use crate::accounts::orgs::{self, TeamRole};
use crate::accounts::permissions::{self, Role};
use crate::accounts::{
    self, AccountError, AccountKind, repositories, robots, secrets, tokens, users,
};
use crate::cli::{
    AdminCommand, OrgCommand, PermissionCommand, RepoCommand, RobotCommand, TeamCommand,
    TokenCommand, UserCommand,
};
use crate::config::Config;
use crate::db::{Db, DbError};
use crate::names::{NameError, RepoName};
use crate::repos::Visibility;

/// The environment variable holding a new user's password.
pub const PASSWORD_ENV: &str = "REGISTRY_ADMIN_PASSWORD";

/// Why an admin command failed; the message names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The data directory could not be created.
    #[error("failed to create data directory {path:?}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error("failed to open the database in {path:?}")]
    Open {
        /// The data directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: DbError,
    },
    /// No password in the environment and none on stdin.
    #[error("no password given: set {PASSWORD_ENV} or write it as one line on stdin")]
    NoPassword,
    /// Reading stdin failed.
    #[error("failed to read the password from stdin")]
    ReadPassword(#[source] std::io::Error),
    /// Writing stdout failed.
    #[error("failed to write the result")]
    Output(#[source] std::io::Error),
    /// A repository name argument is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// `--team` is not `<organisation>/<team>`.
    #[error("--team must be <organisation>/<team>, got {value:?}")]
    TeamSpec {
        /// The argument.
        value: String,
    },
    /// The account operation was refused or failed.
    #[error(transparent)]
    Account(#[from] AccountError),
}

impl From<DbError> for AdminError {
    fn from(e: DbError) -> Self {
        AdminError::Account(AccountError::Db(e))
    }
}

/// Where an admin command reads a password from and writes its result to.
pub struct AdminIo<'a> {
    /// The value of [`PASSWORD_ENV`], if set.
    pub password_env: Option<String>,
    /// Standard input.
    pub stdin: &'a mut dyn BufRead,
    /// Standard output.
    pub stdout: &'a mut dyn Write,
}

impl std::fmt::Debug for AdminIo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("AdminIo")
            .field(
                "password_env",
                &self.password_env.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// Open the database `AppState::open` would use (`<DATA_DIR>/meta.db`), without the signing key
/// and blob store the admin commands do not need.
fn open_db(config: &Config) -> Result<Db, AdminError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| AdminError::DataDir {
        path: dir.clone(),
        source,
    })?;
    Db::open(&dir.join("meta.db")).map_err(|source| AdminError::Open {
        path: dir.clone(),
        source,
    })
}

fn read_password(io: &mut AdminIo<'_>) -> Result<String, AdminError> {
    if let Some(p) = io.password_env.take().filter(|p| !p.is_empty()) {
        return Ok(p);
    }
    let mut line = String::new();
    io.stdin
        .read_line(&mut line)
        .map_err(AdminError::ReadPassword)?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(AdminError::NoPassword);
    }
    Ok(password.to_owned())
}

fn say(io: &mut AdminIo<'_>, line: &str) -> Result<(), AdminError> {
    writeln!(io.stdout, "{line}").map_err(AdminError::Output)
}

/// Run one admin command against `config.data_dir`.
pub fn run(config: &Config, command: &AdminCommand, mut io: AdminIo<'_>) -> Result<(), AdminError> {
    let db = open_db(config)?;
    match command {
        AdminCommand::User(UserCommand::Create { name, email }) => {
            accounts::validate_name("user name", name)?;
            let hash = secrets::hash_password(&read_password(&mut io)?)?;
            db.write_blocking(|tx| users::create(tx, name, email.as_deref(), Some(&hash)))?;
            say(&mut io, &format!("created user {name:?}"))
        }
        AdminCommand::Org(OrgCommand::Create { name, owner, email }) => {
            db.write_blocking(|tx| {
                let owner = accounts::get_kind(tx, owner, AccountKind::User)?;
                orgs::create(tx, name, email.as_deref(), &owner)
            })?;
            say(
                &mut io,
                &format!("created organisation {name:?} owned by {owner:?}"),
            )
        }
        AdminCommand::Team(TeamCommand::Create { org, team, role }) => {
            let role: TeamRole = role.parse()?;
            db.write_blocking(|tx| {
                let org = accounts::get_kind(tx, org, AccountKind::Org)?;
                orgs::create_team(tx, &org, team, role, "")
            })?;
            say(
                &mut io,
                &format!("created team \"{org}/{team}\" with role {}", role.as_str()),
            )
        }
        AdminCommand::Team(TeamCommand::AddMember { org, team, account }) => {
            db.write_blocking(|tx| {
                let (org, team) = orgs::get_team(tx, org, team)?;
                let member =
                    accounts::find(tx, account)?.ok_or_else(|| AccountError::NotFound {
                        kind: "account",
                        name: account.clone(),
                    })?;
                orgs::add_member(tx, &org, &team, &member)
            })?;
            say(
                &mut io,
                &format!("added {account:?} to team \"{org}/{team}\""),
            )
        }
        AdminCommand::Robot(RobotCommand::Create {
            namespace,
            short,
            description,
        }) => {
            let (robot, token) = db.write_blocking(|tx| {
                let ns = accounts::get_namespace(tx, namespace)?;
                robots::create(tx, &ns, short, description)
            })?;
            say(&mut io, &format!("{} {token}", robot.name))
        }
        AdminCommand::Robot(RobotCommand::Regenerate { name }) => {
            let (_, token) = db.write_blocking(|tx| robots::regenerate(tx, name))?;
            say(&mut io, &token)
        }
        AdminCommand::Repo(RepoCommand::Create { name, public }) => {
            let repo: RepoName = name.parse()?;
            let vis = if *public {
                Visibility::Public
            } else {
                Visibility::Private
            };
            db.write_blocking(|tx| repositories::create(tx, &repo, vis, ""))?;
            say(
                &mut io,
                &format!("created repository {name:?} ({})", vis.as_str()),
            )
        }
        AdminCommand::Repo(RepoCommand::SetVisibility { name, visibility }) => {
            let repo: RepoName = name.parse()?;
            let vis = repositories::parse_visibility(visibility)?;
            db.write_blocking(|tx| repositories::set_visibility(tx, &repo, vis))?;
            say(
                &mut io,
                &format!("repository {name:?} is now {}", vis.as_str()),
            )
        }
        AdminCommand::Permission(PermissionCommand::Set { repo, target, role }) => {
            let name: RepoName = repo.parse()?;
            let role: Role = role.parse()?;
            let team = match &target.team {
                Some(spec) => Some(spec.split_once('/').ok_or_else(|| AdminError::TeamSpec {
                    value: spec.clone(),
                })?),
                None => None,
            };
            db.write_blocking(|tx| {
                if let Some((org, team)) = team {
                    let (_, team) = orgs::get_team(tx, org, team)?;
                    return permissions::set_for_team(tx, &name, &team, role);
                }
                let account = match (&target.user, &target.robot) {
                    (Some(u), _) => accounts::get_kind(tx, u, AccountKind::User)?,
                    (None, Some(r)) => robots::get(tx, r)?,
                    // clap's group makes one of the three required.
                    (None, None) => return Ok(()),
                };
                permissions::set_for_account(tx, &name, &account, role)
            })?;
            let who = [&target.user, &target.robot, &target.team]
                .into_iter()
                .flatten()
                .next()
                .map_or("", String::as_str);
            say(
                &mut io,
                &format!("{who:?} has role {} on {repo:?}", role.as_str()),
            )
        }
        AdminCommand::Token(TokenCommand::Create {
            user,
            title,
            repo,
            role,
            expires_in,
        }) => {
            let scope = match (repo, role, expires_in) {
                (None, None, None) => None,
                _ => Some(tokens::TokenScope {
                    repository: repo.as_deref().map(str::parse).transpose()?,
                    max_role: role.as_deref().map_or(Ok(Role::Admin), str::parse)?,
                    expires_at_ms: expires_in.map(|s| {
                        let ms = i64::try_from(s.saturating_mul(1_000)).unwrap_or(i64::MAX);
                        crate::db::now_ms().saturating_add(ms)
                    }),
                }),
            };
            let token = db.write_blocking(|tx| match &scope {
                None => {
                    tokens::create(tx, &accounts::get_kind(tx, user, AccountKind::User)?, title)
                }
                Some(scope) => {
                    let kind = match robots::split_name(user) {
                        Some(_) => AccountKind::Robot,
                        None => AccountKind::User,
                    };
                    let owner = accounts::get_kind(tx, user, kind)?;
                    tokens::create_scoped(tx, &owner, title, scope)
                }
            })?;
            say(&mut io, &token)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    struct Admin {
        _dir: tempfile::TempDir,
        config: Config,
    }

    impl Admin {
        fn new() -> Admin {
            let dir = tempfile::tempdir().unwrap();
            let config = Config {
                data_dir: dir.path().join("data"),
                ..Config::default()
            };
            Admin { _dir: dir, config }
        }

        /// Run `admin <args>` with `stdin`; returns stdout.
        fn run(&self, args: &str, stdin: &str) -> Result<String, AdminError> {
            let argv = ["registry-core", "admin"]
                .into_iter()
                .chain(args.split(' '));
            let Command::Admin { command } = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not an admin command");
            };
            let mut input = stdin.as_bytes();
            let mut out = Vec::new();
            run(
                &self.config,
                &command,
                AdminIo {
                    password_env: None,
                    stdin: &mut input,
                    stdout: &mut out,
                },
            )?;
            Ok(String::from_utf8(out).unwrap())
        }

        fn db(&self) -> Db {
            open_db(&self.config).unwrap()
        }
    }

    #[test]
    fn a_whole_setup_works_and_secrets_are_printed_alone() {
        let a = Admin::new();
        a.run("user create alice --email a@x.test", "pw-alice\n")
            .unwrap();
        a.run("org create acme --owner alice", "").unwrap();
        a.run("team create acme builders --role creator", "")
            .unwrap();
        let out = a.run("robot create acme ci", "").unwrap();
        let (name, token) = out.trim().split_once(' ').unwrap();
        assert_eq!(name, "acme+ci");
        assert_eq!(token.len(), 64);
        a.run("team add-member acme builders acme+ci", "").unwrap();
        a.run("repo create acme/app", "").unwrap();
        a.run("permission set acme/app --robot acme+ci --role write", "")
            .unwrap();
        a.run(
            "permission set acme/app --team acme/builders --role read",
            "",
        )
        .unwrap();
        a.run("repo set-visibility acme/app public", "").unwrap();
        let new_token = a.run("robot regenerate acme+ci", "").unwrap();
        assert_eq!(new_token.trim().len(), 64);
        let access = a.run("token create alice laptop", "").unwrap();
        assert_eq!(access.trim().len(), 40);

        let (role, ok, hash) = a
            .db()
            .write_blocking(|tx| {
                let ci = robots::get(tx, "acme+ci")?;
                let role =
                    permissions::repo_role(tx, Some(&ci), &[], &"acme/app".parse().unwrap())?;
                let ok = robots::check_token(tx, "acme+ci", new_token.trim())?.is_some();
                let (_, hash) = users::login_record(tx, "alice")?.unwrap();
                Ok::<_, AccountError>((role, ok, hash))
            })
            .unwrap();
        assert_eq!(role, Role::Write);
        assert!(ok);
        assert!(secrets::verify_password("pw-alice", &hash));
    }

    #[test]
    fn errors_name_what_was_wrong() {
        let a = Admin::new();
        let err = a.run("repo create nobody/app", "").unwrap_err();
        assert_eq!(err.to_string(), "namespace \"nobody\" does not exist");
        let err = a.run("user create alice", "").unwrap_err();
        assert!(matches!(err, AdminError::NoPassword), "{err}");
        a.run("user create alice", "pw\r\n").unwrap();
        let err = a.run("org create acme --owner bob", "").unwrap_err();
        assert_eq!(err.to_string(), "user \"bob\" does not exist");
        a.run("org create acme --owner alice", "").unwrap();
        let err = a.run("team create acme devs --role boss", "").unwrap_err();
        assert!(
            err.to_string().starts_with("team role \"boss\" is invalid"),
            "{err}"
        );
        a.run("repo create acme/app", "").unwrap();
        let err = a
            .run("permission set acme/app --team devs --role read", "")
            .unwrap_err();
        assert!(matches!(err, AdminError::TeamSpec { .. }), "{err}");
        let err = a
            .run("permission set acme/app --user alice --role owner", "")
            .unwrap_err();
        assert!(
            err.to_string().starts_with("role \"owner\" is invalid"),
            "{err}"
        );
        let err = a
            .run("repo set-visibility acme/app hidden", "")
            .unwrap_err();
        assert!(
            err.to_string().starts_with("visibility \"hidden\""),
            "{err}"
        );
        let err = a.run("robot regenerate acme+nope", "").unwrap_err();
        assert_eq!(err.to_string(), "robot \"acme+nope\" does not exist");
        let err = a.run("token create acme title", "").unwrap_err();
        assert!(
            matches!(err, AdminError::Account(AccountError::WrongKind { .. })),
            "{err}"
        );
    }

    #[test]
    fn scoped_tokens_from_the_cli() {
        let a = Admin::new();
        a.run("user create alice", "pw").unwrap();
        a.run("org create acme --owner alice", "").unwrap();
        a.run("robot create acme ci", "").unwrap();
        let scoped = a
            .run(
                "token create acme+ci b --repo acme/app --role read --expires-in 60",
                "",
            )
            .unwrap();
        let db = open_db(&a.config).unwrap();
        let got = db
            .write_blocking(|tx| tokens::check(tx, scoped.trim()))
            .unwrap()
            .unwrap();
        let scope = got.scope.unwrap();
        assert_eq!(got.account.name, "acme+ci");
        assert_eq!(scope.repository.unwrap().as_str(), "acme/app");
        assert_eq!(scope.max_role, Role::Read);
        assert!(scope.expires_at_ms.unwrap() > crate::db::now_ms());
        let err = a.run("token create alice b --role none", "").unwrap_err();
        assert!(err.to_string().starts_with("role \"none\""), "{err}");
    }
}
