//! Load generator for any registry speaking the OCI distribution API.
//!
//! `cargo run --release -p registry-core --example registry-load -- --url http://127.0.0.1:5000`
//!
//! Scenarios (`--scenario large|small|all`):
//! - `large`: push `--blobs` blobs of `--blob-mib` MiB of random bytes (POST, one streamed PATCH
//!   without `Content-Range` as containers/image does, PUT `?digest=`; or `--upload monolithic`:
//!   POST then PUT with the body), `--large-concurrency` at a time, then GET them all back.
//!   Reports MiB/s each way.
//! - `small`: push `--small-blobs` blobs of `--small-size` bytes (POST + PUT each) and image
//!   manifests referencing them (`--layers-per-manifest`, each with its own config blob), then GET
//!   every manifest and HEAD + GET every blob, `--concurrency` requests in flight. Reports
//!   requests/s each way.
//!
//! With `--user` (password in the environment variable `REGISTRY_LOAD_PASSWORD`, never on argv) it
//! runs the Docker token flow once per repository for `pull,push` and reuses the token; without,
//! it expects an open registry (or anonymous tokens). Progress goes to stderr; one JSON object per
//! scenario goes to stdout for `scripts/bench-registry.sh`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use rand::RngCore as _;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{Body, Client, Method, RequestBuilder, Response, StatusCode, Url};
use sha2::{Digest as _, Sha256};

const MIB: usize = 1 << 20;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[derive(Debug, Parser)]
#[command(about = "Load generator for OCI distribution registries")]
struct Args {
    /// Base URL of the registry, e.g. http://127.0.0.1:5000.
    #[arg(long)]
    url: Url,
    /// User for the token flow; the password comes from env REGISTRY_LOAD_PASSWORD.
    #[arg(long)]
    user: Option<String>,
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,
    /// Namespace of the benchmark repositories (`<ns>/large`, `<ns>/small`).
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// Large scenario: number of blobs.
    #[arg(long, default_value_t = 32)]
    blobs: usize,
    /// Large scenario: size of each blob in MiB.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    blob_mib: u16,
    /// Large scenario: blobs in flight.
    #[arg(long, default_value_t = 4)]
    large_concurrency: usize,
    /// Large scenario: how each blob is uploaded.
    #[arg(long, value_enum, default_value = "stream")]
    upload: UploadMode,
    /// Large scenario: check the sha256 of every blob pulled (costs client CPU).
    #[arg(long)]
    verify: bool,
    /// Small scenario: number of layer blobs.
    #[arg(long, default_value_t = 2000)]
    small_blobs: usize,
    /// Small scenario: size of each blob in bytes (at least 16).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(16..))]
    small_size: u32,
    /// Small scenario: layers per manifest.
    #[arg(long, default_value_t = 10)]
    layers_per_manifest: usize,
    /// Small scenario: requests in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Large,
    Small,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum UploadMode {
    /// POST, one PATCH streaming the whole blob (no Content-Range), PUT ?digest=.
    Stream,
    /// POST, then PUT ?digest= carrying the whole blob.
    Monolithic,
}

/// One repository on the registry, with the bearer token for it (if the registry wants one).
#[derive(Debug)]
struct Repo {
    http: Client,
    base: Url,
    name: String,
    token: Option<String>,
}

fn sha256(chunks: &[Bytes]) -> String {
    let mut h = Sha256::new();
    for c in chunks {
        h.update(c);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Fail with the status and the start of the body unless the response has the expected status.
async fn expect(resp: Response, want: StatusCode, what: &str) -> anyhow::Result<Response> {
    if resp.status() == want {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    bail!(
        "{what}: expected {want}, got {status}: {}",
        body.chars().take(300).collect::<String>()
    )
}

/// The `key="value"` parameters of a `WWW-Authenticate: Bearer ...` challenge. Hand-written
/// because it is ten lines and the only place we parse one; values may hold commas in quotes.
fn challenge_params(value: &str) -> Vec<(String, String)> {
    let rest = value.trim().strip_prefix("Bearer").unwrap_or(value).trim();
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.trim().is_empty() {
            return out;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            val.extend(chars.by_ref().take_while(|c| *c != '"'));
            chars.by_ref().take_while(|c| *c != ',').for_each(drop);
        } else {
            val.extend(chars.by_ref().take_while(|c| *c != ','));
        }
        out.push((key.trim().trim_start_matches(',').trim().to_owned(), val));
    }
}

impl Repo {
    /// Ping `/v2/`; on a 401 challenge, fetch a `pull,push` token for `name` from its realm.
    async fn open(
        http: &Client,
        base: &Url,
        name: &str,
        user: Option<&str>,
    ) -> anyhow::Result<Repo> {
        let resp = http
            .get(base.join("/v2/")?)
            .send()
            .await
            .context("GET /v2/")?;
        let token = match resp.status() {
            StatusCode::OK => None,
            StatusCode::UNAUTHORIZED => {
                let header = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .context("401 from /v2/ without WWW-Authenticate")?;
                let params = challenge_params(header);
                let get = |k: &str| {
                    params
                        .iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                };
                let realm = get("realm").context("challenge without realm")?;
                let mut url = Url::parse(&realm).with_context(|| format!("realm {realm:?}"))?;
                url.query_pairs_mut()
                    .append_pair("service", &get("service").unwrap_or_default())
                    .append_pair("scope", &format!("repository:{name}:pull,push"));
                let mut req = http.get(url);
                if let Some(user) = user {
                    let password = std::env::var("REGISTRY_LOAD_PASSWORD")
                        .context("--user needs the password in env REGISTRY_LOAD_PASSWORD")?;
                    req = req.basic_auth(user, Some(password));
                }
                let resp = expect(req.send().await?, StatusCode::OK, "token request").await?;
                let body: serde_json::Value = resp.json().await.context("token response")?;
                let token = body["token"].as_str().or(body["access_token"].as_str());
                Some(token.context("token response without token")?.to_owned())
            }
            other => bail!("GET /v2/: unexpected status {other}"),
        };
        Ok(Repo {
            http: http.clone(),
            base: base.clone(),
            name: name.to_owned(),
            token,
        })
    }

    fn req(&self, method: Method, url: Url) -> RequestBuilder {
        let req = self.http.request(method, url);
        match &self.token {
            Some(t) => req.header(AUTHORIZATION, format!("Bearer {t}")),
            None => req,
        }
    }

    fn url(&self, tail: &str) -> anyhow::Result<Url> {
        Ok(self.base.join(&format!("/v2/{}/{tail}", self.name))?)
    }

    /// Resolve an upload `Location` (relative or absolute) and optionally add `digest=`.
    fn location(&self, resp: &Response, digest: Option<&str>) -> anyhow::Result<Url> {
        let loc = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok());
        let mut url = self
            .base
            .join(loc.context("upload response without Location")?)?;
        if let Some(d) = digest {
            url.query_pairs_mut().append_pair("digest", d);
        }
        Ok(url)
    }

    async fn start_upload(&self) -> anyhow::Result<Response> {
        let resp = self
            .req(Method::POST, self.url("blobs/uploads/")?)
            .send()
            .await?;
        expect(resp, StatusCode::ACCEPTED, "POST blobs/uploads/").await
    }

    /// POST + PUT with the whole blob in the PUT body (two requests).
    async fn push_monolithic(&self, body: Body, len: usize, digest: &str) -> anyhow::Result<()> {
        let started = self.start_upload().await?;
        let put = self.location(&started, Some(digest))?;
        let resp = self
            .req(Method::PUT, put)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await?;
        expect(resp, StatusCode::CREATED, "PUT upload").await?;
        Ok(())
    }

    /// POST, one PATCH streaming the body with no length or range (containers/image), PUT.
    async fn push_streamed(&self, body: Body, digest: &str) -> anyhow::Result<()> {
        let started = self.start_upload().await?;
        let patch = self.location(&started, None)?;
        let resp = self
            .req(Method::PATCH, patch)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .send()
            .await?;
        let patched = expect(resp, StatusCode::ACCEPTED, "PATCH upload").await?;
        let put = self.location(&patched, Some(digest))?;
        let resp = self
            .req(Method::PUT, put)
            .header(CONTENT_LENGTH, 0)
            .send()
            .await?;
        expect(resp, StatusCode::CREATED, "PUT upload").await?;
        Ok(())
    }

    /// GET a blob, streaming it; returns its length (and checks its digest when `verify`).
    async fn pull_blob(&self, digest: &str, verify: bool) -> anyhow::Result<u64> {
        let resp = self
            .req(Method::GET, self.url(&format!("blobs/{digest}"))?)
            .send()
            .await?;
        let mut resp = expect(resp, StatusCode::OK, "GET blob").await?;
        let (mut len, mut hasher) = (0u64, Sha256::new());
        while let Some(chunk) = resp.chunk().await? {
            len += chunk.len() as u64;
            if verify {
                hasher.update(&chunk);
            }
        }
        if verify {
            let got = format!("sha256:{}", hex::encode(hasher.finalize()));
            ensure!(got == digest, "blob {digest} read back as {got}");
        }
        Ok(len)
    }
}

/// Run `tasks` with at most `limit` in flight; stop at the first error.
async fn run_all<F>(tasks: Vec<F>, limit: usize) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    stream::iter(tasks)
        .buffer_unordered(limit.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rng().fill_bytes(&mut v);
    v
}

async fn large(args: &Args, repo: &Arc<Repo>) -> anyhow::Result<serde_json::Value> {
    let (n, chunks_per_blob) = (args.blobs, usize::from(args.blob_mib));
    // One random pool shared by all blobs; each blob gets its own first MiB (run nonce + index in
    // its first 16 bytes), so every blob is distinct and incompressible without 1 GiB of RAM.
    let pool = Bytes::from(random_bytes(chunks_per_blob * MIB));
    let nonce = random_bytes(8);
    let blobs: Vec<Vec<Bytes>> = (0..n)
        .map(|i| {
            let mut first = pool.slice(..MIB).to_vec();
            first[..8].copy_from_slice(&nonce);
            first[8..16].copy_from_slice(&(i as u64).to_le_bytes());
            std::iter::once(Bytes::from(first))
                .chain((1..chunks_per_blob).map(|k| pool.slice(k * MIB..(k + 1) * MIB)))
                .collect()
        })
        .collect();
    let digests: Vec<String> = blobs.iter().map(|b| sha256(b)).collect();
    let total_mib = (n * chunks_per_blob) as f64;
    eprintln!(
        "large: pushing {n} x {chunks_per_blob} MiB to {} ({:?})",
        repo.name, args.upload
    );

    let t = Instant::now();
    let pushes = blobs.into_iter().zip(&digests).map(|(chunks, digest)| {
        let repo = Arc::clone(repo);
        let mode = args.upload;
        async move {
            let body = Body::wrap_stream(stream::iter(
                chunks.into_iter().map(Ok::<_, std::io::Error>),
            ));
            match mode {
                UploadMode::Stream => repo.push_streamed(body, digest).await,
                UploadMode::Monolithic => {
                    repo.push_monolithic(body, chunks_per_blob * MIB, digest)
                        .await
                }
            }
            .with_context(|| format!("pushing {digest}"))
        }
    });
    run_all(pushes.collect(), args.large_concurrency).await?;
    let push_s = t.elapsed().as_secs_f64();
    eprintln!(
        "large: push {push_s:.2} s = {:.1} MiB/s",
        total_mib / push_s
    );

    let t = Instant::now();
    let pulls = digests.iter().map(|digest| {
        let repo = Arc::clone(repo);
        async move {
            let len = repo.pull_blob(digest, args.verify).await?;
            ensure!(
                len == (chunks_per_blob * MIB) as u64,
                "blob {digest} is {len} bytes"
            );
            Ok(())
        }
    });
    run_all(pulls.collect(), args.large_concurrency).await?;
    let pull_s = t.elapsed().as_secs_f64();
    eprintln!(
        "large: pull {pull_s:.2} s = {:.1} MiB/s",
        total_mib / pull_s
    );
    Ok(serde_json::json!({
        "scenario": "large", "blobs": n, "blob_mib": chunks_per_blob, "upload": format!("{:?}", args.upload),
        "push_s": push_s, "pull_s": pull_s,
        "push_mib_s": total_mib / push_s, "pull_mib_s": total_mib / pull_s,
    }))
}

/// One image of the small scenario: its config and layers (digest, bytes) and manifest.
struct Image {
    tag: String,
    blobs: Vec<(String, Bytes)>,
    manifest: Bytes,
}

fn small_images(count: usize, size: usize, per_manifest: usize) -> anyhow::Result<Vec<Image>> {
    let nonce = hex::encode(random_bytes(8));
    let pool = random_bytes(count * size);
    let layers: Vec<Bytes> = pool.chunks(size).map(Bytes::copy_from_slice).collect();
    let mut images = Vec::new();
    for (j, group) in layers.chunks(per_manifest.max(1)).enumerate() {
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
            "config": {"Labels": {"quarry.bench": format!("{nonce}-{j}")}},
        }))?;
        let config = Bytes::from(config);
        let desc = |media: &str, b: &Bytes| serde_json::json!({"mediaType": media, "digest": sha256(std::slice::from_ref(b)), "size": b.len()});
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": desc(OCI_CONFIG, &config),
            "layers": group.iter().map(|l| desc(OCI_LAYER, l)).collect::<Vec<_>>(),
        }))?;
        let blobs = std::iter::once(config)
            .chain(group.iter().cloned())
            .map(|b| (sha256(std::slice::from_ref(&b)), b))
            .collect();
        images.push(Image {
            tag: format!("t{j}"),
            blobs,
            manifest: Bytes::from(manifest),
        });
    }
    Ok(images)
}

async fn small(args: &Args, repo: &Arc<Repo>) -> anyhow::Result<serde_json::Value> {
    let images = small_images(
        args.small_blobs,
        usize::try_from(args.small_size)?,
        args.layers_per_manifest,
    )?;
    let blob_count: usize = images.iter().map(|i| i.blobs.len()).sum();
    eprintln!(
        "small: pushing {blob_count} blobs and {} manifests to {}, {} in flight",
        images.len(),
        repo.name,
        args.concurrency
    );

    let t = Instant::now();
    let blob_pushes = images
        .iter()
        .flat_map(|img| &img.blobs)
        .map(|(digest, bytes)| {
            let repo = Arc::clone(repo);
            async move {
                repo.push_monolithic(Body::from(bytes.clone()), bytes.len(), digest)
                    .await
            }
        });
    run_all(blob_pushes.collect(), args.concurrency).await?;
    let manifest_pushes = images.iter().map(|img| {
        let repo = Arc::clone(repo);
        async move {
            let url = repo.url(&format!("manifests/{}", img.tag))?;
            let resp = repo
                .req(Method::PUT, url)
                .header(CONTENT_TYPE, OCI_MANIFEST)
                .body(img.manifest.clone())
                .send()
                .await?;
            expect(resp, StatusCode::CREATED, "PUT manifest").await?;
            Ok(())
        }
    });
    run_all(manifest_pushes.collect(), args.concurrency).await?;
    let push_s = t.elapsed().as_secs_f64();
    let push_requests = 2 * blob_count + images.len();
    eprintln!(
        "small: push {push_requests} requests in {push_s:.2} s = {:.0} req/s",
        push_requests as f64 / push_s
    );

    // Pull like a client that already knows the digests: GET each manifest, HEAD + GET each blob.
    let t = Instant::now();
    let mut pulls = Vec::new();
    for img in &images {
        pulls.push((
            Method::GET,
            format!("manifests/{}", img.tag),
            img.manifest.len(),
        ));
        for (digest, bytes) in &img.blobs {
            pulls.push((Method::HEAD, format!("blobs/{digest}"), 0));
            pulls.push((Method::GET, format!("blobs/{digest}"), bytes.len()));
        }
    }
    let pull_requests = pulls.len();
    let pulls = pulls.into_iter().map(|(method, tail, len)| {
        let repo = Arc::clone(repo);
        async move {
            let what = format!("{method} {tail}");
            let resp = repo
                .req(method, repo.url(&tail)?)
                .header(ACCEPT, OCI_MANIFEST)
                .send()
                .await?;
            let body = expect(resp, StatusCode::OK, &what).await?.bytes().await?;
            ensure!(
                body.len() == len,
                "{what}: {} bytes, expected {len}",
                body.len()
            );
            Ok(())
        }
    });
    run_all(pulls.collect(), args.concurrency).await?;
    let pull_s = t.elapsed().as_secs_f64();
    eprintln!(
        "small: pull {pull_requests} requests in {pull_s:.2} s = {:.0} req/s",
        pull_requests as f64 / pull_s
    );
    Ok(serde_json::json!({
        "scenario": "small", "blobs": blob_count, "blob_size": args.small_size, "manifests": images.len(),
        "concurrency": args.concurrency,
        "push_requests": push_requests, "push_s": push_s, "push_req_s": push_requests as f64 / push_s,
        "pull_requests": pull_requests, "pull_s": pull_s, "pull_req_s": pull_requests as f64 / pull_s,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = Client::builder()
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        // A deadline for every request, so a stuck server fails the run instead of hanging it.
        .timeout(Duration::from_secs(600))
        .build()?;
    let user = args.user.as_deref();
    if matches!(args.scenario, Scenario::Large | Scenario::All) {
        let repo = Repo::open(&http, &args.url, &format!("{}/large", args.namespace), user).await?;
        println!("{}", large(&args, &Arc::new(repo)).await?);
    }
    if matches!(args.scenario, Scenario::Small | Scenario::All) {
        let repo = Repo::open(&http, &args.url, &format!("{}/small", args.namespace), user).await?;
        println!("{}", small(&args, &Arc::new(repo)).await?);
    }
    Ok(())
}
