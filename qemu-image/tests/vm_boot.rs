//! Real VMs from the current image (`cargo run -p qemu-image -- build` makes it): the accelerator
//! probe picks TCG + microvm on our TCG-only machines and leaves no QEMU behind; a restricted-
//! network guest reaches a host TCP service only through its guestfwd relay.
//!
//! Heavy (each boots a VM under TCG), so `#[ignore]`d; scripts/test.sh runs them in its heavy
//! tier. They fail, never skip, when QEMU or the image is missing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    unreachable_pub,
    missing_debug_implementations
)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use qemu_image::boot::{self, BootOptions};
use qemu_image::guest::{AGENT_STARTED_MARKER, GuestConfig, GuestNetwork};
use qemu_image::image::{self, Image};
use qemu_image::probe::{self, ProbeOptions};
use qemu_image::spec::{Accel, Machine, NetworkMode};
use qemu_image::vm;

const QEMU: &str = "qemu-system-x86_64";

/// The tests of this file run one at a time: the probe test asserts that no QEMU child is left,
/// which another test's running VM (same process) would break.
static VM_LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    VM_LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

fn current_image() -> Image {
    image::current(&image::cache_dir())
        .expect("no VM image: run `cargo run -p qemu-image -- build` first")
}

/// Pids of this process's children whose command is QEMU.
fn qemu_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).unwrap_or_default();
        if ppid == me && head.contains("qemu-system") {
            found.push(head.split_whitespace().next().unwrap().parse().unwrap());
        }
    }
    found
}

#[test]
#[ignore = "heavy: boots probe VMs under TCG (about 15 s)"]
fn probe_picks_tcg_and_microvm_and_leaves_no_qemu() {
    let _serial = serial();
    let image = current_image();
    let started = Instant::now();
    let d = probe::detect(Path::new(QEMU), &image, &ProbeOptions::default());
    let took = started.elapsed();
    eprintln!("detection after {took:?}: {d:#?}");
    assert_eq!(d.accel, Accel::Tcg, "{:?}", d.notes);
    assert_eq!(d.machine, Machine::Microvm, "{:?}", d.notes);
    assert!(d.tsc_khz.is_some_and(|k| k > 100_000));
    assert!(
        d.notes
            .iter()
            .any(|n| n.contains("microvm probe under tcg: QUARRY-PROBE-OK")),
        "{:?}",
        d.notes
    );
    assert!(
        qemu_children().is_empty(),
        "qemu left behind: {:?}",
        qemu_children()
    );
    assert!(took < Duration::from_secs(60), "probe took {took:?}");
}

#[test]
#[ignore = "heavy: boots a full VM under TCG (about 30 s)"]
fn restricted_guest_reaches_a_host_service_through_its_relay() {
    let _serial = serial();
    let image = current_image();
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    // The agent dials SERVER first thing; quarry-init relays 127.0.0.1:PORT in the guest to
    // 10.0.2.100:PORT, which QEMU relays to this listener.
    let config = GuestConfig {
        build_uuid: "vm-boot-test".to_owned(),
        agent_env: BTreeMap::from([
            ("SERVER".to_owned(), format!("127.0.0.1:{port}")),
            ("TOKEN".to_owned(), "test-token".to_owned()),
            ("INSECURE".to_owned(), "true".to_owned()),
        ]),
        ca_cert: None,
        ssh_authorized_keys: vec![],
        network: GuestNetwork {
            address: "10.0.2.15/24".to_owned(),
            gateway: None,
            nameservers: vec![],
            hosts: vec![],
        },
        forwards: vec![],
        debug: false,
        max_lifetime_s: 120,
    };
    let opts = BootOptions {
        qemu: QEMU.into(),
        image,
        config,
        detection: probe::detect(
            Path::new(QEMU),
            &Image::at("/unused"),
            &ProbeOptions {
                accel: Some(Accel::Tcg),
                machine: Some(Machine::Microvm),
                ..ProbeOptions::default()
            },
        ),
        memory_mib: 1024,
        vcpus: 2,
        scratch_bytes: 2 << 30,
        ssh_port: None,
        network: NetworkMode::Restricted,
        services: vec![format!("127.0.0.1:{port}")],
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut spec, config) = boot::plan(&opts, dir.path()).unwrap();
    // Hardened as buildman runs it: unprivileged, seccomp, bounded files, console on a pipe.
    spec.run_as = Some("nobody".to_owned());
    spec.sandbox = true;
    spec.max_open_files = Some(256);
    spec.console_log = None;
    vm::make_scratch(spec.scratch.as_ref().unwrap(), opts.scratch_bytes).unwrap();
    vm::write_config(spec.config_file.as_ref().unwrap(), &config).unwrap();
    let started = Instant::now();
    let mut child = vm::command(&spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let group = Pid::from_raw(i32::try_from(child.id()).unwrap());
    let mut stdout = child.stdout.take().unwrap();
    let console_reader = std::thread::spawn(move || {
        let mut console = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || console.len() > 1 << 20 {
                break;
            }
            console.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&console).into_owned()
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // QEMU dropped to `nobody` once the guest runs.
    std::thread::sleep(Duration::from_secs(2));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().collect::<Vec<_>>(),
        ["Uid:", "65534", "65534", "65534", "65534"],
        "{status}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(nofile.split_whitespace().nth(3), Some("256"), "{nofile}");

    host.set_nonblocking(true).unwrap();
    let deadline = Duration::from_secs(120);
    let accepted = loop {
        match host.accept() {
            Ok((conn, _)) => break Some(conn),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        if started.elapsed() > deadline || child.try_wait().unwrap().is_some() {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let connected_after = started.elapsed();
    let mut preface = [0u8; 24];
    let read = accepted.map(|mut conn| {
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        conn.read_exact(&mut preface).map(|()| preface)
    });
    let _ = killpg(group, Signal::SIGKILL);
    let _ = child.wait();
    let console = console_reader.join().unwrap();
    let stderr = stderr_reader.join().unwrap();
    eprintln!(
        "guest connected after {connected_after:?}\n--- qemu stderr ---\n{stderr}\n\
         --- console ---\n{console}"
    );
    let preface = read
        .unwrap_or_else(|| panic!("no connection from the guest within {deadline:?}"))
        .expect("reading the agent's first bytes");
    // The agent's plaintext gRPC client opens with the HTTP/2 connection preface: bytes went
    // guest -> quarry-init relay -> slirp guestfwd -> socat -> this listener.
    assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert!(console.contains(AGENT_STARTED_MARKER), "{console}");
    assert!(qemu_children().is_empty());
}
