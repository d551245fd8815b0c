//! Build logs: one row per entry with a per-build sequence number, kept after the build ends.
//!
//! Entries have Quay's shape `{"message", "type", "data": {"datetime", ...}}`. Agent output is
//! JSON (`{"stream"|"status"|"error": text}`, as Quay's agent sends it); the text is the first of
//! `error`, `status`, `stream`. Docker's `Step n/m :` and podman's `STEP n/m:` lines are typed
//! `command` (Quay only recognised Docker's, so podman builds had no command entries).

use std::sync::LazyLock;

use registry_core::db::now_ms;
use rusqlite::{Connection, params};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::db::BuildDbError;

/// The kind of a log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A phase change.
    Phase,
    /// A Dockerfile instruction starting.
    Command,
    /// An error.
    Error,
    /// Plain output.
    Output,
}

impl Kind {
    fn as_db(self) -> Option<&'static str> {
        match self {
            Kind::Phase => Some("phase"),
            Kind::Command => Some("command"),
            Kind::Error => Some("error"),
            Kind::Output => None,
        }
    }
}

/// One entry as the REST API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Entry {
    /// The text.
    pub message: String,
    /// `phase`, `command`, `error`, or absent.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `datetime` and extra data.
    pub data: Value,
}

static STEP: LazyLock<regex::Regex> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used, reason = "constant pattern, covered by tests")]
    regex::Regex::new(r"^(?:Step|STEP) ([0-9]+)(?:/([0-9]+))? ?:").unwrap()
});

/// Quay's `datetime` text (`str(datetime.now())`-like, UTC): `2024-01-31 12:00:00.123456`.
fn datetime(ms: i64) -> String {
    let secs = u64::try_from(ms / 1000).unwrap_or(0);
    let iso = registry_core::api::common::rfc3339(secs);
    let micros = (ms % 1000) * 1000;
    format!(
        "{} {}.{micros:06}",
        &iso[..10],
        iso.get(11..19).unwrap_or("00:00:00")
    )
}

/// Append an entry to build `build_id`'s log; returns its sequence number (0-based).
pub fn append(
    conn: &Connection,
    build_id: i64,
    kind: Kind,
    message: &str,
    extra: Map<String, Value>,
) -> Result<i64, BuildDbError> {
    let mut data = extra;
    data.insert("datetime".into(), Value::String(datetime(now_ms())));
    let seq: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(seq) + 1, 0) FROM build_log WHERE build_id = ?1")?
        .query_row(params![build_id], |r| r.get(0))?;
    conn.prepare_cached(
        "INSERT INTO build_log (build_id, seq, kind, message, data) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        build_id,
        seq,
        kind.as_db(),
        message,
        Value::Object(data).to_string()
    ])?;
    Ok(seq)
}

/// Classify one agent log message (JSON or raw text) into a kind and its text.
pub fn classify_agent_message(raw: &str) -> (Kind, String) {
    let parsed: Option<Map<String, Value>> = serde_json::from_str(raw).ok();
    let (text, is_error) = match &parsed {
        Some(obj) => {
            let field = |k: &str| obj.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
            if let Some(e) = field("error") {
                (e.to_owned(), true)
            } else if let Some(s) = field("status").or_else(|| field("stream")) {
                (s.to_owned(), false)
            } else {
                (raw.to_owned(), false)
            }
        }
        None => (raw.to_owned(), false),
    };
    let text = text.trim_end_matches(['\n', '\r']).to_owned();
    let kind = if is_error {
        Kind::Error
    } else if STEP.is_match(text.trim_start()) {
        Kind::Command
    } else {
        Kind::Output
    };
    (kind, text)
}

/// Append an agent's log message (see [`classify_agent_message`]); empty output is dropped.
pub fn append_agent_message(
    conn: &Connection,
    build_id: i64,
    raw: &str,
) -> Result<Option<i64>, BuildDbError> {
    let (kind, text) = classify_agent_message(raw);
    if text.trim().is_empty() {
        return Ok(None);
    }
    append(conn, build_id, kind, &text, Map::new()).map(Some)
}

/// Entries of build `build_id` from sequence `start` on (at most `limit`), and the total count.
pub fn list(
    conn: &Connection,
    build_id: i64,
    start: i64,
    limit: u32,
) -> Result<(i64, Vec<Entry>), BuildDbError> {
    let total: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM build_log WHERE build_id = ?1")?
        .query_row(params![build_id], |r| r.get(0))?;
    let mut stmt = conn.prepare_cached(
        "SELECT kind, message, data FROM build_log WHERE build_id = ?1 AND seq >= ?2 \
         ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![build_id, start.max(0), limit], |r| {
        Ok((
            r.get::<_, Option<String>>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (kind, message, data) = row?;
        out.push(Entry {
            message,
            kind,
            data: serde_json::from_str(&data).unwrap_or(Value::Null),
        });
    }
    Ok((total, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_and_docker_steps_are_commands() {
        for line in [
            r#"{"stream":"STEP 1/3: FROM busybox\n"}"#,
            r#"{"stream":"Step 2/3 : RUN true"}"#,
            r#"{"stream":"Step 4 : RUN true"}"#,
        ] {
            assert_eq!(classify_agent_message(line).0, Kind::Command, "{line}");
        }
        let (k, t) = classify_agent_message(r#"{"stream":"hello\n"}"#);
        assert_eq!((k, t.as_str()), (Kind::Output, "hello"));
        let (k, t) = classify_agent_message(r#"{"error":"RUN failed","stream":"x"}"#);
        assert_eq!((k, t.as_str()), (Kind::Error, "RUN failed"));
        assert_eq!(classify_agent_message("not json").1, "not json");
        assert_eq!(
            classify_agent_message(r#"{"stream":"a STEP 1/2: b"}"#).0,
            Kind::Output
        );
    }

    #[test]
    fn datetime_has_quays_shape() {
        assert_eq!(datetime(1_700_000_000_123), "2023-11-14 22:13:20.123000");
    }
}
