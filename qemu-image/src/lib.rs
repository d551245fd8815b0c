//! The builder VM image and its QEMU command line (not implemented yet: issue 4).
//!
//! This crate will build, from Debian packages only, a pinned and checksummed VM image (kernel,
//! root filesystem with podman and the `builder-agent`, a tiny init), choose KVM or TCG by a real
//! probe, and build the QEMU command line that boots one throw-away VM per build.
//!
//! Today it contains nothing.
#![warn(missing_docs)]
