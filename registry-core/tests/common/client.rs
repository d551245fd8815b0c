//! A small distribution-API client on reqwest that performs the Docker token flow.
//!
//! A call answered `401` with a `Bearer` challenge makes the client ask the challenge's realm for
//! a token (Basic credentials, or none when anonymous) covering every scope it has needed for that
//! repository so far, and retry once with it. Tokens are cached per repository. Responses are
//! collected whole into [`Resp`], which the tests inspect.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

/// Actions wanted per resource (`repository:<name>`), as sent in `scope=` parameters.
type Scopes = BTreeMap<String, BTreeSet<String>>;

#[derive(Default)]
struct Cached {
    scopes: Scopes,
    token: Option<String>,
}

/// A client of one registry, logged in (Basic at the token endpoint) or anonymous.
pub struct Client {
    http: reqwest::Client,
    base: String,
    creds: Option<(String, String)>,
    /// Keyed by repository name (`""` for calls outside a repository, such as `/v2/`).
    tokens: Mutex<HashMap<String, Cached>>,
}

/// A collected response.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl fmt::Debug for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.body[..self.body.len().min(2048)];
        f.debug_struct("Resp")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(shown))
            .finish()
    }
}

impl Resp {
    /// A header as text (the first one when repeated).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a repeated header.
    pub fn headers_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }

    /// Panic with the whole response unless the status is `want`.
    #[track_caller]
    pub fn expect_status(&self, want: u16, what: &str) -> &Resp {
        assert_eq!(self.status.as_u16(), want, "{what}: {self:#?}");
        self
    }

    /// A header that must be present.
    #[track_caller]
    pub fn must_header(&self, name: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("missing {name} header: {self:#?}"))
    }

    /// The body as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:#?}"))
    }

    /// Assert a spec error: the status, and a body `{"errors":[{"code","message",...}]}` whose
    /// entries all have a string code and message, one of them `code`.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) {
        self.expect_error_one_of(status, &[code]);
    }

    /// [`Resp::expect_error`] accepting any of `codes`.
    #[track_caller]
    pub fn expect_error_one_of(&self, status: u16, codes: &[&str]) {
        assert_eq!(self.status.as_u16(), status, "{self:#?}");
        let v = self.json();
        let errors = v["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("error body has no \"errors\" array: {self:#?}"));
        assert!(!errors.is_empty(), "empty errors array: {self:#?}");
        for e in errors {
            assert!(e["code"].is_string(), "error without code: {self:#?}");
            assert!(e["message"].is_string(), "error without message: {self:#?}");
        }
        assert!(
            errors
                .iter()
                .any(|e| codes.contains(&e["code"].as_str().unwrap_or(""))),
            "expected code {codes:?}: {self:#?}"
        );
    }

    /// The upload offset a `Range: 0-<end>` header reports (`end + 1`), the prefix `bytes=`
    /// tolerated. `0-0` is read as one byte: callers handling empty uploads check the text.
    #[track_caller]
    pub fn range_offset(&self) -> u64 {
        let r = self.must_header("range");
        let r = r.strip_prefix("bytes=").unwrap_or(r);
        let (start, end) = r
            .split_once('-')
            .unwrap_or_else(|| panic!("malformed Range {r:?}"));
        assert_eq!(start, "0", "upload Range must start at 0: {self:#?}");
        end.parse::<u64>()
            .unwrap_or_else(|_| panic!("malformed Range {r:?}"))
            + 1
    }
}

/// The repository a `/v2/<name>/(blobs|manifests|tags|referrers)/...` path names, or `""`.
pub fn repo_of(url: &str) -> String {
    let path = url.split_once("/v2/").map(|(_, p)| p).unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    for marker in ["/blobs/", "/manifests/", "/tags/", "/referrers/"] {
        if let Some(i) = path.rfind(marker) {
            return path[..i].to_owned();
        }
    }
    String::new()
}

/// The parameters of a `Bearer k="v",k2="v2"` challenge.
pub fn parse_challenge(value: &str) -> Option<HashMap<String, String>> {
    let rest = value.trim().strip_prefix("Bearer ")?;
    let mut out = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let end = after.find('"')?;
        out.insert(k.trim().to_owned(), after[..end].to_owned());
        s = after[end + 1..].trim_start_matches([',', ' ']);
    }
    Some(out)
}

fn add_scope(scopes: &mut Scopes, scope: &str) {
    for one in scope.split(' ').filter(|s| !s.is_empty()) {
        if let Some((resource, actions)) = one.rsplit_once(':') {
            let set = scopes.entry(resource.to_owned()).or_default();
            set.extend(actions.split(',').map(str::to_owned));
        }
    }
}

impl Client {
    /// A client of the registry at `base` (`http://host:port`).
    pub fn new(base: &str, creds: Option<(String, String)>) -> Client {
        let http = reqwest::Client::builder()
            // A fresh connection per request: crash tests kill the server under pooled sockets.
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .expect("building the http client");
        Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            creds,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The underlying reqwest client (no token handling).
    pub fn raw(&self) -> &reqwest::Client {
        &self.http
    }

    /// `base + path` when `path` is relative, else `path`.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{}", self.base, path)
        }
    }

    fn cached_token(&self, key: &str) -> Option<String> {
        let map = self.tokens.lock().unwrap();
        map.get(key).and_then(|c| c.token.clone())
    }

    /// The cached token for `key` if it was issued for `method`'s action. Like real clients, we
    /// know which action a call needs: a DELETE with a `pull,push` token would be answered
    /// 403 without a challenge, so it goes out bare and is challenged for `delete` instead.
    fn token_for_call(&self, key: &str, method: &Method) -> Option<String> {
        let action = match *method {
            Method::GET | Method::HEAD => "pull",
            Method::DELETE => "delete",
            _ => "push",
        };
        let map = self.tokens.lock().unwrap();
        let cached = map.get(key)?;
        if key.is_empty() {
            return cached.token.clone();
        }
        let granted = cached.scopes.get(&format!("repository:{key}"))?;
        if granted.contains(action) || granted.contains("*") {
            cached.token.clone()
        } else {
            None
        }
    }

    /// Ask the token endpoint `realm` for `scopes`; `Err` carries the failed response.
    pub async fn fetch_token(
        &self,
        realm: &str,
        service: &str,
        scopes: &Scopes,
    ) -> Result<String, Resp> {
        let resp = self.token_request(realm, service, scopes).await;
        if resp.status != StatusCode::OK {
            return Err(resp);
        }
        let v = resp.json();
        match v["token"].as_str().or(v["access_token"].as_str()) {
            Some(t) => Ok(t.to_owned()),
            None => Err(resp),
        }
    }

    /// The raw token request (`GET realm?service=..&scope=..` with Basic credentials if any).
    pub async fn token_request(&self, realm: &str, service: &str, scopes: &Scopes) -> Resp {
        let mut query = vec![("service".to_owned(), service.to_owned())];
        for (resource, actions) in scopes {
            let acts: Vec<&str> = actions.iter().map(String::as_str).collect();
            query.push(("scope".to_owned(), format!("{resource}:{}", acts.join(","))));
        }
        let mut req = self.http.get(realm).query(&query);
        if let Some((u, p)) = &self.creds {
            req = req.basic_auth(u, Some(p));
        }
        collect(req.send().await, "GET token").await
    }

    /// Get and cache a token for `repo` covering `scopes` (e.g. `repository:a/b:pull,push`)
    /// before a call whose body cannot be replayed, or that needs several repositories.
    pub async fn authorize(&self, repo: &str, scopes: &[&str]) {
        let url = self.url("/v2/");
        let ping = self
            .send_once(&Method::GET, &url, &[], Bytes::new(), None)
            .await;
        if ping.status != StatusCode::UNAUTHORIZED {
            return;
        }
        let Some(ch) = ping.header("www-authenticate").and_then(parse_challenge) else {
            return;
        };
        let mut wanted = {
            let map = self.tokens.lock().unwrap();
            map.get(repo).map(|c| c.scopes.clone()).unwrap_or_default()
        };
        for s in scopes {
            add_scope(&mut wanted, s);
        }
        let service = ch.get("service").cloned().unwrap_or_default();
        if let Ok(token) = self.fetch_token(&ch["realm"], &service, &wanted).await {
            let mut map = self.tokens.lock().unwrap();
            let c = map.entry(repo.to_owned()).or_default();
            c.scopes = wanted;
            c.token = Some(token);
        }
    }

    /// Send one call with the token flow. `headers` are (name, value) pairs.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        let url = self.url(path);
        let body: Bytes = body.into();
        let key = repo_of(&url);
        let first = self
            .send_once(
                &method,
                &url,
                headers,
                body.clone(),
                self.token_for_call(&key, &method),
            )
            .await;
        if first.status != StatusCode::UNAUTHORIZED {
            return first;
        }
        let Some(ch) = first
            .header(WWW_AUTHENTICATE.as_str())
            .and_then(parse_challenge)
        else {
            return first;
        };
        let Some(realm) = ch.get("realm") else {
            return first;
        };
        let mut wanted = {
            let map = self.tokens.lock().unwrap();
            map.get(&key).map(|c| c.scopes.clone()).unwrap_or_default()
        };
        if let Some(scope) = ch.get("scope") {
            add_scope(&mut wanted, scope);
        }
        let service = ch.get("service").cloned().unwrap_or_default();
        let token = match self.fetch_token(realm, &service, &wanted).await {
            Ok(t) => t,
            Err(_) => return first,
        };
        {
            let mut map = self.tokens.lock().unwrap();
            let c = map.entry(key).or_default();
            c.scopes = wanted;
            c.token = Some(token.clone());
        }
        self.send_once(&method, &url, headers, body, Some(token))
            .await
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        token: Option<String>,
    ) -> Resp {
        let mut req = self.http.request(method.clone(), url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(t) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        // Only bodies with content carry one: a GET/HEAD/DELETE stays bodiless.
        if !body.is_empty() || matches!(*method, Method::PUT | Method::PATCH | Method::POST) {
            req = req.body(body);
        }
        collect(req.send().await, &format!("{method} {url}")).await
    }

    /// Send a call whose body is a stream (not replayable); the token must already be cached
    /// for `url`'s repository (see [`Client::authorize`]). Transport errors are returned.
    pub async fn send_stream(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: reqwest::Body,
    ) -> Result<Resp, reqwest::Error> {
        let url = self.url(path);
        let mut req = self.http.request(method, &url).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(t) = self.cached_token(&repo_of(&url)) {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = req.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}

async fn collect(r: Result<reqwest::Response, reqwest::Error>, what: &str) -> Resp {
    let resp = r.unwrap_or_else(|e| panic!("{what}: request failed: {e:?}"));
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{what}: reading the body failed: {e:?}"));
    Resp {
        status,
        headers,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_and_repo_parsing() {
        let c = parse_challenge(
            r#"Bearer realm="http://h:1/v2/auth",service="h:1",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c["realm"], "http://h:1/v2/auth");
        assert_eq!(c["scope"], "repository:a/b:pull,push");
        assert_eq!(repo_of("http://h/v2/a/b/c/blobs/uploads/x?y"), "a/b/c");
        assert_eq!(repo_of("http://h/v2/"), "");
        let mut s = Scopes::new();
        add_scope(&mut s, "repository:a/b:pull");
        add_scope(&mut s, "repository:a/b:push,delete");
        assert_eq!(s["repository:a/b"].len(), 3);
    }
}
