//! Webhook deliveries to build decisions, for buildman's triggers (issue 5).
//!
//! A pure library: no I/O, no async runtime, no unsafe, no other Quarry crate. Its entry points
//! are [`webhook`] (which provider, [`webhook::verify`] the signature with the trigger's secret,
//! [`webhook::parse`] the push) and [`plan`] ([`plan::check`] a trigger's config when it is
//! activated, [`plan::decide`] what a push builds). Underneath: git [`refs`], the ref [`filter`]
//! and skip markers, default [`tags`] and escaping, tag [`template`]s, the trigger [`metadata`],
//! and one module per payload shape: [`custom`], [`github`], [`gitlab`], [`bitbucket`].
//!
//! ```
//! use triggers::metadata::Push;
//! use triggers::plan::{self, Decision, TriggerConfig};
//! use triggers::webhook::{self, Headers, Service};
//!
//! let body = br#"{"commit": "1c002dd4b536e7479fe34593e72e6c6c1819e53b",
//!                 "ref": "refs/heads/main", "default_branch": "main"}"#;
//! let headers = Headers::new([("Content-Type", "application/json")]);
//! let url = "ssh://git@git.example.net/srv/app.git";
//! let Push::Build(metadata) = webhook::parse(Service::CustomGit, &headers, body, url)? else {
//!     unreachable!("a custom-git push with a commit builds");
//! };
//! let config: TriggerConfig = serde_json::from_str(r#"{"build_source": "ssh://git@git.example.net/srv/app.git"}"#)?;
//! let checked = plan::check(&config)?;
//! assert_eq!(
//!     plan::decide(&checked, &metadata, false),
//!     Decision::Build { tags: vec!["latest".into(), "main".into()] }
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod bitbucket;
pub mod custom;
pub mod filter;
pub mod github;
pub mod gitlab;
pub mod metadata;
pub mod plan;
pub mod refs;
pub mod tags;
pub mod template;
pub mod webhook;
