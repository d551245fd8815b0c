//! Quarry build manager (not implemented yet: issue 3 and later).
//!
//! This crate will own the build queue, the orchestrator (Redis, or in-process when none is
//! configured), the scheduler, the executors (`popen`, `qemu`, `kubernetes`, `kubernetesPodman`),
//! the `buildman_pb.BuildManager` gRPC service for agents, the Quay-compatible REST API for builds,
//! triggers and notifications, the webhook endpoint, notification delivery and build logs.
//! `buildman serve` will also mount `registry-core`, so that one process is a whole install.
//!
//! Today it contains nothing: no build can be submitted or run yet.
#![warn(missing_docs)]
