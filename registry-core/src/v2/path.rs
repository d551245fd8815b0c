//! Parsing the tail of a `/v2/<name>/<kind>` path.
//!
//! axum cannot match a name containing `/` followed by fixed suffixes, so `/v2/{*rest}` catches
//! everything and this module splits `rest` from the end: digests, tags and upload ids never
//! contain `/`, so the last one or two segments decide the kind and everything before them is the
//! repository name. A name may itself contain `blobs` or `manifests` components.

use http::StatusCode;

use crate::digest::Digest;
use crate::error::{ApiError, ErrorCode};
use crate::names::{Reference, RepoName};

/// What a `/v2/<name>/...` path addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `blobs/<digest>`
    Blob(Digest),
    /// `blobs/uploads/`
    UploadStart,
    /// `blobs/uploads/<uuid>`
    Upload(uuid::Uuid),
    /// `manifests/<tag or digest>`
    Manifest(Reference),
    /// `tags/list`
    TagsList,
    /// `referrers/<digest>`
    Referrers(Digest),
}

/// A parsed `/v2/` path: the repository and what in it is addressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) name: RepoName,
    pub(crate) kind: Kind,
}

fn not_found(rest: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::Unsupported,
        format!("no distribution API endpoint at /v2/{rest}"),
    )
}

fn name(raw: &str) -> Result<RepoName, ApiError> {
    raw.parse().map_err(|e: crate::names::NameError| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::NameInvalid,
            e.to_string(),
        )
    })
}

fn digest(raw: &str) -> Result<Digest, ApiError> {
    raw.parse().map_err(|e: crate::digest::DigestError| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::DigestInvalid,
            e.to_string(),
        )
    })
}

/// Split `rest` (the path after `/v2/`) into a [`Target`].
///
/// Unknown shapes (including `auth`, which belongs to the token endpoint) are 404; a known shape
/// with an invalid name is 400 NAME_INVALID, with an invalid digest 400 DIGEST_INVALID, with an
/// invalid tag 400 MANIFEST_INVALID, with a malformed upload id 404 BLOB_UPLOAD_UNKNOWN.
pub(crate) fn parse(rest: &str) -> Result<Target, ApiError> {
    let (head, last) = rest.rsplit_once('/').ok_or_else(|| not_found(rest))?;
    // `.../blobs/uploads/` (trailing slash, the spec's form) and `.../blobs/uploads`
    if last.is_empty() || last == "uploads" {
        let base = if last.is_empty() { head } else { rest };
        if let Some(n) = base.strip_suffix("/blobs/uploads") {
            return Ok(Target {
                name: name(n)?,
                kind: Kind::UploadStart,
            });
        }
        if last.is_empty() {
            return Err(not_found(rest));
        }
    }
    let (base, section) = head.rsplit_once('/').ok_or_else(|| not_found(rest))?;
    let kind = match (section, last) {
        ("tags", "list") => Kind::TagsList,
        ("uploads", id) if base.ends_with("/blobs") => {
            let n = base.strip_suffix("/blobs").unwrap_or(base);
            let uuid = uuid::Uuid::parse_str(id).map_err(|_| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    ErrorCode::BlobUploadUnknown,
                    format!("upload {id:?} is unknown"),
                )
            })?;
            return Ok(Target {
                name: name(n)?,
                kind: Kind::Upload(uuid),
            });
        }
        ("blobs", d) => Kind::Blob(digest(d)?),
        ("referrers", d) => Kind::Referrers(digest(d)?),
        ("manifests", r) => {
            let reference = r.parse().map_err(|e: crate::names::NameError| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::ManifestInvalid,
                    e.to_string(),
                )
            })?;
            Kind::Manifest(reference)
        }
        _ => return Err(not_found(rest)),
    };
    Ok(Target {
        name: name(base)?,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn ok(rest: &str) -> (String, Kind) {
        let t = parse(rest).unwrap_or_else(|e| panic!("{rest}: {e}"));
        (t.name.to_string(), t.kind)
    }

    fn code(rest: &str) -> (StatusCode, Option<ErrorCode>) {
        let e = parse(rest).unwrap_err();
        (e.status(), e.code())
    }

    #[test]
    fn parses_every_kind() {
        let d: Digest = D.parse().unwrap();
        let u = uuid::Uuid::new_v4();
        assert_eq!(
            ok(&format!("a/b/blobs/{D}")),
            ("a/b".into(), Kind::Blob(d.clone()))
        );
        assert_eq!(ok("a/b/blobs/uploads/"), ("a/b".into(), Kind::UploadStart));
        assert_eq!(ok("a/b/blobs/uploads"), ("a/b".into(), Kind::UploadStart));
        assert_eq!(
            ok(&format!("a/b/blobs/uploads/{u}")),
            ("a/b".into(), Kind::Upload(u))
        );
        assert_eq!(ok("a/b/c/tags/list"), ("a/b/c".into(), Kind::TagsList));
        assert_eq!(
            ok(&format!("a/b/referrers/{D}")),
            ("a/b".into(), Kind::Referrers(d.clone()))
        );
        assert_eq!(
            ok("a/b/manifests/v1.0"),
            (
                "a/b".into(),
                Kind::Manifest(Reference::Tag("v1.0".parse().unwrap()))
            )
        );
        assert_eq!(
            ok(&format!("a/b/manifests/{D}")),
            ("a/b".into(), Kind::Manifest(Reference::Digest(d)))
        );
    }

    #[test]
    fn names_may_contain_kind_words() {
        assert_eq!(ok("ns/blobs/manifests/latest").0, "ns/blobs");
        assert_eq!(ok("ns/manifests/blobs/uploads/").0, "ns/manifests");
        assert_eq!(ok("ns/tags/tags/list").0, "ns/tags");
        assert_eq!(ok(&format!("ns/uploads/blobs/{D}")).0, "ns/uploads");
    }

    #[test]
    fn refuses_bad_parts_with_the_right_code() {
        assert_eq!(
            code("Bad/Name/tags/list"),
            (StatusCode::BAD_REQUEST, Some(ErrorCode::NameInvalid))
        );
        assert_eq!(
            code("nonamespace/tags/list"),
            (StatusCode::BAD_REQUEST, Some(ErrorCode::NameInvalid))
        );
        assert_eq!(
            code("a/b/blobs/sha256:xyz"),
            (StatusCode::BAD_REQUEST, Some(ErrorCode::DigestInvalid))
        );
        assert_eq!(
            code("a/b/referrers/nope"),
            (StatusCode::BAD_REQUEST, Some(ErrorCode::DigestInvalid))
        );
        assert_eq!(
            code("a/b/manifests/-bad"),
            (StatusCode::BAD_REQUEST, Some(ErrorCode::ManifestInvalid))
        );
        assert_eq!(
            code("a/b/blobs/uploads/not-a-uuid"),
            (StatusCode::NOT_FOUND, Some(ErrorCode::BlobUploadUnknown))
        );
    }

    #[test]
    fn unknown_shapes_and_the_token_endpoint_are_not_ours() {
        for rest in [
            "auth",
            "auth/",
            "a/b",
            "a/b/",
            "a/b/whatever/x",
            "_catalog",
            "a/b/tags/x",
        ] {
            assert_eq!(code(rest).0, StatusCode::NOT_FOUND, "{rest}");
        }
    }

    use proptest::prelude::*;

    /// The canonical path tail of a target (what a client sends).
    fn render(t: &Target) -> String {
        let n = &t.name;
        match &t.kind {
            Kind::Blob(d) => format!("{n}/blobs/{d}"),
            Kind::UploadStart => format!("{n}/blobs/uploads/"),
            Kind::Upload(u) => format!("{n}/blobs/uploads/{u}"),
            Kind::Manifest(r) => format!("{n}/manifests/{r}"),
            Kind::TagsList => format!("{n}/tags/list"),
            Kind::Referrers(d) => format!("{n}/referrers/{d}"),
        }
    }

    /// One path segment: the words the parser looks for, names, digests, upload ids and junk.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "blobs",
                "uploads",
                "manifests",
                "tags",
                "list",
                "referrers",
                "auth",
                "",
                "v2"
            ])
            .prop_map(str::to_owned),
            "[a-z0-9._-]{1,8}",
            "[A-Za-z0-9._:-]{1,8}",
            "sha256:[0-9a-f]{64}",
            "sha256:[0-9a-fA-F]{0,70}",
            any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
            any::<String>(),
        ]
    }

    fn pathy() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 0..8).prop_map(|v| v.join("/"))
    }

    fn valid_target() -> impl Strategy<Value = Target> {
        let name = "[a-z0-9]{1,4}(/(blobs|uploads|manifests|tags|referrers|[a-z0-9]{1,4})){1,3}"
            .prop_map(|n| n.parse::<RepoName>().unwrap());
        let digest = "sha256:[0-9a-f]{64}".prop_map(|d| d.parse::<Digest>().unwrap());
        let kind = prop_oneof![
            digest.clone().prop_map(Kind::Blob),
            Just(Kind::UploadStart),
            any::<u128>().prop_map(|n| Kind::Upload(uuid::Uuid::from_u128(n))),
            "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}"
                .prop_map(|t| Kind::Manifest(Reference::Tag(t.parse().unwrap()))),
            digest
                .clone()
                .prop_map(|d| Kind::Manifest(Reference::Digest(d))),
            Just(Kind::TagsList),
            digest.prop_map(Kind::Referrers),
        ];
        (name, kind).prop_map(|(name, kind)| Target { name, kind })
    }

    proptest! {
        #[test]
        fn parse_never_panics(rest in any::<String>()) {
            let _ = parse(&rest);
        }

        #[test]
        fn accepted_paths_mean_what_their_canonical_form_means(rest in pathy()) {
            // Never panics on path-shaped input either, and whatever it accepts it reads back the
            // same from the canonical form (so no two spellings address different things).
            if let Ok(t) = parse(&rest) {
                let again = parse(&render(&t))
                    .map_err(|e| TestCaseError::fail(format!("{rest:?}: {e}")))?;
                prop_assert_eq!(again, t, "{:?}", rest);
            }
        }

        #[test]
        fn every_target_round_trips(t in valid_target()) {
            let rest = render(&t);
            let parsed = parse(&rest).map_err(|e| TestCaseError::fail(format!("{rest:?}: {e}")))?;
            prop_assert_eq!(parsed, t);
        }
    }
}
