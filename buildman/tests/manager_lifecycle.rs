//! A build through the manager with fake agents on the real gRPC protocol: phases and log
//! entries in order, the build pack, credentials, user errors vs infrastructure errors, sequence
//! numbers and the cached tag.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module, missing_docs)]

mod manager_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildman::model::Phase;
use buildman_proto::{BuildPackSource, CachedTagRequest, Phase as P, SetPhaseRequest};
use manager_support::{
    FakeAgent, FakeExecutor, Harness, REPO, ROBOT, WAIT, completing_agent, fast_settings,
    registering_agent,
};
use registry_core::accounts::tokens;

#[tokio::test]
async fn a_build_goes_from_waiting_to_complete_with_phase_entries_in_order() {
    let exec = FakeExecutor::new("a", 0, completing_agent());
    let mut h = Harness::new(fast_settings(), vec![Arc::clone(&exec)]).await;
    h.run();
    let build = h.submit(REPO).await;
    assert_eq!(build.phase, Phase::Waiting);
    let done = h.wait_phase(&build.uuid, Phase::Complete, WAIT).await;
    assert_eq!(
        done.manifest_digests,
        vec![format!("sha256:{}", "a".repeat(64))]
    );
    assert_eq!(done.attempts, 1);
    assert!(done.completed_ms.is_some() && done.error.is_none());
    assert_eq!(
        h.phases(&build.uuid).await,
        [
            "build-scheduled",
            "unpacking",
            "pulling",
            "building",
            "pushing",
            "complete"
        ]
    );
    let log = h.log(&build.uuid).await;
    assert!(
        log.contains(&(Some("command".into()), "STEP 1/2: FROM busybox".into())),
        "{log:?}"
    );
    assert!(log.contains(&(None, "hello from RUN".into())), "{log:?}");
    // The queue item is gone, the worker stopped, the build's registry tokens deleted.
    assert_eq!(h.retries(&build.uuid).await, None);
    manager_support::wait_for("the worker to be stopped", WAIT, || async {
        (exec.stop_count() == 1).then_some(())
    })
    .await;
    let leftover = h
        .registry
        .db
        .read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM access_token WHERE title LIKE 'build:%'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(registry_core::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(leftover, 0);
    h.shutdown().await;
}

#[tokio::test]
async fn the_pulling_entry_carries_pull_metadata_and_the_start_job_carries_the_token() {
    let exec = FakeExecutor::new("a", 0, completing_agent());
    let mut h = Harness::new(fast_settings(), vec![Arc::clone(&exec)]).await;
    h.run();
    let build = h.submit(REPO).await;
    h.wait_phase(&build.uuid, Phase::Complete, WAIT).await;
    let id = build.id;
    let (_, entries) = h
        .builds
        .read(move |c| buildman::logs::list(c, id, 0, 100))
        .await
        .unwrap();
    let pulling = entries.iter().find(|e| e.message == "pulling").unwrap();
    assert_eq!(pulling.data["base_image"], "busybox");
    assert_eq!(pulling.data["registry_url"], "localhost:5000");
    assert!(
        pulling.data.get("pull_username").is_none(),
        "empty fields are omitted"
    );
    let job = exec.starts.lock().unwrap()[0].clone();
    assert_eq!(job.build_uuid, build.uuid);
    assert_eq!(job.grpc_server, h.addr.to_string());
    assert_eq!(job.registry_hostname, "localhost:5000");
    h.shutdown().await;
}

#[tokio::test]
async fn registration_hands_out_quays_build_pack_with_scoped_credentials() {
    let packs = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&packs);
    let exec = FakeExecutor::new(
        "a",
        0,
        registering_agent(move |agent| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(agent.pack.clone());
            }
        }),
    );
    let mut h = Harness::new(fast_settings(), vec![exec]).await;
    h.run();
    let build = h
        .submit_with(REPO, |b| {
            b.pull_robot = Some(ROBOT.into());
            b.job_config.build_args = [("VERSION".to_owned(), "1.2".to_owned())].into();
        })
        .await;
    let pack = manager_support::wait_for("registration", WAIT, || async {
        packs.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(
        pack.build_pack,
        Some(BuildPackSource::PackageUrl(
            "http://archive.test/src.tar.gz".into()
        ))
    );
    assert_eq!(
        (pack.context.as_str(), pack.dockerfile_path.as_str()),
        ("/sub", "Dockerfile")
    );
    assert_eq!(
        (pack.repository.as_str(), pack.registry.as_str()),
        (REPO, "localhost:5000")
    );
    assert_eq!(pack.tag_names, ["latest", "v1"]);
    assert_eq!(pack.build_args["VERSION"], "1.2");
    assert_eq!(pack.pull_token, pack.push_token);
    assert!(!pack.job_jwt.is_empty());

    // The push token writes the build's repository only; the robot's is read-capped.
    let (push, robot_pw) = (pack.push_token.clone(), pack.base_image.clone().unwrap());
    assert_eq!(robot_pw.username, ROBOT);
    let (push_scope, robot_scope) = h
        .registry
        .db
        .read(move |c| {
            let p = tokens::check(c, &push)?.unwrap();
            let r = tokens::check(c, &robot_pw.password)?.unwrap();
            Ok::<_, registry_core::accounts::AccountError>((p, r))
        })
        .await
        .unwrap();
    assert_eq!(push_scope.account.name, "alice");
    let scope = push_scope.scope.unwrap();
    assert_eq!(scope.repository.unwrap().as_str(), REPO);
    assert_eq!(scope.max_role.as_str(), "write");
    assert!(scope.expires_at_ms.is_some());
    assert_eq!(robot_scope.account.name, ROBOT);
    assert_eq!(robot_scope.scope.unwrap().max_role.as_str(), "read");

    // An uploaded package gets the signed download URL instead.
    let upload = h
        .submit_with(manager_support::OTHER_REPO, |b| {
            b.job_config.archive_url = None;
            b.resource_key = Some("file-1".into());
        })
        .await;
    let pack = manager_support::wait_for("second registration", WAIT, || async {
        packs.lock().unwrap().get(1).cloned()
    })
    .await;
    assert_eq!(
        pack.build_pack,
        Some(BuildPackSource::PackageUrl(
            "http://files.test/file-1?sig=x".into()
        ))
    );
    assert_eq!(h.build(&build.uuid).await.phase, Phase::BuildScheduled);
    assert_eq!(h.build(&upload.uuid).await.phase, Phase::BuildScheduled);
    h.shutdown().await;
}

#[tokio::test]
async fn a_user_error_ends_the_build_as_error_without_retry() {
    let exec = FakeExecutor::new(
        "a",
        0,
        registering_agent(|mut agent| async move {
            assert!(agent.phase(P::Unpacking).await);
            assert!(agent.phase(P::Building).await);
            let r = agent
                .set_phase(SetPhaseRequest {
                    phase: P::Error as i32,
                    error_message: "RUN exit 3: no such file".into(),
                    retryable: false,
                    ..SetPhaseRequest::default()
                })
                .await;
            assert!(r.success);
        }),
    );
    let mut h = Harness::new(fast_settings(), vec![Arc::clone(&exec)]).await;
    h.run();
    let build = h.submit(REPO).await;
    let b = h.wait_phase(&build.uuid, Phase::Error, WAIT).await;
    assert_eq!(b.error.as_deref(), Some("RUN exit 3: no such file"));
    assert!(b.completed_ms.is_some());
    assert_eq!(h.retries(&build.uuid).await, None, "queue item completed");
    let log = h.log(&build.uuid).await;
    assert!(
        log.contains(&(Some("error".into()), "RUN exit 3: no such file".into())),
        "{log:?}"
    );
    assert_eq!(
        h.phases(&build.uuid).await,
        ["build-scheduled", "unpacking", "building", "error"]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(exec.start_count(), 1, "never retried");
    h.shutdown().await;
}

#[tokio::test]
async fn a_retryable_agent_error_is_retried_and_the_retry_can_complete() {
    let failing = registering_agent(|mut agent| async move {
        assert!(agent.phase(P::Unpacking).await);
        let r = agent
            .set_phase(SetPhaseRequest {
                phase: P::Error as i32,
                error_message: "engine unreachable".into(),
                retryable: true,
                ..SetPhaseRequest::default()
            })
            .await;
        assert!(r.success);
    });
    // The first attempt fails with an infrastructure error, the second completes.
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let completing = completing_agent();
    let exec = FakeExecutor::new(
        "a",
        0,
        Arc::new(move |job, addr| {
            if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                failing(job, addr)
            } else {
                completing(job, addr)
            }
        }),
    );
    let mut h = Harness::new(fast_settings(), vec![Arc::clone(&exec)]).await;
    h.run();
    let build = h.submit(REPO).await;
    let b = h.wait_phase(&build.uuid, Phase::Complete, WAIT).await;
    assert_eq!(b.attempts, 2);
    assert_eq!(exec.start_count(), 2);
    assert_eq!(b.error, None, "a completed retry forgets the first failure");
    let log = h.log(&build.uuid).await;
    let failure = log
        .iter()
        .find(|(k, m)| k.as_deref() == Some("error") && m.contains("engine unreachable"))
        .unwrap();
    assert!(failure.1.contains("attempt 1 failed"), "{failure:?}");
    assert_eq!(
        h.phases(&build.uuid).await,
        [
            "build-scheduled",
            "unpacking",
            "internalerror",
            "build-scheduled",
            "unpacking",
            "pulling",
            "building",
            "pushing",
            "complete"
        ]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn stale_sequence_numbers_and_manager_only_phases_are_refused() {
    let results = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&results);
    let exec = FakeExecutor::new(
        "a",
        0,
        registering_agent(move |mut agent| {
            let out = Arc::clone(&out);
            async move {
                let mut r = Vec::new();
                let send = |seq, phase: P| SetPhaseRequest {
                    sequence_number: seq,
                    phase: phase as i32,
                    ..SetPhaseRequest::default()
                };
                r.push(agent.set_phase(send(5, P::Unpacking)).await.success);
                r.push(agent.set_phase(send(5, P::Pulling)).await.success); // replay
                r.push(agent.set_phase(send(4, P::Pulling)).await.success); // older
                r.push(agent.set_phase(send(6, P::Unpacking)).await.success); // same phase: no-op
                let resp = agent.set_phase(send(7, P::Waiting)).await;
                r.push(resp.success);
                r.push(resp.sequence_number == 7);
                out.lock().unwrap().extend(r);
            }
        }),
    );
    let mut h = Harness::new(fast_settings(), vec![exec]).await;
    h.run();
    let build = h.submit(REPO).await;
    let r = manager_support::wait_for("the phase calls", WAIT, || async {
        let r = results.lock().unwrap().clone();
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(r, [true, false, false, true, false, true]);
    assert_eq!(h.build(&build.uuid).await.phase, Phase::Unpacking);
    assert_eq!(
        h.phases(&build.uuid).await,
        ["build-scheduled", "unpacking"]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn the_cached_tag_is_the_builds_own_tag_or_the_newest() {
    let tags = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&tags);
    let exec = FakeExecutor::new(
        "a",
        0,
        registering_agent(move |mut agent| {
            let out = Arc::clone(&out);
            async move {
                let jwt = agent.pack.job_jwt.clone();
                let tag = agent
                    .client
                    .determine_cached_tag(CachedTagRequest {
                        job_jwt: jwt,
                        base_image_name: "ignored".into(),
                        ..CachedTagRequest::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .cached_tag;
                out.lock().unwrap().push(tag);
            }
        }),
    );
    let mut h = Harness::new(fast_settings(), vec![exec]).await;
    // alice/app has tags "old" (older) and "v1" (one of the build's tags); alice/other has
    // "old" and "newer".
    h.registry
        .db
        .write(|tx| {
            for (repo, tag, at) in [
                ("alice/app", "old", 1),
                ("alice/app", "v1", 0),
                ("alice/other", "old", 1),
                ("alice/other", "newer", 2),
            ] {
                tx.execute(
                    "INSERT INTO tag (repository_id, name, manifest_digest, lifetime_start_ms) \
                     SELECT id, ?2, 'sha256:00', ?3 FROM repository WHERE name = ?1",
                    rusqlite::params![repo, tag, at],
                )
                .map_err(registry_core::db::DbError::from)?;
            }
            Ok::<_, registry_core::db::DbError>(())
        })
        .await
        .unwrap();
    h.run();
    h.submit(REPO).await;
    h.submit(manager_support::OTHER_REPO).await;
    let got = manager_support::wait_for("both cached tags", WAIT, || async {
        let t = tags.lock().unwrap().clone();
        (t.len() == 2).then_some(t)
    })
    .await;
    let mut got = got;
    got.sort();
    assert_eq!(got, ["newer", "v1"]);
    // Ping needs no token.
    let mut client = FakeAgent::client(h.addr).await;
    let pong = client
        .ping(buildman_proto::PingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pong.reply, "pong");
    h.shutdown().await;
}
