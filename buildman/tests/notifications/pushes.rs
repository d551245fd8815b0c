//! Registry pushes to `repo_push`: no replay of old pushes, and a cursor reset when the
//! registry's events are behind it.

use std::time::Duration;

use buildman::notify;
use http::StatusCode;
use serde_json::json;

use super::driving::round;
use super::support::{BASE, Fixture, HOST, Receiver};
use super::{local, pending};

/// Push a one-layer image to `acme/app` as `tag` through registry-core's `/v2/` API.
async fn push_image(f: &Fixture, tag: &str, layer: &[u8]) {
    use axum::body::Body;
    use registry_core::auth::token::{AccessEntry, Claims, ISSUER, TokenContext, now_s};
    use registry_core::digest::{Algorithm, Digest};
    use tower::ServiceExt as _;

    let state = f.state.registry.clone();
    let now = now_s();
    let token = state
        .keys
        .sign(&Claims {
            iss: ISSUER.into(),
            sub: "alice".into(),
            aud: state.config.server_hostname.clone(),
            exp: now + 600,
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            access: vec![AccessEntry {
                kind: "repository".into(),
                name: "acme/app".into(),
                actions: vec!["pull".into(), "push".into()],
            }],
            context: TokenContext {
                kind: "user".into(),
                user: Some("alice".into()),
                token_scope: None,
            },
        })
        .unwrap();
    let send = |method: &str, uri: String, ct: Option<&str>, body: Vec<u8>| {
        let mut req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {token}"));
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        registry_core::router(state.clone()).oneshot(req.body(Body::from(body)).unwrap())
    };
    let mut digests = Vec::new();
    for blob in [b"{}".as_slice(), layer] {
        let d = Digest::of(Algorithm::Sha256, blob);
        let r = send(
            "POST",
            format!("/v2/acme/app/blobs/uploads/?digest={d}"),
            None,
            blob.to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        digests.push(d);
    }
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digests[0].to_string(), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digests[1].to_string(), "size": layer.len()}]});
    let r = send(
        "PUT",
        format!("/v2/acme/app/manifests/{tag}"),
        Some("application/vnd.oci.image.manifest.v1+json"),
        manifest.to_string().into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn registry_pushes_become_repo_push_without_replaying_old_ones() {
    let f = Fixture::new(local).await;
    let rx = Receiver::start().await;
    f.notification(json!({"event": "repo_push", "method": "webhook", "config": {"url": rx.url}}))
        .await;
    // Pushed before the loops ever ran: not replayed at their first start.
    push_image(&f, "old", b"layer one").await;
    let parts = f.parts(Duration::from_secs(30));
    notify::dispatch_pending(&parts).await.unwrap();
    assert!(pending(&f).await.is_empty());

    push_image(&f, "v1", b"layer two").await;
    notify::dispatch_pending(&parts).await.unwrap();
    notify::dispatch_pending(&parts).await.unwrap();
    assert_eq!(round(&parts).await, 1);
    assert_eq!(
        rx.all().into_iter().map(|r| r.body).collect::<Vec<_>>(),
        vec![
            json!({"repository": "acme/app", "namespace": "acme", "name": "app",
                    "docker_url": format!("{HOST}/acme/app"),
                    "homepage": format!("{BASE}/repository/acme/app"),
                    "updated_tags": ["v1"]})
        ]
    );
}

#[tokio::test]
async fn a_registry_database_behind_the_cursor_resets_it_with_a_warning() {
    let f = Fixture::new(local).await;
    f.notification(json!({"event": "repo_push", "method": "webhook",
                          "config": {"url": "http://127.0.0.1:9/hook"}}))
        .await;
    push_image(&f, "v1", b"layer one").await;
    // The registry database was restored from an older backup: the cursor is past its rows.
    f.state
        .builds
        .write(|tx| {
            tx.execute(
                "INSERT INTO buildman_state (name, value) VALUES (?1, 10000)",
                rusqlite::params![notify::push::CURSOR],
            )
            .map_err(buildman::db::BuildDbError::from)
        })
        .await
        .unwrap();
    let parts = f.parts(Duration::from_secs(30));
    notify::dispatch_pending(&parts).await.unwrap();
    let cursor = f.state.builds.read(notify::push::cursor).await.unwrap();
    let newest: i64 = f
        .state
        .registry
        .db
        .read(|c| {
            c.query_row("SELECT MAX(id) FROM repo_event", [], |r| r.get(0))
                .map_err(buildman::db::BuildDbError::from)
        })
        .await
        .unwrap();
    assert_eq!(cursor, Some(newest));
    assert!(pending(&f).await.is_empty());
    // Pushes after the reset are announced again.
    push_image(&f, "v2", b"layer two").await;
    notify::dispatch_pending(&parts).await.unwrap();
    let queued = pending(&f).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].payload["updated_tags"], json!(["v2"]));
}
