//! The pseudo filesystems PID 1 mounts before anything else.
//!
//! Stage 1 (busybox `switch_root`) may or may not leave some of them mounted, so each is mounted
//! only when `/proc/self/mounts` does not list its mount point already, and `EBUSY` counts as
//! "already there".

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;

/// One mount `quarry-init` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountSpec {
    /// Filesystem type (also used as the source name).
    pub fstype: &'static str,
    /// Mount point.
    pub target: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// Filesystem options.
    pub data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In order: a later mount point may live on an earlier one (`/dev/pts` on `/dev`).
pub const MOUNTS: &[MountSpec] = &[
    MountSpec {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    MountSpec {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    MountSpec {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    MountSpec {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "gid=5,mode=620,ptmxmode=666",
    },
    MountSpec {
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    MountSpec {
        fstype: "tmpfs",
        target: "/run",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
    },
    MountSpec {
        fstype: "tmpfs",
        target: "/tmp",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    MountSpec {
        fstype: "cgroup2",
        target: "/sys/fs/cgroup",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
];

/// A mount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount point could not be created.
    #[error("cannot create mount point {target:?}")]
    MountPoint {
        /// The directory.
        target: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// mount(2) failed.
    #[error("cannot mount {fstype} on {target}: check the guest kernel supports it")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount point.
        target: &'static str,
        /// The cause.
        #[source]
        source: Errno,
    },
}

/// What [`mount_all`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MountReport {
    /// Mount points mounted now.
    pub mounted: Vec<&'static str>,
    /// Mount points that were mounted already.
    pub already: Vec<&'static str>,
}

/// Mount every [`MOUNTS`] entry that is missing.
pub fn mount_all() -> Result<MountReport, MountError> {
    let mut report = MountReport::default();
    for spec in MOUNTS {
        // Re-read each time: /proc/self/mounts exists only once /proc is mounted.
        let present = std::fs::read_to_string("/proc/self/mounts")
            .map(|text| mount_points(&text))
            .unwrap_or_default();
        if present.contains(spec.target) {
            report.already.push(spec.target);
            continue;
        }
        std::fs::create_dir_all(spec.target).map_err(|source| MountError::MountPoint {
            target: PathBuf::from(spec.target),
            source,
        })?;
        match nix::mount::mount(
            Some(spec.fstype),
            Path::new(spec.target),
            Some(spec.fstype),
            spec.flags,
            Some(spec.data),
        ) {
            Ok(()) => report.mounted.push(spec.target),
            Err(Errno::EBUSY) => report.already.push(spec.target),
            Err(source) => {
                return Err(MountError::Mount {
                    fstype: spec.fstype,
                    target: spec.target,
                    source,
                });
            }
        }
    }
    Ok(report)
}

/// The mount points listed in a `/proc/self/mounts` text, with its octal escapes (`\040` for a
/// space) decoded.
pub fn mount_points(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(unescape)
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_parsed_and_unescaped() {
        let text = "overlay / overlay rw,lowerdir=/lower 0 0\n\
                    proc /proc proc rw,nosuid 0 0\n\
                    /dev/vdb /scratch ext4 rw 0 0\n\
                    tmpfs /mnt/with\\040space tmpfs rw 0 0\n";
        let points = mount_points(text);
        for p in ["/", "/proc", "/scratch", "/mnt/with space"] {
            assert!(points.contains(p), "{p}: {points:?}");
        }
        assert!(!points.contains("/sys"));
    }

    #[test]
    fn nested_mounts_come_after_their_parent() {
        let index = |t: &str| MOUNTS.iter().position(|m| m.target == t).unwrap();
        assert!(index("/dev") < index("/dev/pts"));
        assert!(index("/dev") < index("/dev/shm"));
        assert!(index("/sys") < index("/sys/fs/cgroup"));
        assert_eq!(index("/proc"), 0);
    }
}
