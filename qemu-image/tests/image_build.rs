//! Heavy: builds the builder VM image and boots it under plain `qemu-system-x86_64` (TCG,
//! microvm), proving kernel + initramfs (probe mode) and the root filesystem (stage 1 with
//! `quarry.init=/bin/sh`, then `podman --version` on the console).
//!
//! The image is built into the shared cache (`image::cache_dir()`, as `qemu-image build` does),
//! so a warm cache makes this quick and the other VM tests reuse the result. Needs root (debootstrap,
//! chroot), network access to deb.debian.org on a cold cache, and the `builder-agent` binary next
//! to `qemu-image` (`cargo build -p builder-agent`).
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use qemu_image::guest::PROBE_MARKER;
use qemu_image::image::{self, BuildOptions, Image};

fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: run scripts/install-deps.sh"
    );
}

/// The image, built once per test process: the tests run in parallel threads and must not
/// build (and prune) concurrently.
fn built_image() -> Image {
    static BUILT: OnceLock<Image> = OnceLock::new();
    BUILT.get_or_init(build_image).clone()
}

fn build_image() -> Image {
    for tool in [
        "debootstrap",
        "mksquashfs",
        "qemu-system-x86_64",
        "mkfs.ext4",
        "strip",
    ] {
        require(tool);
    }
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_qemu-image"))
        .parent()
        .unwrap()
        .to_path_buf();
    let agent = bin_dir.join("builder-agent");
    assert!(
        agent.is_file(),
        "{agent:?} is missing: run `cargo build -p builder-agent` before the heavy tests"
    );
    let opts = BuildOptions {
        cache: image::cache_dir(),
        agent,
        init: PathBuf::from(env!("CARGO_BIN_EXE_quarry-init")),
        force: false,
        rebuild_base: false,
        mirror: image::build::DEFAULT_MIRROR.to_string(),
    };
    let mut log = Vec::new();
    let started = Instant::now();
    let image = image::build(&opts, &mut log).unwrap();
    eprintln!(
        "{}built in {:.1} s",
        String::from_utf8_lossy(&log),
        started.elapsed().as_secs_f64()
    );
    // What `qemu-image path` and the executor use finds the same image.
    assert_eq!(image::current(&opts.cache).unwrap(), image);
    image
}

/// The host TSC frequency from /proc/cpuinfo: microvm under TCG has no PIT to calibrate against.
fn tsc_khz() -> u64 {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    // "cpu MHz : 2445.430": the kHz are the digits without the dot (three decimals).
    let mhz = text
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz")?.split(':').nth(1))
        .unwrap()
        .trim();
    let (int, frac) = mhz.split_once('.').unwrap_or((mhz, ""));
    let frac = format!("{frac:0<3}");
    format!("{int}{}", &frac[..3]).parse().unwrap()
}

fn qemu(image: &Image, extra_append: &str) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on"])
        .args(["-accel", "tcg", "-m", "1024", "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(image.kernel())
        .arg("-initrd")
        .arg(image.initrd())
        .arg("-append")
        .arg(format!(
            "console=ttyS0 quiet panic=-1 tsc_early_khz={} {extra_append}",
            tsc_khz()
        ));
    cmd
}

/// Lines of the child's stdout, read on a thread.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).split(b'\n') {
            let Ok(line) = line else { break };
            if tx
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    rx
}

/// Waits (with a deadline) for a line containing `needle`; returns everything seen so far.
fn wait_for(
    rx: &mpsc::Receiver<String>,
    needle: &str,
    deadline: Instant,
    seen: &mut String,
) -> bool {
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(needle) {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

fn wait_exit(child: &mut Child, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

#[test]
#[ignore = "heavy: builds the VM image (debootstrap on a cold cache) and boots it under QEMU"]
fn image_builds_and_boots_in_probe_mode() {
    let image = built_image();
    let started = Instant::now();
    let mut child = qemu(&image, "quarry.probe=1")
        .args(["-serial", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(&mut child);
    let mut seen = String::new();
    let found = wait_for(
        &rx,
        PROBE_MARKER,
        started + Duration::from_secs(60),
        &mut seen,
    );
    let exited = wait_exit(&mut child, Instant::now() + Duration::from_secs(20));
    assert!(found, "no {PROBE_MARKER} on the console:\n{seen}");
    assert!(exited, "the probe guest did not power off:\n{seen}");
    eprintln!("probe boot: {:.1} s", started.elapsed().as_secs_f64());
}

fn scratch_disk(dir: &Path) -> PathBuf {
    let path = dir.join("scratch.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    path
}

#[test]
#[ignore = "heavy: builds the VM image and boots its root filesystem under QEMU"]
fn root_filesystem_mounts_and_runs_podman() {
    let image = built_image();
    let dir = tempfile::tempdir().unwrap();
    let scratch = scratch_disk(dir.path());
    let started = Instant::now();
    let mut child = qemu(&image, "quarry.init=/bin/sh")
        .arg("-drive")
        .arg(format!(
            "file={},if=none,id=root,format=raw,readonly=on",
            image.rootfs().display()
        ))
        .args(["-device", "virtio-blk-device,drive=root,serial=quarry-root"])
        .arg("-drive")
        .arg(format!(
            "file={},if=none,id=scratch,format=raw",
            scratch.display()
        ))
        .args([
            "-device",
            "virtio-blk-device,drive=scratch,serial=quarry-scratch",
        ])
        .args(["-serial", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(&mut child);
    let mut seen = String::new();
    // dash prints this when it starts as PID 1 on the console; then it reads commands.
    let shell = wait_for(
        &rx,
        "job control",
        started + Duration::from_secs(90),
        &mut seen,
    );
    let booted = started.elapsed();
    if shell {
        // Let the shell print its prompt and start reading before typing.
        std::thread::sleep(Duration::from_secs(2));
        let mut stdin = child.stdin.take().unwrap();
        // The root filesystem has no poweroff command; sysrq `o` powers off. (Ending PID 1 with
        // `exit` panics the kernel, and on microvm QEMU then reboots despite -no-reboot.)
        let cmds = "echo ROOT-$((40+2)) $(grep -c overlay /proc/mounts); podman --version; \
                    runc --version | head -1; modprobe veth && echo VETH-$((1+1)); echo o >/proc/sysrq-trigger\n";
        // In small pieces: the emulated UART's 16-byte FIFO drops a burst typed at once.
        for chunk in cmds.as_bytes().chunks(8) {
            stdin.write_all(chunk).unwrap();
            stdin.flush().unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        // Everything until QEMU exits (its stdout closes), with stdin kept open meanwhile.
        let deadline = Instant::now() + Duration::from_secs(120);
        wait_for(&rx, "\0never printed", deadline, &mut seen);
        drop(stdin);
    }
    let exited = wait_exit(&mut child, Instant::now() + Duration::from_secs(30));
    assert!(shell, "no shell on the console (stage 1 failed?):\n{seen}");
    assert!(
        seen.contains("ROOT-42 1"),
        "overlay root not mounted:\n{seen}"
    );
    assert!(
        seen.contains("podman version 4."),
        "podman did not run:\n{seen}"
    );
    assert!(seen.contains("runc version"), "runc did not run:\n{seen}");
    assert!(
        seen.contains("VETH-2"),
        "modprobe veth failed in the root filesystem:\n{seen}"
    );
    assert!(exited, "the guest did not power off:\n{seen}");
    eprintln!(
        "boot to shell: {:.1} s, whole run {:.1} s",
        booted.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
