//! The popen executor's per-agent reaper task: waits for the agent to exit, stops it when asked
//! or when it outlives `MAX_LIFETIME_S`, kills what is left of its process group, removes its
//! work directory and logs the exit status with the build id.

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

/// How much of a failed agent's log is copied into the tracing log.
const LOG_TAIL_BYTES: u64 = 2048;

/// Live agents by execution id, shared by the executor and the reaper tasks.
#[derive(Debug, Default)]
pub(super) struct Children(Mutex<HashMap<String, Running>>);

impl Children {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<String, Running>> {
        // Every critical section is a single insert, remove or read: a panic cannot leave the map
        // half-updated, so a poisoned lock is still usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One live agent.
#[derive(Debug)]
pub(super) struct Running {
    /// Its process group (= the agent's pid).
    pub(super) pgid: i32,
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
    pub(super) dir: PathBuf,
    pub(super) stop: Arc<Notify>,
    pub(super) done: watch::Sender<bool>,
    pub(super) max_lifetime: Duration,
    pub(super) debug: bool,
}

impl Reaper {
    fn signal(&self, signal: Signal) {
        if let Err(e) = process::signal_group(self.pgid, signal) {
            tracing::error!(build_uuid = %self.build_uuid, execution_id = %self.id, pgid = self.pgid,
                %signal, error = %e, "failed to signal builder agent group; kill it by hand");
        }
    }

    /// SIGTERM the group; returns when the grace period ends.
    fn terminate(&self) -> Instant {
        self.signal(Signal::SIGTERM);
        Instant::now() + GRACE
    }
}

/// Why an agent ended, as far as the executor knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// It exited on its own.
    Own,
    /// `stop_builder` or `shutdown_all` asked for it.
    Stopped,
    /// It outlived `MAX_LIFETIME_S`.
    Lifetime,
}

/// Run until the agent has exited and everything it left is gone, then drop it from the map.
pub(super) async fn reap(mut r: Reaper) {
    let lifetime = tokio::time::sleep(r.max_lifetime);
    tokio::pin!(lifetime);
    let mut grace_end: Option<Instant> = None;
    let mut killed = false;
    let mut ending = Ending::Own;
    let status = loop {
        tokio::select! {
            status = r.child.wait() => break status,
            () = r.stop.notified(), if grace_end.is_none() => {
                ending = Ending::Stopped;
                grace_end = Some(r.terminate());
            }
            () = &mut lifetime, if grace_end.is_none() => {
                tracing::warn!(build_uuid = %r.build_uuid, execution_id = %r.id,
                    max_lifetime_s = r.max_lifetime.as_secs(), "builder agent exceeded MAX_LIFETIME_S; stopping it");
                ending = Ending::Lifetime;
                grace_end = Some(r.terminate());
            }
            () = tokio::time::sleep_until(grace_end.unwrap_or_else(Instant::now)),
                if grace_end.is_some() && !killed => {
                killed = true;
                r.signal(Signal::SIGKILL);
            }
        }
    };
    // The agent is gone; whatever is left of its group (a podman service it did not stop, a
    // build step) goes too. The group id cannot be reused while any member lives.
    let grace_end = match grace_end {
        Some(t) => t,
        None => r.terminate(),
    };
    match process::finish_group(r.pgid, grace_end).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::error!(build_uuid = %r.build_uuid, execution_id = %r.id, pgid = r.pgid,
            "builder agent group survived SIGKILL; kill it by hand")
        }
        Err(e) => tracing::error!(build_uuid = %r.build_uuid, execution_id = %r.id, pgid = r.pgid,
            error = %e, "failed to kill builder agent group; kill it by hand"),
    }
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
    if let Err(e) = process::remove_dir(&r.dir).await {
        tracing::error!(build_uuid = %r.build_uuid, path = %r.dir.display(), error = %e,
            "failed to remove builder work directory; remove it by hand");
    }
    let _ = process::remove_file(&pid_path(&r.dir));
    // The log outlives the directory when DEBUG is set or the agent failed on its own, so an
    // operator can read why.
    if !(r.debug || failed_alone) {
        let _ = process::remove_file(&log);
    }
    r.children.lock().remove(&r.id);
    r.done.send_replace(true);
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
