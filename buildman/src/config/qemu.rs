//! Keys of the `qemu` executor (issue 4): one throw-away QEMU VM per build on this machine.
//!
//! Defaults are applied here (they are Quarry's own, not Quay's), so the executor gets plain
//! values; `VM_IMAGE` stays optional because its default (the newest image in the cache) is
//! looked up when the executor starts.

use std::net::IpAddr;
use std::path::PathBuf;

use qemu_image::spec::{Accel, Machine, NetworkMode};
use serde_yaml::Value;

use super::reader::{Ctx, MapReader};

/// Keys only the `qemu` executor reads.
pub(super) const QEMU_KEYS: &[&str] = &[
    "VM_IMAGE",
    "QEMU_BINARY",
    "VM_MEMORY",
    "VM_CPUS",
    "VM_ACCEL",
    "VM_MACHINE",
    "VM_NETWORK",
    "VM_DNS_SERVERS",
    "SSH_PORT",
    "SSH_BIND_ADDRESS",
    "VM_RUN_AS",
    "VM_MIN_FREE_SPACE",
];

/// Default `QEMU_BINARY`, looked up in `PATH`.
pub(super) const DEFAULT_QEMU_BINARY: &str = "qemu-system-x86_64";
/// Default `VM_MEMORY`: 2 GiB.
pub(super) const DEFAULT_VM_MEMORY: u64 = 2 << 30;
/// Default `VM_CPUS`.
pub(super) const DEFAULT_VM_CPUS: u32 = 2;
/// Default `SSH_PORT`: the first host port forwarded to a debug VM's SSH server.
pub(super) const DEFAULT_SSH_PORT: u16 = 2222;
/// Default `VM_MIN_FREE_SPACE`: 1 GiB.
pub(super) const DEFAULT_VM_MIN_FREE_SPACE: u64 = 1 << 30;
/// The smallest `VM_MEMORY` the guest (kernel, podman, the agent) boots and builds in.
const MIN_VM_MEMORY: u64 = 256 << 20;

/// `qemu` executor settings, defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuSettings {
    /// `VM_IMAGE`: an image directory made by `qemu-image build`; `None`: the current image in
    /// the cache (`qemu-image path` prints it).
    pub vm_image: Option<PathBuf>,
    /// `QEMU_BINARY` (default `qemu-system-x86_64`, looked up in `PATH`).
    pub qemu_binary: PathBuf,
    /// `VM_MEMORY` in bytes (default 2G).
    pub memory_bytes: u64,
    /// `VM_CPUS` (default 2).
    pub cpus: u32,
    /// `VM_ACCEL`: `None` (`auto`, the default) lets the probe decide between KVM and TCG.
    pub accel: Option<Accel>,
    /// `VM_MACHINE`: `None` (`auto`, the default) lets the probe decide.
    pub machine: Option<Machine>,
    /// `VM_NETWORK` (default `restricted`).
    pub network: NetworkMode,
    /// `VM_DNS_SERVERS`: the guest's nameservers in `user` mode (default: slirp's DNS proxy).
    pub dns_servers: Vec<IpAddr>,
    /// `SSH_PORT`: the first host port tried for a debug VM's SSH forward (default 2222).
    pub ssh_port: u16,
    /// `SSH_BIND_ADDRESS`: the host address the SSH forward listens on (default 127.0.0.1);
    /// always IPv4 (QEMU's `hostfwd` listens on IPv4 only here).
    pub ssh_bind_address: IpAddr,
    /// `VM_RUN_AS` as written: the user QEMU drops to (`-runas`) after opening its files.
    /// `None` (unset): `nobody` when buildman runs as root, no drop otherwise; `Some("")`: no
    /// drop. The executor resolves it at start and checks that the user exists.
    pub run_as: Option<String>,
    /// `VM_MIN_FREE_SPACE` in bytes (default 1G): a VM starts only when the work directory's
    /// filesystem has this much free. Not `VOLUME_SIZE`: the scratch disk is sparse and a
    /// check at start reserves nothing, so demanding its full size refused builds on hosts
    /// with room for them.
    pub min_free_bytes: u64,
}

impl Default for QemuSettings {
    fn default() -> Self {
        QemuSettings {
            vm_image: None,
            qemu_binary: PathBuf::from(DEFAULT_QEMU_BINARY),
            memory_bytes: DEFAULT_VM_MEMORY,
            cpus: DEFAULT_VM_CPUS,
            accel: None,
            machine: None,
            network: NetworkMode::Restricted,
            dns_servers: Vec::new(),
            ssh_port: DEFAULT_SSH_PORT,
            ssh_bind_address: IpAddr::from([127, 0, 0, 1]),
            run_as: None,
            min_free_bytes: DEFAULT_VM_MIN_FREE_SPACE,
        }
    }
}

impl QemuSettings {
    pub(super) fn parse(r: &mut MapReader<'_>, ctx: &mut Ctx) -> QemuSettings {
        let d = QemuSettings::default();
        let memory = r.size(ctx, "VM_MEMORY").and_then(|m| {
            if m.bytes() >= MIN_VM_MEMORY {
                return Some(m.bytes());
            }
            let got = Value::String(m.as_str().to_owned());
            ctx.wrong(
                r.key("VM_MEMORY"),
                "a size of at least 256M, such as 2G",
                &got,
            );
            None
        });
        let accel = match r.one_of(ctx, "VM_ACCEL", &["auto", "kvm", "tcg"]) {
            Some("kvm") => Some(Accel::Kvm),
            Some("tcg") => Some(Accel::Tcg),
            _ => None,
        };
        let machine = match r.one_of(ctx, "VM_MACHINE", &["auto", "microvm", "q35"]) {
            Some("microvm") => Some(Machine::Microvm),
            Some("q35") => Some(Machine::Q35),
            _ => None,
        };
        let network = match r.one_of(ctx, "VM_NETWORK", &["restricted", "user"]) {
            Some("user") => NetworkMode::User,
            _ => NetworkMode::Restricted,
        };
        let dns_servers = parse_dns(r, ctx, network);
        let ssh_bind_address = r.string(ctx, "SSH_BIND_ADDRESS").and_then(|s| {
            // QEMU's `hostfwd` takes an IPv4 listen address only (no IPv6 host forwards in
            // the QEMU 7.2 on these machines): refuse IPv6 here rather than fail every start.
            let ip = s.trim().parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4);
            if ip.is_none() {
                let expected = if s.trim().parse::<std::net::Ipv6Addr>().is_ok() {
                    "an IPv4 address such as 127.0.0.1 (QEMU forwards SSH from IPv4 only)"
                } else {
                    "an IPv4 address such as 127.0.0.1"
                };
                ctx.wrong(r.key("SSH_BIND_ADDRESS"), expected, &Value::String(s));
            }
            ip
        });
        QemuSettings {
            vm_image: r.string(ctx, "VM_IMAGE").map(PathBuf::from),
            qemu_binary: r
                .string(ctx, "QEMU_BINARY")
                .filter(|s| !s.is_empty())
                .map_or(d.qemu_binary, PathBuf::from),
            memory_bytes: memory.unwrap_or(d.memory_bytes),
            cpus: r
                .uint32(ctx, "VM_CPUS", 1..=64, "a whole number of vCPUs, 1 to 64")
                .unwrap_or(d.cpus),
            accel,
            machine,
            network,
            dns_servers,
            ssh_port: r.port(ctx, "SSH_PORT").unwrap_or(d.ssh_port),
            ssh_bind_address: ssh_bind_address.unwrap_or(d.ssh_bind_address),
            run_as: r.string(ctx, "VM_RUN_AS").map(|s| s.trim().to_owned()),
            min_free_bytes: r
                .size(ctx, "VM_MIN_FREE_SPACE")
                .map_or(d.min_free_bytes, |s| s.bytes()),
        }
    }
}

/// `VM_DNS_SERVERS`: IP addresses, and only in `user` mode (a restricted guest has no route to
/// any nameserver).
fn parse_dns(r: &mut MapReader<'_>, ctx: &mut Ctx, network: NetworkMode) -> Vec<IpAddr> {
    let key = r.key("VM_DNS_SERVERS");
    let Some(list) = r.strings(ctx, "VM_DNS_SERVERS") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, s) in list.into_iter().enumerate() {
        match s.trim().parse::<IpAddr>() {
            Ok(ip) => out.push(ip),
            Err(_) => ctx.wrong(
                format!("{key}[{i}]"),
                "an IP address such as 10.0.2.3",
                &Value::String(s),
            ),
        }
    }
    if network == NetworkMode::Restricted && !out.is_empty() {
        ctx.problem(
            key,
            super::error::ProblemKind::Conflict {
                problem: "only used with VM_NETWORK: user (a restricted VM reaches no \
                          nameserver); remove it or set VM_NETWORK: user"
                    .to_owned(),
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::executor::ExecutorConfig;
    use super::*;

    fn parse(yaml: &str) -> (Option<ExecutorConfig>, Ctx) {
        let v: Value = serde_yaml::from_str(yaml).unwrap();
        let mut ctx = Ctx::default();
        let e = ExecutorConfig::parse(&mut ctx, "EXECUTORS[0]", &v, None);
        (e, ctx)
    }

    fn problems(ctx: &Ctx) -> Vec<String> {
        ctx.problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_are_a_restricted_2g_2cpu_vm_with_probed_accel() {
        let (e, ctx) = parse("EXECUTOR: qemu\n");
        assert!(ctx.problems.is_empty() && ctx.warnings.is_empty());
        let e = e.unwrap();
        assert_eq!(e.qemu, QemuSettings::default());
        assert_eq!(e.qemu.memory_bytes, 2 << 30);
        assert_eq!(e.qemu.qemu_binary, PathBuf::from("qemu-system-x86_64"));
        assert_eq!(e.qemu.network, NetworkMode::Restricted);
        assert_eq!((e.qemu.accel, e.qemu.machine), (None, None));
        assert_eq!(e.qemu.ssh_port, 2222);
        assert_eq!(e.qemu.min_free_bytes, 1 << 30);
        assert_eq!(e.qemu.ssh_bind_address.to_string(), "127.0.0.1");
    }

    #[test]
    fn every_key_is_read_into_its_field() {
        let (e, ctx) = parse(
            "EXECUTOR: qemu\nVM_IMAGE: /srv/img\nQEMU_BINARY: /opt/q\nVM_MEMORY: 512M\n\
             VM_CPUS: 1\nVM_ACCEL: tcg\nVM_MACHINE: q35\nVM_NETWORK: user\n\
             VM_DNS_SERVERS: [1.1.1.1]\nSSH_PORT: 3000\nSSH_BIND_ADDRESS: 0.0.0.0\n\
             VOLUME_SIZE: 4G\nVM_RUN_AS: qemu\nVM_MIN_FREE_SPACE: 300M\n",
        );
        assert!(ctx.problems.is_empty(), "{:?}", problems(&ctx));
        let q = e.unwrap().qemu;
        assert_eq!(q.vm_image, Some(PathBuf::from("/srv/img")));
        assert_eq!(q.qemu_binary, PathBuf::from("/opt/q"));
        assert_eq!(q.memory_bytes, 512 << 20);
        assert_eq!(q.cpus, 1);
        assert_eq!(q.accel, Some(Accel::Tcg));
        assert_eq!(q.machine, Some(Machine::Q35));
        assert_eq!(q.network, NetworkMode::User);
        assert_eq!(q.dns_servers, [IpAddr::from([1, 1, 1, 1])]);
        assert_eq!(q.ssh_port, 3000);
        assert_eq!(q.ssh_bind_address.to_string(), "0.0.0.0");
        assert_eq!(q.run_as.as_deref(), Some("qemu"));
        assert_eq!(q.min_free_bytes, 300 << 20);
        let (e, ctx) = parse("EXECUTOR: qemu\nVM_RUN_AS: ''\n");
        assert_eq!(
            e.unwrap().qemu.run_as.as_deref(),
            Some(""),
            "empty: no drop"
        );
        assert!(ctx.problems.is_empty());
        let (_, ctx) = parse("EXECUTOR: qemu\nVM_ACCEL: auto\nVM_MACHINE: auto\n");
        assert!(ctx.problems.is_empty());
    }

    #[test]
    fn wrong_values_name_the_key_and_the_expected_form() {
        let (_, ctx) = parse(
            "EXECUTOR: qemu\nVM_ACCEL: hvf\nVM_MEMORY: 64M\nVM_CPUS: 0\nSSH_PORT: 70000\n\
             SSH_BIND_ADDRESS: localhost\nVM_NETWORK: nat\n",
        );
        assert_eq!(
            problems(&ctx),
            [
                "EXECUTORS[0].VM_MEMORY: expected a size of at least 256M, such as 2G, got \"64M\"",
                "EXECUTORS[0].VM_ACCEL: expected one of auto, kvm, tcg, got \"hvf\"",
                "EXECUTORS[0].VM_NETWORK: expected one of restricted, user, got \"nat\"",
                "EXECUTORS[0].SSH_BIND_ADDRESS: expected an IPv4 address such as 127.0.0.1, got \
                 \"localhost\"",
                "EXECUTORS[0].VM_CPUS: expected a whole number of vCPUs, 1 to 64, got 0",
                "EXECUTORS[0].SSH_PORT: expected an integer port 1-65535, got 70000",
            ]
        );
    }

    #[test]
    fn an_ipv6_ssh_bind_address_is_refused_with_the_reason() {
        let (_, ctx) = parse("EXECUTOR: qemu\nSSH_BIND_ADDRESS: '::1'\n");
        assert_eq!(
            problems(&ctx),
            [
                "EXECUTORS[0].SSH_BIND_ADDRESS: expected an IPv4 address such as 127.0.0.1 (QEMU \
                 forwards SSH from IPv4 only), got \"::1\""
            ]
        );
    }

    #[test]
    fn dns_servers_are_ip_addresses_for_user_mode_only() {
        let (_, ctx) = parse("EXECUTOR: qemu\nVM_NETWORK: user\nVM_DNS_SERVERS: [dns.local]\n");
        assert_eq!(
            problems(&ctx),
            [
                "EXECUTORS[0].VM_DNS_SERVERS[0]: expected an IP address such as 10.0.2.3, got \
              \"dns.local\""
            ]
        );
        let (_, ctx) = parse("EXECUTOR: qemu\nVM_DNS_SERVERS: [1.1.1.1]\n");
        assert!(
            problems(&ctx)[0]
                .starts_with("EXECUTORS[0].VM_DNS_SERVERS: only used with VM_NETWORK: user"),
            "{:?}",
            problems(&ctx)
        );
    }

    #[test]
    fn qemu_keys_on_another_executor_are_warnings() {
        let (e, ctx) = parse("EXECUTOR: popen\nVM_MEMORY: 4G\nSSH_PORT: 2222\n");
        assert!(e.is_some() && ctx.problems.is_empty());
        let w: Vec<String> = ctx.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            w,
            [
                "EXECUTORS[0].VM_MEMORY: not used by the popen executor; ignored",
                "EXECUTORS[0].SSH_PORT: not used by the popen executor; ignored",
            ]
        );
    }
}
