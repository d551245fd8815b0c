//! The guest's network and name resolution: hostname, `lo` and the NIC (with iproute2's `ip`,
//! which is in the image; netlink by hand would be more code for four calls), extra loopback
//! addresses for forwards, `/etc/hosts`, `/etc/resolv.conf`.
//!
//! File writers take a root prefix so that tests run them in a temp dir.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::GuestNetwork;
use super::exec::{self, ExecError};

/// Setting up the network failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No network interface other than `lo`.
    #[error(
        "no network interface besides lo: check the VM has a virtio-net device and stage 1 loaded virtio_net"
    )]
    NoInterface,
    /// An `ip` command failed.
    #[error("network setup failed")]
    Ip(#[from] ExecError),
    /// sethostname failed.
    #[error("cannot set the hostname")]
    Hostname(#[source] nix::errno::Errno),
    /// A file under /etc could not be written.
    #[error("cannot write {path:?}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// `path` (absolute) below `root`.
pub fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Write `contents` to `root`+`path`, replacing a symlink rather than writing through it.
pub fn write_file(root: &Path, path: &str, contents: &str) -> Result<PathBuf, NetError> {
    let full = under(root, path);
    let result = (|| {
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if full
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            std::fs::remove_file(&full)?;
        }
        std::fs::write(&full, contents)
    })();
    result.map_err(|source| NetError::Write {
        path: full.clone(),
        source,
    })?;
    Ok(full)
}

/// `/etc/hosts`: localhost, the hostname, then `extra` (address, name) lines.
pub fn render_hosts(hostname: &str, extra: &[(String, String)]) -> String {
    let mut text =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    text.push_str(&format!("127.0.1.1\t{hostname}\n"));
    for (addr, name) in extra {
        text.push_str(&format!("{addr}\t{name}\n"));
    }
    text
}

/// `/etc/resolv.conf` for `nameservers`; without any, a comment saying why there is none.
pub fn render_resolv(nameservers: &[String]) -> String {
    if nameservers.is_empty() {
        return "# quarry: no nameservers (restricted network: host services are in /etc/hosts)\n"
            .to_owned();
    }
    nameservers
        .iter()
        .map(|ns| format!("nameserver {ns}\n"))
        .collect()
}

/// Write `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf` below `root`.
pub fn write_name_files(root: &Path, hostname: &str, net: &GuestNetwork) -> Result<(), NetError> {
    write_file(root, "/etc/hostname", &format!("{hostname}\n"))?;
    write_file(root, "/etc/hosts", &render_hosts(hostname, &net.hosts))?;
    write_file(root, "/etc/resolv.conf", &render_resolv(&net.nameservers))?;
    Ok(())
}

/// The address to add to `lo` so that a forward can listen on `ip`, or `None` when `ip` is
/// local already (127.0.0.0/8, `::1`) or is the wildcard.
pub fn lo_address(ip: IpAddr) -> Option<String> {
    if ip.is_loopback() || ip.is_unspecified() {
        return None;
    }
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    Some(format!("{ip}/{prefix}"))
}

/// The guest NIC: `eth0` if present, else the first interface in `sys_class_net` that is not
/// `lo` (sorted by name).
pub fn find_interface(sys_class_net: &Path) -> Result<String, NetError> {
    let mut names: Vec<String> = std::fs::read_dir(sys_class_net)
        .map_err(|_| NetError::NoInterface)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    if names.iter().any(|n| n == "eth0") {
        return Ok("eth0".to_owned());
    }
    names.into_iter().next().ok_or(NetError::NoInterface)
}

/// Set the hostname; bring up `lo` (with `lo_addrs`) and the NIC with its address and default
/// route. Returns the NIC's name.
pub fn configure(
    hostname: &str,
    net: &GuestNetwork,
    lo_addrs: &[String],
) -> Result<String, NetError> {
    nix::unistd::sethostname(hostname).map_err(NetError::Hostname)?;
    exec::run("ip", &["link", "set", "lo", "up"])?;
    for addr in lo_addrs {
        exec::run("ip", &["addr", "add", addr, "dev", "lo"])?;
    }
    let nic = find_interface(Path::new("/sys/class/net"))?;
    exec::run("ip", &["addr", "add", &net.address, "dev", &nic])?;
    exec::run("ip", &["link", "set", &nic, "up"])?;
    if let Some(gateway) = &net.gateway {
        exec::run(
            "ip",
            &["route", "add", "default", "via", gateway, "dev", &nic],
        )?;
    }
    Ok(nic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_has_localhost_hostname_and_extras() {
        let text = render_hosts(
            "build-1",
            &[("10.0.2.101".into(), "quay.example.com".into())],
        );
        assert_eq!(
            text,
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             127.0.1.1\tbuild-1\n10.0.2.101\tquay.example.com\n"
        );
    }

    #[test]
    fn resolv_lists_nameservers_or_says_none() {
        assert_eq!(
            render_resolv(&["10.0.2.3".into(), "1.1.1.1".into()]),
            "nameserver 10.0.2.3\nnameserver 1.1.1.1\n"
        );
        let empty = render_resolv(&[]);
        assert!(empty.starts_with('#') && !empty.contains("nameserver "));
    }

    #[test]
    fn listen_address_rule() {
        let lo = |s: &str| lo_address(s.parse().unwrap());
        assert_eq!(lo("127.0.0.1"), None);
        assert_eq!(lo("127.3.4.5"), None);
        assert_eq!(lo("::1"), None);
        assert_eq!(lo("0.0.0.0"), None);
        assert_eq!(lo("192.168.1.20").as_deref(), Some("192.168.1.20/32"));
        assert_eq!(lo("10.0.2.100").as_deref(), Some("10.0.2.100/32"));
        assert_eq!(lo("fd00::5").as_deref(), Some("fd00::5/128"));
    }

    #[test]
    fn name_files_are_written_below_root_replacing_symlinks() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        let elsewhere = root.path().join("stub-resolv.conf");
        std::fs::write(&elsewhere, "nameserver 127.0.0.53\n").unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.path().join("etc/resolv.conf")).unwrap();
        let net = GuestNetwork {
            address: "10.0.2.15/24".into(),
            gateway: None,
            nameservers: vec!["10.0.2.3".into()],
            hosts: vec![],
        };
        write_name_files(root.path(), "b1", &net).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("etc/hostname"), "b1\n");
        assert!(read("etc/hosts").contains("127.0.1.1\tb1\n"));
        assert_eq!(read("etc/resolv.conf"), "nameserver 10.0.2.3\n");
        // The symlink was replaced, its old target left alone.
        assert_eq!(
            std::fs::read_to_string(&elsewhere).unwrap(),
            "nameserver 127.0.0.53\n"
        );
    }

    #[test]
    fn interface_prefers_eth0_then_first_non_lo() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("lo")).unwrap();
        assert!(matches!(
            find_interface(dir.path()),
            Err(NetError::NoInterface)
        ));
        std::fs::create_dir(dir.path().join("ens4")).unwrap();
        std::fs::create_dir(dir.path().join("enp0")).unwrap();
        assert_eq!(find_interface(dir.path()).unwrap(), "enp0");
        std::fs::create_dir(dir.path().join("eth0")).unwrap();
        assert_eq!(find_interface(dir.path()).unwrap(), "eth0");
    }
}
