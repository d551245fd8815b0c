//! Push category, manifests: data classes, references, validation, size limit, subject, OCI-Tag.

use bytes::Bytes;
use reqwest::Method;
use serde_json::json;

use crate::common::image::{
    self, DOCKER_LIST, Image, OCI_INDEX, OCI_MANIFEST, artifact, index_of, random_docker_image,
    random_oci_image,
};
use crate::common::push::{random_bytes, sha256};
use crate::common::{Client, Resp};
use crate::{repo, setup};

/// GET `reference` and check exact bytes, Content-Type and digest header.
async fn assert_served(c: &Client, r: &str, reference: &str, img: &Image) {
    let got = c.fetch_manifest(Method::GET, r, reference).await;
    got.expect_status(200, "GET manifest");
    assert_eq!(
        got.body, img.manifest,
        "manifest bytes must be served exactly"
    );
    assert_eq!(got.header("content-type"), Some(img.media_type.as_str()));
    assert_eq!(
        got.header("docker-content-digest"),
        Some(img.digest.as_str())
    );
}

/// PUT by tag: 201 with Location and digest; then served by tag and by digest.
async fn push_and_check(c: &Client, r: &str, tag: &str, img: &Image) -> Resp {
    for b in img.blobs() {
        c.push_blob_monolithic(r, &b.data).await;
    }
    let put = c.put_manifest(r, tag, &img.media_type, &img.manifest).await;
    put.expect_status(201, "PUT manifest by tag");
    assert_eq!(
        put.header("docker-content-digest"),
        Some(img.digest.as_str())
    );
    let loc = put.must_header("location").to_owned();
    let via_loc = c
        .send(
            Method::GET,
            &loc,
            &[("accept", crate::common::push::ACCEPT_MANIFESTS)],
            Bytes::new(),
        )
        .await;
    via_loc.expect_status(200, "GET the manifest Location");
    assert_eq!(via_loc.body, img.manifest);
    assert_served(c, r, tag, img).await;
    assert_served(c, r, &img.digest, img).await;
    put
}

#[tokio::test]
async fn oci_image_manifest_by_tag_and_digest() {
    let (_reg, c) = setup();
    let r = repo("oci");
    let img = random_oci_image(2, 1_000);
    push_and_check(&c, &r, "v1", &img).await;
    // By digest, into another repository.
    let r2 = repo("oci-digest");
    for b in img.blobs() {
        c.push_blob_monolithic(&r2, &b.data).await;
    }
    c.put_manifest(&r2, &img.digest, OCI_MANIFEST, &img.manifest)
        .await
        .expect_status(201, "PUT manifest by digest");
    assert_served(&c, &r2, &img.digest, &img).await;
}

#[tokio::test]
async fn docker_schema2_manifest() {
    let (_reg, c) = setup();
    let r = repo("docker");
    push_and_check(&c, &r, "latest", &random_docker_image(3, 500)).await;
}

#[tokio::test]
async fn oci_index_and_docker_manifest_list() {
    let (_reg, c) = setup();
    let r = repo("multi");
    let (a, b) = (random_oci_image(1, 100), random_oci_image(1, 100));
    c.push_image(&r, &a.digest, &a).await;
    c.push_image(&r, &b.digest, &b).await;
    push_and_check(&c, &r, "oci-index", &index_of(OCI_INDEX, &[&a, &b])).await;
    let (x, y) = (random_docker_image(1, 100), random_docker_image(1, 100));
    c.push_image(&r, &x.digest, &x).await;
    c.push_image(&r, &y.digest, &y).await;
    push_and_check(&c, &r, "docker-list", &index_of(DOCKER_LIST, &[&x, &y])).await;
}

#[tokio::test]
async fn retagging_moves_the_tag() {
    let (_reg, c) = setup();
    let r = repo("retag");
    let (a, b) = (random_oci_image(1, 10), random_oci_image(1, 10));
    c.push_image(&r, "t", &a).await;
    c.push_image(&r, "t", &b).await;
    assert_served(&c, &r, "t", &b).await;
    assert_served(&c, &r, &a.digest, &a).await;
}

#[tokio::test]
async fn manifest_with_a_missing_layer_is_rejected() {
    let (_reg, c) = setup();
    let r = repo("missing");
    let img = random_oci_image(2, 100);
    // Push the config and the first layer only.
    c.push_blob_monolithic(&r, &img.config.as_ref().unwrap().data)
        .await;
    c.push_blob_monolithic(&r, &img.layers[0].data).await;
    c.put_manifest(&r, "v1", OCI_MANIFEST, &img.manifest)
        .await
        .expect_error(400, "MANIFEST_BLOB_UNKNOWN");
    c.fetch_manifest(Method::GET, &r, "v1")
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn invalid_manifests_are_rejected() {
    let (_reg, c) = setup();
    let r = repo("invalid");
    c.push_blob_monolithic(&r, b"x").await;
    c.put_manifest(&r, "v1", OCI_MANIFEST, b"{not json")
        .await
        .expect_error(400, "MANIFEST_INVALID");
    // A digest reference that does not match the body.
    let img = random_oci_image(1, 10);
    for b in img.blobs() {
        c.push_blob_monolithic(&r, &b.data).await;
    }
    let wrong = sha256(b"not this manifest");
    c.put_manifest(&r, &wrong, OCI_MANIFEST, &img.manifest)
        .await
        .expect_error_one_of(400, &["DIGEST_INVALID", "MANIFEST_INVALID"]);
}

#[tokio::test]
async fn manifest_size_limit() {
    let (_reg, c) = setup();
    let r = repo("big");
    let img = random_oci_image(1, 10);
    for b in img.blobs() {
        c.push_blob_monolithic(&r, &b.data).await;
    }
    let padded = |total: usize| {
        let mut v: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
        v["annotations"] = json!({"pad": ""});
        let base = serde_json::to_vec(&v).unwrap().len();
        v["annotations"]["pad"] = json!("p".repeat(total - base));
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(bytes.len(), total);
        bytes
    };
    // The spec asks registries to accept at least 4 MB (4,000,000 bytes).
    let ok = padded(4_000_000);
    c.put_manifest(&r, "big", OCI_MANIFEST, &ok)
        .await
        .expect_status(201, "a 4,000,000-byte manifest");
    let too_big = padded(4 * 1024 * 1024 + 1024);
    let put = c.put_manifest(&r, "too-big", OCI_MANIFEST, &too_big).await;
    assert_eq!(put.status.as_u16(), 413, "{put:#?}");
    c.fetch_manifest(Method::HEAD, &r, "too-big")
        .await
        .expect_status(404, "HEAD of the refused manifest");
}

#[tokio::test]
async fn manifest_with_an_unknown_subject_is_accepted() {
    // zot#1424: a referrer pushed before its subject must be accepted (not 500).
    let (_reg, c) = setup();
    let r = repo("subject");
    let subject_bytes = random_bytes(100);
    let subject = json!({
        "mediaType": OCI_MANIFEST,
        "digest": sha256(&subject_bytes),
        "size": subject_bytes.len(),
    });
    let sig = artifact(
        Some("application/vnd.quarry.signature"),
        Some(&subject),
        &[],
    );
    let put = {
        for b in sig.blobs() {
            c.push_blob_monolithic(&r, &b.data).await;
        }
        c.put_manifest(&r, &sig.digest, OCI_MANIFEST, &sig.manifest)
            .await
    };
    put.expect_status(201, "PUT a manifest whose subject is missing");
    assert_eq!(
        put.header("oci-subject"),
        Some(subject["digest"].as_str().unwrap())
    );
    assert_served(&c, &r, &sig.digest, &sig).await;
    // It is already a referrer of the missing subject.
    let refs = c
        .send(
            Method::GET,
            &format!("/v2/{r}/referrers/{}", subject["digest"].as_str().unwrap()),
            &[],
            Bytes::new(),
        )
        .await;
    refs.expect_status(200, "GET referrers of the missing subject");
    let list = refs.json()["manifests"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "{refs:#?}");
    assert_eq!(list[0]["digest"], sig.digest.as_str());
    assert_eq!(list[0]["artifactType"], "application/vnd.quarry.signature");
}

#[tokio::test]
async fn put_by_digest_with_tag_parameters() {
    let (_reg, c) = setup();
    let r = repo("ocitag");
    let img = random_oci_image(1, 50);
    for b in img.blobs() {
        c.push_blob_monolithic(&r, &b.data).await;
    }
    let put = c
        .put_manifest(
            &r,
            &format!("{}?tag=alpha&tag=beta", img.digest),
            OCI_MANIFEST,
            &img.manifest,
        )
        .await;
    put.expect_status(201, "PUT manifests/<digest>?tag=alpha&tag=beta");
    let mut tags = put.headers_all("oci-tag");
    tags.sort();
    assert_eq!(tags, ["alpha", "beta"], "{put:#?}");
    assert_served(&c, &r, "alpha", &img).await;
    assert_served(&c, &r, "beta", &img).await;
}

#[tokio::test]
async fn invalid_name_is_400_name_invalid() {
    let (_reg, c) = setup();
    for path in [
        "/v2/alice/Upper/manifests/latest",
        "/v2/alice/bad..dots/tags/list",
        "/v2/alice/-dash/blobs/uploads/",
    ] {
        let method = if path.ends_with("/uploads/") {
            Method::POST
        } else {
            Method::GET
        };
        c.send(method, path, &[], Bytes::new())
            .await
            .expect_error(400, "NAME_INVALID");
    }
}

#[tokio::test]
async fn invalid_tag_is_rejected() {
    let (_reg, c) = setup();
    let r = repo("badtag");
    let img = random_oci_image(1, 10);
    for b in img.blobs() {
        c.push_blob_monolithic(&r, &b.data).await;
    }
    let put = c
        .put_manifest(&r, &"t".repeat(129), image::OCI_MANIFEST, &img.manifest)
        .await;
    assert_eq!(put.status.as_u16(), 400, "a 129-character tag: {put:#?}");
}
