//! VMs left behind by a buildman that died without stopping them (SIGKILL, OOM, power loss).
//!
//! Each VM's QEMU is recorded in `<work dir>.pid` (`<pid> <start time>`), and its `-name` is
//! `quarry-build-<execution id>`. A restarted executor kills a recorded process only when both
//! its start time and its command line's `-name` match, so a recycled pid is never killed; it
//! also finds a VM whose pid file was never written by its `-name` alone. Then it removes the
//! work directory (scratch disk, config with the token if still there, QEMU's stderr) and the
//! pid file.

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::start::{CONFIG_FILE, SCRATCH_FILE, vm_name};
use super::supervise::QEMU_LOG_FILE;
use crate::executor::ExecutorError;
use crate::executor::process::{self, GRACE};

/// Pause between checks while waiting for a signalled VM to exit.
const POLL: Duration = Duration::from_millis(50);

/// Whether a `/proc/<pid>/cmdline` (NUL-separated) is a QEMU started with `-name <name>`
/// (QEMU also accepts `-name guest=<name>,...`).
pub(super) fn cmdline_names_vm(cmdline: &[u8], name: &str) -> bool {
    let mut args = cmdline.split(|b| *b == 0);
    while let Some(arg) = args.next() {
        if arg == b"-name" {
            let Some(value) = args.next() else {
                return false;
            };
            let first = value.split(|b| *b == b',').next().unwrap_or_default();
            let first = first.strip_prefix(b"guest=").unwrap_or(first);
            return first == name.as_bytes();
        }
    }
    false
}

fn names_vm(pid: i32, name: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| cmdline_names_vm(&c, name))
}

/// Live processes whose command line names VM `name`, plus the recorded one when it still is
/// that VM (same start time and `-name`).
fn vm_processes(name: &str, recorded: Option<(i32, u64)>) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    if let Some((pid, start_time)) = recorded
        && process::read_stat(pid).is_some_and(|s| s.start_time == start_time && s.state != 'Z')
        && names_vm(pid, name)
    {
        out.insert(pid);
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    let me = std::process::id();
    for pid in entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid > 1 && u32::try_from(*pid).is_ok_and(|p| p != me))
    {
        if process::read_stat(pid).is_some_and(|s| s.state != 'Z') && names_vm(pid, name) {
            out.insert(pid);
        }
    }
    out
}

/// SIGTERM each VM's group, SIGKILL after [`GRACE`], and wait until they are gone (another
/// [`GRACE`] at most). Returns the pids still alive.
async fn stop_all(pids: &BTreeSet<i32>, name: &str) -> Vec<i32> {
    let alive = |pid: &i32| process::read_stat(*pid).is_some_and(|s| s.state != 'Z');
    for pid in pids {
        let _ = process::signal_group(*pid, Signal::SIGTERM);
    }
    let start = tokio::time::Instant::now();
    let mut killed = false;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(alive).collect();
        if left.is_empty() || start.elapsed() > GRACE * 2 {
            return left;
        }
        if !killed && start.elapsed() > GRACE {
            killed = true;
            for pid in &left {
                // Re-check: the pid must still be this VM before a SIGKILL goes to its group.
                if names_vm(*pid, name) {
                    let _ = process::signal_group(*pid, Signal::SIGKILL);
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Stop the VMs in `root` that `is_ours` does not claim, and remove their work directories and
/// pid files. Directories that are not VM work directories (no scratch disk, config or QEMU log)
/// and have no VM running are left alone: the popen executor may share the work root. Returns
/// how many VMs were still running.
pub(super) async fn reap(
    root: &Path,
    is_ours: impl Fn(&str) -> bool,
) -> Result<usize, ExecutorError> {
    let Ok(entries) = std::fs::read_dir(root) else {
        // No work root yet: nothing was ever started here.
        return Ok(0);
    };
    let mut ids = BTreeSet::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(name) = std::str::from_utf8(name.as_bytes()).ok() else {
            continue;
        };
        if let Some(id) = name.strip_suffix(".pid") {
            ids.insert(id.to_owned());
        } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
            ids.insert(name.to_owned());
        }
    }
    let mut stopped = 0;
    for id in ids.iter().filter(|id| !is_ours(id)) {
        let name = vm_name(id);
        let pid_file = root.join(format!("{id}.pid"));
        let dir = root.join(id);
        let pids = vm_processes(&name, process::read_pid_file(&pid_file));
        let vm_dir = [SCRATCH_FILE, CONFIG_FILE, QEMU_LOG_FILE]
            .iter()
            .any(|f| dir.join(f).exists());
        if pids.is_empty() && !vm_dir {
            continue;
        }
        if !pids.is_empty() {
            let survivors = stop_all(&pids, &name).await;
            if !survivors.is_empty() {
                tracing::error!(execution_id = %id, ?survivors,
                    "VM left by a previous buildman survived SIGKILL; kill it by hand, its work directory is kept");
                continue;
            }
            tracing::warn!(execution_id = %id, "stopped a VM left by a previous buildman");
            stopped += 1;
        }
        process::remove_dir(&dir)
            .await
            .map_err(|source| ExecutorError::Cleanup {
                path: dir.clone(),
                source,
            })?;
        let _ = process::remove_file(&pid_file);
    }
    Ok(stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_name_matches() {
        let cmd = |args: &[&str]| args.join("\0").into_bytes();
        let vm = cmd(&[
            "qemu-system-x86_64",
            "-name",
            "quarry-build-b1-1",
            "-M",
            "q35",
        ]);
        assert!(cmdline_names_vm(&vm, "quarry-build-b1-1"));
        assert!(!cmdline_names_vm(&vm, "quarry-build-b1-10"));
        assert!(!cmdline_names_vm(&vm, "quarry-build-b1"));
        let guest = cmd(&["qemu", "-name", "guest=quarry-build-b1-1,debug-threads=on"]);
        assert!(cmdline_names_vm(&guest, "quarry-build-b1-1"));
        // Mentioning the name elsewhere (a shell, a grep) is not being the VM.
        let grep = cmd(&["grep", "quarry-build-b1-1", "/var/log/x"]);
        assert!(!cmdline_names_vm(&grep, "quarry-build-b1-1"));
        assert!(!cmdline_names_vm(
            &cmd(&["qemu", "-name"]),
            "quarry-build-b1-1"
        ));
    }

    #[tokio::test]
    async fn a_recycled_pid_is_not_killed_and_plain_dirs_are_left_alone() {
        let root = tempfile::tempdir().unwrap();
        // A live process that is not a VM, recorded as if it were one (a recycled pid).
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(sleeper.id()).unwrap();
        let start = process::read_stat(pid).unwrap().start_time;
        process::write_pid_file(&root.path().join("b1-1.pid"), pid, start).unwrap();
        std::fs::create_dir(root.path().join("b1-1")).unwrap();
        std::fs::write(root.path().join("b1-1").join(QEMU_LOG_FILE), "").unwrap();
        // A popen work directory: no VM files, no VM.
        std::fs::create_dir(root.path().join("p1-1")).unwrap();
        let stopped = reap(root.path(), |_| false).await.unwrap();
        assert_eq!(stopped, 0);
        assert!(
            sleeper.try_wait().unwrap().is_none(),
            "the recycled pid was killed"
        );
        assert!(!root.path().join("b1-1").exists(), "the VM dir is removed");
        assert!(!root.path().join("b1-1.pid").exists());
        assert!(root.path().join("p1-1").exists(), "the popen dir is kept");
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    }
}
