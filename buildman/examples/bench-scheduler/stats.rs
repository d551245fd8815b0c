//! What the benchmark measures: per-call latencies of the simulated agents, and the process's
//! own figures from `/proc/self` (peak RSS, CPU time, open descriptors, threads).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The agent calls that are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Call {
    Ping,
    RegisterBuildJob,
    Heartbeat,
    DetermineCachedTag,
    SetPhase,
    LogMessage,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Ping => "ping",
            Call::RegisterBuildJob => "register",
            Call::Heartbeat => "heartbeat",
            Call::DetermineCachedTag => "cached_tag",
            Call::SetPhase => "set_phase",
            Call::LogMessage => "log_message",
        }
    }
}

#[derive(Debug, Default)]
struct Series {
    micros: Vec<u64>,
    errors: u64,
}

/// Latencies of every timed call, by kind. The lock is held only to push one number.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    series: Mutex<BTreeMap<Call, Series>>,
}

impl Recorder {
    /// Record one call that took `elapsed` and succeeded or not (a failed call's time is not
    /// mixed into the percentiles; it is counted as an error).
    pub(crate) fn record(&self, call: Call, elapsed: Duration, ok: bool) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let s = series.entry(call).or_default();
        if ok {
            s.micros
                .push(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
        } else {
            s.errors += 1;
        }
    }

    /// Run `fut`, recording how long it took under `call`.
    pub(crate) async fn time<T, E>(
        &self,
        call: Call,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let start = Instant::now();
        let out = fut.await;
        self.record(call, start.elapsed(), out.is_ok());
        out
    }

    /// `{"<call>": {"n", "errors", "p50_ms", "p95_ms", "p99_ms", "max_ms"}, ...}`.
    pub(crate) fn summary(&self) -> Value {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = serde_json::Map::new();
        for (call, s) in series.iter_mut() {
            s.micros.sort_unstable();
            out.insert(
                call.name().to_owned(),
                json!({
                    "n": s.micros.len(),
                    "errors": s.errors,
                    "p50_ms": percentile_ms(&s.micros, 50.0),
                    "p95_ms": percentile_ms(&s.micros, 95.0),
                    "p99_ms": percentile_ms(&s.micros, 99.0),
                    "max_ms": s.micros.last().map(|&m| ms(m)),
                }),
            );
        }
        Value::Object(out)
    }
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds; `None` when empty.
fn percentile_ms(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a rank below the sample count, far under 2^52"
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(ms(sorted[rank.clamp(1, sorted.len()) - 1]))
}

#[allow(
    clippy::cast_precision_loss,
    reason = "latencies in microseconds, far under 2^52"
)]
fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// A `kB` field of `/proc/self/status` (`VmHWM`, `VmRSS`) or a plain count (`Threads`).
pub(crate) fn status_field(name: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// CPU time (user + system) this process has used, in seconds.
pub(crate) fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; the fields after it start at ") ".
    let rest = &stat[stat.rfind(") ")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime, fields 14 and 15 of stat (11 and 12 after the name), in clock ticks;
    // /proc always reports them in USER_HZ, which is 100 on Linux whatever the kernel's HZ.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    #[allow(clippy::cast_precision_loss, reason = "clock ticks, far under 2^52")]
    Some(ticks as f64 / 100.0)
}

/// Open file descriptors of this process.
pub(crate) fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&v, 50.0), Some(50.0));
        assert_eq!(percentile_ms(&v, 99.0), Some(99.0));
        assert_eq!(percentile_ms(&[7000], 95.0), Some(7.0));
        assert_eq!(percentile_ms(&[], 50.0), None);
    }

    #[test]
    fn proc_figures_are_readable() {
        assert!(status_field("VmHWM").is_some_and(|kib| kib > 0));
        assert!(status_field("Threads").is_some_and(|n| n >= 1));
        assert!(cpu_seconds().is_some());
        assert!(open_fds().is_some_and(|n| n >= 3));
    }
}
