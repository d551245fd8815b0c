//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (session, monolithic `?digest=`, cross-repo
//! `?mount=&from=`), and `GET`/`PATCH`/`PUT`/`DELETE` on `/v2/<name>/blobs/uploads/<uuid>`.
//!
//! A session is an `upload` row (offset + saved hash state) and the file `uploads/<uuid>`. Requests
//! on one session are serialised by a per-uuid lock. Each PATCH streams the body onto the file,
//! then commits offset and hash state in one transaction, so a killed server resumes where the
//! database says (see [`crate::storage::upload`]). The final PUT verifies the digest from the saved
//! state without re-reading the file, fsyncs and renames it into the blob store, and only then
//! inserts the blob rows: a client can never read bytes that do not match their digest.

mod session;

use axum::body::Body;
use axum::response::Response;
use http::header::{LOCATION, RANGE};
use http::{HeaderMap, StatusCode};
use rusqlite::params;

use super::{CONTENT_DIGEST, Query, UPLOAD_UUID, empty, ensure_repo, new_repo};
use crate::auth::Grant;
use crate::auth::{Action, authorize};
use crate::db::{DbError, now_ms};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{ApiError, ErrorCode};
use crate::names::RepoName;
use crate::state::AppState;
use crate::storage::UploadGuard;
use crate::storage::upload::{AppendError, UploadFile};
use session::{
    Session, check_range, content_length, drop_session, insert_session, load, location, open_file,
    range_value, upload_unknown,
};

fn digest_invalid(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid, message)
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::SizeInvalid,
        format!("blob exceeds the registry's size limit of {limit} bytes"),
    )
}

/// 202 with the session's `Location`, `Range` and `Docker-Upload-UUID`.
fn accepted(name: &RepoName, uuid: uuid::Uuid, offset: u64) -> Result<Response, ApiError> {
    let (loc, range, id) = (location(name, uuid), range_value(offset), uuid.to_string());
    empty(
        StatusCode::ACCEPTED,
        &[(LOCATION, &loc), (RANGE, &range), (UPLOAD_UUID, &id)],
    )
}

/// 201 for a blob now linked in the repository.
fn created(name: &RepoName, digest: &Digest) -> Result<Response, ApiError> {
    let (loc, d) = (format!("/v2/{name}/blobs/{digest}"), digest.to_string());
    empty(
        StatusCode::CREATED,
        &[(LOCATION, &loc), (CONTENT_DIGEST, &d)],
    )
}

/// Create a session row (and the repository on first push); returns its id.
async fn new_session(
    state: &AppState,
    name: &RepoName,
    algorithm: Algorithm,
    grant: &Grant,
) -> Result<uuid::Uuid, ApiError> {
    let uuid = uuid::Uuid::new_v4();
    let (n, vis) = (name.clone(), new_repo(state, grant));
    state
        .db
        .write(move |tx| {
            let repo = ensure_repo(tx, &n, &vis)?;
            insert_session(tx, uuid, repo, algorithm)
        })
        .await?;
    Ok(uuid)
}

/// Map a failed append; an oversized upload also ends its session (no partial blob remains).
async fn append_failed(state: &AppState, uuid: Option<uuid::Uuid>, e: AppendError) -> ApiError {
    let invalid =
        |m: String| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BlobUploadInvalid, m);
    match e {
        AppendError::TooLarge { limit } => {
            if let Some(u) = uuid
                && let Err(e) = drop_session(state, u).await
            {
                return e;
            }
            too_large(limit)
        }
        e @ AppendError::LengthMismatch { .. } => invalid(e.to_string()),
        e @ AppendError::Body { .. } => invalid(e.to_string()),
        e @ (AppendError::Io { .. } | AppendError::Join(_)) => ApiError::internal(e),
    }
}

/// Refuse early when `Content-Length` already says the blob will be too large.
async fn check_size(
    state: &AppState,
    headers: &HeaderMap,
    offset: u64,
    uuid: Option<uuid::Uuid>,
) -> Result<(), ApiError> {
    let limit = state.config.max_blob_size();
    if content_length(headers).is_some_and(|len| offset.saturating_add(len) > limit) {
        return Err(append_failed(state, uuid, AppendError::TooLarge { limit }).await);
    }
    Ok(())
}

/// Check a chunk's `Content-Range` and size against session `s`, then stream `body` onto its file.
/// The returned file holds the session's lock (`guard`).
async fn append_chunk(
    state: &AppState,
    name: &RepoName,
    s: &Session,
    headers: &HeaderMap,
    guard: UploadGuard,
    body: Body,
) -> Result<UploadFile, ApiError> {
    let expected = check_range(headers, name, s)?;
    check_size(state, headers, s.offset, Some(s.uuid)).await?;
    let file = open_file(state, s, guard).await?;
    let limit = state.config.max_blob_size();
    match file.append(body.into_data_stream(), limit, expected).await {
        Ok(f) => Ok(f),
        Err(e) => Err(append_failed(state, Some(s.uuid), e).await),
    }
}

/// Link a verified upload as blob `digest` in repository `repo`: rename the file into place, then
/// insert the rows (and drop the session row) in one transaction.
async fn store_blob(
    state: &AppState,
    repo: i64,
    file: UploadFile,
    digest: &Digest,
    session: Option<uuid::Uuid>,
) -> Result<(), ApiError> {
    let size = file.offset();
    // The session's lock (if any) is held until the rows are committed.
    let _guard = file
        .persist(state.blobs.blob_path(digest))
        .await
        .map_err(ApiError::internal)?;
    let d = digest.to_string();
    state
        .db
        .write(move |tx| {
            let now = now_ms();
            if let Some(u) = session {
                tx.prepare_cached("DELETE FROM upload WHERE uuid = ?1")?
                    .execute(params![u.to_string()])?;
            }
            tx.prepare_cached("INSERT OR IGNORE INTO blob (digest, size, created_at) VALUES (?1, ?2, ?3)")?
                .execute(params![d, size, now])?;
            tx.prepare_cached(
                "INSERT OR IGNORE INTO repo_blob (repository_id, digest, linked_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![repo, d, now])?;
            Ok::<_, ApiError>(())
        })
        .await
}

/// `POST /v2/<name>/blobs/uploads/`.
pub(super) async fn start(
    state: &AppState,
    name: &RepoName,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let grant = authorize(state, headers, name, Action::Push).await?;
    if let Some(mount) = query.get("mount") {
        return self::mount(state, name, mount, query.get("from"), headers, &grant).await;
    }
    if let Some(digest) = query.get("digest") {
        return monolithic(state, name, digest, headers, body, &grant).await;
    }
    let algorithm = match query.get("digest-algorithm") {
        None => Algorithm::Sha256,
        Some(a) => a
            .parse()
            .map_err(|e: crate::digest::DigestError| digest_invalid(e.to_string()))?,
    };
    let uuid = new_session(state, name, algorithm, &grant).await?;
    accepted(name, uuid, 0)
}

/// `POST ?digest=` with the whole blob as body: 201, no session row.
async fn monolithic(
    state: &AppState,
    name: &RepoName,
    digest: &str,
    headers: &HeaderMap,
    body: Body,
    grant: &Grant,
) -> Result<Response, ApiError> {
    let digest: Digest = digest
        .parse()
        .map_err(|e: crate::digest::DigestError| digest_invalid(e.to_string()))?;
    check_size(state, headers, 0, None).await?;
    let repo = super::repo_for_push(state, name, grant).await?;
    let uuid = uuid::Uuid::new_v4();
    let path = state.blobs.upload_path(&uuid);
    // No session row names this file, so the orphan sweep would take it for abandoned once its
    // mtime is old (a stalled client); holding the uuid's lock makes the sweep skip it.
    let guard = state.blobs.lock_upload(uuid).await;
    let file = UploadFile::open(path, 0, Hasher::new(digest.algorithm()), Some(guard))
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| upload_unknown(uuid))?;
    let limit = state.config.max_blob_size();
    let result = file.append(body.into_data_stream(), limit, None).await;
    let outcome = match result {
        Err(e) => Err(append_failed(state, None, e).await),
        Ok(file) if file.hasher().current() != digest => Err(digest_invalid(format!(
            "uploaded content has digest {}, not {digest}",
            file.hasher().current()
        ))),
        Ok(file) => store_blob(state, repo, file, &digest, None).await,
    };
    if let Err(e) = outcome {
        state
            .blobs
            .remove_upload_file(&uuid)
            .await
            .map_err(ApiError::internal)?;
        return Err(e);
    }
    created(name, &digest)
}

/// `POST ?mount=<digest>&from=<repo>`: link a blob the caller may pull from `from`; otherwise fall
/// back to a new upload session (202), as the spec allows.
async fn mount(
    state: &AppState,
    name: &RepoName,
    mount: &str,
    from: Option<&str>,
    headers: &HeaderMap,
    grant: &Grant,
) -> Result<Response, ApiError> {
    let digest: Digest = mount
        .parse()
        .map_err(|e: crate::digest::DigestError| digest_invalid(e.to_string()))?;
    let from: Option<RepoName> = from.and_then(|f| f.parse().ok());
    let readable = match &from {
        Some(f) => authorize(state, headers, f, Action::Pull).await.is_ok(),
        None => false,
    };
    let from = from.filter(|_| readable);
    let (n, d, vis) = (name.clone(), digest.to_string(), new_repo(state, grant));
    let uuid = uuid::Uuid::new_v4();
    let algorithm = digest.algorithm();
    let mounted = state
        .db
        .write(move |tx| {
            let repo = ensure_repo(tx, &n, &vis)?;
            if let Some(from) = from {
                let linked = tx
                    .prepare_cached(
                        "SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repository_id \
                         WHERE r.name = ?1 AND rb.digest = ?2",
                    )?
                    .exists(params![from.as_str(), d])?;
                if linked {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO repo_blob (repository_id, digest, linked_at) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![repo, d, now_ms()])?;
                    return Ok(true);
                }
            }
            insert_session(tx, uuid, repo, algorithm)?;
            Ok::<_, ApiError>(false)
        })
        .await?;
    if mounted {
        created(name, &digest)
    } else {
        accepted(name, uuid, 0)
    }
}

/// `GET <location>`: 204 with the current `Range`.
pub(super) async fn status(
    state: &AppState,
    name: &RepoName,
    uuid: uuid::Uuid,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    authorize(state, headers, name, Action::Push).await?;
    let s = load(state, name, uuid).await?;
    let (loc, range, id) = (
        location(name, uuid),
        range_value(s.offset),
        uuid.to_string(),
    );
    empty(
        StatusCode::NO_CONTENT,
        &[(LOCATION, &loc), (RANGE, &range), (UPLOAD_UUID, &id)],
    )
}

/// `PATCH <location>`: append a chunk (with or without `Content-Range`).
pub(super) async fn patch(
    state: &AppState,
    name: &RepoName,
    uuid: uuid::Uuid,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(state, headers, name, Action::Push).await?;
    let guard = state.blobs.lock_upload(uuid).await;
    let s = load(state, name, uuid).await?;
    // From here the lock lives in `file` (see `UploadFile`), until the offset is committed.
    let file = append_chunk(state, name, &s, headers, guard, body).await?;
    let (offset, hash_state, u) = (file.offset(), file.hasher().save(), uuid.to_string());
    let updated = state
        .db
        .write(move |tx| {
            tx.prepare_cached(
                "UPDATE upload SET offset = ?2, hash_state = ?3, updated_at = ?4 WHERE uuid = ?1",
            )?
            .execute(params![u, offset, hash_state, now_ms()])
            .map_err(DbError::from)
        })
        .await?;
    if updated == 0 {
        return Err(upload_unknown(uuid));
    }
    accepted(name, uuid, offset)
}

/// `PUT <location>?digest=`: append the optional last chunk, verify, store: 201.
pub(super) async fn finish(
    state: &AppState,
    name: &RepoName,
    uuid: uuid::Uuid,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(state, headers, name, Action::Push).await?;
    let digest: Digest = query
        .get("digest")
        .ok_or_else(|| digest_invalid("the digest query parameter is required".to_owned()))?
        .parse()
        .map_err(|e: crate::digest::DigestError| digest_invalid(e.to_string()))?;
    let guard = state.blobs.lock_upload(uuid).await;
    let s = load(state, name, uuid).await?;
    if digest.algorithm() != s.algorithm {
        return Err(digest_invalid(format!(
            "upload {uuid} is hashed with {}; start it with ?digest-algorithm={} to finish with {digest}",
            s.algorithm.name(),
            digest.algorithm().name()
        )));
    }
    let file = append_chunk(state, name, &s, headers, guard, body).await?;
    let actual = file.hasher().current();
    if actual != digest {
        // Still holding the lock (in `file`) while the session goes.
        drop_session(state, uuid).await?;
        drop(file);
        return Err(digest_invalid(format!(
            "uploaded content has digest {actual}, not {digest}"
        )));
    }
    store_blob(state, s.repo_id, file, &digest, Some(uuid)).await?;
    created(name, &digest)
}

/// `DELETE <location>`: cancel the upload and remove its bytes: 204.
pub(super) async fn cancel(
    state: &AppState,
    name: &RepoName,
    uuid: uuid::Uuid,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    authorize(state, headers, name, Action::Push).await?;
    let _guard = state.blobs.lock_upload(uuid).await;
    load(state, name, uuid).await?;
    drop_session(state, uuid).await?;
    empty(StatusCode::NO_CONTENT, &[])
}

#[cfg(test)]
mod tests;
