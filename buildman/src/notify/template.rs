//! The webhook `template` (Quay's JSONTemplate): a JSON document whose strings may hold
//! `${path}` references into the event data, e.g. `{"text": "built ${build_name}",
//! "tags": "${docker_tags}"}`. A string that is exactly one reference takes the referenced value
//! as it is (a list stays a list); references inside longer strings are replaced by the value's
//! text. A path is dotted field names with optional `[n]` indexes, with or without a leading
//! `$.`; a path the event lacks gives `null` (an empty string inside text), because optional
//! fields such as `trigger_metadata.ref` are missing from some events.
//!
//! Hand-written: the JSONPath crates implement the full language (filters, recursion), of which
//! Quay's templates use only field paths, and parse with different edge-case semantics.

use serde_json::Value;

/// Why a template cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template is not JSON.
    #[error("template is not valid JSON")]
    Json(#[source] serde_json::Error),
    /// A `${` is not closed or a path is malformed.
    #[error("template reference {reference:?} is invalid: expected ${{field.sub[0]}}")]
    Reference {
        /// The reference text.
        reference: String,
    },
}

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Field(String),
    Index(usize),
}

fn parse_path(path: &str) -> Option<Vec<Step>> {
    let path = path.trim();
    let path = path
        .strip_prefix("$.")
        .or_else(|| path.strip_prefix('$'))
        .unwrap_or(path);
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (field, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if field.is_empty() && steps.is_empty() && rest.is_empty() {
            return None;
        }
        if !field.is_empty() {
            steps.push(Step::Field(field.to_owned()));
        }
        while !rest.is_empty() {
            let close = rest.find(']')?;
            let index = rest.get(1..close)?.trim().parse().ok()?;
            steps.push(Step::Index(index));
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return None;
            }
        }
    }
    (!steps.is_empty()).then_some(steps)
}

fn lookup<'a>(data: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    steps.iter().try_fold(data, |v, step| match step {
        Step::Field(f) => v.get(f.as_str()),
        Step::Index(i) => v.get(*i),
    })
}

/// The references of `s`: (start, end, path) with `end` past the closing brace.
fn references(s: &str) -> Result<Vec<(usize, usize, Vec<Step>)>, TemplateError> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = s[from..].find("${") {
        let start = from + i;
        let Some(len) = s[start..].find('}') else {
            return Err(TemplateError::Reference {
                reference: s[start..].to_owned(),
            });
        };
        let end = start + len + 1;
        let inner = &s[start + 2..end - 1];
        let steps = parse_path(inner).ok_or_else(|| TemplateError::Reference {
            reference: s[start..end].to_owned(),
        })?;
        out.push((start, end, steps));
        from = end;
    }
    Ok(out)
}

fn render_string(s: &str, data: &Value) -> Result<Value, TemplateError> {
    let refs = references(s)?;
    if let [(0, end, steps)] = refs.as_slice()
        && *end == s.len()
    {
        return Ok(lookup(data, steps).cloned().unwrap_or(Value::Null));
    }
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for (start, end, steps) in &refs {
        out.push_str(&s[last..*start]);
        match lookup(data, steps) {
            None | Some(Value::Null) => {}
            Some(Value::String(text)) => out.push_str(text),
            Some(other) => out.push_str(&other.to_string()),
        }
        last = *end;
    }
    out.push_str(&s[last..]);
    Ok(Value::String(out))
}

fn render_value(v: &Value, data: &Value) -> Result<Value, TemplateError> {
    Ok(match v {
        Value::String(s) => render_string(s, data)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| render_value(i, data))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, i)| Ok((k.clone(), render_value(i, data)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

/// Render `template` (JSON text) over the event `data`.
pub fn render(template: &str, data: &Value) -> Result<Value, TemplateError> {
    let parsed: Value = serde_json::from_str(template).map_err(TemplateError::Json)?;
    render_value(&parsed, data)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn whole_references_keep_types_and_inline_ones_become_text() {
        let data = json!({"build_name": "abc1234", "docker_tags": ["latest", "v1"],
                          "trigger_metadata": {"commit_info": {"author": {"username": "ann"}}},
                          "n": 3});
        let t = r#"{"text": "built ${build_name} (${n}) by ${$.trigger_metadata.commit_info.author.username}",
                    "tags": "${docker_tags}", "first": "${docker_tags[0]}", "missing": "${nope.x}",
                    "inline_missing": "[${nope}]", "list": ["${n}", 1, true]}"#;
        assert_eq!(
            render(t, &data).unwrap(),
            json!({"text": "built abc1234 (3) by ann", "tags": ["latest", "v1"],
                   "first": "latest", "missing": null, "inline_missing": "[]",
                   "list": [3, 1, true]})
        );
    }

    #[test]
    fn bad_templates_are_errors() {
        assert!(matches!(
            render("{", &json!({})),
            Err(TemplateError::Json(_))
        ));
        for bad in [r#""${a""#, r#""${}""#, r#""${a[x]}""#, r#""${a[0]b}""#] {
            let err = render(bad, &json!({})).unwrap_err();
            assert!(
                matches!(err, TemplateError::Reference { .. }),
                "{bad}: {err}"
            );
        }
    }
}
