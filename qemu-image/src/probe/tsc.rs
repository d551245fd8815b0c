//! The host TSC frequency for `tsc_early_khz=` (microvm under TCG has no PIT/HPET to calibrate
//! against). `/proc/cpuinfo`'s "cpu MHz" is the current clock on hosts with frequency scaling,
//! not the TSC rate, so the kernel's own calibration comes first: its "tsc: Refined TSC
//! clocksource calibration: X MHz" (else "tsc: Detected X MHz processor") line from `/dev/kmsg`.
//! Measuring with `_rdtsc` is not possible here: it is an `unsafe fn` in Rust 1.95 and the
//! workspace forbids unsafe code. The kernel ring buffer may have wrapped on a long-running host;
//! then "cpu MHz" is the fallback.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::OFlag;

/// Where a TSC frequency came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    /// The kernel's calibration, from its log.
    KernelLog,
    /// `/proc/cpuinfo` "cpu MHz" (may be the scaled current clock).
    CpuInfo,
}

/// The host TSC frequency in kHz and where it came from; `None` when neither source has it.
pub fn tsc_khz() -> Option<(u64, TscSource)> {
    if let Some(khz) = read_kmsg().as_deref().and_then(parse_kernel_log) {
        return Some((khz, TscSource::KernelLog));
    }
    cpu_khz().map(|khz| (khz, TscSource::CpuInfo))
}

/// The host CPU's clock in kHz from the first `cpu MHz` line of `/proc/cpuinfo`.
pub fn cpu_khz() -> Option<u64> {
    parse_cpu_khz(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

pub(crate) fn parse_cpu_khz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    mhz_to_khz(line.split_once(':')?.1.trim())
}

/// The kernel's TSC frequency from its log text: the last refined calibration, else the last
/// "Detected ... processor" line.
pub(crate) fn parse_kernel_log(log: &str) -> Option<u64> {
    let find = |marker: &str, end: &str| {
        log.lines().rev().find_map(|line| {
            let rest = &line[line.find(marker)? + marker.len()..];
            mhz_to_khz(
                rest.strip_suffix(end)
                    .unwrap_or(rest)
                    .trim()
                    .strip_suffix(" MHz")?,
            )
        })
    };
    find("Refined TSC clocksource calibration: ", "")
        .or_else(|| find("tsc: Detected ", " processor"))
}

/// `"2445.430"` (MHz) -> 2_445_430 (kHz); digits beyond kHz are dropped.
fn mhz_to_khz(mhz: &str) -> Option<u64> {
    let (whole, frac) = mhz.split_once('.').unwrap_or((mhz, ""));
    if frac.chars().any(|c| !c.is_ascii_digit()) {
        return None;
    }
    let frac3: String = frac.chars().chain("000".chars()).take(3).collect();
    let khz = whole.parse::<u64>().ok()?.checked_mul(1000)? + frac3.parse::<u64>().ok()?;
    (khz > 0).then_some(khz)
}

/// The kernel log's messages, one a line, read from `/dev/kmsg` without blocking (each read
/// returns one `prio,seq,time,flags;message` record; `EPIPE` means records were overwritten).
fn read_kmsg() -> Option<String> {
    let mut file: File = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open("/dev/kmsg")
        .ok()?;
    let mut out = String::new();
    let mut buf = vec![0u8; 8192];
    for _ in 0..100_000 {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let record = String::from_utf8_lossy(&buf[..n]);
                if let Some((_, message)) = record.split_once(';') {
                    // Continuation lines (" KEY=value") follow the first line; keep the first.
                    out.push_str(message.lines().next().unwrap_or_default());
                    out.push('\n');
                }
            }
            Err(e) if e.kind() == ErrorKind::BrokenPipe => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_khz_from_cpuinfo() {
        let info = "processor\t: 0\nmodel name\t: X\ncpu MHz\t\t: 2445.43\ncache size\t: 1 KB\ncpu MHz\t\t: 1.0\n";
        assert_eq!(parse_cpu_khz(info), Some(2_445_430));
        assert_eq!(parse_cpu_khz("cpu MHz\t: 3000\n"), Some(3_000_000));
        assert_eq!(parse_cpu_khz("cpu MHz\t: 1999.9999\n"), Some(1_999_999));
        assert_eq!(parse_cpu_khz("model name: x\n"), None);
        assert_eq!(parse_cpu_khz("cpu MHz: fast\n"), None);
    }

    #[test]
    fn kernel_log_prefers_the_refined_calibration() {
        let log = "[Firmware Bug]: TSC doesn't count with P0 frequency!\n\
                   tsc: Detected 2445.430 MHz processor\n\
                   clocksource: tsc-early: mask: 0xffffffffffffffff\n\
                   tsc: Refined TSC clocksource calibration: 2445.402 MHz\n";
        assert_eq!(parse_kernel_log(log), Some(2_445_402));
        let dmesg_style = "[    0.000071] tsc: Detected 3000.000 MHz processor\n";
        assert_eq!(parse_kernel_log(dmesg_style), Some(3_000_000));
        assert_eq!(parse_kernel_log("tsc: Detected fast MHz processor\n"), None);
        assert_eq!(
            parse_kernel_log("clocksource: Switched to clocksource tsc\n"),
            None
        );
        assert_eq!(parse_kernel_log(""), None);
    }

    #[test]
    fn this_host_has_a_tsc_frequency() {
        let (khz, source) = tsc_khz().expect("no TSC frequency on this host");
        assert!(khz > 100_000, "{khz} kHz from {source:?}");
        // Root on this machine: the kernel log is readable and has the calibration.
        assert_eq!(source, TscSource::KernelLog);
    }
}
