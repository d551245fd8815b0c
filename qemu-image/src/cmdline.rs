//! [`qemu_args`]: the QEMU argument list for one [`VmSpec`]. Pure, so that every flag is unit-tested.
//!
//! Facts measured with QEMU 7.2 / libslirp 4.7 on Debian 12 (TCG) that shaped it:
//! - `microvm` under TCG needs `tsc_early_khz=` on the kernel command line (no PIT calibration) and
//!   keeps ACPI on (`acpi=off` breaks SMP and timers). `pit=off,pic=off` also boot, but made no
//!   difference measurable above the noise (probe guest 4.6-7.5 s either way on 2 busy cores), so
//!   the PIT and PIC stay at QEMU's defaults. The kernel skips PCI probing (`pci=off`): microvm
//!   has no PCI bus (measured gain within the noise, about 0.3 s CPU).
//! - libslirp runs a `guestfwd` `cmd:` once per guest connection, splitting it like a shell
//!   (`g_shell_parse_argv`: quotes work) and giving the child the guest connection as stdin,
//!   stdout AND stderr. The default relay therefore sends socat's own diagnostics to `/dev/null`,
//!   or they would reach the guest inside the relayed stream.
//! - In QEMU's `key=value,...` option syntax a `,` inside a value is written `,,`.

use std::ffi::OsString;
use std::path::Path;

use crate::guest::FW_CFG_NAME;
use crate::spec::{Accel, GuestFwd, Machine, NetworkMode, VmSpec};

/// The `-M` value for [`Machine::Microvm`]: no option ROMs, the ISA serial port for the console,
/// the RTC on (the kernel otherwise probes for a missing one).
pub const MICROVM_MACHINE: &str = "microvm,x-option-roms=off,isa-serial=on,rtc=on";

/// The relay used when [`VmSpec::relay`] is empty: `socat -lf /dev/null STDIO TCP:<host:port>`.
pub const DEFAULT_RELAY: [&str; 4] = ["socat", "-lf", "/dev/null", "STDIO"];

/// The netdev id of the guest's NIC.
const NETDEV_ID: &str = "n0";

/// QEMU's arguments (without the program name) for `spec`.
pub fn qemu_args(spec: &VmSpec) -> Vec<OsString> {
    let mut args = Args::default();
    args.push_all(["-name", &spec.name.replace(',', ",,")]);
    let machine = match spec.machine {
        Machine::Microvm => MICROVM_MACHINE,
        Machine::Q35 => "q35",
    };
    args.push_all(["-M", machine, "-accel", spec.accel.as_str()]);
    if spec.accel == Accel::Kvm {
        args.push_all(["-cpu", "host"]);
    }
    args.push_all(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    args.push_all(["-m", &format!("{}M", spec.memory_mib)]);
    args.push_all(["-smp", &spec.vcpus.to_string()]);

    args.push("-kernel");
    args.push_os(spec.kernel.as_os_str().to_owned());
    args.push("-initrd");
    args.push_os(spec.initrd.as_os_str().to_owned());
    args.push_all(["-append", &kernel_cmdline(spec)]);

    let device = |kind: &str| match spec.machine {
        Machine::Microvm => format!("virtio-{kind}-device"),
        Machine::Q35 => format!("virtio-{kind}-pci"),
    };
    args.push("-drive");
    args.push_os(opts_with_path(
        "file=",
        &spec.rootfs,
        ",if=none,id=root,format=raw,readonly=on",
    ));
    args.push_all([
        "-device",
        &format!("{},drive=root,serial=quarry-root", device("blk")),
    ]);
    if let Some(scratch) = &spec.scratch {
        // Throw-away disk: no flushes needed (cache=unsafe), and TRIM frees host space.
        args.push("-drive");
        args.push_os(opts_with_path(
            "file=",
            scratch,
            ",if=none,id=scratch,format=raw,cache=unsafe,discard=unmap",
        ));
        args.push_all([
            "-device",
            &format!("{},drive=scratch,serial=quarry-scratch", device("blk")),
        ]);
    }
    if let Some(config) = &spec.config_file {
        args.push("-fw_cfg");
        args.push_os(opts_with_path(
            &format!("name={FW_CFG_NAME},file="),
            config,
            "",
        ));
    }

    args.push("-chardev");
    args.push_os(opts_with_path(
        "file,id=console,path=",
        &spec.console_log,
        "",
    ));
    args.push_all(["-serial", "chardev:console"]);

    args.push_all(["-netdev", &netdev(spec)]);
    args.push_all(["-device", &format!("{},netdev={NETDEV_ID}", device("net"))]);

    if let Some(qmp) = &spec.qmp_socket {
        args.push("-qmp");
        args.push_os(opts_with_path("unix:", qmp, ",server=on,wait=off"));
    }
    if let Some(pidfile) = &spec.pidfile {
        args.push("-pidfile");
        args.push_os(pidfile.as_os_str().to_owned());
    }
    args.0
}

/// The kernel command line: ours, then [`VmSpec::kernel_args`].
fn kernel_cmdline(spec: &VmSpec) -> String {
    let mut words = vec![
        "console=ttyS0".to_owned(),
        "quiet".to_owned(),
        "panic=-1".to_owned(),
    ];
    if spec.machine == Machine::Microvm {
        words.push("pci=off".to_owned());
    }
    if let Some(khz) = spec.tsc_khz {
        words.push(format!("tsc_early_khz={khz}"));
    }
    words.extend(spec.kernel_args.iter().cloned());
    words.join(" ")
}

/// The `-netdev user,...` value.
fn netdev(spec: &VmSpec) -> String {
    let mut value = format!("user,id={NETDEV_ID},ipv6=off");
    if spec.network == NetworkMode::Restricted {
        value.push_str(",restrict=on");
    }
    if let Some(ssh) = spec.ssh_forward {
        value.push_str(&format!(",hostfwd=tcp:{}:{}-:22", ssh.ip(), ssh.port()));
    }
    for fwd in &spec.guest_forwards {
        value.push_str(",guestfwd=");
        value.push_str(&escape_opt(&guestfwd(fwd, &spec.relay)));
    }
    value
}

/// One `guestfwd` value (before `,` escaping): `tcp:IP:PORT-cmd:<relay> <host:port>`.
pub fn guestfwd(fwd: &GuestFwd, relay: &[String]) -> String {
    let mut argv: Vec<String> = if relay.is_empty() {
        DEFAULT_RELAY.iter().map(|s| (*s).to_owned()).collect()
    } else {
        relay.to_vec()
    };
    if relay.is_empty() {
        argv.push(format!("TCP:{}", fwd.host));
    } else {
        argv.push(fwd.host.clone());
    }
    let cmd: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
    format!(
        "tcp:{}:{}-cmd:{}",
        fwd.guest.ip(),
        fwd.guest.port(),
        cmd.join(" ")
    )
}

/// Quotes `word` for `g_shell_parse_argv` (POSIX shell rules): bare when it holds only
/// unambiguous characters, else single-quoted with `'` written as `'\''`.
fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Escapes a value for QEMU's `key=value,...` syntax.
fn escape_opt(value: &str) -> String {
    value.replace(',', ",,")
}

/// `prefix` + `path` (commas escaped, non-UTF-8 bytes kept) + `suffix`.
fn opts_with_path(prefix: &str, path: &Path, suffix: &str) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut bytes = prefix.as_bytes().to_vec();
    for &b in path.as_os_str().as_bytes() {
        bytes.push(b);
        if b == b',' {
            bytes.push(b',');
        }
    }
    bytes.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(bytes)
}

/// Argument list under construction.
#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, arg: &str) {
        self.0.push(arg.into());
    }
    fn push_os(&mut self, arg: OsString) {
        self.0.push(arg);
    }
    fn push_all<const N: usize>(&mut self, args: [&str; N]) {
        self.0.extend(args.iter().map(OsString::from));
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use super::*;

    fn spec(machine: Machine, accel: Accel) -> VmSpec {
        VmSpec {
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
            name: "quarry-build-e1".to_owned(),
            machine,
            accel,
            memory_mib: 2048,
            vcpus: 2,
            kernel: PathBuf::from("/img/vmlinuz"),
            initrd: PathBuf::from("/img/initrd.img"),
            rootfs: PathBuf::from("/img/rootfs.squashfs"),
            scratch: Some(PathBuf::from("/run/b1/scratch.img")),
            kernel_args: vec![],
            tsc_khz: Some(2_445_430),
            config_file: Some(PathBuf::from("/run/b1/config.json")),
            console_log: PathBuf::from("/run/b1/console.log"),
            network: NetworkMode::Restricted,
            ssh_forward: Some("127.0.0.1:2222".parse().unwrap()),
            guest_forwards: vec![GuestFwd {
                guest: "10.0.2.100:50051".parse().unwrap(),
                host: "127.0.0.1:50051".to_owned(),
            }],
            relay: vec![],
            qmp_socket: Some(PathBuf::from("/run/b1/qmp.sock")),
            pidfile: Some(PathBuf::from("/run/b1/qemu.pid")),
        }
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn microvm_tcg_exact_arguments() {
        let args = strings(&qemu_args(&spec(Machine::Microvm, Accel::Tcg)));
        #[rustfmt::skip]
        let expected = [
            "-name", "quarry-build-e1",
            "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on",
            "-accel", "tcg",
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-m", "2048M", "-smp", "2",
            "-kernel", "/img/vmlinuz", "-initrd", "/img/initrd.img",
            "-append", "console=ttyS0 quiet panic=-1 pci=off tsc_early_khz=2445430",
            "-drive", "file=/img/rootfs.squashfs,if=none,id=root,format=raw,readonly=on",
            "-device", "virtio-blk-device,drive=root,serial=quarry-root",
            "-drive", "file=/run/b1/scratch.img,if=none,id=scratch,format=raw,cache=unsafe,discard=unmap",
            "-device", "virtio-blk-device,drive=scratch,serial=quarry-scratch",
            "-fw_cfg", "name=opt/quarry/config,file=/run/b1/config.json",
            "-chardev", "file,id=console,path=/run/b1/console.log",
            "-serial", "chardev:console",
            "-netdev", "user,id=n0,ipv6=off,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,\
                guestfwd=tcp:10.0.2.100:50051-cmd:socat -lf /dev/null STDIO TCP:127.0.0.1:50051",
            "-device", "virtio-net-device,netdev=n0",
            "-qmp", "unix:/run/b1/qmp.sock,server=on,wait=off",
            "-pidfile", "/run/b1/qemu.pid",
        ];
        assert_eq!(args, expected);
    }

    #[test]
    fn q35_kvm_uses_pci_devices_and_host_cpu() {
        let mut s = spec(Machine::Q35, Accel::Kvm);
        s.tsc_khz = None;
        let args = strings(&qemu_args(&s));
        assert_eq!(
            &args[2..10],
            [
                "-M",
                "q35",
                "-accel",
                "kvm",
                "-cpu",
                "host",
                "-nodefaults",
                "-no-user-config"
            ]
        );
        let append = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(args[append + 1], "console=ttyS0 quiet panic=-1");
        let devices: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "-device")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(
            devices,
            [
                "virtio-blk-pci,drive=root,serial=quarry-root",
                "virtio-blk-pci,drive=scratch,serial=quarry-scratch",
                "virtio-net-pci,netdev=n0",
            ]
        );
        assert!(!args.iter().any(|a| a.contains("microvm")));
    }

    fn netdev_of(s: &VmSpec) -> String {
        let args = strings(&qemu_args(s));
        let i = args.iter().position(|a| a == "-netdev").unwrap();
        args[i + 1].clone()
    }

    #[test]
    fn user_network_is_not_restricted() {
        let mut s = spec(Machine::Microvm, Accel::Tcg);
        s.network = NetworkMode::User;
        s.ssh_forward = None;
        s.guest_forwards.clear();
        assert_eq!(netdev_of(&s), "user,id=n0,ipv6=off");
        s.network = NetworkMode::Restricted;
        assert_eq!(netdev_of(&s), "user,id=n0,ipv6=off,restrict=on");
    }

    #[test]
    fn guestfwd_per_forward_with_custom_relay_quoted_and_commas_escaped() {
        let mut s = spec(Machine::Microvm, Accel::Tcg);
        s.ssh_forward = Some("0.0.0.0:2301".parse().unwrap());
        s.relay = vec![
            "/opt/my relay".to_owned(),
            "--opt=a,b".to_owned(),
            "it's".to_owned(),
        ];
        s.guest_forwards.push(GuestFwd {
            guest: "10.0.2.101:443".parse().unwrap(),
            host: "quay.example.com:443".to_owned(),
        });
        assert_eq!(
            netdev_of(&s),
            "user,id=n0,ipv6=off,restrict=on,hostfwd=tcp:0.0.0.0:2301-:22,\
             guestfwd=tcp:10.0.2.100:50051-cmd:'/opt/my relay' --opt=a,,b 'it'\\''s' 127.0.0.1:50051,\
             guestfwd=tcp:10.0.2.101:443-cmd:'/opt/my relay' --opt=a,,b 'it'\\''s' quay.example.com:443"
        );
    }

    #[test]
    fn paths_and_name_with_commas_are_escaped() {
        let mut s = spec(Machine::Microvm, Accel::Tcg);
        s.name = "a,b".to_owned();
        s.rootfs = PathBuf::from("/x,y/rootfs");
        s.console_log = PathBuf::from("/x,y/console.log");
        let args = strings(&qemu_args(&s));
        assert_eq!(args[1], "a,,b");
        assert!(
            args.contains(&"file=/x,,y/rootfs,if=none,id=root,format=raw,readonly=on".to_owned())
        );
        assert!(args.contains(&"file,id=console,path=/x,,y/console.log".to_owned()));
    }

    #[test]
    fn probe_spec_has_no_scratch_config_forwards_qmp_or_pidfile() {
        let mut s = spec(Machine::Microvm, Accel::Tcg);
        s.scratch = None;
        s.config_file = None;
        s.guest_forwards.clear();
        s.ssh_forward = None;
        s.qmp_socket = None;
        s.pidfile = None;
        s.kernel_args = vec!["quarry.probe=1".to_owned()];
        let args = strings(&qemu_args(&s));
        for absent in ["-fw_cfg", "-qmp", "-pidfile"] {
            assert!(!args.iter().any(|a| a == absent), "{absent} in {args:?}");
        }
        assert!(
            !args
                .iter()
                .any(|a| a.contains("scratch") || a.contains("guestfwd"))
        );
        assert_eq!(args.iter().filter(|a| *a == "-drive").count(), 1);
        assert!(args.contains(
            &"console=ttyS0 quiet panic=-1 pci=off tsc_early_khz=2445430 quarry.probe=1".to_owned()
        ));
    }

    #[test]
    fn shell_quote_leaves_plain_words_bare() {
        assert_eq!(shell_quote("TCP:h:1"), "TCP:h:1");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        let addr: SocketAddr = "10.0.2.100:80".parse().unwrap();
        let fwd = GuestFwd {
            guest: addr,
            host: "h:80".to_owned(),
        };
        assert_eq!(
            guestfwd(&fwd, &[]),
            "tcp:10.0.2.100:80-cmd:socat -lf /dev/null STDIO TCP:h:80"
        );
    }
}
