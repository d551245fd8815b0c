//! Downloading a build package by URL (streamed to a size-capped temp file) and unpacking it.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::error::SourceError;
use super::{Limits, human_bytes, redact_url, unpack};

/// How long to wait for a TCP (and TLS) connection to the package server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Downloads `url` next to `work` and unpacks it into `work`.
pub(super) async fn fetch(
    url: &str,
    work: &Path,
    limits: &Limits,
    progress: &dyn Fn(&str),
) -> Result<(), SourceError> {
    let shown = redact_url(url);
    progress(&format!("downloading {shown}"));
    // The temp file goes beside the staging directory (same file system, cleaned up on drop).
    let parent = work.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".quarry-download-")
        .tempfile_in(parent)
        .map_err(|e| io_error("creating a download file in", parent, e))?;
    let (bytes, content_type) = download(url, &shown, tmp.path(), limits).await?;

    let file = tmp.path().to_owned();
    let root = work.to_owned();
    let task_limits = limits.clone();
    let label = shown.clone();
    let (kind, summary) =
        tokio::task::spawn_blocking(move || unpack::unpack(&file, &root, &task_limits, &label))
            .await
            .map_err(|source| SourceError::Task {
                what: "extraction",
                source,
            })??;
    drop(tmp);

    let served_as = content_type.map_or(String::new(), |ct| format!(", served as {ct}"));
    progress(&format!(
        "downloaded {} ({}{served_as})",
        human_bytes(bytes),
        kind.name()
    ));
    progress(&format!(
        "extracted {} files, {} directories, {} symlinks, {}",
        summary.files,
        summary.dirs,
        summary.links,
        human_bytes(summary.bytes)
    ));
    Ok(())
}

/// Streams the body of `url` into `path`; returns its size and the server's content type.
async fn download(
    url: &str,
    shown: &str,
    path: &Path,
    limits: &Limits,
) -> Result<(u64, Option<String>), SourceError> {
    let idle = limits.git_idle_timeout;
    let failed = |e: reqwest::Error| SourceError::DownloadFailed {
        url: shown.to_owned(),
        source: e.without_url(),
    };
    let stalled = || SourceError::DownloadIdle {
        url: shown.to_owned(),
        secs: idle.as_secs(),
    };
    let too_large = || SourceError::TooLarge {
        what: format!("the download of {shown}"),
        limit: limits.max_bytes,
    };
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("quarry-builder-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|source| SourceError::HttpClient { source })?;
    let mut resp = tokio::time::timeout(idle, client.get(url).send())
        .await
        .map_err(|_| stalled())?
        .map_err(failed)?;
    let status = resp.status();
    if !status.is_success() {
        return Err(SourceError::HttpStatus {
            url: shown.to_owned(),
            status: status.as_u16(),
        });
    }
    if resp.content_length().is_some_and(|n| n > limits.max_bytes) {
        return Err(too_large());
    }
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);

    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| io_error("creating", path, e))?;
    let mut total: u64 = 0;
    while let Some(chunk) = tokio::time::timeout(idle, resp.chunk())
        .await
        .map_err(|_| stalled())?
        .map_err(failed)?
    {
        total = total.saturating_add(chunk.len() as u64);
        if total > limits.max_bytes {
            return Err(too_large());
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| io_error("writing", path, e))?;
    }
    file.flush()
        .await
        .map_err(|e| io_error("writing", path, e))?;
    Ok((total, content_type))
}

fn io_error(op: &'static str, path: &Path, source: std::io::Error) -> SourceError {
    SourceError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}
