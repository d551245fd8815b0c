//! Build sources for the end-to-end tests: git repositories made with the git CLI, tarballs,
//! archives served on loopback, and reading a file out of a pushed image with skopeo.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::read::GzDecoder;

use super::quarry::{PASSWORD, workspace_path};

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn git(dir: &Path, args: &[&str]) -> String {
    run(Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Quarry Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Quarry Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com"))
}

/// A git repository holding `fixtures/builds/sample` whose `message.txt` says `first` in the
/// first commit and `second` in the second; returns (path, first sha, second sha).
pub fn sample_git_repo(parent: &Path) -> (PathBuf, String, String) {
    let dir = parent.join("sample.git-work");
    std::fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    std::fs::copy(
        workspace_path("fixtures/builds/sample/Dockerfile"),
        dir.join("Dockerfile"),
    )
    .unwrap();
    std::fs::write(dir.join("message.txt"), "first\n").unwrap();
    git(&dir, &["add", "."]);
    git(&dir, &["commit", "-q", "-m", "first"]);
    let first = git(&dir, &["rev-parse", "HEAD"]);
    std::fs::write(dir.join("message.txt"), "second\n").unwrap();
    git(&dir, &["commit", "-q", "-am", "second"]);
    let second = git(&dir, &["rev-parse", "HEAD"]);
    (dir, first, second)
}

/// A `.tar.gz` of the directory `dir` (entries relative to it).
pub fn tar_gz_dir(dir: &Path) -> Vec<u8> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(enc);
    tar.append_dir_all(".", dir).unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

/// A `.tar.gz` of in-memory files.
pub fn tar_gz_files(files: &[(&str, &[u8])]) -> Vec<u8> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(enc);
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, *data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// A tarball whose second entry escapes its directory through `..` (written by hand: the tar
/// crate refuses to build such a path).
pub fn tar_with_traversal() -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in [
        ("Dockerfile", b"FROM scratch\n".as_slice()),
        ("../escaped.txt", b"owned\n"),
    ] {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// A tarball with a symlink pointing out of the context and a file written through it.
pub fn tar_with_symlink_escape() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    tar.append_link(&mut h, "out", "/tmp").unwrap();
    let data = b"FROM scratch\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, "Dockerfile", data.as_slice())
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    tar.append_data(&mut h, "out/quarry-escape-marker", b"owned".as_slice())
        .unwrap();
    tar.into_inner().unwrap()
}

/// Serve `files` (path -> bytes, with a content type) on 127.0.0.1; returns the base URL.
pub async fn serve_files(files: Vec<(String, &'static str, Vec<u8>)>) -> String {
    use axum::routing::get;
    let mut router = axum::Router::new();
    for (path, ctype, bytes) in files {
        router = router.route(
            &path,
            get(move || {
                let bytes = bytes.clone();
                async move { ([(http::header::CONTENT_TYPE, ctype)], bytes) }
            }),
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

/// Read `path` (no leading slash) from the image `image` in the registry, through skopeo copy to
/// an OCI layout and the layers' tarballs (upper layers win).
pub fn file_in_image(image: &str, path: &str, scratch: &Path) -> Option<String> {
    let layout = scratch.join(format!("oci-{}", uuid::Uuid::new_v4()));
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false", "--src-creds"])
        .arg(format!("admin:{PASSWORD}"))
        .arg(format!("docker://{image}"))
        .arg(format!("oci:{}:img", layout.display())));
    let read_json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index = read_json(layout.join("index.json"));
    let manifest = read_json(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let mut found = None;
    for layer in manifest["layers"].as_array().unwrap() {
        let bytes = std::fs::read(blob(layer["digest"].as_str().unwrap())).unwrap();
        let reader: Box<dyn std::io::Read> = if bytes.starts_with(&[0x1f, 0x8b]) {
            Box::new(GzDecoder::new(bytes.as_slice()))
        } else {
            Box::new(bytes.as_slice())
        };
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("./")
                .to_owned();
            if name == path {
                let mut s = String::new();
                entry.read_to_string(&mut s).unwrap();
                found = Some(s);
            }
        }
    }
    found
}

/// Processes whose environment holds `BUILD_UUID=<uuid>` (agents of that build).
pub fn agents_of(build_uuid: &str) -> Vec<i32> {
    let needle = format!("BUILD_UUID={build_uuid}");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(env) = std::fs::read(entry.path().join("environ"))
            && env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
        {
            out.push(pid);
        }
    }
    out
}

/// Processes whose command line mentions `needle` (podman services of a build's work dir).
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == i32::try_from(std::process::id()).unwrap() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
        {
            out.push(pid);
        }
    }
    out
}

/// Every process tied to `needle`, a build uuid or the execution id `<uuid>-<n>` of one attempt,
/// the way buildman's executor ties them, by the work directory's name in a path: its agents
/// (`BUILD_UUID=<needle>` in the environment, so only for a uuid), any process whose command line
/// names it (a podman service of its work dir), whose root or working directory is under such a
/// path (chrooted RUN steps) or whose root mount is (runc RUN steps in their own mount
/// namespace), and their descendants. Each with what tied it; this test process is left out.
pub fn processes_of(needle: &str) -> Vec<(i32, &'static str)> {
    let me = i32::try_from(std::process::id()).unwrap();
    let env_needle = format!("BUILD_UUID={needle}");
    let mut parents = Vec::new();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let dir = entry.path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').unwrap_or(0) + 1..];
        let mut fields = after.split_whitespace();
        if pid == me || fields.next() == Some("Z") {
            continue;
        }
        let ppid: i32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        parents.push((pid, ppid));
        let read = |name: &str| std::fs::read(dir.join(name)).unwrap_or_default();
        let link = |name: &str| {
            std::fs::read_link(dir.join(name)).is_ok_and(|p| p.to_string_lossy().contains(needle))
        };
        let root_mount = String::from_utf8_lossy(&read("mountinfo"))
            .lines()
            .rev()
            .find(|l| l.split(' ').nth(4) == Some("/"))
            .is_some_and(|l| l.contains(needle));
        let why = if read("environ")
            .split(|b| *b == 0)
            .any(|kv| kv == env_needle.as_bytes())
        {
            "agent"
        } else if String::from_utf8_lossy(&read("cmdline")).contains(needle) {
            "command line"
        } else if link("root") || link("cwd") {
            "root or cwd"
        } else if root_mount {
            "root mount"
        } else {
            continue;
        };
        out.push((pid, why));
    }
    loop {
        let before = out.len();
        for (pid, ppid) in &parents {
            if out.iter().any(|(p, _)| p == ppid) && !out.iter().any(|(p, _)| p == pid) {
                out.push((*pid, "descendant"));
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

/// Wait until no process of build `build_uuid` ([`processes_of`]) is left; fail after 20 s,
/// naming them.
pub async fn nothing_left(build_uuid: &str) {
    nothing_left_within(build_uuid, std::time::Duration::from_secs(20)).await;
}

/// [`nothing_left`] for a build uuid or an execution id, failing after `limit`.
pub async fn nothing_left_within(needle: &str, limit: std::time::Duration) {
    let end = std::time::Instant::now() + limit;
    loop {
        let left = processes_of(needle);
        if left.is_empty() {
            return;
        }
        let described: Vec<String> = left
            .iter()
            .map(|(pid, why)| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                format!(
                    "{pid} ({why}): {}",
                    String::from_utf8_lossy(&cmd).replace('\0', " ")
                )
            })
            .collect();
        assert!(
            std::time::Instant::now() < end,
            "{needle} left processes:\n{}",
            described.join("\n")
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
