//! Component tests of the upload endpoints (in their own file: the upload protocol has the most
//! cases, see reference/registry.md §5).

use super::super::test_support::*;
use super::*;

const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn sha256(bytes: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, bytes)
}

/// POST a new session; returns its Location.
async fn start_session(h: &Harness, query: &str) -> String {
    let r = h
        .send(
            h.authed("POST", &format!("/v2/acme/app/blobs/uploads/{query}"), &[])
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    r.header("location").unwrap().to_owned()
}

async fn patch_chunk(h: &Harness, loc: &str, range: Option<&str>, bytes: &[u8]) -> Resp {
    let mut b = h.authed("PATCH", loc, &[]);
    if let Some(range) = range {
        b = b.header("content-range", range);
    }
    h.send(b.body(Body::from(bytes.to_vec())).unwrap()).await
}

async fn put_final(h: &Harness, loc: &str, digest: &str, bytes: &[u8]) -> Resp {
    let uri = format!("{loc}?digest={digest}");
    h.send(
        h.authed("PUT", &uri, &[])
            .body(Body::from(bytes.to_vec()))
            .unwrap(),
    )
    .await
}

async fn blob(h: &Harness, digest: &Digest) -> Resp {
    h.get(&format!("/v2/acme/app/blobs/{digest}")).await
}

#[tokio::test]
async fn post_opens_a_session_with_range_0_0() {
    let h = Harness::new().await;
    let r = h
        .send(
            h.authed("POST", "/v2/acme/app/blobs/uploads/", &[])
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let id = r.header("docker-upload-uuid").unwrap();
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/acme/app/blobs/uploads/{id}").as_str())
    );
    // Distribution's choice for an empty session, pinned (reference/registry.md §6).
    assert_eq!(r.header("range"), Some("0-0"));
    let loc = r.header("location").unwrap();
    let s = h
        .send(h.authed("GET", loc, &[]).body(Body::empty()).unwrap())
        .await;
    assert_eq!(s.status, StatusCode::NO_CONTENT);
    assert_eq!(s.header("range"), Some("0-0"));
    assert_eq!(s.header("location"), Some(loc));
}

#[tokio::test]
async fn monolithic_post_creates_the_blob() {
    let h = Harness::new().await;
    let d = sha256(b"monolith");
    let r = h
        .send(
            h.authed(
                "POST",
                &format!("/v2/acme/app/blobs/uploads/?digest={d}"),
                &[],
            )
            .body(Body::from("monolith"))
            .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/acme/app/blobs/{d}").as_str())
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    assert_eq!(blob(&h, &d).await.body.as_ref(), b"monolith");
    // Wrong digest: 400 and nothing stored, no file left behind.
    let wrong = sha256(b"other");
    let r = h
        .send(
            h.authed(
                "POST",
                &format!("/v2/acme/app/blobs/uploads/?digest={wrong}"),
                &[],
            )
            .body(Body::from("monolith!"))
            .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "DIGEST_INVALID");
    assert_eq!(blob(&h, &wrong).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        std::fs::read_dir(h.state.blobs.uploads_dir())
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn chunked_upload_with_inclusive_content_ranges() {
    let h = Harness::new().await;
    let loc = start_session(&h, "").await;
    let r = patch_chunk(&h, &loc, Some("0-4"), b"hello").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range"), Some("0-4"));
    assert_eq!(r.header("location"), Some(loc.as_str()));
    assert!(r.header("docker-upload-uuid").is_some());
    let r = patch_chunk(&h, &loc, Some("bytes 5-10/*"), b" world").await;
    assert_eq!(r.header("range"), Some("0-10"));
    let d = sha256(b"hello world");
    let r = put_final(&h, &loc, &d.to_string(), b"").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    assert_eq!(blob(&h, &d).await.body.as_ref(), b"hello world");
    // The session is gone.
    let s = h
        .send(h.authed("GET", &loc, &[]).body(Body::empty()).unwrap())
        .await;
    assert_eq!(s.status, StatusCode::NOT_FOUND);
    assert_eq!(s.code(), "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn streamed_patch_without_content_range_and_final_body() {
    // containers/image sends one PATCH without Content-Range, docker a final chunk in the PUT.
    let h = Harness::new().await;
    let loc = start_session(&h, "").await;
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let r = patch_chunk(&h, &loc, None, &big[..2_000_000]).await;
    assert_eq!(r.header("range"), Some("0-1999999"));
    let d = sha256(&big);
    let r = put_final(&h, &loc, &d.to_string(), &big[2_000_000..]).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let got = blob(&h, &d).await;
    assert_eq!(got.body.len(), big.len());
    assert!(got.body.as_ref() == big.as_slice());
}

#[tokio::test]
async fn out_of_order_chunks_are_416_with_the_current_range() {
    let h = Harness::new().await;
    let loc = start_session(&h, "").await;
    let r = patch_chunk(&h, &loc, Some("5-9"), b"fghij").await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("range"), Some("0-0"));
    assert_eq!(r.header("location"), Some(loc.as_str()));
    patch_chunk(&h, &loc, Some("0-4"), b"abcde").await;
    let r = patch_chunk(&h, &loc, Some("3-7"), b"defgh").await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("range"), Some("0-4"));
    let r = patch_chunk(&h, &loc, Some("garbage"), b"x").await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    // The same check applies to a final chunk in the PUT.
    let uri = format!("{loc}?digest={}", sha256(b"abcdexyz"));
    let r = h
        .send(
            h.authed("PUT", &uri, &[])
                .header("content-range", "9-11")
                .body(Body::from("xyz"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    // A body longer than its Content-Range is refused and rolled back.
    let r = patch_chunk(&h, &loc, Some("5-6"), b"fgh").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = patch_chunk(&h, &loc, Some("5-6"), b"fg").await;
    assert_eq!(r.header("range"), Some("0-6"));
}

#[tokio::test]
async fn digest_mismatch_is_400_and_leaves_nothing() {
    let h = Harness::new().await;
    let loc = start_session(&h, "").await;
    patch_chunk(&h, &loc, None, b"content").await;
    let claimed = sha256(b"something else");
    let r = put_final(&h, &loc, &claimed.to_string(), b"").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "DIGEST_INVALID");
    assert_eq!(blob(&h, &claimed).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        blob(&h, &sha256(b"content")).await.status,
        StatusCode::NOT_FOUND
    );
    let s = h
        .send(h.authed("GET", &loc, &[]).body(Body::empty()).unwrap())
        .await;
    assert_eq!(s.status, StatusCode::NOT_FOUND);
    assert_eq!(
        std::fs::read_dir(h.state.blobs.uploads_dir())
            .unwrap()
            .count(),
        0
    );
    // Missing or malformed digest parameters are refused without ending the session.
    let loc = start_session(&h, "").await;
    let r = h
        .send(h.authed("PUT", &loc, &[]).body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.code(), "DIGEST_INVALID");
    let r = put_final(&h, &loc, "sha256:short", b"").await;
    assert_eq!(r.code(), "DIGEST_INVALID");
    let s = h
        .send(h.authed("GET", &loc, &[]).body(Body::empty()).unwrap())
        .await;
    assert_eq!(s.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn empty_blobs_upload_by_session_and_monolith() {
    let h = Harness::new().await;
    let loc = start_session(&h, "").await;
    let r = put_final(&h, &loc, EMPTY, b"").await;
    assert_eq!(r.status, StatusCode::CREATED);
    let got = blob(&h, &EMPTY.parse().unwrap()).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("content-length"), Some("0"));
    assert!(got.body.is_empty());
    let d = h.push_blob("acme/other", b"").await;
    assert_eq!(d.to_string(), EMPTY);
}

#[tokio::test]
async fn sha512_uploads() {
    let h = Harness::new().await;
    let d = Digest::of(Algorithm::Sha512, b"sha512 content");
    let loc = start_session(&h, "?digest-algorithm=sha512").await;
    patch_chunk(&h, &loc, Some("0-5"), b"sha512").await;
    let r = put_final(&h, &loc, &d.to_string(), b" content").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(blob(&h, &d).await.body.as_ref(), b"sha512 content");
    assert!(h.dir.path().join("blobs/sha512").exists());
    // Monolithic with a sha512 digest.
    let d = Digest::of(Algorithm::Sha512, b"mono");
    let r = h
        .send(
            h.authed(
                "POST",
                &format!("/v2/acme/app/blobs/uploads/?digest={d}"),
                &[],
            )
            .body(Body::from("mono"))
            .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // A sha256 session cannot be finished with a sha512 digest; an unknown algorithm is refused.
    let loc = start_session(&h, "").await;
    let r = put_final(&h, &loc, &d.to_string(), b"").await;
    assert_eq!(r.code(), "DIGEST_INVALID");
    let r = h
        .send(
            h.authed(
                "POST",
                "/v2/acme/app/blobs/uploads/?digest-algorithm=md5",
                &[],
            )
            .body(Body::empty())
            .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn upload_resumes_after_restart() {
    let mut h = Harness::new().await;
    let loc = start_session(&h, "").await;
    let r = patch_chunk(&h, &loc, Some("0-3"), b"part").await;
    assert_eq!(r.header("range"), Some("0-3"));
    h.restart();
    let s = h
        .send(h.authed("GET", &loc, &[]).body(Body::empty()).unwrap())
        .await;
    assert_eq!(s.header("range"), Some("0-3"));
    let r = patch_chunk(&h, &loc, Some("4-8"), b" two.").await;
    assert_eq!(r.header("range"), Some("0-8"));
    let d = sha256(b"part two.");
    let r = put_final(&h, &loc, &d.to_string(), b"").await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(blob(&h, &d).await.body.as_ref(), b"part two.");
}

#[tokio::test]
async fn bytes_past_the_committed_offset_are_discarded() {
    // What a SIGKILL between writing a chunk and committing its offset leaves behind.
    let h = Harness::new().await;
    let loc = start_session(&h, "").await;
    patch_chunk(&h, &loc, None, b"abc").await;
    let id: uuid::Uuid = loc.rsplit('/').next().unwrap().parse().unwrap();
    let path = h.state.blobs.upload_path(&id);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"half-written chunk"))
        .unwrap();
    let r = patch_chunk(&h, &loc, Some("3-5"), b"def").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range"), Some("0-5"));
    let d = sha256(b"abcdef");
    assert_eq!(
        put_final(&h, &loc, &d.to_string(), b"").await.status,
        StatusCode::CREATED
    );
    assert_eq!(blob(&h, &d).await.body.as_ref(), b"abcdef");
}

#[tokio::test]
async fn lost_upload_bytes_end_the_session() {
    let h = Harness::new().await;
    let loc = start_session(&h, "").await;
    patch_chunk(&h, &loc, None, b"abc").await;
    let id: uuid::Uuid = loc.rsplit('/').next().unwrap().parse().unwrap();
    std::fs::write(h.state.blobs.upload_path(&id), b"a").unwrap();
    let r = patch_chunk(&h, &loc, None, b"def").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn cross_repository_mount_or_fallback() {
    let h = Harness::new().await;
    let d = h.push_blob("acme/other", b"shared layer").await;
    let both = h.token(&["acme/app", "acme/other"], &[]);
    let post = |query: String, token: String| {
        h.send(
            req("POST", &format!("/v2/acme/app/blobs/uploads/?{query}"))
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap(),
        )
    };
    // Allowed to pull from `from` and the blob is there: 201.
    let r = post(format!("mount={d}&from=acme/other"), both.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/acme/app/blobs/{d}").as_str())
    );
    assert_eq!(blob(&h, &d).await.body.as_ref(), b"shared layer");
    // Not allowed to pull from `from`: a normal session instead.
    let only_app = h.token(&["acme/app"], &[]);
    let d2 = h.push_blob("acme/other", b"private layer").await;
    let r = post(format!("mount={d2}&from=acme/other"), only_app).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(r.header("docker-upload-uuid").is_some());
    assert_eq!(blob(&h, &d2).await.status, StatusCode::NOT_FOUND);
    // The blob is not in `from`, or `from` is missing: a session too.
    let absent = sha256(b"absent");
    let r = post(format!("mount={absent}&from=acme/other"), both.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = post(format!("mount={d2}"), both).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn concurrent_identical_uploads_both_succeed() {
    let h = Harness::new().await;
    let content: Vec<u8> = (0..500_000u32).map(|i| (i % 199) as u8).collect();
    let d = sha256(&content).to_string();
    let (a, b) = (start_session(&h, "").await, start_session(&h, "").await);
    patch_chunk(&h, &a, None, &content).await;
    patch_chunk(&h, &b, None, &content).await;
    let (ra, rb) = tokio::join!(put_final(&h, &a, &d, b""), put_final(&h, &b, &d, b""));
    assert_eq!(ra.status, StatusCode::CREATED);
    assert_eq!(rb.status, StatusCode::CREATED);
    assert_eq!(
        blob(&h, &d.parse().unwrap()).await.body.len(),
        content.len()
    );
    let (ma, mb) = tokio::join!(
        h.push_blob("acme/app", b"same"),
        h.push_blob("acme/app", b"same")
    );
    assert_eq!(ma, mb);
}

#[tokio::test]
async fn oversized_blobs_are_413_and_leave_no_session() {
    let h = Harness::with_config(|c| c.maximum_layer_size = "10".into()).await;
    let loc = start_session(&h, "").await;
    patch_chunk(&h, &loc, None, b"0123456").await;
    let r = patch_chunk(&h, &loc, None, b"789ab").await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.code(), "SIZE_INVALID");
    let s = h
        .send(h.authed("GET", &loc, &[]).body(Body::empty()).unwrap())
        .await;
    assert_eq!(s.status, StatusCode::NOT_FOUND);
    // Refused up front from Content-Length, and for a monolithic POST.
    let loc = start_session(&h, "").await;
    let r = h
        .send(
            h.authed("PATCH", &loc, &[])
                .header("content-length", "11")
                .body(Body::from("0123456789a"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let d = sha256(b"0123456789abc");
    let r = h
        .send(
            h.authed(
                "POST",
                &format!("/v2/acme/app/blobs/uploads/?digest={d}"),
                &[],
            )
            .body(Body::from("0123456789abc"))
            .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        std::fs::read_dir(h.state.blobs.uploads_dir())
            .unwrap()
            .count(),
        0
    );
    // Exactly at the limit is fine.
    h.push_blob("acme/app", b"0123456789").await;
}

#[tokio::test]
async fn cancel_and_unknown_uploads() {
    let h = Harness::new().await;
    let loc = start_session(&h, "").await;
    patch_chunk(&h, &loc, None, b"abc").await;
    let id: uuid::Uuid = loc.rsplit('/').next().unwrap().parse().unwrap();
    assert!(h.state.blobs.upload_path(&id).exists());
    let r = h
        .send(h.authed("DELETE", &loc, &[]).body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(!h.state.blobs.upload_path(&id).exists());
    let r = patch_chunk(&h, &loc, None, b"def").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");
    let r = h
        .send(h.authed("DELETE", &loc, &[]).body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // A session is only reachable through its own repository.
    let loc = start_session(&h, "").await;
    let elsewhere = loc.replace("/acme/app/", "/acme/other/");
    let r = patch_chunk(&h, &elsewhere, None, b"x").await;
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn uploads_need_push() {
    let h = Harness::new().await;
    let r = h
        .send(
            h.authed("POST", "/v2/acme/app/blobs/uploads/", &["pull"])
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    // The token's subject has no account, so lacking the action is a 403, not a re-challenge.
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "DENIED");
    let r = h
        .send(
            req("POST", "/v2/acme/app/blobs/uploads/")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("scope=\"repository:acme/app:pull,push\"")
    );
}

#[tokio::test]
async fn cleanup_spares_a_monolithic_upload_in_flight() {
    use bytes::Bytes;
    // Regression: a monolithic `POST ?digest=` has no session row and held no lock, so the orphan
    // sweep deleted its file once the mtime looked old (a stalled client) and the final rename
    // failed with a 500.
    let h = Harness::with_config(|c| c.upload_max_age_s = 3600).await;
    let (first, rest) = (b"slow monolithic ".as_slice(), b"upload".as_slice());
    let d = sha256(&[first, rest].concat());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let body = futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|item| (item, rx))
    });
    let request = h
        .authed(
            "POST",
            &format!("/v2/acme/app/blobs/uploads/?digest={d}"),
            &[],
        )
        .body(Body::from_stream(body))
        .unwrap();
    let app = crate::router(h.state.clone());
    let pending = tokio::spawn(tower::ServiceExt::oneshot(app, request));
    tx.send(Ok(Bytes::from_static(first))).await.unwrap();
    let dir = h.state.blobs.uploads_dir();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let file = loop {
        if let Some(e) = std::fs::read_dir(&dir).unwrap().next() {
            break e.unwrap().path();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "upload file never appeared"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let report = crate::storage::cleanup::sweep(&h.state, std::time::SystemTime::now())
        .await
        .unwrap();
    assert_eq!(report.orphan_files, 0);
    assert!(file.exists());
    tx.send(Ok(Bytes::from_static(rest))).await.unwrap();
    drop(tx);
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(blob(&h, &d).await.body.as_ref(), b"slow monolithic upload");
}
