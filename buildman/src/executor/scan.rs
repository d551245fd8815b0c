//! Every process of one build, found by scanning `/proc`.
//!
//! A build's processes do not all stay in the agent's process group: the agent starts its private
//! podman service in a group of its own, and buildah runs each RUN step either in a session of
//! its own inside a new mount namespace (runc) or chrooted into the build's storage (chroot
//! isolation). When the agent is SIGKILLed, or buildman dies and a new one reaps what it left,
//! nothing else stops them. So the executor looks for them by what ties a process to the build;
//! see [`Trace::scan`].
//!
//! Why not a cgroup per build, which would hold every descendant by construction: the hosts we
//! run on have a hybrid cgroup layout (v1 controllers, plus a v2 hierarchy at
//! `/sys/fs/cgroup/unified` with no controllers), PID 1 is not systemd, so buildman gets no
//! delegated subtree to create cgroups in; and podman (`--cgroup-manager cgroupfs`) and runc move
//! container processes into cgroups of their own anyway. `/proc` reads the same on every layout.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use super::mountinfo::{self, FsPath};
use super::process::{self, ProcStat};

/// One process, named by pid and start time (a pid alone may be reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Recorded {
    /// The pid.
    pub(super) pid: i32,
    /// Its start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub(super) start_time: u64,
}

/// What ties processes to one build.
#[derive(Clone, Debug)]
pub(super) struct Trace {
    build_uuid: String,
    /// `QUARRY_WORK_DIR` as the executor handed it to the agent.
    work_dir: PathBuf,
    /// The work directory and any scratch directory, as given and canonical.
    roots: Vec<PathBuf>,
    /// `roots` as a filesystem and a path inside it, as mount namespaces other than ours see them.
    fs_roots: Vec<FsPath>,
    /// The agent's process group (its leader's pid and start time).
    group: Option<Recorded>,
    /// The agent's podman service, from its record in the work directory.
    service: Option<Recorded>,
}

impl Trace {
    /// The processes of build `build_uuid` working in `work_dir`; `extra_roots` are directories
    /// outside it that only this build uses (the podman run root in `/tmp`). `/` and relative
    /// paths are ignored: they would tie every process to the build.
    pub(super) fn new(
        build_uuid: &str,
        work_dir: &Path,
        group: Option<Recorded>,
        service: Option<Recorded>,
        extra_roots: &[PathBuf],
    ) -> Trace {
        let mut roots: Vec<PathBuf> = Vec::new();
        for root in std::iter::once(work_dir).chain(extra_roots.iter().map(PathBuf::as_path)) {
            let canonical = std::fs::canonicalize(root).ok();
            for path in std::iter::once(root.to_path_buf()).chain(canonical) {
                if path.is_absolute() && path.parent().is_some() && !roots.contains(&path) {
                    roots.push(path);
                }
            }
        }
        let own_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let fs_roots = roots
            .iter()
            .filter_map(|r| mountinfo::fs_path(r, &own_mounts))
            .collect();
        Trace {
            build_uuid: build_uuid.to_owned(),
            work_dir: work_dir.to_path_buf(),
            roots,
            fs_roots,
            group,
            service,
        }
    }

    /// The live processes of the build: every process that
    /// - is in the agent's process group, or is the recorded podman service;
    /// - has the work directory (or a scratch directory) on its command line;
    /// - has its root or working directory inside one (chrooted RUN steps, and, as the price of
    ///   robustness, a shell an operator left in a work directory);
    /// - has `QUARRY_WORK_DIR=<work dir>` in its environment, or `BUILD_UUID=<uuid>` with no
    ///   `QUARRY_WORK_DIR` (another attempt of the same build has its own work directory and is
    ///   spared);
    /// - lives in another mount namespace whose root is inside one (runc RUN steps after
    ///   `pivot_root`, whose root link reads `/` from here);
    /// - or descends from one of those.
    ///
    /// Never this process, its ancestors or PID 1. Zombies are left out: they cannot be killed
    /// and hold nothing open.
    pub(super) fn scan(&self) -> Vec<Recorded> {
        let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let own_mnt = std::fs::read_link("/proc/self/ns/mnt").ok();
        let procs = live_processes();
        let spared = ancestors(me, &procs);
        let group = self.group.filter(|g| group_is_recorded_one(*g, &procs));
        let mut matched: HashSet<i32> = procs
            .iter()
            .filter(|(pid, st)| {
                !spared.contains(pid) && self.ties(*pid, st, group, own_mnt.as_deref())
            })
            .map(|(pid, _)| *pid)
            .collect();
        loop {
            let before = matched.len();
            for (pid, st) in &procs {
                if matched.contains(&st.ppid) && !spared.contains(pid) {
                    matched.insert(*pid);
                }
            }
            if matched.len() == before {
                break;
            }
        }
        procs
            .iter()
            .filter(|(pid, _)| matched.contains(pid))
            .map(|(pid, st)| Recorded {
                pid: *pid,
                start_time: st.start_time,
            })
            .collect()
    }

    fn ties(
        &self,
        pid: i32,
        st: &ProcStat,
        group: Option<Recorded>,
        own_mnt: Option<&Path>,
    ) -> bool {
        if group.is_some_and(|g| st.pgrp == g.pid)
            || self
                .service
                .is_some_and(|s| s.pid == pid && s.start_time == st.start_time)
        {
            return true;
        }
        let dir = PathBuf::from(format!("/proc/{pid}"));
        if std::fs::read(dir.join("cmdline")).is_ok_and(|c| self.mentioned_in(&c)) {
            return true;
        }
        for link in ["root", "cwd"] {
            if std::fs::read_link(dir.join(link)).is_ok_and(|p| self.inside(&p)) {
                return true;
            }
        }
        if std::fs::read(dir.join("environ")).is_ok_and(|e| self.env_ties(&e)) {
            return true;
        }
        let other_ns = own_mnt
            .is_some_and(|own| std::fs::read_link(dir.join("ns/mnt")).is_ok_and(|m| m != own));
        other_ns
            && std::fs::read_to_string(dir.join("mountinfo"))
                .is_ok_and(|m| self.root_mount_ties(&m))
    }

    fn mentioned_in(&self, text: &[u8]) -> bool {
        self.roots
            .iter()
            .any(|r| mentions(text, r.as_os_str().as_bytes()))
    }

    /// `link` is a `/proc/<pid>/{root,cwd}` target; a removed directory reads `<path> (deleted)`.
    fn inside(&self, link: &Path) -> bool {
        let bytes = link.as_os_str().as_bytes();
        let path = Path::new(OsStr::from_bytes(
            bytes.strip_suffix(b" (deleted)").unwrap_or(bytes),
        ));
        self.roots.iter().any(|r| path.starts_with(r))
    }

    fn env_ties(&self, environ: &[u8]) -> bool {
        const WORK_VAR: &[u8] = b"QUARRY_WORK_DIR=";
        let mut has_work_var = false;
        let uuid_var = format!("BUILD_UUID={}", self.build_uuid);
        let mut has_uuid = false;
        for entry in environ.split(|b| *b == 0) {
            if let Some(value) = entry.strip_prefix(WORK_VAR) {
                if value == self.work_dir.as_os_str().as_bytes() {
                    return true;
                }
                has_work_var = true;
            }
            has_uuid |= entry == uuid_var.as_bytes();
        }
        has_uuid && !has_work_var
    }

    fn root_mount_ties(&self, mountinfo: &str) -> bool {
        let Some((line, root)) = mountinfo
            .lines()
            .rev()
            .filter_map(|l| Some((l, mountinfo::parse_mount(l)?)))
            .find(|(_, m)| m.mount_point == Path::new("/"))
        else {
            return false;
        };
        // An overlay root names its directories in the super block options (after " - ").
        let options = line.split_once(" - ").map_or("", |(_, o)| o);
        self.fs_roots
            .iter()
            .any(|f| f.dev == root.dev && root.root.starts_with(&f.path))
            || self.mentioned_in(options.as_bytes())
    }
}

/// Whether `needle` (an absolute path) occurs in `text` as a whole path: not followed by a byte
/// that would continue its last name (`/b/u-1` is not in `/b/u-10`), not preceded by one that
/// would extend its first (`/x/b` is not in `/y/x/b`).
fn mentions(text: &[u8], needle: &[u8]) -> bool {
    let name_byte = |b: &u8| b.is_ascii_alphanumeric() || b"._-".contains(b);
    if needle.is_empty() || text.len() < needle.len() {
        return false;
    }
    text.windows(needle.len()).enumerate().any(|(i, w)| {
        w == needle
            && (i == 0 || !name_byte(&text[i - 1]))
            && text.get(i + needle.len()).is_none_or(|b| !name_byte(b))
    })
}

/// Every process in `/proc` but PID 1 and zombies, with its stat.
fn live_processes() -> Vec<(i32, ProcStat)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid > 1)
        .filter_map(|pid| Some((pid, process::read_stat(pid)?)))
        .filter(|(_, st)| st.state != 'Z')
        .collect()
}

/// `pid` and its ancestors among `procs`.
fn ancestors(pid: i32, procs: &[(i32, ProcStat)]) -> HashSet<i32> {
    let mut out = HashSet::from([pid]);
    let mut next = pid;
    while let Some((_, st)) = procs.iter().find(|(p, _)| *p == next) {
        if !out.insert(st.ppid) {
            break;
        }
        next = st.ppid;
    }
    out
}

/// Whether a process group recorded as `g` may still be that group: a live process with the
/// leader's pid but another start time means the group is gone and the number reused (the kernel
/// does not reuse a pid while a group of that id has members).
fn group_is_recorded_one(g: Recorded, procs: &[(i32, ProcStat)]) -> bool {
    g.pid > 1
        && procs
            .iter()
            .find(|(pid, _)| *pid == g.pid)
            .is_none_or(|(_, st)| g.start_time == 0 || st.start_time == g.start_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(work_dir: &str) -> Trace {
        Trace::new("b1", Path::new(work_dir), None, None, &[])
    }

    #[test]
    fn mentions_needs_a_whole_path() {
        let dir = b"/w/builds/b1-1";
        assert!(mentions(b"podman\0--root\0/w/builds/b1-1/storage\0", dir));
        assert!(mentions(b"unix:///w/builds/b1-1/podman.sock", dir));
        assert!(mentions(b"--root=/w/builds/b1-1", dir));
        assert!(!mentions(b"--root\0/w/builds/b1-10/storage", dir), "b1-10");
        assert!(!mentions(b"/w/builds/b1-1.log", dir), "the kept log");
        assert!(!mentions(b"/v/w/builds/b1-1/storage", dir), "another tree");
        assert!(!mentions(b"/w/builds", dir));
        assert!(!mentions(b"anything", b""));
    }

    #[test]
    fn env_ties_spare_another_attempt_of_the_same_build() {
        let t = trace("/w/builds/b1-1");
        assert!(t.env_ties(b"PATH=/bin\0QUARRY_WORK_DIR=/w/builds/b1-1\0BUILD_UUID=b1\0"));
        assert!(
            !t.env_ties(b"QUARRY_WORK_DIR=/w/builds/b1-2\0BUILD_UUID=b1\0"),
            "attempt 2"
        );
        assert!(t.env_ties(b"HOME=/\0BUILD_UUID=b1\0"), "uuid alone");
        assert!(!t.env_ties(b"BUILD_UUID=b10\0"));
        assert!(!t.env_ties(b""));
    }

    #[test]
    fn root_and_cwd_links_inside_a_root_tie_even_when_deleted() {
        let t = trace("/w/builds/b1-1");
        assert!(t.inside(Path::new("/w/builds/b1-1/storage/vfs/dir/abc")));
        assert!(t.inside(Path::new(
            "/w/builds/b1-1/tmp/buildah1/mnt/rootfs (deleted)"
        )));
        assert!(!t.inside(Path::new("/w/builds/b1-10")));
        assert!(!t.inside(Path::new("/")));
    }

    #[test]
    fn slash_and_relative_roots_are_ignored() {
        let t = Trace::new(
            "b1",
            Path::new("/w/b1-1"),
            None,
            None,
            &[PathBuf::from("/"), PathBuf::from("tmp/x")],
        );
        assert_eq!(t.roots, [PathBuf::from("/w/b1-1")]);
    }

    #[test]
    fn a_pivoted_root_ties_by_filesystem_path_or_overlay_options() {
        let mut t = trace("/w/builds/b1-1");
        t.fs_roots = vec![FsPath {
            dev: "254:0".into(),
            path: PathBuf::from("/w/builds/b1-1"),
        }];
        // What a runc RUN step's mountinfo shows: its old root under /old, its root last.
        let pivoted = "65 85 254:0 / /old rw - ext4 /dev/vda rw\n\
                       85 64 254:0 /w/builds/b1-1/storage/vfs/dir/abc / rw - ext4 /dev/vda rw\n";
        assert!(t.root_mount_ties(pivoted));
        let other_dev = pivoted.replace("85 64 254:0", "85 64 0:99");
        assert!(
            !t.root_mount_ties(&other_dev),
            "same path, other filesystem"
        );
        let overlay =
            "90 64 0:60 / / rw - overlay overlay rw,lowerdir=/w/builds/b1-1/storage/l/A\n";
        assert!(t.root_mount_ties(overlay));
        assert!(!t.root_mount_ties("27 1 254:0 / / rw - ext4 /dev/vda rw\n"));
    }

    #[test]
    fn a_reused_leader_pid_is_not_the_recorded_group() {
        let st = |start_time| ProcStat {
            state: 'S',
            ppid: 1,
            pgrp: 40,
            start_time,
        };
        let procs = [(40, st(7)), (41, st(9))];
        let g = |start_time| Recorded {
            pid: 40,
            start_time,
        };
        assert!(group_is_recorded_one(g(7), &procs));
        assert!(!group_is_recorded_one(g(8), &procs));
        assert!(
            group_is_recorded_one(
                Recorded {
                    pid: 42,
                    start_time: 1
                },
                &procs
            ),
            "leader gone"
        );
        assert!(!group_is_recorded_one(
            Recorded {
                pid: 1,
                start_time: 0
            },
            &procs
        ));
    }

    #[test]
    fn scan_finds_a_child_by_its_command_line_and_its_descendants() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("b1-1");
        std::fs::create_dir(&work).unwrap();
        // sh's command line names the work dir; its child sleep does not.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait", "sh"])
            .arg(work.join("storage"))
            .current_dir("/")
            .spawn()
            .unwrap();
        let sh = i32::try_from(child.id()).unwrap();
        let t = Trace::new("b1", &work, None, None, &[]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let found = loop {
            let found: Vec<i32> = t.scan().iter().map(|r| r.pid).collect();
            if found.len() >= 2 || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        for pid in &found {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        child.wait().unwrap();
        assert!(found.contains(&sh), "{found:?}");
        assert_eq!(found.len(), 2, "sh and its sleep: {found:?}");
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(!found.contains(&me));
    }
}
