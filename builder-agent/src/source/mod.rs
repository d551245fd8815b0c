//! Build sources: fetch what a build pack points at into a directory, safely.
//!
//! Two kinds of source (reference 4.3): a git repository at an exact commit (with submodules), or
//! an archive URL holding a `.tar`, `.tar.gz`, `.zip` or a bare Dockerfile, recognised by its
//! content rather than by the server's `Content-Type` (Quay refuses uncompressed tarballs and
//! treats `application/octet-stream` tarballs as Dockerfiles).
//!
//! Everything is fetched into a staging directory next to `dest` and renamed into place only on
//! success, so a refused archive or a failed clone never leaves anything a build could use.
//! Archive extraction refuses entries that would land outside the directory (see `extract`).
//!
//! This module must not run the build, talk to buildman, or log secrets: the private key and any
//! password or query string in a URL stay out of progress lines and error messages.

mod archive;
mod context;
mod error;
mod extract;
mod git;
mod paths;
mod unpack;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use context::resolve_context;
pub use error::{SourceError, UnsafeReason};

/// Where a build's files come from (the build pack's `git_package` or `package_url`).
pub enum Source {
    /// A git repository checked out at exactly `sha` (detached), submodules included.
    Git {
        /// https://, ssh://, `user@host:path`, git://, file:// or a local path.
        url: String,
        /// The commit to check out: the full hex id (a unique prefix of 7 or more is accepted).
        sha: String,
        /// The trigger's deploy key (PEM or OpenSSH format) for ssh URLs and submodules.
        private_key: Option<String>,
    },
    /// An archive or a bare Dockerfile downloaded over http(s).
    Archive {
        /// The URL to GET, without authentication (a signed URL carries its own).
        url: String,
    },
}

// Hand-written so that the private key and URL credentials never reach a log through `{:?}`.
impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Git {
                url,
                sha,
                private_key,
            } => f
                .debug_struct("Git")
                .field("url", &redact_url(url))
                .field("sha", sha)
                .field("private_key", &private_key.as_ref().map(|_| "<redacted>"))
                .finish(),
            Source::Archive { url } => f
                .debug_struct("Archive")
                .field("url", &redact_url(url))
                .finish(),
        }
    }
}

/// Caps applied while fetching, so a hostile or mistaken source cannot fill the disk or stall.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest download, and largest total of file sizes after extraction or checkout.
    pub max_bytes: u64,
    /// Most archive entries (files, directories, links) or git tree entries.
    pub max_entries: u64,
    /// Longest time a git transfer or a download may go without receiving anything.
    pub git_idle_timeout: Duration,
}

impl Default for Limits {
    /// 2 GiB, 200,000 entries (large `node_modules` trees exist), and Quay's 3 minute idle limit.
    fn default() -> Self {
        Limits {
            max_bytes: 2 << 30,
            max_entries: 200_000,
            git_idle_timeout: Duration::from_secs(180),
        }
    }
}

/// Fetches `source` into `dest`, which must be absent or an empty directory.
///
/// `progress` receives human log lines for the build log. On error nothing is left at `dest`
/// (an empty directory that existed before stays).
pub async fn fetch(
    source: &Source,
    dest: &Path,
    limits: &Limits,
    progress: &dyn Fn(&str),
) -> Result<(), SourceError> {
    let staging = Staging::create(dest)?;
    match source {
        Source::Git {
            url,
            sha,
            private_key,
        } => {
            git::fetch(
                url,
                sha,
                private_key.as_deref(),
                staging.path(),
                limits,
                progress,
            )
            .await?
        }
        Source::Archive { url } => archive::fetch(url, staging.path(), limits, progress).await?,
    }
    staging.finish(dest)
}

/// A temporary directory beside `dest` that becomes `dest` by one rename, or disappears.
struct Staging {
    dir: tempfile::TempDir,
}

impl Staging {
    fn create(dest: &Path) -> Result<Self, SourceError> {
        match std::fs::read_dir(dest) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(SourceError::DestNotEmpty {
                        dest: dest.to_owned(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(io_error("reading", dest, source)),
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| io_error("creating", &parent, e))?;
        let dir = tempfile::Builder::new()
            .prefix(".quarry-source-")
            .tempdir_in(&parent)
            .map_err(|e| io_error("creating a staging directory in", &parent, e))?;
        Ok(Staging { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn finish(self, dest: &Path) -> Result<(), SourceError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().to_owned();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io_error("setting permissions on", &path, e))?;
        // rename(2) replaces an empty directory, which is what an existing `dest` must be.
        std::fs::rename(&path, dest).map_err(|e| io_error("moving the source into", dest, e))?;
        // The directory now lives at `dest`; forget it rather than delete it.
        let _ = self.dir.keep();
        Ok(())
    }
}

fn io_error(op: &'static str, path: &Path, source: std::io::Error) -> SourceError {
    SourceError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The URL as it may appear in logs and errors: no password, no query string (signed URLs carry
/// their signature there).
pub(crate) fn redact_url(url: &str) -> String {
    let (before_query, had_query) = match url.split_once('?') {
        Some((head, _)) => (head, true),
        None => (url, false),
    };
    let mut out = match before_query.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                    format!("{scheme}://{user}:***@{host}{path}")
                }
                None => before_query.to_owned(),
            }
        }
        None => before_query.to_owned(),
    };
    if had_query {
        out.push_str("?<redacted>");
    }
    out
}

/// `1536` -> `1.5 KiB`, for progress lines.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut unit = 0;
    let mut scaled = n;
    while scaled >= 1024 * 1024 && unit + 2 < UNITS.len() {
        scaled /= 1024;
        unit += 1;
    }
    // One decimal from integer arithmetic: tenths of the next unit up.
    let tenths = scaled * 10 / 1024;
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit + 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_passwords_and_query_strings() {
        assert_eq!(
            redact_url("https://user:s3cret@example.com/a.git"),
            "https://user:***@example.com/a.git"
        );
        assert_eq!(
            redact_url("https://example.com/pack?sig=abc&exp=1"),
            "https://example.com/pack?<redacted>"
        );
        assert_eq!(
            redact_url("git@github.com:o/r.git"),
            "git@github.com:o/r.git"
        );
        assert_eq!(redact_url("/srv/repo"), "/srv/repo");
        assert_eq!(
            redact_url("ssh://git@host:22/o/r.git"),
            "ssh://git:***@host:22/o/r.git"
        );
    }

    #[test]
    fn human_bytes_is_readable() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 + 512 * 1024), "3.5 MiB");
        assert_eq!(human_bytes(2 << 30), "2.0 GiB");
    }

    #[test]
    fn debug_never_prints_the_private_key() {
        let s = Source::Git {
            url: "https://u:pw@h/r".into(),
            sha: "abc".into(),
            private_key: Some("-----BEGIN OPENSSH PRIVATE KEY-----secret".into()),
        };
        let text = format!("{s:?}");
        assert!(!text.contains("secret"), "{text}");
        assert!(!text.contains("pw"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn staging_refuses_a_non_empty_dest_and_replaces_an_empty_one() {
        let tmp = tempfile::tempdir().unwrap();
        let full = tmp.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("x"), "x").unwrap();
        assert!(matches!(
            Staging::create(&full),
            Err(SourceError::DestNotEmpty { .. })
        ));

        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let staging = Staging::create(&empty).unwrap();
        std::fs::write(staging.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        staging.finish(&empty).unwrap();
        assert!(empty.join("Dockerfile").is_file());
        // Only `empty` and `full` remain: the staging directory was renamed, not copied.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_dropped_staging_directory_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("src");
        let staging = Staging::create(&dest).unwrap();
        std::fs::write(staging.path().join("half"), "x").unwrap();
        drop(staging);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        assert!(!dest.exists());
    }
}
