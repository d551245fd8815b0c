//! A reader over one YAML map that knows its key path, converts values with messages naming the
//! expected form, and afterwards sorts every key it was not asked for into "Quay-only" (warning),
//! "misplaced" or "unknown, did you mean" (problems).
//!
//! Why not `#[serde(deny_unknown_fields)]` structs: the brief asks for three things serde derive
//! cannot give together: full key paths (`BUILD_MANAGER[1].EXECUTORS[0].SETUP_TIME`), a warning
//! instead of an error for Quay keys we ignore (`flatten` disables `deny_unknown_fields`), and
//! did-you-mean suggestions. Each struct's parser names each key once, through this reader.

use serde_yaml::{Mapping, Value};

use super::error::{ConfigProblem, ConfigWarning, ProblemKind, WarningKind};
use super::values::{ByteSize, Secret};

/// Problems and warnings collected while reading one document.
#[derive(Debug, Default)]
pub(super) struct Ctx {
    pub(super) problems: Vec<ConfigProblem>,
    pub(super) warnings: Vec<ConfigWarning>,
}

impl Ctx {
    pub(super) fn problem(&mut self, key: impl Into<String>, kind: ProblemKind) {
        self.problems.push(ConfigProblem {
            key: key.into(),
            kind,
        });
    }

    pub(super) fn wrong(&mut self, key: impl Into<String>, expected: &str, got: &Value) {
        self.problem(
            key,
            ProblemKind::WrongValue {
                expected: expected.to_owned(),
                got: render(got),
            },
        );
    }

    pub(super) fn warn(&mut self, key: impl Into<String>, kind: WarningKind) {
        self.warnings.push(ConfigWarning {
            key: key.into(),
            kind,
        });
    }
}

/// `path.key`, or `key` at the top level.
pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A value as an error message shows it: scalars as written (strings quoted), containers by kind.
pub(super) fn render(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a map".to_owned(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// Quay reads its config with PyYAML (YAML 1.1), where these words are booleans too; serde_yaml
/// (YAML 1.2) reads them as strings.
pub(super) fn yaml11_bool(s: &str) -> Option<bool> {
    match s {
        "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
        "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

/// The closest candidate to a mistyped key: an exact match ignoring case, else the best
/// Jaro-Winkler score of at least 0.85 (it rewards a shared prefix, which is how config keys
/// are usually mistyped: `ALLOWED_WORKERS` for `ALLOWED_WORKER_COUNT`).
pub(super) fn suggest<'k>(
    key: &str,
    candidates: impl IntoIterator<Item = &'k str>,
) -> Option<String> {
    let upper = key.to_ascii_uppercase();
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        if c == upper {
            return Some(c.to_owned());
        }
        let score = strsim::jaro_winkler(&upper, c);
        if score >= 0.85 && best.is_none_or(|(b, _)| score > b) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c.to_owned())
}

/// How a map treats keys its parser did not ask for.
#[derive(Debug)]
pub(super) struct Level {
    /// Keys Quay knows here but Quarry ignores: accepted with a warning.
    pub(super) quay_only: &'static [&'static str],
    /// Suffixes of Quay key families accepted the same way (`*_LOGIN_CONFIG`).
    pub(super) quay_only_suffixes: &'static [&'static str],
    /// Keys that belong elsewhere, and where.
    pub(super) misplaced: &'static [(&'static [&'static str], &'static str)],
}

/// Reads typed values out of one map, remembering which keys were asked for.
#[derive(Debug)]
pub(super) struct MapReader<'a> {
    path: String,
    map: &'a Mapping,
    asked: Vec<&'static str>,
    /// Keys already reported by the parser itself (legacy `*_PREFIX` keys, say).
    handled: Vec<String>,
}

impl<'a> MapReader<'a> {
    pub(super) fn new(path: impl Into<String>, map: &'a Mapping) -> MapReader<'a> {
        MapReader {
            path: path.into(),
            map,
            asked: Vec::new(),
            handled: Vec::new(),
        }
    }

    /// The full path of `key` in this map.
    pub(super) fn key(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Keys of this map, for parsers that look at key families (`REDIS_*`).
    pub(super) fn keys(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.map.keys().filter_map(Value::as_str)
    }

    /// Whether `key` is present with a non-null value, without marking it as read.
    pub(super) fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    /// Mark a key the parser reported itself, so `finish` does not report it again.
    pub(super) fn handled(&mut self, key: &str) {
        self.handled.push(key.to_owned());
    }

    /// Mark `key` as known and return its value; an absent key and a null value are both `None`
    /// (Quay configs often write `MINIMUM_RETRY_THRESHOLD:` with nothing after it).
    pub(super) fn raw(&mut self, key: &'static str) -> Option<&'a Value> {
        self.asked.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(super) fn bool(&mut self, ctx: &mut Ctx, key: &'static str) -> Option<bool> {
        let v = self.raw(key)?;
        let b = match v {
            Value::Bool(b) => Some(*b),
            Value::String(s) => yaml11_bool(s),
            _ => None,
        };
        if b.is_none() {
            ctx.wrong(self.key(key), "true or false", v);
        }
        b
    }

    /// A string; numbers are taken as their text (`WORKER_TAG: 3.7`), as Quay's templates do.
    pub(super) fn string(&mut self, ctx: &mut Ctx, key: &'static str) -> Option<String> {
        let v = self.raw(key)?;
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => {
                ctx.wrong(self.key(key), "a string", v);
                None
            }
        }
    }

    /// A string that must not show up in logs; an empty string counts as not set.
    pub(super) fn secret(&mut self, ctx: &mut Ctx, key: &'static str) -> Option<Secret> {
        self.string(ctx, key)
            .filter(|s| !s.is_empty())
            .map(Secret::new)
    }

    /// An integer in `min..=max`; `expected` describes the accepted form.
    pub(super) fn uint(
        &mut self,
        ctx: &mut Ctx,
        key: &'static str,
        range: std::ops::RangeInclusive<u64>,
        expected: &str,
    ) -> Option<u64> {
        let v = self.raw(key)?;
        let n = v.as_u64().filter(|n| range.contains(n));
        if n.is_none() {
            ctx.wrong(self.key(key), expected, v);
        }
        n
    }

    /// [`MapReader::uint`] for counts that fit in `u32`.
    pub(super) fn uint32(
        &mut self,
        ctx: &mut Ctx,
        key: &'static str,
        range: std::ops::RangeInclusive<u32>,
        expected: &str,
    ) -> Option<u32> {
        let wide = u64::from(*range.start())..=u64::from(*range.end());
        self.uint(ctx, key, wide, expected)
            .and_then(|n| u32::try_from(n).ok())
    }

    /// A string that must be one of `allowed` (exact spelling, as Quay compares them).
    pub(super) fn one_of(
        &mut self,
        ctx: &mut Ctx,
        key: &'static str,
        allowed: &[&'static str],
    ) -> Option<&'static str> {
        let v = self.raw(key)?;
        let found = v
            .as_str()
            .and_then(|s| allowed.iter().copied().find(|a| *a == s));
        if found.is_none() {
            ctx.wrong(self.key(key), &format!("one of {}", allowed.join(", ")), v);
        }
        found
    }

    /// A whole number of seconds, at least `min` (Quay's form for every duration).
    pub(super) fn seconds(&mut self, ctx: &mut Ctx, key: &'static str, min: u64) -> Option<u64> {
        let expected = if min == 0 {
            "a whole number of seconds".to_owned()
        } else {
            format!("a whole number of seconds, at least {min}")
        };
        self.uint(ctx, key, min..=u64::MAX, &expected)
    }

    /// A TCP port; a string of digits is accepted too, as Quay's Redis client does.
    pub(super) fn port(&mut self, ctx: &mut Ctx, key: &'static str) -> Option<u16> {
        let v = self.raw(key)?;
        let n = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        let port = n.and_then(|n| u16::try_from(n).ok()).filter(|&p| p != 0);
        if port.is_none() {
            ctx.wrong(self.key(key), "an integer port 1-65535", v);
        }
        port
    }

    /// A list of strings; each wrong element is reported with its index.
    pub(super) fn strings(&mut self, ctx: &mut Ctx, key: &'static str) -> Option<Vec<String>> {
        let v = self.raw(key)?;
        let Value::Sequence(items) = v else {
            ctx.wrong(self.key(key), "a list of strings", v);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) => out.push(s.clone()),
                other => ctx.wrong(format!("{}[{i}]", self.key(key)), "a string", other),
            }
        }
        Some(out)
    }

    /// A size in Quay's syntax (`2G`, `512M`, bytes).
    pub(super) fn size(&mut self, ctx: &mut Ctx, key: &'static str) -> Option<ByteSize> {
        let v = self.raw(key)?;
        let size = match v {
            Value::String(s) => ByteSize::parse(s),
            Value::Number(n) => ByteSize::parse(&n.to_string()),
            _ => None,
        };
        if size.is_none() {
            ctx.wrong(
                self.key(key),
                "a size such as 2G, 512M or a number of bytes",
                v,
            );
        }
        size
    }

    /// Sort every key not asked for: Quay-only (warning), misplaced or unknown (problems).
    pub(super) fn finish(self, ctx: &mut Ctx, level: &Level) {
        for k in self.map.keys() {
            let Some(name) = k.as_str() else {
                let here = if self.path.is_empty() {
                    "(top level)"
                } else {
                    self.path.as_str()
                };
                ctx.problem(
                    here,
                    ProblemKind::Conflict {
                        problem: format!("keys must be strings, got {}", render(k)),
                    },
                );
                continue;
            };
            if self.asked.contains(&name) || self.handled.iter().any(|h| h == name) {
                continue;
            }
            let full = self.key(name);
            let quay_only = level.quay_only.contains(&name)
                || level.quay_only_suffixes.iter().any(|s| name.ends_with(s));
            if quay_only {
                ctx.warn(full, WarningKind::QuayOnly);
            } else if let Some((_, place)) =
                level.misplaced.iter().find(|(ks, _)| ks.contains(&name))
            {
                ctx.problem(full, ProblemKind::Misplaced { place });
            } else {
                let candidates = self.asked.iter().chain(level.quay_only).copied();
                let suggestion = suggest(name, candidates);
                ctx.problem(full, ProblemKind::Unknown { suggestion });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(yaml: &str) -> Mapping {
        serde_yaml::from_str(yaml).unwrap()
    }

    const PLAIN: Level = Level {
        quay_only: &["DB_URI"],
        quay_only_suffixes: &["_LOGIN_CONFIG"],
        misplaced: &[(&["EXECUTORS"], "BUILD_MANAGER[1]")],
    };

    #[test]
    fn typed_getters_report_full_path_and_expected_form() {
        let m = map("A: abc\nB: 70000\nC: [x, 3]\nD: yes\nE: 12\nF: ~\n");
        let mut ctx = Ctx::default();
        let mut r = MapReader::new("ROOT[1]", &m);
        assert_eq!(r.port(&mut ctx, "A"), None);
        assert_eq!(r.port(&mut ctx, "B"), None);
        assert_eq!(r.strings(&mut ctx, "C"), Some(vec!["x".to_owned()]));
        assert_eq!(r.bool(&mut ctx, "D"), Some(true));
        assert_eq!(r.seconds(&mut ctx, "E", 1), Some(12));
        assert_eq!(
            r.seconds(&mut ctx, "F", 1),
            None,
            "null is absent, not an error"
        );
        let msgs: Vec<String> = ctx.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            [
                r#"ROOT[1].A: expected an integer port 1-65535, got "abc""#,
                "ROOT[1].B: expected an integer port 1-65535, got 70000",
                "ROOT[1].C[1]: expected a string, got 3",
            ]
        );
    }

    #[test]
    fn finish_sorts_leftover_keys() {
        let m =
            map("KNOWN: 1\nDB_URI: x\nGITHUB_LOGIN_CONFIG: {}\nEXECUTORS: []\nKNOWM: 2\n1: z\n");
        let mut ctx = Ctx::default();
        let mut r = MapReader::new("", &m);
        r.raw("KNOWN");
        r.finish(&mut ctx, &PLAIN);
        let warnings: Vec<String> = ctx.warnings.iter().map(|w| w.key.clone()).collect();
        assert_eq!(warnings, ["DB_URI", "GITHUB_LOGIN_CONFIG"]);
        let msgs: Vec<String> = ctx.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            [
                "EXECUTORS: this key belongs inside BUILD_MANAGER[1]; move it there",
                "unknown key KNOWM (did you mean KNOWN?)",
                "(top level): keys must be strings, got 1",
            ]
        );
    }

    #[test]
    fn suggestions_prefer_case_matches_then_close_prefixes() {
        let keys = ["ALLOWED_WORKER_COUNT", "ORCHESTRATOR", "EXECUTORS"];
        assert_eq!(
            suggest("allowed_worker_count", keys).as_deref(),
            Some("ALLOWED_WORKER_COUNT")
        );
        assert_eq!(
            suggest("ALLOWED_WORKERS", keys).as_deref(),
            Some("ALLOWED_WORKER_COUNT")
        );
        assert_eq!(
            suggest("ORCHESTATOR", keys).as_deref(),
            Some("ORCHESTRATOR")
        );
        assert_eq!(suggest("COMPLETELY_DIFFERENT", keys), None);
    }
}
