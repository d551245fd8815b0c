//! Real container clients (skopeo, podman, buildah from Debian) against a live `registry-core`.
//!
//! Heavy, so `#[ignore]`d; the test script runs them with `--include-ignored`. Each test checks
//! that its tools are on PATH first and panics with a clear message when not (never skips).
//!
//! Isolation: every tool runs with a cleared environment whose HOME, XDG_* dirs, auth file,
//! registries.conf and storage (`--root/--runroot`, vfs) live in the test's temp dir. As root,
//! containers/image keeps its blob-info cache in `/var/lib/containers/cache` whatever the
//! environment says, so each tool runs in a private mount namespace (`unshare --mount`) with a
//! tmpfs on `/var/lib` and the test's own cache dir bound at `/var/lib/containers`: the host's
//! `/var/lib/containers` is never touched, and later tool calls in one test still see the cache
//! (so c/image may try cross-repo mounts, which the registry must handle).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    unreachable_pub,
    missing_debug_implementations
)]

mod common;

#[path = "clients/tools.rs"]
mod tools;

use std::io::Read as _;

use common::image::{real_oci_image, write_oci_layout};
use common::{PASSWORD, Registry};
use reqwest::Method;
use tools::{Tools, layout_blobs, layout_manifest_digest, require, strings};

#[tokio::test]
#[ignore = "needs skopeo, podman and buildah"]
async fn skopeo_round_trip_keeps_manifest_and_blob_digests() {
    require(&["skopeo"]);
    let reg = Registry::start();
    let alice = reg.user("alice");
    let t = Tools::new(&reg);
    let src = reg.scratch("src");
    let img = real_oci_image(3);
    write_oci_layout(&src, &img, "v1");
    let creds = format!("alice:{PASSWORD}");
    let src_ref = format!("oci:{}:v1", src.display());
    let dst_ref = t.docker("alice/skopeo:v1");
    t.ok(
        "skopeo",
        &strings(&[
            "--insecure-policy",
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            &creds,
            &src_ref,
            &dst_ref,
        ]),
    );
    let served = alice
        .fetch_manifest(Method::GET, "alice/skopeo", "v1")
        .await;
    served.expect_status(200, "the manifest skopeo pushed");
    assert_eq!(
        served.body, img.manifest,
        "skopeo --preserve-digests keeps bytes"
    );
    let raw = t.ok(
        "skopeo",
        &strings(&[
            "--insecure-policy",
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            &creds,
            &dst_ref,
        ]),
    );
    assert_eq!(raw.as_bytes(), img.manifest.as_slice());
    let tags = t.ok(
        "skopeo",
        &strings(&[
            "list-tags",
            "--tls-verify=false",
            "--creds",
            &creds,
            &t.docker("alice/skopeo"),
        ]),
    );
    assert!(tags.contains("\"v1\""), "{tags}");

    let back = reg.scratch("back");
    t.ok(
        "skopeo",
        &strings(&[
            "--insecure-policy",
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--src-creds",
            &creds,
            &dst_ref,
            &format!("oci:{}:v1", back.display()),
        ]),
    );
    assert_eq!(layout_manifest_digest(&back), img.digest);
    assert_eq!(layout_blobs(&back), layout_blobs(&src));
    // And a second push of the same image into another repository (c/image may mount now).
    t.ok(
        "skopeo",
        &strings(&[
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &creds,
            &src_ref,
            &t.docker("alice/skopeo-again:v1"),
        ]),
    );
    for b in img.blobs() {
        assert_eq!(
            alice.blob_bytes("alice/skopeo-again", &b.digest).await,
            b.data
        );
    }
}

#[tokio::test]
#[ignore = "needs skopeo, podman and buildah"]
async fn podman_login_push_pull_with_a_robot() {
    require(&["podman", "skopeo"]);
    let reg = Registry::start();
    let alice = reg.user("alice");
    reg.admin(&["repo", "create", "alice/podman"]);
    let (robot, token) = reg.robot("alice", "ci");
    reg.admin(&[
        "permission",
        "set",
        "alice/podman",
        "--robot",
        &robot,
        "--role",
        "write",
    ]);
    let t = Tools::new(&reg);
    let src = reg.scratch("src");
    write_oci_layout(&src, &real_oci_image(2), "v1");

    let login = t.run(
        "podman",
        &t.podman(&[
            "login",
            "--tls-verify=false",
            "--authfile",
            &t.p("auth.json"),
            "-u",
            &robot,
            "--password-stdin",
            &t.registry,
        ]),
        Some(&token),
    );
    assert!(
        login.status.success(),
        "podman login as {robot}: {}",
        String::from_utf8_lossy(&login.stderr)
    );
    // Import the layout into the test's storage under a name of our choosing (`podman pull
    // oci:DIR` would name it after the temp path, which may hold upper-case letters).
    let storage = format!(
        "containers-storage:[vfs@{}+{}]localhost/imported:v1",
        t.p("storage/root"),
        t.runroot.path().display()
    );
    t.ok(
        "skopeo",
        &strings(&[
            "--insecure-policy",
            "copy",
            &format!("oci:{}:v1", src.display()),
            &storage,
        ]),
    );
    let id = t.ok(
        "podman",
        &t.podman(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            "localhost/imported:v1",
        ]),
    );
    let id = id.trim().to_owned();
    let target = format!("{}/alice/podman:v1", t.registry);
    t.ok(
        "podman",
        &t.podman(&[
            "push",
            "--tls-verify=false",
            "--authfile",
            &t.p("auth.json"),
            &id,
            &format!("docker://{target}"),
        ]),
    );
    let served = alice
        .fetch_manifest(Method::GET, "alice/podman", "v1")
        .await;
    served.expect_status(200, "the manifest podman pushed");
    let digest = served.must_header("docker-content-digest").to_owned();

    t.ok("podman", &t.podman(&["rmi", "--all", "--force"]));
    t.ok(
        "podman",
        &t.podman(&[
            "pull",
            "--tls-verify=false",
            "--authfile",
            &t.p("auth.json"),
            &target,
        ]),
    );
    let inspect = t.ok(
        "podman",
        &t.podman(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}} {{.Digest}}",
            &target,
        ]),
    );
    let mut it = inspect.split_whitespace();
    assert_eq!(
        it.next(),
        Some(id.as_str()),
        "same image id after the round trip"
    );
    assert_eq!(it.next(), Some(digest.as_str()), "pulled digest: {inspect}");
}

#[tokio::test]
#[ignore = "needs skopeo, podman and buildah"]
async fn buildah_builds_and_pushes() {
    require(&["buildah"]);
    let reg = Registry::start();
    let alice = reg.user("alice");
    let t = Tools::new(&reg);
    let content = format!("built by buildah {}\n", common::push::random_suffix());
    let file = reg.scratch("ctx").join("hello.txt");
    std::fs::write(&file, &content).unwrap();
    let b = |args: &[&str]| {
        let mut v = t.storage_args();
        v.extend(args.iter().map(|s| (*s).to_owned()));
        v
    };
    let ctr = t.ok("buildah", &b(&["from", "scratch"])).trim().to_owned();
    t.ok(
        "buildah",
        &b(&["copy", &ctr, &file.display().to_string(), "/hello.txt"]),
    );
    t.ok("buildah", &b(&["config", "--cmd", "/hello.txt", &ctr]));
    t.ok("buildah", &b(&["commit", &ctr, "localhost/built:v1"]));
    t.ok(
        "buildah",
        &b(&[
            "push",
            "--tls-verify=false",
            "--creds",
            &format!("alice:{PASSWORD}"),
            "localhost/built:v1",
            &t.docker("alice/buildah:v1"),
        ]),
    );
    let m = alice
        .fetch_manifest(Method::GET, "alice/buildah", "v1")
        .await;
    m.expect_status(200, "the manifest buildah pushed");
    let v = m.json();
    let layer = v["layers"][0]["digest"].as_str().unwrap().to_owned();
    alice
        .blob_bytes("alice/buildah", v["config"]["digest"].as_str().unwrap())
        .await;
    let gz = alice.blob_bytes("alice/buildah", &layer).await;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
    let mut found = None;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().ends_with("hello.txt") {
            let mut s = String::new();
            entry.read_to_string(&mut s).unwrap();
            found = Some(s);
        }
    }
    assert_eq!(
        found.as_deref(),
        Some(content.as_str()),
        "the layer holds the copied file"
    );
}

#[tokio::test]
#[ignore = "needs skopeo, podman and buildah"]
async fn skopeo_anonymous_inspect_private_refused_public_allowed() {
    require(&["skopeo"]);
    let reg = Registry::start();
    let alice = reg.user("alice");
    reg.admin(&["repo", "create", "alice/private"]);
    reg.admin(&["repo", "create", "alice/public", "--public"]);
    let img = common::image::random_oci_image(1, 100);
    alice.push_image("alice/private", "v1", &img).await;
    alice.push_image("alice/public", "v1", &img).await;
    let t = Tools::new(&reg);
    let inspect = |repo: &str| {
        t.run(
            "skopeo",
            &strings(&[
                "inspect",
                "--raw",
                "--tls-verify=false",
                "--no-creds",
                &t.docker(repo),
            ]),
            None,
        )
    };
    let private = inspect("alice/private:v1");
    assert!(
        !private.status.success(),
        "anonymous inspect of a private repository succeeded"
    );
    let err = String::from_utf8_lossy(&private.stderr).to_lowercase();
    assert!(
        err.contains("unauthorized")
            || err.contains("authentication required")
            || err.contains("401"),
        "{err}"
    );
    let public = inspect("alice/public:v1");
    assert!(
        public.status.success(),
        "{}",
        String::from_utf8_lossy(&public.stderr)
    );
    assert_eq!(public.stdout, img.manifest);
}

#[tokio::test]
#[ignore = "needs skopeo, podman and buildah"]
async fn read_only_robot_cannot_push_with_skopeo() {
    require(&["skopeo"]);
    let reg = Registry::start();
    let alice = reg.user("alice");
    reg.admin(&["repo", "create", "alice/ro"]);
    alice
        .push_image("alice/ro", "v0", &common::image::random_oci_image(1, 10))
        .await;
    let (robot, token) = reg.robot("alice", "reader");
    reg.admin(&[
        "permission",
        "set",
        "alice/ro",
        "--robot",
        &robot,
        "--role",
        "read",
    ]);
    let t = Tools::new(&reg);
    let src = reg.scratch("src");
    write_oci_layout(&src, &real_oci_image(1), "v1");
    let out = t.run(
        "skopeo",
        &strings(&[
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("{robot}:{token}"),
            &format!("oci:{}:v1", src.display()),
            &t.docker("alice/ro:v1"),
        ]),
        None,
    );
    assert!(!out.status.success(), "a read-only robot pushed");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    // The registry answers 403 DENIED (not a re-challenge) once the account lacks the permission.
    assert!(err.contains("denied"), "{err}");
    alice
        .fetch_manifest(Method::GET, "alice/ro", "v1")
        .await
        .expect_status(404, "nothing was tagged");
}
