//! Upload session bookkeeping: the `upload` row, the `Range`/`Location` it is reported with,
//! `Content-Range` checks, and opening or dropping the session's file.

use http::header::{CONTENT_LENGTH, CONTENT_RANGE, LOCATION, RANGE};
use http::{HeaderMap, StatusCode};
use rusqlite::{OptionalExtension as _, params};

use crate::db::{DbError, now_ms};
use crate::digest::{Algorithm, Hasher};
use crate::error::{ApiError, ErrorCode};
use crate::names::RepoName;
use crate::state::AppState;
use crate::storage::UploadGuard;
use crate::storage::upload::UploadFile;
use crate::v2::UPLOAD_UUID;

/// An upload session row.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) uuid: uuid::Uuid,
    pub(super) repo_id: i64,
    pub(super) algorithm: Algorithm,
    pub(super) offset: u64,
    pub(super) hash_state: Vec<u8>,
}

pub(super) fn location(name: &RepoName, uuid: uuid::Uuid) -> String {
    format!("/v2/{name}/blobs/uploads/{uuid}")
}

/// `Range` of a session: inclusive `0-<offset-1>`; `0-0` for an empty session, as distribution
/// answers (the spec is silent; Quay's `0--1` confuses some clients).
pub(super) fn range_value(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

pub(super) fn upload_unknown(uuid: uuid::Uuid) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::BlobUploadUnknown,
        format!("upload {uuid} is unknown (finished, cancelled or expired)"),
    )
}

/// The `Content-Range` of a chunk, inclusive; accepts `a-b`, `bytes a-b/total` and `bytes=a-b`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ChunkRange {
    Absent,
    Valid { start: u64, end: u64 },
    Invalid,
}

pub(super) fn chunk_range(headers: &HeaderMap) -> ChunkRange {
    let Some(v) = headers.get(CONTENT_RANGE) else {
        return ChunkRange::Absent;
    };
    let Ok(v) = v.to_str() else {
        return ChunkRange::Invalid;
    };
    let v = v.trim();
    let v = v
        .strip_prefix("bytes")
        .map(|r| r.trim_start_matches([' ', '=']))
        .unwrap_or(v);
    let v = v.split_once('/').map_or(v, |(r, _)| r);
    let parsed = v
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)));
    match parsed {
        Some((start, end)) if start <= end => ChunkRange::Valid { start, end },
        _ => ChunkRange::Invalid,
    }
}

pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

pub(super) fn insert_session(
    conn: &rusqlite::Connection,
    uuid: uuid::Uuid,
    repo: i64,
    algorithm: Algorithm,
) -> Result<(), ApiError> {
    let now = now_ms();
    conn.prepare_cached(
        "INSERT INTO upload (uuid, repository_id, algorithm, offset, hash_state, created_at, updated_at) \
         VALUES (?1, ?2, ?3, 0, ?4, ?5, ?5)",
    )?
    .execute(params![
        uuid.to_string(),
        repo,
        algorithm.name(),
        Hasher::new(algorithm).save(),
        now
    ])?;
    Ok(())
}

pub(super) async fn load(
    state: &AppState,
    name: &RepoName,
    uuid: uuid::Uuid,
) -> Result<Session, ApiError> {
    let (n, u) = (name.to_string(), uuid.to_string());
    let row = state
        .db
        .read(move |c| {
            c.prepare_cached(
                "SELECT u.repository_id, u.algorithm, u.offset, u.hash_state FROM upload u \
                 JOIN repository r ON r.id = u.repository_id WHERE u.uuid = ?1 AND r.name = ?2",
            )?
            .query_row(params![u, n], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get(2)?,
                    r.get(3)?,
                ))
            })
            .optional()
            .map_err(DbError::from)
        })
        .await?;
    let (repo_id, alg, offset, hash_state) = row.ok_or_else(|| upload_unknown(uuid))?;
    let algorithm = alg.parse().map_err(ApiError::internal)?;
    Ok(Session {
        uuid,
        repo_id,
        algorithm,
        offset,
        hash_state,
    })
}

/// Forget a session: its row, then its file.
pub(super) async fn drop_session(state: &AppState, uuid: uuid::Uuid) -> Result<(), ApiError> {
    let u = uuid.to_string();
    state
        .db
        .write(move |tx| {
            tx.prepare_cached("DELETE FROM upload WHERE uuid = ?1")?
                .execute(params![u])
                .map_err(DbError::from)
        })
        .await?;
    state
        .blobs
        .remove_upload_file(&uuid)
        .await
        .map_err(ApiError::internal)
}

/// The session's file at its committed offset. A file shorter than the offset (lost after a
/// power failure) ends the session: the client gets BLOB_UPLOAD_UNKNOWN and starts over. The
/// file takes over the session's lock `guard`.
pub(super) async fn open_file(
    state: &AppState,
    s: &Session,
    guard: UploadGuard,
) -> Result<UploadFile, ApiError> {
    let hasher = Hasher::restore(s.algorithm, &s.hash_state).map_err(ApiError::internal)?;
    let path = state.blobs.upload_path(&s.uuid);
    match UploadFile::open(path, s.offset, hasher, Some(guard))
        .await
        .map_err(ApiError::internal)?
    {
        Some(f) => Ok(f),
        None => {
            tracing::warn!(uuid = %s.uuid, offset = s.offset, "upload file lost bytes; dropping session");
            drop_session(state, s.uuid).await?;
            Err(upload_unknown(s.uuid))
        }
    }
}

/// Check `Content-Range` against the session; the announced chunk length when there is one.
pub(super) fn check_range(
    headers: &HeaderMap,
    name: &RepoName,
    s: &Session,
) -> Result<Option<u64>, ApiError> {
    match chunk_range(headers) {
        ChunkRange::Absent => Ok(None),
        ChunkRange::Valid { start, end } if start == s.offset => Ok(Some(end - start + 1)),
        _ => Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::BlobUploadInvalid,
            format!("chunk must start at byte {} of the upload", s.offset),
        )
        .with_header(RANGE, &range_value(s.offset))
        .with_header(LOCATION, &location(name, s.uuid))
        .with_header(UPLOAD_UUID, &s.uuid.to_string())),
    }
}
