//! `GET /buildpack/{file_id}?token=...`: the agent's download of an upload, authorised only by a
//! signed, expiring token bound to that file id.
//!
//! The token is a JWT signed with registry-core's RS256 key ([`TokenKeys`]) rather than an HMAC
//! with a second secret: there is no other key to generate, protect, back up or rotate, rotating
//! the registry key revokes outstanding download URLs too, and anything holding the public key
//! could verify them. Its audience ([`BUILDPACK_AUDIENCE`]) cannot be a registry hostname and its
//! only access entry is of type `buildpack`, so it is never accepted as a registry token, and a
//! registry token (audience = the hostname) is never accepted here.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};
use registry_core::auth::token::{
    AccessEntry, Claims, ISSUER, TokenContext, TokenError, TokenKeys, now_s,
};

use super::error::BuildApiError;
use super::filedrop::{self, Upload};
use super::{ApiSettings, Shared};

/// Audience of buildpack tokens (a URN, so it never equals a registry hostname).
pub const BUILDPACK_AUDIENCE: &str = "urn:quarry:buildpack";
const ACCESS_TYPE: &str = "buildpack";

/// A token allowing the download of upload `file_id` until `expires_at_s` (Unix seconds).
pub fn buildpack_token(
    keys: &TokenKeys,
    file_id: &str,
    expires_at_s: u64,
) -> Result<String, TokenError> {
    let now = now_s();
    keys.sign(&Claims {
        iss: ISSUER.to_owned(),
        sub: file_id.to_owned(),
        aud: BUILDPACK_AUDIENCE.to_owned(),
        exp: expires_at_s,
        nbf: now.min(expires_at_s),
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        access: vec![AccessEntry {
            kind: ACCESS_TYPE.to_owned(),
            name: file_id.to_owned(),
            actions: vec!["pull".to_owned()],
        }],
        context: TokenContext {
            kind: ACCESS_TYPE.to_owned(),
            user: None,
            token_scope: None,
        },
    })
}

/// The URL the agent downloads upload `file_id` from, valid for `ttl` (the manager passes the
/// build's lifetime): `<public_base_url>/buildpack/<file_id>?token=<jwt>`.
pub fn package_url(
    settings: &ApiSettings,
    keys: &TokenKeys,
    file_id: &str,
    ttl: Duration,
) -> Result<String, TokenError> {
    let token = buildpack_token(keys, file_id, now_s().saturating_add(ttl.as_secs()))?;
    let base = settings.public_base_url.trim_end_matches('/');
    Ok(format!("{base}/buildpack/{file_id}?token={token}"))
}

/// Check that `token` is a valid, unexpired buildpack token for `file_id`.
fn check(keys: &TokenKeys, token: &str, file_id: &str) -> Result<(), BuildApiError> {
    let claims = keys
        .verify(token, BUILDPACK_AUDIENCE)
        .map_err(BuildApiError::BadBuildpackToken)?;
    let grants = claims.sub == file_id
        && claims
            .access
            .iter()
            .any(|a| a.kind == ACCESS_TYPE && a.name == file_id);
    if grants {
        Ok(())
    } else {
        Err(BuildApiError::WrongBuildpackFile {
            file_id: file_id.to_owned(),
        })
    }
}

/// `GET /buildpack/{file_id}?token=...`: the upload's bytes, with its stored media type.
pub(crate) async fn download(
    State(state): State<Shared>,
    Path(file_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, BuildApiError> {
    // The token is checked before anything is looked up, so the endpoint tells nothing about
    // which ids exist to callers without one.
    let token = q.get("token").ok_or(BuildApiError::NoBuildpackToken)?;
    check(&state.registry.keys, token, &file_id)?;
    let id = file_id.clone();
    let row = state.builds.read(move |c| filedrop::find(c, &id)).await?;
    let Some(Upload {
        uploaded: true,
        mime_type,
        ..
    }) = row
    else {
        return Err(BuildApiError::NoUpload { file_id });
    };
    let path = filedrop::file_path(&state.settings, &file_id);
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|source| BuildApiError::File {
            action: "read",
            path: path.clone(),
            source,
        })?;
    let len = file
        .metadata()
        .await
        .map_err(|source| BuildApiError::File {
            action: "read",
            path,
            source,
        })?
        .len();
    let content_type = HeaderValue::from_str(&mime_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_LENGTH, HeaderValue::from(len)),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_their_file_and_audience() {
        let dir = tempfile::tempdir().unwrap();
        let keys = TokenKeys::load_or_generate(&dir.path().join("k.pem")).unwrap();
        let good = buildpack_token(&keys, "f1", now_s() + 60).unwrap();
        assert!(check(&keys, &good, "f1").is_ok());
        assert!(matches!(
            check(&keys, &good, "f2"),
            Err(BuildApiError::WrongBuildpackFile { .. })
        ));
        let expired = buildpack_token(&keys, "f1", now_s() - 60).unwrap();
        assert!(matches!(
            check(&keys, &expired, "f1"),
            Err(BuildApiError::BadBuildpackToken(_))
        ));
        // Not a registry token: the registry verifies its own hostname as audience.
        assert!(keys.verify(&good, "registry.test").is_err());
        let settings = ApiSettings {
            max_retries: 3,
            upload_dir: dir.path().to_owned(),
            max_upload_bytes: 1,
            public_base_url: "http://127.0.0.1:8080/".into(),
            reader_build_logs: false,
            allow_local_git_sources: true,
            triggers: Default::default(),
            notifications: Default::default(),
        };
        let url = package_url(&settings, &keys, "f1", Duration::from_secs(60)).unwrap();
        let token = url
            .strip_prefix("http://127.0.0.1:8080/buildpack/f1?token=")
            .unwrap();
        assert!(check(&keys, token, "f1").is_ok());
    }
}
