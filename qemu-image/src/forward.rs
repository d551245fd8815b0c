//! How the guest reaches the host services it needs (buildman's gRPC, the registry, proxies)
//! through slirp user-mode networking, and nothing else of the host.
//!
//! Each distinct host gets one guest address `10.0.2.100`, `.101`, ... ([`FIRST_GUEST_HOST`]).
//! QEMU relays `guest address:port` to the host service ([`spec::GuestFwd`]). In the guest, the
//! agent dials the same `host:port` strings as on the host:
//! - an IPv4 literal or `localhost` (as `127.0.0.1`): `quarry-init` listens there and relays to the
//!   guest address ([`GuestForward`]);
//! - any other name: an `/etc/hosts` line maps it to its guest address, so it is dialled directly.
//!
//! One address per host, not per service, so that a name with two ports still has one
//! `/etc/hosts` line. [`plan`] is pure.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::guest::GuestForward;
use crate::spec::{self, NetworkMode};

/// The last octet of the first guest-side service address (`10.0.2.100`).
pub const FIRST_GUEST_HOST: u8 = 100;
/// At most this many distinct hosts (`10.0.2.100` to `10.0.2.199`).
pub const MAX_HOSTS: usize = 100;

/// Why a set of services cannot be forwarded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForwardError {
    /// No `:port`, or a port that is not 1-65535.
    #[error("service {service:?} has no valid port: write it as host:port")]
    Port {
        /// The service as given.
        service: String,
    },
    /// An IPv6 address: the guest network is IPv4 only.
    #[error(
        "service {service:?} is IPv6, which the VM network does not support: use an IPv4 address or a name"
    )]
    Ipv6 {
        /// The service as given.
        service: String,
    },
    /// A host that is neither an IPv4 address nor a valid host name.
    #[error("service {service:?} has an invalid host name: use letters, digits, '.', '-' and '_'")]
    Host {
        /// The service as given.
        service: String,
    },
    /// More than [`MAX_HOSTS`] distinct hosts.
    #[error("{count} distinct service hosts, at most {MAX_HOSTS} can be forwarded into a VM")]
    TooMany {
        /// How many were given.
        count: usize,
    },
}

/// What [`plan`] computes: the three views of the same forwards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardPlan {
    /// QEMU `guestfwd`s: guest address to host service.
    pub qemu: Vec<spec::GuestFwd>,
    /// Listeners `quarry-init` opens in the guest.
    pub guest: Vec<GuestForward>,
    /// `/etc/hosts` lines `(address, name)`.
    pub hosts: Vec<(String, String)>,
}

/// The plan for host-side `host:port` `services` (duplicates ignored). `mode` does not change
/// the relays: even with the unrestricted network the agent dials the host's loopback names,
/// which only the relays reach.
pub fn plan(services: &[String], mode: NetworkMode) -> Result<ForwardPlan, ForwardError> {
    let _ = mode;
    let parsed = services
        .iter()
        .map(|service| parse(service).map(|(host, port)| (service, host, port)))
        .collect::<Result<Vec<_>, _>>()?;
    // Host (as the guest sees it) -> guest address, in order of first appearance.
    let mut addresses: HashMap<&GuestHost, Ipv4Addr> = HashMap::new();
    for (_, host, _) in &parsed {
        let next = addresses.len();
        addresses.entry(host).or_insert_with(|| {
            // Past MAX_HOSTS the offset is only counted: the error below returns before use.
            let offset = u8::try_from(next)
                .unwrap_or(u8::MAX)
                .min(u8::MAX - FIRST_GUEST_HOST);
            Ipv4Addr::new(10, 0, 2, FIRST_GUEST_HOST + offset)
        });
    }
    if addresses.len() > MAX_HOSTS {
        return Err(ForwardError::TooMany {
            count: addresses.len(),
        });
    }
    let mut out = ForwardPlan::default();
    for (service, host, port) in &parsed {
        let address = addresses[host];
        let guest = SocketAddrV4::new(address, *port);
        if out.qemu.iter().any(|f| f.guest == SocketAddr::V4(guest)) {
            continue; // the same service again (`localhost:80` after `127.0.0.1:80`)
        }
        out.qemu.push(spec::GuestFwd {
            guest: SocketAddr::V4(guest),
            host: (*service).clone(),
        });
        match host {
            GuestHost::Ip(ip) => out.guest.push(GuestForward {
                listen: SocketAddrV4::new(*ip, *port).to_string(),
                target: guest.to_string(),
            }),
            GuestHost::Name(name) => {
                if !out.hosts.iter().any(|(_, n)| n == name) {
                    out.hosts.push((address.to_string(), name.clone()));
                }
            }
        }
    }
    Ok(out)
}

/// A service host as the guest dials it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum GuestHost {
    /// An IPv4 literal (`localhost` becomes `127.0.0.1`).
    Ip(Ipv4Addr),
    /// A name, lowercased.
    Name(String),
}

/// Splits `host:port`.
fn parse(service: &str) -> Result<(GuestHost, u16), ForwardError> {
    if service.starts_with('[') || service.matches(':').count() > 1 {
        return Err(ForwardError::Ipv6 {
            service: service.to_owned(),
        });
    }
    let port_err = || ForwardError::Port {
        service: service.to_owned(),
    };
    let (host, port) = service.rsplit_once(':').ok_or_else(port_err)?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(port_err)?;
    let host = host.to_ascii_lowercase();
    if host == "localhost" {
        return Ok((GuestHost::Ip(Ipv4Addr::LOCALHOST), port));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok((GuestHost::Ip(ip), port));
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['-', '.'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
    // A dotted all-digit host that is not an IPv4 address (`1.2.3`) would confuse resolvers.
    if !valid || host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(ForwardError::Host {
            service: service.to_owned(),
        });
    }
    Ok((GuestHost::Name(host), port))
}

/// The `host:port` of a proxy URL such as `http://user:pw@proxy:3128/`, without the credentials.
/// The port defaults by scheme (`http` 80, `https` 443, `socks*` 1080; no scheme means `http`).
/// `None` for an empty or unparsable URL or an unknown scheme.
///
/// Hand-written rather than with the `url` crate: only the authority is needed, and proxy
/// variables are often written without a scheme, which `url` rejects.
pub fn proxy_service(url: &str) -> Option<String> {
    let url = url.trim();
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("http".to_owned(), url),
    };
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        "socks" | "socks4" | "socks4a" | "socks5" | "socks5h" => 1080,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if host_port.is_empty() {
        return None;
    }
    // `[v6]:port` or `[v6]`: returned as is; plan() rejects it with a clear error.
    if let Some(end) = host_port.strip_prefix('[').and_then(|r| r.find(']')) {
        let after = &host_port[end + 2..];
        return match after.strip_prefix(':') {
            Some(port) if port.parse::<u16>().is_ok() => Some(host_port.to_owned()),
            None if after.is_empty() => Some(format!("{host_port}:{default_port}")),
            _ => None,
        };
    }
    match host_port.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Some(host_port.to_owned())
        }
        Some(_) => None,
        None => Some(format!("{host_port}:{default_port}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    fn fwd(guest: &str, host: &str) -> spec::GuestFwd {
        spec::GuestFwd {
            guest: guest.parse().unwrap(),
            host: host.to_owned(),
        }
    }

    fn gf(listen: &str, target: &str) -> GuestForward {
        GuestForward {
            listen: listen.to_owned(),
            target: target.to_owned(),
        }
    }

    #[test]
    fn loopback_ip_and_names_get_one_address_per_host() {
        let services = s(&[
            "localhost:50051",
            "127.0.0.1:8080",
            "Quay.Example.com:443",
            "quay.example.com:80",
            "192.168.1.5:3128",
            "127.0.0.1:50051", // the same as localhost:50051
            "localhost:50051",
        ]);
        let p = plan(&services, NetworkMode::Restricted).unwrap();
        assert_eq!(
            p.qemu,
            [
                fwd("10.0.2.100:50051", "localhost:50051"),
                fwd("10.0.2.100:8080", "127.0.0.1:8080"),
                fwd("10.0.2.101:443", "Quay.Example.com:443"),
                fwd("10.0.2.101:80", "quay.example.com:80"),
                fwd("10.0.2.102:3128", "192.168.1.5:3128"),
            ]
        );
        assert_eq!(
            p.guest,
            [
                gf("127.0.0.1:50051", "10.0.2.100:50051"),
                gf("127.0.0.1:8080", "10.0.2.100:8080"),
                gf("192.168.1.5:3128", "10.0.2.102:3128"),
            ]
        );
        assert_eq!(
            p.hosts,
            [("10.0.2.101".to_owned(), "quay.example.com".to_owned())]
        );
        assert_eq!(plan(&services, NetworkMode::User).unwrap(), p);
    }

    #[test]
    fn empty_services_give_an_empty_plan() {
        assert_eq!(
            plan(&[], NetworkMode::Restricted).unwrap(),
            ForwardPlan::default()
        );
    }

    #[test]
    fn bad_services_are_refused() {
        let err = |v: &str| plan(&s(&[v]), NetworkMode::Restricted).unwrap_err();
        assert!(matches!(err("localhost"), ForwardError::Port { .. }));
        assert!(matches!(err("localhost:0"), ForwardError::Port { .. }));
        assert!(matches!(err("localhost:65536"), ForwardError::Port { .. }));
        assert!(matches!(err("localhost:http"), ForwardError::Port { .. }));
        assert!(matches!(err("[::1]:80"), ForwardError::Ipv6 { .. }));
        assert!(matches!(err("::1:80"), ForwardError::Ipv6 { .. }));
        assert!(matches!(err("a b:80"), ForwardError::Host { .. }));
        assert!(matches!(err(":80"), ForwardError::Host { .. }));
        assert!(matches!(err("1.2.3:80"), ForwardError::Host { .. }));
        assert!(err("[::1]:80").to_string().contains("IPv6"));
    }

    #[test]
    fn at_most_100_hosts() {
        let hundred: Vec<String> = (0..100).map(|i| format!("h{i}:80")).collect();
        let p = plan(&hundred, NetworkMode::Restricted).unwrap();
        assert_eq!(
            p.hosts.last().unwrap(),
            &("10.0.2.199".to_owned(), "h99".to_owned())
        );
        let mut more = hundred.clone();
        more.push("h100:80".to_owned());
        more.push("h101:80".to_owned());
        assert_eq!(
            plan(&more, NetworkMode::Restricted).unwrap_err(),
            ForwardError::TooMany { count: 102 }
        );
        // Many ports on one host are fine.
        let ports: Vec<String> = (1..300).map(|p| format!("localhost:{p}")).collect();
        assert_eq!(
            plan(&ports, NetworkMode::Restricted).unwrap().guest.len(),
            299
        );
    }

    #[test]
    fn proxy_urls_become_host_port_without_credentials() {
        assert_eq!(
            proxy_service("http://user:pw@proxy:3128").as_deref(),
            Some("proxy:3128")
        );
        assert_eq!(proxy_service("http://proxy").as_deref(), Some("proxy:80"));
        assert_eq!(
            proxy_service("HTTPS://proxy/").as_deref(),
            Some("proxy:443")
        );
        assert_eq!(
            proxy_service("socks5h://u@p.example:1081").as_deref(),
            Some("p.example:1081")
        );
        assert_eq!(proxy_service("socks5://p").as_deref(), Some("p:1080"));
        assert_eq!(
            proxy_service("proxy.corp:8080").as_deref(),
            Some("proxy.corp:8080")
        );
        assert_eq!(proxy_service(" 10.1.1.1 ").as_deref(), Some("10.1.1.1:80"));
        assert_eq!(
            proxy_service("http://a:b@[::1]:3128/x").as_deref(),
            Some("[::1]:3128")
        );
        assert_eq!(proxy_service("http://[::1]").as_deref(), Some("[::1]:80"));
        for bad in [
            "",
            "ftp://proxy",
            "http://",
            "http://user:pw@",
            "http://p:port",
            "http://:80",
        ] {
            assert_eq!(proxy_service(bad), None, "{bad}");
        }
        let with_pw = proxy_service("http://user:secret@proxy:3128").unwrap();
        let p = plan(&[with_pw], NetworkMode::Restricted).unwrap();
        assert!(!format!("{p:?}").contains("secret"));
    }
}
