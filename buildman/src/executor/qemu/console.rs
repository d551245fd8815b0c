//! The guest's serial console, as QEMU writes it to its stdout (a pipe to buildman). Only the last
//! [`CONSOLE_RING_BYTES`] are kept, in memory: a chatty or hostile guest can neither fill the
//! host's disk nor grow buildman's memory, and nothing of the console outlives the VM.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// How much of the console's end is kept.
pub(super) const CONSOLE_RING_BYTES: usize = 64 * 1024;

/// The end of one VM's console and how much it wrote in all.
#[derive(Debug, Default)]
pub(super) struct Console {
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    bytes: VecDeque<u8>,
    seen: u64,
}

impl Console {
    fn lock(&self) -> MutexGuard<'_, Ring> {
        // Each critical section appends or copies bytes: a panic leaves a usable ring.
        self.ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Append `chunk`, dropping the oldest bytes beyond [`CONSOLE_RING_BYTES`].
    pub(super) fn push(&self, chunk: &[u8]) {
        let mut ring = self.lock();
        ring.seen = ring
            .seen
            .saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
        let keep = &chunk[chunk.len().saturating_sub(CONSOLE_RING_BYTES)..];
        let overflow = (ring.bytes.len() + keep.len()).saturating_sub(CONSOLE_RING_BYTES);
        ring.bytes.drain(..overflow);
        ring.bytes.extend(keep);
    }

    /// Bytes the guest wrote since boot, kept or not.
    pub(super) fn seen(&self) -> u64 {
        self.lock().seen
    }

    /// The kept end, as text (invalid UTF-8, such as a character cut by the ring, replaced).
    pub(super) fn text(&self) -> String {
        let ring = self.lock();
        let (a, b) = ring.bytes.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Read `out` (QEMU's stdout) to its end into `console`, calling `on_first` once, when the first
/// byte arrives: by then QEMU has set the machine up (read its `-fw_cfg` files) and the guest
/// runs.
pub(super) async fn pump(
    mut out: impl AsyncRead + Unpin,
    console: &Console,
    on_first: impl FnOnce(),
) -> std::io::Result<()> {
    let mut on_first = Some(on_first);
    let mut buf = vec![0u8; 8192];
    loop {
        let n = out.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if let Some(f) = on_first.take() {
            f();
        }
        console.push(&buf[..n]);
    }
}

/// The last `n` non-empty lines of `text`, carriage returns dropped.
pub(super) fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_64_kib_and_counts_everything() {
        let c = Console::default();
        c.push(b"first line\n");
        assert_eq!(c.text(), "first line\n");
        let big = vec![b'x'; CONSOLE_RING_BYTES - 3];
        c.push(&big);
        c.push(b"end\n");
        let text = c.text();
        assert_eq!(text.len(), CONSOLE_RING_BYTES);
        assert!(
            text.ends_with("xxxend\n") && !text.contains("first"),
            "oldest dropped"
        );
        assert_eq!(c.seen(), 11 + 65533 + 4);
        // One chunk larger than the ring keeps its own end.
        let mut huge = vec![b'a'; CONSOLE_RING_BYTES * 2];
        huge.extend_from_slice(b"tail");
        c.push(&huge);
        assert_eq!(c.text().len(), CONSOLE_RING_BYTES);
        assert!(c.text().ends_with("aatail"));
    }

    #[tokio::test]
    async fn pump_reads_to_the_end_and_signals_the_first_byte_once() {
        let c = Console::default();
        let mut calls = 0;
        let input: &[u8] = b"boot\r\nquarry-init: agent started\n\n";
        pump(input, &c, || calls += 1).await.unwrap();
        assert_eq!(calls, 1);
        assert_eq!(tail_lines(&c.text(), 1), "quarry-init: agent started");
        assert_eq!(tail_lines(&c.text(), 5), "boot\nquarry-init: agent started");
        let mut calls = 0;
        pump(&b""[..], &c, || calls += 1).await.unwrap();
        assert_eq!(calls, 0, "no output: never called");
    }
}
