//! The delivery worker: claims due `notification_delivery` rows and performs them, a few at a
//! time, at most one per notification (oldest first, so a target sees queued, start, success in
//! order). Success deletes the row and resets the notification's failure count; a failure counts
//! once on the notification and retries after `retry_base * 2^attempts` (attempts before this
//! one), up to [`MAX_ATTEMPTS`]; at [`model::MAX_FAILURES`] failures in a row the notification
//! stops and its pending deliveries are dropped. Claiming leases a row for the send timeout plus
//! [`LEASE_MARGIN`], so two processes never send the same delivery; a delivery cut short by a
//! shutdown or crash is made again once its lease ends.

use std::time::Duration;

use futures_util::future::join_all;
use registry_core::db::now_ms;

use super::delivery_rows::{self, AfterFailure, Delivery};
use super::methods::{self, Ctx};
use super::model;
use crate::db::BuildDbError;

/// Attempts of one delivery (Quay's `retries_remaining=5`).
pub const MAX_ATTEMPTS: i64 = 5;
/// Deliveries performed concurrently in one round.
const BATCH: u32 = 16;
/// How much longer than the send timeout a claimed delivery stays leased (mail sending and the
/// database writes after the attempt).
pub const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// The wait before retrying a delivery that has failed `attempts` times before this failure.
pub fn backoff(retry_base: Duration, attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 16)).unwrap_or(16);
    retry_base.saturating_mul(2u32.saturating_pow(exp))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Perform one delivery and record its result.
async fn deliver_one(ctx: &Ctx, retry_base: Duration, d: Delivery) -> Result<bool, BuildDbError> {
    let n = &d.notification;
    if n.number_of_failures >= model::MAX_FAILURES {
        let uuid = n.uuid.clone();
        let dropped = ctx
            .builds
            .write(move |tx| delivery_rows::drop_pending(tx, &uuid))
            .await?;
        tracing::warn!(notification = %n.uuid, repository = %n.repository, dropped,
            "notification is stopped after repeated failures; dropped its pending deliveries \
             (reset it to send again)");
        return Ok(false);
    }
    let result = methods::perform(ctx, &d).await;
    let ok = result.is_ok();
    match result {
        Ok(done) => {
            tracing::info!(notification = %n.uuid, repository = %n.repository, event = %d.event,
                method = %n.method, "notification delivered");
            if done == methods::Done::Sent {
                let d2 = d.clone();
                ctx.builds
                    .write(move |tx| delivery_rows::delivered(tx, &d2))
                    .await?;
            }
        }
        Err(e) => {
            let error = registry_core::error::error_chain(&e);
            let wait = ms(backoff(retry_base, d.attempts));
            let (d2, text) = (d.clone(), error.clone());
            let after = ctx
                .builds
                .write(move |tx| delivery_rows::failed(tx, &d2, &text, wait, MAX_ATTEMPTS))
                .await?;
            let (uuid, repo, event) = (&n.uuid, &n.repository, &d.event);
            match after {
                AfterFailure::Retry { at_ms } => tracing::info!(notification = %uuid,
                    repository = %repo, event = %event, error = %error,
                    retry_in_ms = at_ms - now_ms(), "notification delivery failed; will retry"),
                AfterFailure::GaveUp => tracing::warn!(notification = %uuid, repository = %repo,
                    event = %event, error = %error, attempts = MAX_ATTEMPTS,
                    "notification delivery failed; giving up after its last attempt"),
                AfterFailure::Stopped { dropped } => tracing::warn!(notification = %uuid,
                    repository = %repo, event = %event, error = %error, dropped,
                    "notification failed {} times in a row and is stopped until reset; dropped \
                     its pending deliveries", model::MAX_FAILURES),
                AfterFailure::Gone => {}
            }
        }
    }
    Ok(ok)
}

/// One round: claim the due deliveries (up to a batch, one per notification) and perform them.
/// Returns how many were attempted.
pub async fn round(ctx: &Ctx, retry_base: Duration) -> Result<usize, BuildDbError> {
    let lease = ms(ctx.config.send_timeout.saturating_add(LEASE_MARGIN));
    let due = ctx
        .builds
        .write(move |tx| delivery_rows::claim(tx, now_ms(), lease, BATCH))
        .await?;
    let n = due.len();
    let results = join_all(due.into_iter().map(|d| deliver_one(ctx, retry_base, d))).await;
    for r in results {
        r?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base() {
        let base = Duration::from_secs(30);
        assert_eq!(backoff(base, 0), Duration::from_secs(30));
        assert_eq!(backoff(base, 1), Duration::from_secs(60));
        assert_eq!(backoff(base, 4), Duration::from_secs(480));
        assert_eq!(backoff(base, 1000), base * 65536);
    }
}
