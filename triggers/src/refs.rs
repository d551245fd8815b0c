//! Git refs as webhooks carry them: `refs/heads/<branch>`, `refs/tags/<tag>`,
//! `refs/remotes/<remote>` (Quay's `^refs/(heads|tags|remotes)/(.+)$`).

/// What a ref names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefKind {
    /// `refs/heads/...`
    Branch,
    /// `refs/tags/...`
    Tag,
    /// `refs/remotes/...`
    Remote,
}

impl RefKind {
    /// The folder under `refs/`: `heads`, `tags` or `remotes`.
    pub fn dir(self) -> &'static str {
        match self {
            RefKind::Branch => "heads",
            RefKind::Tag => "tags",
            RefKind::Remote => "remotes",
        }
    }

    /// The `parsed_ref` field a template names it by: `branch`, `tag` or `remote`.
    pub fn field(self) -> &'static str {
        match self {
            RefKind::Branch => "branch",
            RefKind::Tag => "tag",
            RefKind::Remote => "remote",
        }
    }
}

/// A parsed ref; `name` keeps its slashes (`feature/x`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedRef {
    /// Branch, tag or remote.
    pub kind: RefKind,
    /// The name after `refs/<kind>/`, never empty.
    pub name: String,
}

impl ParsedRef {
    /// Parse `refs/heads/x`, `refs/tags/x` or `refs/remotes/x`; anything else is `None`.
    pub fn parse(full: &str) -> Option<ParsedRef> {
        let rest = full.strip_prefix("refs/")?;
        let (kind, name) = rest.split_once('/')?;
        let kind = match kind {
            "heads" => RefKind::Branch,
            "tags" => RefKind::Tag,
            "remotes" => RefKind::Remote,
            _ => return None,
        };
        if name.is_empty() {
            return None;
        }
        Some(ParsedRef {
            kind,
            name: name.to_owned(),
        })
    }

    /// The string `branchtag_regex` is matched against: `heads/<branch>`, `tags/<tag>` or
    /// `remotes/<remote>` (Quay matches `ref.split("/", 1)[1]`, not the bare name).
    pub fn filter_subject(&self) -> String {
        format!("{}/{}", self.kind.dir(), self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_tags_and_remotes_parse_with_slashes_kept() {
        let b = ParsedRef::parse("refs/heads/feature/x").unwrap();
        assert_eq!((b.kind, b.name.as_str()), (RefKind::Branch, "feature/x"));
        assert_eq!(b.filter_subject(), "heads/feature/x");
        let t = ParsedRef::parse("refs/tags/v1.0").unwrap();
        assert_eq!(
            (t.kind, t.filter_subject()),
            (RefKind::Tag, "tags/v1.0".to_owned())
        );
        let r = ParsedRef::parse("refs/remotes/origin/main").unwrap();
        assert_eq!(r.kind, RefKind::Remote);
    }

    #[test]
    fn anything_else_is_not_a_ref() {
        for bad in [
            "",
            "main",
            "heads/main",
            "refs/heads/",
            "refs/notes/x",
            "refs/heads",
            "refs//main",
            "Refs/heads/main",
        ] {
            assert_eq!(ParsedRef::parse(bad), None, "{bad:?}");
        }
    }
}
