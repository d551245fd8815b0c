//! [`reap_orphans`]: probe QEMUs whose caller died (e.g. SIGKILLed while a KVM probe guest hung)
//! would otherwise live forever. They are found by their `-name quarry-probe-<pid>` and their
//! temporary directories by the `quarry-probe-<pid>-` prefix, where `<pid>` is the caller's.

use std::path::Path;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// The `-name` of a probe QEMU started by process `pid` (also its temp-dir prefix, plus `-`).
pub(crate) fn probe_name(pid: u32) -> String {
    format!("{NAME_PREFIX}{pid}")
}

/// What every probe's `-name` and temporary directory starts with.
const NAME_PREFIX: &str = "quarry-probe-";

/// Kills probe QEMUs (with their process groups) whose starting process is gone, and removes
/// probe temporary directories of gone processes; returns how many QEMUs it killed. Call it
/// before probing. Best effort: unreadable `/proc` entries are skipped. (A pid reused by an
/// unrelated process keeps its orphan alive until the next call after that process ends.)
pub fn reap_orphans() -> usize {
    let mut killed = 0;
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let Some(owner) = probe_owner(&cmdline) else {
                continue;
            };
            if alive(owner) {
                continue;
            }
            // Probe QEMUs lead their own process group (`vm::command`).
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() || !alive_pid(pid) {
                killed += 1;
            }
        }
    }
    remove_orphan_dirs(&std::env::temp_dir());
    killed
}

/// Removes `quarry-probe-<pid>-*` directories in `tmp` whose `<pid>` is not running.
fn remove_orphan_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name.to_str().and_then(dir_owner) else {
            continue;
        };
        if !alive(owner) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The owner pid in a probe temp-dir name `quarry-probe-<pid>-<random>`.
fn dir_owner(name: &str) -> Option<u32> {
    let (pid, _) = name.strip_prefix(NAME_PREFIX)?.split_once('-')?;
    pid.parse().ok()
}

/// The owner pid when `cmdline` (NUL-separated `/proc/<pid>/cmdline`) has
/// `-name quarry-probe-<pid>`.
fn probe_owner(cmdline: &[u8]) -> Option<u32> {
    let mut args = cmdline.split(|b| *b == 0);
    while let Some(arg) = args.next() {
        if arg == b"-name" {
            let value = std::str::from_utf8(args.next()?).ok()?;
            return value.strip_prefix(NAME_PREFIX)?.parse().ok();
        }
    }
    None
}

fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(alive_pid)
}

fn alive_pid(pid: i32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn owner_parsing() {
        assert_eq!(
            probe_owner(b"qemu-system-x86_64\0-name\0quarry-probe-42\0-M\0microvm\0"),
            Some(42)
        );
        assert_eq!(probe_owner(b"qemu\0-name\0quarry-build-42\0"), None);
        assert_eq!(probe_owner(b"qemu\0-name\0"), None);
        assert_eq!(probe_owner(b"sleep\x00100\x00"), None);
        assert_eq!(dir_owner("quarry-probe-77-a1B2c3"), Some(77));
        assert_eq!(dir_owner("quarry-probe-x-a1"), None);
        assert_eq!(dir_owner("quarry-boot-77-a1"), None);
        assert_eq!(probe_name(5), "quarry-probe-5");
    }

    /// A stand-in "probe QEMU" (bash with `-name quarry-probe-<dead pid>` in its argv) is
    /// killed; one naming a live owner is left alone; orphan temp dirs go.
    #[test]
    fn reaps_only_orphans() {
        let dead = {
            let mut c = Command::new("true").spawn().unwrap();
            c.wait().unwrap();
            c.id()
        };
        let spawn = |owner: u32| {
            Command::new("bash")
                // `read` is a builtin: bash stays the process with this argv.
                .args(["-c", "read -t 30 x", "_", "-name"])
                .arg(format!("quarry-probe-{owner}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut orphan = spawn(dead);
        let mut kept = spawn(std::process::id());
        // bash must have exec'd into its argv shape before we look.
        std::thread::sleep(Duration::from_millis(100));
        let tmp = std::env::temp_dir();
        let orphan_dir = tmp.join(format!("quarry-probe-{dead}-test"));
        let live_dir = tmp.join(format!("quarry-probe-{}-test", std::process::id()));
        std::fs::create_dir_all(&orphan_dir).unwrap();
        std::fs::create_dir_all(&live_dir).unwrap();
        assert!(reap_orphans() >= 1);
        let started = Instant::now();
        let status = orphan.wait().unwrap();
        assert!(!status.success());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            kept.try_wait().unwrap().is_none(),
            "a live owner's probe was killed"
        );
        assert!(!orphan_dir.exists());
        assert!(live_dir.exists());
        kept.kill().unwrap();
        kept.wait().unwrap();
        std::fs::remove_dir_all(&live_dir).unwrap();
    }
}
