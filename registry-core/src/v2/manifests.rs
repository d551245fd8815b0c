//! `PUT`/`GET`/`HEAD`/`DELETE /v2/<name>/manifests/<tag or digest>`.
//!
//! A PUT is validated ([`crate::manifest::parse`]), checked against what the repository holds
//! (every config/layer blob linked, every index child present; a missing `subject` is fine), and
//! stored with its exact bytes, its edges, its tags and a `push` event in one transaction.

use axum::body::Body;
use axum::response::Response;
use futures_util::StreamExt as _;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG, LOCATION};
use http::{HeaderMap, HeaderName, StatusCode};
use rusqlite::{OptionalExtension as _, params};

use super::{
    CONTENT_DIGEST, OCI_SUBJECT, OCI_TAG, Query, ensure_repo, manifest_location, name_unknown,
    new_repo, respond,
};
use crate::auth::{Action, authorize};
use crate::db::{DbError, now_ms};
use crate::digest::{Algorithm, Digest};
use crate::error::{ApiError, ErrorCode, error_chain};
use crate::manifest::{self, ParsedManifest};
use crate::names::{Reference, RepoName, Tag};
use crate::state::AppState;

fn manifest_unknown(reference: &Reference) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::ManifestUnknown,
        format!("manifest {reference} is not known in this repository"),
    )
}

fn invalid(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid, message)
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::SizeInvalid,
        format!("manifest exceeds the registry's limit of {limit} bytes"),
    )
}

/// How much of a refused (oversized) manifest body is read and discarded before answering 413.
/// Answering without reading the body makes hyper close the connection while the client is still
/// writing, and many clients then report the broken pipe instead of our 413.
const DRAIN_CAP: usize = 16 << 20;

/// Collect a manifest body, refusing it past `limit` bytes.
async fn read_limited(body: Body, limit: u64) -> Result<Vec<u8>, ApiError> {
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| invalid(format!("failed to read manifest body: {e}")))?;
        if buf.len().saturating_add(chunk.len()) > cap {
            let mut discarded = buf.len() + chunk.len();
            drop(buf);
            while discarded < DRAIN_CAP {
                match stream.next().await {
                    Some(Ok(more)) => discarded += more.len(),
                    _ => break,
                }
            }
            return Err(too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// `PUT /v2/<name>/manifests/<reference>[?tag=..]`.
pub(super) async fn put(
    state: &AppState,
    name: &RepoName,
    reference: Reference,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let grant = authorize(state, headers, name, Action::Push).await?;
    let bytes = read_limited(body, state.config.maximum_manifest_size).await?;
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let parsed = manifest::parse(content_type, &bytes).map_err(|e| invalid(error_chain(&e)))?;
    let digest = match &reference {
        Reference::Digest(d) => {
            let actual = Digest::of(d.algorithm(), &bytes);
            if actual != *d {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::DigestInvalid,
                    format!("manifest body has digest {actual}, not {d}"),
                ));
            }
            actual
        }
        Reference::Tag(_) => Digest::of(Algorithm::Sha256, &bytes),
    };
    let mut query_tags = Vec::new();
    for t in query.all("tag") {
        let tag: Tag = t
            .parse()
            .map_err(|e: crate::names::NameError| invalid(e.to_string()))?;
        if !query_tags.contains(&tag) {
            query_tags.push(tag);
        }
    }
    let mut tags = query_tags.clone();
    if let Reference::Tag(t) = &reference
        && !tags.contains(t)
    {
        tags.insert(0, t.clone());
    }
    let subject = parsed.subject.clone();
    let stored = Stored {
        name: name.clone(),
        digest: digest.clone(),
        bytes,
        parsed,
        tags,
        pusher: grant.subject.clone(),
    };
    let vis = new_repo(state, &grant);
    state.db.write(move |tx| store(tx, &vis, &stored)).await?;

    let (loc, d) = (
        manifest_location(name, &Reference::Digest(digest.clone())),
        digest.to_string(),
    );
    let subject_s = subject.map(|s| s.to_string());
    let mut hdrs: Vec<(HeaderName, &str)> = vec![(LOCATION, &loc), (CONTENT_DIGEST, &d)];
    if let Some(s) = &subject_s {
        hdrs.push((OCI_SUBJECT, s));
    }
    for t in &query_tags {
        hdrs.push((OCI_TAG, t.as_str()));
    }
    super::empty(StatusCode::CREATED, &hdrs)
}

/// Everything one manifest PUT writes.
struct Stored {
    name: RepoName,
    digest: Digest,
    bytes: Vec<u8>,
    parsed: ParsedManifest,
    tags: Vec<Tag>,
    pusher: Option<String>,
}

fn blob_unknown(digest: &Digest, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::ManifestBlobUnknown,
        format!("manifest references {what} {digest}, which is not in this repository"),
    )
    .with_detail(serde_json::json!({ "digest": digest.to_string() }))
}

// Runs in the write transaction.
fn store(tx: &rusqlite::Transaction<'_>, vis: &super::NewRepo, s: &Stored) -> Result<(), ApiError> {
    let repo = ensure_repo(tx, &s.name, vis)?;
    let d = s.digest.to_string();
    {
        let mut blob =
            tx.prepare_cached("SELECT 1 FROM repo_blob WHERE repository_id = ?1 AND digest = ?2")?;
        for b in &s.parsed.blobs {
            if !blob.exists(params![repo, b.to_string()])? {
                return Err(blob_unknown(b, "blob"));
            }
        }
        let mut child =
            tx.prepare_cached("SELECT 1 FROM manifest WHERE repository_id = ?1 AND digest = ?2")?;
        for c in &s.parsed.children {
            if !child.exists(params![repo, c.to_string()])? {
                return Err(blob_unknown(c, "manifest"));
            }
        }
    }
    let now = now_ms();
    let p = &s.parsed;
    tx.prepare_cached(
        "INSERT INTO manifest (repository_id, digest, media_type, bytes, subject, artifact_type, \
         config_media_type, annotations, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
         ON CONFLICT (repository_id, digest) DO NOTHING",
    )?
    .execute(params![
        repo,
        d,
        p.media_type,
        s.bytes,
        p.subject.as_ref().map(|x| x.to_string()),
        p.artifact_type,
        p.config_media_type,
        p.annotations,
        now
    ])?;
    let id: i64 = tx
        .prepare_cached("SELECT id FROM manifest WHERE repository_id = ?1 AND digest = ?2")?
        .query_row(params![repo, d], |r| r.get(0))?;
    {
        let mut edge = tx.prepare_cached(
            "INSERT OR IGNORE INTO manifest_blob (manifest_id, digest) VALUES (?1, ?2)",
        )?;
        for b in &p.blobs {
            edge.execute(params![id, b.to_string()])?;
        }
        let mut edge = tx.prepare_cached(
            "INSERT OR IGNORE INTO manifest_child (manifest_id, child_digest) VALUES (?1, ?2)",
        )?;
        for c in &p.children {
            edge.execute(params![id, c.to_string()])?;
        }
    }
    for tag in &s.tags {
        let current: Option<String> = tx
            .prepare_cached(
                "SELECT manifest_digest FROM tag \
                 WHERE repository_id = ?1 AND name = ?2 AND lifetime_end_ms IS NULL",
            )?
            .query_row(params![repo, tag.as_str()], |r| r.get(0))
            .optional()?;
        if current.as_deref() == Some(d.as_str()) {
            continue;
        }
        if current.is_some() {
            end_tag(tx, repo, tag.as_str(), now)?;
        }
        tx.prepare_cached(
            "INSERT INTO tag (repository_id, name, manifest_digest, lifetime_start_ms) \
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![repo, tag.as_str(), d, now])?;
    }
    let tags: Vec<&str> = s.tags.iter().map(Tag::as_str).collect();
    let payload = serde_json::json!({
        "repository": s.name.as_str(),
        "digest": d,
        "tags": tags,
        "media_type": p.media_type,
        "pusher": s.pusher,
    });
    tx.prepare_cached(
        "INSERT INTO repo_event (repository_id, kind, payload, created_at) VALUES (?1, 'push', ?2, ?3)",
    )?
    .execute(params![repo, payload.to_string(), now])?;
    Ok(())
}

fn end_tag(conn: &rusqlite::Connection, repo: i64, tag: &str, now: i64) -> Result<usize, DbError> {
    Ok(conn
        .prepare_cached(
            "UPDATE tag SET lifetime_end_ms = ?3 \
             WHERE repository_id = ?1 AND name = ?2 AND lifetime_end_ms IS NULL",
        )?
        .execute(params![repo, tag, now])?)
}

/// A stored manifest as served.
struct Found {
    digest: String,
    media_type: String,
    size: u64,
    bytes: Option<Vec<u8>>,
}

/// `GET`/`HEAD /v2/<name>/manifests/<reference>`: the exact pushed bytes and type.
pub(super) async fn get(
    state: &AppState,
    name: &RepoName,
    reference: &Reference,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, ApiError> {
    authorize(state, headers, name, Action::Pull).await?;
    let (n, r) = (name.clone(), reference.clone());
    let found = state
        .db
        .read(move |c| {
            let Some(repo) = super::repo_id(c, &n)? else {
                return Ok(None);
            };
            // `length(bytes)` does not load the blob; the bytes are read only for GET.
            let sql = match &r {
                Reference::Tag(_) => {
                    "SELECT m.digest, m.media_type, length(m.bytes), CASE WHEN ?3 THEN m.bytes END \
                     FROM tag t JOIN manifest m \
                     ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest \
                     WHERE t.repository_id = ?1 AND t.name = ?2 AND t.lifetime_end_ms IS NULL"
                }
                Reference::Digest(_) => {
                    "SELECT digest, media_type, length(bytes), CASE WHEN ?3 THEN bytes END \
                     FROM manifest WHERE repository_id = ?1 AND digest = ?2"
                }
            };
            let row = c
                .prepare_cached(sql)?
                .query_row(params![repo, r.to_string(), !head], |row| {
                    Ok(Found {
                        digest: row.get(0)?,
                        media_type: row.get(1)?,
                        size: row.get(2)?,
                        bytes: row.get(3)?,
                    })
                })
                .optional()?;
            Ok::<_, ApiError>(Some(row))
        })
        .await?;
    let found = match found {
        None => return Err(name_unknown(name)),
        Some(None) => return Err(manifest_unknown(reference)),
        Some(Some(f)) => f,
    };
    let (len, etag) = (found.size.to_string(), format!("\"{}\"", found.digest));
    let hdrs = [
        (CONTENT_TYPE, found.media_type.as_str()),
        (CONTENT_DIGEST, found.digest.as_str()),
        (CONTENT_LENGTH, len.as_str()),
        (ETAG, etag.as_str()),
    ];
    let body = found.bytes.map(Body::from).unwrap_or_else(Body::empty);
    respond(StatusCode::OK, &hdrs, body)
}

/// `DELETE /v2/<name>/manifests/<reference>`: by digest, remove the manifest and end its live
/// tags; by tag, end that tag only (the manifest stays reachable by digest).
pub(super) async fn delete(
    state: &AppState,
    name: &RepoName,
    reference: Reference,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    authorize(state, headers, name, Action::Delete).await?;
    let n = name.clone();
    let r = reference.clone();
    state
        .db
        .write(move |tx| {
            let repo = super::repo_id(tx, &n)?.ok_or_else(|| name_unknown(&n))?;
            let now = now_ms();
            match &r {
                Reference::Tag(t) => {
                    if end_tag(tx, repo, t.as_str(), now)? == 0 {
                        return Err(manifest_unknown(&r));
                    }
                }
                Reference::Digest(d) => {
                    tx.prepare_cached(
                        "UPDATE tag SET lifetime_end_ms = ?3 WHERE repository_id = ?1 \
                         AND manifest_digest = ?2 AND lifetime_end_ms IS NULL",
                    )?
                    .execute(params![repo, d.to_string(), now])?;
                    let gone = tx
                        .prepare_cached(
                            "DELETE FROM manifest WHERE repository_id = ?1 AND digest = ?2",
                        )?
                        .execute(params![repo, d.to_string()])?;
                    if gone == 0 {
                        return Err(manifest_unknown(&r));
                    }
                }
            }
            Ok(())
        })
        .await?;
    super::empty(StatusCode::ACCEPTED, &[])
}

#[cfg(test)]
mod tests;
