//! Content Discovery category: tag listing with pagination, and the referrers API.

use bytes::Bytes;
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::image::{OCI_INDEX, OCI_MANIFEST, artifact, index_of, random_oci_image};
use crate::common::push::sha256;
use crate::common::{Client, Resp};
use crate::{repo, setup};

async fn tags_page(c: &Client, path: &str) -> (Vec<String>, Option<String>, Resp) {
    let r = c.send(Method::GET, path, &[], Bytes::new()).await;
    r.expect_status(200, "GET tags/list");
    let v = r.json();
    let tags = match &v["tags"] {
        Value::Null => Vec::new(),
        t => t
            .as_array()
            .unwrap_or_else(|| panic!("tags is not a list: {r:#?}"))
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect(),
    };
    // Link: <url>; rel="next"
    let next = r.header("link").map(|l| {
        assert!(l.contains("rel=\"next\""), "Link without rel=next: {l}");
        let start = l.find('<').expect("Link has <url>") + 1;
        let end = l.find('>').expect("Link has <url>");
        l[start..end].to_owned()
    });
    (tags, next, r)
}

#[tokio::test]
async fn tag_list_is_sorted_and_paginates() {
    let (_reg, c) = setup();
    let r = repo("tags");
    let img = random_oci_image(1, 10);
    c.push_image(&r, "v1", &img).await;
    let mut want = vec!["v1".to_owned()];
    for t in ["zeta", "alpha", "1.0", "beta", "gamma", "_under", "Upper"] {
        c.put_manifest(&r, t, OCI_MANIFEST, &img.manifest)
            .await
            .expect_status(201, "tagging");
        want.push(t.to_owned());
    }
    want.sort(); // byte order
    let base = format!("/v2/{r}/tags/list");
    let (all, next, resp) = tags_page(&c, &base).await;
    assert_eq!(resp.json()["name"], r);
    assert_eq!(all, want);
    assert!(next.is_none(), "no Link without n");

    // Walk pages of 3 by following Link.
    let mut walked = Vec::new();
    let mut path = Some(format!("{base}?n=3"));
    let mut pages = 0;
    while let Some(p) = path {
        let (page, next, _) = tags_page(&c, &p).await;
        assert!(page.len() <= 3, "page larger than n: {page:?}");
        walked.extend(page);
        path = next;
        pages += 1;
        assert!(pages <= 10, "pagination does not end");
    }
    assert_eq!(walked, want);

    // last= alone and with n.
    let (after, _, _) = tags_page(&c, &format!("{base}?last=beta")).await;
    let expect: Vec<String> = want
        .iter()
        .filter(|t| t.as_str() > "beta")
        .cloned()
        .collect();
    assert_eq!(after, expect);
    let (two, _, _) = tags_page(&c, &format!("{base}?n=2&last=beta")).await;
    assert_eq!(two, expect[..2]);

    // n=0: an empty list and no Link.
    let (none, next, _) = tags_page(&c, &format!("{base}?n=0")).await;
    assert!(none.is_empty(), "n=0 must give no tags: {none:?}");
    assert!(next.is_none(), "n=0 must give no Link");
}

/// A subject image, and referrers pushed to it: two artifact types, one plain image (its
/// artifactType then comes from the config media type), plus an unrelated artifact.
#[tokio::test]
async fn referrers_list_filter_and_unknown_subject() {
    let (_reg, c) = setup();
    let r = repo("referrers");
    let subject = random_oci_image(1, 100);
    c.push_image(&r, "subject", &subject).await;
    let sdesc = subject.descriptor(None);
    let sbom = artifact(
        Some("application/vnd.quarry.sbom"),
        Some(&sdesc),
        &[("org.opencontainers.image.created", "2026-01-01T00:00:00Z")],
    );
    let sig = artifact(Some("application/vnd.quarry.signature"), Some(&sdesc), &[]);
    let unrelated = artifact(Some("application/vnd.quarry.sbom"), None, &[]);
    for a in [&sbom, &sig, &unrelated] {
        let put = {
            for b in a.blobs() {
                c.push_blob_monolithic(&r, &b.data).await;
            }
            c.put_manifest(&r, &a.digest, OCI_MANIFEST, &a.manifest)
                .await
        };
        put.expect_status(201, "PUT referrer");
    }
    // An image manifest without artifactType: its config media type stands in.
    let base = random_oci_image(1, 10);
    let mut plain_v: Value = serde_json::from_slice(&base.manifest).unwrap();
    let plain_cfg = crate::common::image::Blob::new(
        "application/vnd.quarry.config.v1+json",
        b"{\"quarry\":true}".to_vec(),
    );
    plain_v["config"] = plain_cfg.descriptor();
    plain_v["subject"] = sdesc.clone();
    let plain = crate::common::image::Image::from_value(
        OCI_MANIFEST,
        &plain_v,
        Some(plain_cfg),
        base.layers,
    );
    c.push_image(&r, &plain.digest, &plain).await;

    let path = format!("/v2/{r}/referrers/{}", subject.digest);
    let all = c.send(Method::GET, &path, &[], Bytes::new()).await;
    all.expect_status(200, "GET referrers");
    assert_eq!(all.header("content-type"), Some(OCI_INDEX));
    let v = all.json();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    let list = v["manifests"].as_array().expect("manifests array").clone();
    let find = |d: &str| list.iter().find(|m| m["digest"] == d).cloned();
    assert_eq!(list.len(), 3, "{v:#}");
    let s = find(&sbom.digest).expect("the sbom is listed");
    assert_eq!(s["mediaType"], OCI_MANIFEST);
    assert_eq!(s["size"], sbom.manifest.len());
    assert_eq!(s["artifactType"], "application/vnd.quarry.sbom");
    assert_eq!(
        s["annotations"]["org.opencontainers.image.created"],
        "2026-01-01T00:00:00Z"
    );
    let g = find(&sig.digest).expect("the signature is listed");
    assert_eq!(g["artifactType"], "application/vnd.quarry.signature");
    let p = find(&plain.digest).expect("the plain image is listed");
    assert_eq!(p["artifactType"], "application/vnd.quarry.config.v1+json");
    assert!(find(&unrelated.digest).is_none());

    // Filtered.
    let filtered = c
        .send(
            Method::GET,
            &format!("{path}?artifactType=application/vnd.quarry.signature"),
            &[],
            Bytes::new(),
        )
        .await;
    filtered.expect_status(200, "GET referrers?artifactType=");
    assert_eq!(filtered.header("oci-filters-applied"), Some("artifactType"));
    let fl = filtered.json()["manifests"].as_array().unwrap().clone();
    assert_eq!(fl.len(), 1, "{filtered:#?}");
    assert_eq!(fl[0]["digest"], sig.digest.as_str());

    // Unknown subject: 200 with an empty index, never 404.
    let unknown = c
        .send(
            Method::GET,
            &format!("/v2/{r}/referrers/{}", sha256(b"no such subject")),
            &[],
            Bytes::new(),
        )
        .await;
    unknown.expect_status(200, "GET referrers of an unknown digest");
    assert_eq!(unknown.header("content-type"), Some(OCI_INDEX));
    let uv = unknown.json();
    assert_eq!(uv["manifests"], json!([]), "{unknown:#?}");
}

#[tokio::test]
async fn index_with_subject_is_a_referrer() {
    let (_reg, c) = setup();
    let r = repo("idxref");
    let subject = random_oci_image(1, 10);
    c.push_image(&r, "s", &subject).await;
    let child = random_oci_image(1, 10);
    c.push_image(&r, &child.digest, &child).await;
    let mut idx: Value = serde_json::from_slice(&index_of(OCI_INDEX, &[&child]).manifest).unwrap();
    idx["subject"] = subject.descriptor(None);
    idx["artifactType"] = json!("application/vnd.quarry.bundle");
    let idx = crate::common::image::Image::from_value(OCI_INDEX, &idx, None, vec![]);
    let put = c
        .put_manifest(&r, &idx.digest, OCI_INDEX, &idx.manifest)
        .await;
    put.expect_status(201, "PUT index with subject");
    assert_eq!(put.header("oci-subject"), Some(subject.digest.as_str()));
    let refs = c
        .send(
            Method::GET,
            &format!("/v2/{r}/referrers/{}", subject.digest),
            &[],
            Bytes::new(),
        )
        .await;
    refs.expect_status(200, "GET referrers");
    let list = refs.json()["manifests"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "{refs:#?}");
    assert_eq!(list[0]["digest"], idx.digest.as_str());
    assert_eq!(list[0]["mediaType"], OCI_INDEX);
    assert_eq!(list[0]["artifactType"], "application/vnd.quarry.bundle");
}
