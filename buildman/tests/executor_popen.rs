//! The popen executor against stand-in agents: `#!/bin/sh` scripts written by each test that
//! record their environment and pids under the test's temp dir and start a grandchild
//! `sleep 300`, so a kill that misses the process group would be seen. [`ESCAPES`] goes further:
//! processes that leave the agent's group and session the way a podman service and buildah's
//! RUN steps do, each tied to the build by one thing only.
#![allow(clippy::tests_outside_test_module)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use buildman::executor::popen::{AGENT_ENV, AGENT_PATH};
use buildman::executor::{Executor, ExecutorError, ExecutorSettings, PopenExecutor, StartJob};

/// The stand-in agent: writes its initial environment (from /proc, so the shell adds nothing)
/// and `<leader pid> <grandchild pid>` atomically, prints a line, then waits on the grandchild.
const STANDIN: &str = r#"
tr '\0' '\n' < /proc/$$/environ > "$OUT/$BUILD_UUID.env.tmp" && mv "$OUT/$BUILD_UUID.env.tmp" "$OUT/$BUILD_UUID.env"
sleep 300 &
echo "$$ $!" > "$OUT/$BUILD_UUID.pids.tmp" && mv "$OUT/$BUILD_UUID.pids.tmp" "$OUT/$BUILD_UUID.pids"
echo "stand-in agent started"
wait
"#;

/// Stand-in processes that escape the agent: each in a session of its own, double-forked so the
/// agent is not its parent, tied to the build by one thing only: its command line naming the
/// work dir (`cmdline`, whose child `sleep` is found as a descendant), its working directory
/// (`cwd`), its environment (`env`: BUILD_UUID and QUARRY_WORK_DIR), or the podman record the
/// real agent writes (`service`, with a run root in `/tmp/quarry-run-*`). Writes
/// `$OUT/<work dir name>.escaped` (`name pid start-time` lines) and `.scratch` when all run.
const ESCAPES: &str = r#"
W="$QUARRY_WORK_DIR"
E="$OUT/$(basename "$W")"
P=PATH=/usr/bin:/bin
st() { cut -d' ' -f22 "/proc/$1/stat"; }
( cd / || exit 1; env -i $P setsid sh -c 'sleep 300 & echo $! > "$0"; wait' "$E.child" "$W/storage" & echo $! > "$E.cmdline" )
( cd "$W" || exit 1; env -i $P setsid sleep 301 & echo $! > "$E.cwd" )
( cd / || exit 1; setsid sleep 302 & echo $! > "$E.env" )
( cd / || exit 1; env -i $P setsid sleep 303 & echo $! > "$E.service" )
S=$(mktemp -d /tmp/quarry-run-XXXXXX)
mkdir "$S/run"
svc=$(cat "$E.service")
printf '{"pid":%s,"start_time":%s,"runroot":"%s/run","socket":"%s/podman.sock"}' "$svc" "$(st "$svc")" "$S" "$S" > "$W/podman.json"
while [ ! -s "$E.child" ]; do sleep 0.02; done
for n in cmdline child cwd env service; do p=$(cat "$E.$n"); echo "$n $p $(st "$p")"; done > "$E.escaped.tmp"
echo "$S" > "$E.scratch"
mv "$E.escaped.tmp" "$E.escaped"
"#;

/// An agent that lets [`ESCAPES`] loose, then waits.
fn escaping_agent() -> String {
    format!("{ESCAPES}\nsleep 300 &\nwait\n")
}

struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Result<Fixture> {
        let tmp = tempfile::tempdir()?;
        std::fs::create_dir(tmp.path().join("out"))?;
        Ok(Fixture { tmp })
    }

    fn out(&self) -> PathBuf {
        self.tmp.path().join("out")
    }

    fn work_root(&self) -> PathBuf {
        self.tmp.path().join("builds")
    }

    /// Write an agent script running `body` (with `$OUT` set) and return settings using it.
    fn settings(&self, body: &str) -> Result<ExecutorSettings> {
        let path = self.tmp.path().join("agent.sh");
        let script = format!("#!/bin/sh\nOUT={}\n{body}", self.out().display());
        std::fs::write(&path, script)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        let mut settings = ExecutorSettings::new("popen", self.work_root());
        settings.builder_binary = Some(path);
        Ok(settings)
    }

    /// Wait for the escapees of execution `id`: (name, pid) in [`ESCAPES`] order, and the
    /// scratch run root.
    async fn escaped(&self, id: &str) -> Result<(Vec<(String, i32)>, PathBuf)> {
        let path = self.out().join(format!("{id}.escaped"));
        wait_until("the stand-in's escapees", Duration::from_secs(10), || {
            path.exists()
        })
        .await?;
        let mut out = Vec::new();
        for line in std::fs::read_to_string(&path)?.lines() {
            let mut it = line.split_whitespace();
            let name = it.next().context("escapee name")?.to_owned();
            out.push((name, it.next().context("escapee pid")?.parse()?));
        }
        let scratch = std::fs::read_to_string(self.out().join(format!("{id}.scratch")))?;
        Ok((out, PathBuf::from(scratch.trim())))
    }

    /// Run `script` with `sh -c script <pid file> <dir>`: it starts one process in the background
    /// and writes its pid to `$0`; returns that pid, recorded as escapee `name` for cleanup.
    fn escapee(&self, name: &str, script: &str, dir: &Path) -> Result<i32> {
        let pid_file = self.out().join(format!("{name}.pid"));
        let status = std::process::Command::new("sh")
            .args(["-c", script])
            .arg(&pid_file)
            .arg(dir)
            .status()?;
        assert!(status.success(), "{name}: {status}");
        let pid: i32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
        let start = proc_start_time(pid).context("escapee start time")?;
        std::fs::write(
            self.out().join(format!("{name}.escaped")),
            format!("{name} {pid} {start}\n"),
        )?;
        Ok(pid)
    }

    /// The agent of execution `id`, from the executor's pid file.
    fn leader(&self, id: &str) -> Result<i32> {
        let text = std::fs::read_to_string(self.work_root().join(format!("{id}.pid")))?;
        Ok(text.split_whitespace().next().context("pid")?.parse()?)
    }

    /// Wait for the stand-in's `<uuid>.pids` file: (leader, grandchild).
    async fn pids(&self, uuid: &str) -> Result<(i32, i32)> {
        let path = self.out().join(format!("{uuid}.pids"));
        wait_until(
            "the stand-in to write its pids",
            Duration::from_secs(10),
            || path.exists(),
        )
        .await?;
        let text = std::fs::read_to_string(&path)?;
        let mut it = text.split_whitespace().map(str::parse::<i32>);
        Ok((
            it.next().context("leader pid")??,
            it.next().context("grandchild pid")??,
        ))
    }
}

fn job(uuid: &str) -> StartJob {
    StartJob {
        build_uuid: uuid.to_owned(),
        registration_token: "registration.jwt".to_owned(),
        grpc_server: "127.0.0.1:50051".to_owned(),
        insecure: true,
        registry_hostname: "localhost:8080".to_owned(),
    }
}

/// A failed test must not leave stand-ins behind: SIGKILL every recorded leader and grandchild
/// that is still in its stand-in's process group (so a reused pid is never hit).
impl Drop for Fixture {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.out()) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            if entry.path().extension().is_some_and(|e| e == "escaped") {
                kill_escapees(&entry.path());
                continue;
            }
            if entry.path().extension().is_none_or(|e| e != "pids") {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let pids: Vec<i32> = text
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            let Some(&leader) = pids.first() else {
                continue;
            };
            for &pid in &pids {
                if pgrp(pid) == Some(leader) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

/// SIGKILL the escapees listed in `path` that still have their recorded start time.
fn kill_escapees(path: &Path) {
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(pid), Some(start)) = (
            fields.get(1).and_then(|p| p.parse::<i32>().ok()),
            fields.get(2).and_then(|s| s.parse::<u64>().ok()),
        ) else {
            continue;
        };
        if proc_start_time(pid) == Some(start) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The process group of `pid`, if it exists.
fn pgrp(pid: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    text[text.rfind(')')? + 1..]
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// `/proc/<pid>/stat` as (state, ppid); `None` when the process is gone.
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// Running, as opposed to gone or a zombie awaiting its reaper.
fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z')
}

async fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

async fn count(exec: &PopenExecutor) -> usize {
    exec.running_builders_count().await.expect("count")
}

async fn wait_count(exec: &PopenExecutor, want: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let n = count(exec).await;
        if n == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("running_builders_count is {n}, not {want}, after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn agent_env_is_exactly_the_allowed_set() -> Result<()> {
    // SAFETY: set once, before this test starts any process; std serialises its own environment
    // access, and nothing in this test binary reads the environment from C.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("QUARRY_TEST_LEAK_MARKER", "must-not-reach-the-agent");
    }
    let fx = Fixture::new()?;
    let mut settings = fx.settings(STANDIN)?;
    settings.http_proxy = Some("http://proxy.test:3128".to_owned());
    settings.max_context_bytes = 1024;
    let exec = PopenExecutor::new(settings);
    let id = exec.start_builder(&job("envcheck")).await?;
    assert_eq!(id, "envcheck-1");
    fx.pids("envcheck").await?;
    let text = std::fs::read_to_string(fx.out().join("envcheck.env"))?;
    let env: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let stray: Vec<&&str> = env.keys().filter(|k| !AGENT_ENV.contains(k)).collect();
    assert!(
        stray.is_empty(),
        "variables outside the allowed set: {stray:?}"
    );
    assert!(!env.contains_key("QUARRY_TEST_LEAK_MARKER"));
    let work_dir = fx.work_root().join("envcheck-1");
    let dir = work_dir.to_str().context("utf-8 path")?;
    for (name, value) in [
        ("SERVER", "127.0.0.1:50051"),
        ("TOKEN", "registration.jwt"),
        ("BUILD_UUID", "envcheck"),
        ("REGISTRY_HOSTNAME", "localhost:8080"),
        ("CONTAINER_RUNTIME", "podman"),
        ("INSECURE", "true"),
        ("DEBUG", "false"),
        ("PATH", AGENT_PATH),
        ("HOME", dir),
        ("QUARRY_WORK_DIR", dir),
        ("QUARRY_MAX_CONTEXT_BYTES", "1024"),
        ("HTTP_PROXY", "http://proxy.test:3128"),
        ("http_proxy", "http://proxy.test:3128"),
    ] {
        assert_eq!(env.get(name).copied(), Some(value), "{name}");
    }
    let mode = std::fs::metadata(&work_dir)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "work dir mode");
    exec.stop_builder(&id).await?;
    Ok(())
}

#[tokio::test]
async fn stop_kills_agent_and_grandchild_and_removes_the_work_dir() -> Result<()> {
    let fx = Fixture::new()?;
    let exec = PopenExecutor::new(fx.settings(STANDIN)?);
    let id = exec.start_builder(&job("stopme")).await?;
    let (leader, grandchild) = fx.pids("stopme").await?;
    assert_eq!(count(&exec).await, 1);
    let work_dir = fx.work_root().join(&id);
    assert!(work_dir.is_dir() && fx.work_root().join("stopme-1.log").is_file());
    assert!(alive(leader) && alive(grandchild));

    let started = Instant::now();
    exec.stop_builder(&id).await?;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "stop took {:?}",
        started.elapsed()
    );
    assert!(!alive(leader), "agent survived stop");
    assert!(
        !alive(grandchild),
        "grandchild survived stop: the group was not killed"
    );
    assert_eq!(count(&exec).await, 0);
    assert!(!work_dir.exists(), "work dir left behind");
    assert!(
        !fx.work_root().join("stopme-1.log").exists(),
        "log kept without DEBUG"
    );
    assert!(!fx.work_root().join("stopme-1.pid").exists());
    exec.stop_builder(&id)
        .await
        .context("a second stop is a no-op")?;
    Ok(())
}

#[tokio::test]
async fn an_agent_ignoring_sigterm_is_killed_after_the_grace_period() -> Result<()> {
    let fx = Fixture::new()?;
    let exec = PopenExecutor::new(fx.settings(&format!("trap '' TERM\n{STANDIN}"))?);
    let id = exec.start_builder(&job("stubborn")).await?;
    let (leader, grandchild) = fx.pids("stubborn").await?;
    let started = Instant::now();
    exec.stop_builder(&id).await?;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(4500),
        "SIGKILL came before the grace: {took:?}"
    );
    assert!(took < Duration::from_secs(9), "stop took {took:?}");
    assert!(!alive(leader) && !alive(grandchild));
    assert!(!fx.work_root().join(&id).exists());
    Ok(())
}

#[tokio::test]
async fn exits_are_reaped_and_a_failed_agents_log_is_kept() -> Result<()> {
    let fx = Fixture::new()?;
    let body = r#"echo "$$" > "$OUT/$BUILD_UUID.leader"
echo "agent says why it failed"
case "$BUILD_UUID" in ok*) exit 0 ;; *) exit 3 ;; esac
"#;
    let exec = PopenExecutor::new(fx.settings(body)?);
    let ok = exec.start_builder(&job("ok")).await?;
    let bad = exec.start_builder(&job("bad")).await?;
    wait_count(&exec, 0, Duration::from_secs(10))
        .await
        .context("both agents reaped")?;
    let me = i32::try_from(std::process::id())?;
    for uuid in ["ok", "bad"] {
        let leader: i32 = std::fs::read_to_string(fx.out().join(format!("{uuid}.leader")))?
            .trim()
            .parse()?;
        assert!(
            !matches!(stat(leader), Some(('Z', ppid)) if ppid == me),
            "{uuid}: the agent is a zombie nobody waited for"
        );
        assert!(
            !fx.work_root().join(format!("{uuid}-1")).exists(),
            "{uuid}: work dir left"
        );
    }
    assert!(
        !fx.work_root().join(format!("{ok}.log")).exists(),
        "a clean exit keeps no log"
    );
    let log = std::fs::read_to_string(fx.work_root().join(format!("{bad}.log")))?;
    assert!(log.contains("agent says why it failed"), "log: {log:?}");
    exec.stop_builder(&bad)
        .await
        .context("stop after exit is a no-op")?;
    Ok(())
}

#[tokio::test]
async fn missing_binary_errors_with_the_path_and_the_fix() -> Result<()> {
    let fx = Fixture::new()?;
    let missing = fx.tmp.path().join("no-such-builder-agent");
    let mut settings = ExecutorSettings::new("popen", fx.work_root());
    settings.builder_binary = Some(missing.clone());
    let exec = PopenExecutor::new(settings);
    let err = exec.start_builder(&job("nobinary")).await.unwrap_err();
    assert!(matches!(err, ExecutorError::MissingBinary { .. }));
    let msg = err.to_string();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains("cargo build -p builder-agent"), "{msg}");
    assert!(exec.check().is_err());
    assert_eq!(count(&exec).await, 0);
    assert!(
        !fx.work_root().join("nobinary-1").exists(),
        "no work dir for a failed start"
    );
    Ok(())
}

#[tokio::test]
async fn max_lifetime_kills_the_agent_and_its_group() -> Result<()> {
    let fx = Fixture::new()?;
    let mut settings = fx.settings(STANDIN)?;
    settings.max_lifetime = Duration::from_secs(1);
    let exec = PopenExecutor::new(settings);
    let id = exec.start_builder(&job("tooold")).await?;
    let (leader, grandchild) = fx.pids("tooold").await?;
    wait_count(&exec, 0, Duration::from_secs(8))
        .await
        .context("MAX_LIFETIME_S stop")?;
    assert!(!alive(leader) && !alive(grandchild));
    assert!(!fx.work_root().join(&id).exists());
    Ok(())
}

#[tokio::test]
async fn debug_keeps_the_log_and_the_agent_output_is_in_it() -> Result<()> {
    let fx = Fixture::new()?;
    let mut settings = fx.settings(&format!("echo to-stderr >&2\n{STANDIN}"))?;
    settings.debug = true;
    let exec = PopenExecutor::new(settings);
    let id = exec.start_builder(&job("dbg")).await?;
    fx.pids("dbg").await?;
    let log = fx.work_root().join(format!("{id}.log"));
    wait_until(
        "the agent's output in its log",
        Duration::from_secs(5),
        || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("stand-in agent started")),
    )
    .await?;
    exec.stop_builder(&id).await?;
    let text = std::fs::read_to_string(&log)?;
    assert!(
        text.contains("to-stderr") && text.contains("stand-in agent started"),
        "{text:?}"
    );
    assert!(std::fs::read_to_string(fx.out().join("dbg.env"))?.contains("DEBUG=true"));
    assert!(!fx.work_root().join(&id).exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_all_and_drop_leave_no_agent_running() -> Result<()> {
    let fx = Fixture::new()?;
    let exec = PopenExecutor::new(fx.settings(STANDIN)?);
    exec.start_builder(&job("all1")).await?;
    exec.start_builder(&job("all2")).await?;
    let groups = [fx.pids("all1").await?, fx.pids("all2").await?];
    assert_eq!(count(&exec).await, 2);
    exec.shutdown_all().await?;
    assert_eq!(count(&exec).await, 0);
    for (leader, grandchild) in groups {
        assert!(!alive(leader) && !alive(grandchild));
    }

    let dropped = PopenExecutor::new(fx.settings(STANDIN)?);
    let id = dropped.start_builder(&job("dropme")).await?;
    let (leader, grandchild) = fx.pids("dropme").await?;
    drop(dropped);
    wait_until("Drop to kill the group", Duration::from_secs(3), || {
        !alive(leader) && !alive(grandchild)
    })
    .await?;
    assert!(!fx.work_root().join(id).exists());
    Ok(())
}

#[tokio::test]
async fn reap_orphans_stops_agents_left_by_a_previous_manager() -> Result<()> {
    let fx = Fixture::new()?;
    let root = fx.work_root();
    std::fs::create_dir_all(root.join("orphan-1"))?;
    // An agent group that a killed buildman left: its own group, recorded in a pid file.
    let mut orphan = std::process::Command::new("/bin/sh")
        .args(["-c", "sleep 300 & echo $! > \"$0\"; wait"])
        .arg(fx.out().join("orphan.gc"))
        .process_group(0)
        .spawn()?;
    let pid = i32::try_from(orphan.id())?;
    let start_time = proc_start_time(pid).context("orphan start time")?;
    std::fs::write(root.join("orphan-1.pid"), format!("{pid} {start_time}\n"))?;
    std::fs::write(root.join("orphan-1.log"), "earlier output")?;
    let gc_path = fx.out().join("orphan.gc");
    wait_until("the orphan's grandchild", Duration::from_secs(5), || {
        gc_path.exists()
    })
    .await?;
    let grandchild: i32 = std::fs::read_to_string(&gc_path)?.trim().parse()?;
    // Recorded for the fixture's cleanup should this test fail.
    std::fs::write(
        fx.out().join("orphan.pids"),
        format!("{pid} {grandchild}\n"),
    )?;
    // A stale record whose process is long gone (wrong start time): only its files go.
    std::fs::create_dir_all(root.join("stale-1"))?;
    std::fs::write(
        root.join("stale-1.pid"),
        format!("{pid} {}\n", start_time + 1),
    )?;

    // A podman service the orphan left, out of its group and named only by its command line.
    let service = fx.escapee(
        "orphan-service",
        r#"( cd / || exit 1; env -i PATH=/usr/bin:/bin setsid sh -c 'sleep 300; :' "$1/storage" & echo $! > "$0" )"#,
        &root.join("orphan-1"),
    )?;
    // A work dir whose pid file was never written, with a process working in it.
    std::fs::create_dir_all(root.join("lost-1"))?;
    let lost = fx.escapee(
        "lost",
        r#"( cd "$1" || exit 1; env -i PATH=/usr/bin:/bin setsid sleep 300 & echo $! > "$0" )"#,
        &root.join("lost-1"),
    )?;

    let exec = PopenExecutor::new(fx.settings(STANDIN)?);
    let started = Instant::now();
    assert_eq!(
        exec.reap_orphans().await?,
        2,
        "orphan-1 and lost-1 had processes"
    );
    eprintln!("reaping two orphaned builds took {:?}", started.elapsed());
    orphan.wait()?;
    assert!(!alive(grandchild), "the orphan's group survived");
    assert!(!alive(service), "the orphan's podman service survived");
    assert!(
        !alive(lost),
        "the process in a work dir without pid file survived"
    );
    for gone in [
        "orphan-1",
        "orphan-1.pid",
        "stale-1",
        "stale-1.pid",
        "lost-1",
    ] {
        assert!(!root.join(gone).exists(), "{gone} left behind");
    }
    assert!(
        root.join("orphan-1.log").exists(),
        "an orphan's log is kept for the operator"
    );
    Ok(())
}

fn proc_start_time(pid: i32) -> Option<u64> {
    let text =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    text[text.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Assert every escapee is alive and outside the agent's process group.
fn assert_escaped(escapees: &[(String, i32)], leader: i32) {
    for (name, pid) in escapees {
        assert!(alive(*pid), "escapee {name} ({pid}) is not running");
        assert_ne!(
            pgrp(*pid),
            Some(leader),
            "escapee {name} is in the agent's group"
        );
    }
}

fn survivors(escapees: &[(String, i32)]) -> Vec<&str> {
    escapees
        .iter()
        .filter(|(_, pid)| alive(*pid))
        .map(|(name, _)| name.as_str())
        .collect()
}

#[tokio::test]
async fn stop_kills_processes_that_escaped_the_agents_group() -> Result<()> {
    let fx = Fixture::new()?;
    let exec = PopenExecutor::new(fx.settings(&escaping_agent())?);
    let id = exec.start_builder(&job("escape")).await?;
    let (escapees, scratch) = fx.escaped(&id).await?;
    let leader = fx.leader(&id)?;
    assert_escaped(&escapees, leader);
    assert!(scratch.is_dir(), "the stand-in made {}", scratch.display());

    let started = Instant::now();
    exec.stop_builder(&id).await?;
    let took = started.elapsed();
    assert!(!alive(leader), "agent survived stop");
    assert_eq!(
        survivors(&escapees),
        Vec::<&str>::new(),
        "escapees survived stop"
    );
    assert!(!fx.work_root().join(&id).exists(), "work dir left behind");
    assert!(
        !scratch.exists(),
        "the podman run root in /tmp was left behind"
    );
    assert!(took < Duration::from_secs(6), "stop took {took:?}");
    eprintln!("stop with 6 escaped processes took {took:?}");
    Ok(())
}

#[tokio::test]
async fn a_sigkilled_agents_escapees_die_and_the_next_attempt_is_spared() -> Result<()> {
    let fx = Fixture::new()?;
    let exec = PopenExecutor::new(fx.settings(&escaping_agent())?);
    // Two attempts of one build: same BUILD_UUID, work dirs again-1 and again-2.
    let first = exec.start_builder(&job("again")).await?;
    let second = exec.start_builder(&job("again")).await?;
    assert_eq!((first.as_str(), second.as_str()), ("again-1", "again-2"));
    let (gone, gone_scratch) = fx.escaped(&first).await?;
    let (kept, kept_scratch) = fx.escaped(&second).await?;
    let (first_leader, second_leader) = (fx.leader(&first)?, fx.leader(&second)?);
    assert_escaped(&gone, first_leader);

    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first_leader),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    wait_count(&exec, 1, Duration::from_secs(10))
        .await
        .context("the first attempt reaped")?;
    let took = killed_at.elapsed();
    eprintln!("cleanup after an agent's SIGKILL took {took:?}");
    assert!(took < Duration::from_secs(5), "cleanup took {took:?}");
    assert_eq!(
        survivors(&gone),
        Vec::<&str>::new(),
        "escapees of the killed agent"
    );
    assert!(!fx.work_root().join(&first).exists() && !gone_scratch.exists());

    assert!(
        alive(second_leader),
        "the second attempt's agent was killed"
    );
    assert_eq!(
        survivors(&kept).len(),
        kept.len(),
        "the second attempt lost processes"
    );
    assert!(fx.work_root().join(&second).is_dir() && kept_scratch.is_dir());
    exec.stop_builder(&second).await?;
    assert_eq!(survivors(&kept), Vec::<&str>::new());
    assert!(!kept_scratch.exists());
    Ok(())
}

#[tokio::test]
#[ignore = "heavy: needs root for chroot, a mount namespace and pivot_root"]
async fn stop_kills_chrooted_and_pivoted_run_steps() -> Result<()> {
    // A chroot into the work dir (buildah's chroot isolation) and a pivot_root in a new mount
    // namespace (runc), whose root link reads "/" from outside.
    let body = r#"
W="$QUARRY_WORK_DIR"
E="$OUT/$(basename "$W")"
R="$W/rootfs"
P=PATH=/usr/sbin:/usr/bin:/sbin:/bin
st() { cut -d' ' -f22 "/proc/$1/stat"; }
mkdir -p "$R/bin" "$R/old" && cp /bin/busybox "$R/bin/"
( cd / || exit 1; env -i $P setsid chroot "$R" /bin/busybox sleep 304 & echo $! > "$E.chroot" )
( cd / || exit 1; env -i $P setsid unshare -m sh -c 'mount --bind "$0" "$0" && cd "$0" && pivot_root . old && exec /bin/busybox sleep 305' "$R" & echo $! > "$E.pivot" )
for n in chroot pivot; do
  p=$(cat "$E.$n"); i=0
  until tr '\0' ' ' < "/proc/$p/cmdline" | grep -q '^/bin/busybox' || [ $i -gt 250 ]; do sleep 0.02; i=$((i+1)); done
done
for n in chroot pivot; do p=$(cat "$E.$n"); echo "$n $p $(st "$p")"; done > "$E.escaped.tmp"
echo none > "$E.scratch"
mv "$E.escaped.tmp" "$E.escaped"
sleep 300 &
wait
"#;
    for tool in ["/bin/busybox", "/usr/sbin/chroot", "/usr/bin/unshare"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: apt-get install busybox-static util-linux coreutils"
        );
    }
    let fx = Fixture::new()?;
    let exec = PopenExecutor::new(fx.settings(body)?);
    let id = exec.start_builder(&job("isolated")).await?;
    let (escapees, _) = fx.escaped(&id).await?;
    let leader = fx.leader(&id)?;
    assert_escaped(&escapees, leader);
    for (name, pid) in &escapees {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
        assert!(
            cmdline.starts_with(b"/bin/busybox"),
            "{name} never started: {cmdline:?}"
        );
    }
    let pivot = escapees[1].1;
    assert_eq!(
        std::fs::read_link(format!("/proc/{pivot}/root"))?,
        Path::new("/")
    );
    let started = Instant::now();
    exec.stop_builder(&id).await?;
    eprintln!(
        "stop with a chrooted and a pivoted process took {:?}",
        started.elapsed()
    );
    assert_eq!(survivors(&escapees), Vec::<&str>::new());
    assert!(!fx.work_root().join(&id).exists());
    Ok(())
}
