//! Git sources: local path, file://, short sha, unreachable commits, failures and limits.

use super::*;

#[tokio::test]
async fn git_fetch_at_the_first_commit_gets_its_content_and_the_submodule() {
    let repos = make_repos();
    let layout = Layout::new();
    let url = repos.sup.display().to_string();
    let (result, lines) = fetch_logged(
        &git_source(url, &repos.first),
        &layout.dest(),
        &Limits::default(),
    )
    .await;
    result.unwrap();
    let dest = layout.dest();
    assert_eq!(
        std::fs::read_to_string(dest.join("Dockerfile")).unwrap(),
        "FROM scratch\nLABEL v=1\n"
    );
    // The submodule is at the commit the superproject pinned, not at its branch head.
    assert_eq!(
        std::fs::read_to_string(dest.join("lib/lib.txt")).unwrap(),
        "sub v1\n"
    );
    let head = Command::new("git")
        .arg("-C")
        .arg(&dest)
        .args(["rev-parse", "HEAD"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&head.stdout).trim(), repos.first);
    let all = lines.join("\n");
    assert!(
        all.contains(&format!("checked out {}", &repos.first[..12])),
        "{all}"
    );
    assert!(all.contains("submodule lib"), "{all}");
    let (ctx, dockerfile) = resolve_context(&dest, "/", "Dockerfile").unwrap();
    assert_eq!(
        (ctx, dockerfile.as_str()),
        (dest.canonicalize().unwrap(), "Dockerfile")
    );
}

#[tokio::test]
async fn git_fetch_over_file_url_and_a_short_sha() {
    let repos = make_repos();
    let layout = Layout::new();
    let url = format!("file://{}", repos.sup.display());
    let (result, _) = fetch_logged(
        &git_source(url, &repos.second[..10]),
        &layout.dest(),
        &Limits::default(),
    )
    .await;
    result.unwrap();
    assert_eq!(
        std::fs::read_to_string(layout.dest().join("Dockerfile")).unwrap(),
        "FROM scratch\nLABEL v=2\n"
    );
    assert!(layout.dest().join("lib/lib.txt").is_file());
}

#[tokio::test]
async fn git_fetch_of_a_commit_no_branch_reaches_asks_for_it_by_id() {
    let repos = make_repos();
    let layout = Layout::new();
    let url = format!("file://{}", repos.sup.display());
    let (result, _) = fetch_logged(
        &git_source(url, &repos.pull_only),
        &layout.dest(),
        &Limits::default(),
    )
    .await;
    result.unwrap();
    assert!(layout.dest().join("Dockerfile").is_file());
}

#[tokio::test]
async fn git_unknown_or_malformed_sha_is_refused() {
    let repos = make_repos();
    let layout = Layout::new();
    let url = repos.sup.display().to_string();
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let (result, _) = fetch_logged(
        &git_source(url.clone(), missing),
        &layout.dest(),
        &Limits::default(),
    )
    .await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, SourceError::ShaNotFound { sha, .. } if sha == missing),
        "{err:?}"
    );
    assert!(err.is_user_error());
    assert!(err.to_string().contains(missing));
    layout.assert_clean();

    let (result, _) =
        fetch_logged(&git_source(url, "main"), &layout.dest(), &Limits::default()).await;
    assert!(matches!(result, Err(SourceError::InvalidSha { .. })));
    layout.assert_clean();
}

#[tokio::test]
async fn git_unreachable_urls_are_user_errors() {
    let layout = Layout::new();
    let sha = "0123456789abcdef0123456789abcdef01234567";
    for url in [
        "/nonexistent/quarry/repo",
        "file:///nonexistent/quarry/repo",
        "http://127.0.0.1:1/repo.git",
    ] {
        let (result, _) = fetch_logged(
            &git_source(url.to_owned(), sha),
            &layout.dest(),
            &Limits::default(),
        )
        .await;
        let err = result.unwrap_err();
        assert!(
            matches!(err, SourceError::GitUnreachable { .. }),
            "{url}: {err:?}"
        );
        assert!(err.is_user_error(), "{url}");
        layout.assert_clean();
    }
}

/// A server that accepts and never answers, on a plain thread that outlives any runtime (the
/// connections stay open until the test process ends, as a stalled server's would).
fn silent_server() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept() {
            held.push(conn);
        }
    });
    addr
}

#[test]
fn git_server_that_goes_silent_hits_the_idle_timeout_and_does_not_block_exit() {
    let addr = silent_server();
    let layout = Layout::new();
    let limits = Limits {
        git_idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let source = git_source(
        format!("http://{addr}/repo.git"),
        "0123456789abcdef0123456789abcdef01234567",
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let (result, _) = runtime.block_on(fetch_logged(&source, &layout.dest(), &limits));
    assert!(
        matches!(result, Err(SourceError::GitIdle { secs: 1, .. })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // libgit2 is still blocked reading from the silent server; the runtime must not wait for it
    // (the agent exits right after reporting the error).
    let dropping = Instant::now();
    drop(runtime);
    assert!(
        dropping.elapsed() < Duration::from_secs(2),
        "runtime shutdown waited {:?} for the git thread",
        dropping.elapsed()
    );
}

#[tokio::test]
async fn git_checkout_larger_than_the_limit_is_refused_unwritten() {
    let repos = make_repos();
    std::fs::write(repos.sup.join("big.bin"), vec![0u8; 300_000]).unwrap();
    git(&repos.sup, &["add", "big.bin"]);
    git(&repos.sup, &["commit", "-q", "-m", "big"]);
    let big = git(&repos.sup, &["rev-parse", "HEAD"]);
    let layout = Layout::new();
    // The pack compresses the zeros to almost nothing; the checkout would not be small.
    let limits = Limits {
        max_bytes: 100_000,
        ..Limits::default()
    };
    let (result, _) = fetch_logged(
        &git_source(repos.sup.display().to_string(), &big),
        &layout.dest(),
        &limits,
    )
    .await;
    assert!(
        matches!(result, Err(SourceError::TooLarge { .. })),
        "{result:?}"
    );
    layout.assert_clean();
}
