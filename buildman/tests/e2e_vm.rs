//! End to end with the `qemu` executor: each build runs inside its own throw-away VM booted from
//! the image `qemu-image build` made (software emulation on our machines: the probe finds that
//! KVM cannot boot a guest here). Shows that
//! - a build with RUN steps runs in the guest kernel, and its image is pushed and pulled back;
//! - the build cannot read a marker file on the host, cannot see buildman's data directory, sees
//!   only its own two disks, and cannot reach host services that were not forwarded to it;
//! - with `DEBUG: true` and `SSH_AUTHORIZED_KEYS`, the VM is kept after the build and an `ssh` to
//!   the forwarded port (announced in the build log) runs commands as root in the guest, where the
//!   same isolation holds; another key is refused; buildman's shutdown removes the kept VM;
//! - a VM killed from outside mid-build: the attempt is retried (on `popen`, by
//!   `MINIMUM_RETRY_THRESHOLD`, as the seed's failover example) and completes, and no QEMU
//!   process, scratch disk, work directory or SSH port is left.
//!
//! Heavy (each build boots a VM under TCG): `scripts/test.sh` runs them in its heavy tier, after
//! building the VM image. The two tests take turns (one VM at a time on a 2-core machine).
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::quarry::{Quarry, agent_binary, free_port, messages, workspace_path};
use common::redis::RedisServer;
use common::sources;
use serde_json::{Value, json};

/// `VM_MIN_FREE_SPACE` for these tests: CI machines have been seen with well under the 1G
/// default free once the workspace is built, and the test builds write a few tens of MiB.
const MIN_FREE: &str = "128M";
/// Builds under software emulation are slow: a generous bound.
const VM_BUILD_DEADLINE: Duration = Duration::from_secs(900);

/// One VM at a time.
static VM_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A TCP listener on the host's loopback that no VM was given: counts connections.
struct HostOnlyService {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl HostOnlyService {
    fn start() -> HostOnlyService {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if conn.is_ok() {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        HostOnlyService { port, hits }
    }
}

fn ssh_keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("running ssh-keygen (openssh-client)");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_owned())
}

/// Run `command` in the guest over SSH with `key`; returns (success, stdout + stderr).
fn ssh(port: u16, key: &Path, command: &str) -> (bool, String) {
    let out = Command::new("ssh")
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-i",
        ])
        .arg(key)
        .arg("-p")
        .arg(port.to_string())
        .arg("root@127.0.0.1")
        .arg(command)
        .output()
        .expect("running ssh (openssh-client)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn host_kernel() -> String {
    let out = Command::new("uname").arg("-r").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// QEMU processes of build `uuid` (their `-name` and paths carry it).
fn qemus_of(uuid: &str) -> Vec<i32> {
    sources::processes_mentioning(uuid)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("qemu-system"))
        })
        .collect()
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Wait (bounded) until nothing of attempt `execution_id` of build `uuid` is left: no QEMU
/// process, no work directory (with its scratch disk), and the SSH port can be bound again.
async fn nothing_left(q: &Quarry, uuid: &str, execution_id: &str, ssh_port: Option<u16>) {
    let work = q.root.path().join("data/builds").join(execution_id);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let qemus = qemus_of(uuid);
        let port_free = ssh_port.is_none_or(port_is_free);
        if qemus.is_empty() && !work.exists() && port_free {
            return;
        }
        assert!(
            Instant::now() < end,
            "left behind by {execution_id}: qemu pids {qemus:?}, work dir exists: {}, ssh port \
             {ssh_port:?} free: {port_free}\n{}",
            work.exists(),
            q.log_tail(60)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The first `ssh -p PORT` announced in the build log.
fn announced_ssh_port(logs: &[Value]) -> Option<u16> {
    let text = messages(logs);
    let at = text.find("ssh -p ")? + "ssh -p ".len();
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn line_after<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in the build log:\n{text}"))
        .trim()
}

fn redis_yaml(redis: &RedisServer) -> String {
    format!(
        "    ORCHESTRATOR_PREFIX: e2e-vm/\n    ORCHESTRATOR:\n      REDIS_HOST: 127.0.0.1\n      \
         REDIS_PORT: {}\n",
        redis.port()
    )
}

#[tokio::test]
#[ignore = "heavy: boots a builder VM under QEMU and builds in it"]
async fn build_runs_in_the_guest_kernel_isolated_and_debuggable_over_ssh() {
    let _turn = VM_TURN.lock().await;
    let redis = RedisServer::start();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = ssh_keygen(keys.path(), "debugger");
    let (stranger, _) = ssh_keygen(keys.path(), "stranger");
    let ssh_base = free_port();
    let host_only = HostOnlyService::start();
    let marker = keys.path().join("host-marker");
    std::fs::write(&marker, "host secret").unwrap();

    let mut q = Quarry::start_with_executors(
        &redis_yaml(&redis),
        &format!(
            "\x20   - EXECUTOR: qemu\n\
             \x20     NAME: vm\n\
             \x20     DEBUG: true\n\
             \x20     SSH_AUTHORIZED_KEYS: [\"{public}\"]\n\
             \x20     SSH_PORT: {ssh_base}\n\
             \x20     VOLUME_SIZE: 4G\n\
             \x20     VM_MIN_FREE_SPACE: {MIN_FREE}\n\
             \x20     VM_MEMORY: 2G\n\
             \x20     MAX_LIFETIME_S: 1800\n"
        ),
    )
    .await;
    q.create_repo("acme", "base");
    q.create_repo("acme", "vm");
    let base = q.push_base_image("acme/base");
    let robot = q.pull_robot("acme", "puller", "acme/base");
    let data_dir = q.root.path().join("data");
    let file_id = q
        .upload(sources::tar_gz_dir(&workspace_path(
            "fixtures/builds/vm-checks",
        )))
        .await;
    let uuid = q
        .start_build(
            "acme/vm",
            json!({"file_id": file_id, "docker_tags": ["latest"], "pull_robot": robot,
                   "build_args": {"BASE": base,
                                  "HOST_MARKER": marker.display().to_string(),
                                  "HOST_DATA_DIR": data_dir.display().to_string(),
                                  "HOST_ONLY_PORT": host_only.port.to_string()}}),
        )
        .await;
    let view = q.wait_build("acme/vm", &uuid, VM_BUILD_DEADLINE).await;
    let logs = q.logs("acme/vm", &uuid).await;
    let text = messages(&logs);
    assert_eq!(view["phase"], "complete", "{view}\n{text}");

    // The RUN steps ran in the guest's kernel, not the host's.
    let guest_kernel = line_after(&text, "vm-check kernel:").to_owned();
    assert!(!guest_kernel.is_empty());
    assert_ne!(guest_kernel, host_kernel(), "RUN ran in the host kernel");
    // What the build could see.
    assert_eq!(line_after(&text, "vm-check marker:"), "absent");
    assert_eq!(line_after(&text, "vm-check data dir:"), "absent");
    assert_eq!(line_after(&text, "vm-check disks:"), "vda vdb");
    assert_eq!(line_after(&text, "vm-check host:"), "unreachable");
    assert_eq!(line_after(&text, "vm-check loopback:"), "unreachable");
    assert_eq!(host_only.hits.load(Ordering::SeqCst), 0);
    // The pushed image carries what the guest wrote.
    let image = format!("{}/acme/vm:latest", q.registry());
    let release = sources::file_in_image(&image, "kernel-release", q.root.path());
    assert_eq!(
        release.as_deref(),
        Some(format!("{guest_kernel}\n").as_str())
    );
    let message = sources::file_in_image(&image, "message.txt", q.root.path());
    assert_eq!(message.as_deref(), Some("built inside a throw-away VM\n"));

    // DEBUG: the VM is kept, and the build log says how to reach it.
    let port = announced_ssh_port(&logs).unwrap_or_else(|| panic!("no ssh line in:\n{text}"));
    assert!(port >= ssh_base, "port {port} below SSH_PORT {ssh_base}");
    assert_eq!(qemus_of(&uuid).len(), 1, "the debug VM is not running");
    let (ok, out) = ssh(
        port,
        &key,
        &format!(
            "uname -r; echo agent-log-lines=$(wc -l < /var/log/builder-agent.log); \
             cat {marker} 2>/dev/null && echo MARKER-READ; ls {data} 2>/dev/null && echo DATA-SEEN; \
             echo disks=$(awk 'NR>2 {{print $4}}' /proc/partitions | sort | tr '\\n' ' '); \
             timeout 5 bash -c 'echo x > /dev/tcp/10.0.2.2/{hp}' 2>/dev/null && echo HOST-REACHED; \
             timeout 5 bash -c 'echo x > /dev/tcp/127.0.0.1/{rp}' 2>/dev/null && echo REDIS-REACHED; \
             echo done",
            marker = marker.display(),
            data = data_dir.display(),
            hp = q.http_port,
            rp = redis.port(),
        ),
    );
    assert!(ok, "ssh with the configured key failed: {out}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(guest_kernel.as_str()), "{out}");
    let agent_lines: usize = line_after(&out, "agent-log-lines=").parse().unwrap();
    assert!(
        agent_lines > 0,
        "the agent's log is empty in the guest: {out}"
    );
    for leak in ["MARKER-READ", "DATA-SEEN", "HOST-REACHED", "REDIS-REACHED"] {
        assert!(!out.contains(leak), "guest root: {leak}\n{out}");
    }
    assert_eq!(line_after(&out, "disks="), "vda vdb", "{out}");
    assert!(out.trim_end().ends_with("done"), "{out}");
    assert_eq!(host_only.hits.load(Ordering::SeqCst), 0);
    // Another key is refused.
    let (ok, out) = ssh(port, &stranger, "echo in");
    assert!(
        !ok && !out.contains("in\n"),
        "a key not in SSH_AUTHORIZED_KEYS got in: {out}"
    );
    assert!(out.contains("Permission denied"), "{out}");

    // buildman's shutdown stops the kept VM: nothing is left.
    q.terminate(Duration::from_secs(60));
    nothing_left(&q, &uuid, &format!("{uuid}-1"), Some(port)).await;
}

#[tokio::test]
#[ignore = "heavy: boots a builder VM under QEMU and kills it mid-build"]
async fn vm_killed_mid_build_is_retried_on_popen_and_leaves_nothing() {
    let _turn = VM_TURN.lock().await;
    let redis = RedisServer::start();
    let keys = tempfile::tempdir().unwrap();
    let (_key, public) = ssh_keygen(keys.path(), "debugger");
    let ssh_base = free_port();
    let q = Quarry::start_with_executors(
        &redis_yaml(&redis),
        &format!(
            "\x20   - EXECUTOR: qemu\n\
             \x20     NAME: vm\n\
             \x20     MINIMUM_RETRY_THRESHOLD: 2\n\
             \x20     SSH_AUTHORIZED_KEYS: [\"{public}\"]\n\
             \x20     SSH_PORT: {ssh_base}\n\
             \x20     VOLUME_SIZE: 4G\n\
             \x20     VM_MIN_FREE_SPACE: {MIN_FREE}\n\
             \x20   - EXECUTOR: popen\n\
             \x20     BUILDER_BINARY_LOCATION: {agent}\n",
            agent = agent_binary().display()
        ),
    )
    .await;
    q.create_repo("acme", "base");
    q.create_repo("acme", "vm");
    let base = q.push_base_image("acme/base");
    let robot = q.pull_robot("acme", "puller", "acme/base");
    let file_id = q
        .upload(sources::tar_gz_dir(&workspace_path(
            "fixtures/builds/vm-checks",
        )))
        .await;
    let uuid = q
        .start_build(
            "acme/vm",
            json!({"file_id": file_id, "docker_tags": ["latest"], "pull_robot": robot,
                   "build_args": {"BASE": base, "SLEEP": "20"}}),
        )
        .await;

    // Wait for the guest to be building, then kill its QEMU from outside.
    let end = Instant::now() + VM_BUILD_DEADLINE;
    let port = loop {
        let logs = q.logs("acme/vm", &uuid).await;
        let text = messages(&logs);
        if text
            .lines()
            .any(|l| l.trim().starts_with("vm-check kernel:"))
        {
            break announced_ssh_port(&logs).expect("ssh port announced");
        }
        assert!(
            Instant::now() < end,
            "never started building:\n{text}\n{}",
            q.log_tail(60)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let qemus = qemus_of(&uuid);
    assert_eq!(qemus.len(), 1, "expected one QEMU for {uuid}: {qemus:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemus[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Nothing of the killed VM is left, well before the retry finishes.
    nothing_left(&q, &uuid, &format!("{uuid}-1"), Some(port)).await;

    let view = q.wait_build("acme/vm", &uuid, VM_BUILD_DEADLINE).await;
    let logs = q.logs("acme/vm", &uuid).await;
    let text = messages(&logs);
    assert_eq!(view["phase"], "complete", "{view}\n{text}");
    assert_eq!(view["attempts"], 2, "{view}");
    // The executor saw QEMU die and the manager ended the attempt at once, with the reason
    // (not after the 60 s heartbeat TTL).
    assert!(
        text.contains("attempt 1 failed: the build's VM ended (QEMU signal: 9"),
        "{text}"
    );
    // The second attempt ran on the host (popen), so its RUN saw the host kernel.
    let kernels: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("vm-check kernel:"))
        .map(str::trim)
        .collect();
    assert_eq!(kernels.len(), 2, "{text}");
    assert_ne!(kernels[0], host_kernel());
    assert_eq!(kernels[1], host_kernel());
    sources::nothing_left(&uuid).await;
    assert!(qemus_of(&uuid).is_empty());
}
