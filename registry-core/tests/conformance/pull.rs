//! Pull category: blob GET/HEAD (with ranges), manifest GET/HEAD, unknown content.

use bytes::Bytes;
use reqwest::Method;

use crate::common::image::random_oci_image;
use crate::common::push::{random_bytes, sha256};
use crate::{repo, setup};

#[tokio::test]
async fn blob_head_has_content_length_and_digest() {
    let (_reg, c) = setup();
    let r = repo("head");
    let data = random_bytes(12_345);
    let d = c.push_blob_monolithic(&r, &data).await;
    let h = c
        .send(
            Method::HEAD,
            &format!("/v2/{r}/blobs/{d}"),
            &[],
            Bytes::new(),
        )
        .await;
    h.expect_status(200, "HEAD blob");
    assert_eq!(h.header("content-length"), Some("12345"));
    assert_eq!(h.header("docker-content-digest"), Some(d.as_str()));
    assert!(h.body.is_empty());
}

#[tokio::test]
async fn blob_get_with_range_is_206_inclusive() {
    let (_reg, c) = setup();
    let r = repo("range");
    let data = random_bytes(1_000);
    let d = c.push_blob_monolithic(&r, &data).await;
    let path = format!("/v2/{r}/blobs/{d}");
    let g = c
        .send(
            Method::GET,
            &path,
            &[("range", "bytes=10-19")],
            Bytes::new(),
        )
        .await;
    g.expect_status(206, "GET blob bytes=10-19");
    assert_eq!(g.body, data[10..20], "the range end is inclusive");
    assert_eq!(g.header("content-range"), Some("bytes 10-19/1000"));
    assert_eq!(g.header("content-length"), Some("10"));
    let g = c
        .send(Method::GET, &path, &[("range", "bytes=990-")], Bytes::new())
        .await;
    g.expect_status(206, "GET blob bytes=990-");
    assert_eq!(g.body, data[990..]);
    assert_eq!(g.header("content-range"), Some("bytes 990-999/1000"));
    let g = c
        .send(
            Method::GET,
            &path,
            &[("range", "bytes=5000-6000")],
            Bytes::new(),
        )
        .await;
    assert_eq!(g.status.as_u16(), 416, "a range past the end: {g:#?}");
}

#[tokio::test]
async fn unknown_blob_is_404_blob_unknown() {
    let (_reg, c) = setup();
    let r = repo("noblob");
    c.push_blob_monolithic(&r, b"exists").await;
    let d = sha256(b"does not exist");
    c.get_blob(&r, &d).await.expect_error(404, "BLOB_UNKNOWN");
    let h = c
        .send(
            Method::HEAD,
            &format!("/v2/{r}/blobs/{d}"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(h.status.as_u16(), 404, "{h:#?}");
}

#[tokio::test]
async fn blob_of_another_repository_is_not_visible() {
    let (_reg, c) = setup();
    let (a, b) = (repo("vis-a"), repo("vis-b"));
    let d = c.push_blob_monolithic(&a, &random_bytes(100)).await;
    c.push_blob_monolithic(&b, b"b exists").await;
    c.get_blob(&b, &d).await.expect_error(404, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn malformed_digest_is_rejected() {
    let (_reg, c) = setup();
    let r = repo("baddigest");
    c.push_blob_monolithic(&r, b"exists").await;
    let g = c
        .send(
            Method::GET,
            &format!("/v2/{r}/blobs/sha256:nothex"),
            &[],
            Bytes::new(),
        )
        .await;
    g.expect_error_one_of(400, &["DIGEST_INVALID", "BLOB_UNKNOWN"]);
}

#[tokio::test]
async fn manifest_head_matches_get() {
    let (_reg, c) = setup();
    let r = repo("mhead");
    let img = random_oci_image(1, 100);
    c.push_image(&r, "v1", &img).await;
    for reference in ["v1", img.digest.as_str()] {
        let h = c.fetch_manifest(Method::HEAD, &r, reference).await;
        h.expect_status(200, "HEAD manifest");
        assert_eq!(
            h.header("content-length"),
            Some(img.manifest.len().to_string().as_str())
        );
        assert_eq!(h.header("docker-content-digest"), Some(img.digest.as_str()));
        assert_eq!(h.header("content-type"), Some(img.media_type.as_str()));
    }
}

#[tokio::test]
async fn unknown_manifest_is_404_manifest_unknown() {
    let (_reg, c) = setup();
    let r = repo("nomanifest");
    c.push_image(&r, "v1", &random_oci_image(1, 10)).await;
    c.fetch_manifest(Method::GET, &r, "nope")
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    c.fetch_manifest(Method::GET, &r, &sha256(b"nope"))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    let h = c.fetch_manifest(Method::HEAD, &r, "nope").await;
    assert_eq!(h.status.as_u16(), 404, "{h:#?}");
}

#[tokio::test]
async fn unknown_repository_is_404() {
    let (_reg, c) = setup();
    let r = repo("never-pushed");
    c.fetch_manifest(Method::GET, &r, "latest")
        .await
        .expect_error_one_of(404, &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"]);
    c.send(
        Method::GET,
        &format!("/v2/{r}/tags/list"),
        &[],
        Bytes::new(),
    )
    .await
    .expect_error(404, "NAME_UNKNOWN");
}

#[tokio::test]
async fn many_layer_image_round_trip() {
    let (_reg, c) = setup();
    let r = repo("layers");
    let img = random_oci_image(12, 3_000);
    c.push_image(&r, "v1", &img).await;
    for b in img.blobs() {
        assert_eq!(c.blob_bytes(&r, &b.digest).await, b.data);
    }
}
