//! The `qemu` executor with real VMs booted from the current image (`cargo run -p qemu-image --
//! build` makes it): a start gives a QEMU named after the execution id with the SSH port bound;
//! a stop, a QEMU killed from outside, and the VMs a crashed buildman left (reaped by the next
//! executor) all end with no QEMU process, no work directory or pid file, and the port free.
//!
//! QEMU runs as `nobody` when the tests run as root (the default `VM_RUN_AS`), and the guest
//! configuration with the token is gone from the work directory once the guest runs.
//!
//! The jobs point at services nobody listens on: the agent in the guest fails to register,
//! which is fine, the tests are about the VM's lifecycle. Heavy (each VM boots under TCG on our
//! machines): `scripts/test.sh` runs them in its heavy tier, after building the image.
#![allow(clippy::tests_outside_test_module, clippy::unwrap_used, missing_docs)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use buildman::executor::qemu::{QemuOptions, resolve_run_as};
use buildman::executor::{Executor, ExecutorSettings, QemuExecutor, StartJob};
use qemu_image::guest::AGENT_STARTED_MARKER;
use qemu_image::spec::{Accel, Machine};

/// One VM at a time: the machines have two cores.
static VM_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A key in the OpenSSH format; the guest only needs it to start its SSH server.
const TEST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKdGn0mqk0x3bNwzRKrLd3aR3tVkOWIpV1u1FLHQX6D1 quarry-test";

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Settings and options for a small VM in `root/builds`, SSH forwarded from a free port up.
fn settings(root: &Path) -> (ExecutorSettings, QemuOptions) {
    let mut s = ExecutorSettings::new("vm", root.join("builds"));
    s.max_lifetime = Duration::from_secs(600);
    let mut o = QemuOptions {
        volume_size_bytes: 1 << 30,
        ssh_authorized_keys: vec![TEST_KEY.to_owned()],
        run_as: resolve_run_as(None, nix::unistd::geteuid().is_root()),
        ..QemuOptions::default()
    };
    o.vm.memory_bytes = 512 << 20;
    o.vm.cpus = 1;
    // CI machines have been seen with under 1 GiB free once the workspace is built.
    o.vm.min_free_bytes = 128 << 20;
    o.vm.ssh_port = free_tcp_port();
    (s, o)
}

/// The probe's answer on this kind of machine, so that only one test pays for probing.
fn forced(mut o: QemuOptions) -> QemuOptions {
    o.vm.accel = Some(Accel::Tcg);
    o.vm.machine = Some(Machine::Microvm);
    o
}

fn job(uuid: &str) -> StartJob {
    StartJob {
        build_uuid: uuid.to_owned(),
        registration_token: "not-a-real-token".to_owned(),
        grpc_server: format!("127.0.0.1:{}", free_tcp_port()),
        insecure: true,
        registry_hostname: format!("localhost:{}", free_tcp_port()),
    }
}

/// Pids of live QEMU processes started with `-name quarry-build-<execution_id>`.
fn qemus_named(execution_id: &str) -> Vec<i32> {
    let name = format!("quarry-build-{execution_id}");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let named = args
            .windows(2)
            .any(|w| w[0] == b"-name" && w[1] == name.as_bytes());
        if named && !zombie {
            out.push(pid);
        }
    }
    out
}

/// Wait (bounded) until the execution's console (kept in memory) contains `needle`; returns it.
async fn wait_for_console(exec: &QemuExecutor, id: &str, needle: &str) -> String {
    let end = Instant::now() + Duration::from_secs(180);
    loop {
        let console = exec.console(id).unwrap_or_default();
        if console.contains(needle) {
            return console;
        }
        assert!(
            Instant::now() < end,
            "the guest's console never showed {needle:?}:\n{console}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The real and effective uids of `pid` (`/proc/<pid>/status`).
fn uids_of(pid: i32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let ids: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    (ids[0], ids[1])
}

/// Wait (bounded) until nothing of `id` is left in `work_root`.
async fn nothing_left(work_root: &Path, id: &str, ssh_port: u16) {
    let dir = work_root.join(id);
    let pid_file = work_root.join(format!("{id}.pid"));
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let qemus = qemus_named(id);
        let free = port_is_free(ssh_port);
        if qemus.is_empty() && !dir.exists() && !pid_file.exists() && free {
            return;
        }
        assert!(
            Instant::now() < end,
            "left of {id}: qemu {qemus:?}, dir {}, pid file {}, port {ssh_port} free {free}",
            dir.exists(),
            pid_file.exists()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ssh_port_of(exec: &QemuExecutor, id: &str) -> u16 {
    let access = exec
        .debug_access(id)
        .expect("a VM with SSH keys has debug access");
    let port = access
        .strip_prefix("ssh -p ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected debug access {access:?}"));
    assert_eq!(access, format!("ssh -p {port} root@127.0.0.1"));
    port
}

async fn executor(s: ExecutorSettings, o: QemuOptions) -> QemuExecutor {
    // The executor's log lines (probe decision, VM start and exit) in the test output.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("buildman=info")
        .try_init();
    QemuExecutor::new(s, o).await.unwrap_or_else(|e| {
        panic!(
            "qemu executor: {e} ({:?}); build the image with `cargo run -p qemu-image -- build`",
            std::error::Error::source(&e).map(ToString::to_string)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: boots a builder VM under QEMU"]
async fn a_started_vm_runs_under_its_name_and_a_stop_leaves_nothing() {
    let _turn = VM_TURN.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let (s, o) = settings(tmp.path());
    let work_root = s.work_root.clone();
    // Auto: this test pays for the accelerator probe once.
    let exec = executor(s, o).await;
    let started = Instant::now();
    let id = exec.start_builder(&job("vmstop")).await.unwrap();
    eprintln!("start_builder (probe included): {:?}", started.elapsed());
    let d = exec.detection().await.unwrap();
    eprintln!("detection: {:?} {:?} {:?}", d.accel, d.machine, d.notes);
    assert_eq!(id, "vmstop-1");
    assert_eq!(qemus_named(&id).len(), 1, "one QEMU named after {id}");
    assert_eq!(exec.running_builders_count().await.unwrap(), 1);
    let port = ssh_port_of(&exec, &id);
    let dir = work_root.join(&id);
    assert!(
        dir.join("scratch.img").is_file(),
        "scratch disk in the work dir"
    );
    let console = wait_for_console(&exec, &id, AGENT_STARTED_MARKER).await;
    eprintln!("agent started {:?} after start", started.elapsed());
    assert!(console.len() <= 64 * 1024);
    // The token's file is gone once QEMU read it, and nothing of the console is on disk.
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!files.iter().any(|f| f == "config.json"), "{files:?}");
    assert!(!files.iter().any(|f| f.contains("console")), "{files:?}");
    // QEMU dropped root after opening its files.
    let pid = qemus_named(&id)[0];
    if nix::unistd::geteuid().is_root() {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        assert_eq!(uids_of(pid), (nobody.uid.as_raw(), nobody.uid.as_raw()));
    }
    // QEMU listens on the SSH forward.
    assert!(!port_is_free(port), "port {port} is not held by the VM");
    let stopping = Instant::now();
    exec.stop_builder(&id).await.unwrap();
    eprintln!("stop_builder: {:?}", stopping.elapsed());
    nothing_left(&work_root, &id, port).await;
    assert_eq!(exec.running_builders_count().await.unwrap(), 0);
    assert_eq!(exec.debug_access(&id), None);
    // Idempotent.
    exec.stop_builder(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: boots a builder VM under QEMU and kills it"]
async fn a_vm_killed_from_outside_is_cleaned_up_by_its_supervisor() {
    let _turn = VM_TURN.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let (s, o) = settings(tmp.path());
    let work_root = s.work_root.clone();
    let exec = executor(s, forced(o)).await;
    let id = exec.start_builder(&job("vmkill")).await.unwrap();
    let port = ssh_port_of(&exec, &id);
    wait_for_console(&exec, &id, "quarry").await;
    let pids = qemus_named(&id);
    assert_eq!(pids.len(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    nothing_left(&work_root, &id, port).await;
    let end = Instant::now() + Duration::from_secs(10);
    while exec.running_builders_count().await.unwrap() > 0 {
        assert!(Instant::now() < end, "the killed VM is still counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The port is handed out again.
    let again = exec.start_builder(&job("vmkill")).await.unwrap();
    assert_eq!(again, "vmkill-1", "the first work dir is free again");
    assert_eq!(ssh_port_of(&exec, &again), port);
    exec.shutdown_all().await.unwrap();
    nothing_left(&work_root, &again, port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: boots a builder VM under QEMU and keeps it"]
async fn with_debug_a_stopped_vm_is_kept_until_shutdown() {
    let _turn = VM_TURN.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, o) = settings(tmp.path());
    s.debug = true;
    let work_root = s.work_root.clone();
    let exec = executor(s, forced(o)).await;
    let id = exec.start_builder(&job("vmdebug")).await.unwrap();
    let port = ssh_port_of(&exec, &id);
    exec.stop_builder(&id).await.unwrap();
    exec.stop_builder(&id).await.unwrap();
    assert_eq!(qemus_named(&id).len(), 1, "the debug VM is kept");
    assert_eq!(exec.running_builders_count().await.unwrap(), 1);
    assert_eq!(ssh_port_of(&exec, &id), port, "still reachable");
    exec.shutdown_all().await.unwrap();
    nothing_left(&work_root, &id, port).await;
    assert_eq!(exec.running_builders_count().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: boots a builder VM under QEMU that outlives MAX_LIFETIME_S"]
async fn a_vm_past_max_lifetime_is_killed() {
    let _turn = VM_TURN.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, o) = settings(tmp.path());
    s.max_lifetime = Duration::from_secs(3);
    let work_root = s.work_root.clone();
    let exec = executor(s, forced(o)).await;
    let started = Instant::now();
    let id = exec.start_builder(&job("vmlife")).await.unwrap();
    let port = ssh_port_of(&exec, &id);
    nothing_left(&work_root, &id, port).await;
    let took = started.elapsed();
    eprintln!("VM gone after {took:?}");
    assert!(
        took >= Duration::from_secs(3),
        "gone before MAX_LIFETIME_S: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: boots a builder VM under QEMU and waits for its agent"]
async fn the_agent_in_the_vm_dials_buildman_through_the_forward() {
    let _turn = VM_TURN.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let (s, o) = settings(tmp.path());
    let work_root = s.work_root.clone();
    let exec = executor(s, forced(o)).await;
    // buildman's gRPC address as the agent is told it: a listener on the host's loopback.
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let job = StartJob {
        grpc_server: grpc.local_addr().unwrap().to_string(),
        ..job("vmdial")
    };
    let started = Instant::now();
    let id = exec.start_builder(&job).await.unwrap();
    let port = ssh_port_of(&exec, &id);
    let accepted = tokio::time::timeout(Duration::from_secs(180), grpc.accept()).await;
    let console = exec.console(&id).unwrap_or_default();
    assert!(
        matches!(accepted, Ok(Ok(_))),
        "no connection from the guest's agent: {accepted:?}\nconsole:\n{console}"
    );
    let tail: Vec<&str> = console.lines().rev().take(5).collect();
    eprintln!(
        "agent connected {:?} after start; console ends {tail:?}",
        started.elapsed()
    );
    exec.stop_builder(&id).await.unwrap();
    nothing_left(&work_root, &id, port).await;
}

#[test]
#[ignore = "heavy: boots a builder VM under QEMU and abandons it"]
fn vms_of_a_crashed_buildman_are_reaped_by_the_next_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, o) = settings(tmp.path());
    let o = forced(o);
    let work_root: PathBuf = s.work_root.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _turn = rt.block_on(VM_TURN.lock());
    // The "crashed" buildman: its executor is never dropped (no cleanup runs) and its runtime,
    // with the supervisor task, goes away under the VM.
    let crashed = tokio::runtime::Runtime::new().unwrap();
    let (id, port) = crashed.block_on(async {
        let exec = executor(s.clone(), o.clone()).await;
        let id = exec.start_builder(&job("vmorphan")).await.unwrap();
        let port = ssh_port_of(&exec, &id);
        wait_for_console(&exec, &id, "quarry").await;
        std::mem::forget(exec);
        (id, port)
    });
    crashed.shutdown_timeout(Duration::from_secs(5));
    assert_eq!(qemus_named(&id).len(), 1, "the orphaned VM runs on");
    assert!(work_root.join(format!("{id}.pid")).is_file());
    rt.block_on(async {
        // Making the executor reaps the orphan before it would probe.
        let started = Instant::now();
        let exec = executor(s, o).await;
        eprintln!("new executor (reaping included): {:?}", started.elapsed());
        assert_eq!(exec.orphans_reaped(), 1);
        nothing_left(&work_root, &id, port).await;
        assert_eq!(
            exec.reap_orphans().await.unwrap(),
            0,
            "nothing left to reap"
        );
    });
}
