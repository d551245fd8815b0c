//! The manager's settings: timers and identity in plain types, from the configuration.

use std::time::Duration;

/// The manager's timers and identity, in plain types (the lead maps the configuration to it).
#[derive(Clone, Debug)]
pub struct ManagerSettings {
    /// Audience of build tokens: `BUILDMAN_HOSTNAME`, else `SERVER_HOSTNAME`.
    pub manager_hostname: String,
    /// `SERVER_HOSTNAME` (with port): the registry agents push to.
    pub registry_hostname: String,
    /// `host:port` of the gRPC service, as agents dial it.
    pub grpc_server: String,
    /// Plaintext gRPC and registry for agents (Quay's `INSECURE`).
    pub insecure: bool,
    /// `ORCHESTRATOR_PREFIX`, normalised to end with `/` (or empty); part of tokens' `job_id`.
    pub orchestrator_prefix: String,
    /// `JOB_REGISTRATION_TIMEOUT` (Quay: 30 s): an agent must register this soon after start.
    pub registration_timeout: Duration,
    /// `MACHINE_MAX_TIME` (Quay: 7200 s): cap on one attempt, and the job token's lifetime.
    pub machine_max_time: Duration,
    /// `ALLOWED_WORKER_COUNT`: workers running at once, summed over executors.
    pub allowed_worker_count: usize,
    /// `ORDERED_BUILDS_PER_REPO`: one build per repository at a time, in order.
    pub ordered_builds_per_repo: bool,
    /// `RETRY_AFTER_S` (Quay: 30 s): delay before a failed attempt is retried.
    pub retry_after: Duration,
    /// TTL of the job key set by each heartbeat (Quay: 2 x 30 s).
    pub heartbeat_ttl: Duration,
    /// A heartbeat later than this after the previous one fails the attempt (Quay: 60 s).
    pub heartbeat_delta: Duration,
    /// Queue claim kept this far ahead by heartbeats (Quay's `JOB_TIMEOUT_SECONDS`: 300 s).
    pub job_timeout: Duration,
    /// The claim is only rewritten when it moves by more than this (Quay: 60 s).
    pub minimum_job_extension: Duration,
    /// How often the sweeper runs (orchestrator sweep and stuck-build recovery).
    pub sweep_interval: Duration,
    /// Longest scheduler sleep without a wake-up.
    pub max_tick: Duration,
    /// Lifetime of the signed download URL of an uploaded package.
    pub package_url_ttl: Duration,
}

impl ManagerSettings {
    /// Quay's defaults for a manager reached at `manager_hostname`, pushing to
    /// `registry_hostname`, with agents dialling `grpc_server`.
    pub fn new(manager_hostname: &str, registry_hostname: &str, grpc_server: &str) -> Self {
        ManagerSettings {
            manager_hostname: manager_hostname.to_owned(),
            registry_hostname: registry_hostname.to_owned(),
            grpc_server: grpc_server.to_owned(),
            insecure: true,
            orchestrator_prefix: String::new(),
            registration_timeout: Duration::from_secs(30),
            machine_max_time: Duration::from_secs(7200),
            allowed_worker_count: 1,
            ordered_builds_per_repo: true,
            retry_after: Duration::from_secs(30),
            heartbeat_ttl: Duration::from_secs(60),
            heartbeat_delta: Duration::from_secs(60),
            job_timeout: Duration::from_secs(300),
            minimum_job_extension: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(5),
            max_tick: Duration::from_secs(5),
            package_url_ttl: Duration::from_secs(3600),
        }
    }
}

impl ManagerSettings {
    /// The settings of `config`, with agents dialling the gRPC service bound at `grpc_addr`
    /// (an unspecified address is dialled on loopback: popen agents run on this machine).
    pub fn from_config(config: &crate::config::Config, grpc_addr: std::net::SocketAddr) -> Self {
        let mut dial = grpc_addr;
        if dial.ip().is_unspecified() {
            dial.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        ManagerSettings {
            orchestrator_prefix: config.orchestrator_prefix().to_owned(),
            registration_timeout: config.registration_timeout(),
            machine_max_time: config.machine_max_time(),
            allowed_worker_count: config.allowed_worker_count(),
            ordered_builds_per_repo: config.ordered_builds_per_repo(),
            retry_after: config.retry_after(),
            package_url_ttl: config.machine_max_time(),
            ..ManagerSettings::new(
                &config.manager_hostname(),
                &config.registry.server_hostname,
                &dial.to_string(),
            )
        }
    }
}
