//! Errors of the trigger REST API and the webhook endpoint, answered with Quay's error body (as
//! [`super::error::BuildApiError`], which they wrap for the shared checks).

use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};

use super::error::BuildApiError;
use crate::secrets::SecretError;
use crate::trigger::StoreError;
use crate::trigger::activate::ActivateError;
use crate::trigger::deploy_key::DeployKeyError;
use crate::trigger::push::{PushError, QueueError};

/// An error answered by the trigger endpoints.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TriggerApiError {
    /// Authentication, permission, body and database errors shared with the builds API.
    #[error(transparent)]
    Api(#[from] BuildApiError),
    /// No trigger with that id (in this repository).
    #[error("no trigger {uuid}{}", in_repo(.repository.as_deref()))]
    NoTrigger {
        /// The id asked for.
        uuid: String,
        /// The repository of the path, for the REST API.
        repository: Option<String>,
    },
    /// `service` is none of the four.
    #[error(transparent)]
    UnknownService(#[from] triggers::webhook::UnknownService),
    /// The activation's config is invalid.
    #[error(transparent)]
    Activate(#[from] ActivateError),
    /// The push or manual start cannot be built.
    #[error(transparent)]
    Push(#[from] PushError),
    /// The trigger is inactive or disabled (or, for a manual start, skipped by its config).
    #[error(transparent)]
    Queue(QueueError),
    /// A manual start without `commit_sha`.
    #[error(
        "commit_sha is required: a {service} trigger configured by hand has no provider API to \
         resolve a branch or tag to a commit"
    )]
    NoCommit {
        /// The service.
        service: &'static str,
    },
    /// The trigger's config skips this manual start.
    #[error("the trigger's config builds nothing for this start: {reason}")]
    ManualSkip {
        /// Why.
        reason: String,
    },
    /// The trigger's creator can no longer own its token.
    #[error(
        "the trigger's user {user:?} no longer exists or is disabled: delete the trigger and \
         create it again"
    )]
    NoConnectedUser {
        /// The user.
        user: String,
    },
    /// The webhook carries no or a wrong token.
    #[error(
        "the webhook needs the trigger's token: send the webhook URL's credentials \
         (Authorization: Basic $token:<token>)"
    )]
    WebhookUnauthenticated,
    /// The trigger's own token is no longer in registry-core (deleted, expired, or its user
    /// deleted or disabled).
    #[error(
        "the webhook token of trigger {uuid} is no longer valid (deleted, or its user deleted or \
         disabled): a repository admin must restore the user's access and re-activate the \
         trigger for a new webhook URL"
    )]
    TokenRevoked {
        /// The trigger.
        uuid: String,
    },
    /// `refs.name` or `branch_name` of a manual start is blank.
    #[error("{field} is empty: name the branch or tag to build, or leave it out")]
    BlankRef {
        /// The field.
        field: &'static str,
    },
    /// The token's owner lost write access to the repository.
    #[error(
        "the trigger's user {user:?} no longer has write access to repository {repository:?}: \
         a repository admin must re-activate the trigger"
    )]
    OwnerLacksWrite {
        /// The token's owner.
        user: String,
        /// The repository.
        repository: String,
    },
    /// The provider signature check failed.
    #[error("webhook signature check failed")]
    Signature(#[source] triggers::webhook::SignatureError),
    /// The body is not a usable push.
    #[error("webhook payload is invalid")]
    Payload(#[source] triggers::webhook::PayloadError),
    /// `builds.db` (trigger rows) failed.
    #[error("trigger database operation failed")]
    Store(#[from] StoreError),
    /// A stored secret could not be sealed or opened.
    #[error("trigger secret could not be sealed or opened")]
    Secret(#[from] SecretError),
    /// The deploy key could not be made.
    #[error(transparent)]
    DeployKey(#[from] DeployKeyError),
}

fn in_repo(repository: Option<&str>) -> String {
    repository.map_or_else(String::new, |r| format!(" in repository {r:?}"))
}

impl From<QueueError> for TriggerApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Gone { uuid } => TriggerApiError::NoTrigger {
                uuid,
                repository: None,
            },
            // The token that authenticated is no longer the trigger's.
            QueueError::TokenReplaced { .. } => TriggerApiError::WebhookUnauthenticated,
            QueueError::Push(e) => TriggerApiError::Push(e),
            QueueError::Store(e) => TriggerApiError::Store(e),
            QueueError::Db(e) => e.into(),
            e @ (QueueError::NotActive { .. } | QueueError::Disabled { .. }) => {
                TriggerApiError::Queue(e)
            }
        }
    }
}

/// The `From` impls that forward the errors every API handler meets (builds database,
/// registry-core's database, accounts, `/api/v1` errors) through [`BuildApiError`] into the
/// `Api` variant of an error type that wraps it. Shared by the trigger and notification APIs.
macro_rules! forward_to_build_api {
    ($t:ty) => {
        impl From<$crate::db::BuildDbError> for $t {
            fn from(e: $crate::db::BuildDbError) -> Self {
                Self::Api(e.into())
            }
        }
        impl From<registry_core::accounts::AccountError> for $t {
            fn from(e: registry_core::accounts::AccountError) -> Self {
                Self::Api(e.into())
            }
        }
        impl From<registry_core::db::DbError> for $t {
            fn from(e: registry_core::db::DbError) -> Self {
                Self::Api(e.into())
            }
        }
        impl From<registry_core::api::error::ApiV1Error> for $t {
            fn from(e: registry_core::api::error::ApiV1Error) -> Self {
                Self::Api(e.into())
            }
        }
    };
}
pub(super) use forward_to_build_api;

forward_to_build_api!(TriggerApiError);

impl TriggerApiError {
    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        use TriggerApiError as E;
        match self {
            E::Api(e) => e.status(),
            E::NoTrigger { .. } => StatusCode::NOT_FOUND,
            E::UnknownService(_)
            | E::Activate(_)
            | E::Push(_)
            | E::Queue(_)
            | E::BlankRef { .. }
            | E::NoCommit { .. }
            | E::ManualSkip { .. }
            | E::NoConnectedUser { .. }
            | E::Payload(_) => StatusCode::BAD_REQUEST,
            E::WebhookUnauthenticated => StatusCode::UNAUTHORIZED,
            E::TokenRevoked { .. } | E::OwnerLacksWrite { .. } | E::Signature(_) => {
                StatusCode::FORBIDDEN
            }
            E::Store(_) | E::Secret(_) | E::DeployKey(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for TriggerApiError {
    fn into_response(self) -> Response {
        if let TriggerApiError::Api(e) = self {
            return e.into_response();
        }
        let mut resp = registry_core::api::error::quay_error_response(self.status(), &self);
        if matches!(self, TriggerApiError::WebhookUnauthenticated) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"quarry\""),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_trigger_and_statuses_follow_the_table() {
        let e = TriggerApiError::NoTrigger {
            uuid: "t1".into(),
            repository: None,
        };
        assert_eq!(
            (e.to_string().as_str(), e.status()),
            ("no trigger t1", StatusCode::NOT_FOUND)
        );
        let e = TriggerApiError::NoTrigger {
            uuid: "t1".into(),
            repository: Some("acme/app".into()),
        };
        assert_eq!(e.to_string(), "no trigger t1 in repository \"acme/app\"");
        let resp = TriggerApiError::WebhookUnauthenticated.into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers()[header::WWW_AUTHENTICATE],
            "Basic realm=\"quarry\""
        );
    }
}
