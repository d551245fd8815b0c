//! [`detect`]: KVM or TCG, microvm or q35, decided by booting the image's kernel and initramfs
//! with `quarry.probe=1` (the stage-1 init prints [`PROBE_MARKER`] and powers off) under a
//! deadline. `/dev/kvm` existing proves nothing: on some hosts a KVM guest hangs or QEMU aborts.
//!
//! Blocking code (buildman calls it from `spawn_blocking`). Every probe QEMU runs in its own
//! process group and temporary directory; both are gone when a probe returns.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Child, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::guest::PROBE_MARKER;
use crate::image::Image;
use crate::spec::{Accel, Machine, NetworkMode, VmSpec};
use crate::vm::{command, tail};

mod orphans;
mod tsc;
pub use orphans::reap_orphans;
pub use tsc::{TscSource, cpu_khz, tsc_khz};

/// How [`detect`] decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Use this accelerator without probing for it.
    pub accel: Option<Accel>,
    /// Use this machine type without probing for it.
    pub machine: Option<Machine>,
    /// How long the KVM probe guest may take to print the marker.
    pub kvm_deadline: Duration,
    /// How long the TCG (machine type) probe guest may take.
    pub tcg_deadline: Duration,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            accel: None,
            machine: None,
            kvm_deadline: Duration::from_secs(10),
            tcg_deadline: Duration::from_secs(30),
        }
    }
}

/// What [`detect`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detection {
    /// The accelerator to run builds with.
    pub accel: Accel,
    /// The machine type to run builds with.
    pub machine: Machine,
    /// `tsc_early_khz=` for the kernel (TCG only; see [`tsc_khz`]).
    pub tsc_khz: Option<u64>,
    /// Human-readable reasons, with the probe times.
    pub notes: Vec<String>,
}

/// Memory of a probe guest, in MiB: the kernel and the initramfs only.
const PROBE_MEMORY_MIB: u64 = 256;
/// How long a probe guest may take to power off after printing the marker.
const POWEROFF_GRACE: Duration = Duration::from_secs(3);
/// How often the console log is read.
const POLL: Duration = Duration::from_millis(50);

/// Decides accelerator and machine type for `image` on this host; never fails (the fallback is
/// TCG and q35, with notes saying why).
pub fn detect(qemu: &Path, image: &Image, opts: &ProbeOptions) -> Detection {
    let mut notes = Vec::new();
    let accel = match opts.accel {
        Some(accel) => {
            notes.push(format!(
                "accelerator forced to {}: not probed",
                accel.as_str()
            ));
            accel
        }
        None => match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
            Err(e) => {
                notes.push(format!(
                    "/dev/kvm cannot be opened read-write ({e}): using tcg"
                ));
                Accel::Tcg
            }
            Ok(_) => {
                let machine = opts.machine.unwrap_or(Machine::Microvm);
                let run = boot(qemu, image, Accel::Kvm, machine, None, opts.kvm_deadline);
                notes.push(format!(
                    "kvm probe ({}): {}",
                    machine.as_str(),
                    run.describe()
                ));
                if run.ok {
                    Accel::Kvm
                } else {
                    notes.push("using tcg".to_owned());
                    Accel::Tcg
                }
            }
        },
    };
    let tsc_khz = match accel {
        Accel::Kvm => None,
        Accel::Tcg => {
            let khz = tsc::tsc_khz();
            match khz {
                None => notes.push(
                    "no TSC frequency in the kernel log or /proc/cpuinfo: microvm under tcg may \
                     hang"
                        .to_owned(),
                ),
                Some((khz, TscSource::CpuInfo)) => notes.push(format!(
                    "TSC {khz} kHz from /proc/cpuinfo \"cpu MHz\" (no kernel calibration \
                     in /dev/kmsg): wrong if the CPU clock scales"
                )),
                Some((khz, TscSource::KernelLog)) => {
                    notes.push(format!("TSC {khz} kHz from the kernel's calibration"));
                }
            }
            khz.map(|(khz, _)| khz)
        }
    };
    let machine = match opts.machine {
        Some(machine) => {
            notes.push(format!(
                "machine forced to {}: not probed",
                machine.as_str()
            ));
            machine
        }
        // The kvm probe above booted microvm already.
        None if accel == Accel::Kvm && opts.accel.is_none() => Machine::Microvm,
        None => {
            let deadline = match accel {
                Accel::Kvm => opts.kvm_deadline,
                Accel::Tcg => opts.tcg_deadline,
            };
            let run = boot(qemu, image, accel, Machine::Microvm, tsc_khz, deadline);
            notes.push(format!(
                "microvm probe under {}: {}",
                accel.as_str(),
                run.describe()
            ));
            if run.ok {
                Machine::Microvm
            } else {
                let q35 = boot(qemu, image, accel, Machine::Q35, tsc_khz, deadline);
                notes.push(format!(
                    "q35 probe under {}: {}",
                    accel.as_str(),
                    q35.describe()
                ));
                notes.push(if q35.ok {
                    "using q35".to_owned()
                } else {
                    "using q35, but no machine type booted: check the image and QEMU".to_owned()
                });
                Machine::Q35
            }
        }
    };
    Detection {
        accel,
        machine,
        tsc_khz,
        notes,
    }
}

/// One probe boot's result.
#[derive(Debug)]
struct ProbeRun {
    ok: bool,
    elapsed: Duration,
    /// Why it failed (empty when it worked).
    detail: String,
}

impl ProbeRun {
    fn describe(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        if self.ok {
            format!("{PROBE_MARKER} after {secs:.1} s")
        } else {
            format!("failed after {secs:.1} s: {}", self.detail)
        }
    }
}

/// Boots the probe guest once and waits for the marker, QEMU's exit or the deadline. QEMU is
/// always gone (killed with its process group, then reaped) when this returns.
fn boot(
    qemu: &Path,
    image: &Image,
    accel: Accel,
    machine: Machine,
    tsc_khz: Option<u64>,
    deadline: Duration,
) -> ProbeRun {
    let started = Instant::now();
    let fail = |detail: String| ProbeRun {
        ok: false,
        elapsed: started.elapsed(),
        detail,
    };
    let name = orphans::probe_name(std::process::id());
    let dir = match tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir()
    {
        Ok(dir) => dir,
        Err(e) => return fail(format!("cannot create a temporary directory: {e}")),
    };
    let console = dir.path().join("console.log");
    let stderr_path = dir.path().join("qemu.stderr");
    let spec = VmSpec {
        qemu_binary: qemu.to_owned(),
        name,
        machine,
        accel,
        memory_mib: PROBE_MEMORY_MIB,
        vcpus: 2,
        kernel: image.kernel(),
        initrd: image.initrd(),
        rootfs: image.rootfs(),
        scratch: None,
        kernel_args: vec!["quarry.probe=1".to_owned()],
        tsc_khz,
        config_file: None,
        console_log: Some(console.clone()),
        network: NetworkMode::Restricted,
        ssh_forward: None,
        guest_forwards: vec![],
        relay: None,
        max_open_files: None,
        run_as: None,
        sandbox: false,
        qmp_socket: None,
        pidfile: None,
    };
    let mut cmd = command(&spec);
    match std::fs::File::create(&stderr_path) {
        Ok(f) => cmd.stderr(Stdio::from(f)),
        Err(e) => return fail(format!("cannot create {stderr_path:?}: {e}")),
    };
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return fail(format!("cannot start {qemu:?}: {e}")),
    };
    let saw_marker = || {
        std::fs::read(&console)
            .map(|c| String::from_utf8_lossy(&c).contains(PROBE_MARKER))
            .unwrap_or(false)
    };
    let mut result = None;
    while started.elapsed() < deadline {
        if saw_marker() {
            result = Some(Ok(started.elapsed()));
            break;
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                // The marker may have been written just before exit.
                result = Some(if saw_marker() {
                    Ok(started.elapsed())
                } else {
                    Err(format!("qemu exited with {status}"))
                });
                break;
            }
            Ok(None) => sleep(POLL),
            Err(e) => {
                result = Some(Err(format!("cannot wait for qemu: {e}")));
                break;
            }
        }
    }
    if matches!(result, Some(Ok(_))) {
        // Give the guest its clean power-off; it is killed below if it overstays.
        let grace = Instant::now();
        while grace.elapsed() < POWEROFF_GRACE && matches!(child.try_wait(), Ok(None)) {
            sleep(POLL);
        }
    }
    stop(&mut child);
    let elapsed = match result {
        Some(Ok(elapsed)) => elapsed,
        Some(Err(why)) => return fail(with_output(why, &stderr_path, &console)),
        None => {
            let why = format!("no {PROBE_MARKER} within {} s", deadline.as_secs_f64());
            return fail(with_output(why, &stderr_path, &console));
        }
    };
    ProbeRun {
        ok: true,
        elapsed,
        detail: String::new(),
    }
}

/// Kills `child`'s process group (QEMU and any relay it started) and reaps `child`.
fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None))
        && let Ok(pid) = i32::try_from(child.id())
    {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.wait();
}

/// `why` plus the end of QEMU's stderr and of the guest console.
fn with_output(why: String, stderr: &Path, console: &Path) -> String {
    let mut out = why;
    for (what, path) in [("qemu stderr", stderr), ("console", console)] {
        let text = std::fs::read(path)
            .map(|b| tail(&b, 300))
            .unwrap_or_default();
        if !text.is_empty() {
            out.push_str(&format!("; {what}: {}", text.replace('\n', " | ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_accel_and_machine_skip_every_probe() {
        // A QEMU that does not exist proves nothing was started.
        let opts = ProbeOptions {
            accel: Some(Accel::Tcg),
            machine: Some(Machine::Q35),
            ..ProbeOptions::default()
        };
        let d = detect(
            Path::new("/nonexistent/qemu"),
            &Image::at("/nonexistent"),
            &opts,
        );
        assert_eq!((d.accel, d.machine), (Accel::Tcg, Machine::Q35));
        assert!(d.tsc_khz.is_some());
        // Forced accelerator, TSC source, forced machine.
        assert_eq!(d.notes.len(), 3, "{:?}", d.notes);
        assert!(d.notes[1].starts_with("TSC "), "{:?}", d.notes);
    }

    #[test]
    fn a_qemu_that_cannot_start_falls_back_to_tcg_and_q35_with_reasons() {
        let opts = ProbeOptions {
            accel: Some(Accel::Tcg),
            ..ProbeOptions::default()
        };
        let d = detect(
            Path::new("/nonexistent/qemu"),
            &Image::at("/nonexistent"),
            &opts,
        );
        assert_eq!((d.accel, d.machine), (Accel::Tcg, Machine::Q35));
        let text = d.notes.join("\n");
        assert!(text.contains("microvm probe under tcg: failed"), "{text}");
        assert!(text.contains("cannot start"), "{text}");
        assert!(text.contains("no machine type booted"), "{text}");
    }

    #[test]
    fn a_guest_that_never_prints_the_marker_is_killed_at_the_deadline() {
        // A script that ignores its arguments and sleeps stands in for a hung guest.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-qemu");
        std::fs::write(&fake, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let started = Instant::now();
        let run = boot(
            &fake,
            &Image::at("/nonexistent"),
            Accel::Tcg,
            Machine::Microvm,
            None,
            Duration::from_millis(300),
        );
        assert!(!run.ok);
        assert!(
            run.detail.contains("no QUARRY-PROBE-OK within 0.3 s"),
            "{}",
            run.detail
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_guest_printing_the_marker_passes() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-qemu");
        // Writes the marker to the console chardev's path, as the guest would, then exits.
        let script = "#!/bin/sh\nfor a; do case \"$a\" in file,id=console,path=*) p=${a#file,id=console,path=};; esac; done\necho QUARRY-PROBE-OK > \"$p\"\n";
        std::fs::write(&fake, script).unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let run = boot(
            &fake,
            &Image::at("/nonexistent"),
            Accel::Tcg,
            Machine::Microvm,
            None,
            Duration::from_secs(5),
        );
        assert!(run.ok, "{run:?}");
    }
}
