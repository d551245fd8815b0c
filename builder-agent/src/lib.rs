//! The Quarry build agent: runs one build inside a builder VM, pod or (`popen`) process.
//!
//! It registers with buildman over gRPC (`buildman_pb.BuildManager`, Quay's protocol), heartbeats,
//! fetches the source (git or archive), pulls base and cache images, builds through the container
//! engine API (dockerd or podman's API service, via bollard), streams every log line, pushes the
//! result to the registry and reports the outcome: COMPLETE with the manifest digests, or ERROR
//! with the engine's error text and whether a retry could help. It depends on `buildman-proto`
//! only, never on server crates.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use builder_agent::{agent, docker::DockerEngine, env::AgentConfig};
//! let config = AgentConfig::from_env()?;
//! let engine = DockerEngine::connect("unix:///run/podman/podman.sock", None);
//! let outcome = agent::run(&config, engine, std::future::pending()).await?;
//! std::process::exit(i32::from(outcome.exit_code()));
//! # }
//! ```
#![warn(missing_docs)]

pub mod agent;
pub mod docker;
pub mod dockerfile;
pub mod engine;
pub mod env;
pub mod heartbeat;
pub mod logs;
pub mod podman;
pub mod source;
pub mod steps;

/// An error and its sources, joined with `: ` (the form error messages reach users in).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
