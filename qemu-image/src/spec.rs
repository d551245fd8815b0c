//! [`VmSpec`]: everything that determines one VM's QEMU command line, in plain values, so that
//! [`crate::cmdline::qemu_args`] can be a pure, unit-tested function.

use std::net::SocketAddr;
use std::path::PathBuf;

/// The accelerator QEMU runs the guest with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation (Tiny Code Generator).
    Tcg,
}

impl Accel {
    /// QEMU's name, as in `-accel kvm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The machine type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Machine {
    /// QEMU's `microvm`: no PCI, no firmware tables beyond what boot needs, virtio-mmio devices.
    Microvm,
    /// `q35` with virtio-pci devices: the fallback where `microvm` does not work.
    Q35,
}

impl Machine {
    /// QEMU's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        }
    }
}

/// What the guest's user-mode network may reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NetworkMode {
    /// slirp `restrict=on`: nothing but the [`GuestFwd`] relays (buildman, registry, proxies).
    /// A build reaches the internet only through a configured proxy. The default.
    Restricted,
    /// slirp without restriction: the guest reaches the internet through the host, and also
    /// every service on the host's loopback at `10.0.2.2`. Opt-in (`VM_NETWORK: user`).
    User,
}

/// One slirp `guestfwd`: a guest connection to `guest` (`10.0.2.x:port`) is relayed to the host
/// service `host` (`host:port` as the host resolves it) by running the relay command.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GuestFwd {
    /// The guest-visible address, e.g. `10.0.2.100:8080`.
    pub guest: SocketAddr,
    /// The host service, e.g. `127.0.0.1:8080` or `quay.example.com:443`.
    pub host: String,
}

/// One VM, fully described. Paths are absolute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// `qemu-system-x86_64` (or a path to it).
    pub qemu_binary: PathBuf,
    /// `-name`: identifies the process (buildman finds orphaned VMs by it), e.g.
    /// `quarry-build-<execution id>`.
    pub name: String,
    /// Machine type.
    pub machine: Machine,
    /// Accelerator.
    pub accel: Accel,
    /// Guest memory in MiB (`VM_MEMORY`).
    pub memory_mib: u64,
    /// vCPUs (`VM_CPUS`).
    pub vcpus: u32,
    /// Kernel for direct boot.
    pub kernel: PathBuf,
    /// Stage-1 initramfs.
    pub initrd: PathBuf,
    /// The image's read-only root filesystem (attached read-only, serial `quarry-root`).
    pub rootfs: PathBuf,
    /// The per-build scratch disk, raw, writable (serial `quarry-scratch`); `None` for the probe.
    pub scratch: Option<PathBuf>,
    /// Extra kernel command-line words appended after ours (e.g. `quarry.probe=1`).
    pub kernel_args: Vec<String>,
    /// TSC frequency for `tsc_early_khz=` (microvm under TCG has no PIT/HPET to calibrate).
    pub tsc_khz: Option<u64>,
    /// The [`crate::guest::GuestConfig`] JSON file, passed as `fw_cfg` `opt/quarry/config`.
    pub config_file: Option<PathBuf>,
    /// Where the guest's console (serial) output goes: `Some(file)` appends it to that file;
    /// `None` writes it to QEMU's stdout, for the caller to read from a pipe with a bounded
    /// buffer ([`crate::vm::command`] then leaves stdout for the caller to set).
    pub console_log: Option<PathBuf>,
    /// Network mode.
    pub network: NetworkMode,
    /// Host address forwarded to the guest's SSH port 22 (`127.0.0.1:2222`); `None`: none.
    pub ssh_forward: Option<SocketAddr>,
    /// Guest-to-host relays.
    pub guest_forwards: Vec<GuestFwd>,
    /// The `socat` binary libslirp runs per guest connection to relay it to the host service
    /// (`<socat> -lf /dev/null STDIO TCP:<host>:<port>,connect-timeout=10`); `None`: `socat`
    /// from `PATH`.
    pub relay: Option<PathBuf>,
    /// Runs QEMU under `prlimit --nofile=N:N`, bounding the open files (and so the slirp sockets
    /// of the per-connection relays) a guest can make QEMU hold; `None`: inherited limit.
    pub max_open_files: Option<u64>,
    /// `-runas USER`: QEMU opens its disks, `fw_cfg` file and chardevs as the caller, then drops
    /// to this user before the guest runs; `None`: stays the caller.
    pub run_as: Option<String>,
    /// `-sandbox on,...`: QEMU's seccomp filter ([`crate::cmdline::SANDBOX`], or
    /// [`crate::cmdline::SANDBOX_WITH_RUNAS`] with `run_as`).
    pub sandbox: bool,
    /// QMP control socket, if any.
    pub qmp_socket: Option<PathBuf>,
    /// `-pidfile`, if any.
    pub pidfile: Option<PathBuf>,
}
