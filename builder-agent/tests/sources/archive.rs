//! Archives by URL: recognised by content, unpacked, HTTP failures.

use super::*;

#[tokio::test]
async fn archives_are_recognised_by_content_not_content_type() {
    let dockerfile = b"FROM scratch\nLABEL bare=1\n".to_vec();
    let cases: Vec<(&str, Vec<u8>, &str, &str, &str)> = vec![
        // (content type, body, context, dockerfile path, expected Dockerfile text)
        (
            "application/x-tar",
            good_tar(),
            "/",
            "Dockerfile",
            "FROM scratch\nCOPY app /app\n",
        ),
        (
            "text/plain",
            good_tar(),
            "/app",
            "Dockerfile",
            "FROM scratch\n",
        ),
        (
            "text/plain",
            gzip(&good_tar()),
            "/",
            "app/Dockerfile",
            "FROM scratch\n",
        ),
        (
            "application/octet-stream",
            gzip(&good_tar()),
            "/",
            "Dockerfile",
            "FROM scratch\nCOPY app /app\n",
        ),
        (
            "application/octet-stream",
            good_zip(),
            "/",
            "Dockerfile",
            "FROM scratch\nLABEL zip=1\n",
        ),
        (
            "application/octet-stream",
            dockerfile.clone(),
            "/",
            "Dockerfile",
            "FROM scratch\nLABEL bare=1\n",
        ),
        (
            "text/plain",
            dockerfile,
            "",
            "",
            "FROM scratch\nLABEL bare=1\n",
        ),
    ];
    for (ct, body, context, df, expected) in cases {
        let (layout, result, lines) = fetch_archive(body, ct, &Limits::default()).await;
        result.unwrap_or_else(|e| panic!("{ct} {context} {df}: {e:?}"));
        let (ctx, dockerfile) = resolve_context(&layout.dest(), context, df).unwrap();
        assert_eq!(
            std::fs::read_to_string(ctx.join(&dockerfile)).unwrap(),
            expected,
            "{ct} {context} {df}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("extracted ")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.contains(&format!("served as {ct}"))),
            "{lines:?}"
        );
    }
}

#[tokio::test]
async fn an_extracted_tar_keeps_inside_symlinks_and_modes() {
    let (layout, result, _) =
        fetch_archive(good_tar(), "application/x-tar", &Limits::default()).await;
    result.unwrap();
    let dest = layout.dest();
    assert_eq!(
        std::fs::read_link(dest.join("app/latest")).unwrap(),
        Path::new("run.sh")
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("app/latest")).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
}

#[tokio::test]
async fn http_errors_name_the_status_and_url() {
    let base = serve(vec![]).await;
    let layout = Layout::new();
    let url = format!("{base}/f/missing.tar.gz");
    let (result, _) = fetch_logged(
        &Source::Archive { url: url.clone() },
        &layout.dest(),
        &Limits::default(),
    )
    .await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, SourceError::HttpStatus { status: 404, .. }),
        "{err:?}"
    );
    assert!(err.is_user_error());
    assert!(
        err.to_string().contains("HTTP 404") && err.to_string().contains(&url),
        "{err}"
    );
    layout.assert_clean();

    let (result, _) = fetch_logged(
        &Source::Archive {
            url: format!("{base}/status/503"),
        },
        &layout.dest(),
        &Limits::default(),
    )
    .await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, SourceError::HttpStatus { status: 503, .. }),
        "{err:?}"
    );
    assert!(!err.is_user_error(), "a 5xx is worth a retry");

    let (result, _) = fetch_logged(
        &Source::Archive {
            url: "http://127.0.0.1:1/x.tar".into(),
        },
        &layout.dest(),
        &Limits::default(),
    )
    .await;
    assert!(
        matches!(result, Err(SourceError::DownloadFailed { .. })),
        "{result:?}"
    );
    layout.assert_clean();
}

#[tokio::test]
async fn a_download_over_the_limit_is_refused() {
    let body = vec![b'x'; 2 << 20];
    let (layout, result, _) = fetch_archive(body, "text/plain", &small_limits()).await;
    assert!(
        matches!(result, Err(SourceError::TooLarge { .. })),
        "{result:?}"
    );
    layout.assert_clean();
}

#[tokio::test]
async fn binary_junk_is_not_taken_for_a_dockerfile() {
    let (layout, result, _) = fetch_archive(
        b"BZh91AY&SY\x00\x01junk".to_vec(),
        "application/x-bzip2",
        &Limits::default(),
    )
    .await;
    assert!(
        matches!(
            result,
            Err(SourceError::UnsupportedArchive {
                kind: "a bzip2 file",
                ..
            })
        ),
        "{result:?}"
    );
    layout.assert_clean();
}

#[tokio::test]
async fn a_download_that_stalls_hits_the_idle_timeout() {
    // Headers and a first chunk, then silence with the connection held open.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((mut conn, _)) = listener.accept() {
            // Read the request first: a response before it is a protocol error to hyper.
            let mut request = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut request);
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\nContent-Length: 100000\r\n\r\nFROM",
            );
            held.push(conn);
        }
    });
    let layout = Layout::new();
    let limits = Limits {
        git_idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let source = Source::Archive {
        url: format!("http://{addr}/stall.tar"),
    };
    let started = Instant::now();
    let (result, _) = fetch_logged(&source, &layout.dest(), &limits).await;
    assert!(
        matches!(result, Err(SourceError::DownloadIdle { secs: 1, .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    layout.assert_clean();
}
