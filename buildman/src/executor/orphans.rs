//! Agents left behind by a buildman that died without stopping them (SIGKILL, OOM, power loss):
//! the popen executor records each agent's process group in `<work dir>.pid`, and a restarted
//! manager stops the groups still alive and removes their work directories before it schedules.

use std::path::Path;

use nix::sys::signal::Signal;

use super::ExecutorError;
use super::process::{self, GRACE};

/// Stop every group recorded by a `<id>.pid` file in `root` for which `is_ours(id)` is false
/// (those belong to this process), remove its work directory and pid file, and keep its log for
/// the operator. Returns how many live groups were stopped.
pub(super) async fn reap(
    root: &Path,
    is_ours: impl Fn(&str) -> bool,
) -> Result<usize, ExecutorError> {
    let Ok(entries) = std::fs::read_dir(root) else {
        // No work root yet: nothing was ever started here.
        return Ok(0);
    };
    let mut stopped = 0;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str()?.strip_suffix(".pid"))
        else {
            continue;
        };
        if is_ours(id) {
            continue;
        }
        if let Some((pgid, start_time)) = process::read_pid_file(&path)
            && process::recorded_group_alive(pgid, start_time)
        {
            tracing::warn!(
                execution_id = id,
                pgid,
                "stopping builder agent left by a previous buildman"
            );
            let signal = |source| ExecutorError::Signal {
                execution_id: id.to_owned(),
                pgid,
                source,
            };
            process::signal_group(pgid, Signal::SIGTERM).map_err(signal)?;
            let deadline = tokio::time::Instant::now() + GRACE;
            process::finish_group(pgid, deadline)
                .await
                .map_err(signal)?;
            stopped += 1;
        }
        let dir = root.join(id);
        process::remove_dir(&dir)
            .await
            .map_err(|source| ExecutorError::Cleanup { path: dir, source })?;
        let _ = process::remove_file(&path);
    }
    Ok(stopped)
}
