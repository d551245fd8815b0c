//! The stage-1 initramfs: a gzip'd `newc` cpio archive of static busybox, the kernel modules
//! stage 1 loads (with their dependencies and a matching `modules.dep`) and `/init`.
//!
//! Written here rather than with `cpio` + `find | sort` so that the archive is reproducible by
//! construction (sorted entries, fixed mtimes, owner 0, no host inode numbers) and can hold
//! `/dev/console` without root; no maintained crate writes `newc` archives.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;

/// Modules stage 1 loads; their dependencies are added from `modules.dep`.
pub const STAGE1_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "qemu_fw_cfg",
    "squashfs",
    "overlay",
];

/// Why the initramfs could not be made.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    /// A module is not in `modules.dep`.
    #[error(
        "kernel module {0} is not in the kernel package's modules.dep (is it built in or renamed?)"
    )]
    UnknownModule(String),
    /// Reading an input file failed.
    #[error("reading {path:?} for the initramfs failed")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing the archive failed.
    #[error("writing the initramfs {path:?} failed")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What goes into the initramfs.
#[derive(Debug)]
pub struct InitrdSpec<'a> {
    /// The static busybox binary.
    pub busybox: &'a Path,
    /// The kernel's `lib/modules/<release>` directory (with a `modules.dep`).
    pub modules_dir: &'a Path,
    /// The kernel release (`uname -r`).
    pub release: &'a str,
    /// The `/init` script.
    pub init_script: &'a str,
    /// Fixed mtime of every entry.
    pub mtime: u64,
}

/// Writes the gzip'd cpio to `out`; returns the module paths it holds (relative to
/// `lib/modules/<release>`).
pub fn write_initrd(spec: &InitrdSpec<'_>, out: &Path) -> Result<Vec<String>, InitrdError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| InitrdError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let dep_text =
        String::from_utf8_lossy(&read(&spec.modules_dir.join("modules.dep"))?).into_owned();
    let deps = parse_modules_dep(&dep_text);
    let modules = closure(&deps, STAGE1_MODULES)?;

    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for dir in [
        "bin", "dev", "lib", "lower", "newroot", "proc", "sbin", "scratch", "sys", "usr",
        "usr/bin", "usr/sbin",
    ] {
        entries.insert(dir.to_string(), Entry::Dir);
    }
    // The kernel opens /dev/console for PID 1 before /init can mount devtmpfs.
    entries.insert("dev/console".into(), Entry::CharDev(5, 1, 0o600));
    entries.insert(
        "bin/busybox".into(),
        Entry::File(read(spec.busybox)?, 0o755),
    );
    entries.insert("bin/sh".into(), Entry::Symlink("busybox".into()));
    entries.insert(
        "init".into(),
        Entry::File(spec.init_script.as_bytes().to_vec(), 0o755),
    );
    let base = format!("lib/modules/{}", spec.release);
    let mut dep_out = String::new();
    for module in &modules {
        let data = read(&spec.modules_dir.join(module))?;
        add_parents(&mut entries, &format!("{base}/{module}"));
        entries.insert(format!("{base}/{module}"), Entry::File(data, 0o644));
        let needs = deps.get(module).map(Vec::as_slice).unwrap_or_default();
        dep_out.push_str(&format!("{module}:"));
        for d in needs {
            dep_out.push(' ');
            dep_out.push_str(d);
        }
        dep_out.push('\n');
    }
    entries.insert(
        format!("{base}/modules.dep"),
        Entry::File(dep_out.into_bytes(), 0o644),
    );

    let write_err = |source| InitrdError::Write {
        path: out.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(out).map_err(write_err)?;
    // GzEncoder writes mtime 0 and no file name: the gzip header is reproducible.
    let mut gz = GzEncoder::new(std::io::BufWriter::new(file), Compression::best());
    write_cpio(&mut gz, &entries, spec.mtime).map_err(write_err)?;
    let mut buf = gz.finish().map_err(write_err)?;
    buf.flush().map_err(write_err)?;
    Ok(modules)
}

/// One archive member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A directory (mode 0755).
    Dir,
    /// A regular file with content and permission bits.
    File(Vec<u8>, u32),
    /// A symbolic link to the target.
    Symlink(String),
    /// A character device: major, minor, permission bits.
    CharDev(u32, u32, u32),
}

fn add_parents(entries: &mut BTreeMap<String, Entry>, path: &str) {
    let mut prefix = String::new();
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        entries.entry(prefix.clone()).or_insert(Entry::Dir);
    }
}

/// Writes `entries` (sorted by path, so parents precede children) as a `newc` archive with
/// owner 0, one fixed mtime and sequential inode numbers, then the trailer.
pub fn write_cpio(
    w: &mut impl Write,
    entries: &BTreeMap<String, Entry>,
    mtime: u64,
) -> std::io::Result<()> {
    let mut ino = 0u64;
    for (path, entry) in entries {
        ino += 1;
        let (mode, nlink, data, rdev): (u32, u64, &[u8], (u32, u32)) = match entry {
            Entry::Dir => (0o040_755, 2, &[], (0, 0)),
            Entry::File(data, perm) => (0o100_000 | perm, 1, data, (0, 0)),
            Entry::Symlink(target) => (0o120_777, 1, target.as_bytes(), (0, 0)),
            Entry::CharDev(major, minor, perm) => (0o020_000 | perm, 1, &[], (*major, *minor)),
        };
        header(w, path, ino, mode, nlink, mtime, data.len() as u64, rdev)?;
        w.write_all(data)?;
        pad4(w, data.len())?;
    }
    header(w, "TRAILER!!!", 0, 0, 1, 0, 0, (0, 0))
}

#[allow(clippy::too_many_arguments)] // one field per cpio header field
fn header(
    w: &mut impl Write,
    name: &str,
    ino: u64,
    mode: u32,
    nlink: u64,
    mtime: u64,
    size: u64,
    rdev: (u32, u32),
) -> std::io::Result<()> {
    let namesize = name.len() + 1;
    write!(
        w,
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
         {dmaj:08x}{dmin:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        dmaj = 0,
        dmin = 0,
        rmaj = rdev.0,
        rmin = rdev.1,
        check = 0,
    )?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    // The 110-byte header plus the name is padded to a multiple of 4.
    pad4(w, 110 + namesize)
}

fn pad4(w: &mut impl Write, len: usize) -> std::io::Result<()> {
    let pad = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..pad])
}

/// `modules.dep` as a map from module path to its dependencies' paths.
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(module, deps)| {
            let deps = deps.split_whitespace().map(str::to_string).collect();
            (module.trim().to_string(), deps)
        })
        .collect()
}

/// The module paths for `names` (module names, `-` and `_` equivalent) and everything they
/// depend on, sorted.
pub fn closure(
    deps: &BTreeMap<String, Vec<String>>,
    names: &[&str],
) -> Result<Vec<String>, InitrdError> {
    let by_name: BTreeMap<String, &String> =
        deps.keys().map(|path| (module_name(path), path)).collect();
    let mut out = BTreeSet::new();
    for name in names {
        let path = by_name
            .get(&name.replace('-', "_"))
            .ok_or_else(|| InitrdError::UnknownModule(name.to_string()))?;
        out.insert((*path).clone());
        // modules.dep lists the transitive dependencies on each line.
        out.extend(deps[*path].iter().cloned());
    }
    Ok(out.into_iter().collect())
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    const DEP: &str = "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/fs/overlayfs/overlay.ko:
kernel/drivers/hid/hid-keytouch.ko: kernel/drivers/hid/hid.ko
";

    #[test]
    fn closure_adds_dependencies_and_normalises_names() {
        let deps = parse_modules_dep(DEP);
        let got = closure(&deps, &["virtio_net", "overlay", "hid_keytouch"]).unwrap();
        assert_eq!(
            got,
            vec![
                "kernel/drivers/hid/hid-keytouch.ko",
                "kernel/drivers/hid/hid.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/fs/overlayfs/overlay.ko",
                "kernel/net/core/failover.ko",
            ]
        );
        let err = closure(&deps, &["squashfs"]).unwrap_err();
        assert!(err.to_string().contains("squashfs"), "{err}");
    }

    fn sample_entries() -> BTreeMap<String, Entry> {
        let mut e = BTreeMap::new();
        e.insert("bin".to_string(), Entry::Dir);
        e.insert(
            "bin/busybox".to_string(),
            Entry::File(b"#!x\n".to_vec(), 0o755),
        );
        e.insert("bin/sh".to_string(), Entry::Symlink("busybox".into()));
        e.insert("dev".to_string(), Entry::Dir);
        e.insert("dev/console".to_string(), Entry::CharDev(5, 1, 0o600));
        e.insert("init".to_string(), Entry::File(b"hello".to_vec(), 0o755));
        e
    }

    /// `cpio -itv` of an archive: the real tool must read what we write.
    fn list(archive: &[u8]) -> String {
        let mut child = Command::new("cpio")
            .args(["-itv", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cpio is installed (scripts/install-deps.sh)");
        child.stdin.take().unwrap().write_all(archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn cpio_archive_is_read_by_the_cpio_tool() {
        let mut buf = Vec::new();
        write_cpio(&mut buf, &sample_entries(), 1_700_000_000).unwrap();
        assert_eq!(buf.len() % 4, 0);
        let listing = list(&buf);
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 6, "{listing}");
        assert!(lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" bin"));
        assert!(lines[1].starts_with("-rwxr-xr-x") && lines[1].ends_with(" bin/busybox"));
        assert!(lines[2].starts_with("lrwxrwxrwx") && lines[2].ends_with("bin/sh -> busybox"));
        assert!(lines[4].starts_with("crw-------") && lines[4].contains("5,"));
        assert!(
            lines
                .iter()
                .all(|l| l.contains("root") && l.contains("2023"))
        );
    }

    #[test]
    fn cpio_archive_is_byte_for_byte_reproducible() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_cpio(&mut a, &sample_entries(), 7).unwrap();
        write_cpio(&mut b, &sample_entries(), 7).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn initrd_holds_busybox_init_modules_and_a_filtered_modules_dep() {
        let dir = tempfile::tempdir().unwrap();
        let mods = dir.path().join("lib/modules/6.1.0-test");
        let mut deps = String::new();
        for name in STAGE1_MODULES
            .iter()
            .chain(&["virtio", "virtio_ring", "unrelated"])
        {
            let rel = format!("kernel/m/{name}.ko");
            std::fs::create_dir_all(mods.join("kernel/m")).unwrap();
            std::fs::write(mods.join(&rel), name.as_bytes()).unwrap();
            let dep = if name.starts_with("virtio_") && *name != "virtio_ring" {
                " kernel/m/virtio.ko kernel/m/virtio_ring.ko"
            } else {
                ""
            };
            deps.push_str(&format!("{rel}:{dep}\n"));
        }
        std::fs::write(mods.join("modules.dep"), deps).unwrap();
        std::fs::write(dir.path().join("busybox"), b"bb").unwrap();
        let spec = InitrdSpec {
            busybox: &dir.path().join("busybox"),
            modules_dir: &mods,
            release: "6.1.0-test",
            init_script: "#!/bin/busybox sh\n",
            mtime: 1_700_000_000,
        };
        let out = dir.path().join("initrd.img");
        let modules = write_initrd(&spec, &out).unwrap();
        assert_eq!(modules.len(), STAGE1_MODULES.len() + 2);
        assert!(!modules.iter().any(|m| m.contains("unrelated")));
        let gz = std::fs::read(&out).unwrap();
        let mut cpio = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut cpio).unwrap();
        let listing = list(&cpio);
        for path in [
            " init",
            " bin/busybox",
            " dev/console",
            " lib/modules/6.1.0-test/kernel/m/overlay.ko",
            " lib/modules/6.1.0-test/modules.dep",
        ] {
            assert!(
                listing.lines().any(|l| l.ends_with(path)),
                "{path}: {listing}"
            );
        }
        let again = dir.path().join("again.img");
        write_initrd(&spec, &again).unwrap();
        assert_eq!(
            gz,
            std::fs::read(&again).unwrap(),
            "initrd is not reproducible"
        );
    }
}
