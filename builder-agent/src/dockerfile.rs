//! Just enough of Dockerfile parsing to find the base image before the build: the first `FROM`
//! after any `ARG`s, with meta `ARG` defaults and build arguments substituted.
//!
//! The engine parses the whole file during the build; the agent only needs the base image early,
//! to pull it (with the pull robot's credentials when it lives in our registry) and to report it in
//! the PULLING phase. Hand-written because the one maintained Rust Dockerfile parser
//! (`dockerfile-parser`) predates `ARG`-before-`FROM` substitution and pulls in `pest`.

use std::collections::BTreeMap;

/// Why the base image could not be determined; every case is the user's Dockerfile.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DockerfileError {
    /// No instructions at all.
    #[error("the Dockerfile is empty: it needs a FROM instruction")]
    Empty,
    /// Instructions, but no `FROM`.
    #[error("the Dockerfile has no FROM instruction")]
    NoFrom,
    /// Something other than `ARG` came before the first `FROM`.
    #[error(
        "Dockerfile line {line}: {instruction} before the first FROM (only ARG may come first)"
    )]
    BeforeFrom {
        /// 1-based line number.
        line: usize,
        /// The instruction, upper-cased.
        instruction: String,
    },
    /// `FROM` without an image.
    #[error("Dockerfile line {line}: FROM requires an image name")]
    FromWithoutImage {
        /// 1-based line number.
        line: usize,
    },
    /// The (substituted) image reference is malformed.
    #[error("Dockerfile line {line}: invalid base image reference {reference:?}: {reason}")]
    InvalidReference {
        /// 1-based line number.
        line: usize,
        /// The reference after substitution.
        reference: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The base image of the first build stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseImage {
    /// `FROM scratch`: nothing to pull.
    Scratch,
    /// A registry image.
    Image(ImageRef),
}

/// A parsed image reference, as written (no `docker.io/library/` normalisation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The repository including any registry host, e.g. `127.0.0.1:5000/ns/base` or `alpine`.
    pub name: String,
    /// The tag (`latest` when none was given).
    pub tag: String,
    /// `sha256:...` when the reference pins a digest.
    pub digest: Option<String>,
}

impl ImageRef {
    /// The registry host (`host[:port]`) when the reference names one (its first path component
    /// contains `.` or `:`, or is `localhost`), as the Docker reference grammar decides.
    pub fn domain(&self) -> Option<&str> {
        let (first, _) = self.name.split_once('/')?;
        (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
    }

    /// What to pull: `name@digest` when pinned, else `name:tag`.
    pub fn pull_ref(&self) -> String {
        match &self.digest {
            Some(d) => format!("{}@{d}", self.name),
            None => format!("{}:{}", self.name, self.tag),
        }
    }
}

/// Find the first stage's base image in `text`, substituting meta `ARG`s (build arguments win
/// over defaults for declared `ARG`s, as in `docker build`).
pub fn base_image(
    text: &str,
    build_args: &BTreeMap<String, String>,
) -> Result<BaseImage, DockerfileError> {
    let mut meta: BTreeMap<String, String> = BTreeMap::new();
    let mut any = false;
    for (line, instruction) in instructions(text) {
        any = true;
        let (keyword, rest) = match instruction.split_once(char::is_whitespace) {
            Some((k, r)) => (k.to_ascii_uppercase(), r.trim()),
            None => (instruction.to_ascii_uppercase(), ""),
        };
        match keyword.as_str() {
            "ARG" => {
                for word in split_words(rest) {
                    let (name, default) = match word.split_once('=') {
                        Some((n, d)) => (n.to_owned(), substitute(&unquote(d), &meta)),
                        None => (word.clone(), String::new()),
                    };
                    let value = build_args.get(&name).cloned().unwrap_or(default);
                    meta.insert(name, value);
                }
            }
            "FROM" => return parse_from(line, rest, &meta),
            _ => {
                return Err(DockerfileError::BeforeFrom {
                    line,
                    instruction: keyword,
                });
            }
        }
    }
    Err(if any {
        DockerfileError::NoFrom
    } else {
        DockerfileError::Empty
    })
}

fn parse_from(
    line: usize,
    rest: &str,
    meta: &BTreeMap<String, String>,
) -> Result<BaseImage, DockerfileError> {
    // FROM [--platform=...] image [AS name]
    let image = split_words(rest)
        .into_iter()
        .find(|w| !w.starts_with("--"))
        .ok_or(DockerfileError::FromWithoutImage { line })?;
    let reference = substitute(&image, meta);
    let invalid = |reason| DockerfileError::InvalidReference {
        line,
        reference: reference.clone(),
        reason,
    };
    if reference.is_empty() {
        return Err(invalid("it is empty after substituting ARG values"));
    }
    if reference == "scratch" {
        return Ok(BaseImage::Scratch);
    }
    if reference.contains(char::is_whitespace) || reference.contains('$') {
        return Err(invalid("it contains whitespace or an unresolved variable"));
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((r, d)) if d.starts_with("sha256:") && d.len() == 71 => (r, Some(d.to_owned())),
        Some(_) => return Err(invalid("the digest must be sha256:<64 hex digits>")),
        None => (reference.as_str(), None),
    };
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], &rest[last_slash + i + 1..]),
        None => (rest, "latest"),
    };
    if name.is_empty() || name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        return Err(invalid("the repository name is empty"));
    }
    let path = name.split_once('/').map_or(name, |(first, p)| {
        let is_domain = first.contains('.') || first.contains(':') || first == "localhost";
        if is_domain { p } else { name }
    });
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(invalid("repository names must be lowercase"));
    }
    if tag.is_empty() {
        return Err(invalid("the tag is empty"));
    }
    Ok(BaseImage::Image(ImageRef {
        name: name.to_owned(),
        tag: tag.to_owned(),
        digest,
    }))
}

/// Logical instructions with their first line number: parser directives read, comments and
/// blank lines dropped, continuation lines joined.
fn instructions(text: &str) -> Vec<(usize, String)> {
    let mut escape = '\\';
    let mut in_directives = true;
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if in_directives {
            if let Some(d) = trimmed.strip_prefix('#')
                && let Some((key, value)) = d.split_once('=')
                && key.trim().eq_ignore_ascii_case("escape")
            {
                if value.trim() == "`" {
                    escape = '`';
                }
                continue;
            }
            in_directives = false;
        }
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix(escape) {
            Some(b) => (b, true),
            None => (trimmed, false),
        };
        let entry = current.get_or_insert_with(|| (i + 1, String::new()));
        if !entry.1.is_empty() && !body.is_empty() {
            entry.1.push(' ');
        }
        entry.1.push_str(body.trim());
        if !continues && let Some(done) = current.take() {
            out.push(done);
        }
    }
    out.extend(current);
    out
}

/// Whitespace-separated words; double or single quotes group (and are kept for `unquote`).
fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => {
                quote = None;
                word.push(c);
            }
            Some(_) => word.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                word.push(c);
            }
            None if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            None => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn unquote(s: &str) -> String {
    s.chars().filter(|c| *c != '"' && *c != '\'').collect()
}

/// Expand `$VAR`, `${VAR}`, `${VAR:-default}` and `${VAR:+alt}` from `vars` (unknown names
/// expand to nothing, as in the Dockerfile grammar); `\$` is a literal dollar.
pub fn substitute(s: &str, vars: &BTreeMap<String, String>) -> String {
    let lookup = |name: &str| vars.get(name).cloned().unwrap_or_default();
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'$') => {
                out.push('$');
                chars.next();
            }
            '$' if chars.peek() == Some(&'{') => {
                chars.next();
                let inner: String = chars.by_ref().take_while(|c| *c != '}').collect();
                if let Some((name, word)) = inner.split_once(":-") {
                    let v = lookup(name);
                    out.push_str(if v.is_empty() { word } else { &v });
                } else if let Some((name, word)) = inner.split_once(":+") {
                    if !lookup(name).is_empty() {
                        out.push_str(word);
                    }
                } else {
                    out.push_str(&lookup(&inner));
                }
            }
            '$' if chars
                .peek()
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == '_') =>
            {
                let mut name = String::new();
                while let Some(c) = chars.peek().copied()
                    && (c.is_ascii_alphanumeric() || c == '_')
                {
                    name.push(c);
                    chars.next();
                }
                out.push_str(&lookup(&name));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(text: &str) -> Result<BaseImage, DockerfileError> {
        base_image(text, &BTreeMap::new())
    }

    fn image(name: &str, tag: &str) -> BaseImage {
        BaseImage::Image(ImageRef {
            name: name.into(),
            tag: tag.into(),
            digest: None,
        })
    }

    #[test]
    fn first_from_with_tag_defaults_and_registry_ports() {
        assert_eq!(
            base("FROM alpine\nRUN true\nFROM busybox"),
            Ok(image("alpine", "latest"))
        );
        assert_eq!(
            base("# comment\n\nfrom 127.0.0.1:5000/ns/base:v1 AS build\n"),
            Ok(image("127.0.0.1:5000/ns/base", "v1"))
        );
        assert_eq!(
            base("FROM --platform=linux/amd64 localhost/x"),
            Ok(image("localhost/x", "latest"))
        );
        let BaseImage::Image(r) = base("FROM reg.example:5000/a/b:c").unwrap() else {
            panic!("not an image")
        };
        assert_eq!(r.domain(), Some("reg.example:5000"));
        assert_eq!(r.pull_ref(), "reg.example:5000/a/b:c");
        let BaseImage::Image(r) = base("FROM library/alpine").unwrap() else {
            panic!("not an image")
        };
        assert_eq!(r.domain(), None);
    }

    #[test]
    fn digest_references_pin_the_pull() {
        let d = format!("sha256:{}", "a".repeat(64));
        let BaseImage::Image(r) = base(&format!("FROM r.io/x@{d}")).unwrap() else {
            panic!("not an image")
        };
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.pull_ref(), format!("r.io/x@{d}"));
        assert!(matches!(
            base("FROM r.io/x@md5:abc"),
            Err(DockerfileError::InvalidReference { .. })
        ));
    }

    #[test]
    fn meta_args_defaults_and_build_args_are_substituted() {
        let text =
            "# escape=\\\nARG REG=127.0.0.1:5000\nARG TAG=\"v1\" OTHER\nFROM ${REG}/ns/base:$TAG\n";
        assert_eq!(base(text), Ok(image("127.0.0.1:5000/ns/base", "v1")));
        let args = BTreeMap::from([("TAG".to_owned(), "v2".to_owned())]);
        assert_eq!(
            base_image(text, &args),
            Ok(image("127.0.0.1:5000/ns/base", "v2"))
        );
        // A build argument for an ARG the Dockerfile never declares is not a meta ARG.
        let undeclared = BTreeMap::from([("IMG".to_owned(), "evil".to_owned())]);
        assert!(matches!(
            base_image("FROM ${IMG}", &undeclared),
            Err(DockerfileError::InvalidReference { .. })
        ));
        assert_eq!(
            base("ARG V\nFROM alpine:${V:-3.19}"),
            Ok(image("alpine", "3.19"))
        );
        assert_eq!(
            base("ARG A=x\nARG B=${A}y\nFROM b/$B"),
            Ok(image("b/xy", "latest"))
        );
    }

    #[test]
    fn scratch_is_special() {
        assert_eq!(base("FROM scratch\nCOPY x /"), Ok(BaseImage::Scratch));
        assert_eq!(base("ARG BASE=scratch\nFROM $BASE"), Ok(BaseImage::Scratch));
    }

    #[test]
    fn continuations_and_escape_directive() {
        assert_eq!(
            base("FROM \\\n  alpine:3 \\\n  AS x"),
            Ok(image("alpine", "3"))
        );
        assert_eq!(
            base("# escape=`\nFROM `\n alpine"),
            Ok(image("alpine", "latest"))
        );
    }

    #[test]
    fn user_errors_say_what_is_wrong() {
        assert_eq!(base(""), Err(DockerfileError::Empty));
        assert_eq!(base("# only a comment\n"), Err(DockerfileError::Empty));
        assert_eq!(base("ARG X=1"), Err(DockerfileError::NoFrom));
        assert_eq!(
            base("RUN echo hi\nFROM alpine"),
            Err(DockerfileError::BeforeFrom {
                line: 1,
                instruction: "RUN".into()
            })
        );
        assert_eq!(
            base("\n\nFROM"),
            Err(DockerfileError::FromWithoutImage { line: 3 })
        );
        for bad in ["FROM Alpine", "FROM a:", "FROM /x", "FROM $UNSET"] {
            assert!(
                matches!(base(bad), Err(DockerfileError::InvalidReference { .. })),
                "{bad}"
            );
        }
        let msg = base("FROM Alpine").unwrap_err().to_string();
        assert!(msg.contains("lowercase") && msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn substitute_handles_escapes_and_forms() {
        let vars = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
        assert_eq!(
            substitute("\\$A-$A-${A}-${B:-d}-${A:+set}-${B:+no}", &vars),
            "$A-1-1-d-set-"
        );
        assert_eq!(substitute("cost: $5", &vars), "cost: $5");
    }
}
