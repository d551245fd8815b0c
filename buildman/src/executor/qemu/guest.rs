//! What one build's VM is told: the host services it must reach, the agent's environment and the
//! whole [`GuestConfig`] handed over through `fw_cfg`. Pure functions of the job and the settings.

use std::collections::BTreeMap;

use qemu_image::forward::{self, ForwardPlan};
use qemu_image::guest::{GuestConfig, GuestNetwork};
use qemu_image::spec::NetworkMode;

use super::settings::QemuOptions;
use crate::executor::{ExecutorSettings, StartJob};

/// The guest's address on slirp's network (slirp's default first DHCP address).
pub(super) const GUEST_ADDRESS: &str = "10.0.2.15/24";
/// slirp's gateway, which is also the host's loopback in `user` mode.
pub(super) const USER_GATEWAY: &str = "10.0.2.2";
/// slirp's DNS proxy, the default nameserver in `user` mode.
pub(super) const USER_NAMESERVER: &str = "10.0.2.3";

/// `host:port` of the registry named by `REGISTRY_HOSTNAME` (`host[:port]`, IPv6 in brackets):
/// without a port, 80 for an insecure registry and 443 otherwise, as the agent dials it.
pub(super) fn registry_service(hostname: &str, insecure: bool) -> String {
    let has_port = match hostname.rsplit_once(':') {
        // `[::1]:5000` or `host:5000`; a bare `::1` has colons but no brackets.
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        hostname.to_owned()
    } else {
        let port = if insecure { 80 } else { 443 };
        format!("{hostname}:{port}")
    }
}

/// The host services the guest reaches, each once, in a stable order: buildman's gRPC service,
/// the registry, then the proxies the agent is given (`inherited` as from `inherited_env`).
pub(super) fn services(job: &StartJob, inherited: &[(&'static str, String)]) -> Vec<String> {
    let mut out = vec![
        job.grpc_server.clone(),
        registry_service(&job.registry_hostname, job.insecure),
    ];
    for (name, value) in inherited {
        if matches!(*name, "HTTP_PROXY" | "HTTPS_PROXY")
            && let Some(service) = forward::proxy_service(value)
        {
            out.push(service);
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|s| seen.insert(s.clone()));
    out
}

/// The agent's environment in the guest; `quarry-init` adds `PATH`, `HOME`, `QUARRY_WORK_DIR`,
/// `CONTAINER_RUNTIME` and `TLS_CERT_PATH`.
pub(super) fn agent_env(
    job: &StartJob,
    settings: &ExecutorSettings,
    inherited: &[(&'static str, String)],
) -> BTreeMap<String, String> {
    let flag = |b: bool| if b { "true" } else { "false" }.to_owned();
    let mut env = BTreeMap::from([
        ("SERVER".to_owned(), job.grpc_server.clone()),
        ("TOKEN".to_owned(), job.registration_token.clone()),
        ("BUILD_UUID".to_owned(), job.build_uuid.clone()),
        (
            "REGISTRY_HOSTNAME".to_owned(),
            job.registry_hostname.clone(),
        ),
        ("INSECURE".to_owned(), flag(job.insecure)),
        ("DEBUG".to_owned(), flag(settings.debug)),
        (
            "QUARRY_MAX_CONTEXT_BYTES".to_owned(),
            settings.max_context_bytes.to_string(),
        ),
    ]);
    for (name, value) in inherited {
        env.insert((*name).to_owned(), value.clone());
    }
    env
}

/// The guest's NIC configuration for `mode`.
pub(super) fn network(opts: &QemuOptions, plan: &ForwardPlan) -> GuestNetwork {
    let user = opts.vm.network == NetworkMode::User;
    let nameservers = if !user {
        Vec::new()
    } else if opts.vm.dns_servers.is_empty() {
        vec![USER_NAMESERVER.to_owned()]
    } else {
        opts.vm
            .dns_servers
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    GuestNetwork {
        address: GUEST_ADDRESS.to_owned(),
        gateway: user.then(|| USER_GATEWAY.to_owned()),
        nameservers,
        hosts: plan.hosts.clone(),
    }
}

/// The whole configuration of `job`'s VM.
pub(super) fn guest_config(
    job: &StartJob,
    settings: &ExecutorSettings,
    opts: &QemuOptions,
    inherited: &[(&'static str, String)],
    plan: &ForwardPlan,
) -> GuestConfig {
    GuestConfig {
        build_uuid: job.build_uuid.clone(),
        agent_env: agent_env(job, settings, inherited),
        ca_cert: opts.ca_cert.clone(),
        ssh_authorized_keys: opts.ssh_authorized_keys.clone(),
        network: network(opts, plan),
        forwards: plan.guest.clone(),
        debug: settings.debug,
        max_lifetime_s: settings.max_lifetime.as_secs(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use qemu_image::guest::GuestForward;
    use qemu_image::spec::GuestFwd;

    use super::*;

    fn job() -> StartJob {
        StartJob {
            build_uuid: "b1".into(),
            registration_token: "secret.jwt.token".into(),
            grpc_server: "127.0.0.1:50051".into(),
            insecure: true,
            registry_hostname: "localhost:8080".into(),
        }
    }

    fn proxies() -> Vec<(&'static str, String)> {
        vec![
            ("HTTP_PROXY", "http://proxy.corp:3128".into()),
            ("http_proxy", "http://proxy.corp:3128".into()),
            ("HTTPS_PROXY", "http://proxy.corp:3128".into()),
            ("https_proxy", "http://proxy.corp:3128".into()),
            ("NO_PROXY", "localhost".into()),
            ("no_proxy", "localhost".into()),
            ("RUST_LOG", "debug".into()),
        ]
    }

    #[test]
    fn registry_ports_default_by_insecure() {
        assert_eq!(registry_service("localhost:8080", false), "localhost:8080");
        assert_eq!(
            registry_service("quay.example.com", false),
            "quay.example.com:443"
        );
        assert_eq!(
            registry_service("quay.example.com", true),
            "quay.example.com:80"
        );
        assert_eq!(registry_service("[::1]:5000", false), "[::1]:5000");
        assert_eq!(registry_service("10.1.2.3", true), "10.1.2.3:80");
    }

    #[test]
    fn services_are_grpc_registry_and_each_proxy_once() {
        let got = services(&job(), &proxies());
        assert_eq!(got[..2], ["127.0.0.1:50051", "localhost:8080"]);
        // Both proxy variables name the same service: one forward. NO_PROXY is not a service.
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got[2].contains("proxy.corp") && got[2].ends_with(":3128"),
            "{got:?}"
        );
        let same = StartJob {
            registry_hostname: "127.0.0.1:50051".into(),
            ..job()
        };
        assert_eq!(services(&same, &[]), ["127.0.0.1:50051"]);
    }

    #[test]
    fn guest_config_carries_the_job_and_hides_the_token_from_debug() {
        let mut settings = ExecutorSettings::new("vm", "/w");
        settings.debug = true;
        settings.max_lifetime = Duration::from_secs(600);
        settings.max_context_bytes = 1024;
        let opts = QemuOptions {
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA k".into()],
            ca_cert: Some("-----BEGIN CERTIFICATE-----".into()),
            ..QemuOptions::default()
        };
        let plan = ForwardPlan {
            qemu: vec![GuestFwd {
                guest: "10.0.2.100:50051".parse().unwrap(),
                host: "127.0.0.1:50051".into(),
            }],
            guest: vec![GuestForward {
                listen: "127.0.0.1:50051".into(),
                target: "10.0.2.100:50051".into(),
            }],
            hosts: vec![("10.0.2.101".into(), "quay.example.com".into())],
        };
        let c = guest_config(&job(), &settings, &opts, &proxies(), &plan);
        let env = |k: &str| c.agent_env.get(k).map(String::as_str);
        assert_eq!(env("TOKEN"), Some("secret.jwt.token"));
        assert_eq!(env("SERVER"), Some("127.0.0.1:50051"));
        assert_eq!(env("BUILD_UUID"), Some("b1"));
        assert_eq!(env("REGISTRY_HOSTNAME"), Some("localhost:8080"));
        assert_eq!(env("INSECURE"), Some("true"));
        assert_eq!(env("DEBUG"), Some("true"));
        assert_eq!(env("QUARRY_MAX_CONTEXT_BYTES"), Some("1024"));
        assert_eq!(env("RUST_LOG"), Some("debug"));
        assert_eq!(env("https_proxy"), Some("http://proxy.corp:3128"));
        assert_eq!(env("PATH"), None, "quarry-init sets PATH");
        assert_eq!(c.forwards, plan.guest);
        assert_eq!(c.network.hosts, plan.hosts);
        assert_eq!(c.network.address, "10.0.2.15/24");
        assert_eq!(c.network.gateway, None, "restricted: no route out");
        assert!(c.network.nameservers.is_empty());
        assert!(c.debug);
        assert_eq!(c.max_lifetime_s, 600);
        assert_eq!(c.ssh_authorized_keys, opts.ssh_authorized_keys);
        let shown = format!("{c:?}");
        assert!(shown.contains("TOKEN"), "names are shown: {shown}");
        assert!(!shown.contains("secret.jwt"), "{shown}");
        assert!(!shown.contains("BEGIN CERT"), "{shown}");
    }

    #[test]
    fn user_mode_gets_a_gateway_and_nameservers() {
        let plan = ForwardPlan {
            qemu: Vec::new(),
            guest: Vec::new(),
            hosts: Vec::new(),
        };
        let mut opts = QemuOptions::default();
        opts.vm.network = NetworkMode::User;
        let n = network(&opts, &plan);
        assert_eq!(n.gateway.as_deref(), Some("10.0.2.2"));
        assert_eq!(n.nameservers, ["10.0.2.3"]);
        opts.vm.dns_servers = vec!["1.1.1.1".parse().unwrap()];
        assert_eq!(network(&opts, &plan).nameservers, ["1.1.1.1"]);
    }
}
