//! Running the guest's system tools (`ip`) to completion: the one place besides the agent and
//! SSH supervisors where quarry-init starts a process.
//!
//! PID 1 starts with next to no environment (the kernel gives it no `PATH`), so programs are
//! looked up in [`SYSTEM_PATH`] explicitly and run with a cleared environment.

use std::path::PathBuf;
use std::process::Command;

/// The system directories, in lookup order; also the agent's `PATH`.
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Keep this much of a failed tool's stderr for the error.
const STDERR_TAIL: usize = 4096;

/// A tool could not be run or failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Not found in [`SYSTEM_PATH`].
    #[error("{program} not found in {SYSTEM_PATH}: the VM image lacks it, rebuild it")]
    NotFound {
        /// The program.
        program: String,
    },
    /// It could not be started.
    #[error("failed to spawn {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It exited unsuccessfully.
    #[error("{command} exited with {status}: {stderr_tail}")]
    Failed {
        /// The command line.
        command: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// The last 4 KiB of its stderr.
        stderr_tail: String,
    },
}

/// `name`'s absolute path: the first executable file of that name in [`SYSTEM_PATH`].
pub fn find_program(name: &str) -> Result<PathBuf, ExecError> {
    use std::os::unix::fs::PermissionsExt;
    SYSTEM_PATH
        .split(':')
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| ExecError::NotFound {
            program: name.to_owned(),
        })
}

/// A [`Command`] for `name` found in [`SYSTEM_PATH`], with a cleared environment holding only
/// `PATH`.
pub fn command(name: &str) -> Result<Command, ExecError> {
    let mut cmd = Command::new(find_program(name)?);
    cmd.env_clear().env("PATH", SYSTEM_PATH);
    Ok(cmd)
}

/// Run `name args...` to completion; fail with its stderr tail unless it exits 0.
///
/// Only call this before the reaper loop starts (it waits for its own child, which the loop
/// would otherwise reap first).
pub fn run(name: &str, args: &[&str]) -> Result<(), ExecError> {
    let output = command(name)?
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| ExecError::Spawn {
            program: name.to_owned(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let start = stderr.len().saturating_sub(STDERR_TAIL);
    let start = (start..stderr.len())
        .find(|&i| stderr.is_char_boundary(i))
        .unwrap_or(stderr.len());
    Err(ExecError::Failed {
        command: format!("{name} {}", args.join(" ")),
        status: output.status,
        stderr_tail: stderr[start..].trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_system_tools_and_refuses_unknown_ones() {
        assert!(find_program("sh").unwrap().is_absolute());
        assert!(matches!(
            find_program("no-such-tool-quarry"),
            Err(ExecError::NotFound { .. })
        ));
    }

    #[test]
    fn failure_carries_status_and_stderr() {
        run("true", &[]).unwrap();
        let err = run("sh", &["-c", "echo oops >&2; exit 3"]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("exit status: 3") && text.ends_with("oops"),
            "{text}"
        );
    }

    #[test]
    fn environment_is_cleared() {
        let out = command("env").unwrap().output().unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("PATH={SYSTEM_PATH}\n")
        );
    }
}
