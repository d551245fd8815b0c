//! A trigger's build options ([`TriggerConfig`], Quay's config keys), checked once when the
//! trigger is activated ([`check`]), and what a push to it does ([`decide`]): build with which
//! tags, or skip and why.

use std::collections::BTreeSet;

use serde::{Deserialize, Deserializer, Serialize};

use crate::filter::{BranchTagFilter, FilterError, skip_marker};
use crate::metadata::Metadata;
use crate::tags::{TagOptions, escape_tag, ref_tags, short_sha_tag};
use crate::template::{self, TagTemplate, TemplateError, quoted};

/// Most `tag_templates` a trigger may have.
pub const MAX_TEMPLATES: usize = 32;
/// Longest tag template, in bytes (a tag is at most 127 characters; templates name fields).
pub const MAX_TEMPLATE_LEN: usize = 256;

/// Quay's trigger config keys, with Quay's names and defaults. Unknown keys (credentials and the
/// like, which buildman keeps in the same JSON) are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerConfig {
    /// `owner/repo` for GitHub, GitLab and Bitbucket; the clone URL for custom-git.
    pub build_source: String,
    /// The Dockerfile, from the repository root (default `/Dockerfile`).
    #[serde(
        default = "default_dockerfile_path",
        deserialize_with = "dockerfile_or_default"
    )]
    pub dockerfile_path: String,
    /// The build context directory, from the repository root (default `/`).
    #[serde(default = "default_context", deserialize_with = "context_or_root")]
    pub context: String,
    /// Only pushes whose `heads/<branch>` or `tags/<tag>` it matches in full build (as Python's
    /// `re.match` does: the first match found must cover the whole subject).
    #[serde(default)]
    pub branchtag_regex: Option<String>,
    /// Tag with the branch or tag name (default true).
    #[serde(default = "yes", deserialize_with = "yes_unless_false")]
    pub default_tag_from_ref: bool,
    /// Tag `latest` for a push to the default branch (default true).
    #[serde(default = "yes", deserialize_with = "yes_unless_false")]
    pub latest_for_default_branch: bool,
    /// Tag templates such as `${commit_info.short_sha}`.
    #[serde(default, deserialize_with = "templates")]
    pub tag_templates: Vec<String>,
}

fn default_dockerfile_path() -> String {
    "/Dockerfile".to_owned()
}

fn default_context() -> String {
    "/".to_owned()
}

fn yes() -> bool {
    true
}

// `null` means "not given" (Quay's UI sends nulls for keys left empty): the key's default.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    de: D,
    default: fn() -> T,
) -> Result<T, D::Error> {
    Option::<T>::deserialize(de).map(|v| v.unwrap_or_else(default))
}

fn dockerfile_or_default<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    nullable(de, default_dockerfile_path)
}

fn context_or_root<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    nullable(de, default_context)
}

fn yes_unless_false<'de, D: Deserializer<'de>>(de: D) -> Result<bool, D::Error> {
    nullable(de, yes)
}

fn templates<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    nullable(de, Vec::new)
}

/// A config [`check`] refused; the message names the key and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `branchtag_regex` does not compile.
    #[error(transparent)]
    Regex(#[from] FilterError),
    /// `branchtag_regex` is empty, which would match no push at all.
    #[error(
        "branchtag_regex is empty, which matches no push: leave it out to build every push, or give a pattern such as heads/main"
    )]
    EmptyRegex,
    /// More than [`MAX_TEMPLATES`] tag templates.
    #[error(
        "tag_templates has {count} templates, more than the {MAX_TEMPLATES} allowed: keep the ones you need"
    )]
    TooManyTemplates {
        /// How many were given.
        count: usize,
    },
    /// A tag template longer than [`MAX_TEMPLATE_LEN`] bytes.
    #[error(
        "tag_templates[{index}] is {len} bytes long, more than the {MAX_TEMPLATE_LEN} allowed: {start:?}"
    )]
    TemplateTooLong {
        /// Its position in `tag_templates`.
        index: usize,
        /// Its length in bytes.
        len: usize,
        /// Its first 80 characters.
        start: String,
    },
    /// A tag template names an object, no field, or leaves `${` open.
    #[error("tag_templates[{index}] is not usable: {error}")]
    Template {
        /// Its position in `tag_templates`.
        index: usize,
        /// What is wrong (part of this message, so not a `source`).
        error: TemplateError,
    },
    /// `dockerfile_path` or `context` is empty, has a `..` or control character, or (for the
    /// Dockerfile) names a directory.
    #[error("{key} {value:?} is not usable: {problem}")]
    Path {
        /// `dockerfile_path` or `context`.
        key: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong and what to give instead.
        problem: &'static str,
    },
    /// The Dockerfile is not inside the context directory.
    #[error(
        "dockerfile_path {dockerfile_path:?} is outside the context {context:?}: put the Dockerfile inside the context directory or widen the context"
    )]
    Outside {
        /// The normalised `dockerfile_path`.
        dockerfile_path: String,
        /// The normalised `context`.
        context: String,
    },
}

/// A config whose regex compiled and whose templates parsed, with paths normalised (`/a/b`).
#[derive(Clone, Debug)]
pub struct CheckedConfig {
    config: TriggerConfig,
    filter: Option<BranchTagFilter>,
    templates: Vec<TagTemplate>,
}

impl CheckedConfig {
    /// The config, with `dockerfile_path` and `context` normalised.
    pub fn config(&self) -> &TriggerConfig {
        &self.config
    }
}

/// Normalise a repository path to `/a/b`: leading `/`, no empty or `.` components, no trailing
/// `/`. Empty, `..` and control characters are refused.
fn clean_path(key: &'static str, value: &str) -> Result<String, ConfigError> {
    let bad = |problem| ConfigError::Path {
        key,
        value: value.to_owned(),
        problem,
    };
    if value.trim().is_empty() {
        return Err(bad("it is empty; give a path from the repository root"));
    }
    if value.chars().any(char::is_control) {
        return Err(bad("it contains a control character"));
    }
    let mut parts = Vec::new();
    for part in value.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(bad("it contains `..`; give a path inside the repository")),
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Check `config` as Quarry does when a trigger is activated (Quay checks none of this and fails
/// at build time, or silently builds every push for an invalid regex).
pub fn check(config: &TriggerConfig) -> Result<CheckedConfig, ConfigError> {
    let filter = match config.branchtag_regex.as_deref() {
        None => None,
        Some("") => return Err(ConfigError::EmptyRegex),
        Some(pattern) => Some(BranchTagFilter::new(pattern)?),
    };
    if config.tag_templates.len() > MAX_TEMPLATES {
        return Err(ConfigError::TooManyTemplates {
            count: config.tag_templates.len(),
        });
    }
    let templates = config
        .tag_templates
        .iter()
        .enumerate()
        .map(|(index, t)| {
            if t.len() > MAX_TEMPLATE_LEN {
                return Err(ConfigError::TemplateTooLong {
                    index,
                    len: t.len(),
                    start: quoted(t),
                });
            }
            TagTemplate::parse(t).map_err(|error| ConfigError::Template { index, error })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let dockerfile_path = clean_path("dockerfile_path", &config.dockerfile_path)?;
    if dockerfile_path == "/" || config.dockerfile_path.trim_end().ends_with('/') {
        return Err(ConfigError::Path {
            key: "dockerfile_path",
            value: config.dockerfile_path.clone(),
            problem: "it names a directory; give the Dockerfile's path such as /Dockerfile",
        });
    }
    let context = clean_path("context", &config.context)?;
    let inside = context == "/"
        || dockerfile_path
            .strip_prefix(&context)
            .is_some_and(|rest| rest.starts_with('/'));
    if !inside {
        return Err(ConfigError::Outside {
            dockerfile_path,
            context,
        });
    }
    Ok(CheckedConfig {
        config: TriggerConfig {
            dockerfile_path,
            context,
            ..config.clone()
        },
        filter,
        templates,
    })
}

/// What a push (or a manual start) does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Build and push these tags: sorted, deduplicated, escaped, never empty.
    Build {
        /// The tags.
        tags: Vec<String>,
    },
    /// Build nothing, and why (for the webhook's answer and the log).
    Skip(String),
}

/// What `metadata` does under `config`. `manual` is a manual start: the ref filter and the skip
/// markers apply to webhooks only, as in Quay. Tags: every template that renders, plus the
/// ref's tags ([`ref_tags`]), else the short commit; all escaped.
pub fn decide(config: &CheckedConfig, metadata: &Metadata, manual: bool) -> Decision {
    if !manual {
        if let Some(filter) = &config.filter
            && !filter.allows(metadata.git_ref.as_deref())
        {
            let git_ref = metadata.git_ref.as_deref();
            return Decision::Skip(format!(
                "{} does not match branchtag_regex {:?}",
                git_ref.unwrap_or("a push without a ref"),
                config.config.branchtag_regex.as_deref().unwrap_or_default()
            ));
        }
        let message = metadata.commit_info.as_ref().map(|c| c.message.as_str());
        if let Some(marker) = message.and_then(skip_marker) {
            return Decision::Skip(format!("commit message contains {marker}"));
        }
    }
    let mut tags = BTreeSet::new();
    if !config.templates.is_empty() {
        // Serialising the metadata (strings and options only) cannot fail; Null renders nothing.
        let context = template::context(&serde_json::to_value(metadata).unwrap_or_default());
        tags.extend(
            config
                .templates
                .iter()
                .filter_map(|t| t.render(&context))
                .map(|raw| escape_tag(&raw)),
        );
    }
    let options = TagOptions {
        default_tag_from_ref: config.config.default_tag_from_ref,
        latest_for_default_branch: config.config.latest_for_default_branch,
    };
    tags.extend(ref_tags(
        metadata.git_ref.as_deref(),
        metadata.default_branch.as_deref(),
        options,
    ));
    if tags.is_empty() {
        tags.insert(short_sha_tag(&metadata.commit));
    }
    Decision::Build {
        tags: tags.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::metadata::CommitInfo;

    const SHA: &str = "1c002dd4b536e7479fe34593e72e6c6c1819e53b";

    fn config(v: serde_json::Value) -> TriggerConfig {
        serde_json::from_value(v).unwrap()
    }

    fn checked(v: serde_json::Value) -> CheckedConfig {
        check(&config(v)).unwrap()
    }

    fn push(git_ref: Option<&str>, message: &str) -> Metadata {
        Metadata {
            commit: SHA.into(),
            git_url: "git@example.com:acme/app.git".into(),
            git_ref: git_ref.map(Into::into),
            default_branch: Some("main".into()),
            commit_info: Some(CommitInfo {
                message: message.into(),
                ..CommitInfo::default()
            }),
        }
    }

    fn tags(d: Decision) -> Vec<String> {
        match d {
            Decision::Build { tags } => tags,
            Decision::Skip(why) => panic!("skipped: {why}"),
        }
    }

    #[test]
    fn quay_defaults_nulls_and_unknown_keys() {
        let c = config(
            json!({"build_source": "acme/app", "credentials": [{"name": "x"}],
                              "tag_templates": null, "context": null}),
        );
        assert_eq!(
            c,
            TriggerConfig {
                build_source: "acme/app".into(),
                dockerfile_path: "/Dockerfile".into(),
                context: "/".into(),
                branchtag_regex: None,
                default_tag_from_ref: true,
                latest_for_default_branch: true,
                tag_templates: vec![],
            }
        );
        let e = serde_json::from_value::<TriggerConfig>(json!({})).unwrap_err();
        assert!(e.to_string().contains("build_source"), "{e}");
    }

    #[test]
    fn paths_are_normalised_and_must_nest() {
        let c = checked(
            json!({"build_source": "s", "dockerfile_path": "sub//./app.Dockerfile",
                               "context": "sub/"}),
        );
        assert_eq!(c.config().dockerfile_path, "/sub/app.Dockerfile");
        assert_eq!(c.config().context, "/sub");
        for (v, want) in [
            (
                json!({"dockerfile_path": "/Dockerfile", "context": "/sub"}),
                "dockerfile_path \"/Dockerfile\" is outside the context \"/sub\"",
            ),
            (
                json!({"dockerfile_path": "/subway/Dockerfile", "context": "/sub"}),
                "is outside the context",
            ),
            (
                json!({"dockerfile_path": "/a/../Dockerfile"}),
                "dockerfile_path \"/a/../Dockerfile\" is not usable: it contains `..`",
            ),
            (
                json!({"context": ""}),
                "context \"\" is not usable: it is empty",
            ),
            (json!({"dockerfile_path": "/sub/"}), "it names a directory"),
            (json!({"context": "a\nb"}), "control character"),
        ] {
            let mut v = v;
            v["build_source"] = json!("s");
            let e = check(&config(v)).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
    }

    #[test]
    fn regex_and_templates_are_checked_naming_the_key() {
        let e = check(&config(
            json!({"build_source": "s", "branchtag_regex": "heads/(x"}),
        ));
        assert!(
            e.unwrap_err()
                .to_string()
                .starts_with("branchtag_regex \"heads/(x\"")
        );
        let e = check(&config(json!({"build_source": "s", "branchtag_regex": ""})));
        assert!(matches!(e, Err(ConfigError::EmptyRegex)));
        let e = check(&config(json!({"build_source": "s",
            "tag_templates": ["ok-${commit}", "${commit_info.author}"]})))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("tag_templates[1] is not usable: tag template"),
            "{e}"
        );
        assert!(
            e.contains("commit_info.author.username"),
            "lists the valid fields: {e}"
        );
    }

    #[test]
    fn template_count_and_length_are_capped_with_clear_errors() {
        let many = vec!["${commit}".to_owned(); MAX_TEMPLATES + 1];
        let e = check(&config(json!({"build_source": "s", "tag_templates": many})))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "tag_templates has 33 templates, more than the 32 allowed: keep the ones you need"
        );
        let at_cap = vec!["${commit}".to_owned(); MAX_TEMPLATES];
        assert!(
            check(&config(
                json!({"build_source": "s", "tag_templates": at_cap})
            ))
            .is_ok()
        );
        let long = "v".repeat(MAX_TEMPLATE_LEN + 1);
        let e = check(&config(
            json!({"build_source": "s", "tag_templates": ["x", long]}),
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            format!(
                "tag_templates[1] is 257 bytes long, more than the 256 allowed: \"{}...\"",
                "v".repeat(80)
            )
        );
        let fits = "v".repeat(MAX_TEMPLATE_LEN);
        assert!(
            check(&config(
                json!({"build_source": "s", "tag_templates": [fits]})
            ))
            .is_ok()
        );
        let e = check(&config(
            json!({"build_source": "s", "branchtag_regex": "x".repeat(2000)}),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("branchtag_regex is 2000 bytes long"), "{e}");
    }

    #[test]
    fn webhooks_are_filtered_and_skipped_manual_starts_are_not() {
        let c = checked(json!({"build_source": "s", "branchtag_regex": "heads/main"}));
        let other = push(Some("refs/heads/dev"), "m");
        assert_eq!(
            decide(&c, &other, false),
            Decision::Skip("refs/heads/dev does not match branchtag_regex \"heads/main\"".into())
        );
        assert_eq!(tags(decide(&c, &other, true)), ["dev"]);
        let marked = push(Some("refs/heads/main"), "wip [build skip]");
        assert_eq!(
            decide(&c, &marked, false),
            Decision::Skip("commit message contains [build skip]".into())
        );
        assert_eq!(tags(decide(&c, &marked, true)), ["latest", "main"]);
        let no_ref = push(None, "m");
        assert!(matches!(decide(&c, &no_ref, false), Decision::Skip(_)));
    }

    #[test]
    fn tags_are_templates_plus_ref_tags_else_the_short_sha() {
        let c = checked(json!({"build_source": "s",
            "tag_templates": ["${commit_info.short_sha}", "v-${parsed_ref.tag}", "b/${parsed_ref.branch}"]}));
        assert_eq!(
            tags(decide(&c, &push(Some("refs/heads/main"), "m"), false)),
            ["1c002dd", "b_main", "latest", "main"]
        );
        let only_templates = checked(json!({"build_source": "s", "default_tag_from_ref": false,
            "latest_for_default_branch": false, "tag_templates": ["${parsed_ref.tag}"]}));
        assert_eq!(
            tags(decide(
                &only_templates,
                &push(Some("refs/tags/v1"), "m"),
                false
            )),
            ["v1"],
            "no short sha when a template gave a tag"
        );
        assert_eq!(
            tags(decide(
                &only_templates,
                &push(Some("refs/heads/x"), "m"),
                false
            )),
            ["1c002dd"],
            "the template yields nothing for a branch, so the short sha"
        );
        let plain = checked(json!({"build_source": "s"}));
        assert_eq!(tags(decide(&plain, &push(None, "m"), true)), ["1c002dd"]);
    }
}
