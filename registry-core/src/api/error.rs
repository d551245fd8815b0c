//! The REST API's error type and its Quay-shaped body:
//! `{"status": N, "error_message": "...", "title": "...", "error_type": "...", "detail": "..."}`.
//!
//! `error_type`/`title` use Quay's values: `invalid_request` (400), `invalid_token` (401),
//! `insufficient_scope` (403), `not_found` (404); 5xx answers say only `internal_error` and are
//! logged once, here.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

use crate::accounts::AccountError;
use crate::db::DbError;
use crate::error::error_chain;
use crate::names::NameError;

/// An error answered by `/api/v1`.
#[derive(Debug, thiserror::Error)]
pub enum ApiV1Error {
    /// No credentials, or wrong ones (never says which part was wrong).
    #[error("requires authentication")]
    Unauthenticated,
    /// Authenticated, but not allowed.
    #[error("permission denied: {action}")]
    Forbidden {
        /// What was refused, e.g. `administer repository "acme/app"`.
        action: String,
    },
    /// The path names nothing (for objects the caller may see).
    #[error("{kind} {name:?} does not exist")]
    NotFound {
        /// What kind of object.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The request body is not the JSON the endpoint takes.
    #[error("request body is invalid")]
    Body(#[source] serde_json::Error),
    /// A repository name in the path or body is invalid.
    #[error("invalid repository name")]
    Name(#[from] NameError),
    /// An account operation was refused (validation, duplicates, unknown names) or failed.
    #[error(transparent)]
    Account(#[from] AccountError),
}

impl From<DbError> for ApiV1Error {
    fn from(e: DbError) -> Self {
        ApiV1Error::Account(AccountError::Db(e))
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    status: u16,
    error_message: &'a str,
    title: &'a str,
    error_type: &'a str,
    detail: &'a str,
}

impl ApiV1Error {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiV1Error::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiV1Error::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiV1Error::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiV1Error::Body(_) | ApiV1Error::Name(_) => StatusCode::BAD_REQUEST,
            ApiV1Error::Account(e) => match e {
                AccountError::NotFound { .. } => StatusCode::NOT_FOUND,
                AccountError::Hash(_) | AccountError::Join(_) | AccountError::Db(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                // Quay answers 400 for duplicates and validation failures alike.
                _ => StatusCode::BAD_REQUEST,
            },
        }
    }
}

fn error_type(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "invalid_token",
        StatusCode::FORBIDDEN => "insufficient_scope",
        StatusCode::NOT_FOUND => "not_found",
        s if s.is_server_error() => "internal_error",
        _ => "invalid_request",
    }
}

/// Quay's error body for `err` with `status`. A server error is logged here (the one place a
/// failed REST request is logged) and its details are hidden from the client. buildman's API
/// answers through this too, so both APIs keep one error shape.
pub fn quay_error_response(
    status: StatusCode,
    err: &(dyn std::error::Error + 'static),
) -> Response {
    let message = if status.is_server_error() {
        tracing::error!(error = %error_chain(err), "api request failed");
        "internal server error".to_owned()
    } else {
        error_chain(err)
    };
    let kind = error_type(status);
    let body = ErrorBody {
        status: status.as_u16(),
        error_message: &message,
        title: kind,
        error_type: kind,
        detail: &message,
    };
    (status, Json(body)).into_response()
}

impl IntoResponse for ApiV1Error {
    fn into_response(self) -> Response {
        quay_error_response(self.status(), &self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: ApiV1Error) -> (StatusCode, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn bodies_have_quay_shape() {
        let (s, v) = body(ApiV1Error::Unauthenticated).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(v["status"], 401);
        assert_eq!(v["error_type"], "invalid_token");
        assert_eq!(v["title"], "invalid_token");
        assert_eq!(v["error_message"], "requires authentication");

        let (s, v) = body(ApiV1Error::Account(AccountError::AlreadyExists {
            kind: "repository",
            name: "a/b".into(),
        }))
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v["error_type"], "invalid_request");
        assert_eq!(v["detail"], "repository \"a/b\" already exists");

        let err = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let (_, v) = body(ApiV1Error::Body(err)).await;
        let msg = v["error_message"].as_str().unwrap();
        assert!(msg.starts_with("request body is invalid: "), "{msg}");

        let db = DbError::Sqlite(rusqlite::Error::QueryReturnedNoRows);
        let (s, v) = body(ApiV1Error::from(db)).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(v["error_message"], "internal server error");
    }
}
