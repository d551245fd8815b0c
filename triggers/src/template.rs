//! Tag templates such as `${commit_info.short_sha}` or `v-${parsed_ref.tag}` (Quay's
//! `tag_templates`). Quay renders them with a JSONPath library at build time, where a template
//! naming an object (`${commit_info.author}`) crashes the trigger; here every variable is checked
//! against the metadata's fields when the trigger is configured ([`TagTemplate::parse`]), and
//! rendering is total: a field a push does not carry makes the template yield no tag, as in Quay.

use serde_json::{Map, Value};

use crate::metadata::short_sha;
use crate::refs::ParsedRef;

/// Every field a template may name: the trigger metadata's scalar fields plus the two Quay adds
/// for templates (`commit_info.short_sha`, `parsed_ref.*`).
pub const FIELDS: &[&str] = &[
    "commit",
    "ref",
    "default_branch",
    "git_url",
    "commit_info.url",
    "commit_info.message",
    "commit_info.date",
    "commit_info.short_sha",
    "commit_info.author.username",
    "commit_info.author.url",
    "commit_info.author.avatar_url",
    "commit_info.committer.username",
    "commit_info.committer.url",
    "commit_info.committer.avatar_url",
    "parsed_ref.branch",
    "parsed_ref.tag",
    "parsed_ref.remote",
];

/// How much of a template (or variable) an error quotes, in characters.
const QUOTED_CHARS: usize = 80;

/// `text` cut to [`QUOTED_CHARS`] characters, with `...` when cut: errors quote user input, and a
/// long template must not make a long message.
pub(crate) fn quoted(text: &str) -> String {
    match text.char_indices().nth(QUOTED_CHARS) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

/// Why a template cannot be used; each names the template and what to write instead.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `${` without its `}`.
    #[error("tag template {template:?}: `${{` at byte {at} is not closed by `}}`")]
    Unclosed {
        /// The template (its first 80 characters).
        template: String,
        /// Where the `${` starts.
        at: usize,
    },
    /// A variable that names no field, or an object (`commit_info.author`).
    #[error("tag template {template:?}: {variable:?} is {problem}; use one of: {}", FIELDS.join(", "))]
    Field {
        /// The template (its first 80 characters).
        template: String,
        /// The variable as written (its first 80 characters).
        variable: String,
        /// "an object" or "not a field".
        problem: &'static str,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(&'static str),
}

/// A checked tag template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagTemplate {
    parts: Vec<Part>,
}

impl TagTemplate {
    /// Parse and check `template`: every `${...}` must name one of [`FIELDS`].
    pub fn parse(template: &str) -> Result<TagTemplate, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = template;
        let mut offset = 0;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| TemplateError::Unclosed {
                template: quoted(template),
                at: offset + start,
            })?;
            let variable = after[..end].trim();
            let field = FIELDS.iter().find(|f| **f == variable).ok_or_else(|| {
                let object = FIELDS
                    .iter()
                    .any(|f| f.starts_with(variable) && f[variable.len()..].starts_with('.'));
                TemplateError::Field {
                    template: quoted(template),
                    variable: quoted(variable),
                    problem: if object && !variable.is_empty() {
                        "an object, not a value"
                    } else {
                        "not a field of the trigger metadata"
                    },
                }
            })?;
            parts.push(Part::Field(field));
            let consumed = start + 2 + end + 1;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(TagTemplate { parts })
    }

    /// Render against `context` (see [`context`]); `None` when a named field is missing or not a
    /// string or number (Quay: the template yields no tag). The result is not yet escaped.
    pub fn render(&self, context: &Value) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(path) => {
                    let value = path.split('.').try_fold(context, |v, k| v.get(k))?;
                    match value {
                        Value::String(s) => out.push_str(s),
                        Value::Number(n) => out.push_str(&n.to_string()),
                        _ => return None,
                    }
                }
            }
        }
        Some(out)
    }
}

/// The metadata templates render against: `metadata` plus `commit_info.short_sha` (the first 7
/// characters of `commit`) and `parsed_ref.branch|tag|remote` from `ref`.
pub fn context(metadata: &Value) -> Value {
    let mut ctx = metadata.clone();
    let Some(obj) = ctx.as_object_mut() else {
        return ctx;
    };
    if let Some(commit) = obj.get("commit").and_then(Value::as_str) {
        let short = short_sha(commit);
        let info = obj
            .entry("commit_info")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(info) = info.as_object_mut() {
            info.insert("short_sha".into(), Value::String(short));
        }
    }
    if let Some(parsed) = obj
        .get("ref")
        .and_then(Value::as_str)
        .and_then(ParsedRef::parse)
    {
        let mut map = Map::new();
        map.insert(parsed.kind.field().into(), Value::String(parsed.name));
        obj.insert("parsed_ref".into(), Value::Object(map));
    }
    ctx
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn meta() -> Value {
        json!({
            "commit": "1c002dd4b536e7479fe34593e72e6c6c1819e53b",
            "ref": "refs/heads/feature/x",
            "default_branch": "main",
            "git_url": "git@example.com:acme/app.git",
            "commit_info": {
                "url": "https://example.com/c/1c002dd",
                "message": "add a thing",
                "date": "2026-11-27T10:00:00-05:00",
                "author": {"username": "jdoe", "url": "https://example.com/jdoe"}
            }
        })
    }

    fn render(t: &str, m: &Value) -> Option<String> {
        TagTemplate::parse(t).unwrap().render(&context(m))
    }

    #[test]
    fn fields_text_and_the_added_fields_render() {
        let m = meta();
        assert_eq!(
            render("${commit_info.short_sha}", &m).as_deref(),
            Some("1c002dd")
        );
        assert_eq!(
            render("${parsed_ref.branch}-${commit_info.author.username}", &m).as_deref(),
            Some("feature/x-jdoe")
        );
        assert_eq!(render("build-${ commit }", &m).unwrap().len(), 46);
        assert_eq!(render("static", &m).as_deref(), Some("static"));
        assert_eq!(
            render("${commit_info.date}", &m).as_deref(),
            Some("2026-11-27T10:00:00-05:00")
        );
    }

    #[test]
    fn a_field_the_push_lacks_yields_no_tag() {
        let m = meta();
        assert_eq!(
            render("${parsed_ref.tag}", &m),
            None,
            "a branch push has no tag"
        );
        assert_eq!(render("v-${commit_info.committer.username}", &m), None);
        let mut no_ref = meta();
        no_ref.as_object_mut().unwrap().remove("ref");
        assert_eq!(render("${parsed_ref.branch}", &no_ref), None);
        assert_eq!(
            render("${commit_info.short_sha}", &no_ref).as_deref(),
            Some("1c002dd")
        );
    }

    #[test]
    fn objects_unknown_fields_and_unclosed_braces_are_configuration_errors() {
        let e = TagTemplate::parse("${commit_info.author}").unwrap_err();
        assert!(
            matches!(&e, TemplateError::Field { problem, .. } if problem.starts_with("an object")),
            "{e}"
        );
        assert!(e.to_string().contains("commit_info.author.username"), "{e}");
        let e = TagTemplate::parse("x-${commit_info.nope}").unwrap_err();
        assert!(e.to_string().contains("not a field"), "{e}");
        let e = TagTemplate::parse("${}").unwrap_err();
        assert!(e.to_string().contains("not a field"), "{e}");
        assert_eq!(
            TagTemplate::parse("ab${commit").unwrap_err(),
            TemplateError::Unclosed {
                template: "ab${commit".into(),
                at: 2
            }
        );
    }

    #[test]
    fn errors_quote_at_most_80_characters() {
        let long = format!("{}${{nope}}", "x".repeat(300));
        let TemplateError::Field { template, .. } = TagTemplate::parse(&long).unwrap_err() else {
            panic!("not a field error");
        };
        assert_eq!(template, format!("{}...", "x".repeat(80)));
        let e = TagTemplate::parse(&format!("${{{}", "y".repeat(500))).unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
        assert_eq!(quoted("ünï"), "ünï");
    }

    #[test]
    fn a_non_object_metadata_renders_nothing() {
        let t = TagTemplate::parse("${commit}").unwrap();
        assert_eq!(t.render(&context(&json!("text"))), None);
        assert_eq!(t.render(&context(&json!({"commit": {"id": 1}}))), None);
    }
}
