//! Process plumbing for the popen executor: read `/proc/<pid>/stat`, signal the agent's process
//! group, record that group in a pid file so that a later buildman can find it after a crash, and
//! remove a work directory. Finding and killing every process of a build is [`super::sweep`].
//!
//! Liveness is read from `/proc/<pid>/stat` rather than with `kill(pid, 0)`: a zombie still
//! answers `kill`, and orphaned zombies linger when PID 1 does not reap them (as in some
//! containers), which would make every wait time out.

use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How long an agent gets between SIGTERM and SIGKILL.
pub(super) const GRACE: Duration = Duration::from_secs(5);

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ProcStat {
    /// One-letter state; `Z` is a zombie.
    pub(super) state: char,
    /// Parent process id.
    pub(super) ppid: i32,
    /// Process group id.
    pub(super) pgrp: i32,
    /// Start time in clock ticks after boot: with the pid, it identifies one process.
    pub(super) start_time: u64,
}

/// Parse a `/proc/<pid>/stat` line. The command name may hold spaces and parentheses, so the
/// fields are counted from the last `)`.
pub(super) fn parse_stat(line: &str) -> Option<ProcStat> {
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) pgrp(2) ... starttime(19), i.e. fields 3, 4, 5 and 22 of
    // proc(5).
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The stat of `pid`, or `None` when it does not exist.
pub(super) fn read_stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Send `signal` to group `pgid`; a group that no longer exists is not an error.
pub(super) fn signal_group(pgid: i32, signal: Signal) -> Result<(), Errno> {
    // A pgid of 0 or 1 would signal our own group or init: never a worker's group.
    if pgid <= 1 {
        return Err(Errno::EINVAL);
    }
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Write `<pid> <start time>` to `path`, so a restarted manager can find the group.
pub(super) fn write_pid_file(path: &Path, pid: i32, start_time: u64) -> std::io::Result<()> {
    std::fs::write(path, format!("{pid} {start_time}\n"))
}

/// Read a pid file written by [`write_pid_file`].
pub(super) fn read_pid_file(path: &Path) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Remove `path` recursively (absent is fine), retrying once after a short sleep: files of a
/// just-killed process tree can be briefly busy. Runs on the blocking pool: a vfs storage tree
/// can hold many thousands of files.
pub(super) async fn remove_dir(path: &Path) -> std::io::Result<()> {
    for attempt in 0..2 {
        let owned = path.to_path_buf();
        let result = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&owned) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await
        .unwrap_or_else(|join| Err(std::io::Error::other(join)));
        match result {
            Ok(()) => return Ok(()),
            Err(e) if attempt == 1 => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
    Ok(())
}

/// Remove a file; absent is fine.
pub(super) fn remove_file(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (a (b) c) S 1 4240 4240 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 \
                    1000 10 18446744073709551615";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                state: 'S',
                ppid: 1,
                pgrp: 4240,
                start_time: 987_654
            }
        );
        assert_eq!(parse_stat("12 (x) Z"), None);
    }

    #[test]
    fn own_process_is_readable_and_alive() {
        let me = i32::try_from(std::process::id()).unwrap();
        let stat = read_stat(me).unwrap();
        assert_ne!(stat.state, 'Z');
        let parent = i32::try_from(std::os::unix::process::parent_id()).unwrap();
        assert_eq!(stat.ppid, parent);
        assert!(read_stat(-1).is_none());
    }

    #[test]
    fn refuses_to_signal_our_own_group_or_init() {
        assert_eq!(signal_group(0, Signal::SIGTERM), Err(Errno::EINVAL));
        assert_eq!(signal_group(1, Signal::SIGTERM), Err(Errno::EINVAL));
    }

    #[test]
    fn pid_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pid");
        let me = i32::try_from(std::process::id()).unwrap();
        write_pid_file(&path, me, 987).unwrap();
        assert_eq!(read_pid_file(&path), Some((me, 987)));
        remove_file(&path).unwrap();
        remove_file(&path).unwrap();
    }
}
