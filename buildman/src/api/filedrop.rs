//! Uploads a build then uses (Quay's filedrop): `POST /api/v1/filedrop/` `{"mimeType"}` gives
//! `{"url", "file_id"}`; the same account then `PUT`s the Dockerfile or archive to `url`, which is
//! on this server, and starts a build with `file_id`.
//!
//! Uploads are write-once. The body streams to `<upload_dir>/<id>.partial` (created exclusively,
//! so two requests never write one file), capped at `max_upload_bytes` (413, and the partial file
//! is removed), fsynced, then published under `<upload_dir>/<id>`, and only then recorded as
//! uploaded. The agent downloads it through [`package_url`].

use std::io::ErrorKind;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{HeaderMap, HeaderValue, header};
use registry_core::db::now_ms;
use registry_core::digest::{Algorithm, Hasher};
use rusqlite::{Connection, OptionalExtension as _, params};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

pub use super::buildpack::{BUILDPACK_AUDIENCE, buildpack_token, package_url};
use super::error::{BuildApiError, InvalidRequest};
use super::{ApiSettings, Caller, Shared, parse_json};
use crate::db::BuildDbError;

/// A partial file untouched for this long is a crashed upload's, and may be replaced.
const STALE_PARTIAL: Duration = Duration::from_secs(600);

/// An upload row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Upload {
    pub(crate) account: String,
    pub(crate) mime_type: String,
    pub(crate) size: Option<i64>,
    pub(crate) sha256: Option<String>,
    pub(crate) uploaded: bool,
}

/// The upload `id`, if any.
pub(crate) fn find(conn: &Connection, id: &str) -> Result<Option<Upload>, BuildDbError> {
    Ok(conn
        .prepare_cached(
            "SELECT account, mime_type, size, sha256, uploaded_at FROM build_upload WHERE id = ?1",
        )?
        .query_row(params![id], |r| {
            Ok(Upload {
                account: r.get(0)?,
                mime_type: r.get(1)?,
                size: r.get(2)?,
                sha256: r.get(3)?,
                uploaded: r.get::<_, Option<i64>>(4)?.is_some(),
            })
        })
        .optional()?)
}

/// Check that `file_id` can be built by `account`: it exists, is `account`'s, and has its
/// content. Returns its SHA-256 (hex).
pub(crate) fn usable_upload(
    conn: &Connection,
    file_id: &str,
    account: &str,
) -> Result<String, BuildApiError> {
    let file_id = file_id.to_owned();
    match find(conn, &file_id)? {
        None => Err(InvalidRequest::UnknownFile { file_id }.into()),
        Some(u) if u.account != account => Err(InvalidRequest::ForeignFile { file_id }.into()),
        Some(Upload {
            uploaded: true,
            sha256: Some(sha),
            ..
        }) => Ok(sha),
        Some(_) => Err(InvalidRequest::NotUploaded { file_id }.into()),
    }
}

/// Where upload `id` is stored once complete.
pub(crate) fn file_path(settings: &ApiSettings, id: &str) -> PathBuf {
    settings.upload_dir.join(id)
}

#[derive(Debug, Deserialize)]
struct NewFile {
    #[serde(rename = "mimeType", default)]
    mime_type: String,
}

/// `POST /api/v1/filedrop/` `{"mimeType"}` (any authenticated caller) -> `{"url", "file_id"}`.
/// An empty type (what browsers report for unknown files) is stored as
/// `application/octet-stream`.
pub(crate) async fn create(
    State(state): State<Shared>,
    Caller(caller): Caller,
    body: Bytes,
) -> Result<Json<Value>, BuildApiError> {
    let req: NewFile = parse_json(&body)?;
    let mime = match req.mime_type.trim() {
        "" => "application/octet-stream".to_owned(),
        m if m.len() <= 255 && m.contains('/') && HeaderValue::from_str(m).is_ok() => m.to_owned(),
        _ => {
            return Err(InvalidRequest::MimeType {
                value: req.mime_type,
            }
            .into());
        }
    };
    let id = uuid::Uuid::new_v4().to_string();
    let row = (id.clone(), caller.account.name);
    state
        .builds
        .write(move |tx| {
            tx.execute(
                "INSERT INTO build_upload (id, account, mime_type, created_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![row.0, row.1, mime, now_ms()],
            )?;
            Ok::<_, BuildApiError>(())
        })
        .await?;
    let base = state.settings.public_base_url.trim_end_matches('/');
    Ok(Json(json!({
        "url": format!("{base}/api/v1/filedrop/{id}"),
        "file_id": id,
    })))
}

/// Removes a file when dropped: the partial upload, whichever way the request ends (error, cap,
/// client gone and the handler dropped mid-stream).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        // Already gone is fine; anything else leaves a partial that the next upload of this id
        // replaces once stale.
        if let Err(e) = std::fs::remove_file(&self.0)
            && e.kind() != ErrorKind::NotFound
        {
            tracing::warn!(path = ?self.0, error = %e, "could not remove partial upload");
        }
    }
}

fn file_err(action: &'static str, path: &FsPath) -> impl FnOnce(std::io::Error) -> BuildApiError {
    let path = path.to_owned();
    move |source| BuildApiError::File {
        action,
        path,
        source,
    }
}

/// Create `<id>.partial` exclusively; a stale one (crashed upload) is replaced.
async fn open_partial(path: &FsPath, file_id: &str) -> Result<tokio::fs::File, BuildApiError> {
    async fn open(path: &FsPath) -> std::io::Result<tokio::fs::File> {
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true);
        options.open(path).await
    }
    match open(path).await {
        Ok(f) => return Ok(f),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(file_err("created", path)(e)),
    }
    let age = tokio::fs::metadata(path)
        .await
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    if age.is_none_or(|a| a < STALE_PARTIAL) {
        return Err(BuildApiError::UploadBusy {
            file_id: file_id.to_owned(),
        });
    }
    tokio::fs::remove_file(path)
        .await
        .map_err(file_err("removed", path))?;
    open(path).await.map_err(file_err("created", path))
}

/// `PUT /api/v1/filedrop/{file_id}`: the content of an upload, by the account that asked for it.
pub(crate) async fn upload(
    State(state): State<Shared>,
    Caller(caller): Caller,
    Path(file_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, BuildApiError> {
    let id = file_id.clone();
    let row = state.builds.read(move |c| find(c, &id)).await?;
    match row {
        None => return Err(BuildApiError::NoUpload { file_id }),
        Some(u) if u.account != caller.account.name => {
            return Err(BuildApiError::ForeignUpload { file_id });
        }
        Some(u) if u.uploaded => return Err(BuildApiError::AlreadyUploaded { file_id }),
        Some(_) => {}
    }
    let limit = state.settings.max_upload_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BuildApiError::TooLarge { limit });
    }
    let dir = &state.settings.upload_dir;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(file_err("created", dir))?;
    let partial = dir.join(format!("{file_id}.partial"));
    let mut file = open_partial(&partial, &file_id).await?;
    let _cleanup = RemoveOnDrop(partial.clone());

    let mut hasher = Hasher::new(Algorithm::Sha256);
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BuildApiError::BodyRead)?;
        size = size.saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
        if size > limit {
            return Err(BuildApiError::TooLarge { limit });
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(file_err("written", &partial))?;
    }
    if size == 0 {
        return Err(BuildApiError::EmptyUpload { file_id });
    }
    file.sync_all()
        .await
        .map_err(file_err("written", &partial))?;
    drop(file);
    let sha = hasher.finish().hex().to_owned();
    publish(&state, &partial, &file_id).await?;

    let (id, digest) = (file_id.clone(), sha.clone());
    let size_i = i64::try_from(size).unwrap_or(i64::MAX);
    let recorded = state
        .builds
        .write(move |tx| {
            Ok::<_, BuildApiError>(tx.execute(
                "UPDATE build_upload SET size = ?1, sha256 = ?2, uploaded_at = ?3 \
                 WHERE id = ?4 AND uploaded_at IS NULL",
                params![size_i, digest, now_ms(), id],
            )?)
        })
        .await?;
    if recorded != 1 {
        return Err(BuildApiError::AlreadyUploaded { file_id });
    }
    tracing::info!(file_id = %file_id, size, "upload stored");
    Ok(Json(
        json!({"file_id": file_id, "size": size, "sha256": sha}),
    ))
}

/// Publish `partial` as the upload's file and make the new name durable.
///
/// A hard link rather than a rename: it fails when the target exists instead of replacing it, so
/// a finished upload is never overwritten. The caller's guard then removes the partial name.
async fn publish(state: &Shared, partial: &FsPath, file_id: &str) -> Result<(), BuildApiError> {
    let target = file_path(&state.settings, file_id);
    match tokio::fs::hard_link(partial, &target).await {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            // Published but never recorded (a crash in between) unless the row now says otherwise.
            let id = file_id.to_owned();
            let row = state.builds.read(move |c| find(c, &id)).await?;
            if row.is_some_and(|u| u.uploaded) {
                return Err(BuildApiError::AlreadyUploaded {
                    file_id: file_id.to_owned(),
                });
            }
            tokio::fs::remove_file(&target)
                .await
                .map_err(file_err("replaced", &target))?;
            tokio::fs::hard_link(partial, &target)
                .await
                .map_err(file_err("published", &target))?;
        }
        Err(e) => return Err(file_err("published", &target)(e)),
    }
    let dir = &state.settings.upload_dir;
    tokio::fs::File::open(dir)
        .await
        .map_err(file_err("opened", dir))?
        .sync_all()
        .await
        .map_err(file_err("synced", dir))
}
