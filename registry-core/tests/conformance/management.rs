//! Content Management category: deleting tags, manifests and blobs, then reading them back.

use bytes::Bytes;
use reqwest::Method;

use crate::common::image::random_oci_image;
use crate::common::push::{random_bytes, sha256};
use crate::{repo, setup};

async fn tag_list(c: &crate::common::Client, r: &str) -> Vec<String> {
    let resp = c
        .send(
            Method::GET,
            &format!("/v2/{r}/tags/list"),
            &[],
            Bytes::new(),
        )
        .await;
    resp.expect_status(200, "GET tags/list");
    resp.json()["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn delete_tag_keeps_the_manifest() {
    let (_reg, c) = setup();
    let r = repo("deltag");
    let img = random_oci_image(1, 100);
    c.push_image(&r, "keep", &img).await;
    c.push_image(&r, "drop", &img).await;
    c.send(
        Method::DELETE,
        &format!("/v2/{r}/manifests/drop"),
        &[],
        Bytes::new(),
    )
    .await
    .expect_status(202, "DELETE tag");
    c.fetch_manifest(Method::GET, &r, "drop")
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    c.fetch_manifest(Method::GET, &r, "keep")
        .await
        .expect_status(200, "the other tag");
    c.fetch_manifest(Method::GET, &r, &img.digest)
        .await
        .expect_status(200, "the manifest by digest");
    assert_eq!(tag_list(&c, &r).await, ["keep"]);
}

#[tokio::test]
async fn delete_manifest_by_digest() {
    let (_reg, c) = setup();
    let r = repo("delman");
    let img = random_oci_image(1, 100);
    let other = random_oci_image(1, 100);
    c.push_image(&r, "v1", &img).await;
    c.push_image(&r, "other", &other).await;
    c.send(
        Method::DELETE,
        &format!("/v2/{r}/manifests/{}", img.digest),
        &[],
        Bytes::new(),
    )
    .await
    .expect_status(202, "DELETE manifest");
    c.fetch_manifest(Method::GET, &r, &img.digest)
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    let h = c.fetch_manifest(Method::HEAD, &r, &img.digest).await;
    assert_eq!(h.status.as_u16(), 404, "{h:#?}");
    // The tag pointed at it: no dangling tag either.
    c.fetch_manifest(Method::GET, &r, "v1")
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    assert_eq!(tag_list(&c, &r).await, ["other"]);
    // Deleting it again.
    let again = c
        .send(
            Method::DELETE,
            &format!("/v2/{r}/manifests/{}", img.digest),
            &[],
            Bytes::new(),
        )
        .await;
    again.expect_error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn delete_blob() {
    // zot#1733: a blob must not be fetchable after its DELETE was answered 202.
    let (_reg, c) = setup();
    let r = repo("delblob");
    let data = random_bytes(3_000);
    let d = c.push_blob_monolithic(&r, &data).await;
    let path = format!("/v2/{r}/blobs/{d}");
    c.send(Method::DELETE, &path, &[], Bytes::new())
        .await
        .expect_status(202, "DELETE blob");
    c.get_blob(&r, &d).await.expect_error(404, "BLOB_UNKNOWN");
    let h = c.send(Method::HEAD, &path, &[], Bytes::new()).await;
    assert_eq!(h.status.as_u16(), 404, "{h:#?}");
    c.send(Method::DELETE, &path, &[], Bytes::new())
        .await
        .expect_error(404, "BLOB_UNKNOWN");
    // It can be pushed again.
    c.push_blob_post_put(&r, &data).await;
    assert_eq!(c.blob_bytes(&r, &d).await, data);
}

#[tokio::test]
async fn delete_unknown_manifest_is_404() {
    let (_reg, c) = setup();
    let r = repo("delunknown");
    c.push_image(&r, "v1", &random_oci_image(1, 10)).await;
    c.send(
        Method::DELETE,
        &format!("/v2/{r}/manifests/{}", sha256(b"unknown")),
        &[],
        Bytes::new(),
    )
    .await
    .expect_error(404, "MANIFEST_UNKNOWN");
    c.send(
        Method::DELETE,
        &format!("/v2/{r}/manifests/nope"),
        &[],
        Bytes::new(),
    )
    .await
    .expect_error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn push_after_delete_works() {
    // distribution#3254: pushing the same image again after deleting it must work.
    let (_reg, c) = setup();
    let r = repo("repush");
    let img = random_oci_image(2, 100);
    c.push_image(&r, "v1", &img).await;
    c.send(
        Method::DELETE,
        &format!("/v2/{r}/manifests/{}", img.digest),
        &[],
        Bytes::new(),
    )
    .await
    .expect_status(202, "DELETE manifest");
    c.push_image(&r, "v1", &img).await;
    let got = c.fetch_manifest(Method::GET, &r, "v1").await;
    got.expect_status(200, "GET after re-push");
    assert_eq!(got.body, img.manifest);
}
