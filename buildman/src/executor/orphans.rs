//! Builds left behind by a buildman that died without stopping them (SIGKILL, OOM, power loss):
//! the popen executor records each agent's process group in `<work dir>.pid`, and a restarted
//! manager kills every process of each such build (its group, its podman service and RUN steps:
//! [`super::sweep`]) and removes its work directory before it schedules. A work directory with no
//! pid file (buildman died before writing it) is swept the same way.

use std::collections::BTreeSet;
use std::path::Path;

use super::ExecutorError;
use super::process::{self, GRACE};
use super::scan::Recorded;
use super::sweep::BuildSweep;

/// Sweep every build in `root` (by `<id>.pid` file or `<uuid>-<n>` directory) for which
/// `is_ours(id)` is false (those belong to this process), remove its work directory and pid file,
/// and keep its log for the operator. A build whose processes survive SIGKILL keeps its files
/// for the next start. Returns how many builds still had processes running.
pub(super) async fn reap(
    root: &Path,
    is_ours: impl Fn(&str) -> bool,
) -> Result<usize, ExecutorError> {
    let Ok(entries) = std::fs::read_dir(root) else {
        // No work root yet: nothing was ever started here.
        return Ok(0);
    };
    let mut ids = BTreeSet::new();
    for entry in entries.filter_map(Result::ok) {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some(id) = name.strip_suffix(".pid") {
            ids.insert(id.to_owned());
        } else if entry.file_type().is_ok_and(|t| t.is_dir()) && build_uuid(&name).is_some() {
            ids.insert(name);
        }
    }
    let mut stopped = 0;
    for id in ids.iter().filter(|id| !is_ours(id)) {
        let Some(uuid) = build_uuid(id) else {
            continue;
        };
        let pid_file = root.join(format!("{id}.pid"));
        let group =
            process::read_pid_file(&pid_file).map(|(pid, start_time)| Recorded { pid, start_time });
        let dir = root.join(id);
        let sweep = BuildSweep::new(uuid, &dir, group);
        let swept = sweep.terminate(tokio::time::Instant::now() + GRACE).await;
        if swept.found > 0 {
            tracing::warn!(
                execution_id = %id,
                processes = swept.found,
                elapsed_ms = u64::try_from(swept.elapsed.as_millis()).unwrap_or(u64::MAX),
                "stopped a build left by a previous buildman"
            );
            stopped += 1;
        }
        if !swept.survivors.is_empty() {
            tracing::error!(execution_id = %id, survivors = ?swept.survivors,
                "build processes survived SIGKILL; kill them by hand, the work directory is kept");
            continue;
        }
        sweep
            .remove_files()
            .await
            .map_err(|(path, source)| ExecutorError::Cleanup { path, source })?;
        let _ = process::remove_file(&pid_file);
    }
    Ok(stopped)
}

/// The build uuid of execution id `<uuid>-<n>`.
fn build_uuid(id: &str) -> Option<&str> {
    let (uuid, n) = id.rsplit_once('-')?;
    (!uuid.is_empty() && n.parse::<u32>().is_ok()).then_some(uuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_ids_name_their_build() {
        assert_eq!(
            build_uuid("5c3498d9-4df6-4973-b5fe-68ae5c7d9dc0-2"),
            Some("5c3498d9-4df6-4973-b5fe-68ae5c7d9dc0")
        );
        assert_eq!(build_uuid("b1-1"), Some("b1"));
        for bad in ["b1", "-1", "b1-x", "b1-1.log", ""] {
            assert_eq!(build_uuid(bad), None, "{bad}");
        }
    }
}
