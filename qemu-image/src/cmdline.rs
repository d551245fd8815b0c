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

/// The relay binary when [`VmSpec::relay`] is `None`, found through QEMU's `PATH`.
pub const DEFAULT_RELAY: &str = "socat";

/// Seconds socat waits for the host service before it gives up (and closes the guest
/// connection), so a relay to a port nothing answers on does not linger.
pub const RELAY_CONNECT_TIMEOUT_S: u32 = 10;

/// The `-sandbox` value when [`VmSpec::sandbox`] is set and [`VmSpec::run_as`] is not: QEMU's
/// seccomp filter denying obsolete system calls, set*uid/gid (`elevateprivileges=deny`) and
/// scheduler/affinity changes (`resourcecontrol=deny`). `spawn=allow` stays: libslirp forks and
/// execs the `guestfwd` relay per guest connection. Measured with QEMU 7.2 under TCG: the probe
/// guest boots, and a full guest's relayed connection reaches the host (tests/vm_boot.rs).
pub const SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=allow,resourcecontrol=deny";

/// The `-sandbox` value with [`VmSpec::run_as`]: QEMU 7.2 installs the filter before it drops
/// privileges, so `elevateprivileges=deny` and `=children` (which denies set*uid too and only
/// adds `no_new_privs`) both kill it with SIGSYS at the `-runas` setuid (measured: exit 159
/// after 0.1 s). `allow` is safe here: after `-runas` QEMU has given up root for good (real,
/// effective and saved ids), so set*uid cannot raise it again.
pub const SANDBOX_WITH_RUNAS: &str =
    "on,obsolete=deny,elevateprivileges=allow,spawn=allow,resourcecontrol=deny";

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

    match &spec.console_log {
        Some(log) => {
            args.push("-chardev");
            args.push_os(opts_with_path("file,id=console,path=", log, ""));
        }
        // QEMU's stdout; `signal=off`: no terminal signal handling (stdin is /dev/null).
        None => args.push_all(["-chardev", "stdio,id=console,signal=off"]),
    }
    // `-nodefaults` already leaves out the monitor; `-monitor none` keeps it off stdio for sure.
    args.push_all(["-serial", "chardev:console", "-monitor", "none"]);

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
    if let Some(user) = &spec.run_as {
        args.push_all(["-runas", user]);
    }
    if spec.sandbox {
        let value = match spec.run_as {
            Some(_) => SANDBOX_WITH_RUNAS,
            None => SANDBOX,
        };
        args.push_all(["-sandbox", value]);
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
        value.push_str(&escape_opt(&guestfwd(fwd, spec.relay.as_deref())));
    }
    value
}

/// One `guestfwd` value (before `,` escaping):
/// `tcp:IP:PORT-cmd:<socat> -lf /dev/null STDIO TCP:<host:port>,connect-timeout=10`.
pub fn guestfwd(fwd: &GuestFwd, relay: Option<&Path>) -> String {
    let socat = relay
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| DEFAULT_RELAY.to_owned());
    let target = format!("TCP:{},connect-timeout={RELAY_CONNECT_TIMEOUT_S}", fwd.host);
    let argv = [socat.as_str(), "-lf", "/dev/null", "STDIO", &target];
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
            console_log: Some(PathBuf::from("/run/b1/console.log")),
            network: NetworkMode::Restricted,
            ssh_forward: Some("127.0.0.1:2222".parse().unwrap()),
            guest_forwards: vec![GuestFwd {
                guest: "10.0.2.100:50051".parse().unwrap(),
                host: "127.0.0.1:50051".to_owned(),
            }],
            relay: None,
            max_open_files: Some(256),
            run_as: Some("quarry-vm".to_owned()),
            sandbox: true,
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
            "-serial", "chardev:console", "-monitor", "none",
            "-netdev", "user,id=n0,ipv6=off,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,\
                guestfwd=tcp:10.0.2.100:50051-cmd:socat -lf /dev/null STDIO \
                TCP:127.0.0.1:50051,,connect-timeout=10",
            "-device", "virtio-net-device,netdev=n0",
            "-qmp", "unix:/run/b1/qmp.sock,server=on,wait=off",
            "-pidfile", "/run/b1/qemu.pid",
            "-runas", "quarry-vm",
            "-sandbox", "on,obsolete=deny,elevateprivileges=allow,spawn=allow,resourcecontrol=deny",
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
    fn guestfwd_per_forward_with_custom_socat_quoted_and_commas_escaped() {
        let mut s = spec(Machine::Microvm, Accel::Tcg);
        s.ssh_forward = Some("0.0.0.0:2301".parse().unwrap());
        s.relay = Some(PathBuf::from("/opt/my tools,v2/it's/socat"));
        s.guest_forwards.push(GuestFwd {
            guest: "10.0.2.101:443".parse().unwrap(),
            host: "quay.example.com:443".to_owned(),
        });
        let socat = "'/opt/my tools,,v2/it'\\''s/socat' -lf /dev/null STDIO";
        assert_eq!(
            netdev_of(&s),
            format!(
                "user,id=n0,ipv6=off,restrict=on,hostfwd=tcp:0.0.0.0:2301-:22,\
                 guestfwd=tcp:10.0.2.100:50051-cmd:{socat} \
                 TCP:127.0.0.1:50051,,connect-timeout=10,\
                 guestfwd=tcp:10.0.2.101:443-cmd:{socat} \
                 TCP:quay.example.com:443,,connect-timeout=10"
            )
        );
    }

    #[test]
    fn console_to_stdout_without_a_file() {
        let mut s = spec(Machine::Microvm, Accel::Tcg);
        s.console_log = None;
        let args = strings(&qemu_args(&s));
        let i = args.iter().position(|a| a == "-chardev").unwrap();
        assert_eq!(
            args[i..i + 6],
            [
                "-chardev",
                "stdio,id=console,signal=off",
                "-serial",
                "chardev:console",
                "-monitor",
                "none"
            ]
        );
        assert!(!args.iter().any(|a| a.contains("console.log")));
        assert!(args.iter().any(|a| a == "-nographic"));
    }

    #[test]
    fn sandbox_without_runas_denies_privilege_changes() {
        let mut s = spec(Machine::Microvm, Accel::Tcg);
        s.run_as = None;
        let args = strings(&qemu_args(&s));
        assert_eq!(
            args[args.len() - 2..],
            [
                "-sandbox",
                "on,obsolete=deny,elevateprivileges=deny,spawn=allow,resourcecontrol=deny"
            ]
        );
    }

    #[test]
    fn no_runas_or_sandbox_unless_asked() {
        let mut s = spec(Machine::Microvm, Accel::Tcg);
        s.run_as = None;
        s.sandbox = false;
        let args = strings(&qemu_args(&s));
        assert!(!args.iter().any(|a| a == "-runas" || a == "-sandbox"));
        assert_eq!(args.last().map(String::as_str), Some("/run/b1/qemu.pid"));
    }

    #[test]
    fn paths_and_name_with_commas_are_escaped() {
        let mut s = spec(Machine::Microvm, Accel::Tcg);
        s.name = "a,b".to_owned();
        s.rootfs = PathBuf::from("/x,y/rootfs");
        s.console_log = Some(PathBuf::from("/x,y/console.log"));
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
            guestfwd(&fwd, None),
            "tcp:10.0.2.100:80-cmd:socat -lf /dev/null STDIO TCP:h:80,connect-timeout=10"
        );
    }
}
