//! Helpers shared by buildman's integration and end-to-end tests.
#![allow(
    dead_code,
    unreachable_pub,
    missing_debug_implementations,
    clippy::unwrap_used
)]

pub mod quarry;
pub mod receiver;
pub mod redis;
pub mod sources;
pub mod sshd;
pub mod triggers;
