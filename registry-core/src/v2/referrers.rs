//! `GET /v2/<name>/referrers/<digest>[?artifactType=]`: an OCI image index of the manifests whose
//! `subject` is `<digest>`, always 200 (an empty index for an unknown subject or repository).
//!
//! The descriptors come from stored columns (no manifest is re-parsed), plus, as the spec's
//! "Enabling the Referrers API" section asks, the entries of a referrers-tag-schema index
//! (`<alg>-<hex>` tag) that clients without referrers support may have pushed.

use axum::body::Body;
use axum::response::Response;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, StatusCode};
use rusqlite::{OptionalExtension as _, params};
use serde::Serialize;

use super::{OCI_FILTERS_APPLIED, Query, respond};
use crate::auth::{Action, authorize};
use crate::digest::Digest;
use crate::error::ApiError;
use crate::manifest::{OCI_INDEX, index_descriptors};
use crate::names::RepoName;
use crate::state::AppState;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<serde_json::Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor>,
}

/// The referrers-tag-schema tag of `subject`: `<alg>-<hex>`, the hex cut to 64 characters so it
/// fits the tag grammar for sha512.
fn fallback_tag(subject: &Digest) -> String {
    let hex = subject.hex();
    format!(
        "{}-{}",
        subject.algorithm().name(),
        &hex[..hex.len().min(64)]
    )
}

fn query_referrers(
    c: &rusqlite::Connection,
    name: &RepoName,
    subject: &Digest,
    filter: Option<&str>,
) -> Result<Vec<Descriptor>, ApiError> {
    let Some(repo) = super::repo_id(c, name)? else {
        return Ok(Vec::new());
    };
    let mut out = c
        .prepare_cached(
            "SELECT media_type, digest, length(bytes), artifact_type, annotations FROM manifest \
             WHERE repository_id = ?1 AND subject = ?2 AND (?3 IS NULL OR artifact_type = ?3) \
             ORDER BY id",
        )?
        .query_map(params![repo, subject.to_string(), filter], |r| {
            let annotations: Option<String> = r.get(4)?;
            Ok(Descriptor {
                media_type: r.get(0)?,
                digest: r.get(1)?,
                size: r.get(2)?,
                artifact_type: r.get(3)?,
                annotations: annotations.and_then(|a| serde_json::from_str(&a).ok()),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let tagged: Option<(String, Vec<u8>)> = c
        .prepare_cached(
            "SELECT m.media_type, m.bytes FROM tag t JOIN manifest m \
             ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest \
             WHERE t.repository_id = ?1 AND t.name = ?2 AND t.lifetime_end_ms IS NULL",
        )?
        .query_row(params![repo, fallback_tag(subject)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    if let Some((media_type, bytes)) = tagged
        && media_type == OCI_INDEX
    {
        // A malformed fallback index is skipped: it is client data, not ours to fail on.
        for d in index_descriptors(&bytes).unwrap_or_default() {
            let matches = filter.is_none_or(|f| d.artifact_type.as_deref() == Some(f));
            if matches && !out.iter().any(|o| o.digest == d.digest) {
                out.push(Descriptor {
                    media_type: d.media_type,
                    digest: d.digest,
                    size: d.size,
                    artifact_type: d.artifact_type,
                    annotations: d.annotations.map(serde_json::Value::Object),
                });
            }
        }
    }
    Ok(out)
}

/// `GET /v2/<name>/referrers/<digest>`.
pub(super) async fn list(
    state: &AppState,
    name: &RepoName,
    subject: &Digest,
    query: &Query,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    authorize(state, headers, name, Action::Pull).await?;
    let filter = query
        .get("artifactType")
        .filter(|f| !f.is_empty())
        .map(str::to_owned);
    let (n, s, f) = (name.clone(), subject.clone(), filter.clone());
    let manifests = state
        .db
        .read(move |c| query_referrers(c, &n, &s, f.as_deref()))
        .await?;
    let body = serde_json::to_vec(&Index {
        schema_version: 2,
        media_type: OCI_INDEX,
        manifests,
    })
    .map_err(ApiError::internal)?;
    let mut hdrs: Vec<(HeaderName, &str)> = vec![(CONTENT_TYPE, OCI_INDEX)];
    if filter.is_some() {
        hdrs.push((OCI_FILTERS_APPLIED, "artifactType"));
    }
    respond(StatusCode::OK, &hdrs, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[tokio::test]
    async fn referrers_list_filter_and_empty() {
        let h = Harness::new().await;
        let base = h.image("acme/app", b"cfg", &[b"layer"], "").await;
        let r = h
            .put_manifest("acme/app", "v1", OCI_MANIFEST_TYPE, &base)
            .await;
        let subject = r.header("docker-content-digest").unwrap().to_owned();
        let subject_json = format!(
            r#","subject":{{"mediaType":"{OCI_MANIFEST_TYPE}","digest":"{subject}","size":{}}}"#,
            base.len()
        );
        let sig = h
            .image(
                "acme/app",
                b"{}",
                &[b"sig"],
                &format!(
                    r#","artifactType":"application/x-sig","annotations":{{"k":"v"}}{subject_json}"#
                ),
            )
            .await;
        let sbom = h
            .image("acme/app", b"sbom-config", &[b"sbom"], &subject_json)
            .await;
        for m in [&sig, &sbom] {
            let d = Digest::of(crate::digest::Algorithm::Sha256, m);
            let r = h
                .put_manifest("acme/app", &d.to_string(), OCI_MANIFEST_TYPE, m)
                .await;
            assert_eq!(r.status, StatusCode::CREATED);
            assert_eq!(r.header("oci-subject"), Some(subject.as_str()));
        }

        let r = h.get(&format!("/v2/acme/app/referrers/{subject}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-type"), Some(OCI_INDEX));
        let v = r.json();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], OCI_INDEX);
        let list = v["manifests"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["artifactType"], "application/x-sig");
        assert_eq!(list[0]["annotations"]["k"], "v");
        assert_eq!(list[0]["size"], sig.len());
        // An image without artifactType reports its config media type.
        assert_eq!(
            list[1]["artifactType"],
            "application/vnd.oci.image.config.v1+json"
        );
        assert!(r.header("oci-filters-applied").is_none());

        let r = h
            .get(&format!(
                "/v2/acme/app/referrers/{subject}?artifactType=application/x-sig"
            ))
            .await;
        assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
        assert_eq!(r.json()["manifests"].as_array().unwrap().len(), 1);

        let unknown = Digest::of(crate::digest::Algorithm::Sha256, b"nothing");
        let r = h.get(&format!("/v2/acme/app/referrers/{unknown}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["manifests"], serde_json::json!([]));
        let r = h.get("/v2/acme/app/referrers/sha256:nope").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn referrers_tag_schema_indexes_are_surfaced() {
        let h = Harness::new().await;
        let base = h.image("acme/app", b"cfg", &[b"layer"], "").await;
        let subject = Digest::of(crate::digest::Algorithm::Sha256, &base);
        h.put_manifest("acme/app", "v1", OCI_MANIFEST_TYPE, &base)
            .await;
        let art = h
            .image(
                "acme/app",
                b"art",
                &[b"a"],
                r#","artifactType":"application/x-old""#,
            )
            .await;
        let art_d = Digest::of(crate::digest::Algorithm::Sha256, &art);
        h.put_manifest("acme/app", &art_d.to_string(), OCI_MANIFEST_TYPE, &art)
            .await;
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST_TYPE}","digest":"{art_d}","size":{},"artifactType":"application/x-old"}}]}}"#,
            art.len()
        );
        let r = h
            .put_manifest(
                "acme/app",
                &fallback_tag(&subject),
                OCI_INDEX,
                index.as_bytes(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let r = h.get(&format!("/v2/acme/app/referrers/{subject}")).await;
        let list = r.json()["manifests"].as_array().unwrap().clone();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["digest"], art_d.to_string());
    }
}
