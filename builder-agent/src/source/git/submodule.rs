//! Submodules: resolved like git, fetched with the superproject's key, checked out at the
//! commit the superproject records, recursively.

use git2::{Repository, SubmoduleUpdate};

use super::{Budget, Job, classify};
use crate::source::error::SourceError;
use crate::source::redact_url;

/// Nesting depth of submodules we follow (git itself has no limit; cycles are impossible, but
/// a deliberately deep chain is not a build context anyone needs).
const MAX_SUBMODULE_DEPTH: u32 = 8;

impl Job {
    /// Initialises, fetches and checks out every submodule recorded in the checked-out tree,
    /// recursively, with the same key.
    pub(super) fn submodules(
        &self,
        repo: &Repository,
        parent_url: &str,
        budget: &mut Budget,
        depth: u32,
    ) -> Result<(), SourceError> {
        let subs = repo
            .submodules()
            .map_err(|e| classify(parent_url, repo, "reading .gitmodules", e))?;
        if subs.is_empty() {
            return Ok(());
        }
        if depth >= MAX_SUBMODULE_DEPTH {
            return Err(SourceError::SubmoduleTooDeep {
                url: redact_url(parent_url),
                limit: MAX_SUBMODULE_DEPTH,
            });
        }
        for mut sm in subs {
            let name = String::from_utf8_lossy(sm.name_bytes()).into_owned();
            let path = sm.path().display().to_string();
            if matches!(sm.update_strategy(), SubmoduleUpdate::None) {
                self.say(format!("skipping submodule {path} (update = none)"));
                continue;
            }
            // In .gitmodules but not in the commit's tree: nothing to check out (as git does).
            let Some(oid) = sm.head_id() else {
                continue;
            };
            // Resolved here, not by `git_submodule_init`: libgit2 collapses `file:///a/b` plus
            // `../c` into `file://a/c`. The result goes to .git/config, where `repo_init` reads it.
            let Some(raw_url) = sm
                .opt_url_bytes()
                .map(|u| String::from_utf8_lossy(u).into_owned())
            else {
                self.say(format!(
                    "skipping submodule {path}: it has no url in .gitmodules"
                ));
                continue;
            };
            let sub_url = resolve_submodule_url(parent_url, &raw_url);
            repo.config()
                .and_then(|mut c| c.set_str(&format!("submodule.{name}.url"), &sub_url))
                .map_err(|e| self.local("submodule init", &self.work, e))?;
            // A remote repository must not pull files of the build machine into the context
            // through a file:// or path submodule (git's own default since 2.38.1).
            if !is_local_url(parent_url) && is_local_url(&sub_url) {
                return Err(SourceError::SubmoduleUrlRefused {
                    url: redact_url(parent_url),
                    name,
                    submodule_url: redact_url(&sub_url),
                });
            }
            self.say(format!("submodule {path}: {}", redact_url(&sub_url)));
            let sub = sm
                .repo_init(true)
                .map_err(|e| self.local("submodule init", &self.work, e))?;
            self.fetch_commit(&sub, &sub_url, &oid.to_string(), budget)?;
            self.submodules(&sub, &sub_url, budget, depth + 1)?;
        }
        Ok(())
    }
}

/// A submodule URL as git resolves it: `./x` and `../x` are relative to the superproject's
/// URL (each `../` drops one path component, across `/` or an scp-like `host:`); anything else
/// is used as written.
fn resolve_submodule_url(parent: &str, url: &str) -> String {
    let mut rest = url;
    if !(rest.starts_with("./") || rest.starts_with("../")) {
        return url.to_owned();
    }
    let mut base = parent.trim_end_matches('/').to_owned();
    // The part of `base` that `../` must not eat: `scheme://host` or `user@host:`.
    let floor = match base.find("://") {
        Some(i) => base[i + 3..].find('/').map_or(base.len(), |j| i + 3 + j),
        None => match base.find(':') {
            Some(i) if !base[..i].contains('/') => i + 1,
            _ => 0,
        },
    };
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            rest = r;
            let cut = base[floor..].rfind('/').map_or(floor, |i| floor + i);
            base.truncate(cut);
        } else {
            break;
        }
    }
    if base.is_empty() {
        rest.to_owned()
    } else if base.len() == floor && base.ends_with(':') {
        format!("{base}{rest}")
    } else {
        format!("{base}/{rest}")
    }
}

/// `file://` URLs and paths (anything that is neither `scheme://` nor scp-like `host:path`).
fn is_local_url(url: &str) -> bool {
    if let Some((scheme, _)) = url.split_once("://") {
        return scheme.eq_ignore_ascii_case("file");
    }
    match url.find(':') {
        Some(i) => url[..i].contains('/'),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_urls_are_told_from_remote_ones() {
        for local in ["file:///srv/r.git", "/srv/r", "./r", "../r", "r", "/a/b:c"] {
            assert!(is_local_url(local), "{local}");
        }
        for remote in [
            "https://h/r.git",
            "ssh://git@h/r.git",
            "git@github.com:o/r.git",
            "git://h/r",
        ] {
            assert!(!is_local_url(remote), "{remote}");
        }
    }

    #[test]
    fn relative_submodule_urls_resolve_like_git() {
        let cases = [
            ("file:///tmp/x/super", "../sub", "file:///tmp/x/sub"),
            ("/tmp/x/super/", "../sub", "/tmp/x/sub"),
            ("/tmp/x/super", "./sub", "/tmp/x/super/sub"),
            (
                "https://h/org/app.git",
                "../lib.git",
                "https://h/org/lib.git",
            ),
            (
                "https://h/org/app.git",
                "../../other/lib.git",
                "https://h/other/lib.git",
            ),
            (
                "git@github.com:org/app.git",
                "../lib.git",
                "git@github.com:org/lib.git",
            ),
            (
                "git@github.com:app.git",
                "../lib.git",
                "git@github.com:lib.git",
            ),
            (
                "https://h/org/app.git",
                "https://other/lib.git",
                "https://other/lib.git",
            ),
        ];
        for (parent, url, want) in cases {
            assert_eq!(resolve_submodule_url(parent, url), want, "{parent} + {url}");
        }
    }
}
