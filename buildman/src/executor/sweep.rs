//! Killing every process of one build before its work directory is removed, then removing the
//! work directory and the podman run root the agent may keep outside it.
//!
//! The agent records its private podman service in `<work dir>/podman.json` (builder-agent's
//! `podman` module writes it before and after spawning the service), so the service and its run
//! root in `/tmp` are found even when the agent died without a word:
//! `{"pid": 123, "start_time": 456, "runroot": "/tmp/quarry-run-Ab12/run", "socket": "..."}`.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;

use super::process;
use super::scan::{Recorded, Trace};

/// Grace between SIGTERM and SIGKILL for what is left after the agent exited on its own.
pub(super) const SWEEP_GRACE: Duration = Duration::from_secs(2);
/// After the grace, how long SIGKILL and re-scans go on before giving up on a process.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Pause between scans.
const POLL: Duration = Duration::from_millis(50);
/// Rounds of [`BuildSweep::kill_now`], [`KILL_NOW_PAUSE`] apart (1 s in all).
const KILL_NOW_ROUNDS: u32 = 40;
const KILL_NOW_PAUSE: Duration = Duration::from_millis(25);
/// The agent's record of its podman service, in the work directory.
pub(super) const PODMAN_RECORD: &str = "podman.json";
/// A run root too long for podman under the work directory lives in `/tmp/quarry-run-*`; only
/// such a directory is ever removed on the record's word.
const SCRATCH_PARENT: &str = "/tmp";
const SCRATCH_PREFIX: &str = "quarry-run-";

/// `podman.json`; every field optional (the first write precedes the spawn).
#[derive(Debug, Default, serde::Deserialize)]
struct PodmanRecord {
    #[serde(default)]
    pid: Option<i32>,
    #[serde(default)]
    start_time: Option<u64>,
    #[serde(default)]
    runroot: Option<PathBuf>,
}

/// One build's processes and files.
#[derive(Debug)]
pub(super) struct BuildSweep {
    trace: Arc<Trace>,
    work_dir: PathBuf,
    scratch: Option<PathBuf>,
}

/// What a sweep did.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Swept {
    /// How many distinct processes it found.
    pub(super) found: usize,
    /// Pids still alive when it gave up; empty on success.
    pub(super) survivors: Vec<i32>,
    /// How long it took.
    pub(super) elapsed: Duration,
}

impl BuildSweep {
    /// The sweep of build `build_uuid` in `work_dir`, whose agent led process `group`; reads the
    /// agent's podman record.
    pub(super) fn new(build_uuid: &str, work_dir: &Path, group: Option<Recorded>) -> BuildSweep {
        let record = read_record(work_dir);
        let scratch = record.runroot.as_deref().and_then(scratch_dir);
        let service = match (record.pid, record.start_time) {
            (Some(pid), Some(start_time)) if pid > 1 => Some(Recorded { pid, start_time }),
            _ => None,
        };
        let extra: Vec<PathBuf> = scratch.iter().cloned().collect();
        BuildSweep {
            trace: Arc::new(Trace::new(build_uuid, work_dir, group, service, &extra)),
            work_dir: work_dir.to_path_buf(),
            scratch,
        }
    }

    /// SIGTERM every process of the build, SIGKILL what is left at `grace_end` (at once if it
    /// has passed), and re-scan until none is left or [`KILL_WAIT`] after the grace.
    pub(super) async fn terminate(&self, grace_end: Instant) -> Swept {
        let started = Instant::now();
        let give_up = grace_end.max(started) + KILL_WAIT;
        let mut seen = HashSet::new();
        let mut termed = HashSet::new();
        loop {
            let trace = self.trace.clone();
            let found = tokio::task::spawn_blocking(move || trace.scan())
                .await
                .unwrap_or_default();
            seen.extend(found.iter().copied());
            let now = Instant::now();
            if found.is_empty() || now >= give_up {
                return Swept {
                    found: seen.len(),
                    survivors: found.iter().map(|p| p.pid).collect(),
                    elapsed: started.elapsed(),
                };
            }
            for p in found {
                if now >= grace_end {
                    send(p, Signal::SIGKILL);
                } else if termed.insert(p) {
                    send(p, Signal::SIGTERM);
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILL every process of the build and re-scan, blocking for at most about a second; for
    /// `Drop`, where nothing can be awaited.
    pub(super) fn kill_now(&self) -> Swept {
        let started = std::time::Instant::now();
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        for _ in 0..KILL_NOW_ROUNDS {
            found = self.trace.scan();
            if found.is_empty() {
                break;
            }
            seen.extend(found.iter().copied());
            for p in &found {
                send(*p, Signal::SIGKILL);
            }
            std::thread::sleep(KILL_NOW_PAUSE);
        }
        Swept {
            found: seen.len(),
            survivors: found.iter().map(|p| p.pid).collect(),
            elapsed: started.elapsed(),
        }
    }

    /// Remove the work directory and the scratch run root, if any (absent is fine).
    pub(super) async fn remove_files(&self) -> Result<(), (PathBuf, std::io::Error)> {
        process::remove_dir(&self.work_dir)
            .await
            .map_err(|e| (self.work_dir.clone(), e))?;
        if let Some(scratch) = &self.scratch
            && std::fs::symlink_metadata(scratch).is_ok_and(|m| m.is_dir())
        {
            process::remove_dir(scratch)
                .await
                .map_err(|e| (scratch.clone(), e))?;
        }
        Ok(())
    }

    /// [`BuildSweep::remove_files`] without a runtime, for `Drop`; best effort.
    pub(super) fn remove_files_now(&self) {
        let _ = std::fs::remove_dir_all(&self.work_dir);
        if let Some(scratch) = &self.scratch
            && std::fs::symlink_metadata(scratch).is_ok_and(|m| m.is_dir())
        {
            let _ = std::fs::remove_dir_all(scratch);
        }
    }
}

/// Signal `p` unless its pid now names another process (its start time changed since the scan).
fn send(p: Recorded, signal: Signal) {
    if process::read_stat(p.pid).is_none_or(|s| s.start_time != p.start_time) {
        return;
    }
    match kill(Pid::from_raw(p.pid), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        // Repeated every poll while it lives; the survivors are reported once by the caller.
        Err(e) => tracing::debug!(pid = p.pid, %signal, error = %e,
            "failed to signal a leftover build process"),
    }
}

fn read_record(work_dir: &Path) -> PodmanRecord {
    let path = work_dir.join(PODMAN_RECORD);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable podman record");
            PodmanRecord::default()
        }),
        Err(_) => PodmanRecord::default(),
    }
}

/// The `/tmp/quarry-run-*` directory holding `runroot`, or `None` when the run root is anywhere
/// else (inside the work directory, where it goes with it, or somewhere we must not touch).
fn scratch_dir(runroot: &Path) -> Option<PathBuf> {
    if !runroot
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return None;
    }
    let dir = runroot.parent()?;
    let name = dir.file_name()?.to_str()?;
    let ok = dir.parent() == Some(Path::new(SCRATCH_PARENT))
        && name.len() > SCRATCH_PREFIX.len()
        && name.starts_with(SCRATCH_PREFIX);
    ok.then(|| dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_quarry_run_dir_in_tmp_is_a_scratch_dir() {
        let ok = scratch_dir(Path::new("/tmp/quarry-run-Ab12/run"));
        assert_eq!(ok, Some(PathBuf::from("/tmp/quarry-run-Ab12")));
        for bad in [
            "/w/builds/b1-1/run",
            "/tmp/quarry-run-/run",
            "/tmp/quarry-e2e-x/run",
            "/tmp/run",
            "/tmp/quarry-run-x/../run",
            "/tmp/x/quarry-run-x/run",
            "tmp/quarry-run-x/run",
            "/",
        ] {
            assert_eq!(scratch_dir(Path::new(bad)), None, "{bad}");
        }
    }

    #[test]
    fn the_record_names_the_service_and_the_scratch_dir() {
        let dir = tempfile::tempdir().unwrap();
        let empty = BuildSweep::new("b1", dir.path(), None);
        assert_eq!(empty.scratch, None, "no record");
        std::fs::write(
            dir.path().join(PODMAN_RECORD),
            r#"{"pid": 4242, "start_time": 7, "runroot": "/tmp/quarry-run-Xy/run", "socket": "/x"}"#,
        )
        .unwrap();
        let sweep = BuildSweep::new("b1", dir.path(), None);
        assert_eq!(sweep.scratch, Some(PathBuf::from("/tmp/quarry-run-Xy")));
        let record = read_record(dir.path());
        assert_eq!((record.pid, record.start_time), (Some(4242), Some(7)));
        std::fs::write(dir.path().join(PODMAN_RECORD), "not json").unwrap();
        assert_eq!(read_record(dir.path()).runroot, None);
    }

    #[tokio::test]
    async fn a_build_with_no_process_left_is_swept_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("b1-1");
        std::fs::create_dir(&work).unwrap();
        let sweep = BuildSweep::new("nobody-has-this-uuid", &work, None);
        let swept = sweep.terminate(Instant::now() + SWEEP_GRACE).await;
        assert_eq!((swept.found, swept.survivors.len()), (0, 0));
        assert!(swept.elapsed < SWEEP_GRACE);
        sweep.remove_files().await.unwrap();
        assert!(!work.exists());
        sweep.remove_files().await.unwrap();
    }

    #[tokio::test]
    async fn terminate_kills_a_process_that_ignores_sigterm_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("b1-1");
        std::fs::create_dir(&work).unwrap();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; while :; do sleep 1; done"])
            .current_dir(&work)
            .spawn()
            .unwrap();
        let sweep = BuildSweep::new("b1", &work, None);
        let grace = Duration::from_millis(300);
        let swept = sweep.terminate(Instant::now() + grace).await;
        let status = child.wait().unwrap();
        assert!(swept.survivors.is_empty(), "{swept:?}");
        assert!(swept.found >= 1, "{swept:?}");
        assert!(
            swept.elapsed >= grace,
            "SIGKILL before the grace: {swept:?}"
        );
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }
}
