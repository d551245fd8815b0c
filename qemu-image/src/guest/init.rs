//! `quarry-init`: PID 1 of the builder VM, after stage 1's `switch_root`.
//!
//! [`run`] brings the guest up step by step (one console line each), starts the agent, then
//! reaps children until the agent exits, and powers off (or, in debug mode, keeps the VM for
//! SSH until the lifetime watchdog fires). Any setup failure prints
//! `quarry-init: error: ...` and powers off.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::agent::{self, AgentError, AgentPaths};
use super::ca::{self, CaError};
use super::config::{self, ConfigError};
use super::console::{self, say};
use super::mounts::{self, MountError};
use super::net::{self, NetError};
use super::power::{self, power_off};
use super::relay::{self, RelayError};
use super::ssh::{self, SshError};
use super::{AGENT_STARTED_MARKER, FW_CFG_GUEST_PATH, GuestConfig};

/// A setup step failed; the VM powers off.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Mounting the pseudo filesystems failed.
    #[error("mounting pseudo filesystems failed")]
    Mounts(#[from] MountError),
    /// The configuration is missing or bad.
    #[error("no usable guest config")]
    Config(#[from] ConfigError),
    /// The watchdog could not start.
    #[error("cannot start the lifetime watchdog")]
    Watchdog(#[source] std::io::Error),
    /// The network could not be set up.
    #[error("network setup failed")]
    Net(#[from] NetError),
    /// A forward could not start.
    #[error("forward setup failed")]
    Relay(#[from] RelayError),
    /// The CA could not be installed.
    #[error("installing the extra CA failed")]
    Ca(#[from] CaError),
    /// SSH could not be set up.
    #[error("ssh setup failed")]
    Ssh(#[from] SshError),
    /// The agent could not start.
    #[error("starting the agent failed")]
    Agent(#[from] AgentError),
}

/// What the reaper loop watches.
#[derive(Debug)]
struct Running {
    agent: Pid,
    agent_drained: Receiver<()>,
    dropbear: Option<Pid>,
    debug: bool,
}

/// Run as PID 1. Never returns.
pub fn run() -> ! {
    let running = match setup() {
        Ok(running) => running,
        Err(err) => {
            console::error(&console::chain(&err));
            power_off("setup failed");
        }
    };
    supervise(&running)
}

fn step(msg: &str) {
    match console::uptime() {
        Some(t) => say(&format!("{msg} [{t:.2} s]")),
        None => say(msg),
    }
}

fn setup() -> Result<Running, InitError> {
    let report = mounts::mount_all()?;
    // /dev is certainly mounted now: make sure our output reaches the serial console.
    console::attach();
    step(&format!(
        "mounted {} (already mounted: {})",
        list(&report.mounted),
        list(&report.already)
    ));

    let config = config::read(Path::new(FW_CFG_GUEST_PATH))?;
    step(&format!(
        "config: build {}, {} agent variables, {} forwards, {} ssh keys, debug {}, max lifetime {} s",
        config.build_uuid,
        config.agent_env.len(),
        config.forwards.len(),
        config.ssh_authorized_keys.len(),
        config.debug,
        config.max_lifetime_s
    ));
    power::start_watchdog(config.max_lifetime_s).map_err(InitError::Watchdog)?;

    let root = Path::new("/");
    let lo_addrs = lo_addresses(&config);
    let nic = net::configure(&config.build_uuid, &config.network, &lo_addrs)?;
    net::write_name_files(root, &config.build_uuid, &config.network)?;
    step(&format!(
        "network: {nic} {}, gateway {}, {} nameservers, {} hosts entries, lo extra {}",
        config.network.address,
        config.network.gateway.as_deref().unwrap_or("none"),
        config.network.nameservers.len(),
        config.network.hosts.len(),
        list(&lo_addrs)
    ));

    for forward in &config.forwards {
        // Checked by config::parse already; the error arm cannot be reached.
        let Ok((listen, target)) = config::socket_addrs(forward) else {
            continue;
        };
        relay::start(listen, target, say)?;
        step(&format!("forward: {listen} -> {target}"));
    }

    match &config.ca_cert {
        Some(pem) => {
            ca::install(root, pem)?;
            step(&format!(
                "ca: extra CA added to {} and {}",
                ca::SYSTEM_BUNDLE,
                ca::AGENT_CA_PATH
            ));
        }
        None => step("ca: none"),
    }

    let dropbear = if config.ssh_authorized_keys.is_empty() {
        step("ssh: off (no authorized keys)");
        None
    } else {
        ssh::write_authorized_keys(root, &config.ssh_authorized_keys)?;
        let child = ssh::start_dropbear(root)?;
        step(&format!(
            "ssh: dropbear (pid {}) on port 22 for {} keys",
            child.id(),
            config.ssh_authorized_keys.len()
        ));
        Some(pid_of(&child))
    };

    let paths = AgentPaths::guest();
    let env = agent::agent_env(&config, &paths.work_dir);
    let (child, agent_drained) = agent::spawn(&paths, &env, console::line)?;
    step(&format!(
        "agent: pid {}, log {}",
        child.id(),
        paths.log.display()
    ));
    console::line(AGENT_STARTED_MARKER);
    Ok(Running {
        agent: pid_of(&child),
        agent_drained,
        dropbear,
        debug: config.debug,
    })
}

/// The addresses to add to `lo` so every forward can listen: deduplicated, and without the
/// NIC's own address (already local).
fn lo_addresses(config: &GuestConfig) -> Vec<String> {
    let nic_ip = config::interface_address(&config.network.address).map(|(ip, _)| ip);
    let ips: BTreeSet<IpAddr> = config
        .forwards
        .iter()
        .filter_map(|f| config::socket_addrs(f).ok())
        .map(|(listen, _)| listen.ip())
        .filter(|ip| Some(*ip) != nic_ip)
        .collect();
    ips.into_iter().filter_map(net::lo_address).collect()
}

fn pid_of(child: &std::process::Child) -> Pid {
    // Linux pids fit in i32 (pid_max is at most 2^22).
    Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX))
}

fn list<T: AsRef<str>>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(" ")
}

/// PID 1's loop: reap every child; act when the agent or dropbear exits.
fn supervise(running: &Running) -> ! {
    loop {
        let status = match waitpid(None, None) {
            Ok(status) => status,
            Err(Errno::EINTR) => continue,
            // No children left (debug mode after the agent, without SSH): wait for the watchdog.
            Err(Errno::ECHILD) => {
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            Err(e) => {
                console::error(&format!("waitpid failed: {e}"));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let (Some(pid), Some(code)) = (status.pid(), power::status_code(status)) else {
            continue;
        };
        if pid == running.agent {
            // Let the last lines of its output reach the console first (bounded: a leftover
            // grandchild may hold the pipe open).
            let _ = running.agent_drained.recv_timeout(Duration::from_secs(2));
            say(&format!("agent exited with status {code}"));
            if running.debug {
                say("DEBUG: VM kept running for SSH access");
            } else {
                power_off("the agent finished");
            }
        } else if Some(pid) == running.dropbear && !power::shutting_down() {
            console::error(&format!(
                "dropbear exited with status {code}: ssh is unavailable"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lo_addresses_skip_loopback_duplicates_and_the_nic() {
        let text = r#"{
            "build_uuid": "b", "agent_env": {}, "max_lifetime_s": 5,
            "network": {"address": "10.0.2.15/24"},
            "forwards": [
                {"listen": "127.0.0.1:50051", "target": "10.0.2.100:50051"},
                {"listen": "192.168.7.9:8080", "target": "10.0.2.101:8080"},
                {"listen": "192.168.7.9:5000", "target": "10.0.2.102:5000"},
                {"listen": "10.0.2.15:9000", "target": "10.0.2.103:9000"}
            ]
        }"#;
        let config = config::parse(text.as_bytes()).unwrap();
        assert_eq!(lo_addresses(&config), vec!["192.168.7.9/32".to_owned()]);
    }

    #[test]
    fn list_says_none_when_empty() {
        assert_eq!(list::<&str>(&[]), "none");
        assert_eq!(list(&["/proc", "/sys"]), "/proc /sys");
    }
}
