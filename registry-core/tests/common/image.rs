//! Small random images and artifacts for pushing, and real OCI image layouts (tar.gz layers) for
//! the container tools.
//!
//! Manifests are serialised with an unusual 3-space indentation and a trailing newline so that a
//! registry re-serialising them instead of storing the exact bytes is caught.

use std::io::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use super::push::{random_bytes, sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A blob with its digest and the media type it is referenced with.
#[derive(Clone, Debug)]
pub struct Blob {
    pub data: Vec<u8>,
    pub digest: String,
    pub media_type: String,
}

impl Blob {
    pub fn new(media_type: &str, data: Vec<u8>) -> Blob {
        Blob {
            digest: sha256(&data),
            data,
            media_type: media_type.to_owned(),
        }
    }

    /// Its descriptor.
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.data.len()})
    }
}

/// A manifest (image, artifact, index or list) with the blobs it needs.
#[derive(Clone, Debug)]
pub struct Image {
    pub config: Option<Blob>,
    pub layers: Vec<Blob>,
    pub media_type: String,
    pub manifest: Vec<u8>,
    pub digest: String,
}

impl Image {
    /// Build from a manifest JSON value (serialised the odd way, see the module docs).
    pub fn from_value(
        media_type: &str,
        value: &Value,
        config: Option<Blob>,
        layers: Vec<Blob>,
    ) -> Image {
        let manifest = odd_json(value);
        Image {
            digest: sha256(&manifest),
            manifest,
            media_type: media_type.to_owned(),
            config,
            layers,
        }
    }

    /// Config then layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        self.config.iter().chain(self.layers.iter())
    }

    /// Its descriptor, with an optional platform (for indexes).
    pub fn descriptor(&self, platform: Option<(&str, &str)>) -> Value {
        let mut d = json!({"mediaType": self.media_type, "digest": self.digest, "size": self.manifest.len()});
        if let Some((os, arch)) = platform {
            d["platform"] = json!({"os": os, "architecture": arch});
        }
        d
    }
}

/// JSON with 3-space indentation and a trailing newline.
pub fn odd_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    serde::Serialize::serialize(value, &mut ser).expect("serialising JSON");
    out.push(b'\n');
    out
}

fn random_config(media_type: &str) -> Blob {
    let v = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"quarry.test": super::push::random_suffix()}},
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    Blob::new(
        media_type,
        serde_json::to_vec(&v).expect("serialising config"),
    )
}

/// An OCI image manifest with `layers` random layers of `size` bytes.
pub fn random_oci_image(layers: usize, size: usize) -> Image {
    let config = random_config(OCI_CONFIG);
    let layers: Vec<Blob> = (0..layers)
        .map(|_| Blob::new(OCI_LAYER_GZIP, random_bytes(size)))
        .collect();
    let v = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    Image::from_value(OCI_MANIFEST, &v, Some(config), layers)
}

/// A Docker schema 2 manifest with `layers` random layers of `size` bytes.
pub fn random_docker_image(layers: usize, size: usize) -> Image {
    let config = random_config(DOCKER_CONFIG);
    let layers: Vec<Blob> = (0..layers)
        .map(|_| Blob::new(DOCKER_LAYER_GZIP, random_bytes(size)))
        .collect();
    let v = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    Image::from_value(DOCKER_MANIFEST, &v, Some(config), layers)
}

/// An OCI index or Docker manifest list (`media_type`) over `children` (already pushed).
pub fn index_of(media_type: &str, children: &[&Image]) -> Image {
    let arches = ["amd64", "arm64", "s390x", "ppc64le"];
    let manifests: Vec<Value> = children
        .iter()
        .zip(arches.iter().cycle())
        .map(|(c, a)| c.descriptor(Some(("linux", a))))
        .collect();
    let v = json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests});
    Image::from_value(media_type, &v, None, Vec::new())
}

/// An OCI artifact manifest: empty config, one random layer, `artifactType` (when given),
/// `subject` (when given) and annotations.
pub fn artifact(
    artifact_type: Option<&str>,
    subject: Option<&Value>,
    annotations: &[(&str, &str)],
) -> Image {
    let config = Blob::new(OCI_EMPTY, b"{}".to_vec());
    let layer = Blob::new("application/vnd.quarry.test.blob", random_bytes(64));
    let mut v = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    });
    if let Some(t) = artifact_type {
        v["artifactType"] = json!(t);
    }
    if let Some(s) = subject {
        v["subject"] = s.clone();
    }
    if !annotations.is_empty() {
        let map: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, val)| ((*k).to_owned(), json!(val)))
            .collect();
        v["annotations"] = Value::Object(map);
    }
    Image::from_value(OCI_MANIFEST, &v, Some(config), vec![layer])
}

/// A gzip-compressed tar of `files` (path, contents); returns (tar.gz bytes, diff id).
pub fn tar_gz_layer(files: &[(&str, &[u8])]) -> (Vec<u8>, String) {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut h, path, *data)
            .expect("appending to the layer tar");
    }
    let tar = builder.into_inner().expect("finishing the layer tar");
    let diff_id = sha256(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("compressing the layer");
    (gz.finish().expect("finishing gzip"), diff_id)
}

/// A runnable-looking linux/amd64 OCI image with `layers` layers of small random files.
pub fn real_oci_image(layers: usize) -> Image {
    let mut blobs = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..layers {
        let content = random_bytes(4096 + i * 1000);
        let path = format!("quarry/layer-{i}.bin");
        let (gz, diff) = tar_gz_layer(&[(path.as_str(), &content)]);
        blobs.push(Blob::new(OCI_LAYER_GZIP, gz));
        diff_ids.push(diff);
    }
    let cfg = json!({
        "created": "2026-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": (0..layers).map(|i| json!({"created_by": format!("quarry test layer {i}")})).collect::<Vec<_>>(),
    });
    let config = Blob::new(OCI_CONFIG, serde_json::to_vec(&cfg).expect("config json"));
    let v = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": blobs.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    Image::from_value(OCI_MANIFEST, &v, Some(config), blobs)
}

/// Write `image` as an OCI image layout at `dir`, its manifest tagged `tag` in index.json.
pub fn write_oci_layout(dir: &Path, image: &Image, tag: &str) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("creating the layout blobs dir");
    let write_blob = |digest: &str, data: &[u8]| {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        std::fs::write(blobs.join(hex), data).expect("writing a layout blob");
    };
    for b in image.blobs() {
        write_blob(&b.digest, &b.data);
    }
    write_blob(&image.digest, &image.manifest);
    let mut desc = image.descriptor(None);
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc]});
    std::fs::write(dir.join("index.json"), odd_json(&index)).expect("writing index.json");
    std::fs::write(
        dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#.as_slice(),
    )
    .expect("writing oci-layout");
}
