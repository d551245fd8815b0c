//! A trigger config and a push from the input: `check` never panics, and for a config it accepts
//! `decide` gives either a skip (webhooks only) or sorted, distinct, valid tags. Patterns of any
//! length reach `check`, so its 1 KiB cap and compile size limits are exercised too.
#![no_main]

mod common;

use arbitrary::Arbitrary;
use common::TAG;
use libfuzzer_sys::fuzz_target;
use triggers::metadata::{CommitInfo, Metadata};
use triggers::plan::{self, Decision, TriggerConfig};

#[derive(Arbitrary, Debug)]
struct Input {
    dockerfile_path: String,
    context: String,
    branchtag_regex: Option<String>,
    default_tag_from_ref: bool,
    latest_for_default_branch: bool,
    tag_templates: Vec<String>,
    commit: String,
    git_ref: Option<String>,
    default_branch: Option<String>,
    message: Option<String>,
    manual: bool,
}

fuzz_target!(|input: Input| {
    let config = TriggerConfig {
        build_source: "lanternworks/kiln".into(),
        dockerfile_path: input.dockerfile_path,
        context: input.context,
        branchtag_regex: input.branchtag_regex,
        default_tag_from_ref: input.default_tag_from_ref,
        latest_for_default_branch: input.latest_for_default_branch,
        tag_templates: input.tag_templates,
    };
    let Ok(checked) = plan::check(&config) else {
        return;
    };
    let metadata = Metadata {
        commit: input.commit,
        git_url: "git@github.com:lanternworks/kiln.git".into(),
        git_ref: input.git_ref,
        default_branch: input.default_branch,
        commit_info: input.message.map(|message| CommitInfo {
            message,
            ..CommitInfo::default()
        }),
    };
    match plan::decide(&checked, &metadata, input.manual) {
        Decision::Skip(why) => assert!(!input.manual, "a manual start skipped: {why}"),
        Decision::Build { tags } => {
            assert!(
                tags.windows(2).all(|w| w[0] < w[1]),
                "sorted and distinct: {tags:?}"
            );
            for tag in &tags {
                assert!(TAG.is_match(tag), "{tag:?}");
            }
        }
    }
});
