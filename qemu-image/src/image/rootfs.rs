//! The root filesystem: a debootstrapped Debian tree (cached by package list), then the kernel's
//! modules and our two binaries on a copy of it, packed into a reproducible squashfs.

use std::path::{Path, PathBuf};

use super::run::{Cmd, RunError};

/// Module directories (below `lib/modules/<release>/kernel`) copied into the root filesystem so
/// that podman and the kernel can load netfilter, bridge, veth, ... on demand. Drivers for
/// hardware a QEMU guest never has are left out.
pub const ROOTFS_MODULE_DIRS: &[&str] = &[
    "arch",
    "block",
    "crypto",
    "fs",
    "lib",
    "mm",
    "net",
    "virt",
    "drivers/block",
    "drivers/char",
    "drivers/firmware",
    "drivers/md",
    "drivers/net",
    "drivers/virtio",
];

/// Where the agent goes in the image.
pub const AGENT_PATH: &str = "usr/local/bin/builder-agent";
/// Where stage 2 goes in the image.
pub const INIT_PATH: &str = "sbin/quarry-init";

/// Why the root filesystem could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A tool failed.
    #[error("{what} failed")]
    Tool {
        /// What was being done.
        what: &'static str,
        /// The failure.
        #[source]
        source: RunError,
    },
    /// A binary links libraries the image lacks.
    #[error(
        "{binary} in the image needs libraries it lacks: {}; add their Debian packages to \
         qemu-image/packages.txt",
        missing.join(", ")
    )]
    MissingLibraries {
        /// The binary, inside the image.
        binary: String,
        /// The missing sonames.
        missing: Vec<String>,
    },
    /// A file system step failed.
    #[error("{what} {path:?} failed")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn tool(what: &'static str) -> impl FnOnce(RunError) -> RootfsError {
    move |source| RootfsError::Tool { what, source }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError {
    let path = path.to_path_buf();
    move |source| RootfsError::Io { what, path, source }
}

/// `debootstrap --variant=minbase` of `suite` with `packages` into `tree` (which must not exist),
/// downloading through `debs`, then [`strip_tree`].
pub fn debootstrap(
    tree: &Path,
    suite: &str,
    packages: &[String],
    mirror: &str,
    debs: &Path,
) -> Result<(), RootfsError> {
    std::fs::create_dir_all(debs).map_err(io("creating", debs))?;
    Cmd::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", packages.join(",")))
        .arg(format!("--cache-dir={}", debs.display()))
        .arg(suite)
        .arg(tree)
        .arg(mirror)
        .output()
        .map_err(tool("debootstrap"))?;
    upgrade(tree, suite, mirror)?;
    strip_tree(tree)
}

/// The tree's apt sources: `suite` and `suite-updates` from `mirror`, `suite-security` from
/// Debian's security mirror.
pub fn sources_list(suite: &str, mirror: &str) -> String {
    format!(
        "deb {mirror} {suite} main\n\
         deb {mirror} {suite}-updates main\n\
         deb {SECURITY_MIRROR} {suite}-security main\n"
    )
}

/// Debian's security archive.
pub const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";

/// debootstrap installs from `suite` only: enables the security and updates suites in the tree
/// and upgrades it (apt's lists are removed again by [`strip_tree`]).
fn upgrade(tree: &Path, suite: &str, mirror: &str) -> Result<(), RootfsError> {
    let list = tree.join("etc/apt/sources.list");
    std::fs::write(&list, sources_list(suite, mirror)).map_err(io("writing", &list))?;
    Cmd::chroot(tree)
        .args(["apt-get", "update"])
        .output()
        .map_err(tool("apt-get update in the base tree"))?;
    Cmd::chroot(tree)
        .args(["apt-get", "-y", "--no-install-recommends", "upgrade"])
        .output()
        .map_err(tool("apt-get upgrade in the base tree"))?;
    Cmd::chroot(tree)
        .args(["apt-get", "clean"])
        .output()
        .map_err(tool("apt-get clean in the base tree"))?;
    Ok(())
}

/// Fails naming every shared library `binary` (a path inside `tree`) needs but the tree lacks,
/// as the tree's own `ldd` resolves them.
pub fn check_libraries(tree: &Path, binary: &str) -> Result<(), RootfsError> {
    let out = Cmd::chroot(tree)
        .args(["/usr/bin/ldd", binary])
        .text()
        .map_err(tool("ldd in the root filesystem"))?;
    let missing = missing_libraries(&out);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(RootfsError::MissingLibraries {
            binary: binary.to_string(),
            missing,
        })
    }
}

/// The `name => not found` libraries in `ldd` output.
pub fn missing_libraries(ldd: &str) -> Vec<String> {
    ldd.lines()
        .filter(|l| l.contains("not found"))
        .filter_map(|l| l.split("=>").next())
        .map(|name| name.trim().to_string())
        .collect()
}

/// Removes from a fresh tree what is big and useless in a VM that is never upgraded, or that
/// differs from one build to the next (logs, apt lists and caches, `*-old` backups, the host's
/// hostname, hosts and resolv.conf that debootstrap copies in). Keeps dpkg's status (the package
/// list) and every package's copyright file.
pub fn strip_tree(tree: &Path) -> Result<(), RootfsError> {
    for dir in [
        "var/log",
        "var/lib/apt/lists",
        "var/cache/apt",
        "usr/share/man",
        "usr/share/locale",
        "usr/share/info",
        "tmp",
        "var/tmp",
    ] {
        empty_dir(&tree.join(dir), &|_| false)?;
    }
    // Licence texts stay; changelogs, READMEs and examples go.
    empty_dir(&tree.join("usr/share/doc"), &|p: &Path| {
        p.file_name().is_some_and(|n| n == "copyright")
    })?;
    for file in [
        "var/cache/ldconfig/aux-cache",
        "var/cache/debconf/config.dat-old",
        "var/cache/debconf/templates.dat-old",
        "var/lib/dpkg/status-old",
        "var/lib/dpkg/diversions-old",
        "etc/machine-id",
        "var/lib/dbus/machine-id",
    ] {
        remove_file(&tree.join(file))?;
    }
    for (file, content) in [
        ("etc/hostname", "quarry\n"),
        (
            "etc/hosts",
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        ),
        // quarry-init writes the build's nameservers at boot.
        ("etc/resolv.conf", ""),
    ] {
        let path = tree.join(file);
        remove_file(&path)?;
        std::fs::write(&path, content).map_err(io("writing", &path))?;
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<(), RootfsError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", path)(e)),
        _ => Ok(()),
    }
}

/// Deletes everything below `dir` except files for which `keep` is true (and their parents).
/// Returns whether anything was kept.
fn empty_dir(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<bool, RootfsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io("reading", dir)(e)),
    };
    let mut kept = false;
    for entry in entries {
        let path = entry.map_err(io("reading", dir))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io("reading", &path))?;
        if meta.is_dir() {
            if empty_dir(&path, keep)? {
                kept = true;
            } else {
                std::fs::remove_dir(&path).map_err(io("removing", &path))?;
            }
        } else if keep(&path) {
            kept = true;
        } else {
            std::fs::remove_file(&path).map_err(io("removing", &path))?;
        }
    }
    Ok(kept)
}

/// `name=version` of every installed package in `tree`, sorted.
pub fn installed_packages(tree: &Path) -> Result<Vec<String>, RootfsError> {
    let text = Cmd::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            tree.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", "${db:Status-Abbrev}${Package}=${Version}\\n"])
        .text()
        .map_err(tool("dpkg-query (package list of the root filesystem)"))?;
    Ok(parse_installed(&text))
}

/// `ii name=version` lines (`dpkg-query` `db:Status-Abbrev` first) to sorted `name=version` of
/// the installed packages.
pub fn parse_installed(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ii "))
        .map(|l| l.trim().to_string())
        .collect();
    out.sort();
    out
}

/// The final tree at `tree`: a copy of `base`, the module subset of `kernel_modules`
/// (`lib/modules/<release>` of the unpacked kernel) with kmod's index, the two binaries stripped.
pub fn final_tree(
    base: &Path,
    tree: &Path,
    kernel_modules: &Path,
    release: &str,
    agent: &Path,
    init: &Path,
) -> Result<(), RootfsError> {
    // cp -a keeps owners, modes, hard links, xattrs and device nodes; about 1 s for 300 MB.
    Cmd::new("cp")
        .arg("-a")
        .arg(base)
        .arg(tree)
        .output()
        .map_err(tool("copying the base tree"))?;
    let dest = tree.join("lib/modules").join(release);
    std::fs::create_dir_all(dest.join("kernel")).map_err(io("creating", &dest))?;
    for dir in ROOTFS_MODULE_DIRS {
        let from = kernel_modules.join("kernel").join(dir);
        if !from.is_dir() {
            continue;
        }
        let to = dest.join("kernel").join(dir);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        Cmd::new("cp")
            .arg("-a")
            .arg(&from)
            .arg(&to)
            .output()
            .map_err(tool("copying kernel modules"))?;
    }
    for file in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let from = kernel_modules.join(file);
        if from.is_file() {
            std::fs::copy(&from, dest.join(file)).map_err(io("copying", &from))?;
        }
    }
    // The image's own depmod writes the binary indexes its kmod reads.
    Cmd::chroot(tree)
        .args(["/sbin/depmod", release])
        .output()
        .map_err(tool("depmod in the root filesystem"))?;
    for (from, to) in [(agent, AGENT_PATH), (init, INIT_PATH)] {
        let to = tree.join(to);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        Cmd::new("strip")
            .arg("-o")
            .arg(&to)
            .arg(from)
            .output()
            .map_err(tool("strip (the agent or init binary)"))?;
        set_mode(&to, 0o755)?;
    }
    check_libraries(tree, &format!("/{AGENT_PATH}"))?;
    check_libraries(tree, &format!("/{INIT_PATH}"))?;
    pin_password_dates(tree)?;
    let dropbear = tree.join("etc/dropbear");
    std::fs::create_dir_all(&dropbear).map_err(io("creating", &dropbear))?;
    set_mode(&dropbear, 0o700)?;
    Ok(())
}

/// The "last password change" day written into `/etc/shadow` (2023-11-14, as `FIXED_MTIME`):
/// debootstrap writes the day it ran, which would make every day's image different.
pub const SHADOW_DAY: u64 = 19_675;

/// Replaces the build day in `/etc/shadow` with [`SHADOW_DAY`] (in place, keeping its owner and
/// mode) and removes the `-` backups of the account files.
fn pin_password_dates(tree: &Path) -> Result<(), RootfsError> {
    let shadow = tree.join("etc/shadow");
    let text = std::fs::read_to_string(&shadow).map_err(io("reading", &shadow))?;
    std::fs::write(&shadow, pin_shadow_days(&text, SHADOW_DAY)).map_err(io("writing", &shadow))?;
    for backup in ["passwd-", "group-", "shadow-", "gshadow-"] {
        remove_file(&tree.join("etc").join(backup))?;
    }
    Ok(())
}

/// `/etc/shadow` text with every non-empty "last change" field (the third) set to `day`.
pub fn pin_shadow_days(text: &str, day: u64) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut fields: Vec<String> = line.split(':').map(str::to_string).collect();
        if fields.len() > 2 && !fields[2].is_empty() {
            fields[2] = day.to_string();
        }
        out.push_str(&fields.join(":"));
        out.push('\n');
    }
    out
}

fn set_mode(path: &Path, mode: u32) -> Result<(), RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", path))
}

/// Packs `tree` into a squashfs at `out`: zstd (the cloud kernel has `SQUASHFS_ZSTD=y`), every
/// timestamp `mtime`, reproducible block order.
///
/// zstd level 6, not mksquashfs's default 15: measured on the 204 MB base tree with 2 cores,
/// level 15 took 47 s for 71.5 MB and level 6 took 2 s for 77.3 MB. Warm builds (new binaries)
/// are dominated by this step, and 8 % more disk is cheap.
pub fn mksquashfs(tree: &Path, out: &Path, mtime: u64) -> Result<(), RootfsError> {
    Cmd::new("mksquashfs")
        .arg(tree)
        .arg(out)
        .args(["-noappend", "-comp", "zstd", "-Xcompression-level", "6"])
        .args(["-reproducible", "-no-progress"])
        .arg("-all-time")
        .arg(mtime.to_string())
        .arg("-mkfs-time")
        .arg(mtime.to_string())
        .output()
        .map_err(tool("mksquashfs"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_libraries_are_named() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibssl.so.3 => not found\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\
                   \tlibz.so.1 => not found\n";
        assert_eq!(missing_libraries(ldd), vec!["libssl.so.3", "libz.so.1"]);
        assert!(missing_libraries("\tstatically linked\n").is_empty());
        let err = RootfsError::MissingLibraries {
            binary: "/usr/local/bin/builder-agent".into(),
            missing: missing_libraries(ldd),
        };
        assert!(err.to_string().contains("libssl.so.3, libz.so.1"), "{err}");
    }

    #[test]
    fn sources_include_security_and_updates() {
        let text = sources_list("bookworm", "http://deb.debian.org/debian");
        assert!(text.contains("deb http://deb.debian.org/debian bookworm main\n"));
        assert!(text.contains("deb http://deb.debian.org/debian bookworm-updates main\n"));
        assert!(
            text.contains("deb http://deb.debian.org/debian-security bookworm-security main\n")
        );
    }

    #[test]
    fn shadow_days_are_pinned_and_other_fields_kept() {
        let text = "root:*:20785:0:99999:7:::\nnobody:!::0:99999:7:::\n";
        assert_eq!(
            pin_shadow_days(text, 19_675),
            "root:*:19675:0:99999:7:::\nnobody:!::0:99999:7:::\n"
        );
    }

    #[test]
    fn installed_packages_are_the_ii_lines_sorted() {
        let text = "ii zlib1g=1:1.2.13\nrc gone=1\nii podman=4.3.1+ds1-8\n";
        assert_eq!(
            parse_installed(text),
            vec!["podman=4.3.1+ds1-8", "zlib1g=1:1.2.13"]
        );
    }

    #[test]
    fn strip_tree_removes_noise_and_keeps_copyright_and_dpkg_status() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        for (file, content) in [
            ("var/log/dpkg.log", "x"),
            ("var/log/apt/history.log", "x"),
            ("var/lib/apt/lists/deb.debian.org_Packages", "x"),
            ("var/cache/apt/pkgcache.bin", "x"),
            ("var/cache/ldconfig/aux-cache", "x"),
            ("var/lib/dpkg/status", "Package: podman\n"),
            ("var/lib/dpkg/status-old", "x"),
            ("usr/share/doc/podman/copyright", "GPL"),
            ("usr/share/doc/podman/changelog.gz", "x"),
            ("usr/share/doc/empty/README", "x"),
            ("usr/share/man/man1/podman.1.gz", "x"),
            ("etc/hostname", "build-host\n"),
            ("etc/resolv.conf", "nameserver 192.168.1.1\n"),
        ] {
            let p = t.join(file);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        strip_tree(t).unwrap();
        let exists = |f: &str| t.join(f).exists();
        assert!(exists("var/lib/dpkg/status"));
        assert!(exists("usr/share/doc/podman/copyright"));
        assert!(exists("var/log") && exists("usr/share/man"));
        for gone in [
            "var/log/dpkg.log",
            "var/log/apt",
            "var/lib/apt/lists/deb.debian.org_Packages",
            "var/cache/apt/pkgcache.bin",
            "var/cache/ldconfig/aux-cache",
            "var/lib/dpkg/status-old",
            "usr/share/doc/podman/changelog.gz",
            "usr/share/doc/empty",
            "usr/share/man/man1",
        ] {
            assert!(!exists(gone), "{gone} survived");
        }
        assert_eq!(
            std::fs::read_to_string(t.join("etc/hostname")).unwrap(),
            "quarry\n"
        );
        assert_eq!(
            std::fs::read_to_string(t.join("etc/resolv.conf")).unwrap(),
            ""
        );
    }
}
