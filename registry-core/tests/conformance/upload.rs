//! Push category, blobs: every upload style, ranges, digests, cancel, mount, concurrency.

use bytes::Bytes;
use reqwest::Method;

use crate::common::client::{Client, Resp};
use crate::common::push::{random_bytes, sha256, sha512, with_query};
use crate::{repo, setup};

#[tokio::test]
async fn monolithic_post_with_digest_creates_the_blob() {
    let (_reg, c) = setup();
    let r = repo("mono");
    let data = random_bytes(10_000);
    let d = c.push_blob_monolithic(&r, &data).await;
    assert_eq!(c.blob_bytes(&r, &d).await, data);
}

#[tokio::test]
async fn post_then_put_with_the_whole_blob() {
    let (_reg, c) = setup();
    let r = repo("postput");
    let data = random_bytes(5_000);
    let d = sha256(&data);
    let (loc, post) = c.start_upload(&r).await;
    post.must_header("docker-upload-uuid");
    let put = c.put_upload(&loc, &d, &data).await;
    put.expect_status(201, "PUT ?digest=");
    assert_eq!(put.header("docker-content-digest"), Some(d.as_str()));
    // Location names the blob.
    let got = c
        .send(Method::GET, put.must_header("location"), &[], Bytes::new())
        .await;
    got.expect_status(200, "GET the PUT's Location");
    assert_eq!(got.body, data);
}

#[tokio::test]
async fn post_answers_range_0_0_before_any_byte() {
    // Pinned: distribution answers `Range: 0-0` for an empty session (registry.md section 6).
    let (_reg, c) = setup();
    let (_loc, post) = c.start_upload(&repo("range00")).await;
    assert_eq!(post.header("range"), Some("0-0"), "{post:#?}");
}

#[tokio::test]
async fn chunked_patches_report_inclusive_ranges() {
    let (_reg, c) = setup();
    let r = repo("chunked");
    let data = random_bytes(2_537);
    let d = c.push_blob_chunked(&r, &data, 1_000).await;
    assert_eq!(d, sha256(&data));
    assert_eq!(c.blob_bytes(&r, &d).await, data);
}

#[tokio::test]
async fn single_byte_chunks_report_inclusive_ranges() {
    let (_reg, c) = setup();
    let r = repo("bytes");
    let data = random_bytes(3);
    let d = c.push_blob_chunked(&r, &data, 1).await;
    assert_eq!(c.blob_bytes(&r, &d).await, data);
}

#[tokio::test]
async fn streamed_patch_without_content_range() {
    let (_reg, c) = setup();
    let r = repo("streamed");
    let data = random_bytes(300_000);
    let d = c.push_blob_streamed(&r, &data).await;
    assert_eq!(c.blob_bytes(&r, &d).await, data);
}

#[tokio::test]
async fn patch_without_content_range_then_final_chunk_in_put() {
    let (_reg, c) = setup();
    let r = repo("tailput");
    let data = random_bytes(4_000);
    let d = sha256(&data);
    let (loc, _) = c.start_upload(&r).await;
    let p = c.patch_chunk(&loc, &data[..2_500], None).await;
    p.expect_status(202, "PATCH without Content-Range");
    assert_eq!(p.range_offset(), 2_500);
    let loc = c.url(p.must_header("location"));
    c.put_upload(&loc, &d, &data[2_500..])
        .await
        .expect_status(201, "PUT with the last chunk");
    assert_eq!(c.blob_bytes(&r, &d).await, data);
}

#[tokio::test]
async fn out_of_order_chunk_is_416_with_the_current_range() {
    let (_reg, c) = setup();
    let r = repo("order");
    let data = random_bytes(300);
    let d = sha256(&data);
    let (loc, _) = c.start_upload(&r).await;
    let p = c.patch_chunk(&loc, &data[..100], Some(0)).await;
    p.expect_status(202, "first chunk");
    let loc = c.url(p.must_header("location"));
    // A gap: 200-299 while the session holds 0-99.
    let bad = c.patch_chunk(&loc, &data[200..], Some(200)).await;
    assert_eq!(bad.status.as_u16(), 416, "{bad:#?}");
    assert_eq!(bad.range_offset(), 100, "416 must carry the current Range");
    // An overlap is as wrong as a gap.
    let bad = c.patch_chunk(&loc, &data[50..150], Some(50)).await;
    assert_eq!(bad.status.as_u16(), 416, "{bad:#?}");
    // The session is intact: continue from the reported offset.
    let status = c.send(Method::GET, &loc, &[], Bytes::new()).await;
    status.expect_status(204, "upload status after 416");
    assert_eq!(status.range_offset(), 100);
    let p = c.patch_chunk(&loc, &data[100..], Some(100)).await;
    p.expect_status(202, "the right chunk");
    let loc = c.url(p.must_header("location"));
    c.put_upload(&loc, &d, &[])
        .await
        .expect_status(201, "closing PUT");
    assert_eq!(c.blob_bytes(&r, &d).await, data);
}

#[tokio::test]
async fn put_with_a_bad_final_range_is_416() {
    let (_reg, c) = setup();
    let r = repo("badput");
    let data = random_bytes(200);
    let d = sha256(&data);
    let (loc, _) = c.start_upload(&r).await;
    let p = c.patch_chunk(&loc, &data[..100], Some(0)).await;
    p.expect_status(202, "first chunk");
    let loc = c.url(p.must_header("location"));
    let tail = &data[150..];
    let put = c
        .send(
            Method::PUT,
            &with_query(&loc, "digest", &d),
            &[
                ("content-type", "application/octet-stream"),
                ("content-range", "150-199"),
                ("content-length", &tail.len().to_string()),
            ],
            Bytes::copy_from_slice(tail),
        )
        .await;
    assert_eq!(put.status.as_u16(), 416, "{put:#?}");
    assert_eq!(c.get_blob(&r, &d).await.status.as_u16(), 404);
}

#[tokio::test]
async fn empty_blob_upload() {
    let (_reg, c) = setup();
    let r = repo("empty");
    let d = sha256(b"");
    let (loc, post) = c.start_upload(&r).await;
    assert_eq!(post.header("range"), Some("0-0"), "{post:#?}");
    c.put_upload(&loc, &d, &[])
        .await
        .expect_status(201, "PUT of the empty blob");
    let got = c.get_blob(&r, &d).await;
    got.expect_status(200, "GET the empty blob");
    assert!(got.body.is_empty());
    let head = c
        .send(
            Method::HEAD,
            &format!("/v2/{r}/blobs/{d}"),
            &[],
            Bytes::new(),
        )
        .await;
    head.expect_status(200, "HEAD the empty blob");
    assert_eq!(head.header("content-length"), Some("0"));
    // And through the monolithic POST.
    let r2 = repo("empty-mono");
    c.push_blob_monolithic(&r2, b"").await;
}

#[tokio::test]
async fn digest_mismatch_is_400_and_nothing_is_readable() {
    let (_reg, c) = setup();
    let r = repo("mismatch");
    let data = random_bytes(1_000);
    let claimed = sha256(b"something else entirely");
    let (loc, _) = c.start_upload(&r).await;
    c.put_upload(&loc, &claimed, &data)
        .await
        .expect_error(400, "DIGEST_INVALID");
    assert_eq!(c.get_blob(&r, &claimed).await.status.as_u16(), 404);
    assert_eq!(c.get_blob(&r, &sha256(&data)).await.status.as_u16(), 404);
    // Chunked, and with the monolithic POST.
    let (loc, _) = c.start_upload(&r).await;
    let p = c.patch_chunk(&loc, &data, Some(0)).await;
    p.expect_status(202, "chunk");
    c.put_upload(&c.url(p.must_header("location")), &claimed, &[])
        .await
        .expect_error(400, "DIGEST_INVALID");
    let mono = c
        .send(
            Method::POST,
            &format!("/v2/{r}/blobs/uploads/?digest={claimed}"),
            &[("content-type", "application/octet-stream")],
            Bytes::from(data.clone()),
        )
        .await;
    mono.expect_error(400, "DIGEST_INVALID");
    assert_eq!(c.get_blob(&r, &claimed).await.status.as_u16(), 404);
    assert_eq!(c.get_blob(&r, &sha256(&data)).await.status.as_u16(), 404);
}

#[tokio::test]
async fn sha512_blob() {
    let (_reg, c) = setup();
    let r = repo("sha512");
    let data = random_bytes(70_000);
    let d = sha512(&data);
    let post = c
        .send(
            Method::POST,
            &format!("/v2/{r}/blobs/uploads/?digest-algorithm=sha512"),
            &[],
            Bytes::new(),
        )
        .await;
    post.expect_status(202, "POST ?digest-algorithm=sha512");
    let loc = c.url(post.must_header("location"));
    let p = c.patch_chunk(&loc, &data[..40_000], Some(0)).await;
    p.expect_status(202, "PATCH");
    let loc = c.url(p.must_header("location"));
    let put = c.put_upload(&loc, &d, &data[40_000..]).await;
    put.expect_status(201, "PUT sha512");
    assert_eq!(put.header("docker-content-digest"), Some(d.as_str()));
    let got = c.get_blob(&r, &d).await;
    got.expect_status(200, "GET sha512 blob");
    assert_eq!(got.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(got.body, data);
}

#[tokio::test]
async fn upload_status_reports_range_and_location() {
    let (_reg, c) = setup();
    let r = repo("status");
    let data = random_bytes(1_234);
    let (loc, _) = c.start_upload(&r).await;
    let p = c.patch_chunk(&loc, &data, Some(0)).await;
    p.expect_status(202, "PATCH");
    let loc = c.url(p.must_header("location"));
    let st = c.send(Method::GET, &loc, &[], Bytes::new()).await;
    st.expect_status(204, "GET upload status");
    assert_eq!(st.header("range"), Some("0-1233"));
    st.must_header("location");
    assert!(st.body.is_empty());
}

#[tokio::test]
async fn cancelled_upload_is_gone() {
    let (_reg, c) = setup();
    let r = repo("cancel");
    let (loc, _) = c.start_upload(&r).await;
    let p = c.patch_chunk(&loc, b"some bytes", Some(0)).await;
    p.expect_status(202, "PATCH");
    let loc = c.url(p.must_header("location"));
    c.send(Method::DELETE, &loc, &[], Bytes::new())
        .await
        .expect_status(204, "DELETE upload");
    c.send(Method::GET, &loc, &[], Bytes::new())
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    c.patch_chunk(&loc, b"more", Some(10))
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    c.put_upload(&loc, &sha256(b"some bytes"), &[])
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn unknown_upload_session_is_404() {
    let (_reg, c) = setup();
    let r = repo("nosession");
    c.start_upload(&r).await; // the repository exists
    let loc = format!("/v2/{r}/blobs/uploads/6f0b3b4e-3c1c-4c5e-9d8f-2d0c1e7a9b11");
    c.send(Method::GET, &loc, &[], Bytes::new())
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
}

/// `POST /v2/<dst>/blobs/uploads/?mount=<d>&from=<src>` with a token for push on `dst` and pull
/// on `src`.
async fn mount(c: &Client, src: &str, dst: &str, d: &str) -> Resp {
    c.authorize(
        dst,
        &[
            &format!("repository:{dst}:pull,push"),
            &format!("repository:{src}:pull"),
        ],
    )
    .await;
    c.send(
        Method::POST,
        &format!("/v2/{dst}/blobs/uploads/?mount={d}&from={src}"),
        &[],
        Bytes::new(),
    )
    .await
}

#[tokio::test]
async fn cross_repo_mount() {
    let (_reg, c) = setup();
    let (src, dst) = (repo("mount-src"), repo("mount-dst"));
    let data = random_bytes(2_000);
    let d = c.push_blob_monolithic(&src, &data).await;
    let m = mount(&c, &src, &dst, &d).await;
    m.expect_status(201, "mount");
    assert_eq!(m.header("docker-content-digest"), Some(d.as_str()));
    let loc = m.must_header("location");
    assert!(loc.ends_with(&format!("/v2/{dst}/blobs/{d}")), "{m:#?}");
    assert_eq!(c.blob_bytes(&dst, &d).await, data);
}

#[tokio::test]
async fn mount_falls_back_to_an_upload_when_the_source_lacks_the_blob() {
    let (_reg, c) = setup();
    let (src, dst) = (repo("fb-src"), repo("fb-dst"));
    c.push_blob_monolithic(&src, b"the source exists").await;
    let data = random_bytes(500);
    let d = sha256(&data);
    let m = mount(&c, &src, &dst, &d).await;
    m.expect_status(202, "mount of a blob the source lacks");
    let loc = c.url(m.must_header("location"));
    c.put_upload(&loc, &d, &data)
        .await
        .expect_status(201, "finishing the fallback session");
    assert_eq!(c.blob_bytes(&dst, &d).await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_blob_pushes() {
    let (_reg, c) = setup();
    let c = std::sync::Arc::new(c);
    let r = repo("concurrent");
    let data = std::sync::Arc::new(random_bytes(1 << 20));
    let d = sha256(&data);
    c.start_upload(&r).await; // create the repository (and cache a token) first
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (c, r, data) = (c.clone(), r.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            match i % 3 {
                0 => c.push_blob_chunked(&r, &data, 256 * 1024).await,
                1 => c.push_blob_streamed(&r, &data).await,
                _ => c.push_blob_post_put(&r, &data).await,
            }
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("push task"), d);
    }
    assert_eq!(c.blob_bytes(&r, &d).await, data[..]);
}

#[tokio::test]
async fn abandoned_upload_is_purged_after_upload_max_age() {
    let reg = crate::common::Registry::start_with_config(Some(
        "UPLOAD_MAX_AGE_S: 1\nUPLOAD_CLEANUP_INTERVAL_S: 1\n",
    ));
    let c = reg.user("alice");
    let r = repo("stale");
    let (loc, _) = c.start_upload(&r).await;
    let p = c.patch_chunk(&loc, b"abandoned bytes", Some(0)).await;
    p.expect_status(202, "PATCH");
    let loc = c.url(p.must_header("location"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let st = c.send(Method::GET, &loc, &[], Bytes::new()).await;
        if st.status.as_u16() == 404 {
            st.expect_error(404, "BLOB_UPLOAD_UNKNOWN");
            break;
        }
        st.expect_status(204, "status of the session before it expires");
        assert!(
            std::time::Instant::now() < deadline,
            "the session outlived UPLOAD_MAX_AGE_S=1 by 15 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
