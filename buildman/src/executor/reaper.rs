//! The popen executor's per-agent reaper task: waits for the agent to exit, stops it when asked
//! or when it outlives `MAX_LIFETIME_S`, kills every process left of its build (its group, its
//! podman service, RUN steps: see [`super::sweep`]), removes its work directory and logs the exit
//! status with the build id.

use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::popen::{log_path, pid_path};
use super::process::{self, GRACE};
use super::scan::Recorded;
use super::sweep::{BuildSweep, SWEEP_GRACE, Swept};

/// How much of a failed agent's log is copied into the tracing log.
const LOG_TAIL_BYTES: u64 = 2048;

/// Live agents by execution id, shared by the executor and the reaper tasks.
#[derive(Debug, Default)]
pub(super) struct Children {
    map: Mutex<HashMap<String, Running>>,
    /// Agents that ended on their own, for the manager.
    pub(super) exits: super::WorkerExits,
}

impl Children {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<String, Running>> {
        // Every critical section is a single insert, remove or read: a panic cannot leave the map
        // half-updated, so a poisoned lock is still usable.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One live agent.
#[derive(Debug)]
pub(super) struct Running {
    /// The build it runs.
    pub(super) build_uuid: String,
    /// Its process group (= the agent's pid).
    pub(super) pgid: i32,
    /// The agent's start time, naming the group together with `pgid`.
    pub(super) start_time: u64,
    /// Its work directory.
    pub(super) work_dir: PathBuf,
    /// Asks the reaper to stop the agent; `notify_one` stores a permit, so no request is lost.
    pub(super) stop: Arc<Notify>,
    /// Becomes true once the reaper has finished.
    pub(super) done: watch::Receiver<bool>,
}

/// Everything a reaper task owns.
#[derive(Debug)]
pub(super) struct Reaper {
    pub(super) children: Arc<Children>,
    pub(super) id: String,
    pub(super) build_uuid: String,
    pub(super) child: tokio::process::Child,
    pub(super) pgid: i32,
    pub(super) start_time: u64,
    pub(super) dir: PathBuf,
    pub(super) stop: Arc<Notify>,
    pub(super) done: watch::Sender<bool>,
    pub(super) max_lifetime: Duration,
    pub(super) debug: bool,
}

/// Signal the agent group `pgid`, logging a failure.
fn signal_group_logged(pgid: i32, signal: Signal, build_uuid: &str, id: &str) {
    if let Err(e) = process::signal_group(pgid, signal) {
        tracing::error!(build_uuid, execution_id = id, pgid, %signal, error = %e,
            "failed to signal builder agent group; kill it by hand");
    }
}

/// Why a worker (an agent process, a VM) ended, as far as its executor knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ending {
    /// It exited on its own.
    Own,
    /// `stop_builder` or `shutdown_all` asked for it.
    Stopped,
    /// It outlived `MAX_LIFETIME_S`.
    Lifetime,
}

/// How [`wait_worker`] saw a worker end.
#[derive(Debug)]
pub(super) struct Waited {
    /// Its exit status.
    pub(super) status: std::io::Result<std::process::ExitStatus>,
    /// Why it ended.
    pub(super) ending: Ending,
    /// When the grace after SIGTERM ended or ends; `None` when it exited on its own.
    pub(super) grace_end: Option<Instant>,
}

/// Wait for `child` to exit. When `stop` is notified or `max_lifetime` passes (then
/// `on_lifetime` logs it), `signal(SIGTERM)`, and `signal(SIGKILL)` after [`GRACE`]. The one
/// lifecycle loop of the popen reaper and the qemu supervisor.
pub(super) async fn wait_worker(
    child: &mut tokio::process::Child,
    stop: &Notify,
    max_lifetime: Duration,
    signal: impl Fn(Signal),
    on_lifetime: impl Fn(),
) -> Waited {
    let lifetime = tokio::time::sleep(max_lifetime);
    tokio::pin!(lifetime);
    let mut grace_end: Option<Instant> = None;
    let mut killed = false;
    let mut ending = Ending::Own;
    let terminate = || {
        signal(Signal::SIGTERM);
        Instant::now() + GRACE
    };
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = stop.notified(), if grace_end.is_none() => {
                ending = Ending::Stopped;
                grace_end = Some(terminate());
            }
            () = &mut lifetime, if grace_end.is_none() => {
                on_lifetime();
                ending = Ending::Lifetime;
                grace_end = Some(terminate());
            }
            () = tokio::time::sleep_until(grace_end.unwrap_or_else(Instant::now)),
                if grace_end.is_some() && !killed => {
                killed = true;
                signal(Signal::SIGKILL);
            }
        }
    };
    Waited {
        status,
        ending,
        grace_end,
    }
}

/// Run until the agent has exited and everything it left is gone, then drop it from the map.
pub(super) async fn reap(mut r: Reaper) {
    let Waited {
        status,
        ending,
        grace_end,
    } = wait_worker(
        &mut r.child,
        &r.stop,
        r.max_lifetime,
        |sig| signal_group_logged(r.pgid, sig, &r.build_uuid, &r.id),
        || tracing::warn!(build_uuid = %r.build_uuid, execution_id = %r.id,
            max_lifetime_s = r.max_lifetime.as_secs(), "builder agent exceeded MAX_LIFETIME_S; stopping it"),
    )
    .await;
    match (ending, &status) {
        (Ending::Own, Ok(s)) => r
            .children
            .exits
            .send(&r.id, format!("the builder agent exited ({s})")),
        (Ending::Own, Err(e)) => r.children.exits.send(
            &r.id,
            format!("the builder agent could not be waited for: {e}"),
        ),
        (Ending::Lifetime, _) => r.children.exits.send(
            &r.id,
            format!(
                "the builder agent outlived MAX_LIFETIME_S ({} s) and was stopped",
                r.max_lifetime.as_secs()
            ),
        ),
        (Ending::Stopped, _) => {}
    }
    // The agent is gone; whatever is left of its build goes too: its group (the group id cannot
    // be reused while any member lives), its podman service and the RUN steps, which left the
    // group. After a stop the grace has run already; after an exit of its own they get a short one.
    let sweep = BuildSweep::new(
        &r.build_uuid,
        &r.dir,
        Some(Recorded {
            pid: r.pgid,
            start_time: r.start_time,
        }),
    );
    let swept = sweep
        .terminate(grace_end.unwrap_or_else(|| Instant::now() + SWEEP_GRACE))
        .await;
    report(&r, &swept);
    let log = log_path(&r.dir);
    let failed_alone = ending == Ending::Own && !matches!(&status, Ok(s) if s.success());
    match &status {
        Ok(s) if ending == Ending::Own && s.success() => {
            tracing::info!(build_uuid = %r.build_uuid, execution_id = %r.id, "builder agent exited");
        }
        Ok(s) if ending == Ending::Own => {
            tracing::warn!(build_uuid = %r.build_uuid, execution_id = %r.id, status = %s,
                log = %log.display(), tail = %log_tail(&log), "builder agent failed");
        }
        Ok(s) => tracing::info!(build_uuid = %r.build_uuid, execution_id = %r.id, status = %s,
            reason = ?ending, "builder agent stopped"),
        Err(e) => tracing::error!(build_uuid = %r.build_uuid, execution_id = %r.id, error = %e,
            "failed to wait for builder agent"),
    }
    // A process that survived SIGKILL (stuck in the kernel) may still write there: keep the
    // directory and the pid file, so that the next buildman start sweeps and removes them.
    if swept.survivors.is_empty() {
        match sweep.remove_files().await {
            Ok(()) => {
                let _ = process::remove_file(&pid_path(&r.dir));
            }
            Err((path, e)) => tracing::error!(build_uuid = %r.build_uuid, path = %path.display(),
                error = %e, "failed to remove builder work directory; remove it by hand"),
        }
    }
    // The log outlives the directory when DEBUG is set or the agent failed on its own, so an
    // operator can read why.
    if !(r.debug || failed_alone) {
        let _ = process::remove_file(&log);
    }
    r.children.lock().remove(&r.id);
    r.done.send_replace(true);
}

fn report(r: &Reaper, swept: &Swept) {
    let elapsed_ms = u64::try_from(swept.elapsed.as_millis()).unwrap_or(u64::MAX);
    if !swept.survivors.is_empty() {
        tracing::error!(build_uuid = %r.build_uuid, execution_id = %r.id, survivors = ?swept.survivors,
            "build processes survived SIGKILL; kill them by hand, the work directory is kept");
    } else if swept.found > 0 {
        tracing::info!(build_uuid = %r.build_uuid, execution_id = %r.id, processes = swept.found,
            elapsed_ms, "stopped the processes left by the builder agent");
    } else {
        tracing::debug!(build_uuid = %r.build_uuid, execution_id = %r.id, elapsed_ms,
            "no build process left");
    }
}

/// The last [`LOG_TAIL_BYTES`] of the agent's log, for the failure message.
fn log_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).trim_end().to_owned())
    };
    read().unwrap_or_default()
}
