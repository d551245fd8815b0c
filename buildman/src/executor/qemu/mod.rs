//! The `qemu` executor: one throw-away QEMU VM per build on this machine (issue 4).
//!
//! The VM boots the image `qemu-image build` made (kernel, stage-1 initramfs, read-only root),
//! with a fresh sparse scratch disk and a [`qemu_image::guest::GuestConfig`] (the agent's
//! environment with its registration token, the forwards, SSH keys) passed through `fw_cfg`.
//! Inside, `quarry-init` runs `builder-agent`, which dials buildman exactly as a popen agent
//! does; user-mode networking relays only buildman, the registry and configured proxies into
//! the guest ([`qemu_image::forward`]).
//!
//! Making the executor first stops the VMs (and probe VMs) a killed buildman left, then starts a
//! real probe of whether KVM can boot a guest here ([`qemu_image::probe::detect`]), awaited by
//! the first build; the executor holds a lease on its image so that `qemu-image prune` keeps it.
//! Each VM lives in `<work_root>/<build uuid>-<n>` (0700: scratch disk, the config until QEMU
//! has read it, QEMU's stderr) with `<work dir>.pid` beside it, so that
//! [`QemuExecutor::reap_orphans`] can stop VMs a killed buildman left. QEMU opens its files, then
//! drops to `VM_RUN_AS` under a seccomp sandbox with at most `MAX_OPEN_FILES` (256) files. A
//! supervisor task per VM keeps the console's end in memory, logs the exit with its last lines
//! and removes everything; `MAX_LIFETIME_S` is enforced here and by the guest itself. With
//! `DEBUG` a stopped build's VM is kept (reachable over SSH with `SSH_AUTHORIZED_KEYS`) until
//! `MAX_LIFETIME_S` or buildman's shutdown.

mod console;
mod error;
mod guest;
mod orphans;
mod preflight;
mod settings;
mod start;
mod supervise;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use qemu_image::image::{self, Image, ImageLease};
use qemu_image::probe::{self, Detection, ProbeOptions};
use tokio::sync::watch;

pub use error::QemuError;
pub use settings::{DEFAULT_RUN_AS, DEFAULT_VOLUME_SIZE, QemuOptions, resolve_run_as};

use self::preflight::{check_run_as, check_space, find_program, free_space};
use self::supervise::Vms;
use super::popen::{inherited_env, pid_path};
use super::{Executor, ExecutorError, ExecutorSettings, StartJob, process};

/// How long `stop_builder` waits for the supervisor (grace, kill, sweep, directory removal).
const STOP_WAIT: Duration = Duration::from_secs(60);

/// The `qemu` executor; see the module documentation.
#[derive(Debug)]
pub struct QemuExecutor {
    settings: ExecutorSettings,
    options: QemuOptions,
    image: Image,
    /// Keeps `prune` from deleting the image while this executor may boot it; `None` in unit
    /// tests (made-up image).
    _lease: Option<ImageLease>,
    /// `QEMU_BINARY` resolved to a path.
    qemu_binary: PathBuf,
    /// `socat` resolved to a path: slirp's relay per guest connection.
    relay: PathBuf,
    /// How many VMs of a previous buildman were stopped when this executor was made.
    orphans_reaped: usize,
    /// Proxy variables (both cases) and `RUST_LOG` for the agent, resolved once.
    inherited: Vec<(&'static str, String)>,
    vms: Arc<Vms>,
    /// `None` until the probe has decided.
    detection: watch::Receiver<Option<Arc<Detection>>>,
}

impl QemuExecutor {
    /// Check the tools and `VM_RUN_AS`, open, verify and lease the image, stop the VMs and probe
    /// VMs a previous buildman left (they would compete with the probe for the CPU), then start
    /// the accelerator probe. Reads proxy variables and `RUST_LOG` from the manager's
    /// environment where the settings leave them unset, as popen does.
    pub async fn new(
        settings: ExecutorSettings,
        options: QemuOptions,
    ) -> Result<QemuExecutor, ExecutorError> {
        let qemu_binary =
            find_program(&options.vm.qemu_binary).ok_or_else(|| QemuError::MissingQemu {
                binary: options.vm.qemu_binary.clone(),
            })?;
        let relay =
            find_program(Path::new("socat")).ok_or(QemuError::MissingTool { tool: "socat" })?;
        if let Some(user) = &options.run_as {
            check_run_as(user, nix::unistd::geteuid().is_root())?;
        }
        let dir = options.vm.vm_image.clone();
        // Verifying the image hashes hundreds of megabytes: off the async workers.
        let (image, lease) = tokio::task::spawn_blocking(move || {
            let image = match &dir {
                Some(d) => Image::open(d).map_err(|source| (dir.clone(), source))?,
                None => image::current(&image::cache_dir()).map_err(|source| (None, source))?,
            };
            let lease = image
                .hold()
                .map_err(|source| (Some(image.dir.clone()), source))?;
            Ok((image, lease))
        })
        .await
        .map_err(QemuError::Blocking)?
        .map_err(|(dir, source)| QemuError::Image { dir, source })?;
        // Nothing of this executor runs yet: every VM in the work root is a previous one's.
        let orphans_reaped = orphans::reap(&settings.work_root, |_| false).await?;
        if orphans_reaped > 0 {
            tracing::warn!(executor = %settings.name, reaped = orphans_reaped,
                "stopped VMs left by a previous buildman");
        }
        let probes = tokio::task::spawn_blocking(probe::reap_orphans)
            .await
            .map_err(QemuError::Blocking)?;
        if probes > 0 {
            tracing::warn!(executor = %settings.name, reaped = probes,
                "stopped probe VMs left by a previous buildman");
        }
        let probe_options = ProbeOptions {
            accel: options.vm.accel,
            machine: options.vm.machine,
            ..ProbeOptions::default()
        };
        let detection = start_probe(qemu_binary.clone(), image.clone(), probe_options);
        let inherited = inherited_env(&settings, |name| std::env::var(name).ok());
        tracing::info!(executor = %settings.name, image = %image.dir.display(),
            qemu = %qemu_binary.display(), "qemu executor ready; probing the VM accelerator");
        Ok(QemuExecutor {
            settings,
            options,
            image,
            _lease: Some(lease),
            qemu_binary,
            relay,
            orphans_reaped,
            inherited,
            vms: Arc::default(),
            detection,
        })
    }

    /// An executor over a made-up image that never probes, for unit tests of its parts.
    #[cfg(test)]
    fn for_tests(work_root: &Path, options: QemuOptions) -> QemuExecutor {
        QemuExecutor {
            settings: ExecutorSettings::new("vm", work_root),
            options,
            image: Image::at(work_root.join("image")),
            _lease: None,
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
            relay: PathBuf::from("socat"),
            orphans_reaped: 0,
            inherited: Vec::new(),
            vms: Arc::default(),
            detection: watch::channel(None).1,
        }
    }

    /// The image VMs boot.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// The probe's decision, waiting for it the first time.
    pub async fn detection(&self) -> Result<Arc<Detection>, ExecutorError> {
        let mut rx = self.detection.clone();
        let found = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| QemuError::Probe)?;
        found.clone().ok_or_else(|| QemuError::Probe.into())
    }

    /// How many VMs a previous buildman left running [`QemuExecutor::new`] stopped.
    pub fn orphans_reaped(&self) -> usize {
        self.orphans_reaped
    }

    /// The end of the console of VM `execution_id` while it runs (the last 64 KiB, in memory).
    pub fn console(&self, execution_id: &str) -> Option<String> {
        Some(self.vms.lock().running.get(execution_id)?.console.text())
    }

    /// Stop the VMs in the work root that are not this executor's and remove their work
    /// directories; [`QemuExecutor::new`] does it already. Returns how many were running.
    pub async fn reap_orphans(&self) -> Result<usize, ExecutorError> {
        let vms = &self.vms;
        orphans::reap(&self.settings.work_root, |id| {
            vms.lock().running.contains_key(id)
        })
        .await
    }

    /// Ask the supervisor of `id` to stop its VM and wait for it to finish.
    async fn stop_vm(&self, id: &str) -> Result<(), ExecutorError> {
        let entry = self
            .vms
            .lock()
            .running
            .get(id)
            .map(|vm| (vm.stop.clone(), vm.done.clone()));
        let Some((stop, mut done)) = entry else {
            return Ok(());
        };
        stop.notify_one();
        match tokio::time::timeout(STOP_WAIT, done.wait_for(|d| *d)).await {
            // A closed channel means the supervisor ended (finished or its runtime went away).
            Ok(_) => Ok(()),
            Err(_) => Err(ExecutorError::StopTimeout {
                execution_id: id.to_owned(),
                waited: STOP_WAIT,
            }),
        }
    }
}

/// Run the probe on the blocking pool and publish its decision, logging it once.
fn start_probe(
    qemu: PathBuf,
    image: Image,
    options: ProbeOptions,
) -> watch::Receiver<Option<Arc<Detection>>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || probe::detect(&qemu, &image, &options)).await {
            Ok(d) => {
                tracing::info!(
                    elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    tsc_khz = ?d.tsc_khz,
                    "VM accelerator: {} ({}); machine {}",
                    d.accel.as_str(),
                    d.notes.join("; "),
                    d.machine.as_str()
                );
                tx.send_replace(Some(Arc::new(d)));
            }
            // Dropping the sender makes every waiting start fail with QemuError::Probe.
            Err(e) => tracing::error!(error = %e, "the VM accelerator probe panicked"),
        }
    });
    rx
}

/// `ssh -p PORT root@ADDR` for a forward on `addr` (loopback when it listens on every address).
fn ssh_command(addr: std::net::SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    let host = match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        std::net::IpAddr::V4(v4) => v4.to_string(),
    };
    format!("ssh -p {} root@{host}", addr.port())
}

#[async_trait::async_trait]
impl Executor for QemuExecutor {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn setup_time(&self) -> Duration {
        self.settings.setup_time
    }

    fn minimum_retry_threshold(&self) -> u32 {
        self.settings.minimum_retry_threshold
    }

    fn allowed_for_namespace(&self, ns: &str) -> bool {
        self.settings.allows_namespace(ns)
    }

    #[tracing::instrument(skip(self, job), fields(build_uuid = %job.build_uuid, executor = %self.settings.name))]
    async fn start_builder(&self, job: &StartJob) -> Result<String, ExecutorError> {
        super::check_build_uuid(&job.build_uuid)?;
        let root = &self.settings.work_root;
        check_space(root, free_space(root)?, self.options.vm.min_free_bytes)?;
        let detection = self.detection().await?;
        self.launch(job, &detection).await
    }

    async fn stop_builder(&self, execution_id: &str) -> Result<(), ExecutorError> {
        if self.settings.debug {
            let mut table = self.vms.lock();
            if let Some(vm) = table.running.get_mut(execution_id) {
                if !vm.kept {
                    vm.kept = true;
                    let how = vm.ssh.map_or_else(
                        || "no SSH_AUTHORIZED_KEYS, so no SSH".to_owned(),
                        ssh_command,
                    );
                    tracing::info!(build_uuid = %vm.build_uuid, execution_id,
                        max_lifetime_s = self.settings.max_lifetime.as_secs(),
                        "VM of build {} kept for debugging until MAX_LIFETIME_S: {how}", vm.build_uuid);
                }
                return Ok(());
            }
            return Ok(());
        }
        self.stop_vm(execution_id).await
    }

    async fn running_builders_count(&self) -> Result<usize, ExecutorError> {
        Ok(self.vms.lock().running.len())
    }

    async fn shutdown_all(&self) -> Result<(), ExecutorError> {
        let ids: Vec<String> = self.vms.lock().running.keys().cloned().collect();
        // Ask every supervisor first so the VMs stop concurrently, then wait for each.
        for id in &ids {
            if let Some(vm) = self.vms.lock().running.get(id) {
                vm.stop.notify_one();
            }
        }
        // Wait for every VM even when one does not stop in time, then report the first failure
        // (each is logged).
        let mut first_err = None;
        for id in &ids {
            if let Err(e) = self.stop_vm(id).await {
                tracing::error!(execution_id = %id, error = %e, "a VM did not stop on shutdown");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn worker_exits(
        &self,
    ) -> Option<tokio::sync::broadcast::Receiver<crate::executor::WorkerExit>> {
        Some(self.vms.exits.subscribe())
    }

    fn debug_access(&self, execution_id: &str) -> Option<String> {
        let ssh = self.vms.lock().running.get(execution_id)?.ssh?;
        Some(ssh_command(ssh))
    }
}

impl Drop for QemuExecutor {
    /// Last resort when buildman exits without `shutdown_all`: SIGKILL every VM and remove its
    /// work directory, so nothing outlives the manager.
    fn drop(&mut self) {
        let vms: Vec<_> = self.vms.lock().running.drain().collect();
        for (id, vm) in vms {
            let is_it = process::read_stat(vm.pid).is_some_and(|s| s.start_time == vm.start_time);
            if is_it && let Err(e) = process::signal_group(vm.pid, Signal::SIGKILL) {
                tracing::error!(execution_id = %id, pid = vm.pid, error = %e,
                    "failed to kill a VM on shutdown; kill it by hand");
            }
            let _ = std::fs::remove_dir_all(&vm.work_dir);
            let _ = process::remove_file(&pid_path(&vm.work_dir));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_commands_name_a_reachable_address() {
        let cmd = |s: &str| ssh_command(s.parse().unwrap());
        assert_eq!(cmd("127.0.0.1:2222"), "ssh -p 2222 root@127.0.0.1");
        assert_eq!(cmd("0.0.0.0:2223"), "ssh -p 2223 root@127.0.0.1");
        assert_eq!(cmd("[::1]:2222"), "ssh -p 2222 root@[::1]");
    }

    #[test]
    fn missing_tools_say_what_to_do() {
        let e = QemuError::MissingQemu {
            binary: "qemu-system-x86_64".into(),
        };
        assert!(e.to_string().contains("scripts/install-deps.sh"), "{e}");
        let e = QemuError::MissingTool { tool: "socat" };
        assert!(e.to_string().starts_with("socat not found"), "{e}");
    }
}
