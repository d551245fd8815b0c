//! Crash tests: SIGKILL the server in the middle of a chunked upload (between chunks, and while a
//! PATCH body is streaming), restart it on the same data directory and port, and finish the
//! upload from the Range the server reports. Every blob GET hashes the body against the requested
//! digest (`Client::get_blob`), so no request may ever return bytes of another digest.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    unreachable_pub,
    missing_debug_implementations
)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::push::{random_bytes, sha256};
use common::{Client, Registry};
use reqwest::Method;

const CHUNK: usize = 256 * 1024;

fn setup() -> (Registry, Client) {
    let reg = Registry::start();
    let alice = reg.user("alice");
    (reg, alice)
}

/// The upload's uuid: the last path segment of its Location.
fn upload_uuid(location: &str) -> String {
    let path = location.split('?').next().unwrap_or(location);
    path.rsplit('/').next().unwrap_or("").to_owned()
}

/// PATCH `data[from..]` in chunks with Content-Range; returns the last Location.
async fn patch_rest(c: &Client, mut loc: String, data: &[u8], from: usize) -> String {
    let mut offset = from;
    for part in data[from..].chunks(CHUNK) {
        let r = c.patch_chunk(&loc, part, Some(offset as u64)).await;
        r.expect_status(202, "PATCH chunk");
        offset += part.len();
        assert_eq!(r.range_offset(), offset as u64, "{r:#?}");
        loc = c.url(r.must_header("location"));
    }
    loc
}

/// After a restart: GET the status, check the offset is within `[min, max]`, continue from it,
/// PUT the digest, read the blob back.
async fn resume_and_finish(c: &Client, r: &str, loc: &str, data: &[u8], min: u64, max: u64) {
    let d = sha256(data);
    // Nothing may be served under the final digest before the PUT.
    assert_eq!(c.get_blob(r, &d).await.status.as_u16(), 404);
    let st = c.send(Method::GET, loc, &[], Bytes::new()).await;
    st.expect_status(204, "upload status after restart");
    let offset = st.range_offset();
    eprintln!("restarted session reports offset {offset} (allowed {min}..={max})");
    assert!(
        (min..=max).contains(&offset),
        "restarted session reports offset {offset}, expected {min}..={max}: {st:#?}"
    );
    let loc = c.url(st.must_header("location"));
    let offset = usize::try_from(offset).unwrap();
    let loc = patch_rest(c, loc, data, offset).await;
    let put = c.put_upload(&loc, &d, &[]).await;
    put.expect_status(201, "PUT after the restart");
    assert_eq!(put.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(c.blob_bytes(r, &d).await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_chunks_then_resume() {
    let (mut reg, c) = setup();
    let r = "alice/crash-between";
    let data = random_bytes(5 * CHUNK + 123);
    let (loc, _) = c.start_upload(r).await;
    let loc = patch_rest(&c, loc, &data[..3 * CHUNK], 0).await;
    reg.kill();
    reg.restart();
    resume_and_finish(&c, r, &loc, &data, 3 * CHUNK as u64, 3 * CHUNK as u64).await;
}

/// Start a PATCH whose body is sent in two halves, the second never: wait until the server has
/// (probably) stored part of the first half, SIGKILL it, and restart it.
async fn kill_during_patch(
    reg: &mut Registry,
    c: &Client,
    repo: &str,
    loc: &str,
    chunk: &[u8],
    start: u64,
    with_range: bool,
) {
    c.authorize(repo, &[&format!("repository:{repo}:pull,push")])
        .await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|item| (item, rx))
    }));
    let len = chunk.len().to_string();
    let range = format!("{start}-{}", start + chunk.len() as u64 - 1);
    let mut headers = vec![("content-type", "application/octet-stream")];
    if with_range {
        headers.push(("content-length", len.as_str()));
        headers.push(("content-range", range.as_str()));
    }
    let request = c.send_stream(Method::PATCH, loc, &headers, body);
    let file = reg.data_dir().join("uploads").join(upload_uuid(loc));
    let driver = async {
        let half = chunk.len() / 2;
        tx.send(Ok(Bytes::copy_from_slice(&chunk[..half])))
            .await
            .expect("feeding the PATCH body");
        // Wait (bounded) until the upload file grows past what was committed before this PATCH.
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            if size > start {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        eprintln!("killing the server mid-PATCH: committed {start}, upload file holds {size}");
        reg.kill();
        drop(tx);
    };
    let (outcome, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(request, driver)
    })
    .await
    .expect("the interrupted PATCH ends once the server is gone");
    if let Ok(resp) = outcome {
        panic!("a PATCH cut off by SIGKILL cannot have been answered: {resp:#?}");
    }
    reg.restart();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_ranged_patch_then_resume() {
    let (mut reg, c) = setup();
    let r = "alice/crash-ranged";
    let data = random_bytes(6 * CHUNK);
    let (loc, _) = c.start_upload(r).await;
    let loc = patch_rest(&c, loc, &data[..2 * CHUNK], 0).await;
    let chunk = &data[2 * CHUNK..4 * CHUNK];
    kill_during_patch(&mut reg, &c, r, &loc, chunk, 2 * CHUNK as u64, true).await;
    // A partial chunk may be kept or dropped, never more than was sent.
    let sent = 2 * CHUNK as u64 + chunk.len() as u64 / 2;
    resume_and_finish(&c, r, &loc, &data, 2 * CHUNK as u64, sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_streamed_patch_then_resume() {
    let (mut reg, c) = setup();
    let r = "alice/crash-streamed";
    let data = random_bytes(4 * CHUNK + 7);
    let (loc, _) = c.start_upload(r).await;
    let loc = patch_rest(&c, loc, &data[..CHUNK], 0).await;
    let chunk = &data[CHUNK..3 * CHUNK];
    kill_during_patch(&mut reg, &c, r, &loc, chunk, CHUNK as u64, false).await;
    let sent = CHUNK as u64 + chunk.len() as u64 / 2;
    resume_and_finish(&c, r, &loc, &data, CHUNK as u64, sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_content_survives_sigkill() {
    let (mut reg, c) = setup();
    let r = "alice/durable";
    let img = common::image::random_oci_image(2, 50_000);
    c.push_image(r, "v1", &img).await;
    let chunked = random_bytes(3 * CHUNK + 1);
    let d = c.push_blob_chunked(r, &chunked, CHUNK).await;
    reg.kill();
    reg.restart();
    let got = c.fetch_manifest(Method::GET, r, "v1").await;
    got.expect_status(200, "manifest after SIGKILL");
    assert_eq!(got.body, img.manifest);
    for b in img.blobs() {
        assert_eq!(c.blob_bytes(r, &b.digest).await, b.data);
    }
    assert_eq!(c.blob_bytes(r, &d).await, chunked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kills_during_one_upload() {
    let (mut reg, c) = setup();
    let r = "alice/crash-repeat";
    let data = random_bytes(6 * CHUNK + 99);
    let (mut loc, _) = c.start_upload(r).await;
    let mut offset = 0usize;
    for round in 0..3 {
        let end = (offset + 2 * CHUNK).min(data.len());
        loc = patch_rest(&c, loc, &data[..end], offset).await;
        reg.kill();
        reg.restart();
        let st = c.send(Method::GET, &loc, &[], Bytes::new()).await;
        st.expect_status(204, "status after a restart");
        assert_eq!(st.range_offset(), end as u64, "round {round}");
        loc = c.url(st.must_header("location"));
        offset = end;
    }
    let loc = patch_rest(&c, loc, &data, offset).await;
    let d = sha256(&data);
    c.put_upload(&loc, &d, &[])
        .await
        .expect_status(201, "final PUT");
    assert_eq!(c.blob_bytes(r, &d).await, data);
}

#[test]
fn the_server_is_reaped_when_a_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let reg = Registry::start();
        tx.send(reg.pid().expect("running")).unwrap();
        panic!("a failing test (deliberate)");
    })
    .join();
    assert!(outcome.is_err(), "the thread panicked");
    let pid = rx.recv().unwrap();
    // Reaped, not a zombie: the pid is gone from /proc.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "registry-core {pid} outlived the panicking test"
    );
}
