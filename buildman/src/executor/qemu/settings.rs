//! What the `qemu` executor needs beyond the common [`ExecutorSettings`], in plain types, and how
//! both come out of one `EXECUTORS` entry.

use crate::config::{ExecutorConfig, QemuSettings};

/// `VOLUME_SIZE` default for the per-build scratch disk: 32 GiB, sparse (only what the build
/// writes takes space).
pub const DEFAULT_VOLUME_SIZE: u64 = 32 << 30;
/// The user QEMU drops to when buildman runs as root and `VM_RUN_AS` is unset.
pub const DEFAULT_RUN_AS: &str = "nobody";

/// The `qemu` executor's own settings.
#[derive(Clone, PartialEq, Eq)]
pub struct QemuOptions {
    /// The `VM_*`, `QEMU_BINARY` and `SSH_*` keys.
    pub vm: QemuSettings,
    /// `VOLUME_SIZE` in bytes: the scratch disk (sparse).
    pub volume_size_bytes: u64,
    /// `SSH_AUTHORIZED_KEYS`: when not empty, each VM gets an SSH server and a forwarded port.
    pub ssh_authorized_keys: Vec<String>,
    /// `CA_CERT`: PEM of an extra CA the guest and the agent trust.
    pub ca_cert: Option<String>,
    /// `VM_RUN_AS` resolved (see [`resolve_run_as`]): the user QEMU runs as once it has opened
    /// its files; `None`: QEMU keeps buildman's user.
    pub run_as: Option<String>,
}

// Hand-written: a CA is public, but a whole PEM (and every key) would flood a log line.
impl std::fmt::Debug for QemuOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuOptions")
            .field("vm", &self.vm)
            .field("volume_size_bytes", &self.volume_size_bytes)
            .field("ssh_authorized_keys", &self.ssh_authorized_keys.len())
            .field("ca_cert", &self.ca_cert.as_ref().map(|_| "<pem>"))
            .field("run_as", &self.run_as)
            .finish()
    }
}

impl Default for QemuOptions {
    fn default() -> Self {
        QemuOptions {
            vm: QemuSettings::default(),
            volume_size_bytes: DEFAULT_VOLUME_SIZE,
            ssh_authorized_keys: Vec::new(),
            ca_cert: None,
            run_as: None,
        }
    }
}

impl QemuOptions {
    /// The `qemu` settings of entry `e`, `VM_RUN_AS` resolved for the user buildman runs as.
    pub fn from_config(e: &ExecutorConfig) -> QemuOptions {
        QemuOptions {
            vm: e.qemu.clone(),
            volume_size_bytes: e
                .volume_size
                .as_ref()
                .map_or(DEFAULT_VOLUME_SIZE, |s| s.bytes()),
            ssh_authorized_keys: e
                .ssh_authorized_keys
                .iter()
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
                .collect(),
            ca_cert: e.ca_cert.clone().filter(|c| !c.trim().is_empty()),
            run_as: resolve_run_as(e.qemu.run_as.as_deref(), nix::unistd::geteuid().is_root()),
        }
    }
}

/// The user QEMU drops to: `VM_RUN_AS` when set and not empty, none when set to the empty
/// string, and when unset [`DEFAULT_RUN_AS`] if buildman runs as root (a QEMU left as root would
/// give a guest escape the whole host), none otherwise (only root can switch users).
pub fn resolve_run_as(configured: Option<&str>, is_root: bool) -> Option<String> {
    match configured.map(str::trim) {
        Some("") => None,
        Some(user) => Some(user.to_owned()),
        None => is_root.then(|| DEFAULT_RUN_AS.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::executor::ExecutorSettings;
    use std::time::Duration;

    fn entry(yaml: &str) -> ExecutorConfig {
        let doc = format!("BUILD_MANAGER:\n- ephemeral\n- EXECUTORS:\n  - {yaml}\n");
        let c = Config::from_yaml_str(&doc).unwrap();
        c.validate().unwrap();
        c.executors()[0].clone()
    }

    #[test]
    fn options_come_from_the_entry_with_defaults() {
        let o = QemuOptions::from_config(&entry("{EXECUTOR: qemu}"));
        let is_root = nix::unistd::geteuid().is_root();
        assert_eq!(o.run_as, is_root.then(|| "nobody".to_owned()));
        assert_eq!(
            QemuOptions {
                run_as: None,
                ..o.clone()
            },
            QemuOptions::default()
        );
        assert_eq!(o.volume_size_bytes, 32 << 30);
        let o = QemuOptions::from_config(&entry(
            "{EXECUTOR: qemu, VOLUME_SIZE: 4G, SSH_AUTHORIZED_KEYS: ['ssh-ed25519 AAA a', ' '], \
             CA_CERT: PEM, VM_CPUS: 1}",
        ));
        assert_eq!(o.volume_size_bytes, 4 << 30);
        assert_eq!(
            o.ssh_authorized_keys,
            ["ssh-ed25519 AAA a"],
            "blank keys dropped"
        );
        assert_eq!(o.ca_cert.as_deref(), Some("PEM"));
        assert_eq!(o.vm.cpus, 1);
        let shown = format!("{o:?}");
        assert!(!shown.contains("AAA") && !shown.contains("PEM"), "{shown}");
    }

    #[test]
    fn run_as_defaults_to_nobody_for_root_only_and_empty_disables_it() {
        assert_eq!(resolve_run_as(None, true).as_deref(), Some("nobody"));
        assert_eq!(resolve_run_as(None, false), None);
        assert_eq!(resolve_run_as(Some(""), true), None);
        assert_eq!(
            resolve_run_as(Some(" qemu "), true).as_deref(),
            Some("qemu")
        );
        assert_eq!(resolve_run_as(Some("qemu"), false).as_deref(), Some("qemu"));
        let o = QemuOptions::from_config(&entry("{EXECUTOR: qemu, VM_RUN_AS: ''}"));
        assert_eq!(o.run_as, None);
    }

    #[test]
    fn common_settings_carry_the_shared_keys() {
        let e = entry(
            "{EXECUTOR: qemu, NAME: vm, SETUP_TIME: 900, MAX_LIFETIME_S: 60, DEBUG: true, \
             HTTP_PROXY: 'http://p:3128'}",
        );
        let s = ExecutorSettings::from_config(&e, "/w".into(), 7);
        assert_eq!(s.name, "vm");
        assert_eq!(s.setup_time, Duration::from_secs(900));
        assert_eq!(s.max_lifetime, Duration::from_secs(60));
        assert!(s.debug);
        assert_eq!(s.http_proxy.as_deref(), Some("http://p:3128"));
        assert_eq!(s.max_context_bytes, 7);
        assert_eq!(s.work_root, std::path::PathBuf::from("/w"));
    }
}
