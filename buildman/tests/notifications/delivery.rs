//! Deliveries: the running loops, retries and backoff, the stop after three failures, timeouts,
//! restarts, Slack and e-mail.

use std::time::Duration;

use buildman::config::MailConfig;
use buildman::events::BuildEvent;
use buildman::model::Phase;
use buildman::notify::{self, deliver};
use http::StatusCode;
use registry_core::db::now_ms;
use serde_json::json;

use super::driving::{Loops, drained, eventually, make_all_due, round};
use super::support::{BASE, Fixture, HOST, Mode, Receiver, SmtpSink};
use super::{LIST, change, failures, local, metadata, pending, pending_all, trigger_build};

#[tokio::test]
async fn the_running_loops_post_the_exact_event_data_and_templates() {
    let f = Fixture::new(local).await;
    let rx = Receiver::start().await;
    f.notification(json!({"event": "build_queued", "method": "webhook",
                          "config": {"url": rx.url}}))
        .await;
    f.notification(json!({"event": "build_queued", "method": "webhook", "config": {"url": rx.url,
        "template": r#"{"text": "queued ${build_id} of ${repository}", "tags": "${docker_tags}"}"#}}))
        .await;
    let task = Loops::start(&f);
    let (trigger, b) = trigger_build(&f, "bitbucket").await;
    eventually(Duration::from_secs(10), async || {
        (rx.count() == 2).then_some(())
    })
    .await;
    let got = rx.all();
    let plain = got
        .iter()
        .find(|r| r.body.get("build_id").is_some())
        .unwrap();
    assert_eq!(plain.path, "/hook");
    assert_eq!(plain.content_type, "application/json");
    assert_eq!(
        plain.body,
        json!({"repository": "acme/app", "namespace": "acme", "name": "app",
               "docker_url": format!("{HOST}/acme/app"),
               "homepage": format!("{BASE}/repository/acme/app/build/{}", b.uuid),
               "build_id": b.uuid, "docker_tags": ["main", "latest"], "repo": "app",
               "is_manual": false, "manual_user": null, "trigger_id": trigger,
               "trigger_kind": "bitbucket", "trigger_metadata": metadata(),
               "trigger_manual": false})
    );
    let templated = got.iter().find(|r| r.body.get("text").is_some()).unwrap();
    assert_eq!(
        templated.body,
        json!({"text": format!("queued {} of acme/app", b.uuid), "tags": ["main", "latest"]})
    );
    drained(&f).await;
    task.stop().await;
}

#[tokio::test]
async fn failures_back_off_stop_the_notification_at_three_and_reset_restarts_it() {
    let f = Fixture::new(local).await;
    let rx = Receiver::start().await;
    rx.set(Mode::Fail);
    let uuid = f
        .notification(json!({"event": "build_success", "method": "webhook",
                             "config": {"url": rx.url}}))
        .await;
    let base = Duration::from_secs(60);
    let parts = f.parts(base);
    let ctx = notify::context(&parts).unwrap();
    let test = format!("{LIST}{uuid}/test");
    let r = f.call("POST", &test, Some("alice"), None).await;
    assert_eq!((r.status, r.json.clone()), (StatusCode::OK, json!({})));

    // The retry times are checked against the rows' `available_after`, bracketed by the clock
    // before and after the round; instead of sleeping, a test makes the row due again.
    let schedule = || async {
        let d = pending_all(&f).await;
        d.first().cloned()
    };
    let make_due = || make_all_due(&f);
    let base_ms = i64::try_from(base.as_millis()).unwrap();
    let before = now_ms();
    assert_eq!(deliver::round(&ctx, base).await.unwrap(), 1);
    let after = now_ms();
    assert_eq!((rx.count(), failures(&f, &uuid).await), (1, 1));
    let (attempts, at, error) = schedule().await.unwrap();
    assert_eq!(attempts, 1);
    assert!(
        (before + base_ms..=after + base_ms).contains(&at),
        "first retry after the base: {at} not in {}..={}",
        before + base_ms,
        after + base_ms
    );
    assert!(error.unwrap().contains("answered 500"));
    // Not due before `at` (the round's clock is before it unless the machine stalled for the
    // whole base; the row says when).
    if now_ms() < at {
        assert_eq!(deliver::round(&ctx, base).await.unwrap(), 0, "not due yet");
    }

    make_due().await;
    let before = now_ms();
    assert_eq!(deliver::round(&ctx, base).await.unwrap(), 1);
    let after = now_ms();
    assert_eq!((rx.count(), failures(&f, &uuid).await), (2, 2));
    let (attempts, at, _) = schedule().await.unwrap();
    assert_eq!(attempts, 2);
    assert!(
        (before + 2 * base_ms..=after + 2 * base_ms).contains(&at),
        "second retry after twice the base: {at} not in {}..={}",
        before + 2 * base_ms,
        after + 2 * base_ms
    );

    make_due().await;
    assert_eq!(deliver::round(&ctx, base).await.unwrap(), 1);
    assert_eq!((rx.count(), failures(&f, &uuid).await), (3, 3));
    assert!(
        schedule().await.is_none(),
        "stopped: pending deliveries dropped"
    );

    // Stopped: new events are not queued, and a queued test is dropped unsent.
    let (_, b) = trigger_build(&f, "github").await;
    change(&f, &b.uuid, Phase::Complete, BuildEvent::Success, None).await;
    notify::dispatch_pending(&parts).await.unwrap();
    assert!(pending(&f).await.is_empty());
    f.call("POST", &test, Some("alice"), None).await;
    deliver::round(&ctx, base).await.unwrap();
    assert_eq!(rx.count(), 3);
    assert!(pending(&f).await.is_empty());

    // Reset (Quay's POST on the notification) and it works again.
    rx.set(Mode::Ok);
    let r = f
        .call("POST", &format!("{LIST}{uuid}"), Some("alice"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(failures(&f, &uuid).await, 0);
    f.call("POST", &test, Some("alice"), None).await;
    assert_eq!(deliver::round(&ctx, base).await.unwrap(), 1);
    assert_eq!(rx.count(), 4);
    assert_eq!(
        rx.all()[3].body["build_id"],
        "00000000-0000-4000-8000-000000000000"
    );
    assert!(pending(&f).await.is_empty());
}

#[tokio::test]
async fn a_receiver_that_hangs_times_out_and_counts_as_a_failure() {
    let f = Fixture::new(|c| {
        c.allow_local_webhooks = true;
        c.send_timeout = Duration::from_millis(500);
    })
    .await;
    let rx = Receiver::start().await;
    rx.set(Mode::Hang);
    let uuid = f
        .notification(json!({"event": "repo_push", "method": "webhook", "config": {"url": rx.url}}))
        .await;
    f.call("POST", &format!("{LIST}{uuid}/test"), Some("alice"), None)
        .await;
    let parts = f.parts(Duration::from_secs(30));
    let ctx = notify::context(&parts).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        deliver::round(&ctx, parts.settings.retry_base)
            .await
            .unwrap(),
        1
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((rx.count(), failures(&f, &uuid).await), (1, 1));
    let rows = pending_all(&f).await;
    let error = rows[0].2.clone().unwrap();
    assert!(error.contains("POST to 127.0.0.1 failed"), "{error}");
    // The URL may hold a secret (Slack's token, user:password): never stored or logged.
    assert!(!error.contains("/hook"), "{error}");
}

#[tokio::test]
async fn a_delivery_cut_short_by_a_shutdown_is_sent_after_its_lease_ends() {
    let f = Fixture::new(local).await;
    let rx = Receiver::start().await;
    rx.set(Mode::Hang);
    let uuid = f
        .notification(json!({"event": "repo_push", "method": "webhook", "config": {"url": rx.url}}))
        .await;
    f.call("POST", &format!("{LIST}{uuid}/test"), Some("alice"), None)
        .await;
    let first = Loops::start(&f);
    eventually(Duration::from_secs(10), async || {
        (rx.count() == 1).then_some(())
    })
    .await;
    first.stop().await;
    // The attempt was cut short: nothing recorded but the lease (send timeout 5 s + 30 s), which
    // keeps another process from sending it meanwhile.
    let rows = pending_all(&f).await;
    assert_eq!(rows.len(), 1);
    let (attempts, leased_until, error) = rows[0].clone();
    assert_eq!((attempts, error), (0, None));
    assert!(
        leased_until > now_ms() + 20_000,
        "leased until {leased_until}, now {}",
        now_ms()
    );
    assert_eq!(failures(&f, &uuid).await, 0);
    // The lease ends (simulated: rewound), and the next process sends it.
    make_all_due(&f).await;
    rx.set(Mode::Ok);
    let second = Loops::start(&f);
    eventually(Duration::from_secs(10), async || {
        (rx.count() == 2).then_some(())
    })
    .await;
    drained(&f).await;
    assert_eq!(rx.all()[1].body["updated_tags"], json!(["latest"]));
    second.stop().await;
}

#[tokio::test]
async fn slack_messages_reach_the_receiver_in_slacks_shape() {
    let f = Fixture::new(local).await;
    let rx = Receiver::start().await;
    let uuid = f
        .notification(
            json!({"event": "build_failure", "method": "slack", "config": {"url": rx.url}}),
        )
        .await;
    f.call("POST", &format!("{LIST}{uuid}/test"), Some("alice"), None)
        .await;
    let parts = f.parts(Duration::from_secs(30));
    round(&parts).await;
    let body = rx.all().remove(0).body;
    let text = "Build 0123456 for acme/app failed: a sample build error";
    assert_eq!(body["text"], text);
    assert_eq!(body["username"], "quayiobot");
    let a = &body["attachments"][0];
    assert_eq!(
        (a["fallback"].as_str(), a["color"].as_str()),
        (Some(text), Some("danger"))
    );
    assert_eq!(a["mrkdwn_in"], json!(["text"]));
    assert!(a["text"].as_str().unwrap().contains(&format!(
        "<{BASE}/repository/acme/app/build/00000000-0000-4000-8000-000000000000|Open in Quarry>"
    )));
}

#[tokio::test]
async fn email_goes_through_smtp_with_subject_and_summary() {
    let sink = SmtpSink::start().await;
    let port = sink.port;
    let f = Fixture::new(move |c| {
        c.mail = Some(MailConfig {
            server: "127.0.0.1".into(),
            port,
            use_tls: false,
            auth: None,
            sender: Some("builds@quarry.test".into()),
        });
    })
    .await;
    let uuid = f
        .notification(json!({"event": "build_success", "method": "email",
                             "config": {"email": "ops@example.com"}}))
        .await;
    f.call("POST", &format!("{LIST}{uuid}/test"), Some("alice"), None)
        .await;
    let parts = f.parts(Duration::from_secs(30));
    assert_eq!(round(&parts).await, 1);
    assert!(pending(&f).await.is_empty(), "{:?}", pending_all(&f).await);
    let mail = sink.mails.lock().unwrap().remove(0);
    assert_eq!(mail.from, "<builds@quarry.test>");
    assert_eq!(mail.to, vec!["<ops@example.com>"]);
    assert!(
        mail.data
            .contains("Subject: Build 0123456 for acme/app completed"),
        "{}",
        mail.data
    );
    assert!(mail.data.contains("To: ops@example.com"), "{}", mail.data);
    assert!(
        mail.data
            .contains("Build 0123456 for acme/app completed.\n"),
        "{}",
        mail.data
    );
    assert!(mail.data.contains("Tags: latest"), "{}", mail.data);
}

#[tokio::test]
async fn one_delivery_per_notification_in_flight_so_failures_stop_at_three() {
    let f = Fixture::new(local).await;
    let rx = Receiver::start().await;
    rx.set(Mode::Fail);
    let uuid = f
        .notification(json!({"event": "repo_push", "method": "webhook", "config": {"url": rx.url}}))
        .await;
    for _ in 0..5 {
        f.call("POST", &format!("{LIST}{uuid}/test"), Some("alice"), None)
            .await;
    }
    // No wait between retries: every round may attempt whatever is due.
    let parts = f.parts(Duration::ZERO);
    let ctx = notify::context(&parts).unwrap();
    for _ in 0..10 {
        deliver::round(&ctx, Duration::ZERO).await.unwrap();
    }
    assert_eq!(failures(&f, &uuid).await, 3);
    assert_eq!(rx.count(), 3, "one attempt at a time, stopped at the third");
    assert!(pending(&f).await.is_empty());
}
