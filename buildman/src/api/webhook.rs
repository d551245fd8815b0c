//! `POST /webhooks/push/trigger/{uuid}` (reference 5.2): a provider's push delivery builds.
//!
//! Checked in this order, each refusal queuing nothing and logged at info with the trigger id
//! (never the token or the body): unknown trigger 404; no or wrong `Basic $token:<token>` 401
//! (a valid token of anyone else 403; the token's owner must still have write on the repository,
//! else 403); inactive or disabled 400; with a webhook secret, the provider's signature 403; a
//! payload that does not parse 400. A push the payload or the trigger's config skips answers
//! `200 "Okay"` with `X-Quarry-Skipped: <reason>`; a queued build `200 "Okay"` with
//! `X-Quarry-Build: <build uuid>`.

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
use triggers::plan::Decision;
use triggers::webhook::{self, Headers};

use super::Shared;
use super::trigger_error::TriggerApiError;
use super::trigger_start::check_usable;
use crate::model;
use crate::trigger::push;
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
                tracing::info!(trigger = %uuid, status = e.status().as_u16(),
                    reason = %crate::manager::error_chain(&e), "webhook delivery refused");
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
    authenticate(state, &t, headers).await?;
    check_usable(&t)?;
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
    let config = push::stored_config(&t)?;
    let tags = match triggers::plan::decide(&config, &metadata, false) {
        Decision::Build { tags } => tags,
        Decision::Skip(reason) => {
            tracing::info!(trigger = %t.uuid, %reason, "webhook delivery skipped by the config");
            return Ok(okay(SKIPPED, &reason));
        }
    };
    let mut metadata = metadata;
    metadata.commit = push::check_commit(&metadata.commit)?;
    push::check_git_url(&metadata.git_url, state.settings.allow_local_git_sources)?;
    let new = push::new_build(
        &t,
        &config,
        &metadata,
        tags,
        None,
        state.settings.max_retries,
    );
    let build = state
        .builds
        .write(move |tx| model::create(tx, &new))
        .await?;
    state.control.wake();
    tracing::info!(build_id = %build.uuid, trigger = %t.uuid, repository = %t.repository,
        commit = %metadata.commit, "build queued by a webhook");
    Ok(okay(BUILD, &build.uuid))
}

/// The delivery must carry this trigger's own token (compared in constant time), and its owner
/// must still have write on the repository.
async fn authenticate(
    state: &Shared,
    t: &Trigger,
    headers: &HeaderMap,
) -> Result<(), TriggerApiError> {
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
    let matches = bool::from(own.as_slice().ct_eq(secret.as_bytes()));
    let su = state.registry.config.super_users.clone();
    let repository: RepoName =
        t.repository
            .parse()
            .map_err(|_| TriggerApiError::OwnerLacksWrite {
                user: t.connected_user.clone(),
                repository: t.repository.clone(),
            })?;
    let uuid = t.uuid.clone();
    let user = t.connected_user.clone();
    state
        .registry
        .db
        .read(move |c| {
            let Some(checked) = tokens::check(c, &secret)? else {
                // Unknown, expired, or its owner deleted or disabled.
                return Ok(Err(if matches {
                    TriggerApiError::OwnerLacksWrite {
                        user,
                        repository: repository.to_string(),
                    }
                } else {
                    TriggerApiError::WebhookUnauthenticated
                }));
            };
            if !matches {
                return Ok(Err(TriggerApiError::ForeignToken { uuid }));
            }
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
        .await?
}
