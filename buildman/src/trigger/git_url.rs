//! Clone URLs handed to agents, one set of rules for `POST .../build/` git sources and for build
//! triggers: the transports each accepts, paths on the build host, credentials in the userinfo,
//! how a URL is shown in messages, and the web page of a provider trigger's repository.
//!
//! Hand-written rather than with `url::Url`: git's scp-like form (`user@host:path`) is not a URL,
//! and the checks are about the text git will be given, not a normalised form of it.

/// Transports of a trigger's clone URL. Plain `http://` is refused: the clone would be
/// unauthenticated and unencrypted, and a trigger clones with its deploy key over ssh.
pub const TRIGGER_SCHEMES: &[&str] = &["https", "ssh", "file"];

/// Transports of a `POST .../build/` git source (public sources need no key).
pub const BUILD_SCHEMES: &[&str] = &["https", "http", "ssh", "git", "file"];

/// What is wrong with a clone URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Not a form git takes safely, or a transport not in the allowed list.
    Shape,
    /// A path on the build host, and local sources are not allowed.
    Local,
    /// The userinfo has a password (`https://user:token@host/...`).
    Password,
}

/// Whether `url` names the build host's filesystem.
pub fn is_local(url: &str) -> bool {
    url.starts_with('/') || url.starts_with("file://")
}

/// Whether `url` has one of `schemes` (or is a path / scp-like form when those are allowed:
/// paths with "file", scp-like with "ssh"). Refused always: option-like values (`-u...`),
/// whitespace and control characters, and git's remote-helper syntax (`ext::<command>` would run
/// a command).
pub fn shape_ok(url: &str, schemes: &[&str]) -> bool {
    if url.is_empty() || url.len() > 2048 || url.starts_with('-') || url.contains("::") {
        return false;
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return false;
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        return schemes.contains(&scheme) && !rest.is_empty();
    }
    if url.starts_with('/') {
        return schemes.contains(&"file");
    }
    // scp-like `user@host:path` (git's rule: a colon before any slash).
    schemes.contains(&"ssh")
        && matches!(url.split_once(':'),
            Some((host, path)) if !host.is_empty() && !host.contains('/') && !path.is_empty())
}

/// The userinfo of a `scheme://` URL (before the last '@' of the authority), if any.
fn userinfo(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.rsplit_once('@').map(|(info, _)| info)
}

/// Whether the URL carries a password in its userinfo.
pub fn has_password(url: &str) -> bool {
    userinfo(url).is_some_and(|info| info.contains(':'))
}

/// Check `url` against `schemes`, credentials and (unless `allow_local`) local paths.
pub fn check(url: &str, schemes: &[&str], allow_local: bool) -> Result<(), Problem> {
    if !shape_ok(url, schemes) {
        return Err(Problem::Shape);
    }
    if has_password(url) {
        return Err(Problem::Password);
    }
    if is_local(url) && !allow_local {
        return Err(Problem::Local);
    }
    Ok(())
}

/// `url` as it may appear in a message or log line: a `scheme://` URL without its userinfo
/// (which may be a token even without a password: `https://<token>@host/...`).
pub fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{tail}")
}

/// The host (and for https its port) a web page of the repository is served from, when `url`
/// is an ssh, scp-like or https URL.
pub fn web_host(url: &str) -> Option<String> {
    let host = if let Some((scheme, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        match scheme {
            "https" => host_port.to_owned(),
            // An ssh port is not the web server's.
            "ssh" => strip_port(host_port).to_owned(),
            _ => return None,
        }
    } else if url.starts_with('/') {
        return None;
    } else {
        let (user_host, _) = url.split_once(':')?;
        user_host
            .rsplit_once('@')
            .map_or(user_host, |(_, h)| h)
            .to_owned()
    };
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    ok.then_some(host)
}

fn strip_port(host_port: &str) -> &str {
    if host_port.starts_with('[') {
        // [v6]:port
        return host_port
            .split_once(']')
            .map_or(host_port, |(h, _)| &host_port[..=h.len()]);
    }
    host_port.split_once(':').map_or(host_port, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_paths_and_passwords() {
        for ok in [
            "ssh://git@h/a.git",
            "git@github.com:a/b.git",
            "https://h/a.git",
        ] {
            assert_eq!(check(ok, TRIGGER_SCHEMES, false), Ok(()), "{ok}");
        }
        for local in ["/srv/r.git", "file:///srv/r.git"] {
            assert_eq!(check(local, TRIGGER_SCHEMES, false), Err(Problem::Local));
            assert_eq!(check(local, TRIGGER_SCHEMES, true), Ok(()));
        }
        for bad in ["", "-uevil", "ext::sh -c x", "ftp://h/r", "rel/path", "a b"] {
            assert_eq!(
                check(bad, BUILD_SCHEMES, true),
                Err(Problem::Shape),
                "{bad}"
            );
        }
        for plain in ["http://h/r.git", "git://h/r"] {
            assert_eq!(check(plain, TRIGGER_SCHEMES, true), Err(Problem::Shape));
            assert_eq!(check(plain, BUILD_SCHEMES, true), Ok(()));
        }
        let with_password = "https://user:tok3n@h/r.git";
        assert_eq!(
            check(with_password, TRIGGER_SCHEMES, true),
            Err(Problem::Password)
        );
        assert!(!has_password("ssh://git@h:22/r"));
        assert!(!has_password("https://h/a:b@c"), "an '@' in the path");
        assert_eq!(shown(with_password), "https://h/r.git");
        assert_eq!(shown("https://tok3n@h/x?y"), "https://h/x?y");
        assert_eq!(shown("git@h:a/b.git"), "git@h:a/b.git");
    }

    #[test]
    fn web_hosts_of_clone_urls() {
        assert_eq!(
            web_host("git@ghe.corp:a/b.git").as_deref(),
            Some("ghe.corp")
        );
        assert_eq!(
            web_host("ssh://git@127.0.0.1:2222/srv/a.git").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            web_host("https://u@git.example:8443/a/b").as_deref(),
            Some("git.example:8443")
        );
        assert_eq!(web_host("ssh://[::1]:22/a").as_deref(), Some("[::1]"));
        assert_eq!(web_host("/srv/a.git"), None);
        assert_eq!(web_host("file:///srv/a.git"), None);
    }
}
