//! What starting one VM needs besides its argument list: the QEMU [`command`], the per-build
//! scratch disk ([`make_scratch`]), the `fw_cfg` configuration file ([`write_config`]) and a free
//! host port for SSH ([`free_port`]). Shared by buildman's qemu executor and `qemu-image boot`.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::cmdline::qemu_args;
use crate::guest::GuestConfig;
use crate::spec::VmSpec;

/// Why preparing a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Creating or sizing a file failed.
    #[error("failed to create {path:?}")]
    Create {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `mkfs.ext4` could not be run.
    #[error("failed to run {program:?}: install e2fsprogs")]
    MkfsSpawn {
        /// The program.
        program: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `mkfs.ext4` failed.
    #[error("mkfs.ext4 on {path:?} exited with {status}: {stderr_tail}")]
    Mkfs {
        /// The scratch image.
        path: PathBuf,
        /// Its exit status.
        status: ExitStatus,
        /// The end of its stderr.
        stderr_tail: String,
    },
    /// The configuration could not be serialised.
    #[error("failed to serialise the guest configuration")]
    Serialize(#[source] serde_json::Error),
    /// Every port from `from` up is taken or cannot be bound.
    #[error("no free TCP port on {ip} from {from} up")]
    NoFreePort {
        /// The address tried.
        ip: IpAddr,
        /// The first port tried.
        from: u16,
    },
}

/// The QEMU process for `spec`: its argument list from [`qemu_args`], a cleared environment but
/// `PATH` (libslirp finds the relay through it), stdin and stderr null, stdout null when the
/// console goes to a file (with `console_log: None` the caller sets stdout, e.g. a pipe), and its
/// own process group. libslirp starts each relay in a session of its own (`setsid`), so the
/// group does not hold them: a relay ends by itself when QEMU is gone (its stdin, the guest
/// connection, reaches EOF; seen within 2 s after SIGKILL).
///
/// With [`VmSpec::max_open_files`] the program is `prlimit --nofile=N:N -- <qemu> ...`: prlimit
/// sets the limit and execs QEMU (same pid). Not `pre_exec` + `setrlimit`: that needs `unsafe`,
/// which the workspace forbids. The relays QEMU forks inherit the limit too.
pub fn command(spec: &VmSpec) -> Command {
    let mut cmd = match spec.max_open_files {
        Some(n) => {
            let mut cmd = Command::new(find_tool("prlimit"));
            cmd.arg(format!("--nofile={n}:{n}"))
                .arg("--")
                .arg(&spec.qemu_binary);
            cmd
        }
        None => Command::new(&spec.qemu_binary),
    };
    cmd.args(qemu_args(spec))
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        )
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    if spec.console_log.is_some() {
        cmd.stdout(Stdio::null());
    }
    cmd
}

/// `PATH` when the caller has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

/// Creates `path` (which must not exist) as a sparse `size_bytes` file holding an empty ext4
/// filesystem without journal (a throw-away disk needs no crash consistency). Inode tables are
/// initialised lazily; the file is removed again if `mkfs.ext4` fails.
pub fn make_scratch(path: &Path, size_bytes: u64) -> Result<(), VmError> {
    let create = |source| VmError::Create {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(create)?;
    if let Err(e) = file.set_len(size_bytes) {
        let _ = std::fs::remove_file(path);
        return Err(create(e));
    }
    drop(file);
    let program = find_tool("mkfs.ext4");
    let output = Command::new(&program)
        .args([
            "-q",
            "-F",
            "-L",
            "quarry-scratch",
            "-m",
            "0",
            "-O",
            "^has_journal",
        ])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .arg(path)
        .stdin(Stdio::null())
        .output();
    let failure = match output {
        Ok(out) if out.status.success() => return Ok(()),
        Ok(out) => VmError::Mkfs {
            path: path.to_owned(),
            status: out.status,
            stderr_tail: tail(&out.stderr, 4096),
        },
        Err(source) => VmError::MkfsSpawn { program, source },
    };
    let _ = std::fs::remove_file(path);
    Err(failure)
}

/// `name` from `PATH`, else from `/usr/sbin` or `/sbin` (often not in a service's `PATH`), else
/// `name` itself (the spawn error then says it is missing).
fn find_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The last `max` bytes of `bytes`, as lossy UTF-8 and trimmed.
pub(crate) fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

/// Writes `config` as JSON to `path`, created exclusively with mode 0600 (it holds the agent's
/// registration token).
pub fn write_config(path: &Path, config: &GuestConfig) -> Result<(), VmError> {
    let json = serde_json::to_vec(config).map_err(VmError::Serialize)?;
    let create = |source| VmError::Create {
        path: path.to_owned(),
        source,
    };
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(create)?;
    file.write_all(&json).map_err(create)?;
    file.sync_all().map_err(create)
}

/// The first port `>= from` on `ip` that is not in `taken` and can be bound right now. The port
/// is free only at the time of the check: callers record it in `taken` for their next call.
pub fn free_port(ip: IpAddr, from: u16, taken: &HashSet<u16>) -> Result<u16, VmError> {
    (from..=u16::MAX)
        .filter(|p| *p != 0 && !taken.contains(p))
        .find(|p| TcpListener::bind((ip, *p)).is_ok())
        .ok_or(VmError::NoFreePort { ip, from })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;
    use crate::guest::GuestNetwork;
    use crate::spec::{Accel, Machine, NetworkMode};

    #[test]
    fn scratch_is_sparse_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scratch.img");
        let started = std::time::Instant::now();
        make_scratch(&path, 8 << 30).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 8 << 30);
        // Sparse: far less allocated than the size.
        assert!(
            meta.blocks() * 512 < 64 << 20,
            "allocated {}",
            meta.blocks() * 512
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let out = Command::new(find_tool("dumpe2fs"))
            .arg("-h")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Filesystem volume name:   quarry-scratch"),
            "{text}"
        );
        assert!(!text.contains("has_journal"), "{text}");
        assert!(
            started.elapsed().as_secs() < 10,
            "mkfs took {:?}",
            started.elapsed()
        );
        // Never overwrites.
        assert!(matches!(
            make_scratch(&path, 1 << 20),
            Err(VmError::Create { .. })
        ));
    }

    #[test]
    fn failing_mkfs_reports_and_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.img");
        // 4 KiB is far too small for ext4.
        let err = make_scratch(&path, 4096).unwrap_err();
        assert!(matches!(err, VmError::Mkfs { .. }), "{err:?}");
        assert!(err.to_string().starts_with("mkfs.ext4 on "), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn config_is_written_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let config = GuestConfig {
            build_uuid: "b1".to_owned(),
            agent_env: BTreeMap::from([("TOKEN".to_owned(), "t".to_owned())]),
            ca_cert: None,
            ssh_authorized_keys: vec![],
            network: GuestNetwork {
                address: "10.0.2.15/24".to_owned(),
                gateway: None,
                nameservers: vec![],
                hosts: vec![],
            },
            forwards: vec![],
            debug: false,
            max_lifetime_s: 60,
        };
        write_config(&path, &config).unwrap();
        let back: GuestConfig = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, config);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            write_config(&path, &config),
            Err(VmError::Create { .. })
        ));
    }

    #[test]
    fn free_port_skips_taken_and_bound_ports() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let held = TcpListener::bind((ip, 0)).unwrap();
        let busy = held.local_addr().unwrap().port();
        let port = free_port(ip, busy, &HashSet::new()).unwrap();
        assert!(port > busy);
        let taken = HashSet::from([port]);
        let next = free_port(ip, busy, &taken).unwrap();
        assert!(next > busy && next != port);
        let all: HashSet<u16> = (65500..=u16::MAX).collect();
        assert!(matches!(
            free_port(ip, 65500, &all),
            Err(VmError::NoFreePort { .. })
        ));
    }

    #[test]
    fn command_runs_qemu_with_the_spec_arguments() {
        let spec = VmSpec {
            qemu_binary: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            name: "t".to_owned(),
            machine: Machine::Microvm,
            accel: Accel::Tcg,
            memory_mib: 256,
            vcpus: 1,
            kernel: PathBuf::from("/k"),
            initrd: PathBuf::from("/i"),
            rootfs: PathBuf::from("/r"),
            scratch: None,
            kernel_args: vec![],
            tsc_khz: None,
            config_file: None,
            console_log: Some(PathBuf::from("/c")),
            network: NetworkMode::Restricted,
            ssh_forward: None,
            guest_forwards: vec![],
            relay: None,
            max_open_files: None,
            run_as: None,
            sandbox: false,
            qmp_socket: None,
            pidfile: None,
        };
        let cmd = command(&spec);
        assert_eq!(cmd.get_program(), "/usr/bin/qemu-system-x86_64");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        assert_eq!(args, qemu_args(&spec));
        assert!(cmd.get_current_dir().is_none());

        let mut limited = spec.clone();
        limited.max_open_files = Some(64);
        let cmd = command(&limited);
        assert!(cmd.get_program().to_string_lossy().ends_with("prlimit"));
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        assert_eq!(
            args[..3],
            ["--nofile=64:64", "--", "/usr/bin/qemu-system-x86_64"]
        );
        assert_eq!(args[3..], qemu_args(&limited));
        let envs: Vec<_> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k)
            .collect();
        assert_eq!(envs, ["PATH"]);
    }
}
