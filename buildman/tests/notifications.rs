//! Repository notifications end to end inside one process: build events and registry pushes
//! through the dispatcher, deliveries to a real HTTP receiver and SMTP sink on 127.0.0.1, the
//! in-app list, trigger disabling, and the REST API (`routes(state).oneshot`).
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module)]

#[path = "notifications/delivery.rs"]
mod delivery;
#[path = "notifications/dispatcher.rs"]
mod dispatcher;
#[path = "notifications/driving.rs"]
mod driving;
#[path = "notifications/pushes.rs"]
mod pushes;
#[path = "notifications/rest.rs"]
mod rest;
#[path = "notifications/support.rs"]
mod support;
#[path = "notifications/targets.rs"]
mod targets;

use std::time::Duration;

use buildman::events::{self, BuildEvent};
use buildman::model::{self, Build, JobConfig, NewBuild, Phase};
use buildman::notify::{self, delivery_rows};
use serde_json::{Value, json};
use support::{BASE, Fixture, HOST};

pub(crate) const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
pub(crate) const LIST: &str = "/api/v1/repository/acme/app/notification/";

pub(crate) fn local(c: &mut buildman::config::NotificationConfig) {
    c.allow_local_webhooks = true;
}

pub(crate) fn metadata() -> Value {
    json!({"commit": COMMIT, "ref": "refs/heads/main", "default_branch": "main",
           "git_url": "git@git.example.com:acme/app.git",
           "commit_info": {"message": "fix", "author": {"username": "ann"}}})
}

/// A trigger row of `service` and a build it started (webhook: no manual user).
pub(crate) async fn trigger_build(f: &Fixture, service: &'static str) -> (String, Build) {
    let trigger = uuid::Uuid::new_v4().to_string();
    let t = trigger.clone();
    let build = f
        .state
        .builds
        .write(move |tx| {
            tx.execute(
                "INSERT INTO build_trigger (uuid, service, repository, connected_user, \
                 public_key, secure_private_key, activated_at, created_at) \
                 VALUES (?1, ?2, 'acme/app', 'alice', 'ssh-rsa AAAA', x'00', 0, 0)",
                rusqlite::params![t, service],
            )
            .map_err(buildman::db::BuildDbError::from)?;
            model::create(
                tx,
                &NewBuild {
                    repository: "acme/app".into(),
                    display_name: COMMIT[..7].into(),
                    job_config: JobConfig {
                        docker_tags: vec!["main".into(), "latest".into()],
                        trigger_metadata: metadata(),
                        ..JobConfig::default()
                    },
                    trigger_uuid: Some(t),
                    max_retries: 3,
                    ..NewBuild::default()
                },
            )
        })
        .await
        .unwrap();
    (trigger, build)
}

/// Move `uuid` to `to` and record `event`, as the manager does in one transaction.
pub(crate) async fn change(
    f: &Fixture,
    uuid: &str,
    to: Phase,
    event: BuildEvent,
    error: Option<&str>,
) {
    let (u, e) = (uuid.to_owned(), error.map(str::to_owned));
    f.state
        .builds
        .write(move |tx| {
            if to == Phase::InternalError {
                model::close_internal_error(tx, &u, e.as_deref().unwrap_or("lost"))?;
            } else {
                assert!(model::set_phase_cas(tx, &u, None, to, e.as_deref())?);
            }
            if to == Phase::Complete {
                model::set_manifest_digests(tx, &u, &[format!("sha256:{}", "a".repeat(64))])?;
            }
            events::record(tx, &u, event, e.as_deref())
        })
        .await
        .unwrap();
}

pub(crate) async fn pending(f: &Fixture) -> Vec<delivery_rows::Delivery> {
    f.state
        .builds
        .read(|c| delivery_rows::due(c, i64::MAX, 100))
        .await
        .unwrap()
}

pub(crate) async fn failures(f: &Fixture, uuid: &str) -> i64 {
    f.call("GET", &format!("{LIST}{uuid}"), Some("alice"), None)
        .await
        .json["number_of_failures"]
        .as_i64()
        .unwrap()
}

/// (attempts, available_after, last_error) of every delivery row.
pub(crate) async fn pending_all(f: &Fixture) -> Vec<(i64, i64, Option<String>)> {
    f.state
        .builds
        .read(|c| {
            let mut s = c.prepare(
                "SELECT attempts, available_after, last_error FROM notification_delivery ORDER BY id",
            )?;
            let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(buildman::db::BuildDbError::from)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn build_event_payloads_have_quays_fields() {
    let f = Fixture::new(|_| {}).await;
    for event in [
        "build_queued",
        "build_start",
        "build_success",
        "build_failure",
        "build_cancelled",
    ] {
        f.notification(json!({"event": event, "method": "webhook",
                              "config": {"url": "https://hooks.example.com/x"}}))
            .await;
    }
    let (trigger, b) = trigger_build(&f, "github").await;
    let (_, failed) = trigger_build(&f, "github").await;
    let (_, cancelled) = trigger_build(&f, "github").await;
    change(&f, &b.uuid, Phase::Building, BuildEvent::Start, None).await;
    change(&f, &b.uuid, Phase::Complete, BuildEvent::Success, None).await;
    change(
        &f,
        &failed.uuid,
        Phase::Error,
        BuildEvent::Failure,
        Some("no Dockerfile"),
    )
    .await;
    change(
        &f,
        &cancelled.uuid,
        Phase::Cancelled,
        BuildEvent::Cancelled,
        None,
    )
    .await;
    notify::dispatch_pending(&f.parts(Duration::from_secs(30)))
        .await
        .unwrap();

    let all = pending(&f).await;
    let by = |event: &str, build: &str| -> Value {
        all.iter()
            .find(|d| d.event == event && d.payload["build_id"] == build)
            .unwrap_or_else(|| panic!("no {event} delivery for {build}"))
            .payload
            .clone()
    };
    let repo = |uuid: &str| {
        json!({"repository": "acme/app", "namespace": "acme", "name": "app",
               "docker_url": format!("{HOST}/acme/app"),
               "homepage": format!("{BASE}/repository/acme/app/build/{uuid}")})
    };
    let with = |base: Value, extra: Value| {
        let mut m = base.as_object().unwrap().clone();
        m.extend(extra.as_object().unwrap().clone());
        Value::Object(m)
    };
    assert_eq!(
        by("build_queued", &b.uuid),
        with(
            repo(&b.uuid),
            json!({"build_id": b.uuid, "docker_tags": ["main", "latest"],
            "repo": "app", "is_manual": false, "manual_user": null, "trigger_id": trigger,
            "trigger_kind": "github", "trigger_metadata": metadata(), "trigger_manual": false})
        )
    );
    let started = with(
        repo(&b.uuid),
        json!({"build_id": b.uuid, "build_name": &COMMIT[..7],
        "docker_tags": ["main", "latest"], "trigger_id": trigger, "trigger_kind": "github",
        "trigger_metadata": metadata()}),
    );
    assert_eq!(by("build_start", &b.uuid), started);
    assert_eq!(
        by("build_success", &b.uuid),
        with(
            started.clone(),
            json!({"manifest_digests":
            [format!("{HOST}/acme/app@sha256:{}", "a".repeat(64))]})
        )
    );
    let failure = by("build_failure", &failed.uuid);
    assert_eq!(failure["error_message"], "no Dockerfile");
    assert_eq!(failure["build_name"], &COMMIT[..7]);
    assert!(failure.get("manifest_digests").is_none());
    let c = by("build_cancelled", &cancelled.uuid);
    assert_eq!(
        c.as_object().unwrap().len(),
        started.as_object().unwrap().len()
    );
    assert_eq!(
        c["homepage"],
        format!("{BASE}/repository/acme/app/build/{}", cancelled.uuid)
    );
    // Every event row is gone once dispatched.
    let left = event_rows(&f).await;
    assert_eq!(left, 0);
}

#[tokio::test]
async fn ref_regex_filters_build_events_and_a_manual_build_without_ref_is_not_sent() {
    let f = Fixture::new(|_| {}).await;
    let hook = json!({"url": "https://hooks.example.com/x"});
    let main = f
        .notification(
            json!({"event": "build_start", "method": "webhook", "config": hook,
                             "eventConfig": {"ref-regex": "refs/heads/ma"}}),
        )
        .await;
    f.notification(
        json!({"event": "build_start", "method": "webhook", "config": hook,
                          "eventConfig": {"ref-regex": "refs/tags/.*"}}),
    )
    .await;
    let (_, b) = trigger_build(&f, "gitlab").await;
    change(&f, &b.uuid, Phase::Building, BuildEvent::Start, None).await;
    // A manual build has no trigger metadata and so no ref.
    let manual = f
        .state
        .builds
        .write(|tx| {
            model::create(
                tx,
                &NewBuild {
                    repository: "acme/app".into(),
                    display_name: "abc".into(),
                    manual_user: Some("carol".into()),
                    max_retries: 3,
                    ..NewBuild::default()
                },
            )
        })
        .await
        .unwrap();
    change(&f, &manual.uuid, Phase::Building, BuildEvent::Start, None).await;
    notify::dispatch_pending(&f.parts(Duration::from_secs(30)))
        .await
        .unwrap();
    let all = pending(&f).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].notification.uuid, main);
    assert_eq!(all[0].payload["build_id"], b.uuid.as_str());
    assert_eq!(all[0].payload["trigger_kind"], "gitlab");
}

#[tokio::test]
async fn trigger_builds_that_keep_failing_disable_the_trigger() {
    let f = Fixture::new(|_| {}).await;
    let parts = f.parts(Duration::from_secs(30)); // thresholds: 2 and 2
    let state = |t: String| {
        let db = f.state.builds.clone();
        async move {
            db.read(move |c| {
                c.query_row(
                    "SELECT enabled, disabled_reason, successive_failure_count, \
                     successive_internal_error_count FROM build_trigger WHERE uuid = ?1",
                    [t],
                    |r| {
                        Ok((
                            r.get::<_, bool>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    },
                )
                .map_err(buildman::db::BuildDbError::from)
            })
            .await
            .unwrap()
        }
    };
    let (t, b1) = trigger_build(&f, "custom-git").await;
    let mut builds = Vec::new();
    for _ in 0..3 {
        let id = uuid_build_of(&f, &t).await;
        builds.push(id);
    }
    change(&f, &b1.uuid, Phase::Error, BuildEvent::Failure, Some("bad")).await;
    notify::dispatch_pending(&parts).await.unwrap();
    assert_eq!(state(t.clone()).await, (true, None, 1, 0));
    // A success resets the count; an internal error counts apart.
    change(&f, &builds[0], Phase::Complete, BuildEvent::Success, None).await;
    change(
        &f,
        &builds[1],
        Phase::InternalError,
        BuildEvent::Failure,
        Some("lost agent"),
    )
    .await;
    notify::dispatch_pending(&parts).await.unwrap();
    assert_eq!(state(t.clone()).await, (true, None, 0, 1));
    change(
        &f,
        &builds[2],
        Phase::InternalError,
        BuildEvent::Failure,
        Some("lost agent"),
    )
    .await;
    notify::dispatch_pending(&parts).await.unwrap();
    assert_eq!(
        state(t.clone()).await,
        (false, Some("successive_build_internal_errors".into()), 0, 2)
    );
}

/// Another build of trigger `t`; returns its uuid.
async fn uuid_build_of(f: &Fixture, t: &str) -> String {
    let t = t.to_owned();
    f.state
        .builds
        .write(move |tx| {
            model::create(
                tx,
                &NewBuild {
                    repository: "acme/app".into(),
                    display_name: COMMIT[..7].into(),
                    trigger_uuid: Some(t),
                    max_retries: 3,
                    ..NewBuild::default()
                },
            )
        })
        .await
        .unwrap()
        .uuid
}

/// The build events not yet dispatched.
pub(crate) async fn event_rows(f: &Fixture) -> i64 {
    f.state
        .builds
        .read(|c| {
            c.query_row("SELECT COUNT(*) FROM build_event", [], |r| r.get(0))
                .map_err(buildman::db::BuildDbError::from)
        })
        .await
        .unwrap()
}
