//! Ending the VM: stop every process, sync, power off; and the lifetime watchdog.
//!
//! PID 1 must never exit (the kernel would panic), so [`power_off`] never returns: if the
//! power-off call fails it tries a reboot (QEMU runs with `-no-reboot`, so that ends it too),
//! then sleeps forever.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::console;

/// How long processes get between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

// Process-wide by nature: whichever of the reaper and the watchdog starts the shutdown first
// runs it; the other must not start a second one.
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// Whether [`power_off`] has started (children dying now are expected, not news).
pub fn shutting_down() -> bool {
    SHUTTING_DOWN.load(Ordering::SeqCst)
}

/// Stop every process, sync and power off. Never returns.
pub fn power_off(reason: &str) -> ! {
    if SHUTTING_DOWN.swap(true, Ordering::SeqCst) {
        // The other thread is powering off already.
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
    console::say(&format!("powering off: {reason}"));
    // pid -1: every process except PID 1 itself.
    let all = Pid::from_raw(-1);
    let _ = kill(all, Signal::SIGTERM);
    if !reap_all_until(Instant::now() + TERM_GRACE) {
        console::say("processes still running after SIGTERM: sending SIGKILL");
        let _ = kill(all, Signal::SIGKILL);
        reap_all_until(Instant::now() + Duration::from_secs(1));
    }
    nix::unistd::sync();
    let err = reboot(RebootMode::RB_POWER_OFF).err();
    console::error(&format!(
        "power off failed ({err:?}): rebooting, which ends a -no-reboot VM"
    ));
    let _ = reboot(RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Reap children without blocking until none is left (true) or `deadline` passes (false).
fn reap_all_until(deadline: Instant) -> bool {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::ECHILD) => return true,
            Ok(WaitStatus::StillAlive) | Err(_) => {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(_) => {} // reaped one; look for more at once
        }
    }
}

/// Power off after `seconds`, whatever else happens.
pub fn start_watchdog(seconds: u64) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("watchdog".to_owned())
        .spawn(move || {
            std::thread::sleep(Duration::from_secs(seconds));
            power_off(&format!("max lifetime of {seconds} s reached"));
        })
        .map(|_| ())
}

/// A wait status as one number: the exit code, or 128 + the signal (as shells report it).
pub fn status_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_follow_shell_convention() {
        let pid = Pid::from_raw(42);
        assert_eq!(status_code(WaitStatus::Exited(pid, 3)), Some(3));
        assert_eq!(
            status_code(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(status_code(WaitStatus::Stopped(pid, Signal::SIGSTOP)), None);
    }
}
