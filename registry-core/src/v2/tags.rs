//! `GET /v2/<name>/tags/list[?n=&last=]`: live tags in ASCII order, paginated with `Link`.

use axum::body::Body;
use axum::response::Response;
use http::header::{CONTENT_TYPE, LINK};
use http::{HeaderMap, HeaderName, StatusCode};
use rusqlite::params;
use serde::Serialize;

use super::{Query, name_unknown, respond};
use crate::auth::{Action, authorize};
use crate::error::{ApiError, ErrorCode};
use crate::names::RepoName;
use crate::state::AppState;

#[derive(Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: Vec<String>,
}

/// `GET /v2/<name>/tags/list`.
pub(super) async fn list(
    state: &AppState,
    name: &RepoName,
    query: &Query,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    authorize(state, headers, name, Action::Pull).await?;
    let n: Option<u64> = match query.get("n") {
        None | Some("") => None,
        Some(v) => Some(v.parse().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                format!("query parameter n={v:?} must be a non-negative integer"),
            )
        })?),
    };
    let last = query.get("last").unwrap_or("").to_owned();
    let repo_name = name.clone();
    // One row more than asked tells whether another page exists. SQLite's default BINARY
    // collation orders TEXT by bytes, which is ASCII order for tag names.
    let fetch = n.map(|n| i64::try_from(n.saturating_add(1)).unwrap_or(i64::MAX));
    let rows: Option<Vec<String>> = state
        .db
        .read(move |c| {
            let Some(repo) = super::repo_id(c, &repo_name)? else {
                return Ok(None);
            };
            let mut st = c.prepare_cached(
                "SELECT name FROM tag WHERE repository_id = ?1 AND lifetime_end_ms IS NULL \
                 AND name > ?2 ORDER BY name LIMIT ?3",
            )?;
            let tags = st
                .query_map(params![repo, last, fetch.unwrap_or(-1)], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok::<_, ApiError>(Some(tags))
        })
        .await?;
    let Some(mut tags) = rows else {
        return Err(name_unknown(name));
    };
    let mut link = None;
    if let Some(n) = n.and_then(|n| usize::try_from(n).ok())
        && tags.len() > n
    {
        tags.truncate(n);
        if let Some(last) = tags.last() {
            link = Some(format!(
                "</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\""
            ));
        }
    }
    let body = serde_json::to_vec(&TagList {
        name: name.as_str(),
        tags,
    })
    .map_err(ApiError::internal)?;
    let mut hdrs: Vec<(HeaderName, &str)> = vec![(CONTENT_TYPE, "application/json")];
    if let Some(l) = &link {
        hdrs.push((LINK, l));
    }
    respond(StatusCode::OK, &hdrs, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[tokio::test]
    async fn tags_paginate_in_ascii_order() {
        let h = Harness::new().await;
        let m = h.image("acme/app", b"cfg", &[b"layer"], "").await;
        for t in ["b", "a", "C", "_x", "a1"] {
            let r = h.put_manifest("acme/app", t, OCI_MANIFEST_TYPE, &m).await;
            assert_eq!(r.status, StatusCode::CREATED, "{t}");
        }
        let all = h.get("/v2/acme/app/tags/list").await;
        assert_eq!(all.status, StatusCode::OK);
        assert_eq!(all.json()["name"], "acme/app");
        assert_eq!(
            all.json()["tags"],
            serde_json::json!(["C", "_x", "a", "a1", "b"])
        );
        assert!(all.header("link").is_none());

        let page = h.get("/v2/acme/app/tags/list?n=2").await;
        assert_eq!(page.json()["tags"], serde_json::json!(["C", "_x"]));
        assert_eq!(
            page.header("link"),
            Some("</v2/acme/app/tags/list?n=2&last=_x>; rel=\"next\"")
        );
        let page = h.get("/v2/acme/app/tags/list?n=2&last=_x").await;
        assert_eq!(page.json()["tags"], serde_json::json!(["a", "a1"]));
        assert!(page.header("link").is_some());
        let page = h.get("/v2/acme/app/tags/list?n=2&last=a1").await;
        assert_eq!(page.json()["tags"], serde_json::json!(["b"]));
        assert!(page.header("link").is_none());

        let zero = h.get("/v2/acme/app/tags/list?n=0").await;
        assert_eq!(zero.status, StatusCode::OK);
        assert_eq!(zero.json()["tags"], serde_json::json!([]));
        assert!(zero.header("link").is_none());
        let exact = h.get("/v2/acme/app/tags/list?n=5").await;
        assert!(exact.header("link").is_none());
        let bad = h.get("/v2/acme/app/tags/list?n=x").await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    }
}
