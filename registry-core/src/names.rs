//! Validated repository names, tags and manifest references.
//!
//! Repository names follow the distribution spec's grammar and, like Quay, always have a namespace
//! (`<namespace>/<repository>[/<more>...]`): the namespace is the user or organisation that owns it.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// Why a name, tag or reference was rejected.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    /// The repository name breaks the distribution spec's grammar.
    #[error(
        "repository name {name:?} is invalid: components of [a-z0-9] separated by '.', '_', '__' or '-', joined by '/', at most 255 characters"
    )]
    InvalidRepo {
        /// The rejected name.
        name: String,
    },
    /// The repository name has no namespace part.
    #[error("repository name {name:?} needs a namespace: <namespace>/<repository>")]
    NoNamespace {
        /// The rejected name.
        name: String,
    },
    /// The tag breaks `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
    #[error("tag {tag:?} is invalid: [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    InvalidTag {
        /// The rejected tag.
        tag: String,
    },
    /// A namespace (user, organisation) name is invalid.
    #[error(
        "namespace {name:?} is invalid: 2 to 255 characters of [a-z0-9_], starting with a letter or digit"
    )]
    InvalidNamespace {
        /// The rejected name.
        name: String,
    },
    /// A reference looked like a digest but is not a valid one.
    #[error("invalid digest reference")]
    Digest(#[from] DigestError),
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        // separator
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// A repository name: `<namespace>/<repository>[/...]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    /// The full name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace (user or organisation): the first component.
    pub fn namespace(&self) -> &str {
        self.0.split_once('/').map(|(ns, _)| ns).unwrap_or(&self.0)
    }

    /// The repository part after the namespace.
    pub fn repository(&self) -> &str {
        self.0.split_once('/').map(|(_, r)| r).unwrap_or("")
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 255 || !s.split('/').all(valid_component) {
            return Err(NameError::InvalidRepo { name: s.to_owned() });
        }
        if !s.contains('/') {
            return Err(NameError::NoNamespace { name: s.to_owned() });
        }
        Ok(RepoName(s.to_owned()))
    }
}

/// Validate a namespace (user, organisation or robot short) name, Quay style.
pub fn validate_namespace(name: &str) -> Result<(), NameError> {
    let b = name.as_bytes();
    let ok = (2..=255).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(NameError::InvalidNamespace {
            name: name.to_owned(),
        })
    }
}

/// A tag name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// The tag string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let head = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        let ok = !b.is_empty()
            && b.len() <= 128
            && head(b[0])
            && b[1..].iter().all(|&c| head(c) || c == b'.' || c == b'-');
        if ok {
            Ok(Tag(s.to_owned()))
        } else {
            Err(NameError::InvalidTag { tag: s.to_owned() })
        }
    }
}

/// The `<reference>` of a manifest path: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    /// By tag.
    Tag(Tag),
    /// By digest.
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names_follow_the_spec_grammar() {
        for ok in [
            "a/b",
            "ns/my-repo",
            "ns/a__b",
            "ns/a.b/c_d",
            "ns/a---b",
            "0/1",
        ] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok} refused");
        }
        for bad in [
            "", "a", "A/b", "ns/-a", "ns/a-", "ns/a___b", "ns//b", "ns/b/", "ns/a..b",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad} accepted");
        }
        let long = format!("ns/{}", "a".repeat(253));
        assert!(long.parse::<RepoName>().is_err());
    }

    #[test]
    fn repo_name_parts() {
        let r: RepoName = "org/team/app".parse().unwrap();
        assert_eq!(r.namespace(), "org");
        assert_eq!(r.repository(), "team/app");
    }

    #[test]
    fn tags_follow_the_spec_grammar() {
        assert!("latest".parse::<Tag>().is_ok());
        assert!("_v1.2-rc".parse::<Tag>().is_ok());
        assert!("a".repeat(128).parse::<Tag>().is_ok());
        assert!("a".repeat(129).parse::<Tag>().is_err());
        assert!(".hidden".parse::<Tag>().is_err());
        assert!("-x".parse::<Tag>().is_err());
        assert!("a/b".parse::<Tag>().is_err());
    }

    #[test]
    fn references_distinguish_tags_and_digests() {
        assert!(matches!("v1".parse::<Reference>(), Ok(Reference::Tag(_))));
        assert!(matches!(
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .parse::<Reference>(),
            Ok(Reference::Digest(_))
        ));
        assert!("sha256:zz".parse::<Reference>().is_err());
    }

    use proptest::prelude::*;
    use regex::Regex;
    use std::sync::LazyLock;

    // The distribution spec's grammars, as the oracle for the hand-written parsers.
    static REPO_RE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$")
            .unwrap()
    });
    static TAG_RE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").unwrap());

    /// One path component of the spec grammar, with short runs so all separators show up.
    const SPEC_COMPONENT: &str = r"[a-z0-9]{1,5}((\.|_|__|-{1,3})[a-z0-9]{1,5}){0,2}";

    fn spec_repo(s: &str) -> bool {
        REPO_RE.is_match(s) && s.contains('/') && s.len() <= 255
    }

    /// Strings made of the characters that matter to the name grammars, so that valid names and
    /// near misses (doubled, leading and trailing separators, capitals, empty components) are
    /// common rather than vanishingly rare.
    fn namey() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9._/-]{0,40}",
            "[a-c0-2]{1,4}([._/-]{1,3}[a-c0-2]{1,4}){0,6}",
            "[a-zA-Z0-9_][a-zA-Z0-9._:/-]{0,140}",
            "[a-z]{1,3}/[a-z]{250,256}",
        ]
    }

    proptest! {
        #[test]
        fn repo_name_parse_never_panics(s in any::<String>()) {
            let _ = s.parse::<RepoName>();
        }

        #[test]
        fn repo_names_accepted_exactly_as_the_spec_regex(s in namey()) {
            let parsed = s.parse::<RepoName>();
            prop_assert_eq!(parsed.is_ok(), spec_repo(&s), "{:?}", s);
            if let Ok(r) = parsed {
                prop_assert_eq!(r.as_str(), s.as_str());
                prop_assert_eq!(format!("{}/{}", r.namespace(), r.repository()), s);
            }
        }

        #[test]
        fn spec_valid_repo_names_are_accepted(
            s in prop::collection::vec(SPEC_COMPONENT, 2..5).prop_map(|c| c.join("/")),
        ) {
            prop_assert!(s.parse::<RepoName>().is_ok(), "{:?}", s);
        }

        #[test]
        fn tag_parse_never_panics(s in any::<String>()) {
            let _ = s.parse::<Tag>();
        }

        #[test]
        fn tags_accepted_exactly_as_the_spec_regex(s in namey()) {
            let parsed = s.parse::<Tag>();
            prop_assert_eq!(parsed.is_ok(), TAG_RE.is_match(&s), "{:?}", s);
            if let Ok(t) = parsed {
                prop_assert_eq!(t.to_string(), s);
            }
        }

        #[test]
        fn spec_valid_tags_are_accepted(s in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}") {
            prop_assert!(s.parse::<Tag>().is_ok(), "{:?}", s);
        }

        #[test]
        fn reference_parse_never_panics(s in any::<String>()) {
            let _ = s.parse::<Reference>();
        }

        #[test]
        fn accepted_references_print_back_unchanged(
            s in prop_oneof![namey(), "sha(256|512):[0-9a-f]{64}", "sha512:[0-9a-f]{128}"],
        ) {
            if let Ok(r) = s.parse::<Reference>() {
                prop_assert_eq!(r.to_string(), s.clone());
                let is_tag = matches!(r, Reference::Tag(_));
                prop_assert_eq!(is_tag, TAG_RE.is_match(&s));
            }
        }

        #[test]
        fn validate_namespace_never_panics(s in any::<String>()) {
            let _ = validate_namespace(&s);
        }
    }
}
