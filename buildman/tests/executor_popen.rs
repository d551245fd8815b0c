//! The popen executor against stand-in agents: `#!/bin/sh` scripts written by each test that
//! record their environment and pids under the test's temp dir and start a grandchild
//! `sleep 300`, so a kill that misses the process group would be seen.
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

    let exec = PopenExecutor::new(fx.settings(STANDIN)?);
    assert_eq!(exec.reap_orphans().await?, 1);
    orphan.wait()?;
    assert!(!alive(grandchild), "the orphan's group survived");
    for gone in ["orphan-1", "orphan-1.pid", "stale-1", "stale-1.pid"] {
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
