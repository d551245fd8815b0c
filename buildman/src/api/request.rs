//! The body of `POST .../build/` and its validation, as pure functions: Quay's fields plus
//! Quarry's `build_args` and `git`.

use std::collections::BTreeMap;

use registry_core::names::Tag;
use serde::Deserialize;

use super::error::InvalidRequest;
use crate::model::GitSource;
use crate::trigger::git_url;

/// `POST /api/v1/repository/{ns}/{repo}/build/` as sent. Unknown fields are refused so that a
/// misspelt option (`buildargs`) is an error rather than silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BuildRequest {
    #[serde(default)]
    pub(crate) file_id: Option<String>,
    #[serde(default)]
    pub(crate) archive_url: Option<String>,
    #[serde(default)]
    pub(crate) git: Option<GitSource>,
    #[serde(default)]
    pub(crate) subdirectory: Option<String>,
    #[serde(default)]
    pub(crate) dockerfile_path: Option<String>,
    #[serde(default)]
    pub(crate) context: Option<String>,
    #[serde(default)]
    pub(crate) pull_robot: Option<String>,
    #[serde(default)]
    pub(crate) docker_tags: Vec<String>,
    #[serde(default)]
    pub(crate) build_args: BTreeMap<String, String>,
}

/// The one source of a build, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// An upload (checked against the database by the caller).
    File(String),
    /// An http(s) archive or Dockerfile.
    Archive(String),
    /// A git repository at a commit (sha lower-cased).
    Git(GitSource),
}

/// Pick the single source; empty strings count as absent (Quay's UI sends `""` for unused fields).
pub(crate) fn source(req: &BuildRequest) -> Result<Source, InvalidRequest> {
    let present = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.trim().is_empty());
    let mut given = Vec::new();
    if present(&req.file_id) {
        given.push("file_id");
    }
    if present(&req.archive_url) {
        given.push("archive_url");
    }
    if req.git.is_some() {
        given.push("git");
    }
    match given.as_slice() {
        [] => Err(InvalidRequest::NoSource),
        ["file_id"] => Ok(Source::File(
            req.file_id.as_deref().unwrap_or_default().trim().to_owned(),
        )),
        ["archive_url"] => archive_url(req.archive_url.as_deref().unwrap_or_default()),
        ["git"] => git(req.git.clone().unwrap_or_default()),
        _ => Err(InvalidRequest::TwoSources {
            given: given.join(" and "),
        }),
    }
}

fn archive_url(url: &str) -> Result<Source, InvalidRequest> {
    let bad = || InvalidRequest::ArchiveUrl {
        url: url.to_owned(),
    };
    let uri: http::Uri = url.trim().parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.host().is_none_or(str::is_empty) {
        return Err(bad());
    }
    Ok(Source::Archive(url.trim().to_owned()))
}

fn git(src: GitSource) -> Result<Source, InvalidRequest> {
    let sha = src.sha.trim().to_ascii_lowercase();
    if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(InvalidRequest::GitSha { sha: src.sha });
    }
    let url = src.url.trim().to_owned();
    if !git_url::shape_ok(&url, git_url::BUILD_SCHEMES) {
        return Err(InvalidRequest::GitUrl { url: src.url });
    }
    Ok(Source::Git(GitSource { url, sha }))
}

/// Validate `docker_tags` as registry tags; duplicates are dropped, order kept.
pub(crate) fn tags(tags: &[String]) -> Result<Vec<String>, InvalidRequest> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for t in tags {
        let tag: Tag = t.parse().map_err(InvalidRequest::Tag)?;
        if !out.iter().any(|o| o == tag.as_str()) {
            out.push(tag.as_str().to_owned());
        }
    }
    Ok(out)
}

/// Build arguments: keys are shell identifiers (what `ARG` accepts), values have no NUL.
pub(crate) fn build_args(args: &BTreeMap<String, String>) -> Result<(), InvalidRequest> {
    for (key, value) in args {
        let mut chars = key.chars();
        let head_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !head_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(InvalidRequest::BuildArgKey { key: key.clone() });
        }
        if value.contains('\0') {
            return Err(InvalidRequest::BuildArgValue { key: key.clone() });
        }
    }
    Ok(())
}

/// Normalise a path of the source to `/a/b` form: leading `/`, no empty or `.` components, no
/// trailing `/`. A `..` component or a control character is refused.
fn clean_path(field: &'static str, value: &str) -> Result<String, InvalidRequest> {
    let bad = || InvalidRequest::Path {
        field,
        value: value.to_owned(),
    };
    if value.chars().any(char::is_control) || value.len() > 1024 {
        return Err(bad());
    }
    let mut parts = Vec::new();
    for part in value.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(bad()),
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

fn parent(path: &str) -> String {
    match path.rsplit_once('/') {
        Some(("", _)) | None => "/".to_owned(),
        Some((dir, _)) => dir.to_owned(),
    }
}

fn join(dir: &str, file: &str) -> String {
    if dir == "/" {
        format!("/{file}")
    } else {
        format!("{dir}/{file}")
    }
}

/// Quay's `get_dockerfile_context` (reference 4.2), on normalised paths: returns
/// `(build_subdir, context)`, the Dockerfile path and the context directory.
///
/// - `dockerfile_path` given: it is the Dockerfile; the context is `context`, or its directory;
/// - else `subdirectory` given: the context is it, the Dockerfile is `<subdirectory>/Dockerfile`;
/// - else the Dockerfile is `<context or />/Dockerfile`.
pub(crate) fn dockerfile_context(req: &BuildRequest) -> Result<(String, String), InvalidRequest> {
    fn given(v: &Option<String>) -> Option<&str> {
        v.as_deref().filter(|s| !s.trim().is_empty())
    }
    let context = given(&req.context)
        .map(|c| clean_path("context", c))
        .transpose()?;
    if let Some(raw) = given(&req.dockerfile_path) {
        let path = clean_path("dockerfile_path", raw)?;
        if path == "/" || raw.trim_end().ends_with('/') {
            return Err(InvalidRequest::DockerfileIsDir {
                value: raw.to_owned(),
            });
        }
        let context = context.unwrap_or_else(|| parent(&path));
        return Ok((path, context));
    }
    if let Some(raw) = given(&req.subdirectory) {
        let sub = clean_path("subdirectory", raw)?;
        return Ok((join(&sub, "Dockerfile"), sub));
    }
    let context = context.unwrap_or_else(|| "/".to_owned());
    Ok((join(&context, "Dockerfile"), context))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: serde_json::Value) -> BuildRequest {
        serde_json::from_value(json).unwrap()
    }

    const SHA: &str = "0123456789abcdef0123456789ABCDEF01234567";

    #[test]
    fn exactly_one_source_is_taken() {
        let s = source(&req(serde_json::json!({"archive_url": "https://h/x.tgz"}))).unwrap();
        assert_eq!(s, Source::Archive("https://h/x.tgz".into()));
        let s = source(&req(serde_json::json!({"file_id": "f", "archive_url": ""}))).unwrap();
        assert_eq!(s, Source::File("f".into()));
        let s = source(&req(
            serde_json::json!({"git": {"url": "/srv/r.git", "sha": SHA}}),
        ));
        let Source::Git(g) = s.unwrap() else {
            panic!("not git")
        };
        assert_eq!(g.sha, SHA.to_ascii_lowercase());
        assert!(matches!(
            source(&req(serde_json::json!({}))),
            Err(InvalidRequest::NoSource)
        ));
        let err = source(&req(
            serde_json::json!({"file_id": "f", "git": {"url": "/r", "sha": SHA}}),
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "a build needs exactly one source, got file_id and git: send only one of them"
        );
        assert!(serde_json::from_str::<BuildRequest>(r#"{"buildargs": {}}"#).is_err());
    }

    #[test]
    fn archive_urls_must_be_http() {
        for bad in [
            "ftp://h/x",
            "file:///etc/passwd",
            "http://",
            "h/x.tgz",
            "https:///x",
        ] {
            let r = req(serde_json::json!({ "archive_url": bad }));
            assert!(
                matches!(source(&r), Err(InvalidRequest::ArchiveUrl { .. })),
                "{bad}"
            );
        }
        assert!(
            source(&req(
                serde_json::json!({"archive_url": "HTTP://h:8080/a?b=c"})
            ))
            .is_ok()
        );
    }

    #[test]
    fn git_sources_are_checked() {
        let git = |url: &str, sha: &str| {
            source(&req(serde_json::json!({"git": {"url": url, "sha": sha}})))
        };
        for ok in [
            "https://github.com/a/b.git",
            "ssh://git@h/a.git",
            "git@github.com:a/b.git",
            "file:///srv/repo",
            "/srv/repo",
        ] {
            assert!(git(ok, SHA).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-uevil",
            "ext::sh -c x",
            "ftp://h/r",
            "relative/path",
            "a b",
        ] {
            assert!(
                matches!(git(bad, SHA), Err(InvalidRequest::GitUrl { .. })),
                "{bad}"
            );
        }
        for bad in ["abc", &SHA[..39], &format!("{}g", &SHA[..39])] {
            assert!(matches!(git("/r", bad), Err(InvalidRequest::GitSha { .. })));
        }
    }

    #[test]
    fn tags_and_build_args_are_validated() {
        let t = tags(&["v1".into(), "latest".into(), "v1".into()]).unwrap();
        assert_eq!(t, ["v1", "latest"]);
        assert!(tags(&["bad tag".into()]).is_err());
        assert!(tags(&[".x".into()]).is_err());
        let args = |k: &str, v: &str| build_args(&BTreeMap::from([(k.into(), v.into())]));
        assert!(args("HTTP_PROXY", "x").is_ok());
        assert!(args("_a1", "").is_ok());
        for bad in ["1A", "A-B", "", "A B", "É"] {
            assert!(
                matches!(args(bad, "x"), Err(InvalidRequest::BuildArgKey { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            args("A", "x\0y"),
            Err(InvalidRequest::BuildArgValue { .. })
        ));
    }

    fn ctx(json: serde_json::Value) -> Result<(String, String), InvalidRequest> {
        dockerfile_context(&req(json))
    }

    #[test]
    fn context_rules_follow_quay() {
        let pair = |a: &str, b: &str| Ok::<_, ()>((a.to_owned(), b.to_owned()));
        let ok = |j| ctx(j).map_err(|_| ());
        assert_eq!(ok(serde_json::json!({})), pair("/Dockerfile", "/"));
        assert_eq!(
            ok(serde_json::json!({"dockerfile_path": "sub/Dockerfile"})),
            pair("/sub/Dockerfile", "/sub")
        );
        assert_eq!(
            ok(serde_json::json!({"dockerfile_path": "/df/Dockerfile.prod", "context": "/"})),
            pair("/df/Dockerfile.prod", "/")
        );
        assert_eq!(
            ok(serde_json::json!({"dockerfile_path": "Dockerfile"})),
            pair("/Dockerfile", "/")
        );
        assert_eq!(
            ok(serde_json::json!({"subdirectory": "/app/", "context": "/ignored"})),
            pair("/app/Dockerfile", "/app")
        );
        assert_eq!(
            ok(serde_json::json!({"context": "./web//"})),
            pair("/web/Dockerfile", "/web")
        );
        for (field, value) in [
            ("dockerfile_path", "../Dockerfile"),
            ("subdirectory", "a/../../b"),
            ("context", "/.."),
            ("context", "a\nb"),
        ] {
            let err = ctx(serde_json::json!({ field: value })).unwrap_err();
            assert!(
                matches!(err, InvalidRequest::Path { .. }),
                "{field}={value}"
            );
        }
        assert!(matches!(
            ctx(serde_json::json!({"dockerfile_path": "sub/"})),
            Err(InvalidRequest::DockerfileIsDir { .. })
        ));
    }
}
