//! `POST /webhooks/push/trigger/{uuid}` (reference 5.2): a provider's push delivery builds.
//!
//! Checked in this order, each refusal queuing nothing and logged at info with the trigger id
//! (never the token, the secret or the body): unknown trigger 404; no `Basic $token:<token>` or
//! any token but this trigger's own (compared in constant time before any lookup) 401; the own
//! token no longer valid in registry-core, or its owner without write on the repository, 403;
//! inactive or disabled 400; with a webhook secret, the provider's signature 403; a payload that
//! does not parse 400. A push the payload or the trigger's config skips answers `200 "Okay"` with
//! `X-Quarry-Skipped: <reason>`; a queued build `200 "Okay"` with `X-Quarry-Build: <build uuid>`.
//! The trigger is checked again (exists, active, enabled, same token) in the transaction that
//! creates the build ([`push::queue`]).

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use registry_core::accounts::credentials::{self, CredentialKind, Presented, Principal};
use registry_core::accounts::permissions::Role;
use registry_core::accounts::tokens::{self, TOKEN_USER};
use registry_core::names::RepoName;
use subtle::ConstantTimeEq as _;
use triggers::metadata::Push;
use triggers::webhook::{self, Headers};

use super::Shared;
use super::trigger_error::TriggerApiError;
use crate::trigger::push::{self, QueueRequest, Queued};
use crate::trigger::store::{self, Trigger};

/// Largest delivery accepted (GitHub caps its payloads at 25 MB, but a push with 20 commits is
/// a few tens of KiB).
const BODY_LIMIT: usize = 5 << 20;

/// Register this module's routes on `r`.
pub(super) fn routes(r: Router<Shared>) -> Router<Shared> {
    let route = post(deliver).layer(DefaultBodyLimit::max(BODY_LIMIT));
    r.route("/webhooks/push/trigger/{uuid}", route.clone())
        .route("/webhooks/push/trigger/{uuid}/", route)
}

/// The header a response names its outcome in.
const SKIPPED: &str = "x-quarry-skipped";
const BUILD: &str = "x-quarry-build";

async fn deliver(
    State(state): State<Shared>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match handle(&state, &uuid, &headers, &body).await {
        Ok(resp) => resp,
        Err(e) => {
            if !e.status().is_server_error() {
                // A payload error may quote the body (serde names the values it refuses): only
                // its kind is logged; the sender gets the reason in the answer.
                let reason = match &e {
                    TriggerApiError::Payload(_) => e.to_string(),
                    _ => crate::manager::error_chain(&e),
                };
                tracing::info!(trigger = %uuid, status = e.status().as_u16(), %reason,
                    "webhook delivery refused");
            }
            e.into_response()
        }
    }
}

fn okay(header: &'static str, value: &str) -> Response {
    // A reason with characters a header cannot hold is shown with them replaced.
    let value = HeaderValue::from_str(value).unwrap_or_else(|_| {
        let clean: String = value
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        HeaderValue::from_str(&clean).unwrap_or(HeaderValue::from_static("?"))
    });
    let mut resp = (StatusCode::OK, Json("Okay")).into_response();
    resp.headers_mut().insert(header, value);
    resp
}

async fn handle(
    state: &Shared,
    uuid: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, TriggerApiError> {
    let id = uuid.to_owned();
    let Some(t) = state.builds.read(move |c| store::get(c, &id)).await? else {
        return Err(TriggerApiError::NoTrigger {
            uuid: uuid.to_owned(),
            repository: None,
        });
    };
    let sealed_token = authenticate(state, &t, headers).await?;
    push::check_usable(&t)?;
    let provider_headers = Headers::new(headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
    if let Some(sealed) = &t.secure_webhook_secret {
        let secret = state.secrets.open(sealed)?;
        webhook::verify(t.service, &provider_headers, body, &secret)
            .map_err(TriggerApiError::Signature)?;
    }
    let metadata = match webhook::parse(t.service, &provider_headers, body, t.build_source())
        .map_err(TriggerApiError::Payload)?
    {
        Push::Build(m) => *m,
        Push::Skip(reason) => {
            tracing::info!(trigger = %t.uuid, %reason, "webhook delivery skipped by the payload");
            return Ok(okay(SKIPPED, &reason));
        }
    };
    let id = t.uuid.clone();
    let allow_local = state.settings.allow_local_git_sources;
    let max_retries = state.settings.max_retries;
    let queued = state
        .builds
        .write(move |tx| {
            push::queue(
                tx,
                QueueRequest {
                    uuid: &id,
                    repository: None,
                    sealed_token: Some(&sealed_token),
                    metadata,
                    manual_user: None,
                    allow_local,
                    max_retries,
                },
            )
            .map_err(TriggerApiError::from)
        })
        .await?;
    match queued {
        Queued::Skipped(reason) => {
            tracing::info!(trigger = %t.uuid, %reason, "webhook delivery skipped by the config");
            Ok(okay(SKIPPED, &reason))
        }
        Queued::Build(build) => {
            state.control.wake();
            tracing::info!(build_id = %build.uuid, trigger = %t.uuid, repository = %t.repository,
                "build queued by a webhook");
            Ok(okay(BUILD, &build.uuid))
        }
    }
}

/// The delivery must carry this trigger's own token: anything else is 401, decided by a
/// constant-time comparison with the opened `secure_webhook_token` before any lookup. The own
/// token must still be valid in registry-core and its owner still have write on the repository
/// (else 403). Returns the sealed token, which must still be the trigger's when the build is
/// created.
async fn authenticate(
    state: &Shared,
    t: &Trigger,
    headers: &HeaderMap,
) -> Result<Vec<u8>, TriggerApiError> {
    let Presented::Basic { username, secret } = credentials::from_headers(headers) else {
        return Err(TriggerApiError::WebhookUnauthenticated);
    };
    if username != TOKEN_USER || secret.is_empty() {
        return Err(TriggerApiError::WebhookUnauthenticated);
    }
    let Some(sealed) = &t.secure_webhook_token else {
        // Never activated: no token can match.
        return Err(TriggerApiError::WebhookUnauthenticated);
    };
    let own = state.secrets.open(sealed)?;
    if !bool::from(own.as_slice().ct_eq(secret.as_bytes())) {
        return Err(TriggerApiError::WebhookUnauthenticated);
    }
    let su = state.registry.config.super_users.clone();
    let lacks_write = |user: String| TriggerApiError::OwnerLacksWrite {
        user,
        repository: t.repository.clone(),
    };
    let repository: RepoName = t
        .repository
        .parse()
        .map_err(|_| lacks_write(t.connected_user.clone()))?;
    let uuid = t.uuid.clone();
    state
        .registry
        .db
        .read(move |c| {
            let Some(checked) = tokens::check(c, &secret)? else {
                return Ok(Err(TriggerApiError::TokenRevoked { uuid }));
            };
            let principal = Principal {
                account: checked.account,
                via: CredentialKind::AccessToken,
                scope: checked.scope,
            };
            if principal.repo_role(c, &su, &repository)? < Role::Write {
                return Ok(Err(TriggerApiError::OwnerLacksWrite {
                    user: principal.account.name,
                    repository: repository.to_string(),
                }));
            }
            Ok::<_, TriggerApiError>(Ok(()))
        })
        .await??;
    Ok(sealed.clone())
}
