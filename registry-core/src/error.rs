//! The distribution API's error type and its spec-shaped body.
//!
//! Handlers return `Result<_, ApiError>`; the body is built from a serialisable struct (never from
//! `Display`), with the spec's codes. 5xx errors are logged once, here at the response boundary.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Serialize;

use crate::db::DbError;

/// The error codes of the distribution spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// Blob unknown to registry.
    BlobUnknown,
    /// Blob upload invalid.
    BlobUploadInvalid,
    /// Blob upload unknown to registry.
    BlobUploadUnknown,
    /// Provided digest did not match uploaded content.
    DigestInvalid,
    /// Manifest references a manifest or blob unknown to registry.
    ManifestBlobUnknown,
    /// Manifest invalid.
    ManifestInvalid,
    /// Manifest unknown to registry.
    ManifestUnknown,
    /// Invalid repository name.
    NameInvalid,
    /// Repository name not known to registry.
    NameUnknown,
    /// Provided length did not match content length.
    SizeInvalid,
    /// Authentication required.
    Unauthorized,
    /// Requested access to the resource is denied.
    Denied,
    /// The operation is unsupported.
    Unsupported,
    /// Too many requests.
    Toomanyrequests,
    /// Requested range not satisfiable (used with 416; not a spec code, distribution uses it).
    RangeInvalid,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    errors: [ErrorEntry<'a>; 1],
}

#[derive(Serialize)]
struct ErrorEntry<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a serde_json::Value>,
}

/// The parts of a spec error (boxed inside [`ApiError`] so results stay small).
#[derive(Debug)]
pub struct SpecError {
    /// HTTP status.
    pub status: StatusCode,
    /// Spec code.
    pub code: ErrorCode,
    /// Human-readable message naming what was wrong.
    pub message: String,
    /// Structured detail.
    pub detail: Option<serde_json::Value>,
    /// Extra headers (`WWW-Authenticate`, `Range`, `Location`).
    pub headers: HeaderMap,
}

/// An error answered to a distribution API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A spec error: status, code, message, optional detail and extra headers.
    #[error("{}", .0.message)]
    Spec(Box<SpecError>),
    /// A server-side failure; answered as 500 with no detail, logged with its cause chain.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// A spec error with no detail.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError::Spec(Box::new(SpecError {
            status,
            code,
            message: message.into(),
            detail: None,
            headers: HeaderMap::new(),
        }))
    }

    /// Add structured detail.
    pub fn with_detail(mut self, value: serde_json::Value) -> ApiError {
        if let ApiError::Spec(spec) = &mut self {
            spec.detail = Some(value);
        }
        self
    }

    /// Add a response header (ignored on `Internal`; values that are not valid headers are dropped).
    pub fn with_header(mut self, name: HeaderName, value: &str) -> ApiError {
        if let (ApiError::Spec(spec), Ok(v)) = (&mut self, HeaderValue::from_str(value)) {
            spec.headers.append(name, v);
        }
        self
    }

    /// Wrap any server-side failure.
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> ApiError {
        ApiError::Internal(Box::new(e))
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Spec(spec) => spec.status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The spec code, when there is one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ApiError::Spec(spec) => Some(spec.code),
            ApiError::Internal(_) => None,
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError::internal(e)
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::internal(e)
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::internal(DbError::from(e))
    }
}

/// Render an error and its sources as `a: b: c` for logs.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Spec(spec) => {
                let SpecError {
                    status,
                    code,
                    message,
                    detail,
                    headers,
                } = *spec;
                let body = ErrorBody {
                    errors: [ErrorEntry {
                        code,
                        message: &message,
                        detail: detail.as_ref(),
                    }],
                };
                (status, headers, Json(body)).into_response()
            }
            ApiError::Internal(e) => {
                // The one place a failed request is logged (log or return, never both).
                tracing::error!(error = %error_chain(e.as_ref()), "request failed");
                let body = ErrorBody {
                    errors: [ErrorEntry {
                        code: ErrorCode::Unsupported,
                        message: "internal server error",
                        detail: None,
                    }],
                };
                (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn body_has_the_spec_shape() {
        let resp = ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUnknown,
            "blob unknown",
        )
        .with_detail(serde_json::json!({"digest": "sha256:x"}))
        .into_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
        assert_eq!(v["errors"][0]["message"], "blob unknown");
        assert_eq!(v["errors"][0]["detail"]["digest"], "sha256:x");
    }

    #[test]
    fn too_many_requests_code_is_spelled_as_the_spec() {
        let s = serde_json::to_string(&ErrorCode::Toomanyrequests).unwrap();
        assert_eq!(s, "\"TOOMANYREQUESTS\"");
    }
}
