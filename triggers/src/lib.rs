//! Webhook payloads to build trigger metadata (issue 5, in progress).
//!
//! A pure library (no I/O, no async runtime). So far: git refs ([`refs`]), the trigger's
//! `branchtag_regex` filter and the skip markers ([`filter`]), and default tags with Quay's tag
//! escaping ([`tags`]), and tag templates checked at configuration time ([`template`]). The
//! trigger metadata ([`metadata`]) and the custom-git payload ([`custom`]). The GitHub and
//! GitLab push payloads ([`github`], [`gitlab`]). Still to come: Bitbucket and signatures.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod custom;
pub mod filter;
pub mod github;
pub mod gitlab;
pub mod metadata;
pub mod refs;
pub mod tags;
pub mod template;
