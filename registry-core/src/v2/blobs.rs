//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`.
//!
//! A blob is visible in a repository only through its `repo_blob` row; the file under `blobs/` is
//! shared by every repository holding the digest. Bodies are streamed from the file, never read
//! into memory, and single byte ranges are served (RFC 9110 §14).

use axum::body::Body;
use axum::response::Response;
use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, RANGE};
use http::{HeaderMap, StatusCode};
use rusqlite::{OptionalExtension as _, params};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio_util::io::ReaderStream;

use super::{CONTENT_DIGEST, empty, name_unknown, respond};
use crate::auth::{Action, authorize};
use crate::db::DbError;
use crate::digest::Digest;
use crate::error::{ApiError, ErrorCode};
use crate::names::RepoName;
use crate::state::AppState;

/// Read buffer of blob streams (the tokio file reads this much per blocking call).
const READ_CHUNK: u64 = 256 << 10;

fn blob_unknown(digest: &Digest) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::BlobUnknown,
        format!("blob {digest} is not known in this repository"),
    )
    .with_detail(serde_json::json!({ "digest": digest.to_string() }))
}

/// What a `Range` header asks of a blob of a given size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ByteRange {
    /// No (usable) range: the whole blob, 200.
    Full,
    /// Inclusive `start..=end`, 206.
    Part { start: u64, end: u64 },
    /// 416.
    Unsatisfiable,
}

/// Parse a single `bytes=a-b`, `bytes=a-` or `bytes=-n`. Syntactically invalid or multi-range
/// headers are ignored (the whole blob is served), which RFC 9110 §14.2 allows.
fn byte_range(value: Option<&str>, size: u64) -> ByteRange {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return ByteRange::Full;
    };
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return ByteRange::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let last = size.checked_sub(1);
    match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        // suffix: the last n bytes
        (None, Some(n)) if a.is_empty() => match last {
            Some(last) if n > 0 => ByteRange::Part {
                start: size - n.min(size),
                end: last,
            },
            _ => ByteRange::Unsatisfiable,
        },
        (Some(start), None) if b.is_empty() => match last {
            Some(last) if start <= last => ByteRange::Part { start, end: last },
            _ => ByteRange::Unsatisfiable,
        },
        (Some(start), Some(end)) if start <= end => match last {
            Some(last) if start <= last => ByteRange::Part {
                start,
                end: end.min(last),
            },
            _ => ByteRange::Unsatisfiable,
        },
        _ => ByteRange::Full,
    }
}

/// The size of `digest` if it is linked in repository `name`; NAME_UNKNOWN / BLOB_UNKNOWN else.
async fn linked_size(state: &AppState, name: &RepoName, digest: &Digest) -> Result<u64, ApiError> {
    let (n, d) = (name.to_string(), digest.to_string());
    let row: Option<(i64, Option<u64>)> = state
        .db
        .read(move |c| {
            c.prepare_cached(
                "SELECT r.id, (SELECT b.size FROM repo_blob rb JOIN blob b ON b.digest = rb.digest \
                 WHERE rb.repository_id = r.id AND rb.digest = ?2) \
                 FROM repository r WHERE r.name = ?1",
            )?
            .query_row(params![n, d], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(DbError::from)
        })
        .await?;
    match row {
        None => Err(name_unknown(name)),
        Some((_, None)) => Err(blob_unknown(digest)),
        Some((_, Some(size))) => Ok(size),
    }
}

/// `GET`/`HEAD /v2/<name>/blobs/<digest>`.
pub(super) async fn get(
    state: &AppState,
    name: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, ApiError> {
    authorize(state, headers, name, Action::Pull).await?;
    let size = linked_size(state, name, digest).await?;
    // Open the file before answering, HEAD included: a row whose file is gone (lost in a power
    // failure, removed by hand) must be unknown to HEAD as it is to GET, or a client that checks
    // with HEAD skips the upload and pushes a manifest whose blob can never be pulled.
    let path = state.blobs.blob_path(digest);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(blob_unknown(digest)),
        Err(e) => return Err(ApiError::internal(e)),
    };
    let range = byte_range(headers.get(RANGE).and_then(|v| v.to_str().ok()), size);
    let digest_s = digest.to_string();
    let etag = format!("\"{digest}\"");
    let (status, start, len, content_range) = match range {
        ByteRange::Full => (StatusCode::OK, 0, size, None),
        ByteRange::Part { start, end } => (
            StatusCode::PARTIAL_CONTENT,
            start,
            end - start + 1,
            Some(format!("bytes {start}-{end}/{size}")),
        ),
        ByteRange::Unsatisfiable => {
            return Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::RangeInvalid,
                format!("requested range is not satisfiable for a blob of {size} bytes"),
            )
            .with_header(CONTENT_RANGE, &format!("bytes */{size}")));
        }
    };
    let len_s = len.to_string();
    let mut hdrs = vec![
        (CONTENT_DIGEST, digest_s.as_str()),
        (CONTENT_TYPE, "application/octet-stream"),
        (CONTENT_LENGTH, len_s.as_str()),
        (ACCEPT_RANGES, "bytes"),
        (ETAG, etag.as_str()),
    ];
    if let Some(cr) = &content_range {
        hdrs.push((CONTENT_RANGE, cr.as_str()));
    }
    if head {
        return respond(status, &hdrs, Body::empty());
    }
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start)).await?;
    }
    let chunk = usize::try_from(len.clamp(1, READ_CHUNK)).unwrap_or(8192);
    let stream = ReaderStream::with_capacity(file.take(len), chunk);
    respond(status, &hdrs, Body::from_stream(stream))
}

/// `DELETE /v2/<name>/blobs/<digest>`: unlink the blob from the repository. The file stays: other
/// repositories may hold the digest, and reclaiming unreferenced files is the garbage collector's
/// job (a later issue), which must apply a grace window for pushes in flight.
pub(super) async fn delete(
    state: &AppState,
    name: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    authorize(state, headers, name, Action::Delete).await?;
    let (n, d) = (name.clone(), digest.to_string());
    let removed = state
        .db
        .write(move |tx| {
            let Some(repo) = super::repo_id(tx, &n)? else {
                return Ok(None);
            };
            let count = tx
                .prepare_cached("DELETE FROM repo_blob WHERE repository_id = ?1 AND digest = ?2")?
                .execute(params![repo, d])?;
            Ok::<_, ApiError>(Some(count))
        })
        .await?;
    match removed {
        None => Err(name_unknown(name)),
        Some(0) => Err(blob_unknown(digest)),
        Some(_) => empty(StatusCode::ACCEPTED, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn ranges_are_inclusive_and_clamped() {
        let r = |v: &str, size| byte_range(Some(v), size);
        assert_eq!(r("bytes=0-0", 10), ByteRange::Part { start: 0, end: 0 });
        assert_eq!(r("bytes=2-5", 10), ByteRange::Part { start: 2, end: 5 });
        assert_eq!(r("bytes=8-100", 10), ByteRange::Part { start: 8, end: 9 });
        assert_eq!(r("bytes=7-", 10), ByteRange::Part { start: 7, end: 9 });
        assert_eq!(r("bytes=-3", 10), ByteRange::Part { start: 7, end: 9 });
        assert_eq!(r("bytes=-30", 10), ByteRange::Part { start: 0, end: 9 });
        assert_eq!(r("bytes=10-", 10), ByteRange::Unsatisfiable);
        assert_eq!(r("bytes=10-12", 10), ByteRange::Unsatisfiable);
        assert_eq!(r("bytes=-0", 10), ByteRange::Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), ByteRange::Unsatisfiable);
        assert_eq!(r("bytes=5-2", 10), ByteRange::Full);
        assert_eq!(r("bytes=0-1,3-4", 10), ByteRange::Full);
        assert_eq!(r("items=0-1", 10), ByteRange::Full);
        assert_eq!(byte_range(None, 10), ByteRange::Full);
    }

    use proptest::prelude::*;

    /// A number as a client might write it: small, huge, signed, padded or not a number at all.
    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            (0u64..40).prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            Just(u64::MAX.to_string()),
            Just("18446744073709551616".to_owned()),
            "[+-]?[0-9]{1,3}",
            " {0,2}[0-9]{1,3} {0,2}",
            "[0-9a-z ,=-]{0,4}",
        ]
    }

    fn range_header() -> impl Strategy<Value = String> {
        prop_oneof![
            (
                " {0,2}",
                "(bytes|Bytes|items)=",
                number(),
                "-{1,2}",
                number()
            )
                .prop_map(|(sp, unit, a, dash, b)| format!("{sp}{unit}{a}{dash}{b}")),
            (number(), number(), number(), number())
                .prop_map(|(a, b, c, d)| format!("bytes={a}-{b},{c}-{d}")),
            any::<String>(),
        ]
    }

    fn blob_size() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..50, any::<u64>(), Just(u64::MAX)]
    }

    proptest! {
        #[test]
        fn byte_range_never_panics_and_stays_within_the_blob(
            header in prop::option::of(range_header()),
            size in blob_size(),
        ) {
            match byte_range(header.as_deref(), size) {
                ByteRange::Part { start, end } => {
                    prop_assert!(start <= end && end < size, "{:?} of {}: {}-{}",
                        header, size, start, end);
                }
                ByteRange::Full | ByteRange::Unsatisfiable => {}
            }
        }

        #[test]
        fn well_formed_ranges_are_served_as_asked(
            start in 0u64..60,
            len in 1u64..60,
            size in 0u64..60,
        ) {
            let end = start + len - 1;
            let got = byte_range(Some(&format!("bytes={start}-{end}")), size);
            let want = if start < size {
                ByteRange::Part { start, end: end.min(size - 1) }
            } else {
                ByteRange::Unsatisfiable
            };
            prop_assert_eq!(got, want);
            let got = byte_range(Some(&format!("bytes=-{len}")), size);
            let want = if size > 0 {
                ByteRange::Part { start: size - len.min(size), end: size - 1 }
            } else {
                ByteRange::Unsatisfiable
            };
            prop_assert_eq!(got, want);
        }
    }

    #[tokio::test]
    async fn get_head_and_range_reads() {
        let h = Harness::new().await;
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let d = h.push_blob("acme/app", &data).await;
        let uri = format!("/v2/acme/app/blobs/{d}");
        let r = h.get(&uri).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body.as_ref(), data.as_slice());
        assert_eq!(
            r.header("docker-content-digest"),
            Some(d.to_string().as_str())
        );
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
        let r = h
            .send(
                h.authed("HEAD", &uri, &["pull"])
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-length"), Some("1000"));
        assert!(r.body.is_empty());
        let ranged = |range: &'static str| {
            h.send(
                h.authed("GET", &uri, &["pull"])
                    .header("range", range)
                    .body(Body::empty())
                    .unwrap(),
            )
        };
        let r = ranged("bytes=10-19").await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.body.as_ref(), &data[10..20]);
        assert_eq!(r.header("content-range"), Some("bytes 10-19/1000"));
        assert_eq!(r.header("content-length"), Some("10"));
        let r = ranged("bytes=-5").await;
        assert_eq!(r.body.as_ref(), &data[995..]);
        let r = ranged("bytes=1000-").await;
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.header("content-range"), Some("bytes */1000"));
    }

    #[tokio::test]
    async fn head_of_a_blob_whose_file_is_lost_is_blob_unknown_like_get() {
        // Regression: HEAD answered 200 from the database row alone, so a client that probes with
        // HEAD skipped the upload and pushed a manifest whose layer GET then answers 404.
        let h = Harness::new().await;
        let d = h.push_blob("acme/app", b"layer").await;
        std::fs::remove_file(h.state.blobs.blob_path(&d)).unwrap();
        let uri = format!("/v2/acme/app/blobs/{d}");
        let r = h.get(&uri).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let r = h
            .send(
                h.authed("HEAD", &uri, &["pull"])
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn blobs_are_visible_per_repository_and_deletable() {
        let h = Harness::new().await;
        let d = h.push_blob("acme/app", b"layer").await;
        h.push_blob("acme/other", b"unrelated").await;
        let r = h.get(&format!("/v2/acme/other/blobs/{d}")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.code(), "BLOB_UNKNOWN");
        let uri = format!("/v2/acme/app/blobs/{d}");
        let r = h
            .send(
                h.authed("DELETE", &uri, &["pull"])
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        // The token's subject has no account, so lacking the action is a 403, not a re-challenge.
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        let r = h
            .send(h.authed("DELETE", &uri, &[]).body(Body::empty()).unwrap())
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        let r = h.get(&uri).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.code(), "BLOB_UNKNOWN");
        let r = h
            .send(h.authed("DELETE", &uri, &[]).body(Body::empty()).unwrap())
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
}
