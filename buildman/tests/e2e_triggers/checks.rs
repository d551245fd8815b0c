//! The checks of `e2e_triggers.rs`: what the registry holds after a trigger's build (tags,
//! digests and the image's content, through skopeo and podman) and what the webhook receiver got
//! for each build event.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::common::quarry::{PASSWORD, Quarry, messages};
use super::common::receiver::{Received, Receiver};
use super::common::sources;
use super::common::sshd::run;
use super::{BUILD_DEADLINE, EVENTS, NOTIFY_DEADLINE, REPO};

pub(super) fn skopeo_json(q: &Quarry, args: &[&str], reference: &str) -> Value {
    let out = run(Command::new("skopeo")
        .args(args)
        .args(["--tls-verify=false", "--creds"])
        .arg(format!("admin:{PASSWORD}"))
        .arg(format!("docker://{}/{reference}", q.registry())));
    serde_json::from_str(&out).unwrap()
}

pub(super) fn tags_in_registry(q: &Quarry) -> BTreeSet<String> {
    skopeo_json(q, &["list-tags"], REPO)["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

pub(super) fn digest_of(q: &Quarry, tag: &str) -> String {
    skopeo_json(q, &["inspect"], &format!("{REPO}:{tag}"))["Digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub(super) fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

pub(super) fn str_set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

/// Wait for the build, check it completed with `tags` and that `hello.txt` in the image tagged
/// `tag` says `hello`; returns its manifest digest.
pub(super) async fn assert_built(
    q: &Quarry,
    build: &str,
    tags: &BTreeSet<String>,
    tag: &str,
    hello: &str,
) -> String {
    let view = q.wait_build(REPO, build, BUILD_DEADLINE).await;
    let logs = q.logs(REPO, build).await;
    assert_eq!(view["phase"], "complete", "{view}\n{}", messages(&logs));
    assert_eq!(&str_set(&view["tags"]), tags, "{view}");
    // The RUN step printed the file the clone at the pushed commit brought in.
    let text = messages(&logs);
    assert!(text.contains(hello.trim()), "RUN output missing:\n{text}");
    let digest = view["manifest_digests"][0].as_str().unwrap().to_owned();
    assert_eq!(
        digest_of(q, tag),
        digest,
        "{REPO}:{tag} is not build {build}"
    );
    let image = format!("{}/{REPO}:{tag}", q.registry());
    let got = sources::file_in_image(&image, "hello.txt", q.root.path());
    assert_eq!(got.as_deref(), Some(hello), "hello.txt in {image}");
    digest
}

/// Check the one delivery of each event for `build` (waiting for them) and return them by event.
pub(super) async fn assert_notified(
    rx: &Receiver,
    build: &str,
    expect: &Expected<'_>,
) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    for event in EVENTS {
        let path = format!("/{event}");
        let end = std::time::Instant::now() + NOTIFY_DEADLINE;
        let of_build = |all: Vec<Received>| -> Vec<Value> {
            all.iter()
                .map(Received::json)
                .filter(|j| j["build_id"] == build)
                .collect()
        };
        while of_build(rx.at(&path)).is_empty() {
            assert!(
                std::time::Instant::now() < end,
                "no {event} for {build} within {NOTIFY_DEADLINE:?}; got {:?}",
                rx.all().iter().map(|r| r.path.clone()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let got = rx.at(&path);
        for r in &got {
            assert_eq!(r.method, "POST");
            let ctype = r.header("content-type").unwrap_or_default();
            assert!(ctype.starts_with("application/json"), "{ctype}");
        }
        let mut all = of_build(got);
        assert_eq!(all.len(), 1, "{event} for {build} sent {} times", all.len());
        let p = all.remove(0);
        expect.check(event, &p);
        out.push((event, p));
    }
    out
}

/// The fields every build notification of one build must carry.
pub(super) struct Expected<'a> {
    pub(super) q: &'a Quarry,
    pub(super) build: &'a str,
    pub(super) tags: &'a BTreeSet<String>,
    pub(super) trigger_id: &'a str,
    pub(super) kind: &'a str,
    pub(super) commit: &'a str,
    pub(super) digest: &'a str,
}

impl Expected<'_> {
    fn check(&self, event: &str, p: &Value) {
        let ctx = format!("{event}: {p}");
        assert_eq!(p["repository"], REPO, "{ctx}");
        assert_eq!(p["namespace"], "acme", "{ctx}");
        assert_eq!(p["name"], "app", "{ctx}");
        assert_eq!(
            p["docker_url"],
            format!("{}/{REPO}", self.q.registry()),
            "{ctx}"
        );
        let home = p["homepage"].as_str().unwrap_or_default();
        assert!(
            home.starts_with(&format!("{}/repository/{REPO}", self.q.base())),
            "{ctx}"
        );
        assert_eq!(p["build_id"], self.build, "{ctx}");
        assert_eq!(&str_set(&p["docker_tags"]), self.tags, "{ctx}");
        assert_eq!(p["trigger_kind"], self.kind, "{ctx}");
        assert_eq!(p["trigger_id"], self.trigger_id, "{ctx}");
        assert_eq!(p["trigger_metadata"]["commit"], self.commit, "{ctx}");
        assert_eq!(p["trigger_metadata"]["ref"], "refs/heads/main", "{ctx}");
        if event != "build_queued" {
            assert_eq!(p["build_name"], self.commit[..7], "{ctx}");
        }
        if event == "build_success" {
            // Quay's form is `<docker_url>@<digest>` (one per pushed tag); every entry must name
            // the manifest the registry holds.
            let digests = str_set(&p["manifest_digests"]);
            let pinned = format!("{}/{REPO}@{}", self.q.registry(), self.digest);
            assert!(!digests.is_empty(), "{ctx}");
            assert!(
                digests.iter().all(|d| *d == pinned || d == self.digest),
                "{ctx}"
            );
        }
    }
}

pub(super) fn dockerfile(q: &Quarry) -> String {
    format!(
        "FROM {}/acme/base:latest\nCOPY hello.txt /hello.txt\nRUN cat /hello.txt\n",
        q.registry()
    )
}
