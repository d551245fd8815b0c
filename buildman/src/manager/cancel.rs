//! Cancelling builds (reference 2.7, with the orchestrator path that Quay broke, 2.5, working).
//!
//! A waiting build loses its queue item. A running one (not yet pushing) is marked `cancelled`
//! in the database, which makes the agent's next `SetPhase` or heartbeat fail, and
//! `cancel/<uuid>` is set so that the manager that started its worker stops it at once.

use std::time::Duration;

use serde_json::Map;

use super::finish::Outcome;
use super::jobs::{cancel_key, set_phase_logged};
use super::{Manager, ManagerError};
use crate::control::CancelOutcome;
use crate::model::{self, Phase};
use crate::queue;

/// How long an unhandled `cancel/<uuid>` key lives (no manager ran the build).
const CANCEL_KEY_TTL: Duration = Duration::from_secs(3600);

impl Manager {
    /// `DELETE .../build/{uuid}`.
    #[tracing::instrument(skip(self), fields(build_id = %uuid))]
    pub(super) async fn cancel_build(&self, uuid: &str) -> Result<CancelOutcome, ManagerError> {
        let id = uuid.to_owned();
        let (outcome, was) = self
            .builds
            .write(move |tx| {
                let Some(b) = model::get(tx, &id)? else {
                    return Ok((CancelOutcome::NotFound, None));
                };
                // Pushing is not interrupted (a half-pushed tag set is worse than a finished one).
                if b.phase.is_final() || b.completed_ms.is_some() || b.phase == Phase::Pushing {
                    return Ok((CancelOutcome::TooLate(b.phase), None));
                }
                let moved = set_phase_logged(
                    tx,
                    b.id,
                    &id,
                    Some(b.phase),
                    Phase::Cancelled,
                    None,
                    Map::new(),
                )?;
                if !moved {
                    // The phase changed under us; the caller may try again.
                    let now = model::get(tx, &id)?.map_or(b.phase, |n| n.phase);
                    return Ok((CancelOutcome::TooLate(now), None));
                }
                // A worker may exist (or be starting) only if the build runs or is claimed.
                let signal = b.phase.is_running() || queue::is_claimed(tx, &id)?;
                queue::complete(tx, &id)?;
                Ok::<_, crate::db::BuildDbError>((
                    CancelOutcome::Cancelled,
                    Some((b.phase, signal)),
                ))
            })
            .await?;
        let Some((was, signal)) = was else {
            return Ok(outcome);
        };
        tracing::info!(was = %was, "build cancelled");
        if signal {
            let value = serde_json::json!({ "build_uuid": uuid }).to_string();
            self.orchestrator
                .set_key(&cancel_key(uuid), &value, true, Some(CANCEL_KEY_TTL))
                .await?;
        }
        {
            // Under the build's lock, so that a registration in progress has minted its
            // tokens before they are deleted (it then finds the build cancelled).
            let _guard = self.locks.lock(uuid).await;
            self.forget_credentials(uuid).await;
        }
        Ok(outcome)
    }

    /// `cancel/<uuid>` appeared: stop the build's worker if this manager started it.
    #[tracing::instrument(skip(self), fields(build_id = %uuid))]
    pub(super) async fn on_cancel_signal(&self, uuid: &str) -> Result<(), ManagerError> {
        let local = self.local_jobs().get(uuid).cloned();
        let Some(local) = local else {
            return Ok(());
        };
        let _guard = self.locks.lock(uuid).await;
        match self.load_job(uuid).await? {
            Some(rec) => self.finish_attempt(&rec, Outcome::Cancelled).await?,
            None => {
                self.stop_worker_later(uuid, Some(local.executor.name()), Some(&local.execution_id))
            }
        }
        self.orchestrator.delete_key(&cancel_key(uuid)).await?;
        tracing::info!("worker of cancelled build stopping");
        Ok(())
    }
}
