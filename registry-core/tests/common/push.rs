//! Push and pull helpers on [`Client`]: the four blob upload styles, manifests, images, and a
//! blob GET that checks every returned byte against the requested digest.

use bytes::Bytes;
use reqwest::Method;
use sha2::{Digest as _, Sha256, Sha512};

use super::client::{Client, Resp};
use super::image::Image;

/// Media types sent in `Accept` on manifest GET/HEAD: everything we push.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// `sha512:<hex>` of `data`.
pub fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(Sha512::digest(data)))
}

/// The digest of `data` with the algorithm of `like` (`sha256:` or `sha512:`).
pub fn digest_like(like: &str, data: &[u8]) -> String {
    if like.starts_with("sha512:") {
        sha512(data)
    } else {
        sha256(data)
    }
}

/// `size` random bytes.
pub fn random_bytes(size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    rand::Rng::fill(&mut rand::rng(), &mut v[..]);
    v
}

/// A random lowercase suffix for unique names.
pub fn random_suffix() -> String {
    hex::encode(random_bytes(4))
}

/// Append `key=value` to a URL or path that may already carry a query.
pub fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

impl Client {
    /// POST an upload session; asserts 202 and returns the (absolute) Location.
    pub async fn start_upload(&self, repo: &str) -> (String, Resp) {
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                Bytes::new(),
            )
            .await;
        r.expect_status(202, "POST blob upload");
        let loc = self.url(r.must_header("location"));
        (loc, r)
    }

    /// PATCH `data` to an upload, with `Content-Range: start-end` when `start` is given.
    pub async fn patch_chunk(&self, location: &str, data: &[u8], start: Option<u64>) -> Resp {
        let len = data.len().to_string();
        let range = start.map(|s| format!("{s}-{}", s + data.len() as u64 - 1));
        let mut headers = vec![
            ("content-type", "application/octet-stream"),
            ("content-length", len.as_str()),
        ];
        if let Some(r) = &range {
            headers.push(("content-range", r.as_str()));
        }
        self.send(
            Method::PATCH,
            location,
            &headers,
            Bytes::copy_from_slice(data),
        )
        .await
    }

    /// PUT `location?digest=<digest>` with an optional final chunk.
    pub async fn put_upload(&self, location: &str, digest: &str, body: &[u8]) -> Resp {
        let len = body.len().to_string();
        self.send(
            Method::PUT,
            &with_query(location, "digest", digest),
            &[
                ("content-type", "application/octet-stream"),
                ("content-length", len.as_str()),
            ],
            Bytes::copy_from_slice(body),
        )
        .await
    }

    /// Monolithic single POST `?digest=`: asserts 201.
    pub async fn push_blob_monolithic(&self, repo: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let len = data.len().to_string();
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
                &[
                    ("content-type", "application/octet-stream"),
                    ("content-length", len.as_str()),
                ],
                Bytes::copy_from_slice(data),
            )
            .await;
        r.expect_status(201, "monolithic POST ?digest=");
        assert_eq!(
            r.header("docker-content-digest"),
            Some(d.as_str()),
            "{r:#?}"
        );
        d
    }

    /// POST then PUT with the whole blob: asserts 202 then 201.
    pub async fn push_blob_post_put(&self, repo: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let (loc, _) = self.start_upload(repo).await;
        let r = self.put_upload(&loc, &d, data).await;
        r.expect_status(201, "PUT ?digest= with the whole blob");
        assert_eq!(
            r.header("docker-content-digest"),
            Some(d.as_str()),
            "{r:#?}"
        );
        d
    }

    /// POST, PATCH chunks of `chunk` bytes with inclusive `Content-Range` (checking every reply's
    /// `Range`), then PUT without body. Honours `OCI-Chunk-Min-Length`.
    pub async fn push_blob_chunked(&self, repo: &str, data: &[u8], chunk: usize) -> String {
        let d = sha256(data);
        let (mut loc, post) = self.start_upload(repo).await;
        let min: usize = post
            .header("oci-chunk-min-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let chunk = chunk.max(min).max(1);
        let mut offset = 0usize;
        for part in data.chunks(chunk) {
            let r = self.patch_chunk(&loc, part, Some(offset as u64)).await;
            r.expect_status(202, "PATCH chunk");
            offset += part.len();
            assert_eq!(r.range_offset(), offset as u64, "Range after PATCH: {r:#?}");
            loc = self.url(r.must_header("location"));
        }
        let r = self.put_upload(&loc, &d, &[]).await;
        r.expect_status(201, "closing PUT after chunks");
        assert_eq!(
            r.header("docker-content-digest"),
            Some(d.as_str()),
            "{r:#?}"
        );
        d
    }

    /// POST, one PATCH without `Content-Range` streamed with chunked transfer encoding (what
    /// containers/image does), then PUT without body.
    pub async fn push_blob_streamed(&self, repo: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let (loc, _) = self.start_upload(repo).await;
        self.authorize(repo, &[&format!("repository:{repo}:pull,push")])
            .await;
        let pieces: Vec<Result<Bytes, std::io::Error>> = data
            .chunks(64 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(pieces));
        let r = self
            .send_stream(
                Method::PATCH,
                &loc,
                &[("content-type", "application/octet-stream")],
                body,
            )
            .await
            .expect("streamed PATCH");
        r.expect_status(202, "streamed PATCH without Content-Range");
        if !data.is_empty() {
            assert_eq!(r.range_offset(), data.len() as u64, "{r:#?}");
        }
        let loc = self.url(r.must_header("location"));
        let r = self.put_upload(&loc, &d, &[]).await;
        r.expect_status(201, "closing PUT after a streamed PATCH");
        d
    }

    /// GET a blob. On 200 the body must hash to `digest` (and on 206 it must be a slice of
    /// something: callers compare); a registry must never serve other bytes under a digest.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Resp {
        let r = self
            .send(
                Method::GET,
                &format!("/v2/{repo}/blobs/{digest}"),
                &[],
                Bytes::new(),
            )
            .await;
        if r.status.as_u16() == 200 {
            assert_eq!(
                digest_like(digest, &r.body),
                digest,
                "GET blob returned bytes of another digest ({} bytes)",
                r.body.len()
            );
        }
        r
    }

    /// GET a blob that must exist; returns its bytes.
    pub async fn blob_bytes(&self, repo: &str, digest: &str) -> Bytes {
        let r = self.get_blob(repo, digest).await;
        r.expect_status(200, "GET blob");
        r.body
    }

    /// PUT a manifest with its media type as Content-Type.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Resp {
        self.send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", media_type)],
            Bytes::copy_from_slice(bytes),
        )
        .await
    }

    /// GET (or HEAD) a manifest with a broad `Accept`.
    pub async fn fetch_manifest(&self, method: Method, repo: &str, reference: &str) -> Resp {
        self.send(
            method,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("accept", ACCEPT_MANIFESTS)],
            Bytes::new(),
        )
        .await
    }

    /// Push an image's config and layers (monolithic) and its manifest under `reference`;
    /// returns the manifest digest.
    pub async fn push_image(&self, repo: &str, reference: &str, image: &Image) -> String {
        for b in image.blobs() {
            self.push_blob_monolithic(repo, &b.data).await;
        }
        let r = self
            .put_manifest(repo, reference, &image.media_type, &image.manifest)
            .await;
        r.expect_status(201, "PUT manifest");
        assert_eq!(
            r.header("docker-content-digest"),
            Some(image.digest.as_str()),
            "{r:#?}"
        );
        image.digest.clone()
    }
}
