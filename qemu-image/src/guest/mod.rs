//! The guest side: the configuration handed to a VM through `fw_cfg`, and `quarry-init`.
//!
//! The host writes one [`GuestConfig`] as JSON to a file and passes it with
//! `-fw_cfg name=opt/quarry/config,file=...` ([`FW_CFG_NAME`]); nothing build-specific is ever
//! baked into the image. In the guest the kernel exposes it at [`FW_CFG_GUEST_PATH`].

pub mod agent;
pub mod ca;
pub mod config;
pub mod console;
pub mod exec;
pub mod init;
pub mod mounts;
pub mod net;
pub mod power;
pub mod relay;
pub mod ssh;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `fw_cfg` item name of the build configuration.
pub const FW_CFG_NAME: &str = "opt/quarry/config";
/// Where the guest kernel (module `qemu_fw_cfg`) exposes [`FW_CFG_NAME`].
pub const FW_CFG_GUEST_PATH: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/quarry/config/raw";
/// Where `quarry-init` writes the agent's output inside the guest (readable over SSH).
pub const AGENT_LOG_PATH: &str = "/var/log/builder-agent.log";
/// Mount point of the scratch disk in the guest; the agent's work directory is below it.
pub const SCRATCH_MOUNT: &str = "/scratch";
/// The agent's work directory in the guest (`QUARRY_WORK_DIR`).
pub const AGENT_WORK_DIR: &str = "/scratch/work";
/// Line `quarry-init` prints on the console once the agent process has been started.
pub const AGENT_STARTED_MARKER: &str = "quarry-init: agent started";
/// Line the stage-1 init prints (then powers off) when booted with `quarry.probe=1`.
pub const PROBE_MARKER: &str = "QUARRY-PROBE-OK";

/// Everything one build's VM needs, passed through `fw_cfg`. Never logged whole: it carries the
/// registration token (see the hand-written `Debug`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    /// The build's UUID: the guest's hostname and the agent's `BUILD_UUID`.
    pub build_uuid: String,
    /// The agent's whole environment (`SERVER`, `TOKEN`, `REGISTRY_HOSTNAME`, `INSECURE`,
    /// `DEBUG`, proxies, ...). `quarry-init` adds `PATH`, `HOME`, `QUARRY_WORK_DIR`,
    /// `CONTAINER_RUNTIME=podman` and `TLS_CERT_PATH` (when
    /// [`GuestConfig::ca_cert`] is set) unless given here.
    pub agent_env: BTreeMap<String, String>,
    /// PEM of an extra CA: added to the guest's trust store and given to the agent.
    #[serde(default)]
    pub ca_cert: Option<String>,
    /// OpenSSH public keys allowed to log in as root (`SSH_AUTHORIZED_KEYS`). Empty: no SSH
    /// server is started at all.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// The guest's network.
    pub network: GuestNetwork,
    /// Host services the guest reaches (buildman, the registry, proxies); see [`crate::forward`].
    #[serde(default)]
    pub forwards: Vec<GuestForward>,
    /// `DEBUG`: keep the VM running after the agent exits (until `max_lifetime_s`).
    #[serde(default)]
    pub debug: bool,
    /// `MAX_LIFETIME_S`: the guest powers itself off after this many seconds, whatever happens.
    pub max_lifetime_s: u64,
}

// Hand-written so that the registration token and proxy credentials never reach a log line.
impl std::fmt::Debug for GuestConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<&str> = self.agent_env.keys().map(String::as_str).collect();
        f.debug_struct("GuestConfig")
            .field("build_uuid", &self.build_uuid)
            .field("agent_env (names only)", &env)
            .field("ca_cert", &self.ca_cert.as_ref().map(|_| "<pem>"))
            .field("ssh_authorized_keys", &self.ssh_authorized_keys.len())
            .field("network", &self.network)
            .field("forwards", &self.forwards)
            .field("debug", &self.debug)
            .field("max_lifetime_s", &self.max_lifetime_s)
            .finish()
    }
}

/// The guest's single NIC (QEMU user-mode networking; addresses are slirp's defaults).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestNetwork {
    /// Interface address with prefix, e.g. `10.0.2.15/24`.
    pub address: String,
    /// Default gateway, e.g. `10.0.2.2`; `None` in restricted mode (no route out at all).
    #[serde(default)]
    pub gateway: Option<String>,
    /// Nameservers written to `/etc/resolv.conf` (explicit; empty in restricted mode).
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// Extra `/etc/hosts` lines: `(address, name)`.
    #[serde(default)]
    pub hosts: Vec<(String, String)>,
}

/// One host service made reachable inside the guest: the guest init listens on `listen`
/// (`ip:port`; the ip is added to `lo` first when it is not already a local address) and relays
/// each connection to `target` (`ip:port`, a slirp `guestfwd` address that QEMU relays on to the
/// host service).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestForward {
    /// What the agent dials, e.g. `127.0.0.1:8080` when buildman said `localhost:8080`.
    pub listen: String,
    /// The guestfwd address, e.g. `10.0.2.100:8080`.
    pub target: String,
}
