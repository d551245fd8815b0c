//! The builder agent: its environment, its process, and its log.
//!
//! The agent runs with a cleared environment (only [`agent_env`]), in its own process group,
//! with its work directory as cwd. Its stdout and stderr share one pipe; a thread copies each
//! line to [`super::AGENT_LOG_PATH`] (for SSH debugging) and to the console as `agent: <line>`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};

use super::exec::SYSTEM_PATH;
use super::{GuestConfig, ca};

/// The agent binary in the image.
pub const AGENT_BINARY: &str = "/usr/local/bin/builder-agent";
/// Prefix of the agent's lines on the console.
pub const CONSOLE_PREFIX: &str = "agent: ";

/// Starting the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A directory or the log file could not be created.
    #[error("cannot create {path:?} for the agent")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The output pipe could not be created.
    #[error("cannot create the agent's output pipe")]
    Pipe(#[source] std::io::Error),
    /// The process could not be spawned.
    #[error("cannot start the agent {binary:?}: check the VM image contains it")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Where the agent lives and logs (the guest constants; tests point them into a temp dir).
#[derive(Clone, Debug)]
pub struct AgentPaths {
    /// The executable.
    pub binary: PathBuf,
    /// Its work directory (`QUARRY_WORK_DIR`, `HOME`, cwd).
    pub work_dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
}

impl AgentPaths {
    /// The paths inside the guest.
    pub fn guest() -> AgentPaths {
        AgentPaths {
            binary: PathBuf::from(AGENT_BINARY),
            work_dir: PathBuf::from(super::AGENT_WORK_DIR),
            log: PathBuf::from(super::AGENT_LOG_PATH),
        }
    }
}

/// The agent's whole environment: the defaults, overridden by `config.agent_env`.
/// `TLS_CERT_PATH` defaults to [`ca::AGENT_CA_PATH`] only when the config carries a CA.
pub fn agent_env(config: &GuestConfig, work_dir: &Path) -> BTreeMap<String, String> {
    let work = work_dir.display().to_string();
    let mut env: BTreeMap<String, String> = [
        ("PATH", SYSTEM_PATH.to_owned()),
        ("HOME", work.clone()),
        ("QUARRY_WORK_DIR", work),
        ("CONTAINER_RUNTIME", "podman".to_owned()),
        ("BUILD_UUID", config.build_uuid.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if config.ca_cert.is_some() {
        env.insert("TLS_CERT_PATH".to_owned(), ca::AGENT_CA_PATH.to_owned());
    }
    env.extend(config.agent_env.clone());
    env
}

/// Start the agent. Returns the child (reap it with waitpid; do not call `wait` when a reaper
/// loop runs) and a receiver that gets `()` once its output pipe is drained.
pub fn spawn(
    paths: &AgentPaths,
    env: &BTreeMap<String, String>,
    console: fn(&str),
) -> Result<(Child, Receiver<()>), AgentError> {
    let prepare = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AgentError::Prepare { path, source }
    };
    std::fs::create_dir_all(&paths.work_dir).map_err(prepare(&paths.work_dir))?;
    if let Some(dir) = paths.log.parent() {
        std::fs::create_dir_all(dir).map_err(prepare(dir))?;
    }
    let log = std::fs::File::create(&paths.log).map_err(prepare(&paths.log))?;
    let (reader, writer) = std::io::pipe().map_err(AgentError::Pipe)?;
    let writer2 = writer.try_clone().map_err(AgentError::Pipe)?;
    let mut cmd = Command::new(&paths.binary);
    cmd.env_clear()
        .envs(env)
        .current_dir(&paths.work_dir)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        // Its own group: a stray signal to ours does not reach it, and it can be killed whole.
        .process_group(0);
    let child = cmd.spawn().map_err(|source| AgentError::Spawn {
        binary: paths.binary.clone(),
        source,
    })?;
    // `cmd` still holds the write ends; drop it so the reader sees end of file when the agent
    // (and whatever inherited its output) exits.
    drop(cmd);
    let (done_tx, done_rx) = mpsc::channel();
    let copier = std::thread::Builder::new()
        .name("agent log".to_owned())
        .spawn(move || {
            copy_lines(reader, log, console);
            let _ = done_tx.send(());
        });
    if let Err(e) = copier {
        console(&format!(
            "quarry-init: error: cannot start the agent log thread: {e}"
        ));
    }
    Ok((child, done_rx))
}

/// Copy `input` line by line into `log` (as is) and to `console` (prefixed).
fn copy_lines(input: impl std::io::Read, mut log: std::fs::File, console: fn(&str)) {
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                // Flushed per line (File is unbuffered): `cat` over SSH sees it live.
                let _ = log.write_all(&line);
                let text = String::from_utf8_lossy(&line);
                console(&format!(
                    "{CONSOLE_PREFIX}{}",
                    text.trim_end_matches(['\n', '\r'])
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                console(&format!(
                    "quarry-init: error: reading the agent's output: {e}"
                ));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::guest::GuestNetwork;

    fn config(env: &[(&str, &str)], ca: bool) -> GuestConfig {
        GuestConfig {
            build_uuid: "b-1".into(),
            agent_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ca_cert: ca.then(|| "pem".to_owned()),
            ssh_authorized_keys: vec![],
            network: GuestNetwork {
                address: "10.0.2.15/24".into(),
                gateway: None,
                nameservers: vec![],
                hosts: vec![],
            },
            forwards: vec![],
            debug: false,
            max_lifetime_s: 60,
        }
    }

    #[test]
    fn defaults_fill_in_and_config_overrides() {
        let work = Path::new("/scratch/work");
        let env = agent_env(
            &config(&[("SERVER", "h:1"), ("CONTAINER_RUNTIME", "docker")], false),
            work,
        );
        assert_eq!(env["SERVER"], "h:1");
        assert_eq!(env["CONTAINER_RUNTIME"], "docker");
        assert_eq!(env["HOME"], "/scratch/work");
        assert_eq!(env["QUARRY_WORK_DIR"], "/scratch/work");
        assert_eq!(env["PATH"], SYSTEM_PATH);
        assert_eq!(env["BUILD_UUID"], "b-1");
        assert!(!env.contains_key("TLS_CERT_PATH"));
        assert_eq!(env.len(), 6);
    }

    #[test]
    fn tls_cert_path_rule() {
        let work = Path::new("/w");
        assert_eq!(
            agent_env(&config(&[], true), work)["TLS_CERT_PATH"],
            "/etc/quarry/ca.crt"
        );
        let given = agent_env(&config(&[("TLS_CERT_PATH", "/mine.pem")], true), work);
        assert_eq!(given["TLS_CERT_PATH"], "/mine.pem");
        let given = agent_env(&config(&[("TLS_CERT_PATH", "/mine.pem")], false), work);
        assert_eq!(given["TLS_CERT_PATH"], "/mine.pem");
    }

    static CONSOLE: Mutex<Vec<String>> = Mutex::new(Vec::new());
    fn record(line: &str) {
        CONSOLE.lock().unwrap().push(line.to_owned());
    }

    #[test]
    fn runs_with_cleared_env_in_own_group_and_logs_both_streams() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("fake-agent");
        std::fs::write(
            &binary,
            "#!/bin/sh\necho \"cwd=$(pwd)\"\necho oops >&2\nenv | sort\n\
             ps -o pgid= -p $$ | tr -d ' ' | sed 's/^/pgid=/'\necho \"pid=$$\"\n\
             printf 'no newline'\n",
        )
        .unwrap();
        std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let paths = AgentPaths {
            binary,
            work_dir: dir.path().join("scratch/work"),
            log: dir.path().join("var/log/builder-agent.log"),
        };
        let env: BTreeMap<String, String> = [("PATH", SYSTEM_PATH), ("ONLY", "this")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let (mut child, drained) = spawn(&paths, &env, record).unwrap();
        assert!(child.wait().unwrap().success());
        drained.recv_timeout(Duration::from_secs(10)).unwrap();
        let log = std::fs::read_to_string(&paths.log).unwrap();
        let work = paths.work_dir.canonicalize().unwrap();
        assert!(log.contains(&format!("cwd={}\n", work.display())), "{log}");
        assert!(
            log.contains("oops\n") && log.contains("ONLY=this\n"),
            "{log}"
        );
        assert!(!log.contains("HOME="), "environment not cleared: {log}");
        let pid = log.lines().find_map(|l| l.strip_prefix("pid=")).unwrap();
        assert!(
            log.contains(&format!("pgid={pid}\n")),
            "not its own group: {log}"
        );
        assert!(log.ends_with("no newline"));
        let console = CONSOLE.lock().unwrap();
        assert!(console.contains(&"agent: oops".to_owned()), "{console:?}");
        assert!(console.contains(&"agent: no newline".to_owned()));
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let paths = AgentPaths {
            binary: dir.path().join("nope"),
            work_dir: dir.path().join("w"),
            log: dir.path().join("l.log"),
        };
        let err = spawn(&paths, &BTreeMap::new(), record).unwrap_err();
        assert!(err.to_string().contains("check the VM image contains it"));
    }
}
