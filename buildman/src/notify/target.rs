//! Where webhook and Slack notifications may be sent: http(s) URLs whose host is not in
//! `WEBHOOK_HOSTNAME_BLACKLIST` and not local (`localhost`, loopback, unspecified addresses)
//! unless `NOTIFICATION_ALLOW_LOCAL_WEBHOOKS`. Checked when a notification is created and again
//! at each delivery, where the resolver also refuses names that resolve to local addresses (a
//! public name pointing at 127.0.0.1 would otherwise reach the server's own ports).

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

/// Whether `ip` is this machine in any spelling (loopback, unspecified, IPv4-mapped loopback).
pub fn is_local_ip(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    ip.is_loopback() || ip.is_unspecified()
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
    let (host_text, local) = match parsed.host() {
        None => {
            return Err(TargetError::NoHost {
                field,
                url: url.to_owned(),
            });
        }
        Some(Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            let local = d == "localhost" || d.ends_with(".localhost");
            (d, local)
        }
        Some(Host::Ipv4(ip)) => (ip.to_string(), is_local_ip(IpAddr::V4(ip))),
        Some(Host::Ipv6(ip)) => (ip.to_string(), is_local_ip(IpAddr::V6(ip))),
    };
    let blacklisted = config.webhook_hostname_blacklist.iter().any(|b| {
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

/// A resolver that drops local addresses from the answers (unless allowed), so that a name
/// cannot smuggle a delivery to this machine; a name with only local addresses fails to resolve.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    allow_local: bool,
}

impl GuardedResolver {
    /// A resolver for `config`.
    pub fn new(config: &NotificationConfig) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            allow_local: config.allow_local_webhooks,
        })
    }
}

/// A name that resolved to local addresses only.
#[derive(Debug, thiserror::Error)]
#[error("{name} resolves only to local addresses, which notifications may not target")]
struct LocalName {
    name: String,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_local = self.allow_local;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_local || !is_local_ip(a.ip()))
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
        ] {
            let err = check_url("url", url, &c).unwrap_err().to_string();
            assert!(err.contains(want), "{url}: {err}");
        }
        assert!(check_url("url", "http://127.0.0.1:9/", &config(true)).is_ok());
        // The blacklist applies even when local targets are allowed.
        assert!(check_url("url", "https://internal.example.com/", &config(true)).is_err());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_this_machine() {
        let guard = GuardedResolver::new(&config(false));
        let err = guard
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("local addresses"), "{err}");
        let open = GuardedResolver::new(&config(true));
        let addrs: Vec<_> = open
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
