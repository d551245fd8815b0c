//! TCP relays from what the agent dials (`127.0.0.1:50051`) to the slirp `guestfwd` address
//! that QEMU carries to the host service (`10.0.2.100:50051`).
//!
//! Plain threads: one accept loop per forward and two per connection (one per direction). A
//! direction that reaches end of file half-closes its destination so request/response protocols
//! that signal "done" with a shutdown keep working; a direction that fails tears the pair down.
//! Errors are logged, never fatal: a broken connection must not take PID 1 down.

use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// How long connecting to the guestfwd target may take (slirp answers at once; the host service
/// behind it is dialled per connection by the relay command).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Binding the listen address failed.
    #[error("cannot listen on {listen} for the forward to {target}: is the address on lo?")]
    Listen {
        /// The listen address.
        listen: SocketAddr,
        /// The target.
        target: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The accept thread could not be started.
    #[error("cannot start the relay thread for {listen}")]
    Thread {
        /// The listen address.
        listen: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Where relays report broken connections (the console in the guest).
pub type Log = fn(&str);

/// Listen on `listen` and relay every connection to `target` from a background thread.
/// Returns the bound address (the real port when `listen` has port 0).
pub fn start(listen: SocketAddr, target: SocketAddr, log: Log) -> Result<SocketAddr, RelayError> {
    let listener = TcpListener::bind(listen).map_err(|source| RelayError::Listen {
        listen,
        target,
        source,
    })?;
    let bound = listener.local_addr().unwrap_or(listen);
    std::thread::Builder::new()
        .name(format!("relay {bound}"))
        .spawn(move || accept_loop(&listener, target, log))
        .map_err(|source| RelayError::Thread { listen, source })?;
    Ok(bound)
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, log: Log) {
    loop {
        match listener.accept() {
            Ok((client, _)) => {
                let spawned = std::thread::Builder::new()
                    .name(format!("conn {target}"))
                    .spawn(move || relay_connection(client, target, log));
                if let Err(e) = spawned {
                    log(&format!(
                        "relay to {target}: cannot start a connection thread: {e}"
                    ));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                log(&format!("relay to {target}: accept failed: {e}"));
                // Out of descriptors or memory: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn relay_connection(client: TcpStream, target: SocketAddr, log: Log) {
    let upstream = match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            log(&format!("relay to {target}: connect failed: {e}"));
            return; // dropping `client` closes it: the agent sees the service as down
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (c2, u2) = match (client.try_clone(), upstream.try_clone()) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => {
            log(&format!("relay to {target}: cannot clone a socket: {e}"));
            return;
        }
    };
    let outbound = std::thread::Builder::new()
        .name(format!("up {target}"))
        .spawn(move || pump(c2, u2));
    let inbound = pump(upstream, client);
    let outbound = match outbound {
        Ok(handle) => handle.join().unwrap_or(Ok(())),
        Err(e) => Err(e),
    };
    for (dir, result) in [("to", outbound), ("from", inbound)] {
        if let Err(e) = result {
            log(&format!("relay {dir} {target}: {e}"));
        }
    }
}

/// Copy `from` into `to` until end of file, then half-close `to`. On an error, close both
/// sockets completely so that the other direction's blocked read ends too.
fn pump(mut from: TcpStream, mut to: TcpStream) -> std::io::Result<()> {
    match std::io::copy(&mut from, &mut to) {
        Ok(_) => {
            // NotConnected: the peer is already gone; nothing left to tell it.
            let _ = to.shutdown(Shutdown::Write);
            Ok(())
        }
        Err(e) => {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            // A reset from either peer is how connections end in practice; not worth a log line.
            match e.kind() {
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => Ok(()),
                _ => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Mutex;

    use super::*;

    static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn record(line: &str) {
        LOGGED.lock().unwrap().push(line.to_owned());
    }

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// A server that prefixes its answer with a greeting, then echoes until the client's end of
    /// file, then says "bye" and closes: it only finishes if half-close crosses the relay.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(loopback()).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                std::thread::spawn(move || {
                    conn.write_all(b"hello:").unwrap();
                    let mut buf = Vec::new();
                    conn.read_to_end(&mut buf).unwrap();
                    conn.write_all(&buf).unwrap();
                    conn.write_all(b":bye").unwrap();
                });
            }
        });
        addr
    }

    fn exchange(relay: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(relay).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(payload).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn bytes_flow_both_ways_with_half_close() {
        let relay = start(loopback(), echo_server(), record).unwrap();
        let payload: Vec<u8> = (0..200_000u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let out = exchange(relay, &payload);
        assert_eq!(&out[..6], b"hello:");
        assert_eq!(&out[6..out.len() - 4], &payload[..]);
        assert_eq!(&out[out.len() - 4..], b":bye");
    }

    #[test]
    fn many_connections_at_once() {
        let relay = start(loopback(), echo_server(), record).unwrap();
        let clients: Vec<_> = (0..40)
            .map(|i| {
                std::thread::spawn(move || {
                    let msg = format!("client {i}");
                    let out = exchange(relay, msg.as_bytes());
                    assert_eq!(out, format!("hello:{msg}:bye").into_bytes());
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
    }

    #[test]
    fn dead_target_closes_the_client_and_logs() {
        // Bind then drop: a port nothing listens on.
        let dead = TcpListener::bind(loopback()).unwrap().local_addr().unwrap();
        let relay = start(loopback(), dead, record).unwrap();
        // The relay closes the client without reading it: end of file, or a reset when our
        // unread bytes were still queued on its side.
        let mut s = TcpStream::connect(relay).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"anyone?").unwrap();
        let mut out = Vec::new();
        match s.read_to_end(&mut out) {
            Ok(_) => assert!(out.is_empty()),
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
        }
        let wanted = format!("relay to {dead}: connect failed");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !LOGGED
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with(&wanted))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no log line {wanted:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn listen_failure_names_the_address() {
        let taken = TcpListener::bind(loopback()).unwrap();
        let addr = taken.local_addr().unwrap();
        let err = start(addr, addr, record).unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()));
    }
}
