//! Where webhook and Slack notifications may be sent: http(s) URLs whose host is not in
//! `WEBHOOK_HOSTNAME_BLACKLIST` and not local unless `NOTIFICATION_ALLOW_LOCAL_WEBHOOKS`.
//! "Local" is `localhost` (any case, with or without the root dot) and every loopback,
//! unspecified or link-local address (169.254.0.0/16, fe80::/10: cloud metadata services live
//! there), in any spelling the URL parser accepts (`127.1`, `0x7f.1`) and in IPv4-mapped IPv6
//! form (`::ffff:127.0.0.1`). Blacklist entries that are IP addresses also refuse names resolving
//! to them. Private ranges (10/8, 172.16/12, 192.168/16, fc00::/7) stay allowed on purpose:
//! webhook receivers inside the company network are the common case; block specific ones with
//! the blacklist.
//!
//! Checked when a notification is created and again at each delivery, where the resolver also
//! refuses names that resolve to refused addresses (a public name pointing at 127.0.0.1 would
//! otherwise reach the server's own ports). The delivery client never uses a proxy, so this
//! resolver always runs (see [`super::methods::http::client`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Host;

use crate::config::NotificationConfig;

/// Why a target URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not a URL.
    #[error("{field} {url:?} is not a valid URL")]
    Invalid {
        /// `url`.
        field: &'static str,
        /// The value.
        url: String,
        /// The cause.
        #[source]
        source: url::ParseError,
    },
    /// Not http or https.
    #[error("{field} {url:?} is invalid: only http:// and https:// URLs are allowed")]
    Scheme {
        /// `url`.
        field: &'static str,
        /// The value.
        url: String,
    },
    /// No host.
    #[error("{field} {url:?} is invalid: it has no host")]
    NoHost {
        /// `url`.
        field: &'static str,
        /// The value.
        url: String,
    },
    /// The host is in `WEBHOOK_HOSTNAME_BLACKLIST`.
    #[error("{field} host {host:?} is not allowed (WEBHOOK_HOSTNAME_BLACKLIST)")]
    Blacklisted {
        /// `url`.
        field: &'static str,
        /// The host.
        host: String,
    },
    /// The host is this machine.
    #[error(
        "{field} host {host:?} is local; local targets are refused unless the server sets \
         NOTIFICATION_ALLOW_LOCAL_WEBHOOKS: true"
    )]
    Local {
        /// `url`.
        field: &'static str,
        /// The host.
        host: String,
    },
}

/// `ip` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) turned into its IPv4 address.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is local in any spelling: loopback, unspecified or link-local, also
/// IPv4-mapped.
pub fn is_local_ip(ip: IpAddr) -> bool {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified() || v6.is_unicast_link_local(),
    }
}

/// The blacklist entries that are IP addresses (canonical form).
fn blacklisted_ips(config: &NotificationConfig) -> Vec<IpAddr> {
    config
        .webhook_hostname_blacklist
        .iter()
        .filter_map(|b| {
            b.trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok()
        })
        .map(canonical_ip)
        .collect()
}

/// Check `url` (the config key `field`) against the rules of `config`.
pub fn check_url(
    field: &'static str,
    url: &str,
    config: &NotificationConfig,
) -> Result<Url, TargetError> {
    let parsed = Url::parse(url.trim()).map_err(|source| TargetError::Invalid {
        field,
        url: url.to_owned(),
        source,
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(TargetError::Scheme {
            field,
            url: url.to_owned(),
        });
    }
    let (host_text, local, ip) = match parsed.host() {
        None => {
            return Err(TargetError::NoHost {
                field,
                url: url.to_owned(),
            });
        }
        Some(Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            let local = d == "localhost" || d.ends_with(".localhost");
            (d, local, None)
        }
        Some(Host::Ipv4(ip)) => (ip.to_string(), is_local_ip(IpAddr::V4(ip)), Some(ip.into())),
        Some(Host::Ipv6(ip)) => (ip.to_string(), is_local_ip(IpAddr::V6(ip)), Some(ip.into())),
    };
    let ip_blacklisted = ip.is_some_and(|ip| blacklisted_ips(config).contains(&canonical_ip(ip)));
    let blacklisted = ip_blacklisted
        || config.webhook_hostname_blacklist.iter().any(|b| {
            b.trim()
                .trim_end_matches('.')
                .trim_start_matches('[')
                .trim_end_matches(']')
                .eq_ignore_ascii_case(&host_text)
        });
    if blacklisted {
        return Err(TargetError::Blacklisted {
            field,
            host: host_text,
        });
    }
    if local && !config.allow_local_webhooks {
        return Err(TargetError::Local {
            field,
            host: host_text,
        });
    }
    Ok(parsed)
}

/// A resolver that drops refused addresses from the answers (local ones unless allowed, and the
/// blacklist's IP entries), so that a name cannot smuggle a delivery to this machine; a name with
/// only refused addresses fails to resolve.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    allow_local: bool,
    blocked: Vec<IpAddr>,
}

impl GuardedResolver {
    /// A resolver for `config`.
    pub fn new(config: &NotificationConfig) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            allow_local: config.allow_local_webhooks,
            blocked: blacklisted_ips(config),
        })
    }

    /// Whether a resolved address may be connected to.
    pub fn allows(&self, ip: IpAddr) -> bool {
        (self.allow_local || !is_local_ip(ip)) && !self.blocked.contains(&canonical_ip(ip))
    }
}

/// A name that resolved to refused addresses only.
#[derive(Debug, thiserror::Error)]
#[error(
    "{name} resolves only to local or blacklisted addresses, which notifications may not target"
)]
struct LocalName {
    name: String,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| guard.allows(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(Box::new(LocalName { name: host }) as _);
            }
            let addrs: Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(allow_local: bool) -> NotificationConfig {
        NotificationConfig {
            webhook_hostname_blacklist: vec!["Internal.Example.com".into()],
            allow_local_webhooks: allow_local,
            ..NotificationConfig::default()
        }
    }

    #[test]
    fn schemes_hosts_blacklist_and_local_targets() {
        let c = config(false);
        assert!(check_url("url", "https://hooks.example.com/x", &c).is_ok());
        assert!(check_url("url", "http://192.0.2.1:8080/x", &c).is_ok());
        for (url, want) in [
            ("ftp://example.com/", "only http:// and https://"),
            ("not a url", "not a valid URL"),
            (
                "https://internal.example.com/hook",
                "WEBHOOK_HOSTNAME_BLACKLIST",
            ),
            (
                "http://localhost:8080/",
                "NOTIFICATION_ALLOW_LOCAL_WEBHOOKS",
            ),
            ("http://api.localhost/", "is local"),
            ("http://127.0.0.1/", "is local"),
            ("http://127.8.9.10/", "is local"),
            ("http://0.0.0.0/", "is local"),
            ("http://[::1]:9/", "is local"),
            ("http://[::ffff:127.0.0.1]/", "is local"),
            ("http://LOCALHOST/", "is local"),
            ("http://localhost./", "is local"),
            ("http://127.1/", "is local"),
            ("http://0x7f.1/", "is local"),
            ("http://2130706433/", "is local"),
            ("http://169.254.169.254/latest/meta-data", "is local"),
            ("http://[::ffff:169.254.169.254]/", "is local"),
            ("http://[fe80::1]/", "is local"),
            ("http://[::ffff:0.0.0.0]/", "is local"),
        ] {
            let err = check_url("url", url, &c).unwrap_err().to_string();
            assert!(err.contains(want), "{url}: {err}");
        }
        assert!(check_url("url", "http://127.0.0.1:9/", &config(true)).is_ok());
        assert!(check_url("url", "http://169.254.169.254/", &config(true)).is_ok());
        // The blacklist applies even when local targets are allowed.
        assert!(check_url("url", "https://internal.example.com/", &config(true)).is_err());
        // Private ranges are allowed (internal receivers).
        assert!(check_url("url", "http://10.1.2.3/", &c).is_ok());
        assert!(check_url("url", "http://[fd00::1]/", &c).is_ok());
    }

    #[test]
    fn blacklisted_addresses_match_in_any_spelling_and_when_resolved() {
        let c = NotificationConfig {
            webhook_hostname_blacklist: vec!["10.0.0.5".into(), "[fd00::7]".into()],
            ..NotificationConfig::default()
        };
        for url in [
            "http://10.0.0.5/",
            "http://[::ffff:10.0.0.5]/",
            "http://10.0.5/",
            "http://[fd00::7]/",
        ] {
            let err = check_url("url", url, &c).unwrap_err().to_string();
            assert!(err.contains("WEBHOOK_HOSTNAME_BLACKLIST"), "{url}: {err}");
        }
        let guard = GuardedResolver::new(&c);
        assert!(!guard.allows("10.0.0.5".parse().unwrap()));
        assert!(!guard.allows("::ffff:10.0.0.5".parse().unwrap()));
        assert!(!guard.allows("169.254.1.1".parse().unwrap()));
        assert!(!guard.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!guard.allows("fe80::2".parse().unwrap()));
        assert!(guard.allows("10.0.0.6".parse().unwrap()));
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_this_machine() {
        let guard = GuardedResolver::new(&config(false));
        let err = guard
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("local or blacklisted addresses"),
            "{err}"
        );
        let open = GuardedResolver::new(&config(true));
        let addrs: Vec<_> = open
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
