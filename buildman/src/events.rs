//! Build events (reference 7.1): recorded in the transaction that changes the build, into the
//! `build_event` outbox, so that an event is never lost nor sent for a change that rolled back.
//! [`crate::notify`]'s dispatcher turns each into notification deliveries and trigger failure
//! counts.

use registry_core::db::now_ms;
use rusqlite::{Connection, params};

use crate::db::BuildDbError;

/// What happened to a build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuildEvent {
    /// A build was created and queued.
    Queued,
    /// The build reached `building` (the Dockerfile runs).
    Start,
    /// The build completed: every tag pushed.
    Success,
    /// The build failed for good (its input, or no attempt left).
    Failure,
    /// A user cancelled the build.
    Cancelled,
}

impl BuildEvent {
    /// Every event.
    pub const ALL: [BuildEvent; 5] = [
        BuildEvent::Queued,
        BuildEvent::Start,
        BuildEvent::Success,
        BuildEvent::Failure,
        BuildEvent::Cancelled,
    ];

    /// Quay's event name.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildEvent::Queued => "build_queued",
            BuildEvent::Start => "build_start",
            BuildEvent::Success => "build_success",
            BuildEvent::Failure => "build_failure",
            BuildEvent::Cancelled => "build_cancelled",
        }
    }

    /// The event of Quay's name `name`.
    pub fn from_name(name: &str) -> Option<BuildEvent> {
        BuildEvent::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// Record `event` of build `uuid` in the caller's transaction; `message` is the error text of a
/// failure.
pub fn record(
    conn: &Connection,
    uuid: &str,
    event: BuildEvent,
    message: Option<&str>,
) -> Result<(), BuildDbError> {
    conn.prepare_cached(
        "INSERT INTO build_event (build_uuid, event, message, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![uuid, event.as_str(), message, now_ms()])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for e in BuildEvent::ALL {
            assert_eq!(BuildEvent::from_name(e.as_str()), Some(e));
        }
        assert_eq!(BuildEvent::from_name("repo_push"), None);
    }
}
