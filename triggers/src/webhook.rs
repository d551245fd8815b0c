//! One webhook delivery: which provider sent it ([`Service`]), whether it carries the trigger's
//! secret ([`verify`]), and which push it asks for ([`parse`]).
//!
//! Quay checks no provider signature at all (its only secret is the token in the webhook URL);
//! Quarry checks one when the trigger has a webhook secret, with the header each provider uses.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::bitbucket::{self, BitbucketError};
use crate::custom;
use crate::github::{self, GithubError};
use crate::gitlab::{self, GitlabError};
use crate::metadata::Push;

/// The provider a trigger is for (Quay's `service` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// `github`
    Github,
    /// `gitlab`
    Gitlab,
    /// `bitbucket` (Bitbucket Cloud)
    Bitbucket,
    /// `custom-git`: any git server, with Quay's custom JSON body
    CustomGit,
}

impl Service {
    /// Every service, in the order their names are listed in errors.
    pub const ALL: [Service; 4] = [
        Service::Github,
        Service::Gitlab,
        Service::Bitbucket,
        Service::CustomGit,
    ];

    /// The name stored in the trigger's `service` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Github => "github",
            Service::Gitlab => "gitlab",
            Service::Bitbucket => "bitbucket",
            Service::CustomGit => "custom-git",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service name that is none of the four.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown trigger service {given:?}: use one of github, gitlab, bitbucket, custom-git")]
pub struct UnknownService {
    /// The name as given.
    pub given: String,
}

impl FromStr for Service {
    type Err = UnknownService;

    fn from_str(s: &str) -> Result<Service, UnknownService> {
        Service::ALL
            .into_iter()
            .find(|svc| svc.as_str() == s)
            .ok_or_else(|| UnknownService {
                given: s.to_owned(),
            })
    }
}

/// A request's HTTP headers; names are compared case-insensitively.
#[derive(Clone, Debug, Default)]
pub struct Headers {
    pairs: Vec<(String, Vec<u8>)>,
}

impl Headers {
    /// Collect `(name, value)` pairs, in order (a repeated header keeps every value).
    pub fn new<I, K, V>(pairs: I) -> Headers
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<[u8]>,
    {
        Headers {
            pairs: pairs
                .into_iter()
                .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_vec()))
                .collect(),
        }
    }

    /// The first value of `name` that is valid UTF-8, without surrounding whitespace.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .find_map(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// The first value of `name` as sent, bytes untouched (for a secret compared as is).
    fn raw(&self, name: &str) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Why a delivery's signature was refused; each names the header.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is absent although the trigger has a webhook secret.
    #[error(
        "{header} is missing: this trigger has a webhook secret, configure the same secret in the webhook"
    )]
    Missing {
        /// The header expected.
        header: &'static str,
    },
    /// The header is not in the provider's format.
    #[error("{header} is malformed: {problem}")]
    Malformed {
        /// The header.
        header: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The header is well formed but does not match.
    #[error("{header} does not match the body signed with the trigger's secret")]
    Mismatch {
        /// The header.
        header: &'static str,
    },
}

const HUB_SIGNATURE_256: &str = "X-Hub-Signature-256";
const HUB_SIGNATURE: &str = "X-Hub-Signature";
const GITLAB_TOKEN: &str = "X-Gitlab-Token";

/// Check the provider's signature of `body` with the trigger's `secret`, in constant time:
/// GitHub and custom-git `X-Hub-Signature-256: sha256=<hex HMAC-SHA256>`, Bitbucket Cloud
/// `X-Hub-Signature: sha256=<hex HMAC-SHA256>`, GitLab `X-Gitlab-Token: <secret>`. An empty
/// `secret` never verifies (a trigger without a secret must not call this).
pub fn verify(
    service: Service,
    headers: &Headers,
    body: &[u8],
    secret: &[u8],
) -> Result<(), SignatureError> {
    let header = match service {
        Service::Github | Service::CustomGit => HUB_SIGNATURE_256,
        Service::Bitbucket => HUB_SIGNATURE,
        Service::Gitlab => GITLAB_TOKEN,
    };
    if secret.is_empty() {
        return Err(SignatureError::Mismatch { header });
    }
    if service == Service::Gitlab {
        // The raw value: a token is compared byte for byte, never trimmed or decoded.
        let value = headers
            .raw(header)
            .ok_or(SignatureError::Missing { header })?;
        // Digests of equal length, so that neither the comparison time nor an early length check
        // tells how long the secret is.
        let same: bool = Sha256::digest(value).ct_eq(&Sha256::digest(secret)).into();
        return if same {
            Ok(())
        } else {
            Err(SignatureError::Mismatch { header })
        };
    }
    let value = headers
        .get(header)
        .ok_or(SignatureError::Missing { header })?;
    let hex_sig = value
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed {
            header,
            problem: "expected sha256=<hex digest>",
        })?;
    let sig = hex::decode(hex_sig).map_err(|_| SignatureError::Malformed {
        header,
        problem: "the digest after sha256= is not hex",
    })?;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret)
        .map_err(|_| SignatureError::Mismatch { header })?;
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&sig)
        .map_err(|_| SignatureError::Mismatch { header })
}

/// Why a delivery cannot be turned into a push; the message is one sentence naming what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// A GitHub push that is not usable.
    #[error(transparent)]
    Github(#[from] GithubError),
    /// A GitLab push that is not usable.
    #[error(transparent)]
    Gitlab(#[from] GitlabError),
    /// A Bitbucket push that is not usable.
    #[error(transparent)]
    Bitbucket(#[from] BitbucketError),
    /// A form-encoded delivery (`application/x-www-form-urlencoded`) without a usable `payload`.
    #[error(
        "form-encoded body is not usable: {problem}; or set the webhook's content type to application/json"
    )]
    Form {
        /// What is wrong with it.
        problem: String,
    },
    /// A custom-git body that fits neither the custom schema nor a provider's push.
    #[error(
        "custom git webhook body is neither the custom schema ({custom}) nor a GitHub push, Bitbucket repo:push or GitLab push payload"
    )]
    Custom {
        /// Why the custom schema did not fit (kept as text: it is part of this one message).
        custom: String,
    },
    /// The push is for another repository than the trigger builds.
    #[error("payload is for repository {payload}, this trigger builds {trigger}")]
    WrongRepository {
        /// The repository the payload names.
        payload: String,
        /// The trigger's `build_source`.
        trigger: String,
    },
    /// The push names no repository, so it cannot be checked against the trigger's.
    #[error("payload names no repository ({field} is missing), this trigger builds {trigger}")]
    NoRepository {
        /// The field holding the name for this provider.
        field: &'static str,
        /// The trigger's `build_source`.
        trigger: String,
    },
}

/// The JSON of a delivery: the body itself, or for a form-encoded one (GitHub's default hook
/// content type, `application/x-www-form-urlencoded`) its `payload` field, decoded. Signatures
/// are always over the raw body.
fn json_body<'a>(headers: &Headers, body: &'a [u8]) -> Result<Cow<'a, [u8]>, PayloadError> {
    let form = headers.get("Content-Type").is_some_and(|t| {
        let essence = t.split(';').next().unwrap_or_default().trim();
        essence.eq_ignore_ascii_case("application/x-www-form-urlencoded")
    });
    if !form {
        return Ok(Cow::Borrowed(body));
    }
    let fields: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|e| PayloadError::Form {
            problem: e.to_string(),
        })?;
    fields
        .into_iter()
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| Cow::Owned(v.into_bytes()))
        .ok_or_else(|| PayloadError::Form {
            problem: "it has no payload field".into(),
        })
}

/// The push a delivery asks for. `build_source` is the trigger's config `build_source`: for
/// custom-git the clone URL (always used as the metadata's `git_url`, whatever the body says); for
/// GitHub, GitLab and Bitbucket `owner/repo`, which the payload's repository must equal
/// (case-insensitive; empty = not checked), with `git_url` taken from the payload. A
/// form-encoded body (GitHub's other content type) is decoded first.
pub fn parse(
    service: Service,
    headers: &Headers,
    body: &[u8],
    build_source: &str,
) -> Result<Push, PayloadError> {
    let body = json_body(headers, body)?;
    let body = body.as_ref();
    let (push, repository, field) = match service {
        Service::CustomGit => {
            let events = (headers.get("X-GitHub-Event"), headers.get("X-Event-Key"));
            return custom::parse_any(body, build_source, events);
        }
        Service::Github => {
            let (p, r) = github::parse(headers.get("X-GitHub-Event"), body)?;
            (p, r, "repository.full_name")
        }
        Service::Gitlab => {
            let (p, r) = gitlab::parse(body)?;
            (p, r, "project.path_with_namespace")
        }
        Service::Bitbucket => {
            let (p, r) = bitbucket::parse(headers.get("X-Event-Key"), body)?;
            (p, r, "repository.full_name")
        }
    };
    // A skip builds nothing, so only a push to build is held to the trigger's repository.
    if build_source.is_empty() || matches!(push, Push::Skip(_)) {
        return Ok(push);
    }
    match repository {
        Some(name) if name.eq_ignore_ascii_case(build_source) => Ok(push),
        Some(name) => Err(PayloadError::WrongRepository {
            payload: name,
            trigger: build_source.to_owned(),
        }),
        None => Err(PayloadError::NoRepository {
            field,
            trigger: build_source.to_owned(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-secret";

    fn signed(header: &str, body: &[u8], secret: &[u8]) -> Headers {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        let sig = hex::encode(mac.finalize().into_bytes());
        Headers::new([(header, format!("sha256={sig}"))])
    }

    #[test]
    fn services_round_trip_and_unknown_names_list_the_four() {
        for svc in Service::ALL {
            assert_eq!(svc.as_str().parse::<Service>().unwrap(), svc);
        }
        let e = "GitHub".parse::<Service>().unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown trigger service \"GitHub\": use one of github, gitlab, bitbucket, custom-git"
        );
    }

    #[test]
    fn headers_are_case_insensitive_and_skip_non_utf8_values() {
        let h = Headers::new([
            ("x-github-event", b"\xff".as_slice()),
            ("X-GitHub-Event", b" push "),
        ]);
        assert_eq!(h.get("X-GITHUB-EVENT"), Some("push"));
        assert_eq!(h.get("X-Event-Key"), None);
    }

    #[test]
    fn hmac_signatures_are_checked_per_provider_header() {
        let body = br#"{"a": 1}"#;
        for (svc, header) in [
            (Service::Github, HUB_SIGNATURE_256),
            (Service::CustomGit, HUB_SIGNATURE_256),
            (Service::Bitbucket, HUB_SIGNATURE),
        ] {
            let good = signed(header, body, SECRET);
            assert_eq!(verify(svc, &good, body, SECRET), Ok(()), "{svc}");
            assert_eq!(
                verify(svc, &good, b"{\"a\": 2}", SECRET),
                Err(SignatureError::Mismatch { header })
            );
            assert_eq!(
                verify(svc, &signed(header, body, b"another secret"), body, SECRET),
                Err(SignatureError::Mismatch { header })
            );
            assert_eq!(
                verify(svc, &Headers::default(), body, SECRET),
                Err(SignatureError::Missing { header })
            );
            assert_eq!(
                verify(svc, &good, body, b""),
                Err(SignatureError::Mismatch { header })
            );
            assert_eq!(
                verify(svc, &Headers::default(), body, b""),
                Err(SignatureError::Mismatch { header }),
                "an empty secret is refused before the header is looked at"
            );
        }
        // GitHub's legacy SHA-1 header alone is not accepted for GitHub.
        let sha1_only = signed(HUB_SIGNATURE, body, SECRET);
        assert!(matches!(
            verify(Service::Github, &sha1_only, body, SECRET),
            Err(SignatureError::Missing { .. })
        ));
        for (value, problem) in [
            ("sha1=abcd", "expected sha256=<hex digest>"),
            ("sha256=xyz", "the digest after sha256= is not hex"),
        ] {
            let h = Headers::new([(HUB_SIGNATURE_256, value)]);
            let e = verify(Service::Github, &h, body, SECRET).unwrap_err();
            assert_eq!(
                e,
                SignatureError::Malformed {
                    header: HUB_SIGNATURE_256,
                    problem
                }
            );
        }
        let e = verify(
            Service::Github,
            &signed(HUB_SIGNATURE_256, b"x", SECRET),
            body,
            SECRET,
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "X-Hub-Signature-256 does not match the body signed with the trigger's secret"
        );
    }

    #[test]
    fn gitlab_sends_the_secret_itself() {
        let ok = Headers::new([("x-gitlab-token", SECRET)]);
        assert_eq!(verify(Service::Gitlab, &ok, b"{}", SECRET), Ok(()));
        let mismatch = Err(SignatureError::Mismatch {
            header: GITLAB_TOKEN,
        });
        let prefix = Headers::new([("X-Gitlab-Token", &SECRET[..10])]);
        assert_eq!(verify(Service::Gitlab, &prefix, b"{}", SECRET), mismatch);
        // The raw value is compared: surrounding spaces are not the secret.
        let mut padded = b" ".to_vec();
        padded.extend_from_slice(SECRET);
        let padded = Headers::new([("X-Gitlab-Token", padded)]);
        assert_eq!(verify(Service::Gitlab, &padded, b"{}", SECRET), mismatch);
        assert_eq!(
            verify(Service::Gitlab, &Headers::default(), b"{}", b""),
            mismatch
        );
    }

    #[test]
    fn a_form_encoded_github_delivery_is_decoded() {
        let form = format!(
            "payload={}",
            GITHUB_PUSH
                .bytes()
                .map(|b| format!("%{b:02X}"))
                .collect::<String>()
        );
        let h = Headers::new([
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-GitHub-Event", "push"),
        ]);
        let Push::Build(m) = parse(Service::Github, &h, form.as_bytes(), "acme/app").unwrap()
        else {
            panic!("skipped");
        };
        assert_eq!(m.commit, "1c002dd4b536e7479fe34593e72e6c6c1819e53b");
        let e = parse(Service::Github, &h, b"other=1", "").unwrap_err();
        assert_eq!(
            e.to_string(),
            "form-encoded body is not usable: it has no payload field; or set the webhook's \
             content type to application/json"
        );
        // As JSON, the same form body is not a payload.
        let json = Headers::new([("Content-Type", "application/json")]);
        assert!(parse(Service::Github, &json, form.as_bytes(), "").is_err());
    }

    pub(crate) const GITHUB_PUSH: &str = r#"{"ref": "refs/heads/main",
        "head_commit": {"id": "1c002dd4b536e7479fe34593e72e6c6c1819e53b", "message": "m"},
        "repository": {"full_name": "Acme/App", "ssh_url": "git@github.com:Acme/App.git"}}"#;

    #[test]
    fn provider_pushes_must_be_for_the_triggers_repository() {
        let h = Headers::default();
        let body = GITHUB_PUSH.as_bytes();
        for source in ["acme/app", ""] {
            let Push::Build(m) = parse(Service::Github, &h, body, source).unwrap() else {
                panic!("skipped");
            };
            assert_eq!(m.git_url, "git@github.com:Acme/App.git");
        }
        let e = parse(Service::Github, &h, body, "acme/other").unwrap_err();
        assert_eq!(
            e.to_string(),
            "payload is for repository Acme/App, this trigger builds acme/other"
        );
        let nameless = GITHUB_PUSH.replace(r#""full_name": "Acme/App", "#, "");
        let e = parse(Service::Github, &h, nameless.as_bytes(), "acme/app").unwrap_err();
        assert!(matches!(
            e,
            PayloadError::NoRepository {
                field: "repository.full_name",
                ..
            }
        ));
        // A ping builds nothing, whatever repository it is for.
        let ping = Headers::new([("X-GitHub-Event", "ping")]);
        assert!(matches!(
            parse(Service::Github, &ping, b"{}", "acme/other"),
            Ok(Push::Skip(_))
        ));
    }
}
