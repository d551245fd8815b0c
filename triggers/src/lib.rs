//! Webhook payloads to build trigger metadata (not implemented yet: issue 5).
//!
//! A pure library (no I/O, no async runtime): it will turn GitHub, GitLab, Bitbucket and custom-git
//! push payloads into trigger metadata, apply ref filters and skip markers, and expand tag
//! templates.
//!
//! Today it contains nothing.
#![warn(missing_docs)]
#![forbid(unsafe_code)]
