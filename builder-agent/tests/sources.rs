//! Build sources end to end: git repositories made with the `git` CLI in a temp dir, archives
//! served over loopback (tar, tar.gz, zip, bare Dockerfile, with misleading content types), and
//! hand-built malicious archives that must be refused without writing anything outside.
//!
//! Needs `git` on PATH (a missing git fails the test with a clear message) and loopback only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

// The test cases, by topic; `tests/sources/` is not a test target of its own.
#[path = "sources/archive.rs"]
mod archive;
#[path = "sources/git.rs"]
mod git;
#[path = "sources/hostile.rs"]
mod hostile;
#[path = "sources/ssh.rs"]
mod ssh;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use builder_agent::source::{Limits, Source, SourceError, UnsafeReason, fetch, resolve_context};
use tar::EntryType;

/// A temp dir laid out as `marker/` (must stay empty) and `work/` (dest's parent); dest is
/// `work/src`, so `../../marker` from inside the staging directory lands in `marker/`.
struct Layout {
    tmp: tempfile::TempDir,
}

impl Layout {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("marker")).unwrap();
        std::fs::create_dir(tmp.path().join("work")).unwrap();
        Layout { tmp }
    }
    fn dest(&self) -> PathBuf {
        self.tmp.path().join("work/src")
    }
    fn marker(&self) -> PathBuf {
        self.tmp.path().join("marker")
    }
    /// Nothing escaped, and nothing partial (no dest, no staging or download leftovers).
    fn assert_clean(&self) {
        let marker: Vec<_> = std::fs::read_dir(self.marker()).unwrap().collect();
        assert!(
            marker.is_empty(),
            "something was written outside: {marker:?}"
        );
        let work: Vec<_> = std::fs::read_dir(self.tmp.path().join("work"))
            .unwrap()
            .collect();
        assert!(work.is_empty(), "leftovers beside dest: {work:?}");
        assert!(!Path::new("/etc/quarry-pwned").exists());
    }
}

async fn fetch_logged(
    source: &Source,
    dest: &Path,
    limits: &Limits,
) -> (Result<(), SourceError>, Vec<String>) {
    let lines = RefCell::new(Vec::new());
    let progress = |l: &str| lines.borrow_mut().push(l.to_owned());
    let result = fetch(source, dest, limits, &progress).await;
    (result, lines.into_inner())
}

fn small_limits() -> Limits {
    Limits {
        max_bytes: 1 << 20,
        max_entries: 20,
        git_idle_timeout: Duration::from_secs(10),
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "protocol.file.allow=always",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env("GIT_AUTHOR_NAME", "Quarry Test")
        .env("GIT_AUTHOR_EMAIL", "test@quarry.invalid")
        .env("GIT_COMMITTER_NAME", "Quarry Test")
        .env("GIT_COMMITTER_EMAIL", "test@quarry.invalid")
        .output()
        .expect("running git: these tests need the git CLI on PATH (apt-get install git)");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `sub` (two commits) and `super` (first commit pins `sub` at its first commit as submodule
/// `lib`; second commit changes the Dockerfile), plus a commit only `refs/pull/1/head` reaches.
struct Repos {
    _tmp: tempfile::TempDir,
    sup: PathBuf,
    first: String,
    second: String,
    pull_only: String,
}

fn make_repos() -> Repos {
    let tmp = tempfile::tempdir().unwrap();
    let sub = tmp.path().join("sub");
    let sup = tmp.path().join("super");
    std::fs::create_dir(&sub).unwrap();
    std::fs::create_dir(&sup).unwrap();

    git(&sub, &["init", "-q", "-b", "main"]);
    std::fs::write(sub.join("lib.txt"), "sub v1\n").unwrap();
    git(&sub, &["add", "."]);
    git(&sub, &["commit", "-q", "-m", "sub one"]);
    let sub_first = git(&sub, &["rev-parse", "HEAD"]);
    std::fs::write(sub.join("lib.txt"), "sub v2\n").unwrap();
    git(&sub, &["commit", "-q", "-am", "sub two"]);

    git(&sup, &["init", "-q", "-b", "main"]);
    std::fs::write(sup.join("Dockerfile"), "FROM scratch\nLABEL v=1\n").unwrap();
    git(&sup, &["submodule", "add", "-q", "../sub", "lib"]);
    git(&sup.join("lib"), &["checkout", "-q", &sub_first]);
    git(&sup, &["add", "."]);
    git(&sup, &["commit", "-q", "-m", "first"]);
    let first = git(&sup, &["rev-parse", "HEAD"]);
    std::fs::write(sup.join("Dockerfile"), "FROM scratch\nLABEL v=2\n").unwrap();
    git(&sup, &["commit", "-q", "-am", "second"]);
    let second = git(&sup, &["rev-parse", "HEAD"]);

    let tree = git(&sup, &["rev-parse", "HEAD^{tree}"]);
    let pull_only = git(
        &sup,
        &["commit-tree", &tree, "-p", &second, "-m", "pull request"],
    );
    git(&sup, &["update-ref", "refs/pull/1/head", &pull_only]);
    Repos {
        _tmp: tmp,
        sup,
        first,
        second,
        pull_only,
    }
}

fn git_source(url: String, sha: &str) -> Source {
    Source::Git {
        url,
        sha: sha.to_owned(),
        private_key: None,
    }
}

/// Serves `files` (name -> content type, body) on 127.0.0.1; `/status/<code>` answers `code`.
async fn serve(files: Vec<(&str, &str, Vec<u8>)>) -> String {
    type Files = Arc<HashMap<String, (String, Vec<u8>)>>;
    async fn file(
        State(files): State<Files>,
        UrlPath(name): UrlPath<String>,
    ) -> axum::response::Response {
        match files.get(&name) {
            Some((ct, body)) => {
                ([(header::CONTENT_TYPE, ct.clone())], body.clone()).into_response()
            }
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }
    async fn status(UrlPath(code): UrlPath<u16>) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }
    let files: Files = Arc::new(
        files
            .into_iter()
            .map(|(n, ct, b)| (n.to_owned(), (ct.to_owned(), b)))
            .collect(),
    );
    let app = axum::Router::new()
        .route("/f/{name}", axum::routing::get(file))
        .route("/status/{code}", axum::routing::get(status))
        .with_state(files);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn fetch_archive(
    body: Vec<u8>,
    content_type: &str,
    limits: &Limits,
) -> (Layout, Result<(), SourceError>, Vec<String>) {
    let base = serve(vec![("pkg", content_type, body)]).await;
    let layout = Layout::new();
    let (result, lines) = fetch_logged(
        &Source::Archive {
            url: format!("{base}/f/pkg"),
        },
        &layout.dest(),
        limits,
    )
    .await;
    (layout, result, lines)
}

/// A raw tar entry: the tar crate's builder refuses `..` and absolute names, so write headers
/// by hand to build hostile archives.
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: EntryType, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    let old = h.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn raw_tar(entries: &[(&str, EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        raw_entry(&mut out, name, *kind, link, data);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// A good context: Dockerfile at the root, `app/Dockerfile`, a file and an inside symlink.
fn good_tar() -> Vec<u8> {
    raw_tar(&[
        ("./", EntryType::Directory, "", b""),
        (
            "Dockerfile",
            EntryType::Regular,
            "",
            b"FROM scratch\nCOPY app /app\n",
        ),
        ("app/", EntryType::Directory, "", b""),
        ("app/Dockerfile", EntryType::Regular, "", b"FROM scratch\n"),
        (
            "app/run.sh",
            EntryType::Regular,
            "",
            b"#!/bin/sh\necho hi\n",
        ),
        ("app/latest", EntryType::Symlink, "run.sh", b""),
    ])
}

fn good_zip() -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.add_directory("app/", opts).unwrap();
    zip.start_file("app/Dockerfile", opts).unwrap();
    zip.write_all(b"FROM scratch\nLABEL zip=1\n").unwrap();
    zip.add_symlink("Dockerfile", "app/Dockerfile", opts)
        .unwrap();
    zip.finish().unwrap().into_inner()
}

fn unsafe_reason(result: Result<(), SourceError>) -> UnsafeReason {
    match result {
        Err(SourceError::UnsafeEntry { reason, .. }) => reason,
        other => panic!("expected an unsafe entry error, got {other:?}"),
    }
}
