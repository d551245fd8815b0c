//! `/proc/<pid>/mountinfo`: where a directory lives as a filesystem and a path inside it, which
//! is how a process in another mount namespace (a runc RUN step after `pivot_root`) shows its
//! root: `85 64 254:0 /w/builds/b1-1/storage/vfs/dir/abc / rw - ext4 /dev/vda rw`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// A directory as `major:minor` of its filesystem and its path from that filesystem's root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FsPath {
    /// `major:minor`.
    pub(super) dev: String,
    /// The path from the filesystem's root.
    pub(super) path: PathBuf,
}

/// The fields of one `/proc/<pid>/mountinfo` line that we use.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Mount {
    /// `major:minor` of the filesystem.
    pub(super) dev: String,
    /// The mounted directory, from the filesystem's root.
    pub(super) root: PathBuf,
    /// Where it is mounted.
    pub(super) mount_point: PathBuf,
}

/// `path` as its filesystem and the path from that filesystem's root, from our `mountinfo`: the
/// longest mount point holding it (the last one listed, on a stacked mount point).
pub(super) fn fs_path(path: &Path, own_mountinfo: &str) -> Option<FsPath> {
    let mount = own_mountinfo
        .lines()
        .filter_map(parse_mount)
        .filter(|m| path.starts_with(&m.mount_point))
        .fold(None::<Mount>, |best, m| match best {
            Some(b) if b.mount_point.as_os_str().len() > m.mount_point.as_os_str().len() => Some(b),
            _ => Some(m),
        })?;
    let rest = path.strip_prefix(&mount.mount_point).ok()?;
    Some(FsPath {
        dev: mount.dev,
        path: mount.root.join(rest),
    })
}

/// `id parent major:minor root mount-point options...`; paths escape space, tab, newline and
/// backslash as `\ooo`.
pub(super) fn parse_mount(line: &str) -> Option<Mount> {
    let mut fields = line.split(' ');
    let dev = fields.nth(2)?.to_owned();
    let root = unescape(fields.next()?);
    let mount_point = unescape(fields.next()?);
    Some(Mount {
        dev,
        root,
        mount_point,
    })
}

fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let line = "85 64 254:0 /tmp/my\\040dir/rootfs / rw,relatime - ext4 /dev/vda rw";
        assert_eq!(
            parse_mount(line),
            Some(Mount {
                dev: "254:0".into(),
                root: PathBuf::from("/tmp/my dir/rootfs"),
                mount_point: PathBuf::from("/"),
            })
        );
        assert_eq!(unescape("a\\134b\\0"), PathBuf::from("a\\b\\0"));
        assert_eq!(parse_mount("garbage"), None);
    }

    #[test]
    fn a_path_maps_to_the_filesystem_of_its_longest_mount_point() {
        let own = "27 1 254:0 / / rw - ext4 /dev/vda rw\n\
                   30 27 0:50 /sub /data rw - tmpfs tmpfs rw\n\
                   31 27 0:51 / /dat rw - tmpfs tmpfs rw\n";
        let got = fs_path(Path::new("/data/builds/b1-1"), own).unwrap();
        assert_eq!(got.dev, "0:50");
        assert_eq!(got.path, PathBuf::from("/sub/builds/b1-1"));
        assert_eq!(fs_path(Path::new("/w/b1-1"), own).unwrap().dev, "254:0");
    }
}
