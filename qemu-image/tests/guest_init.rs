//! `quarry-init` in a real VM from the current image (`cargo run -p qemu-image -- build`): every
//! setup step reaches the console, a failing agent powers the VM off by itself, and a debug VM
//! keeps running with SSH open to the authorized key only, until its lifetime watchdog fires.
//!
//! Heavy (each boots a VM under TCG), so `#[ignore]`d; scripts/test.sh runs them in its heavy
//! tier. They fail, never skip, when QEMU, ssh or the image is missing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    unreachable_pub,
    missing_debug_implementations
)]

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use qemu_image::boot::{self, BootOptions};
use qemu_image::guest::{AGENT_STARTED_MARKER, GuestConfig, GuestNetwork};
use qemu_image::image::{self, Image};
use qemu_image::probe::{self, ProbeOptions};
use qemu_image::spec::{Accel, Machine, NetworkMode, VmSpec};
use qemu_image::vm;

const QEMU: &str = "qemu-system-x86_64";
const TOKEN: &str = "guest-init-test-token";
/// A self-signed CA for the CA step (never used for TLS here).
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";

/// A VM killed with its process group (QEMU and its relays) when dropped.
struct Vm {
    child: Child,
    spec: VmSpec,
    _dir: tempfile::TempDir,
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Vm {
    fn console(&self) -> String {
        let log = self
            .spec
            .console_log
            .as_ref()
            .expect("boot::plan logs to a file");
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// Polls the console until it contains `text`; panics with the console after `deadline`.
    fn wait_for(&mut self, text: &str, deadline: Duration) {
        let started = Instant::now();
        while !self.console().contains(text) {
            let exited = self.child.try_wait().unwrap();
            assert!(
                exited.is_none() && started.elapsed() < deadline,
                "no {text:?} on the console (qemu exit: {exited:?}, after {:?}):\n{}",
                started.elapsed(),
                self.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A host port nothing listens on: the guest's relay to it connects, then is closed by socat.
fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn boot(config: GuestConfig, ssh_port: Option<u16>) -> Vm {
    let image: Image = image::current(&image::cache_dir())
        .expect("no VM image: run `cargo run -p qemu-image -- build` first");
    let server = config.agent_env["SERVER"].clone();
    let opts = BootOptions {
        qemu: QEMU.into(),
        image,
        config,
        // Forced: these machines are TCG-only, and the probe is vm_boot.rs's subject.
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
        ssh_port,
        network: NetworkMode::Restricted,
        services: vec![server],
    };
    let dir = tempfile::tempdir().unwrap();
    let (spec, config) = boot::plan(&opts, dir.path()).unwrap();
    vm::make_scratch(spec.scratch.as_ref().unwrap(), opts.scratch_bytes).unwrap();
    vm::write_config(spec.config_file.as_ref().unwrap(), &config).unwrap();
    let child = vm::command(&spec)
        .spawn()
        .expect("starting qemu-system-x86_64");
    Vm {
        child,
        spec,
        _dir: dir,
    }
}

fn config(debug: bool, keys: Vec<String>, max_lifetime_s: u64) -> GuestConfig {
    GuestConfig {
        build_uuid: "guest-init-test".to_owned(),
        agent_env: BTreeMap::from([
            ("SERVER".to_owned(), format!("127.0.0.1:{}", dead_port())),
            ("TOKEN".to_owned(), TOKEN.to_owned()),
            ("INSECURE".to_owned(), "true".to_owned()),
        ]),
        ca_cert: Some(CA_PEM.to_owned()),
        ssh_authorized_keys: keys,
        network: GuestNetwork {
            address: "10.0.2.15/24".to_owned(),
            gateway: None,
            nameservers: vec![],
            hosts: vec![],
        },
        forwards: vec![],
        debug,
        max_lifetime_s,
    }
}

#[test]
#[ignore = "heavy: boots a full VM under TCG (about 15 s)"]
fn failing_agent_logs_every_step_and_powers_off() {
    let started = Instant::now();
    let mut vm = boot(config(false, vec![], 120), None);
    let deadline = Duration::from_secs(120);
    let status = loop {
        if let Some(status) = vm.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < deadline,
            "the VM did not power off within {deadline:?}:\n{}",
            vm.console()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = started.elapsed();
    let console = vm.console();
    eprintln!("qemu exited {status} after {took:?}\n--- console ---\n{console}");
    assert!(status.success(), "{status}");
    // Every step, in order.
    let steps = [
        "quarry-init: mounted ",
        "quarry-init: config: build guest-init-test, 3 agent variables, 1 forwards",
        "quarry-init: network: eth0 10.0.2.15/24, gateway none",
        "quarry-init: forward: 127.0.0.1:",
        "quarry-init: ca: extra CA added",
        "quarry-init: ssh: off (no authorized keys)",
        AGENT_STARTED_MARKER,
        "agent: ",
        "quarry-init: agent exited with status 1",
        "quarry-init: powering off: the agent finished",
    ];
    let mut from = 0;
    for step in steps {
        let at = console[from..]
            .find(step)
            .unwrap_or_else(|| panic!("{step:?} missing or out of order:\n{console}"));
        from += at + step.len();
    }
    assert!(
        console.contains("ping to the build manager failed"),
        "{console}"
    );
    assert!(!console.contains("quarry-init: error:"), "{console}");
    assert!(!console.contains(TOKEN), "the token reached the console");
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("running ssh-keygen (install openssh-client)");
    assert!(out.status.success(), "{out:?}");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public)
}

fn ssh(key: &Path, port: u16, command: &str) -> Output {
    Command::new("ssh")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=30",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string(), "root@127.0.0.1", command])
        .output()
        .expect("running ssh (install openssh-client)")
}

#[test]
#[ignore = "heavy: boots a full VM under TCG and waits for its 60 s lifetime (about 65 s)"]
fn debug_vm_keeps_running_with_ssh_for_the_authorized_key_only_until_its_lifetime() {
    let keys = tempfile::tempdir().unwrap();
    let (good, good_pub) = keygen(keys.path(), "good");
    let (bad, _) = keygen(keys.path(), "bad");
    let port = vm::free_port(IpAddr::V4(Ipv4Addr::LOCALHOST), 2222, &HashSet::new()).unwrap();
    let started = Instant::now();
    const LIFETIME_S: u64 = 60;
    let mut vm = boot(config(true, vec![good_pub], LIFETIME_S), Some(port));
    vm.wait_for(
        "DEBUG: VM kept running for SSH access",
        Duration::from_secs(120),
    );
    eprintln!("debug line after {:?}", started.elapsed());

    let out = ssh(
        &good,
        port,
        "cat /var/log/builder-agent.log; hostname; stat -c %a /root/.ssh/authorized_keys",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ssh failed: {out:?}\n{}",
        vm.console()
    );
    assert!(
        stdout.contains("ping to the build manager failed"),
        "{stdout}"
    );
    assert!(stdout.contains("guest-init-test\n600\n"), "{stdout}");

    let refused = ssh(&bad, port, "true");
    assert!(!refused.status.success(), "another key got in: {refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Permission denied"));
    // Still up: debug mode waits for the lifetime watchdog, not for the agent...
    assert!(vm.child.try_wait().unwrap().is_none(), "{}", vm.console());
    // ...which powers it off after max_lifetime_s (counted from config read, a few s after boot).
    let deadline = Duration::from_secs(LIFETIME_S + 30);
    let status = loop {
        if let Some(status) = vm.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < deadline,
            "still running after {deadline:?}:\n{}",
            vm.console()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("powered off after {:?}", started.elapsed());
    assert!(status.success(), "{status}");
    let console = vm.console();
    assert!(
        console.contains(&format!(
            "quarry-init: powering off: max lifetime of {LIFETIME_S} s reached"
        )),
        "{console}"
    );
    assert!(started.elapsed() >= Duration::from_secs(LIFETIME_S));
    // dropbear dying in the shutdown is expected, not an error line.
    assert!(!console.contains("quarry-init: error:"), "{console}");
}
