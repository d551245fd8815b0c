//! What the REST API asks of the running manager, as a trait so the API is tested without one.

use std::fmt::Debug;

/// Result of a cancel request (Quay: `201 "Okay"` or 400 "Build is currently running or has
/// finished"; we can also stop running builds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The build was waiting and was removed from the queue, or it was running and its worker is
    /// being stopped; its phase is now `cancelled`.
    Cancelled,
    /// The build already ended (or is pushing, which is not interrupted) and keeps its phase.
    TooLate(crate::model::Phase),
    /// No such build.
    NotFound,
}

/// The manager as the API sees it.
#[async_trait::async_trait]
pub trait BuildControl: Send + Sync + Debug {
    /// A build was queued: schedule now rather than at the next tick.
    fn wake(&self);
    /// Cancel build `uuid`.
    async fn cancel(&self, uuid: &str) -> Result<CancelOutcome, String>;
}
