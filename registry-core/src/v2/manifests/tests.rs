//! Component tests of the manifest endpoints.

use super::super::test_support::*;
use super::*;
use crate::manifest::{DOCKER_MANIFEST, OCI_INDEX};

fn sha256(bytes: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, bytes)
}

#[tokio::test]
async fn put_then_get_and_head_by_tag_and_digest() {
    let h = Harness::new().await;
    let m = h.image("acme/app", b"cfg", &[b"l1", b"l2"], "").await;
    let d = sha256(&m);
    let r = h
        .put_manifest("acme/app", "latest", OCI_MANIFEST_TYPE, &m)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/acme/app/manifests/{d}").as_str())
    );
    assert!(r.header("oci-subject").is_none());
    for reference in ["latest".to_owned(), d.to_string()] {
        let g = h.get(&format!("/v2/acme/app/manifests/{reference}")).await;
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(g.body.as_ref(), m.as_slice(), "exact bytes");
        assert_eq!(g.header("content-type"), Some(OCI_MANIFEST_TYPE));
        assert_eq!(
            g.header("docker-content-digest"),
            Some(d.to_string().as_str())
        );
        let uri = format!("/v2/acme/app/manifests/{reference}");
        let hd = h
            .send(
                h.authed("HEAD", &uri, &["pull"])
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(hd.status, StatusCode::OK);
        assert_eq!(
            hd.header("content-length"),
            Some(m.len().to_string().as_str())
        );
        assert!(hd.body.is_empty());
    }
    let r = h.get("/v2/acme/app/manifests/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    // The push was recorded for buildman.
    let payload: String = h
        .state
        .db
        .read(|c| {
            c.query_row(
                "SELECT payload FROM repo_event WHERE kind = 'push'",
                [],
                |r| r.get(0),
            )
            .map_err(DbError::from)
        })
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(v["repository"], "acme/app");
    assert_eq!(v["digest"], d.to_string());
    assert_eq!(v["tags"], serde_json::json!(["latest"]));
    assert_eq!(v["media_type"], OCI_MANIFEST_TYPE);
    assert_eq!(v["pusher"], "alice");
}

#[tokio::test]
async fn missing_blobs_are_manifest_blob_unknown() {
    let h = Harness::new().await;
    let m = h.image("acme/app", b"cfg", &[b"layer"], "").await;
    // The same manifest in a repository that does not hold the blobs.
    let r = h
        .put_manifest("acme/other", "v1", OCI_MANIFEST_TYPE, &m)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN");
    let detail = r.json()["errors"][0]["detail"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail == sha256(b"cfg").to_string() || detail == sha256(b"layer").to_string());
    let r = h.get("/v2/acme/other/manifests/v1").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn missing_subject_is_accepted_with_oci_subject() {
    let h = Harness::new().await;
    let subject = sha256(b"not pushed yet");
    let m = h
        .image(
            "acme/app",
            b"{}",
            &[b"sig"],
            &format!(
                r#","subject":{{"mediaType":"{OCI_MANIFEST_TYPE}","digest":"{subject}","size":7}}"#
            ),
        )
        .await;
    let d = sha256(&m);
    let r = h
        .put_manifest("acme/app", &d.to_string(), OCI_MANIFEST_TYPE, &m)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.header("oci-subject"), Some(subject.to_string().as_str()));
}

#[tokio::test]
async fn index_needs_its_children() {
    let h = Harness::new().await;
    let child = h.image("acme/app", b"cfg", &[b"layer"], "").await;
    let cd = sha256(&child);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST_TYPE}","digest":"{cd}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        child.len()
    );
    let r = h
        .put_manifest("acme/app", "multi", OCI_INDEX, index.as_bytes())
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN");
    h.put_manifest("acme/app", &cd.to_string(), OCI_MANIFEST_TYPE, &child)
        .await;
    let r = h
        .put_manifest("acme/app", "multi", OCI_INDEX, index.as_bytes())
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let g = h.get("/v2/acme/app/manifests/multi").await;
    assert_eq!(g.header("content-type"), Some(OCI_INDEX));
}

#[tokio::test]
async fn invalid_manifests_are_refused() {
    let h = Harness::new().await;
    let m = h.image("acme/app", b"cfg", &[b"layer"], "").await;
    // By-digest PUT whose body has another digest.
    let r = h
        .put_manifest("acme/app", &sha256(b"x").to_string(), OCI_MANIFEST_TYPE, &m)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "DIGEST_INVALID");
    // Content-Type contradicting the body, garbage, unsupported types.
    let r = h.put_manifest("acme/app", "v1", DOCKER_MANIFEST, &m).await;
    assert_eq!(r.code(), "MANIFEST_INVALID");
    let r = h
        .put_manifest("acme/app", "v1", OCI_MANIFEST_TYPE, b"{not json")
        .await;
    assert_eq!(r.code(), "MANIFEST_INVALID");
    let v1 = br#"{"schemaVersion":1,"name":"acme/app"}"#;
    let r = h
        .put_manifest(
            "acme/app",
            "v1",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            v1,
        )
        .await;
    assert_eq!(r.code(), "MANIFEST_INVALID");
    // Without a usable Content-Type the body's mediaType decides.
    let r = h
        .put_manifest("acme/app", "v1", "application/json", &m)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        h.get("/v2/acme/app/manifests/v1")
            .await
            .header("content-type"),
        Some(OCI_MANIFEST_TYPE)
    );
}

#[tokio::test]
async fn oversized_manifest_is_413() {
    let h = Harness::new().await;
    let limit = h.state.config.maximum_manifest_size;
    let pad = "x".repeat(usize::try_from(limit).unwrap());
    let m = h
        .image(
            "acme/app",
            b"cfg",
            &[],
            &format!(r#","annotations":{{"pad":"{pad}"}}"#),
        )
        .await;
    let r = h
        .put_manifest("acme/app", "big", OCI_MANIFEST_TYPE, &m)
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = h
        .send(
            h.authed("PUT", "/v2/acme/app/manifests/big", &[])
                .header("content-type", OCI_MANIFEST_TYPE)
                .header("content-length", (limit + 1).to_string())
                .body(Body::from(vec![b' '; usize::try_from(limit).unwrap() + 1]))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn tags_move_and_query_tags_are_echoed() {
    let h = Harness::new().await;
    let m1 = h.image("acme/app", b"cfg1", &[b"a"], "").await;
    let m2 = h.image("acme/app", b"cfg2", &[b"b"], "").await;
    h.put_manifest("acme/app", "latest", OCI_MANIFEST_TYPE, &m1)
        .await;
    h.put_manifest("acme/app", "latest", OCI_MANIFEST_TYPE, &m2)
        .await;
    assert_eq!(
        h.get("/v2/acme/app/manifests/latest").await.body.as_ref(),
        m2.as_slice()
    );
    // The old tag row is history, not deleted.
    let (live, ended): (i64, i64) = h
        .state
        .db
        .read(|c| {
            c.query_row(
                "SELECT SUM(lifetime_end_ms IS NULL), SUM(lifetime_end_ms IS NOT NULL) FROM tag",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(DbError::from)
        })
        .await
        .unwrap();
    assert_eq!((live, ended), (1, 1));
    let d1 = sha256(&m1);
    let uri = format!("/v2/acme/app/manifests/{d1}?tag=stable&tag=v1&tag=stable");
    let r = h
        .send(
            h.authed("PUT", &uri, &[])
                .header("content-type", OCI_MANIFEST_TYPE)
                .body(Body::from(m1.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let echoed: Vec<_> = r
        .headers
        .get_all("oci-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(echoed, ["stable", "v1"]);
    assert_eq!(
        h.get("/v2/acme/app/manifests/v1").await.body.as_ref(),
        m1.as_slice()
    );
}

#[tokio::test]
async fn delete_by_tag_and_by_digest() {
    let h = Harness::new().await;
    let m = h.image("acme/app", b"cfg", &[b"layer"], "").await;
    let d = sha256(&m);
    h.put_manifest("acme/app", "a", OCI_MANIFEST_TYPE, &m).await;
    h.put_manifest("acme/app", "b", OCI_MANIFEST_TYPE, &m).await;
    let del = |reference: String| {
        let uri = format!("/v2/acme/app/manifests/{reference}");
        h.send(h.authed("DELETE", &uri, &[]).body(Body::empty()).unwrap())
    };
    // By tag: only that tag goes.
    assert_eq!(del("a".into()).await.status, StatusCode::ACCEPTED);
    assert_eq!(
        h.get("/v2/acme/app/manifests/a").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.get("/v2/acme/app/manifests/b").await.status,
        StatusCode::OK
    );
    assert_eq!(del("a".into()).await.code(), "MANIFEST_UNKNOWN");
    // By digest: the manifest and its remaining tags.
    assert_eq!(del(d.to_string()).await.status, StatusCode::ACCEPTED);
    let r = h.get(&format!("/v2/acme/app/manifests/{d}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    assert_eq!(
        h.get("/v2/acme/app/manifests/b").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.get("/v2/acme/app/tags/list").await.json()["tags"],
        serde_json::json!([])
    );
    assert_eq!(del(d.to_string()).await.status, StatusCode::NOT_FOUND);
    // Deleting needs the delete action.
    let r = h
        .send(
            h.authed("DELETE", "/v2/acme/app/manifests/b", &["pull", "push"])
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    // The token's subject has no account, so lacking the action is a 403, not a re-challenge.
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn docker_schema2_manifests_round_trip() {
    let h = Harness::new().await;
    let c = h.push_blob("acme/app", b"docker config").await;
    let l = h.push_blob("acme/app", b"docker layer").await;
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":13,"digest":"{c}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":12,"digest":"{l}"}}]}}"#
    );
    let r = h
        .put_manifest("acme/app", "docker", DOCKER_MANIFEST, m.as_bytes())
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let g = h.get("/v2/acme/app/manifests/docker").await;
    assert_eq!(g.header("content-type"), Some(DOCKER_MANIFEST));
}
