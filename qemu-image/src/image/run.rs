//! Running the external tools the image build drives (apt-cache, apt-get, dpkg-deb, debootstrap,
//! mksquashfs, strip, chroot depmod), with their stderr kept for the error.
//!
//! The build is a one-shot CLI step that runs as root on the build host, so plain blocking
//! `std::process::Command` is enough; every argument is passed with `.arg()`, never through a
//! shell.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

/// How much of a failed command's stderr an error keeps.
const STDERR_TAIL_BYTES: usize = 4096;

/// A tool that could not be run or that failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The program could not be started (missing?).
    #[error("failed to start {program} (is it installed? scripts/install-deps.sh installs it)")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("{command} exited with {status}: {stderr_tail}")]
    Failed {
        /// The program and its first arguments.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// The last 4 KiB of its stderr (and of stdout, for tools that report there).
        stderr_tail: String,
    },
}

/// A command line being built: the program plus arguments, run with [`Cmd::output`].
#[derive(Debug)]
pub(crate) struct Cmd {
    inner: Command,
    program: String,
}

impl Cmd {
    /// `program` with no arguments yet.
    pub(crate) fn new(program: &str) -> Cmd {
        let mut inner = Command::new(program);
        inner.stdin(Stdio::null());
        // Tools print localised or colourful output otherwise; the error tail should be plain.
        inner
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive");
        Cmd {
            inner,
            program: program.to_string(),
        }
    }

    /// `chroot TREE`, to which the command is then added. TMPDIR is reset to `/tmp`: the
    /// caller's TMPDIR (test.sh may point it at /dev/shm) is a host path the tree lacks, and
    /// maintainer scripts that honour it (ca-certificates' `mktemp`) fail there.
    pub(crate) fn chroot(tree: &std::path::Path) -> Cmd {
        let mut cmd = Cmd::new("chroot").arg(tree);
        cmd.inner.env("TMPDIR", "/tmp");
        cmd
    }

    /// Adds one argument.
    pub(crate) fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.inner.arg(arg);
        self
    }

    /// Adds arguments.
    pub(crate) fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.inner.args(args);
        self
    }

    /// Runs in `dir`.
    pub(crate) fn current_dir(mut self, dir: &Path) -> Cmd {
        self.inner.current_dir(dir);
        self
    }

    /// Runs to completion; returns stdout. Fails with the stderr tail when the exit status is not
    /// zero.
    pub(crate) fn output(mut self) -> Result<Vec<u8>, RunError> {
        let out = self.inner.output().map_err(|source| RunError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let mut text = out.stderr;
        if text.iter().all(u8::is_ascii_whitespace) {
            // debootstrap and a few others report on stdout.
            text = out.stdout;
        }
        Err(RunError::Failed {
            command: describe(&self.inner),
            status: out.status,
            stderr_tail: tail(&text, STDERR_TAIL_BYTES),
        })
    }

    /// Runs to completion; returns stdout as text.
    pub(crate) fn text(self) -> Result<String, RunError> {
        Ok(String::from_utf8_lossy(&self.output()?).into_owned())
    }
}

/// `program arg1 arg2 ...`, shortened to the first few arguments.
fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for (i, a) in cmd.get_args().enumerate() {
        if i == 6 {
            s.push_str(" ...");
            break;
        }
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The last `max` bytes of `bytes` as trimmed text, cut at a character boundary.
pub(crate) fn tail(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chroot_commands_get_the_trees_tmp_not_the_callers() {
        let cmd = Cmd::chroot(std::path::Path::new("/t")).arg("true");
        let envs: Vec<_> = cmd.inner.get_envs().collect();
        assert!(envs.contains(&(OsStr::new("TMPDIR"), Some(OsStr::new("/tmp")))));
        let args: Vec<_> = cmd.inner.get_args().collect();
        assert_eq!(args, ["/t", "true"]);
        assert_eq!(cmd.inner.get_program(), "chroot");
    }

    #[test]
    fn tail_keeps_the_end_and_respects_char_boundaries() {
        assert_eq!(tail(b"  short\n", 100), "short");
        assert_eq!(tail(b"0123456789", 4), "...6789");
        let s = "aé".repeat(10);
        let t = tail(s.as_bytes(), 5);
        assert!(t.starts_with("..."));
        assert!(s.ends_with(&t[3..]));
    }

    #[test]
    fn failing_command_reports_its_stderr_and_arguments() {
        let err = Cmd::new("sh")
            .args(["-c", "echo $((40 + 2)); echo 'bad thing' >&2; exit 3"])
            .output()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sh -c"), "{msg}");
        assert!(msg.contains("bad thing"), "{msg}");
        // stdout ("42") is not part of the error when stderr has something.
        assert!(!msg.contains("42"), "{msg}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = Cmd::new("quarry-no-such-tool").output().unwrap_err();
        assert!(matches!(err, RunError::Spawn { .. }), "{err}");
    }

    #[test]
    fn success_returns_stdout() {
        assert_eq!(Cmd::new("echo").arg("hi").text().unwrap(), "hi\n");
    }
}
