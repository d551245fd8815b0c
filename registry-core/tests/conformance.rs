//! Our OCI distribution-spec conformance suite, run against a live `registry-core` on loopback.
//!
//! The upstream Go suite cannot be built here (no Go module proxy for it), so these tests follow
//! its four categories (Pull, Push, Content Discovery, Content Management), add the data classes
//! and regressions of `reference/registry.md` section 6, and check the Docker token flow. Every
//! test starts its own server with its own data directory, so they run in parallel.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    clippy::cast_possible_truncation,
    unreachable_pub,
    missing_debug_implementations
)]

mod common;

#[path = "conformance/auth.rs"]
mod auth;
#[path = "conformance/discovery.rs"]
mod discovery;
#[path = "conformance/management.rs"]
mod management;
#[path = "conformance/pull.rs"]
mod pull;
#[path = "conformance/push.rs"]
mod push;
#[path = "conformance/tokens.rs"]
mod tokens;
#[path = "conformance/upload.rs"]
mod upload;

use common::{Client, Registry};

/// A server, a user `alice` (who owns the `alice` namespace) and her client.
pub fn setup() -> (Registry, Client) {
    let reg = Registry::start();
    let alice = reg.user("alice");
    (reg, alice)
}

/// A fresh repository name under `alice/`.
pub fn repo(prefix: &str) -> String {
    format!("alice/{prefix}-{}", common::push::random_suffix())
}
