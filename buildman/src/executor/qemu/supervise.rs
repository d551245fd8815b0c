//! The live VMs of one `qemu` executor, and the supervisor task each one gets: it reads the
//! guest's console from QEMU's stdout (into memory, see [`Console`]), deletes the guest
//! configuration (it carries the registration token) as soon as QEMU has read it, waits for QEMU
//! to exit, stops it when asked or when it outlives `MAX_LIFETIME_S`, sweeps whatever else names
//! the work directory, logs the exit with the end of the console, removes the work directory
//! (scratch disk, QEMU's stderr) and frees the SSH port.
//!
//! slirp's per-connection relays (`socat`) are not swept: they run in sessions of their own and
//! name nothing of the build. Each ends when its guest connection closes, which QEMU's exit does,
//! and `connect-timeout` bounds one whose host service does not answer.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::console::{Console, pump, tail_lines};
use super::start::CONFIG_FILE;
use crate::executor::popen::pid_path;
use crate::executor::process;
use crate::executor::reaper::{Ending, Waited, wait_worker};
use crate::executor::scan::Recorded;
use crate::executor::sweep::{BuildSweep, SWEEP_GRACE};

/// How many console lines go into the exit log line.
pub(super) const CONSOLE_TAIL_LINES: usize = 20;
/// How much of QEMU's own stderr is read for the exit log line.
const STDERR_TAIL_BYTES: u64 = 16 * 1024;
/// QEMU's own stderr, in the work directory (the console is on its stdout, kept in memory).
pub(super) const QEMU_LOG_FILE: &str = "qemu.log";
/// How long the supervisor waits, once QEMU has exited, for the end of its stdout.
const CONSOLE_DRAIN: Duration = Duration::from_secs(5);

/// The VMs of one executor and the SSH ports they hold.
#[derive(Debug, Default)]
pub(super) struct Vms {
    table: Mutex<VmTable>,
    /// VMs that ended on their own, for the manager.
    pub(super) exits: crate::executor::WorkerExits,
}

/// See [`Vms`].
#[derive(Debug, Default)]
pub(super) struct VmTable {
    /// Live VMs by execution id.
    pub(super) running: HashMap<String, Vm>,
    /// SSH ports held by live VMs and by VMs being started.
    pub(super) ports: HashSet<u16>,
}

impl Vms {
    pub(super) fn lock(&self) -> MutexGuard<'_, VmTable> {
        // Every critical section is a few inserts, removes or reads: a panic cannot leave the
        // table half-updated, so a poisoned lock is still usable.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One live VM.
#[derive(Debug)]
pub(super) struct Vm {
    /// The build it runs.
    pub(super) build_uuid: String,
    /// QEMU's pid, also its process group.
    pub(super) pid: i32,
    /// QEMU's start time, naming the process together with `pid`.
    pub(super) start_time: u64,
    /// Its work directory.
    pub(super) work_dir: PathBuf,
    /// The host address forwarded to the guest's SSH server.
    pub(super) ssh: Option<SocketAddr>,
    /// Asks the supervisor to stop the VM; `notify_one` stores a permit, so no request is lost.
    pub(super) stop: Arc<Notify>,
    /// Becomes true once the supervisor has finished.
    pub(super) done: watch::Receiver<bool>,
    /// `DEBUG`: the build is over but the VM is kept for debugging.
    pub(super) kept: bool,
    /// The end of its console.
    pub(super) console: Arc<Console>,
}

/// Everything a supervisor task owns.
#[derive(Debug)]
pub(super) struct Supervisor {
    pub(super) vms: Arc<Vms>,
    pub(super) id: String,
    pub(super) build_uuid: String,
    pub(super) child: tokio::process::Child,
    /// QEMU's stdout: the guest's console.
    pub(super) stdout: Option<tokio::process::ChildStdout>,
    pub(super) console: Arc<Console>,
    pub(super) pid: i32,
    pub(super) start_time: u64,
    pub(super) dir: PathBuf,
    pub(super) ssh_port: Option<u16>,
    pub(super) stop: Arc<Notify>,
    pub(super) done: watch::Sender<bool>,
    pub(super) max_lifetime: Duration,
}

/// Signal QEMU's group `pid`, logging a failure.
fn signal_qemu(pid: i32, signal: Signal, build_uuid: &str, id: &str) {
    if let Err(e) = process::signal_group(pid, signal) {
        tracing::error!(build_uuid, execution_id = id, pid, %signal, error = %e,
            "failed to signal the VM's QEMU; kill it by hand");
    }
}

/// Delete the guest configuration in `dir` (it carries the registration token) once QEMU has
/// read it.
fn remove_config(dir: &Path, build_uuid: &str, id: &str) {
    let path = dir.join(CONFIG_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::error!(build_uuid, execution_id = id, path = %path.display(),
            error = %e, "failed to delete the VM's configuration (it holds the build's token); \
            delete it by hand"),
    }
}

/// Run until QEMU has exited and everything of the VM is gone, then drop it from the table.
pub(super) async fn supervise(mut s: Supervisor) {
    let reader = s.stdout.take().map(|out| {
        let console = s.console.clone();
        let (dir, uuid, id) = (s.dir.clone(), s.build_uuid.clone(), s.id.clone());
        tokio::spawn(async move {
            // The first console byte comes from the guest: QEMU read `-fw_cfg file=` while
            // setting the machine up, before the guest ran.
            let first = || remove_config(&dir, &uuid, &id);
            if let Err(e) = pump(out, &console, first).await {
                tracing::warn!(build_uuid = %uuid, execution_id = %id, error = %e,
                    "stopped reading the VM's console");
            }
        })
    });
    let Waited {
        status,
        ending,
        grace_end,
    } = wait_worker(
        &mut s.child,
        &s.stop,
        s.max_lifetime,
        |sig| signal_qemu(s.pid, sig, &s.build_uuid, &s.id),
        || {
            tracing::warn!(build_uuid = %s.build_uuid, execution_id = %s.id,
            max_lifetime_s = s.max_lifetime.as_secs(), "VM exceeded MAX_LIFETIME_S; stopping it")
        },
    )
    .await;
    match (ending, &status) {
        (Ending::Own, Ok(st)) => s
            .vms
            .exits
            .send(&s.id, format!("the build's VM ended (QEMU {st})")),
        (Ending::Own, Err(e)) => s.vms.exits.send(
            &s.id,
            format!("the build's VM could not be waited for: {e}"),
        ),
        (Ending::Lifetime, _) => s.vms.exits.send(
            &s.id,
            format!(
                "the build's VM outlived MAX_LIFETIME_S ({} s) and was stopped",
                s.max_lifetime.as_secs()
            ),
        ),
        (Ending::Stopped, _) => {}
    }
    // QEMU is gone and its stdout with it (slirp gives each relay its guest connection as stdio,
    // not QEMU's stdout): read the console's last bytes, bounded in case something holds it.
    if let Some(mut reader) = reader
        && tokio::time::timeout(CONSOLE_DRAIN, &mut reader)
            .await
            .is_err()
    {
        reader.abort();
    }
    remove_config(&s.dir, &s.build_uuid, &s.id);
    // Whatever else still names the work directory goes too (QEMU's group is gone with it).
    let group = Recorded {
        pid: s.pid,
        start_time: s.start_time,
    };
    let sweep = BuildSweep::new(&s.build_uuid, &s.dir, Some(group));
    let swept = sweep
        .terminate(grace_end.unwrap_or_else(|| Instant::now() + SWEEP_GRACE))
        .await;
    report(&s, ending, &status);
    if swept.survivors.is_empty() {
        match sweep.remove_files().await {
            Ok(()) => {
                let _ = process::remove_file(&pid_path(&s.dir));
            }
            Err((path, e)) => tracing::error!(build_uuid = %s.build_uuid, path = %path.display(),
                error = %e, "failed to remove the VM's work directory; remove it by hand"),
        }
    } else {
        tracing::error!(build_uuid = %s.build_uuid, execution_id = %s.id, survivors = ?swept.survivors,
            "VM processes survived SIGKILL; kill them by hand, the work directory is kept");
    }
    {
        let mut table = s.vms.lock();
        table.running.remove(&s.id);
        if let Some(port) = s.ssh_port {
            table.ports.remove(&port);
        }
    }
    s.done.send_replace(true);
}

/// Log how the VM ended: at info when we stopped it or the guest powered off after the agent
/// exited with status 0, at warn otherwise, with the console's last lines.
fn report(s: &Supervisor, ending: Ending, status: &std::io::Result<std::process::ExitStatus>) {
    let text = s.console.text();
    let agent_exit = agent_exit_code(&text).map(str::to_owned);
    let console = tail_lines(&text, CONSOLE_TAIL_LINES);
    let console_bytes = s.console.seen();
    let (status, success) = match status {
        Ok(st) => (st.to_string(), st.success()),
        Err(e) => {
            tracing::error!(build_uuid = %s.build_uuid, execution_id = %s.id, error = %e,
                "failed to wait for the VM's QEMU");
            return;
        }
    };
    let (id, uuid) = (&s.id, &s.build_uuid);
    match ending {
        Ending::Own if success && agent_exit.as_deref() == Some("0") => {
            tracing::info!(build_uuid = %uuid, execution_id = %id, %status, console_bytes,
                "VM powered off");
        }
        Ending::Own => {
            let qemu = tail_lines(&read_end(&s.dir.join(QEMU_LOG_FILE)), 5);
            tracing::warn!(build_uuid = %uuid, execution_id = %id, %status, qemu_stderr = %qemu,
                console_bytes,
                agent_exit = agent_exit.as_deref().unwrap_or("(none seen)"), console = %console,
                "VM ended without a clean agent exit");
        }
        Ending::Stopped => {
            tracing::info!(build_uuid = %uuid, execution_id = %id, %status, console_bytes,
                "VM stopped");
        }
        Ending::Lifetime => {
            tracing::warn!(build_uuid = %uuid, execution_id = %id, %status, console = %console,
                console_bytes, "VM killed at MAX_LIFETIME_S");
        }
    }
}

/// The line `quarry-init` prints when the agent ends (qemu-image `guest/init.rs`), followed by
/// its exit code.
pub(super) const AGENT_EXITED: &str = "quarry-init: agent exited with status ";

/// The agent's exit code as the console's end reports it, if it got that far.
pub(super) fn agent_exit_code(console: &str) -> Option<&str> {
    console
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(AGENT_EXITED))
        .map(str::trim)
}

/// The last [`STDERR_TAIL_BYTES`] of `path` as text (empty when it cannot be read).
fn read_end(path: &Path) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(STDERR_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_tail_keeps_the_last_non_empty_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(QEMU_LOG_FILE);
        let text: String = (1..=30).map(|i| format!("line {i}\r\n\n")).collect();
        std::fs::write(&path, text).unwrap();
        let tail = tail_lines(&read_end(&path), 3);
        assert_eq!(tail, "line 28\nline 29\nline 30");
        assert_eq!(read_end(&dir.path().join("absent")), "");
    }

    #[test]
    fn the_agents_exit_code_is_read_from_the_console() {
        let console = "quarry-init: agent started\nagent: done\n\
                       quarry-init: agent exited with status 0\n\
                       quarry-init: powering off: the agent finished\n";
        assert_eq!(agent_exit_code(console), Some("0"));
        let failed = "quarry-init: agent exited with status 3\n";
        assert_eq!(agent_exit_code(failed), Some("3"));
        assert_eq!(
            agent_exit_code("quarry-stage1: error: no root disk\n"),
            None
        );
    }
}
