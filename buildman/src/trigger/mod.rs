//! Build triggers (reference 5): the `build_trigger` rows, deploy keys, starting builds from
//! webhook deliveries and manual starts, and disabling triggers whose builds keep failing.

pub mod activate;
pub mod deploy_key;
pub mod git_url;
pub mod outcome;
pub mod push;
pub mod source;
pub mod store;

pub use outcome::{BuildOutcome, DisabledReason, TriggerLimits, record_outcome};
pub use store::{StoreError, Trigger};
