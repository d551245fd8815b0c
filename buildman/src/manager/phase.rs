//! `SetPhase` (reference 2.1): phase reports of an agent, with sequence numbers checked per
//! attempt, resends acknowledged, and agent phases only moving forward.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::finish::Outcome;
use super::jobs::{JobRecord, finished_key, set_phase_logged};
use super::{Manager, ManagerError, error_chain};
use crate::model::Phase;
use crate::tokens::BuildContext;

/// How long the phase that ended an attempt is remembered for the agent's resends (a few
/// `SetPhase` timeouts).
const FINISHED_MARK_TTL: Duration = Duration::from_secs(300);

/// `finished/<uuid>`: which call of which attempt ended it.
#[derive(Debug, Serialize, Deserialize)]
struct FinishedMark {
    attempt_id: String,
    sequence_number: i32,
    phase: Phase,
}

/// Order of the phases an agent moves a build through; `None` for the others.
fn progress(phase: Phase) -> Option<u8> {
    match phase {
        Phase::BuildScheduled => Some(0),
        Phase::Unpacking => Some(1),
        Phase::Pulling => Some(2),
        Phase::Building => Some(3),
        Phase::Pushing => Some(4),
        _ => None,
    }
}

/// `SetPhase`'s pull metadata (reference 1.1), stored in the `pulling` phase entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullInfo {
    /// Registry of the base image.
    pub registry_url: String,
    /// Base image name.
    pub base_image: String,
    /// Base image tag.
    pub base_image_tag: String,
    /// User the agent pulls as.
    pub pull_username: String,
}

impl PullInfo {
    /// The log entry's extra data: Quay's field names, empty strings omitted.
    fn to_data(&self) -> Map<String, Value> {
        let mut data = Map::new();
        for (k, v) in [
            ("registry_url", &self.registry_url),
            ("base_image", &self.base_image),
            ("base_image_tag", &self.base_image_tag),
            ("pull_username", &self.pull_username),
        ] {
            if !v.is_empty() {
                data.insert(k.to_owned(), Value::String(v.clone()));
            }
        }
        data
    }
}

/// One `SetPhase` call in domain terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseReport {
    /// The agent's phase sequence number; one not above the last accepted is refused.
    pub sequence_number: i32,
    /// The phase reported (`Phase::Error` for the wire `ERROR`).
    pub phase: Phase,
    /// With `pulling`: what is pulled.
    pub pull: Option<PullInfo>,
    /// With `error`: why (Quarry addition).
    pub error_message: String,
    /// With `error`: the infrastructure failed, so the attempt may be retried.
    pub retryable: bool,
    /// With `complete`: the manifest digests pushed, one per tag.
    pub manifest_digests: Vec<String>,
}

impl Manager {
    /// `SetPhase` (reference 2.1, sequence numbers checked per attempt). Returns `success`.
    ///
    /// A resend of the last accepted call (same sequence number and phase, after the agent lost
    /// the answer) succeeds again without effect; agent phases only move forward.
    #[tracing::instrument(skip_all, fields(build_id = %ctx.build_id, phase = %report.phase,
        seq = report.sequence_number))]
    pub async fn update_job_phase(
        &self,
        ctx: &BuildContext,
        report: PhaseReport,
    ) -> Result<bool, ManagerError> {
        let _guard = self.locks.lock(&ctx.build_id).await;
        let Some(mut rec) = self.job_of(ctx).await? else {
            if self.is_resent_end(ctx, &report).await? {
                tracing::info!("resent final phase acknowledged");
                return Ok(true);
            }
            tracing::info!("phase refused: the job is not running");
            return Ok(false);
        };
        if let Some(last) = rec.phase_seq {
            if report.sequence_number == last && rec.last_phase == Some(report.phase) {
                tracing::info!("resent phase acknowledged");
                return Ok(true);
            }
            if report.sequence_number <= last {
                tracing::info!(last, "phase refused: stale sequence number");
                return Ok(false);
            }
        }
        let Some(build) = self.build_of(&ctx.build_id).await? else {
            return Ok(false);
        };
        if build.phase.is_final() || build.completed_ms.is_some() {
            tracing::info!(current = %build.phase, "phase refused: the build has ended");
            return Ok(false);
        }
        rec.phase_seq = Some(report.sequence_number);
        rec.last_phase = Some(report.phase);
        let sequence_number = report.sequence_number;
        let outcome = match report.phase {
            Phase::Complete => Outcome::Complete {
                digests: report.manifest_digests,
            },
            Phase::Error if report.retryable => Outcome::Incomplete {
                reason: non_empty(
                    report.error_message,
                    "the build agent reported an infrastructure error",
                ),
            },
            Phase::Error => Outcome::Failed {
                message: non_empty(report.error_message, "the build failed"),
            },
            Phase::Unpacking | Phase::Pulling | Phase::Building | Phase::Pushing => {
                if let (Some(now), Some(to)) = (progress(build.phase), progress(report.phase))
                    && to < now
                {
                    tracing::info!(current = %build.phase, "phase refused: it would go backwards");
                    return Ok(false);
                }
                if build.phase != report.phase {
                    let (uuid, id, from, to) =
                        (build.uuid.clone(), build.id, build.phase, report.phase);
                    let data = report
                        .pull
                        .as_ref()
                        .map(PullInfo::to_data)
                        .unwrap_or_default();
                    // Compare-and-set on the phase read above: a change made meanwhile (by
                    // another manager's recovery, say) is not overwritten.
                    let moved = self
                        .builds
                        .write(move |tx| {
                            set_phase_logged(tx, id, &uuid, Some(from), to, None, data)
                        })
                        .await?;
                    if !moved {
                        return Ok(false);
                    }
                    tracing::info!("phase changed");
                }
                let ttl = rec.remaining_ttl();
                self.save_job(&mut rec, ttl, false).await?;
                return Ok(true);
            }
            // Phases only the manager sets.
            Phase::Waiting | Phase::BuildScheduled | Phase::InternalError | Phase::Cancelled => {
                tracing::warn!("phase refused: not one an agent reports");
                return Ok(false);
            }
        };
        self.finish_attempt(&rec, outcome).await?;
        self.remember_end(&rec, sequence_number, report.phase).await;
        Ok(true)
    }

    /// Note that the agent's `SetPhase(sequence_number, phase)` ended attempt `rec`, so that a
    /// resend of it is acknowledged ([`Manager::is_resent_end`]). Best effort.
    async fn remember_end(&self, rec: &JobRecord, sequence_number: i32, phase: Phase) {
        let mark = FinishedMark {
            attempt_id: rec.state_id().to_owned(),
            sequence_number,
            phase,
        };
        let value = serde_json::to_string(&mark).unwrap_or_default();
        if let Err(e) = self
            .orchestrator
            .set_key(
                &finished_key(rec.uuid()),
                &value,
                true,
                Some(FINISHED_MARK_TTL),
            )
            .await
        {
            tracing::warn!(error = %error_chain(&e), "failed to record the attempt's last phase");
        }
    }

    /// Whether `report` resends the call that ended the attempt of `ctx`.
    async fn is_resent_end(
        &self,
        ctx: &BuildContext,
        report: &PhaseReport,
    ) -> Result<bool, ManagerError> {
        let Some(json) = self
            .orchestrator
            .get_key(&finished_key(&ctx.build_id))
            .await?
        else {
            return Ok(false);
        };
        let Ok(mark) = serde_json::from_str::<FinishedMark>(&json) else {
            return Ok(false);
        };
        Ok(!ctx.attempt_id.is_empty()
            && mark.attempt_id == ctx.attempt_id
            && mark.sequence_number == report.sequence_number
            && mark.phase == report.phase)
    }
}

fn non_empty(text: String, fallback: &str) -> String {
    if text.trim().is_empty() {
        fallback.to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_metadata_omits_empty_fields() {
        let info = PullInfo {
            registry_url: "localhost:8080".into(),
            base_image: "busybox".into(),
            ..PullInfo::default()
        };
        let data = info.to_data();
        assert_eq!(data.len(), 2);
        assert_eq!(data["base_image"], "busybox");
    }

    #[test]
    fn agent_phases_are_ordered() {
        let order = [
            Phase::BuildScheduled,
            Phase::Unpacking,
            Phase::Pulling,
            Phase::Building,
            Phase::Pushing,
        ];
        for pair in order.windows(2) {
            assert!(progress(pair[0]) < progress(pair[1]), "{pair:?}");
        }
        assert_eq!(progress(Phase::Complete), None);
        assert_eq!(progress(Phase::InternalError), None);
    }
}
