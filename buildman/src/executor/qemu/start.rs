//! Starting one build's VM: its private work directory, scratch disk and guest configuration, an
//! SSH port when debugging keys are configured, and the QEMU process with its supervisor.

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;

use qemu_image::forward;
use qemu_image::guest::GuestConfig;
use qemu_image::probe::Detection;
use qemu_image::spec::VmSpec;
use qemu_image::vm;
use tokio::sync::{Notify, watch};

use super::console::Console;
use super::supervise::{self, QEMU_LOG_FILE, Supervisor, Vm};
use super::{QemuError, QemuExecutor, guest};
use crate::executor::popen::pid_path;
use crate::executor::{ExecutorError, StartJob, process};

/// The per-build scratch disk, in the work directory.
pub(super) const SCRATCH_FILE: &str = "scratch.img";
/// The guest configuration handed over through `fw_cfg`, in the work directory; deleted as soon as
/// QEMU has read it (it carries the registration token).
pub(super) const CONFIG_FILE: &str = "config.json";
/// The most files one QEMU may have open: slirp forks a relay per guest connection to a host
/// service and each needs a socket in QEMU, so this bounds how many a guest can hold open at
/// once (a guest cannot exhaust the host's descriptors or fork without end); a build needs a
/// few dozen at most.
pub(super) const MAX_OPEN_FILES: u64 = 256;
/// Prefix of every VM's `-name`, followed by the execution id: how a restarted buildman tells
/// its VMs from other QEMU processes.
pub(super) const VM_NAME_PREFIX: &str = "quarry-build-";

/// The `-name` of the VM of `execution_id`.
pub(super) fn vm_name(execution_id: &str) -> String {
    format!("{VM_NAME_PREFIX}{execution_id}")
}

/// What [`QemuExecutor::launch`] prepared, to undo on failure.
struct Prepared {
    id: String,
    dir: PathBuf,
    ssh: Option<SocketAddr>,
}

impl QemuExecutor {
    /// Start the VM of `job`; returns its execution id.
    pub(super) async fn launch(
        &self,
        job: &StartJob,
        detection: &Detection,
    ) -> Result<String, ExecutorError> {
        let (id, dir) =
            crate::executor::create_work_dir(&self.settings.work_root, &job.build_uuid)?;
        let ssh = match self.reserve_ssh_port() {
            Ok(ssh) => ssh,
            Err(e) => {
                let _ = process::remove_dir(&dir).await;
                return Err(e.into());
            }
        };
        let prepared = Prepared { id, dir, ssh };
        match self.launch_in(job, detection, &prepared).await {
            Ok(()) => Ok(prepared.id),
            Err(e) => {
                let _ = process::remove_dir(&prepared.dir).await;
                let _ = process::remove_file(&pid_path(&prepared.dir));
                if let Some(ssh) = prepared.ssh {
                    self.vms.lock().ports.remove(&ssh.port());
                }
                Err(e)
            }
        }
    }

    /// An SSH forward address when `SSH_AUTHORIZED_KEYS` is set: the first free port from
    /// `SSH_PORT` that no VM of this executor holds, recorded as held.
    fn reserve_ssh_port(&self) -> Result<Option<SocketAddr>, QemuError> {
        if self.options.ssh_authorized_keys.is_empty() {
            return Ok(None);
        }
        let ip = self.options.vm.ssh_bind_address;
        let from = self.options.vm.ssh_port;
        let mut table = self.vms.lock();
        let port = vm::free_port(ip, from, &table.ports)
            .map_err(|source| QemuError::SshPort { from, source })?;
        table.ports.insert(port);
        Ok(Some(SocketAddr::new(ip, port)))
    }

    /// The guest configuration and QEMU's forwards for `job`.
    pub(super) fn compose(
        &self,
        job: &StartJob,
    ) -> Result<(GuestConfig, forward::ForwardPlan), QemuError> {
        let services = guest::services(job, &self.inherited);
        let plan = forward::plan(&services, self.options.vm.network)
            .map_err(|source| QemuError::Forward { services, source })?;
        let config =
            guest::guest_config(job, &self.settings, &self.options, &self.inherited, &plan);
        Ok((config, plan))
    }

    async fn launch_in(
        &self,
        job: &StartJob,
        detection: &Detection,
        p: &Prepared,
    ) -> Result<(), ExecutorError> {
        let (config, plan) = self.compose(job)?;
        let scratch = p.dir.join(SCRATCH_FILE);
        let config_file = p.dir.join(CONFIG_FILE);
        let size = self.options.volume_size_bytes;
        let (scratch2, config_file2) = (scratch.clone(), config_file.clone());
        // mkfs.ext4 and a file write: off the async workers.
        tokio::task::spawn_blocking(move || -> Result<(), QemuError> {
            vm::make_scratch(&scratch2, size).map_err(|source| QemuError::Scratch {
                path: scratch2.clone(),
                source,
            })?;
            vm::write_config(&config_file2, &config).map_err(|source| QemuError::GuestConfig {
                path: config_file2.clone(),
                source,
            })
        })
        .await
        .map_err(QemuError::Blocking)??;
        let memory_mib = self.options.vm.memory_bytes >> 20;
        let spec = VmSpec {
            qemu_binary: self.qemu_binary.clone(),
            name: vm_name(&p.id),
            machine: detection.machine,
            accel: detection.accel,
            memory_mib,
            vcpus: self.options.vm.cpus,
            kernel: self.image.kernel(),
            initrd: self.image.initrd(),
            rootfs: self.image.rootfs(),
            scratch: Some(scratch),
            kernel_args: Vec::new(),
            tsc_khz: detection.tsc_khz,
            config_file: Some(config_file),
            // On QEMU's stdout, which the supervisor reads into memory.
            console_log: None,
            network: self.options.vm.network,
            ssh_forward: p.ssh,
            guest_forwards: plan.qemu,
            relay: Some(self.relay.clone()),
            qmp_socket: None,
            pidfile: None,
            // QEMU opens every file above (buildman made them, as root) before it drops to
            // this user; buildman, as root, can still signal it.
            run_as: self.options.run_as.clone(),
            sandbox: true,
            max_open_files: Some(MAX_OPEN_FILES),
        };
        self.spawn(job, p, &spec)
    }

    fn spawn(&self, job: &StartJob, p: &Prepared, spec: &VmSpec) -> Result<(), ExecutorError> {
        let log = p.dir.join(QEMU_LOG_FILE);
        let open = || {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&log)
        };
        let wrap = |source| ExecutorError::WorkDir {
            path: log.clone(),
            source,
        };
        let err = open().map_err(wrap)?;
        let mut cmd = tokio::process::Command::from(vm::command(spec));
        // A crashed buildman must leave the VM for `reap_orphans` (which checks its `-name`),
        // not kill it half-way through a cleanup; `Drop` and the supervisor kill it otherwise.
        // stdout is the guest's console (QEMU ignores SIGPIPE: if buildman dies, console
        // writes fail and the VM runs on for `reap_orphans`).
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(err)
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|source| QemuError::Spawn {
            program: spec.qemu_binary.clone(),
            source,
        })?;
        let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
            let _ = child.start_kill();
            return Err(QemuError::Spawn {
                program: spec.qemu_binary.clone(),
                source: std::io::Error::other("QEMU exited before its pid was read"),
            }
            .into());
        };
        let start_time = process::read_stat(pid).map_or(0, |s| s.start_time);
        if let Err(e) = process::write_pid_file(&pid_path(&p.dir), pid, start_time) {
            tracing::warn!(execution_id = %p.id, error = %e, "failed to write the VM's pid file");
        }
        let stop = Arc::new(Notify::new());
        let (done_tx, done) = watch::channel(false);
        let console = Arc::new(Console::default());
        let stdout = child.stdout.take();
        self.vms.lock().running.insert(
            p.id.clone(),
            Vm {
                build_uuid: job.build_uuid.clone(),
                pid,
                start_time,
                work_dir: p.dir.clone(),
                ssh: p.ssh,
                stop: stop.clone(),
                done,
                kept: false,
                console: console.clone(),
            },
        );
        tracing::info!(build_uuid = %job.build_uuid, execution_id = %p.id, pid,
            accel = spec.accel.as_str(), machine = spec.machine.as_str(),
            ssh = ?p.ssh.map(|a| a.to_string()), "started builder VM");
        tokio::spawn(supervise::supervise(Supervisor {
            vms: self.vms.clone(),
            id: p.id.clone(),
            build_uuid: job.build_uuid.clone(),
            child,
            stdout,
            console,
            pid,
            start_time,
            dir: p.dir.clone(),
            ssh_port: p.ssh.map(|a| a.port()),
            stop,
            done: done_tx,
            max_lifetime: self.settings.max_lifetime,
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn work_dirs_are_numbered_private_and_skip_kept_records() {
        let root = tempfile::tempdir().unwrap();
        let builds = root.path().join("builds");
        let (id, dir) = crate::executor::create_work_dir(&builds, "b1").unwrap();
        assert_eq!(id, "b1-1");
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(builds.join("b1-2.log"), "kept").unwrap();
        std::fs::write(builds.join("b1-3.pid"), "1 1").unwrap();
        assert_eq!(
            crate::executor::create_work_dir(&builds, "b1").unwrap().0,
            "b1-4"
        );
        assert_eq!(vm_name("b1-4"), "quarry-build-b1-4");
    }

    #[test]
    fn ssh_ports_skip_bound_and_held_ports_and_only_with_keys() {
        let root = tempfile::tempdir().unwrap();
        let mut options = super::super::QemuOptions::default();
        let exec = QemuExecutor::for_tests(root.path(), options.clone());
        assert_eq!(exec.reserve_ssh_port().unwrap(), None, "no keys: no SSH");
        // A port bound by someone else, and the next one held by a running VM of ours.
        let bound = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = bound.local_addr().unwrap().port();
        options.ssh_authorized_keys = vec!["ssh-ed25519 AAAA k".into()];
        options.vm.ssh_port = base;
        let exec = QemuExecutor::for_tests(root.path(), options);
        exec.vms.lock().ports.insert(base + 1);
        let first = exec.reserve_ssh_port().unwrap().unwrap();
        assert!(first.port() > base + 1, "{first}");
        assert_eq!(first.ip().to_string(), "127.0.0.1");
        let second = exec.reserve_ssh_port().unwrap().unwrap();
        assert!(
            second.port() > first.port(),
            "held ports are not handed out twice"
        );
        assert!(exec.vms.lock().ports.contains(&second.port()));
    }

    #[test]
    fn compose_forwards_the_jobs_services() {
        let root = tempfile::tempdir().unwrap();
        let exec = QemuExecutor::for_tests(root.path(), super::super::QemuOptions::default());
        let job = StartJob {
            build_uuid: "b1".into(),
            registration_token: "jwt".into(),
            grpc_server: "127.0.0.1:50051".into(),
            insecure: true,
            registry_hostname: "localhost:8080".into(),
        };
        let (config, plan) = exec.compose(&job).unwrap();
        let hosts: Vec<&str> = plan.qemu.iter().map(|f| f.host.as_str()).collect();
        assert!(hosts.contains(&"127.0.0.1:50051"), "{hosts:?}");
        assert_eq!(plan.qemu.len(), 2, "{:?}", plan.qemu);
        assert_eq!(config.forwards, plan.guest);
        assert_eq!(config.agent_env["TOKEN"], "jwt");
    }
}
