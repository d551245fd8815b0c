//! Debian packages outside the root filesystem: the cloud kernel (resolved, downloaded, checked
//! and unpacked) and the host's busybox-static.

use std::path::{Path, PathBuf};

use super::inputs::{BUSYBOX_PACKAGE, KERNEL_META_PACKAGE, sha256_file};
use super::run::{Cmd, RunError};

/// The static busybox that `busybox-static` installs on the host.
pub const BUSYBOX_PATH: &str = "/bin/busybox";

/// Why a package could not be resolved, fetched or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    /// A tool failed.
    #[error("{what} failed")]
    Tool {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: RunError,
    },
    /// apt's metadata lacks what we need.
    #[error("apt-cache shows no {field} for {package} (run apt-get update?)")]
    Metadata {
        /// The package.
        package: String,
        /// The missing field.
        field: &'static str,
    },
    /// The downloaded file does not have the sha256 apt's index lists.
    #[error("{path:?} has sha256 {found}, apt's index says {expected}: delete it and retry")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// From apt.
        expected: String,
        /// Actual.
        found: String,
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
    /// The kernel package does not have the expected layout.
    #[error("the kernel package {deb:?} has no {what}")]
    Layout {
        /// The package file.
        deb: PathBuf,
        /// What is missing.
        what: &'static str,
    },
}

/// A resolved binary package: name, version, and what apt's index says about the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    /// The package name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The `.deb` file name (basename of `Filename:`).
    pub file_name: String,
    /// `SHA256:` from the index.
    pub sha256: String,
}

/// The kernel, unpacked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// `boot/vmlinuz-<release>`.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>`.
    pub modules_dir: PathBuf,
    /// `uname -r`.
    pub release: String,
}

fn tool(what: impl Into<String>) -> impl FnOnce(RunError) -> DebError {
    let what = what.into();
    move |source| DebError::Tool { what, source }
}

/// The value of `field` in the first stanza of Debian control-format `text`.
pub fn control_field<'a>(text: &'a str, field: &str) -> Option<&'a str> {
    text.lines()
        .take_while(|l| !l.trim().is_empty())
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// The first `linux-image-*` package in a `Depends:` value.
pub fn kernel_dependency(depends: &str) -> Option<&str> {
    depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-"))
}

/// `apt-cache show --no-all-versions` of one package, parsed.
fn show(name: &str) -> Result<Package, DebError> {
    let text = Cmd::new("apt-cache")
        .args(["show", "--no-all-versions", name])
        .text()
        .map_err(tool(format!("apt-cache show {name}")))?;
    let field = |field: &'static str| {
        control_field(&text, field)
            .map(str::to_string)
            .ok_or_else(|| DebError::Metadata {
                package: name.to_string(),
                field,
            })
    };
    let filename = field("Filename")?;
    Ok(Package {
        name: name.to_string(),
        version: field("Version")?,
        file_name: filename.rsplit('/').next().unwrap_or(&filename).to_string(),
        sha256: field("SHA256")?,
    })
}

/// Resolves [`KERNEL_META_PACKAGE`] to the versioned kernel package apt would install.
pub fn resolve_kernel() -> Result<Package, DebError> {
    let text = Cmd::new("apt-cache")
        .args(["show", "--no-all-versions", KERNEL_META_PACKAGE])
        .text()
        .map_err(tool(format!("apt-cache show {KERNEL_META_PACKAGE}")))?;
    let missing = || DebError::Metadata {
        package: KERNEL_META_PACKAGE.to_string(),
        field: "Depends: linux-image-*",
    };
    let depends = control_field(&text, "Depends").ok_or_else(missing)?;
    show(kernel_dependency(depends).ok_or_else(missing)?)
}

/// `apt-get update` on the host: for a host without package lists (a fresh container).
pub fn apt_update() -> Result<(), DebError> {
    Cmd::new("apt-get")
        .arg("update")
        .output()
        .map_err(tool("apt-get update"))?;
    Ok(())
}

/// `name=candidate` for each of `packages` from the host's `apt-cache policy` (whose sources
/// include bookworm-security and -updates on Debian hosts), sorted. A package without a candidate
/// is listed as `name=none`. Part of the base tree's cache key, so a security update of a listed
/// package rebuilds the base tree.
pub fn candidate_versions(packages: &[String]) -> Result<Vec<String>, DebError> {
    let text = Cmd::new("apt-cache")
        .arg("policy")
        .args(packages)
        .text()
        .map_err(tool("apt-cache policy"))?;
    let found = parse_policy(&text);
    Ok(packages
        .iter()
        .map(|name| {
            let version = found
                .iter()
                .find(|(n, _)| n == name)
                .map_or("none", |(_, v)| v.as_str());
            format!("{name}={version}")
        })
        .collect())
}

/// (package, candidate) pairs from `apt-cache policy` output.
pub fn parse_policy(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            current = Some(line.trim_end_matches(':').to_string());
        } else if let (Some(name), Some(v)) = (&current, line.trim().strip_prefix("Candidate:")) {
            let v = v.trim();
            if v != "(none)" {
                out.push((name.clone(), v.to_string()));
            }
            current = None;
        }
    }
    out
}

/// The installed busybox-static version; fails when it is not installed.
pub fn busybox_version() -> Result<String, DebError> {
    let v = Cmd::new("dpkg-query")
        .args(["-W", "-f", "${Version}", BUSYBOX_PACKAGE])
        .text()
        .map_err(tool(format!(
            "dpkg-query {BUSYBOX_PACKAGE} (install it: scripts/install-deps.sh)"
        )))?;
    Ok(v.trim().to_string())
}

/// `<debs>/<file>` for `pkg`, downloaded with `apt-get download` unless a file with the indexed
/// sha256 is already there.
pub fn fetch(pkg: &Package, debs: &Path) -> Result<PathBuf, DebError> {
    let path = debs.join(&pkg.file_name);
    if path.is_file() && sha256_file(&path).ok().as_deref() == Some(pkg.sha256.as_str()) {
        return Ok(path);
    }
    std::fs::create_dir_all(debs).map_err(|source| DebError::Io {
        what: "creating",
        path: debs.to_path_buf(),
        source,
    })?;
    Cmd::new("apt-get")
        .arg("download")
        .arg(format!("{}={}", pkg.name, pkg.version))
        .current_dir(debs)
        .output()
        .map_err(tool(format!("apt-get download {}", pkg.name)))?;
    let found = sha256_file(&path).map_err(|source| DebError::Io {
        what: "reading",
        path: path.clone(),
        source,
    })?;
    if found != pkg.sha256 {
        return Err(DebError::Checksum {
            path,
            expected: pkg.sha256.clone(),
            found,
        });
    }
    Ok(path)
}

/// Unpacks the kernel package into `dest` and finds its vmlinuz and module directory.
pub fn unpack_kernel(deb: &Path, dest: &Path) -> Result<Kernel, DebError> {
    Cmd::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(dest)
        .output()
        .map_err(tool("dpkg-deb -x (kernel package)"))?;
    let layout = |what| DebError::Layout {
        deb: deb.to_path_buf(),
        what,
    };
    let modules = dest.join("lib/modules");
    let release = std::fs::read_dir(&modules)
        .map_err(|_| layout("lib/modules"))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| layout("lib/modules/<release>"))?;
    let vmlinuz = dest.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        return Err(layout("boot/vmlinuz-<release>"));
    }
    Ok(Kernel {
        vmlinuz,
        modules_dir: modules.join(&release),
        release,
    })
}

/// Writes `modules.dep` (and friends) for an unpacked kernel with busybox's depmod; the Debian
/// package ships none.
pub fn depmod(kernel_root: &Path, release: &str) -> Result<(), DebError> {
    Cmd::new(BUSYBOX_PATH)
        .args(["depmod", "-b"])
        .arg(kernel_root)
        .arg(release)
        .output()
        .map_err(tool("busybox depmod (kernel package)"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)
Filename: pool/updates/main/l/linux-signed-amd64/linux-image-cloud-amd64_6.1.192-2_amd64.deb
SHA256: e7d0
Description: Linux for x86-64 cloud (meta-package)

Package: linux-image-cloud-amd64
Version: 6.1.176-1
";

    #[test]
    fn policy_candidates_are_parsed() {
        let text = "podman:\n  Installed: 4.3.1+ds1-8+b1\n  Candidate: 4.3.1+ds1-8+deb12u1\n  \
                    Version table:\n     4.3.1+ds1-8+deb12u1 500\n        500 \
                    http://deb.debian.org/debian-security bookworm-security/main amd64 \
                    Packages\nnosuch:\n  Installed: (none)\n  Candidate: (none)\n\
                    runc:\n  Installed: (none)\n  Candidate: 1.1.5+ds1-1+deb12u1\n";
        assert_eq!(
            parse_policy(text),
            vec![
                ("podman".to_string(), "4.3.1+ds1-8+deb12u1".to_string()),
                ("runc".to_string(), "1.1.5+ds1-1+deb12u1".to_string()),
            ]
        );
    }

    #[test]
    fn control_fields_come_from_the_first_stanza() {
        assert_eq!(control_field(SHOW, "Version"), Some("6.1.192-2"));
        assert_eq!(control_field(SHOW, "SHA256"), Some("e7d0"));
        assert_eq!(
            control_field(SHOW, "Source"),
            Some("linux-signed-amd64 (6.1.192+2)")
        );
        assert_eq!(control_field(SHOW, "Missing"), None);
        // A field name that is a prefix of another does not match it.
        assert_eq!(
            control_field("Versions: x\nVersion: y\n", "Version"),
            Some("y")
        );
    }

    #[test]
    fn the_versioned_kernel_package_is_found_in_depends() {
        let deps = control_field(SHOW, "Depends").unwrap();
        assert_eq!(
            kernel_dependency(deps),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(
            kernel_dependency(
                "initramfs-tools | linux-initramfs-tool, linux-image-6.1.0-9-cloud-amd64"
            ),
            Some("linux-image-6.1.0-9-cloud-amd64")
        );
        assert_eq!(kernel_dependency("libc6 (>= 2)"), None);
    }
}
