//! Scoped access tokens as buildman hands them to a build: `$token` + a token limited to one
//! repository with role write (push + pull, as Quay's build token), and a robot's read-capped pull
//! token. What the scope forbids is `403 DENIED`, so docker and podman print "denied".

use bytes::Bytes;
use reqwest::Method;

use crate::common::image::random_oci_image;
use crate::setup;

#[tokio::test]
async fn build_token_pushes_its_repository_only() {
    let (reg, alice) = setup();
    reg.admin(&["repo", "create", "alice/app"]);
    let other = random_oci_image(1, 50);
    alice.push_image("alice/other", "v1", &other).await;
    let token = reg.admin(&[
        "token",
        "create",
        "alice",
        "build:1:push",
        "--repo",
        "alice/app",
        "--role",
        "write",
        "--expires-in",
        "3600",
    ]);
    let build = reg.client("$token", token.trim());

    let img = random_oci_image(2, 100);
    build.push_image("alice/app", "latest", &img).await;
    let got = build
        .fetch_manifest(Method::GET, "alice/app", "latest")
        .await;
    got.expect_status(200, "the build token pulls what it pushed");
    assert_eq!(got.body, img.manifest);

    // Write is push + pull: no tag deletion, even though alice owns the repository.
    build
        .send(
            Method::DELETE,
            "/v2/alice/app/manifests/latest",
            &[],
            Bytes::new(),
        )
        .await
        .expect_error(403, "DENIED");
    // Nothing outside its repository: not another of alice's, not a new one in her namespace.
    build
        .fetch_manifest(Method::GET, "alice/other", "v1")
        .await
        .expect_error(403, "DENIED");
    for repo in ["alice/other", "alice/brand-new"] {
        build
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                Bytes::new(),
            )
            .await
            .expect_error(403, "DENIED");
    }
    // Nor the REST API's namespace administration.
    let r = build
        .raw()
        .get(build.url("/api/v1/user/robots"))
        .bearer_auth(token.trim())
        .send()
        .await
        .expect("GET robots");
    assert_eq!(r.status().as_u16(), 403);
    // alice herself still may delete.
    alice
        .send(
            Method::DELETE,
            "/v2/alice/app/manifests/latest",
            &[],
            Bytes::new(),
        )
        .await
        .expect_status(202, "the owner deletes the tag");
}

#[tokio::test]
async fn robot_pull_token_pulls_and_never_pushes() {
    let (reg, alice) = setup();
    reg.admin(&["repo", "create", "alice/base"]);
    let img = random_oci_image(1, 100);
    alice.push_image("alice/base", "v1", &img).await;
    let (robot, _robot_token) = reg.robot("alice", "puller");
    reg.admin(&[
        "permission",
        "set",
        "alice/base",
        "--robot",
        &robot,
        "--role",
        "write",
    ]);
    let token = reg.admin(&["token", "create", &robot, "build:1:pull", "--role", "read"]);
    let pull = reg.client(&robot, token.trim());
    let got = pull.fetch_manifest(Method::GET, "alice/base", "v1").await;
    got.expect_status(200, "the pull token pulls the base image");
    assert_eq!(
        pull.blob_bytes("alice/base", &img.layers[0].digest).await,
        img.layers[0].data
    );
    // The robot could push, its read-capped token cannot.
    pull.send(
        Method::POST,
        "/v2/alice/base/blobs/uploads/",
        &[],
        Bytes::new(),
    )
    .await
    .expect_error(403, "DENIED");
}

#[tokio::test]
async fn expired_token_is_refused_like_a_wrong_one() {
    let (reg, _alice) = setup();
    reg.admin(&["repo", "create", "alice/app"]);
    let token = reg.admin(&[
        "token",
        "create",
        "alice",
        "old",
        "--repo",
        "alice/app",
        "--expires-in",
        "0",
    ]);
    let realm = format!("http://{}/v2/auth", reg.host());
    let mut scopes = std::collections::BTreeMap::new();
    scopes.insert(
        "repository:alice/app".to_owned(),
        std::collections::BTreeSet::from(["pull".to_owned()]),
    );
    let r = reg
        .client("$token", token.trim())
        .token_request(&realm, &reg.host(), &scopes)
        .await;
    r.expect_error(401, "UNAUTHORIZED");
}
