//! Manifest parsing and validation for `PUT /v2/<name>/manifests/<reference>`.
//!
//! We parse with our own small serde structs rather than `oci-spec`'s types because:
//! - the registry stores and serves the client's exact bytes, so we only need the few fields that
//!   drive validation and metadata (descriptors, subject, artifact type, annotations);
//! - the Docker schema2 manifest and manifest list share the OCI shapes but use other media types,
//!   which `oci-spec`'s strict enums do not model as first-class manifests;
//! - unknown fields (Docker's `platform.features`, future spec additions) must be tolerated, not
//!   rejected, so pushes from newer clients keep working.

use serde::Deserialize;

use crate::digest::{Digest, DigestError};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The body is not JSON of the expected shape.
    #[error("manifest is not valid {media_type} JSON")]
    Json {
        /// The media type it was parsed as.
        media_type: &'static str,
        /// The cause, naming the field.
        #[source]
        source: serde_json::Error,
    },
    /// Neither the `Content-Type` nor the body names a supported manifest type.
    #[error(
        "unsupported manifest media type {media_type:?} (supported: OCI image manifest and index, Docker schema2 manifest and manifest list)"
    )]
    UnsupportedMediaType {
        /// The media type found.
        media_type: String,
    },
    /// The body's `mediaType` contradicts the `Content-Type` header.
    #[error("manifest mediaType {body:?} does not match Content-Type {header:?}")]
    MediaTypeMismatch {
        /// From the `Content-Type` header.
        header: String,
        /// From the body.
        body: String,
    },
    /// `schemaVersion` is not 2.
    #[error("manifest schemaVersion {found} is not supported (expected 2)")]
    SchemaVersion {
        /// The version found.
        found: u64,
    },
    /// A descriptor's digest is malformed.
    #[error("descriptor digest {digest:?} is invalid")]
    Digest {
        /// The digest string.
        digest: String,
        /// The cause.
        #[source]
        source: DigestError,
    },
}

/// Whether a manifest is an image (config + layers) or an index (child manifests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    /// OCI image manifest or Docker schema2 manifest.
    Image,
    /// OCI image index or Docker manifest list.
    Index,
}

/// A descriptor as written in a manifest (wire type).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content (validated after parsing).
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Artifact type, when the content is an artifact manifest.
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
    /// Alternative download locations (foreign/non-distributable layers).
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

// The fields shared by manifests and indexes; the kind-specific ones (`config`/`layers`,
// `manifests`) are parsed by `Image`/`Index` once the media type is known.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireManifest {
    schema_version: u64,
    #[serde(default)]
    media_type: Option<String>,
    // Only its presence matters here (to infer an index); the entries are parsed by `Index`.
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    subject: Option<Descriptor>,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct Image {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

/// What the registry needs to know about a pushed manifest (domain type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedManifest {
    /// The resolved media type (stored and served as `Content-Type`).
    pub media_type: &'static str,
    /// Image or index.
    pub kind: ManifestKind,
    /// Config and layer blobs that must be present in the repository.
    pub blobs: Vec<Digest>,
    /// Child manifests (indexes) that must be present in the repository.
    pub children: Vec<Digest>,
    /// The `subject` manifest, if any (may be absent from the registry).
    pub subject: Option<Digest>,
    /// `artifactType`, else the config media type for images.
    pub artifact_type: Option<String>,
    /// The config media type (images only).
    pub config_media_type: Option<String>,
    /// The manifest's annotations as a JSON object string, if it has any.
    pub annotations: Option<String>,
}

fn known(media_type: &str) -> Option<&'static str> {
    [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST]
        .into_iter()
        .find(|k| *k == media_type)
}

fn kind_of(media_type: &str) -> ManifestKind {
    if media_type == OCI_INDEX || media_type == DOCKER_LIST {
        ManifestKind::Index
    } else {
        ManifestKind::Image
    }
}

/// The media type part of a `Content-Type` value (parameters dropped).
pub fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

fn digest_of(d: &Descriptor) -> Result<Digest, ManifestError> {
    d.digest.parse().map_err(|source| ManifestError::Digest {
        digest: d.digest.clone(),
        source,
    })
}

fn resolve_media_type(
    content_type: Option<&str>,
    wire: &WireManifest,
) -> Result<&'static str, ManifestError> {
    let header = content_type.map(essence).filter(|h| !h.is_empty());
    let body = wire.media_type.as_deref();
    if let (Some(h), Some(b)) = (header.and_then(known), body)
        && h != b
    {
        return Err(ManifestError::MediaTypeMismatch {
            header: h.to_owned(),
            body: b.to_owned(),
        });
    }
    if let Some(h) = header.and_then(known) {
        return Ok(h);
    }
    if let Some(b) = body {
        return known(b).ok_or_else(|| ManifestError::UnsupportedMediaType {
            media_type: b.to_owned(),
        });
    }
    // Neither names a type we know: infer OCI from the shape (mediaType is only a SHOULD in OCI),
    // unless the header names something else explicitly.
    match header {
        Some(h) if h != "application/json" => Err(ManifestError::UnsupportedMediaType {
            media_type: h.to_owned(),
        }),
        _ if wire.manifests.is_some() => Ok(OCI_INDEX),
        _ => Ok(OCI_MANIFEST),
    }
}

/// Parse and validate a pushed manifest. `content_type` is the request's `Content-Type` header.
pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<ParsedManifest, ManifestError> {
    let json_err = |media_type, source| ManifestError::Json { media_type, source };
    let wire: WireManifest = serde_json::from_slice(bytes).map_err(|e| json_err("manifest", e))?;
    if wire.schema_version != 2 {
        return Err(ManifestError::SchemaVersion {
            found: wire.schema_version,
        });
    }
    let media_type = resolve_media_type(content_type, &wire)?;
    let kind = kind_of(media_type);
    let subject = wire.subject.as_ref().map(digest_of).transpose()?;
    let annotations = wire
        .annotations
        .as_ref()
        .filter(|a| !a.is_empty())
        .map(|a| serde_json::Value::Object(a.clone()).to_string());
    let mut parsed = ParsedManifest {
        media_type,
        kind,
        blobs: Vec::new(),
        children: Vec::new(),
        subject,
        artifact_type: wire.artifact_type.clone(),
        config_media_type: None,
        annotations,
    };
    match kind {
        ManifestKind::Image => {
            // Re-parse the required fields strictly so a missing `config`/`layers` names itself.
            let image: Image =
                serde_json::from_slice(bytes).map_err(|e| json_err(media_type, e))?;
            parsed.blobs.push(digest_of(&image.config)?);
            for layer in &image.layers {
                let d = digest_of(layer)?;
                // Foreign (non-distributable) layers live at their `urls`, not in the registry.
                if layer.urls.as_ref().is_none_or(|u| u.is_empty()) {
                    parsed.blobs.push(d);
                }
            }
            parsed.blobs.sort();
            parsed.blobs.dedup();
            if parsed.artifact_type.is_none() {
                parsed.artifact_type = Some(image.config.media_type.clone());
            }
            parsed.config_media_type = Some(image.config.media_type);
        }
        ManifestKind::Index => {
            let index: Index =
                serde_json::from_slice(bytes).map_err(|e| json_err(media_type, e))?;
            for child in &index.manifests {
                parsed.children.push(digest_of(child)?);
            }
            parsed.children.sort();
            parsed.children.dedup();
        }
    }
    Ok(parsed)
}

/// The `manifests` descriptors of a stored index (for referrers-tag-schema indexes).
pub fn index_descriptors(bytes: &[u8]) -> Result<Vec<Descriptor>, ManifestError> {
    let index: Index = serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
        media_type: OCI_INDEX,
        source,
    })?;
    Ok(index.manifests)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{D2}","size":3,"future":1}}]{extra}}}"#
        )
    }

    #[test]
    fn image_manifest_yields_blobs_and_artifact_type_from_config() {
        let p = parse(Some(OCI_MANIFEST), image("").as_bytes()).unwrap();
        assert_eq!(p.kind, ManifestKind::Image);
        assert_eq!(p.blobs.len(), 2);
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert_eq!(p.subject, None);
    }

    #[test]
    fn subject_annotations_and_artifact_type_are_kept() {
        let body = image(&format!(
            r#","artifactType":"application/x-sig","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":9}},"annotations":{{"a":"b"}}"#
        ));
        let p = parse(None, body.as_bytes()).unwrap();
        assert_eq!(p.subject.unwrap().to_string(), D1);
        assert_eq!(p.artifact_type.as_deref(), Some("application/x-sig"));
        assert_eq!(p.annotations.as_deref(), Some(r#"{"a":"b"}"#));
    }

    #[test]
    fn media_type_is_inferred_and_checked() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1}}]}}"#
        );
        let p = parse(Some("application/json"), body.as_bytes()).unwrap();
        assert_eq!(p.media_type, OCI_INDEX);
        assert_eq!(p.children.len(), 1);
        let err = parse(Some(DOCKER_MANIFEST), image("").as_bytes()).unwrap_err();
        assert!(
            matches!(err, ManifestError::MediaTypeMismatch { .. }),
            "{err}"
        );
        let err = parse(Some("text/plain"), body.as_bytes()).unwrap_err();
        assert!(matches!(err, ManifestError::UnsupportedMediaType { .. }));
    }

    #[test]
    fn malformed_manifests_are_refused_with_a_reason() {
        assert!(parse(None, b"not json").is_err());
        let v1 = r#"{"schemaVersion":1}"#;
        assert!(matches!(
            parse(None, v1.as_bytes()),
            Err(ManifestError::SchemaVersion { found: 1 })
        ));
        let no_config =
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[]}}"#);
        let err = parse(None, no_config.as_bytes()).unwrap_err();
        let chain = format!("{:?}", std::error::Error::source(&err));
        assert!(chain.contains("config"), "{chain}");
        let bad_digest = image("").replace(D2, "sha256:xyz");
        assert!(matches!(
            parse(None, bad_digest.as_bytes()),
            Err(ManifestError::Digest { .. })
        ));
    }

    #[test]
    fn foreign_layers_are_not_required() {
        let body = image("").replace(r#""future":1"#, r#""urls":["https://example.com/l"]"#);
        let p = parse(None, body.as_bytes()).unwrap();
        assert_eq!(p.blobs.len(), 1);
    }

    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    fn media_type() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => prop::sample::select(vec![
                OCI_MANIFEST,
                OCI_INDEX,
                DOCKER_MANIFEST,
                DOCKER_LIST,
                "application/json",
                "application/vnd.oci.image.config.v1+json",
                "",
            ])
            .prop_map(str::to_owned),
            1 => any::<String>(),
        ]
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            prop::num::f64::NORMAL.prop_map(Value::from),
            Just(json!(2)),
            any::<String>().prop_map(Value::from),
            media_type().prop_map(Value::from),
            "sha(256|512):[0-9a-f]{64}".prop_map(Value::from),
        ]
    }

    /// Arbitrary JSON trees.
    fn json_value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Something close to a descriptor: each field present or not, valid or any JSON.
    fn descriptor() -> impl Strategy<Value = Value> {
        let field = |valid: BoxedStrategy<Value>| {
            prop::option::weighted(0.95, prop_oneof![30 => valid, 1 => json_value()])
        };
        (
            field(media_type().prop_map(Value::from).boxed()),
            field(
                prop_oneof![
                    6 => "sha256:[0-9a-f]{64}",
                    1 => "sha512:[0-9a-f]{128}",
                    1 => "sha256:[0-9a-z]{0,66}",
                ]
                .prop_map(Value::from)
                .boxed(),
            ),
            field(any::<u64>().prop_map(Value::from).boxed()),
            field(
                prop::collection::vec(any::<String>(), 0..3)
                    .prop_map(|v| json!(v))
                    .boxed(),
            ),
            field(
                prop::collection::btree_map(any::<String>(), any::<String>(), 0..3)
                    .prop_map(|m| json!(m))
                    .boxed(),
            ),
        )
            .prop_map(|(mt, digest, size, urls, annotations)| {
                let mut m = Map::new();
                for (k, v) in [
                    ("mediaType", mt),
                    ("digest", digest),
                    ("size", size),
                    ("urls", urls),
                    ("annotations", annotations),
                ] {
                    if let Some(v) = v {
                        m.insert(k.to_owned(), v);
                    }
                }
                Value::Object(m)
            })
    }

    /// Something close to an image manifest or index, so parsing gets past the first checks.
    fn manifestish() -> impl Strategy<Value = Value> {
        let descriptors = || prop::collection::vec(descriptor(), 0..4).prop_map(Value::Array);
        (
            prop::option::weighted(0.95, prop_oneof![8 => Just(json!(2)), 1 => json_value()]),
            prop::option::of(media_type().prop_map(Value::from)),
            prop::option::weighted(0.9, descriptor()),
            prop::option::weighted(0.8, descriptors()),
            prop::option::of(descriptors()),
            prop::option::of(descriptor()),
            prop::option::of(prop_oneof![
                8 => media_type().prop_map(Value::from),
                1 => json_value(),
            ]),
            prop::option::of(prop_oneof![
                8 => prop::collection::btree_map(any::<String>(), json_value(), 0..3)
                    .prop_map(|m| json!(m)),
                1 => json_value(),
            ]),
        )
            .prop_map(
                |(sv, mt, config, layers, manifests, subject, artifact, annotations)| {
                    let mut m = Map::new();
                    for (k, v) in [
                        ("schemaVersion", sv),
                        ("mediaType", mt),
                        ("config", config),
                        ("layers", layers),
                        ("manifests", manifests),
                        ("subject", subject),
                        ("artifactType", artifact),
                        ("annotations", annotations),
                    ] {
                        if let Some(v) = v {
                            m.insert(k.to_owned(), v);
                        }
                    }
                    Value::Object(m)
                },
            )
    }

    fn check_parsed(p: &ParsedManifest) -> Result<(), TestCaseError> {
        prop_assert!(known(p.media_type).is_some());
        prop_assert_eq!(p.kind, kind_of(p.media_type));
        prop_assert!(
            p.blobs.windows(2).all(|w| w[0] < w[1]),
            "blobs sorted and unique"
        );
        prop_assert!(
            p.children.windows(2).all(|w| w[0] < w[1]),
            "children sorted and unique"
        );
        match p.kind {
            ManifestKind::Image => prop_assert!(p.children.is_empty() && !p.blobs.is_empty()),
            ManifestKind::Index => prop_assert!(p.blobs.is_empty()),
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_bytes(
            content_type in prop::option::of(media_type()),
            bytes in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            if let Ok(p) = parse(content_type.as_deref(), &bytes) {
                check_parsed(&p)?;
            }
            let _ = index_descriptors(&bytes);
        }

        #[test]
        fn parse_never_panics_on_json(
            content_type in prop::option::of(media_type()),
            value in json_value(),
        ) {
            let bytes = serde_json::to_vec(&value).unwrap();
            if let Ok(p) = parse(content_type.as_deref(), &bytes) {
                check_parsed(&p)?;
            }
            let _ = index_descriptors(&bytes);
        }

        #[test]
        fn parse_never_panics_on_manifest_shaped_json(
            content_type in prop::option::of(media_type()),
            value in manifestish(),
        ) {
            let bytes = serde_json::to_vec(&value).unwrap();
            if let Ok(p) = parse(content_type.as_deref(), &bytes) {
                check_parsed(&p)?;
                prop_assert_eq!(&value["schemaVersion"], &json!(2));
            }
            let _ = index_descriptors(&bytes);
        }
    }
}
