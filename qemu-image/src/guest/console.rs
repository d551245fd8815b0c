//! The guest console: every line `quarry-init` prints, and where children's output goes.
//!
//! Stage 1 hands PID 1 its standard streams on `/dev/console` (the serial port the host logs).
//! [`attach`] re-points stdout and stderr at `/dev/console` anyway, in case stage 1 ran without
//! one; after that, plain writes to stdout reach the host's console log.

use std::io::Write;

/// Prefix of every line quarry-init prints.
pub const PREFIX: &str = "quarry-init:";

/// Re-open `/dev/console` as stdout and stderr (and `/dev/null` as stdin). Failures are not
/// fatal: the streams stage 1 gave us stay in place.
pub fn attach() {
    use std::os::unix::fs::OpenOptionsExt;
    let console = std::fs::OpenOptions::new()
        .write(true)
        // Not our controlling terminal: a hang-up on the console must not signal PID 1.
        .custom_flags(nix::libc::O_NOCTTY)
        .open("/dev/console");
    if let Ok(console) = console {
        let _ = nix::unistd::dup2_stdout(&console);
        let _ = nix::unistd::dup2_stderr(&console);
    }
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
    }
}

/// Print one `quarry-init: <msg>` line. Never fails: a console that went away must not take
/// PID 1 with it (`println!` would panic).
pub fn say(msg: &str) {
    line(&format!("{PREFIX} {msg}"));
}

/// Print one `quarry-init: error: <msg>` line.
pub fn error(msg: &str) {
    say(&format!("error: {msg}"));
}

/// Print a raw line (a child's output, already prefixed).
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// `err` and its sources joined with `: ` (each level's message once; see STYLE 2.5).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Seconds since the guest kernel started, from `/proc/uptime` (for step timings).
pub fn uptime() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer failed")]
    struct Outer {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn chain_prints_each_level_once() {
        let err = Outer {
            source: std::io::Error::other("inner reason"),
        };
        assert_eq!(chain(&err), "outer failed: inner reason");
    }
}
