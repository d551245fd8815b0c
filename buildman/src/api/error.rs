//! The builds API's error type. Its body has Quay's shape, the same as registry-core's `/api/v1`:
//! `{"status", "error_message", "title", "error_type", "detail"}`; 5xx answers say only
//! `internal server error` and are logged once, here.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use registry_core::accounts::AccountError;
use registry_core::api::error::ApiV1Error;
use registry_core::names::NameError;

use crate::db::BuildDbError;

/// An error answered by the builds API, the uploads and the buildpack download.
#[derive(Debug, thiserror::Error)]
pub enum BuildApiError {
    /// Authentication, permission, name and account errors, answered as registry-core does.
    #[error(transparent)]
    V1(#[from] ApiV1Error),
    /// The build database failed.
    #[error("build database failed")]
    Db(#[from] BuildDbError),
    /// A build request or query is invalid; the message names the field and the expected form.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// No build with that id in this repository.
    #[error("build {uuid:?} does not exist in repository {repository:?}")]
    NoBuild {
        /// The build id asked for.
        uuid: String,
        /// The repository of the path.
        repository: String,
    },
    /// Quay's answer when a build can no longer be cancelled (its text kept for clients).
    #[error("Build is currently running or has finished")]
    TooLateToCancel,
    /// The manager could not cancel the build.
    #[error("failed to cancel build {uuid}: {reason}")]
    Cancel {
        /// The build.
        uuid: String,
        /// What the manager said.
        reason: String,
    },
    /// An upload id that does not exist.
    #[error("upload {file_id:?} does not exist: request one with POST /api/v1/filedrop/")]
    NoUpload {
        /// The id.
        file_id: String,
    },
    /// An upload of another account.
    #[error("upload {file_id:?} belongs to another account")]
    ForeignUpload {
        /// The id.
        file_id: String,
    },
    /// Uploads are write-once.
    #[error("upload {file_id:?} already has its content: request a new file id")]
    AlreadyUploaded {
        /// The id.
        file_id: String,
    },
    /// Another request is writing this upload right now.
    #[error("upload {file_id:?} is being written by another request")]
    UploadBusy {
        /// The id.
        file_id: String,
    },
    /// The upload is larger than the configured cap.
    #[error("upload is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The cap in bytes.
        limit: u64,
    },
    /// The upload body was empty.
    #[error("upload {file_id:?} is empty: send the Dockerfile or archive as the request body")]
    EmptyUpload {
        /// The id.
        file_id: String,
    },
    /// The client stopped sending the body.
    #[error("reading the upload body failed")]
    BodyRead(#[source] axum::Error),
    /// Writing or reading an upload file failed.
    #[error("upload file {path:?} could not be {action}")]
    File {
        /// What was being done (`written`, `read`, `renamed`...).
        action: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The buildpack download has no `token` query parameter.
    #[error("buildpack download needs a token query parameter")]
    NoBuildpackToken,
    /// The buildpack token is malformed, badly signed or expired.
    #[error("buildpack token is invalid or expired")]
    BadBuildpackToken(#[source] registry_core::auth::token::TokenError),
    /// The buildpack token was issued for another file.
    #[error("buildpack token does not grant file {file_id:?}")]
    WrongBuildpackFile {
        /// The file asked for.
        file_id: String,
    },
    /// Signing a buildpack token failed.
    #[error("failed to sign a buildpack token")]
    Sign(#[source] registry_core::auth::token::TokenError),
}

/// A request field that is missing, conflicting or malformed.
#[derive(Debug, thiserror::Error)]
pub enum InvalidRequest {
    /// The JSON body does not parse or has unknown fields.
    #[error("request body is invalid")]
    Body(#[source] serde_json::Error),
    /// No source was given.
    #[error("a build needs exactly one source: file_id, archive_url or git")]
    NoSource,
    /// More than one source was given.
    #[error("a build needs exactly one source, got {given}: send only one of them")]
    TwoSources {
        /// The sources given, e.g. `file_id and archive_url`.
        given: String,
    },
    /// `archive_url` is not an http(s) URL.
    #[error("archive_url {url:?} is invalid: expected an http:// or https:// URL with a host")]
    ArchiveUrl {
        /// The rejected URL.
        url: String,
    },
    /// `git.url` is not a URL git can clone safely.
    #[error(
        "git.url {url:?} is invalid: expected https://, http://, ssh://, git://, file:// URL, \
         user@host:path or an absolute path"
    )]
    GitUrl {
        /// The rejected URL.
        url: String,
    },
    /// `git.url` names the build host's own filesystem, which this install does not allow.
    #[error(
        "git.url {url:?} is a path on the build host; local git sources are disabled \
         (a trusted single-user install may set BUILD_MANAGER[1].ALLOW_LOCAL_GIT_SOURCES: true)"
    )]
    LocalGitSource {
        /// The rejected URL.
        url: String,
    },
    /// `git.sha` is not a full commit id.
    #[error("git.sha {sha:?} is invalid: expected a full 40-character hexadecimal commit id")]
    GitSha {
        /// The rejected value.
        sha: String,
    },
    /// A tag in `docker_tags` is invalid.
    #[error("docker_tags is invalid")]
    Tag(#[source] NameError),
    /// A `build_args` key is not a shell identifier.
    #[error("build_args key {key:?} is invalid: expected [A-Za-z_][A-Za-z0-9_]*")]
    BuildArgKey {
        /// The rejected key.
        key: String,
    },
    /// A `build_args` value holds a NUL byte.
    #[error("build_args value of {key:?} contains a NUL character")]
    BuildArgValue {
        /// The key.
        key: String,
    },
    /// A path field escapes the source or has odd characters.
    #[error(
        "{field} {value:?} is invalid: expected a path inside the source without '..' or \
         control characters"
    )]
    Path {
        /// `context`, `subdirectory` or `dockerfile_path`.
        field: &'static str,
        /// The rejected value.
        value: String,
    },
    /// `dockerfile_path` names a directory.
    #[error("dockerfile_path {value:?} is invalid: it must name a file, not a directory")]
    DockerfileIsDir {
        /// The rejected value.
        value: String,
    },
    /// The upload named by `file_id` has no content yet.
    #[error("file_id {file_id:?} has no content yet: PUT the file to its upload url first")]
    NotUploaded {
        /// The id.
        file_id: String,
    },
    /// The upload named by `file_id` does not exist.
    #[error("file_id {file_id:?} does not exist: request one with POST /api/v1/filedrop/")]
    UnknownFile {
        /// The id.
        file_id: String,
    },
    /// The upload named by `file_id` belongs to someone else.
    #[error("file_id {file_id:?} was uploaded by another account")]
    ForeignFile {
        /// The id.
        file_id: String,
    },
    /// `pull_robot` is not a robot name.
    #[error("pull_robot {name:?} is invalid: expected <namespace>+<robot>")]
    PullRobotName {
        /// The rejected name.
        name: String,
    },
    /// A query parameter does not parse.
    #[error("query parameter {name} {value:?} is invalid: expected {expected}")]
    Query {
        /// The parameter.
        name: &'static str,
        /// The rejected value.
        value: String,
        /// The expected form.
        expected: &'static str,
    },
    /// `mimeType` is missing or not a valid header value.
    #[error("mimeType {value:?} is invalid: expected a media type such as application/x-tar")]
    MimeType {
        /// The rejected value.
        value: String,
    },
}

impl From<AccountError> for BuildApiError {
    fn from(e: AccountError) -> Self {
        BuildApiError::V1(ApiV1Error::Account(e))
    }
}

impl From<rusqlite::Error> for BuildApiError {
    fn from(e: rusqlite::Error) -> Self {
        BuildApiError::Db(BuildDbError::from(e))
    }
}

impl From<registry_core::db::DbError> for BuildApiError {
    fn from(e: registry_core::db::DbError) -> Self {
        BuildApiError::V1(ApiV1Error::from(e))
    }
}

impl BuildApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            BuildApiError::V1(e) => e.status(),
            BuildApiError::Invalid(_)
            | BuildApiError::TooLateToCancel
            | BuildApiError::EmptyUpload { .. }
            | BuildApiError::BodyRead(_) => StatusCode::BAD_REQUEST,
            BuildApiError::NoBuild { .. } | BuildApiError::NoUpload { .. } => StatusCode::NOT_FOUND,
            BuildApiError::ForeignUpload { .. } | BuildApiError::WrongBuildpackFile { .. } => {
                StatusCode::FORBIDDEN
            }
            BuildApiError::NoBuildpackToken | BuildApiError::BadBuildpackToken(_) => {
                StatusCode::UNAUTHORIZED
            }
            BuildApiError::AlreadyUploaded { .. } | BuildApiError::UploadBusy { .. } => {
                StatusCode::CONFLICT
            }
            BuildApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BuildApiError::Db(_)
            | BuildApiError::Cancel { .. }
            | BuildApiError::File { .. }
            | BuildApiError::Sign(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for BuildApiError {
    fn into_response(self) -> Response {
        if let BuildApiError::V1(e) = self {
            return e.into_response();
        }
        registry_core::api::error::quay_error_response(self.status(), &self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: BuildApiError) -> (StatusCode, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn bodies_have_quay_shape_and_hide_5xx_details() {
        let (s, v) = body(InvalidRequest::NoSource.into()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v["error_type"], "invalid_request");
        assert_eq!(
            v["error_message"],
            "a build needs exactly one source: file_id, archive_url or git"
        );
        assert_eq!(v["detail"], v["error_message"]);

        let (s, v) = body(BuildApiError::TooLateToCancel).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(
            v["error_message"],
            "Build is currently running or has finished"
        );

        let (s, v) = body(BuildApiError::TooLarge { limit: 10 }).await;
        assert_eq!(
            (s, v["status"].as_u64()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some(413))
        );

        let (s, v) = body(BuildApiError::V1(ApiV1Error::Unauthenticated)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(v["error_type"], "invalid_token");

        let (s, v) = body(BuildApiError::Cancel {
            uuid: "b".into(),
            reason: "redis down".into(),
        })
        .await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(v["error_message"], "internal server error");
    }
}
