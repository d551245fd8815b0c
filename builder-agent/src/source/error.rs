//! The one error type of `source`, and which of its cases are the user's to fix.

use std::fmt;
use std::path::PathBuf;

/// Why fetching or locating a build source failed. URLs in messages are redacted.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The commit id is not hexadecimal or has the wrong length.
    #[error("commit {sha:?} is not a commit sha; give the full 40-character hex commit id")]
    InvalidSha {
        /// The value given.
        sha: String,
    },
    /// The git server could not be reached, or refused the repository.
    #[error(
        "cannot fetch git repository {url}; check that the url is right, reachable from the build \
         machine, and that the repository exists"
    )]
    GitUnreachable {
        /// The repository URL (redacted).
        url: String,
        /// libgit2's report.
        #[source]
        source: git2::Error,
    },
    /// The git server refused our credentials (or we had none).
    #[error(
        "authentication to git repository {url} failed; add the trigger's deploy key (public key) \
         to the repository, or make it public"
    )]
    GitAuth {
        /// The repository URL (redacted).
        url: String,
        /// libgit2's report.
        #[source]
        source: git2::Error,
    },
    /// The repository was fetched but does not contain the commit.
    #[error("commit {sha} is not in git repository {url}; push it, or build a commit that exists")]
    ShaNotFound {
        /// The repository URL (redacted).
        url: String,
        /// The commit asked for.
        sha: String,
    },
    /// The git transfer received nothing for too long.
    #[error("git repository {url} sent nothing for {secs} s; check the git server and retry")]
    GitIdle {
        /// The repository URL (redacted).
        url: String,
        /// The idle limit that was hit.
        secs: u64,
    },
    /// A submodule of a remote repository points at a path on the build machine.
    #[error(
        "submodule {name:?} of {url} points at the local path {submodule_url}; submodules of a \
         remote repository must use a remote url"
    )]
    SubmoduleUrlRefused {
        /// The superproject URL (redacted).
        url: String,
        /// The submodule's name in `.gitmodules`.
        name: String,
        /// The submodule's resolved URL (redacted).
        submodule_url: String,
    },
    /// Submodules nest deeper than we follow.
    #[error("submodules of {url} nest more than {limit} levels deep; flatten the submodule chain")]
    SubmoduleTooDeep {
        /// The repository whose submodules are too deep (redacted).
        url: String,
        /// The depth limit.
        limit: u32,
    },
    /// libgit2 failed on the local side (disk, index, checkout).
    #[error("git {op} failed in {path}; check free disk space on the build machine")]
    GitLocal {
        /// What we were doing.
        op: &'static str,
        /// The repository directory.
        path: PathBuf,
        /// libgit2's report.
        #[source]
        source: git2::Error,
    },
    /// The git thread ended without a result (it panicked).
    #[error("the git worker thread stopped without a result; this is a bug in the agent")]
    GitWorkerLost,
    /// The HTTP client could not be set up (TLS roots).
    #[error("cannot set up the http client for downloads")]
    HttpClient {
        /// reqwest's report.
        #[source]
        source: reqwest::Error,
    },
    /// The archive URL could not be fetched (DNS, connection, TLS, broken transfer).
    #[error(
        "cannot download {url}; check that the url is right and reachable from the build machine"
    )]
    DownloadFailed {
        /// The URL (redacted).
        url: String,
        /// reqwest's report, without the URL.
        #[source]
        source: reqwest::Error,
    },
    /// The archive URL answered with an error status.
    #[error(
        "downloading {url} returned HTTP {status}; check the url (a signed url may have expired)"
    )]
    HttpStatus {
        /// The URL (redacted).
        url: String,
        /// The status code.
        status: u16,
    },
    /// The download received nothing for too long.
    #[error("download of {url} received nothing for {secs} s; check the server and retry")]
    DownloadIdle {
        /// The URL (redacted).
        url: String,
        /// The idle limit that was hit.
        secs: u64,
    },
    /// A download, an extracted archive or a checkout is bigger than `Limits::max_bytes`.
    #[error("{what} is larger than the limit of {limit} bytes; make the build context smaller")]
    TooLarge {
        /// What grew too big, e.g. "the download of `<url>`".
        what: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// An archive or a git tree has more entries than `Limits::max_entries`.
    #[error("{what} has more than {limit} entries; make the build context smaller")]
    TooManyEntries {
        /// What has too many entries.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// The download is neither tar, tar.gz, zip nor a text Dockerfile.
    #[error(
        "{url} is {kind}, which is not a build source; give a .tar, .tar.gz or .zip archive or a \
         plain-text Dockerfile"
    )]
    UnsupportedArchive {
        /// The URL (redacted).
        url: String,
        /// What the content looks like, e.g. "a bzip2 file".
        kind: &'static str,
    },
    /// The archive is truncated or malformed.
    #[error("{kind} archive from {url} is corrupt or truncated; rebuild and upload it again")]
    CorruptArchive {
        /// The URL (redacted).
        url: String,
        /// "tar", "tar.gz" or "zip".
        kind: &'static str,
        /// What the reader reported.
        #[source]
        source: std::io::Error,
    },
    /// An archive entry that would escape the build directory or is not a plain file.
    #[error("archive entry {entry:?} refused: {reason}; rebuild the archive without it")]
    UnsafeEntry {
        /// The entry's path as stored in the archive.
        entry: String,
        /// Why it was refused.
        reason: UnsafeReason,
    },
    /// The build context directory does not exist in the source.
    #[error(
        "build context {context:?} is not a directory in the build source; check the build's context"
    )]
    ContextMissing {
        /// The context asked for.
        context: String,
    },
    /// The build context resolves (through `..` or symlinks) outside the source.
    #[error(
        "build context {context:?} resolves outside the build source; use a directory inside it"
    )]
    ContextOutside {
        /// The context asked for.
        context: String,
    },
    /// No Dockerfile where the build says it is.
    #[error(
        "no Dockerfile at {path:?} in the build source; check the build's dockerfile path and context"
    )]
    DockerfileMissing {
        /// The path tried, relative to the source root.
        path: String,
    },
    /// The Dockerfile resolves outside the build context.
    #[error(
        "Dockerfile {path:?} resolves outside the build context {context:?}; put it inside the \
         context directory"
    )]
    DockerfileOutside {
        /// The path tried, relative to the source root.
        path: String,
        /// The context asked for.
        context: String,
    },
    /// `dest` already holds files.
    #[error("source directory {dest} is not empty; give a new or empty directory")]
    DestNotEmpty {
        /// The destination given.
        dest: PathBuf,
    },
    /// Local file system trouble.
    #[error("{op} {path} failed; check free disk space and permissions on the build machine")]
    Io {
        /// What we were doing, e.g. "creating".
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The blocking extraction task panicked or was cancelled.
    #[error("the {what} worker task failed")]
    Task {
        /// What the task was doing ("extraction").
        what: &'static str,
        /// tokio's report.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl SourceError {
    /// An `UnsafeEntry` for the raw archive path `raw`.
    pub(super) fn unsafe_entry(raw: &[u8], reason: UnsafeReason) -> Self {
        SourceError::UnsafeEntry {
            entry: String::from_utf8_lossy(raw).into_owned(),
            reason,
        }
    }

    /// True when the user's input is at fault (bad archive, unsafe entry, missing Dockerfile,
    /// bad sha, an unreachable or 4xx URL): the build ends as `error` and is not retried. False
    /// for trouble on the build machine or the server side (disk, 5xx), which is worth a retry.
    pub fn is_user_error(&self) -> bool {
        match self {
            SourceError::HttpStatus { status, .. } => *status < 500,
            SourceError::GitLocal { .. }
            | SourceError::HttpClient { .. }
            | SourceError::DestNotEmpty { .. }
            | SourceError::Io { .. }
            | SourceError::GitWorkerLost
            | SourceError::Task { .. } => false,
            SourceError::InvalidSha { .. }
            | SourceError::GitUnreachable { .. }
            | SourceError::GitAuth { .. }
            | SourceError::ShaNotFound { .. }
            | SourceError::GitIdle { .. }
            | SourceError::SubmoduleUrlRefused { .. }
            | SourceError::SubmoduleTooDeep { .. }
            | SourceError::DownloadFailed { .. }
            | SourceError::DownloadIdle { .. }
            | SourceError::TooLarge { .. }
            | SourceError::TooManyEntries { .. }
            | SourceError::UnsupportedArchive { .. }
            | SourceError::CorruptArchive { .. }
            | SourceError::UnsafeEntry { .. }
            | SourceError::ContextMissing { .. }
            | SourceError::ContextOutside { .. }
            | SourceError::DockerfileMissing { .. }
            | SourceError::DockerfileOutside { .. } => true,
        }
    }
}

/// Why an archive entry was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnsafeReason {
    /// The path has a `..` component.
    ParentDir,
    /// The path is absolute.
    Absolute,
    /// The path goes through a symlink extracted earlier.
    ThroughSymlink,
    /// A symlink whose target resolves outside the build directory.
    LinkOutside {
        /// The link target as stored.
        target: String,
    },
    /// A hard link whose target is not a regular file extracted earlier inside the directory.
    HardLinkTarget {
        /// The link target as stored.
        target: String,
    },
    /// A character or block device, fifo or socket.
    Device,
    /// An entry type we do not extract (e.g. a GNU volume label).
    UnsupportedType {
        /// The type as the archive names it.
        kind: String,
    },
    /// The entry would replace a directory, or a file stands where a directory is needed.
    Conflict,
    /// The path is empty or is the archive root itself with a non-directory type.
    EmptyPath,
}

impl fmt::Display for UnsafeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnsafeReason::ParentDir => f.write_str("its path contains `..`"),
            UnsafeReason::Absolute => f.write_str("its path is absolute"),
            UnsafeReason::ThroughSymlink => f.write_str("its path goes through a symlink"),
            UnsafeReason::LinkOutside { target } => {
                write!(
                    f,
                    "symlink target {target:?} points outside the build directory"
                )
            }
            UnsafeReason::HardLinkTarget { target } => write!(
                f,
                "hard link target {target:?} is not a regular file earlier in the archive"
            ),
            UnsafeReason::Device => f.write_str("devices, fifos and sockets are not allowed"),
            UnsafeReason::UnsupportedType { kind } => {
                write!(f, "entry type {kind} is not supported")
            }
            UnsafeReason::Conflict => {
                f.write_str("it clashes with a directory or file of the same path")
            }
            UnsafeReason::EmptyPath => f.write_str("its path is empty"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_errors_and_machine_errors_are_told_apart() {
        let status = |status| SourceError::HttpStatus {
            url: "u".into(),
            status,
        };
        assert!(status(404).is_user_error());
        assert!(status(403).is_user_error());
        assert!(!status(502).is_user_error());
        assert!(
            SourceError::UnsafeEntry {
                entry: "../x".into(),
                reason: UnsafeReason::ParentDir
            }
            .is_user_error()
        );
        assert!(
            SourceError::DockerfileMissing {
                path: "Dockerfile".into()
            }
            .is_user_error()
        );
        assert!(
            !SourceError::Io {
                op: "writing",
                path: "/x".into(),
                source: std::io::Error::other("disk full"),
            }
            .is_user_error()
        );
        assert!(
            !SourceError::GitLocal {
                op: "checkout",
                path: "/x".into(),
                source: git2::Error::from_str("disk"),
            }
            .is_user_error()
        );
    }

    #[test]
    fn messages_name_the_entry_and_what_to_do() {
        let e = SourceError::UnsafeEntry {
            entry: "etc/passwd".into(),
            reason: UnsafeReason::LinkOutside {
                target: "/etc/passwd".into(),
            },
        };
        assert_eq!(
            e.to_string(),
            "archive entry \"etc/passwd\" refused: symlink target \"/etc/passwd\" points outside \
             the build directory; rebuild the archive without it"
        );
        let e = SourceError::HttpStatus {
            url: "http://h/x".into(),
            status: 404,
        };
        assert!(e.to_string().contains("HTTP 404"));
        assert!(e.to_string().contains("http://h/x"));
    }
}
