//! Every recorded webhook under `fixtures/webhooks/<provider>/` with its `.headers` file: the
//! signature made with the fixture secret verifies (and fails for a changed body), the payload
//! parses to the expected push or skip, and the push gets the expected tags under Quay's default
//! trigger config. A fixture file that no table row names fails `every_fixture_is_in_the_table`.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module)]

mod common;

use std::collections::BTreeSet;
use std::fs;

use triggers::metadata::Push;
use triggers::plan::{self, Decision, TriggerConfig};
use triggers::webhook::{self, Headers, PayloadError, Service, SignatureError};

/// The secret the fixtures are signed with (fixtures/README.md).
const SECRET: &[u8] = b"quarry-fixture-secret-0001";
const CUSTOM_URL: &str = "ssh://git@git.example.net:2222/ops/lighthouse.git";

/// What a fixture must give.
enum Want {
    /// A push: commit, ref, git_url, default branch, author user name, tags (or the skip reason
    /// of the plan when the commit message carries a marker).
    Build {
        commit: &'static str,
        git_ref: &'static str,
        git_url: &'static str,
        default_branch: Option<&'static str>,
        author: Option<&'static str>,
        decision: Result<&'static [&'static str], &'static str>,
    },
    /// A skip with this reason.
    Skip(&'static str),
}

struct Row {
    file: &'static str,
    service: Service,
    build_source: &'static str,
    signed: bool,
    want: Want,
}

const fn build(
    commit: &'static str,
    git_ref: &'static str,
    git_url: &'static str,
    default_branch: Option<&'static str>,
    author: Option<&'static str>,
    tags: &'static [&'static str],
) -> Want {
    Want::Build {
        commit,
        git_ref,
        git_url,
        default_branch,
        author,
        decision: Ok(tags),
    }
}

const GH_URL: &str = "git@github.com:lanternworks/kiln.git";
const GL_URL: &str = "git@gitlab.example.org:harbourmasters/tidewater-api.git";
const BB_URL: &str = "git@bitbucket.org:saltmarsh/heron-tracker.git";
const GH: &str = "lanternworks/kiln";
const GL: &str = "harbourmasters/tidewater-api";
const BB: &str = "saltmarsh/heron-tracker";

fn table() -> Vec<Row> {
    use Service::*;
    let row = |file, service, build_source, signed, want| Row {
        file,
        service,
        build_source,
        signed,
        want,
    };
    vec![
        row(
            "github/push-branch",
            Github,
            GH,
            true,
            build(
                "8457785ada4ab6182c16fbac60586081edf51999",
                "refs/heads/main",
                GH_URL,
                Some("main"),
                Some("trihn"),
                &["latest", "main"],
            ),
        ),
        row(
            "github/push-branch-skip-marker",
            Github,
            GH,
            true,
            Want::Build {
                commit: "e125becb98d990ec5df6ec7b3460ce78b84c8f4d",
                git_ref: "refs/heads/feature/glaze-notes",
                git_url: GH_URL,
                default_branch: Some("main"),
                author: Some("adaokon"),
                decision: Err("commit message contains [skip build]"),
            },
        ),
        row(
            "github/push-tag",
            Github,
            "LanternWorks/Kiln",
            true,
            build(
                "8457785ada4ab6182c16fbac60586081edf51999",
                "refs/tags/v1.4.0",
                GH_URL,
                Some("main"),
                Some("trihn"),
                &["v1.4.0"],
            ),
        ),
        row(
            "github/delete-branch",
            Github,
            GH,
            true,
            Want::Skip("github push without a head commit (a deleted branch)"),
        ),
        row("github/ping", Github, GH, true, Want::Skip("github ping")),
        // GitHub's default content type: the same push as github/push-branch, form-encoded.
        row(
            "github/push-branch-form",
            Github,
            GH,
            true,
            build(
                "8457785ada4ab6182c16fbac60586081edf51999",
                "refs/heads/main",
                GH_URL,
                Some("main"),
                Some("trihn"),
                &["latest", "main"],
            ),
        ),
        row(
            "gitlab/push-branch",
            Gitlab,
            GL,
            true,
            build(
                "d2d75d0a629f330208a3dd1e65620783162dd415",
                "refs/heads/develop",
                GL_URL,
                Some("develop"),
                None,
                &["develop", "latest"],
            ),
        ),
        row(
            "gitlab/push-own-commit",
            Gitlab,
            GL,
            true,
            build(
                "c230131a59a1a699962d66f2e9ed4bab86ea812a",
                "refs/heads/fix/neap",
                GL_URL,
                Some("develop"),
                Some("praman"),
                &["fix_neap"],
            ),
        ),
        row(
            "gitlab/tag-push",
            Gitlab,
            GL,
            true,
            build(
                "d2d75d0a629f330208a3dd1e65620783162dd415",
                "refs/tags/v2.1.0",
                GL_URL,
                Some("develop"),
                None,
                &["v2.1.0"],
            ),
        ),
        row(
            "gitlab/delete-branch",
            Gitlab,
            GL,
            true,
            Want::Skip("gitlab push without a commit (a deleted branch or tag)"),
        ),
        row(
            "gitlab/empty-push",
            Gitlab,
            GL,
            true,
            Want::Skip("gitlab push without commits"),
        ),
        row(
            "gitlab/merge-request",
            Gitlab,
            GL,
            true,
            Want::Skip("gitlab merge_request event, not a push"),
        ),
        // Bitbucket's payload has no default branch, so no `latest` without an API call.
        row(
            "bitbucket/push-branch",
            Bitbucket,
            BB,
            true,
            build(
                "e629ab00c66939ef43f4d93fb71bd30200f14fc2",
                "refs/heads/main",
                BB_URL,
                None,
                Some("Wren Abernathy"),
                &["main"],
            ),
        ),
        row(
            "bitbucket/push-tag",
            Bitbucket,
            BB,
            true,
            build(
                "0633961195c27d9d2445e233f84cf07b07986fab",
                "refs/tags/census-2026.11",
                BB_URL,
                None,
                None,
                &["census-2026.11"],
            ),
        ),
        row(
            "bitbucket/delete-branch",
            Bitbucket,
            BB,
            true,
            Want::Skip("bitbucket push deleting a branch or tag (push.changes[-1].new is null)"),
        ),
        row(
            "bitbucket/empty-push",
            Bitbucket,
            BB,
            true,
            Want::Skip("bitbucket push without changes"),
        ),
        row(
            "bitbucket/pullrequest-created",
            Bitbucket,
            BB,
            true,
            Want::Skip("bitbucket pullrequest:created event, not a push"),
        ),
        row(
            "custom-git/push-branch",
            CustomGit,
            CUSTOM_URL,
            false,
            build(
                "5c503252816497ad0b133bcb20fc20290aec849a",
                "refs/heads/main",
                CUSTOM_URL,
                Some("main"),
                Some("keeper"),
                &["latest", "main"],
            ),
        ),
        row(
            "custom-git/push-branch-signed",
            CustomGit,
            CUSTOM_URL,
            true,
            build(
                "9b41e07c3d2a58f6e1b0c7d4a9e2f8b3c6d1a5e0",
                "refs/heads/night-shift",
                CUSTOM_URL,
                Some("main"),
                Some("tender"),
                &["night-shift"],
            ),
        ),
        row(
            "custom-git/delete-branch",
            CustomGit,
            CUSTOM_URL,
            false,
            Want::Skip(
                "custom git push deleting refs/heads/retired-beacon (the commit is all zeros)",
            ),
        ),
        row(
            "custom-git/push-tag-minimal",
            CustomGit,
            CUSTOM_URL,
            false,
            build(
                "a0e3c752d127",
                "refs/tags/v0.9",
                CUSTOM_URL,
                Some("main"),
                None,
                &["v0.9"],
            ),
        ),
    ]
}

/// `Name: value` lines as the provider sends them, minus the header named `without` if any.
fn headers_without(file: &str, without: &str) -> Headers {
    let text = fs::read_to_string(common::fixture(&format!("webhooks/{file}.headers"))).unwrap();
    Headers::new(
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("{file}: bad line {l:?}"));
                (k.trim().to_owned(), v.trim().to_owned())
            })
            .filter(|(k, _)| !k.eq_ignore_ascii_case(without)),
    )
}

fn headers(file: &str) -> Headers {
    headers_without(file, "")
}

/// The body: `<file>.form` for a form-encoded delivery, else `<file>.json`.
fn body(file: &str) -> Vec<u8> {
    let form = common::fixture(&format!("webhooks/{file}.form"));
    if form.exists() {
        return fs::read(form).unwrap();
    }
    fs::read(common::fixture(&format!("webhooks/{file}.json"))).unwrap()
}

#[test]
fn every_fixture_verifies_parses_and_plans_as_recorded() {
    let config = plan::check(&TriggerConfig {
        build_source: String::new(),
        dockerfile_path: "/Dockerfile".into(),
        context: "/".into(),
        branchtag_regex: None,
        default_tag_from_ref: true,
        latest_for_default_branch: true,
        tag_templates: vec![],
    })
    .unwrap();
    for row in table() {
        let (file, h, b) = (row.file, headers(row.file), body(row.file));
        let verified = webhook::verify(row.service, &h, &b, SECRET);
        if row.signed {
            assert_eq!(verified, Ok(()), "{file}");
            let mut tampered = b.clone();
            tampered.push(b' ');
            let after_tampering = webhook::verify(row.service, &h, &tampered, SECRET);
            if row.service == Service::Gitlab {
                // GitLab sends the secret itself, not a signature: the body plays no part.
                assert_eq!(after_tampering, Ok(()), "{file}");
            } else {
                assert!(
                    matches!(after_tampering, Err(SignatureError::Mismatch { .. })),
                    "{file}: a changed body must not verify"
                );
            }
            assert!(webhook::verify(row.service, &h, &b, b"not the fixture secret").is_err());
            if row.service == Service::Github {
                // Every GitHub fixture also carries the SHA-1 X-Hub-Signature; it is ignored.
                assert!(
                    h.get("X-Hub-Signature").unwrap().starts_with("sha1="),
                    "{file}"
                );
                let sha1_only = headers_without(file, "X-Hub-Signature-256");
                assert_eq!(
                    webhook::verify(row.service, &sha1_only, &b, SECRET),
                    Err(SignatureError::Missing {
                        header: "X-Hub-Signature-256"
                    }),
                    "{file}"
                );
            }
        } else {
            assert!(
                matches!(verified, Err(SignatureError::Missing { .. })),
                "{file}"
            );
        }
        let push = webhook::parse(row.service, &h, &b, row.build_source)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        match (row.want, push) {
            (Want::Skip(want), Push::Skip(why)) => assert_eq!(why, want, "{file}"),
            (want @ Want::Build { .. }, Push::Build(m)) => {
                let Want::Build {
                    commit,
                    git_ref,
                    git_url,
                    default_branch,
                    author,
                    decision,
                } = want
                else {
                    unreachable!()
                };
                assert_eq!(m.commit, commit, "{file}");
                assert_eq!(m.git_ref.as_deref(), Some(git_ref), "{file}");
                assert_eq!(m.git_url, git_url, "{file}");
                assert_eq!(m.default_branch.as_deref(), default_branch, "{file}");
                let got_author = m.commit_info.as_ref().and_then(|c| c.author.as_ref());
                assert_eq!(got_author.map(|a| a.username.as_str()), author, "{file}");
                let got = plan::decide(&config, &m, false);
                match decision {
                    Ok(tags) => assert_eq!(
                        got,
                        Decision::Build {
                            tags: tags.iter().map(|t| t.to_string()).collect()
                        },
                        "{file}"
                    ),
                    Err(why) => assert_eq!(got, Decision::Skip(why.into()), "{file}"),
                }
                // The same push for another repository is refused (custom-git has no such
                // check: its build_source is the clone URL).
                if row.service != Service::CustomGit {
                    let e = webhook::parse(row.service, &h, &b, "someone/else").unwrap_err();
                    assert!(
                        matches!(e, PayloadError::WrongRepository { .. }),
                        "{file}: {e}"
                    );
                }
            }
            (Want::Skip(want), Push::Build(_)) => panic!("{file}: built, want skip {want:?}"),
            (Want::Build { .. }, Push::Skip(why)) => panic!("{file}: skipped: {why}"),
        }
    }
}

#[test]
fn provider_bodies_sent_to_a_custom_git_trigger_build_from_the_triggers_url() {
    for file in [
        "github/push-branch",
        "gitlab/push-branch",
        "bitbucket/push-branch",
    ] {
        let Push::Build(m) =
            webhook::parse(Service::CustomGit, &headers(file), &body(file), CUSTOM_URL).unwrap()
        else {
            panic!("{file}: skipped");
        };
        assert_eq!(m.git_url, CUSTOM_URL, "{file}");
    }
}

#[test]
fn every_fixture_is_in_the_table() {
    let dir = common::fixture("webhooks");
    let mut on_disk = BTreeSet::new();
    for provider in fs::read_dir(&dir).unwrap() {
        let provider = provider.unwrap();
        let name = provider.file_name().into_string().unwrap();
        name.parse::<Service>()
            .unwrap_or_else(|e| panic!("fixtures/webhooks/{name}: folder is not a service: {e}"));
        for f in fs::read_dir(provider.path()).unwrap() {
            let f = f.unwrap().file_name().into_string().unwrap();
            let (stem, ext) = f.rsplit_once('.').unwrap();
            assert!(
                ["json", "form", "headers"].contains(&ext),
                "{name}/{f}: unexpected file"
            );
            // A body is .json or .form; both count as the body.
            let ext = if ext == "headers" { "headers" } else { "body" };
            on_disk.insert((format!("{name}/{stem}"), ext.to_owned()));
        }
    }
    let rows: BTreeSet<String> = table().iter().map(|r| r.file.to_owned()).collect();
    let files: BTreeSet<String> = on_disk.iter().map(|(s, _)| s.clone()).collect();
    assert_eq!(files, rows, "fixture files and table rows differ");
    for stem in &rows {
        for ext in ["body", "headers"] {
            assert!(
                on_disk.contains(&(stem.clone(), ext.to_owned())),
                "{stem}.{ext} is missing"
            );
        }
    }
    let readme = fs::read_to_string(common::fixture("README.md")).unwrap();
    for stem in &rows {
        assert!(
            readme.contains(&format!("`webhooks/{stem}`")),
            "{stem} has no README row"
        );
    }
}
