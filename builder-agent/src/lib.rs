//! The Quarry build agent (not implemented yet: issue 3).
//!
//! It will run inside the builder VM or pod: register with buildman over gRPC, heartbeat, fetch the
//! source (git or archive), pull base and cache images, build through the container engine API,
//! stream logs, push the result to the registry and report the outcome. It will depend only on
//! `buildman-proto`.
//!
//! Today it contains nothing.
#![warn(missing_docs)]
