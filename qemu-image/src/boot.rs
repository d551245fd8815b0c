//! `qemu-image boot`: one VM in the foreground, for debugging the image and the guest init by
//! hand. The scratch disk, configuration and console log live in a temporary directory that is
//! removed when the VM ends, also on Ctrl-C or SIGTERM (QEMU is stopped first).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::forward::{self, ForwardError};
use crate::guest::GuestConfig;
use crate::image::Image;
use crate::probe::Detection;
use crate::spec::{NetworkMode, VmSpec};
use crate::vm::{self, VmError};

/// Why `boot` failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The services cannot be forwarded.
    #[error("invalid --service")]
    Forward(#[from] ForwardError),
    /// Preparing the scratch disk or configuration failed.
    #[error("failed to prepare the VM")]
    Prepare(#[from] VmError),
    /// A temporary directory, the console log or the signal set-up failed.
    #[error("failed to {what}")]
    Io {
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// QEMU could not be started.
    #[error("failed to start {qemu:?}: install qemu-system-x86")]
    Spawn {
        /// The program.
        qemu: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// One foreground VM.
#[derive(Clone, Debug)]
pub struct BootOptions {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// The image to boot.
    pub image: Image,
    /// The guest configuration; forwards and hosts for `services` are added to it.
    pub config: GuestConfig,
    /// Accelerator, machine type and TSC frequency (from [`crate::probe::detect`]).
    pub detection: Detection,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Scratch disk size in bytes.
    pub scratch_bytes: u64,
    /// Host port on 127.0.0.1 forwarded to the guest's SSH port.
    pub ssh_port: Option<u16>,
    /// Network mode.
    pub network: NetworkMode,
    /// Host services (`host:port`) the guest reaches.
    pub services: Vec<String>,
}

/// The VM spec and the final guest configuration for `opts`, with its files in `dir`.
pub fn plan(opts: &BootOptions, dir: &Path) -> Result<(VmSpec, GuestConfig), BootError> {
    let plan = forward::plan(&opts.services, opts.network)?;
    let mut config = opts.config.clone();
    for f in plan.guest {
        if !config.forwards.contains(&f) {
            config.forwards.push(f);
        }
    }
    for h in plan.hosts {
        if !config.network.hosts.contains(&h) {
            config.network.hosts.push(h);
        }
    }
    if opts.network == NetworkMode::User {
        // slirp's gateway and DNS proxy, unless the configuration says otherwise.
        config
            .network
            .gateway
            .get_or_insert_with(|| "10.0.2.2".to_owned());
        if config.network.nameservers.is_empty() {
            config.network.nameservers.push("10.0.2.3".to_owned());
        }
    }
    let spec = VmSpec {
        qemu_binary: opts.qemu.clone(),
        name: format!("quarry-boot-{}", config.build_uuid),
        machine: opts.detection.machine,
        accel: opts.detection.accel,
        memory_mib: opts.memory_mib,
        vcpus: opts.vcpus,
        kernel: opts.image.kernel(),
        initrd: opts.image.initrd(),
        rootfs: opts.image.rootfs(),
        scratch: Some(dir.join("scratch.img")),
        kernel_args: vec![],
        tsc_khz: opts.detection.tsc_khz,
        config_file: Some(dir.join("config.json")),
        console_log: Some(dir.join(CONSOLE_FILE)),
        network: opts.network,
        ssh_forward: opts
            .ssh_port
            .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p))),
        guest_forwards: plan.qemu,
        relay: None,
        max_open_files: None,
        run_as: None,
        sandbox: false,
        qmp_socket: None,
        pidfile: None,
    };
    Ok((spec, config))
}

/// The console log's name in the boot's temporary directory.
const CONSOLE_FILE: &str = "console.log";

/// Boots the VM, copies its console to `out` until QEMU exits, and removes every file. SIGINT,
/// SIGTERM and SIGHUP stop QEMU (SIGTERM to its process group, then SIGKILL after 5 s); the
/// status is QEMU's.
pub fn run(opts: &BootOptions, out: &mut dyn Write) -> Result<ExitStatus, BootError> {
    let io = |what| move |source| BootError::Io { what, source };
    let dir = tempfile::Builder::new()
        .prefix("quarry-boot-")
        .tempdir()
        .map_err(io("create a temporary directory"))?;
    let (spec, config) = plan(opts, dir.path())?;
    if let Some(scratch) = &spec.scratch {
        vm::make_scratch(scratch, opts.scratch_bytes)?;
    }
    if let Some(config_file) = &spec.config_file {
        vm::write_config(config_file, &config)?;
    }
    let console_log = dir.path().join(CONSOLE_FILE);
    File::create(&console_log).map_err(io("create the console log"))?;

    // Signals only set flags (signal-hook, safe), which the loop below polls; a blocked signal
    // mask with a signalfd would be inherited by QEMU, which then ignores SIGTERM. The handlers
    // are removed again before returning; QEMU starts with default dispositions (exec resets
    // handled signals).
    let stop = Arc::new(AtomicBool::new(false));
    let mut ids = Vec::new();
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        match signal_hook::flag::register(signal, Arc::clone(&stop)) {
            Ok(id) => ids.push(id),
            Err(e) => {
                ids.into_iter().for_each(|id| {
                    signal_hook::low_level::unregister(id);
                });
                return Err(io("handle signals")(e));
            }
        }
    }
    let result = supervise(&spec, &console_log, &stop, out);
    for id in ids {
        signal_hook::low_level::unregister(id);
    }
    result
}

fn supervise(
    spec: &VmSpec,
    console_log: &Path,
    stop: &AtomicBool,
    out: &mut dyn Write,
) -> Result<ExitStatus, BootError> {
    let io = |what| move |source| BootError::Io { what, source };
    let mut console = File::open(console_log).map_err(io("open the console log"))?;
    let mut child = vm::command(spec)
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| BootError::Spawn {
            qemu: spec.qemu_binary.clone(),
            source,
        })?;
    let group = i32::try_from(child.id()).ok().map(Pid::from_raw);
    let mut stopping: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let status = loop {
        copy_new(&mut console, &mut buf, out);
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if stop.load(Ordering::Relaxed) && stopping.is_none() {
            let _ = writeln!(out, "\nqemu-image boot: signal received: stopping the VM");
            if let Some(pg) = group {
                let _ = killpg(pg, Signal::SIGTERM);
            }
            stopping = Some(Instant::now());
        }
        if stopping.is_some_and(|t| t.elapsed() > Duration::from_secs(5))
            && let Some(pg) = group
        {
            let _ = killpg(pg, Signal::SIGKILL);
        }
        sleep(Duration::from_millis(50));
    };
    copy_new(&mut console, &mut buf, out);
    let _ = out.flush();
    Ok(status)
}

/// Copies what was appended to the console log since the last call.
fn copy_new(console: &mut File, buf: &mut [u8], out: &mut dyn Write) {
    while let Ok(n @ 1..) = console.read(buf) {
        let _ = out.write_all(&buf[..n]);
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::guest::{GuestForward, GuestNetwork};
    use crate::spec::{Accel, Machine};

    fn opts(network: NetworkMode) -> BootOptions {
        BootOptions {
            qemu: PathBuf::from("qemu-system-x86_64"),
            image: Image::at("/img"),
            config: GuestConfig {
                build_uuid: "u1".to_owned(),
                agent_env: BTreeMap::new(),
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
                max_lifetime_s: 60,
            },
            detection: Detection {
                accel: Accel::Tcg,
                machine: Machine::Microvm,
                tsc_khz: Some(1000),
                notes: vec![],
            },
            memory_mib: 1024,
            vcpus: 2,
            scratch_bytes: 1 << 30,
            ssh_port: Some(2222),
            network,
            services: vec!["localhost:50051".to_owned(), "reg.example:5000".to_owned()],
        }
    }

    #[test]
    fn plan_merges_forwards_and_hosts_into_the_config() {
        let (spec, config) = plan(&opts(NetworkMode::Restricted), Path::new("/t")).unwrap();
        assert_eq!(spec.scratch.as_deref(), Some(Path::new("/t/scratch.img")));
        assert_eq!(
            spec.config_file.as_deref(),
            Some(Path::new("/t/config.json"))
        );
        assert_eq!(spec.ssh_forward, Some("127.0.0.1:2222".parse().unwrap()));
        assert_eq!(spec.guest_forwards.len(), 2);
        assert_eq!(
            config.forwards,
            [GuestForward {
                listen: "127.0.0.1:50051".to_owned(),
                target: "10.0.2.100:50051".to_owned()
            }]
        );
        assert_eq!(
            config.network.hosts,
            [("10.0.2.101".to_owned(), "reg.example".to_owned())]
        );
        assert_eq!(config.network.gateway, None);
        assert!(config.network.nameservers.is_empty());
    }

    #[test]
    fn user_network_gets_slirp_gateway_and_dns() {
        let (_, config) = plan(&opts(NetworkMode::User), Path::new("/t")).unwrap();
        assert_eq!(config.network.gateway.as_deref(), Some("10.0.2.2"));
        assert_eq!(config.network.nameservers, ["10.0.2.3"]);
    }

    #[test]
    fn a_bad_service_is_refused() {
        let mut o = opts(NetworkMode::Restricted);
        o.services.push("nope".to_owned());
        assert!(matches!(
            plan(&o, Path::new("/t")),
            Err(BootError::Forward(_))
        ));
    }
}
