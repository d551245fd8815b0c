//! Quarry build manager.
//!
//! It owns the durable build queue ([`queue`], in `builds.db`), the orchestrator of running jobs
//! (Redis with Quay's key layout, or in-process), the scheduler and executors, the
//! `buildman_pb.BuildManager` gRPC service the agents dial, Quay's REST API for builds, and build
//! logs. `buildman serve` also mounts registry-core, so one process is a whole single-machine
//! install.
#![warn(missing_docs)]

pub mod api;
pub mod config;
pub mod control;
pub mod db;
pub mod events;
pub mod executor;
pub mod grpc;
pub mod logs;
pub mod manager;
pub mod model;
pub mod notify;
pub mod orchestrator;
pub mod queue;
pub mod secrets;
pub mod server;
pub mod tokens;
pub mod trigger;
