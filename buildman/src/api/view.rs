//! Quay's build view (reference 6.1), plus Quarry's `manifest_digests` and `attempts`, and
//! Quay's trigger view (6.2).

use rusqlite::Connection;
use serde_json::{Value, json};

use crate::db::BuildDbError;
use crate::model::{Build, Phase};
use crate::queue;
use crate::trigger::{self, StoreError, Trigger};

/// What the caller may see of a build beyond the basic view.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Viewer {
    /// Write access to the repository (`is_writer`).
    pub(crate) writer: bool,
    /// May see `archive_url` (writers, or everyone with `reader_build_logs`).
    pub(crate) sees_archive: bool,
    /// Administers the repository: sees the trigger's config.
    pub(crate) admin: bool,
}

/// Quay's `trigger_view`. `admin` sees the config (with `credentials`: the deploy key, and the
/// webhook URL when `webhook_url` is given; never the webhook secret, only
/// `has_webhook_secret`). A build's view (`for_build`) has no `pull_robot`.
pub(crate) fn trigger_view(
    t: &Trigger,
    admin: bool,
    for_build: bool,
    webhook_url: Option<&str>,
) -> Value {
    let source = Some(t.build_source()).filter(|s| !s.is_empty());
    let config = if admin {
        let mut config = t.config.clone();
        let mut credentials = vec![json!({"name": "SSH Public Key", "value": t.public_key})];
        if let Some(url) = webhook_url {
            credentials.push(json!({"name": "Webhook Endpoint URL", "value": url}));
        }
        config.insert("credentials".to_owned(), Value::Array(credentials));
        config.insert(
            "has_webhook_secret".to_owned(),
            Value::Bool(t.secure_webhook_secret.is_some()),
        );
        Value::Object(config)
    } else {
        json!({})
    };
    let mut view = json!({
        "id": t.uuid,
        "service": t.service.as_str(),
        "is_active": t.is_active(),
        "build_source": source,
        "repository_url": trigger::source::repository_url(t),
        "config": config,
        "can_invoke": admin,
        "enabled": t.enabled,
        "disabled_reason": t.disabled_reason,
    });
    if !for_build {
        view["pull_robot"] = t.pull_robot.as_ref().map_or(
            Value::Null,
            |r| json!({"name": r, "kind": "user", "is_robot": true}),
        );
    }
    view
}

/// The trigger part of a build's view: `null` without a trigger or once it is deleted.
fn build_trigger_view(
    conn: &Connection,
    build: &Build,
    viewer: Viewer,
) -> Result<Value, BuildDbError> {
    let Some(uuid) = &build.trigger_uuid else {
        return Ok(Value::Null);
    };
    match trigger::store::get(conn, uuid) {
        Ok(Some(t)) => Ok(trigger_view(&t, viewer.admin, true, None)),
        Ok(None) => Ok(Value::Null),
        Err(StoreError::Db(e)) => Err(e),
        Err(e) => {
            tracing::warn!(build_id = %build.uuid, trigger = %uuid, error = %e,
                "trigger of a build is unreadable; shown as null");
            Ok(Value::Null)
        }
    }
}

/// The phase the API shows: Quay's `expired` for `internalerror` with no retry left (or no queue
/// item any more), else the stored phase.
pub(crate) fn shown_phase(conn: &Connection, build: &Build) -> Result<&'static str, BuildDbError> {
    if build.phase == Phase::InternalError {
        let left = queue::retries_remaining(conn, &build.uuid)?;
        if left.unwrap_or(0) == 0 {
            return Ok("expired");
        }
    }
    Ok(build.phase.as_str())
}

/// The JSON view of `build`. `upload_url` is the signed download URL of its upload, shown as
/// `archive_url` (Quay shows a presigned URL of the user file) when the viewer may see it.
pub(crate) fn build_view(
    conn: &Connection,
    build: &Build,
    viewer: Viewer,
    upload_url: Option<String>,
) -> Result<Value, BuildDbError> {
    let (namespace, name) = build
        .repository
        .split_once('/')
        .unwrap_or((build.repository.as_str(), ""));
    let job = &build.job_config;
    // The source may carry credentials (a signed URL, a token in a git URL, a proxy password
    // in a build argument): only those who may see Quay's `archive_url` see any of it.
    let (archive_url, git, build_args) = if viewer.sees_archive {
        (
            upload_url.or_else(|| job.archive_url.clone()),
            json!(job.git),
            json!(job.build_args),
        )
    } else {
        (None, Value::Null, Value::Null)
    };
    let pull_robot = build
        .pull_robot
        .as_ref()
        .map(|r| json!({"name": r, "kind": "user", "is_robot": true}));
    let trigger_metadata = if job.trigger_metadata.is_null() {
        json!({})
    } else {
        job.trigger_metadata.clone()
    };
    Ok(json!({
        "id": build.uuid,
        "phase": shown_phase(conn, build)?,
        "started": rfc2822_ms(build.started_ms),
        "display_name": build.display_name,
        "status": {},
        "subdirectory": job.build_subdir,
        "dockerfile_path": job.build_subdir,
        "context": job.context,
        "tags": job.docker_tags,
        "manual_user": build.manual_user,
        "is_writer": viewer.writer,
        "trigger": build_trigger_view(conn, build, viewer)?,
        "trigger_metadata": trigger_metadata,
        "resource_key": build.resource_key,
        "pull_robot": pull_robot,
        "repository": {"namespace": namespace, "name": name},
        "error": build.error,
        "archive_url": archive_url,
        "git": git,
        "build_args": build_args,
        "manifest_digests": build.manifest_digests,
        "attempts": build.attempts,
    }))
}

/// Format Unix milliseconds as RFC 2822 in UTC the way Quay does (Python's
/// `email.utils.formatdate`): `Tue, 14 Nov 2023 22:13:20 -0000`.
///
/// Built on registry-core's hand-written RFC 3339 formatter rather than a date crate: only the
/// weekday and month names are added here.
pub(crate) fn rfc2822_ms(unix_ms: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = unix_ms.max(0) / 1000;
    // 1970-01-01 was a Thursday.
    let weekday = DAYS[usize::try_from(secs / 86_400 % 7).unwrap_or(0)];
    // `YYYY-MM-DDTHH:MM:SSZ`
    let iso = registry_core::api::common::rfc3339(u64::try_from(secs).unwrap_or(0));
    let field = |r: std::ops::Range<usize>| iso.get(r).unwrap_or("00");
    let month = field(5..7)
        .parse::<usize>()
        .ok()
        .and_then(|m| MONTHS.get(m.checked_sub(1)?))
        .unwrap_or(&"Jan");
    format!(
        "{weekday}, {} {month} {} {} -0000",
        field(8..10),
        field(0..4),
        field(11..19)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_support;
    use crate::model::{self, JobConfig, NewBuild};

    #[test]
    fn rfc2822_matches_python_formatdate() {
        assert_eq!(rfc2822_ms(0), "Thu, 01 Jan 1970 00:00:00 -0000");
        assert_eq!(
            rfc2822_ms(1_700_000_000_999),
            "Tue, 14 Nov 2023 22:13:20 -0000"
        );
        assert_eq!(
            rfc2822_ms(951_782_400_000),
            "Tue, 29 Feb 2000 00:00:00 -0000"
        );
    }

    #[tokio::test]
    async fn view_has_quay_fields_and_expired_phase() {
        let (_d, db) = test_support::db();
        db.write(|c| {
            let new = NewBuild {
                repository: "acme/app".into(),
                display_name: "abc1234".into(),
                job_config: JobConfig {
                    build_subdir: "/sub/Dockerfile".into(),
                    context: "/sub".into(),
                    archive_url: Some("https://h/a.tgz".into()),
                    ..JobConfig::default()
                },
                pull_robot: Some("acme+puller".into()),
                manual_user: Some("alice".into()),
                max_retries: 1,
                ..NewBuild::default()
            };
            let b = model::create(c, &new)?;
            let reader = Viewer::default();
            let v = build_view(c, &b, reader, None)?;
            assert_eq!(v["phase"], "waiting");
            assert_eq!(v["dockerfile_path"], "/sub/Dockerfile");
            assert_eq!(v["subdirectory"], "/sub/Dockerfile");
            assert_eq!(v["context"], "/sub");
            assert_eq!(v["tags"], json!(["latest"]));
            assert_eq!(v["repository"], json!({"namespace": "acme", "name": "app"}));
            assert_eq!(v["pull_robot"]["is_robot"], true);
            assert_eq!(v["archive_url"], Value::Null);
            assert_eq!(v["trigger"], Value::Null);
            assert_eq!(v["attempts"], 0);
            let writer = Viewer {
                writer: true,
                sees_archive: true,
                admin: false,
            };
            let v = build_view(c, &b, writer, None)?;
            assert_eq!(
                (v["is_writer"].as_bool(), v["archive_url"].as_str()),
                (Some(true), Some("https://h/a.tgz"))
            );

            // internalerror with a retry left shows as such; with none left, as expired.
            model::set_phase_cas(c, &b.uuid, None, Phase::InternalError, None)?;
            let b = model::get(c, &b.uuid)?.ok_or(BuildDbError::NotFound(b.uuid.clone()))?;
            assert_eq!(shown_phase(c, &b)?, "internalerror");
            queue::claim(c, 60_000, true)?;
            assert_eq!(shown_phase(c, &b)?, "expired");
            queue::complete(c, &b.uuid)?;
            assert_eq!(shown_phase(c, &b)?, "expired");
            Ok::<_, BuildDbError>(())
        })
        .await
        .unwrap();
    }
}
