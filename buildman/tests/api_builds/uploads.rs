//! Uploads (`/api/v1/filedrop/`) and the agent's `/buildpack/{file_id}` download.

use axum::body::Body;
use http::{Request, StatusCode};
use serde_json::json;

use crate::support::{BASE, CAP, Fixture};

#[tokio::test]
async fn create_from_upload_and_download_it_as_the_agent() {
    let f = Fixture::new().await;
    let content = b"FROM scratch\nCOPY . /\n";
    let file_id = f.upload("carol", content).await;
    assert_eq!(f.upload_files(), vec![file_id.clone()]);
    let r = f
        .start("carol", json!({"file_id": file_id, "subdirectory": "app"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    assert_eq!(r.json["resource_key"], file_id.as_str());
    assert_eq!(
        (
            r.json["dockerfile_path"].as_str(),
            r.json["context"].as_str()
        ),
        (Some("/app/Dockerfile"), Some("/app"))
    );
    let sha = registry_core::digest::Digest::of(registry_core::digest::Algorithm::Sha256, content);
    assert_eq!(r.json["display_name"], &sha.hex()[..7]);

    // The writer's view carries a signed download URL; it works without credentials.
    let url = r.json["archive_url"].as_str().unwrap();
    let path = url.strip_prefix(BASE).unwrap();
    assert!(
        path.starts_with(&format!("/buildpack/{file_id}?token=")),
        "{url}"
    );
    let got = f
        .send(Request::get(path).body(Body::empty()).unwrap())
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.bytes, content);
    assert_eq!(got.headers[http::header::CONTENT_TYPE], "application/x-tar");

    // The manager's URL is the same kind.
    let url = buildman::api::filedrop::package_url(
        &f.state.settings,
        &f.state.registry.keys,
        &file_id,
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let got = f
        .send(
            Request::get(url.strip_prefix(BASE).unwrap())
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(got.bytes, content);

    // Uploads are write-once.
    let put = Request::put(format!("/api/v1/filedrop/{file_id}"))
        .header(http::header::AUTHORIZATION, f.auth("carol"))
        .body(Body::from("FROM other"))
        .unwrap();
    assert_eq!(f.send(put).await.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn uploads_over_the_cap_are_413_and_leave_nothing() {
    let f = Fixture::new().await;
    let r = f
        .call(
            "POST",
            "/api/v1/filedrop/",
            Some("carol"),
            Some(json!({"mimeType": "text/plain"})),
        )
        .await;
    let id = r.json["file_id"].as_str().unwrap().to_owned();
    assert_eq!(r.json["url"], format!("{BASE}/api/v1/filedrop/{id}"));
    let put = |body: Body, user: &str| {
        Request::put(format!("/api/v1/filedrop/{id}"))
            .header(http::header::AUTHORIZATION, f.auth(user))
            .body(body)
            .unwrap()
    };
    let too_big = vec![b'x'; usize::try_from(CAP).unwrap() + 1];
    // Declared length over the cap: refused before reading (this body would fail if read).
    let unread = futures_util::stream::iter([Err::<Vec<u8>, _>(std::io::Error::other("read"))]);
    let declared = Request::put(format!("/api/v1/filedrop/{id}"))
        .header(http::header::AUTHORIZATION, f.auth("carol"))
        .header(http::header::CONTENT_LENGTH, CAP + 1)
        .body(Body::from_stream(unread))
        .unwrap();
    let r = f.send(declared).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", r.json);
    // Streamed without a length: refused once past the cap, partial file removed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        too_big.chunks(100).map(|c| Ok(c.to_vec())).collect();
    let r = f
        .send(put(
            Body::from_stream(futures_util::stream::iter(chunks)),
            "carol",
        ))
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", r.json);
    assert_eq!(f.upload_files(), Vec::<String>::new());
    // Other refusals.
    assert_eq!(
        f.send(put(Body::from("FROM x"), "bob")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        f.send(put(Body::empty(), "carol")).await.status,
        StatusCode::BAD_REQUEST
    );
    let anon = Request::put(format!("/api/v1/filedrop/{id}"))
        .body(Body::from("x"))
        .unwrap();
    assert_eq!(f.send(anon).await.status, StatusCode::UNAUTHORIZED);
    let ghost =
        Request::put("/api/v1/filedrop/nope").header(http::header::AUTHORIZATION, f.auth("carol"));
    assert_eq!(
        f.send(ghost.body(Body::from("x")).unwrap()).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(f.upload_files(), Vec::<String>::new());
    // Exactly the cap is fine.
    let r = f
        .send(put(
            Body::from(vec![b'y'; usize::try_from(CAP).unwrap()]),
            "carol",
        ))
        .await;
    assert_eq!(
        (r.status, r.json["size"].as_u64()),
        (StatusCode::OK, Some(CAP))
    );
    assert_eq!(f.upload_files(), vec![id]);
}

#[tokio::test]
async fn buildpack_download_needs_a_token_for_that_file() {
    let f = Fixture::new().await;
    let a = f.upload("carol", b"FROM a").await;
    let b = f.upload("carol", b"FROM b").await;
    let keys = &f.state.registry.keys;
    let now = registry_core::auth::token::now_s();
    let get = |file: &str, token: Option<String>| {
        let uri = match token {
            Some(t) => format!("/buildpack/{file}?token={t}"),
            None => format!("/buildpack/{file}"),
        };
        f.send(Request::get(uri).body(Body::empty()).unwrap())
    };
    let token_a = buildman::api::filedrop::buildpack_token(keys, &a, now + 60).unwrap();
    let r = get(&a, Some(token_a.clone())).await;
    assert_eq!(
        (r.status, r.bytes.as_slice()),
        (StatusCode::OK, b"FROM a".as_slice())
    );
    assert_eq!(get(&a, None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&b, Some(token_a)).await.status, StatusCode::FORBIDDEN);
    let expired = buildman::api::filedrop::buildpack_token(keys, &a, now - 60).unwrap();
    assert_eq!(
        get(&a, Some(expired)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&a, Some("not.a.jwt".into())).await.status,
        StatusCode::UNAUTHORIZED
    );
    // User credentials are not a substitute for the token.
    let with_user = Request::get(format!("/buildpack/{a}"))
        .header(http::header::AUTHORIZATION, f.auth("carol"));
    assert_eq!(
        f.send(with_user.body(Body::empty()).unwrap()).await.status,
        StatusCode::UNAUTHORIZED
    );
    // A valid token for an upload without content.
    let r = f
        .call("POST", "/api/v1/filedrop/", Some("carol"), Some(json!({})))
        .await;
    let pending = r.json["file_id"].as_str().unwrap().to_owned();
    let t = buildman::api::filedrop::buildpack_token(keys, &pending, now + 60).unwrap();
    assert_eq!(get(&pending, Some(t)).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn crashed_uploads_leave_nothing_that_blocks_a_retry() {
    let f = Fixture::new().await;
    let new_id = || async {
        let r = f
            .call("POST", "/api/v1/filedrop/", Some("carol"), Some(json!({})))
            .await;
        r.json["file_id"].as_str().unwrap().to_owned()
    };
    let put = |id: &str, body: &'static str| {
        let req = Request::put(format!("/api/v1/filedrop/{id}"))
            .header(http::header::AUTHORIZATION, f.auth("carol"))
            .body(Body::from(body))
            .unwrap();
        f.send(req)
    };
    let dir = f.state.settings.upload_dir.clone();
    std::fs::create_dir_all(&dir).unwrap();

    // A partial file being written by someone else: busy. Once stale (a crash): replaced.
    let id = new_id().await;
    let partial = std::fs::File::create(dir.join(format!("{id}.partial"))).unwrap();
    assert_eq!(put(&id, "FROM a").await.status, StatusCode::CONFLICT);
    assert!(
        dir.join(format!("{id}.partial")).exists(),
        "the other writer's file stays"
    );
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    partial.set_modified(hour_ago).unwrap();
    assert_eq!(put(&id, "FROM a").await.status, StatusCode::OK);

    // Published but never recorded (a crash in between): the retry replaces the file.
    let id = new_id().await;
    std::fs::write(dir.join(&id), "FROM stale").unwrap();
    let r = put(&id, "FROM fresh").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(std::fs::read(dir.join(&id)).unwrap(), b"FROM fresh");
    let mut files = f.upload_files();
    files.sort();
    assert!(files.iter().all(|n| !n.ends_with(".partial")), "{files:?}");
    assert_eq!(files.len(), 2);
}
