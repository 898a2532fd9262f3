//! A small OCI distribution (registry v2) client: manifests and blobs over HTTP(S),
//! with anonymous, basic, bearer-token and OAuth2 refresh-token auth, and mirrors
//! with `ns=`.
//!
//! A registry is untrusted: every body that is read into memory (token responses,
//! manifests, indexes, configs, error bodies) is bounded before it is read, every
//! request has a connect and a response-header timeout, small requests have a total
//! deadline (so a trickle of one byte every few seconds cannot keep one alive), and
//! layer bodies, which stream to disk, have a no-progress timeout and a minimum rate.
//!
//! We use our own client on reqwest rather than oci-client because mirrors need
//! per-endpoint TLS settings, headers and `ns=` with fallback across endpoints, and
//! blobs must stream straight into our content store with our own progress and
//! stall accounting; oci-client's configuration is per client and its mirror support
//! does not fall back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode, Url};

use crate::hosts::Endpoint;

mod auth;

pub use auth::Auth;
use auth::{Challenge, basic_header};

/// Media types this client understands.
pub mod media {
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
}

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Largest token-service response read (tokens are a few KiB of JWT).
pub const TOKEN_LIMIT: u64 = 1 << 20;
/// Largest error body read; only its start is shown.
const ERROR_BODY_LIMIT: u64 = 64 << 10;

/// How long registry transfers may take. See `docs/configuration.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (and TLS handshake) to a registry.
    pub connect: Duration,
    /// From sending a request to receiving the response's headers.
    pub headers: Duration,
    /// Whole small requests (token, manifest, index, config), body included.
    pub request: Duration,
    /// A layer body that receives nothing for this long is abandoned.
    pub stall: Duration,
    /// A layer body must average at least this many bytes per second over each
    /// `stall` window (0: no minimum).
    pub min_rate: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(30),
            headers: Duration::from_secs(30),
            request: Duration::from_secs(60),
            stall: Duration::from_secs(60),
            min_rate: 1024,
        }
    }
}

/// Largest bodies read into memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimits {
    /// A manifest or index.
    pub manifest: u64,
    /// An image config.
    pub config: u64,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            manifest: 4 << 20,
            config: 16 << 20,
        }
    }
}

/// A failed registry interaction. Endpoint URLs are named; secrets never are.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {endpoint} unreachable: {source}")]
    Unreachable {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what} from {endpoint}: no data for {secs}s")]
    Stalled {
        endpoint: String,
        what: String,
        secs: u64,
    },
    #[error("{what} not found at {endpoint}")]
    NotFound { endpoint: String, what: String },
    #[error("{endpoint} refused the credentials for {what} (HTTP {status})")]
    Unauthorized {
        endpoint: String,
        what: String,
        status: u16,
    },
    #[error("{endpoint} answered HTTP {status} for {what}: {body}")]
    Status {
        endpoint: String,
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what} from {url} is larger than {limit} bytes (the limit is {setting})")]
    TooLarge {
        url: String,
        what: String,
        limit: u64,
        setting: &'static str,
    },
    #[error("{what} from {url} did not complete within {secs}s (the limit is {setting})")]
    Deadline {
        url: String,
        what: String,
        secs: u64,
        setting: &'static str,
    },
    #[error(
        "{what} from {endpoint} is too slow: {bytes} bytes in {secs}s, below the minimum of \
         {min_rate} bytes/s (registry.min_layer_rate_bytes_per_sec)"
    )]
    TooSlow {
        endpoint: String,
        what: String,
        bytes: u64,
        secs: u64,
        min_rate: u64,
    },
    #[error("token service {realm} failed: {detail}")]
    Token { realm: String, detail: String },
    #[error("no registry endpoint to fetch from")]
    NoEndpoint,
    #[error("TLS configuration for {endpoint}: {detail}")]
    Tls { endpoint: String, detail: String },
    #[error("reading body of {what} from {endpoint}: {source}")]
    Body {
        endpoint: String,
        what: String,
        #[source]
        source: reqwest::Error,
    },
}

impl RegistryError {
    /// Whether another endpoint might do better (the registry was down or lacked
    /// the object), as opposed to a definitive answer.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// Whether another endpoint might serve what this one could not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::NotFound { .. }
            | Self::Unreachable { .. }
            | Self::Stalled { .. }
            | Self::Deadline { .. }
            | Self::TooSlow { .. }
            | Self::Body { .. } => true,
            Self::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// A reqwest error as it may be shown. Its Display names the URL it failed on, and
/// after a redirect that is the final one: a pre-signed blob URL whose query string
/// is a credential (X-Amz-Signature and the like). The query, fragment and user info
/// are cut; scheme, host and path stay (which host a redirect led to helps).
fn redacted(mut e: reqwest::Error) -> reqwest::Error {
    if let Some(url) = e.url_mut() {
        url.set_query(None);
        url.set_fragment(None);
        let _ = url.set_username("");
        let _ = url.set_password(None);
    }
    e
}

/// Builds and caches one HTTP client per TLS configuration.
#[derive(Debug)]
pub struct HttpClients {
    timeouts: Timeouts,
    limits: BodyLimits,
    clients: Mutex<HashMap<(bool, Vec<PathBuf>), reqwest::Client>>,
}

impl HttpClients {
    pub fn new(timeouts: Timeouts, limits: BodyLimits) -> Self {
        // reqwest is built without a bundled crypto provider; install ring once for
        // the process. A provider someone else installed first is fine too.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            timeouts,
            limits,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The transfer timeouts.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    fn client_for(&self, endpoint: &Endpoint) -> Result<reqwest::Client, RegistryError> {
        let key = (endpoint.skip_verify, endpoint.ca.clone());
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let tls = |detail: String| RegistryError::Tls {
            endpoint: endpoint.name().to_owned(),
            detail,
        };
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.timeouts.connect)
            // A backstop under the per-request deadlines: no single read waits longer.
            .read_timeout(self.timeouts.stall)
            .no_proxy()
            .danger_accept_invalid_certs(endpoint.skip_verify);
        for path in &endpoint.ca {
            let pem =
                std::fs::read(path).map_err(|e| tls(format!("reading {}: {e}", path.display())))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| tls(format!("parsing {}: {e}", path.display())))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| tls(e.to_string()))?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// A repository on one endpoint, with the credentials and token for it.
#[derive(Debug)]
pub struct Session {
    http: reqwest::Client,
    endpoint: Endpoint,
    repo: String,
    ns: Option<String>,
    auth: Auth,
    timeouts: Timeouts,
    limits: BodyLimits,
    authorization: tokio::sync::Mutex<Option<String>>,
}

/// A fetched manifest or index.
#[derive(Debug)]
pub struct FetchedManifest {
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// What a token service answers.
#[derive(serde::Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
}

impl Session {
    /// Opens a session for `repo` (e.g. `library/busybox`) of registry `host` on
    /// `endpoint`. The caller decides which credentials this endpoint may see (see
    /// [`Auth::scoped_to`]).
    pub fn new(
        clients: &HttpClients,
        endpoint: Endpoint,
        host: &str,
        repo: &str,
        auth: Auth,
    ) -> Result<Self, RegistryError> {
        let http = clients.client_for(&endpoint)?;
        let ns = endpoint.mirror.then(|| host.to_owned());
        let authorization =
            (!auth.registry_token.is_empty()).then(|| format!("Bearer {}", auth.registry_token));
        Ok(Self {
            http,
            endpoint,
            repo: repo.to_owned(),
            ns,
            auth,
            timeouts: clients.timeouts,
            limits: clients.limits,
            authorization: tokio::sync::Mutex::new(authorization),
        })
    }

    /// The endpoint this session talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn url(&self, kind: &str, object: &str) -> Url {
        let mut url = self.endpoint.api.clone();
        let path = format!(
            "{}/{}/{kind}/{object}",
            url.path().trim_end_matches('/'),
            self.repo
        );
        url.set_path(&path);
        if let Some(ns) = &self.ns {
            url.query_pairs_mut().append_pair("ns", ns);
        }
        url
    }

    fn name(&self) -> String {
        self.endpoint.name().to_owned()
    }

    /// Sends `req`, waiting at most the header timeout for the response headers.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &Url,
        what: &str,
    ) -> Result<Response, RegistryError> {
        // Waiting for the headers is also receiving no data: a stall timeout shorter
        // than the header timeout bounds it too.
        let wait = self.timeouts.headers.min(self.timeouts.stall);
        let deadline = || {
            if self.timeouts.stall < self.timeouts.headers {
                RegistryError::Stalled {
                    endpoint: url.to_string(),
                    what: format!("response headers of {what}"),
                    secs: self.timeouts.stall.as_secs(),
                }
            } else {
                RegistryError::Deadline {
                    url: url.to_string(),
                    what: format!("response headers of {what}"),
                    secs: self.timeouts.headers.as_secs(),
                    setting: "registry.header_timeout_secs",
                }
            }
        };
        match tokio::time::timeout(wait, req.send()).await {
            Err(_) => Err(deadline()),
            Ok(Err(source)) if source.is_connect() && source.is_timeout() => {
                Err(RegistryError::Deadline {
                    url: url.to_string(),
                    what: format!("connecting for {what}"),
                    secs: self.timeouts.connect.as_secs(),
                    setting: "registry.connect_timeout_secs",
                })
            }
            Ok(Err(source)) if source.is_timeout() => Err(deadline()),
            Ok(Err(source)) => Err(RegistryError::Unreachable {
                endpoint: url.to_string(),
                source: redacted(source),
            }),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// GET with auth: on 401 answer the challenge (basic, or a bearer token from the
    /// realm) and retry once.
    async fn get(
        &self,
        url: Url,
        accept: Option<&str>,
        what: &str,
    ) -> Result<Response, RegistryError> {
        let mut answered = false;
        loop {
            let mut req = self.http.get(url.clone());
            for (k, v) in &self.endpoint.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(a) = self.authorization.lock().await.clone() {
                req = req.header(AUTHORIZATION, a);
            }
            let resp = self.send(req, &url, what).await?;
            match resp.status() {
                s if s.is_success() => return Ok(resp),
                StatusCode::UNAUTHORIZED if !answered => {
                    answered = true;
                    let header = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    // The body is not needed; dropping the response closes it.
                    drop(resp);
                    let authorization =
                        tokio::time::timeout(self.timeouts.request, self.answer_challenge(&header))
                            .await
                            .map_err(|_| RegistryError::Token {
                                realm: header.clone(),
                                detail: format!(
                                    "no token within {}s (registry.request_timeout_secs)",
                                    self.timeouts.request.as_secs()
                                ),
                            })??;
                    match authorization {
                        Some(a) => *self.authorization.lock().await = Some(a),
                        None => return Err(self.unauthorized(what, 401)),
                    }
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(self.unauthorized(what, resp.status().as_u16()));
                }
                StatusCode::NOT_FOUND => {
                    return Err(RegistryError::NotFound {
                        endpoint: self.name(),
                        what: what.to_owned(),
                    });
                }
                status => {
                    // Only the start of an error body is shown: read at most
                    // ERROR_BODY_LIMIT bytes, for at most the stall timeout.
                    let body = tokio::time::timeout(
                        self.timeouts.stall.min(self.timeouts.request),
                        read_prefix(resp, ERROR_BODY_LIMIT),
                    )
                    .await
                    .unwrap_or_default();
                    return Err(RegistryError::Status {
                        endpoint: url.to_string(),
                        what: what.to_owned(),
                        status: status.as_u16(),
                        body: String::from_utf8_lossy(&body).chars().take(300).collect(),
                    });
                }
            }
        }
    }

    fn unauthorized(&self, what: &str, status: u16) -> RegistryError {
        RegistryError::Unauthorized {
            endpoint: self.name(),
            what: what.to_owned(),
            status,
        }
    }

    /// The Authorization header value answering a `WWW-Authenticate` challenge, or
    /// `None` when we have nothing to answer with.
    async fn answer_challenge(&self, header: &str) -> Result<Option<String>, RegistryError> {
        let Some(challenge) = Challenge::parse(header) else {
            return Ok(None);
        };
        let creds = self.auth.user_password();
        match challenge.scheme.as_str() {
            "basic" => Ok(creds.map(|(u, p)| basic_header(&u, &p))),
            "bearer" => {
                let Some(realm) = challenge.params.get("realm") else {
                    return Ok(None);
                };
                let token_err = |detail: String| RegistryError::Token {
                    realm: realm.clone(),
                    detail,
                };
                let scope = challenge
                    .params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", self.repo));
                let service = challenge.params.get("service");
                let realm_url = Url::parse(realm).map_err(|e| token_err(e.to_string()))?;
                if !matches!(realm_url.scheme(), "http" | "https") {
                    return Err(token_err("the realm is not an http(s) URL".into()));
                }
                let (req, url) = if self.auth.identity_token.is_empty() {
                    // Docker's token protocol: GET with the scope, basic credentials
                    // if we have them.
                    let mut url = realm_url;
                    {
                        let mut q = url.query_pairs_mut();
                        if let Some(service) = service {
                            q.append_pair("service", service);
                        }
                        q.append_pair("scope", &scope);
                    }
                    let mut req = self.http.get(url.clone());
                    if let Some((u, p)) = &creds {
                        req = req.header(AUTHORIZATION, basic_header(u, p));
                    }
                    (req, url)
                } else {
                    // An identity token is an OAuth2 refresh token: exchange it at the
                    // realm (RFC 6749 section 6), as containerd and docker do.
                    let mut form =
                        Url::parse("http://form.invalid/").map_err(|e| token_err(e.to_string()))?;
                    {
                        let mut q = form.query_pairs_mut();
                        q.append_pair("grant_type", "refresh_token");
                        q.append_pair("refresh_token", &self.auth.identity_token);
                        if let Some(service) = service {
                            q.append_pair("service", service);
                        }
                        q.append_pair("scope", &scope);
                        q.append_pair("client_id", "berth");
                    }
                    let body = form.query().unwrap_or("").to_owned();
                    let req = self
                        .http
                        .post(realm_url.clone())
                        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .body(body);
                    (req, realm_url)
                };
                let resp = self.send(req, &url, "token").await.map_err(|e| match e {
                    RegistryError::Unreachable { source, .. } => token_err(source.to_string()),
                    other => other,
                })?;
                if resp.status() == StatusCode::UNAUTHORIZED
                    || resp.status() == StatusCode::FORBIDDEN
                {
                    return Ok(None);
                }
                if !resp.status().is_success() {
                    return Err(token_err(format!("HTTP {}", resp.status())));
                }
                let body = self
                    .read_small(resp, &url, "token response", TOKEN_LIMIT, "1 MiB (fixed)")
                    .await?;
                let t: TokenResponse =
                    serde_json::from_slice(&body).map_err(|e| token_err(e.to_string()))?;
                let token = if t.access_token.is_empty() {
                    t.token
                } else {
                    t.access_token
                };
                if token.is_empty() {
                    return Err(token_err("response has no token".into()));
                }
                Ok(Some(format!("Bearer {token}")))
            }
            _ => Ok(None),
        }
    }

    /// Runs a small request under the total request deadline.
    async fn small<T>(
        &self,
        url: &Url,
        what: &str,
        fetch: impl std::future::Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        tokio::time::timeout(self.timeouts.request, fetch)
            .await
            .map_err(|_| RegistryError::Deadline {
                url: url.to_string(),
                what: what.to_owned(),
                secs: self.timeouts.request.as_secs(),
                setting: "registry.request_timeout_secs",
            })?
    }

    /// Fetches a manifest or index by tag or digest (at most the manifest limit).
    pub async fn manifest(&self, object: &str) -> Result<FetchedManifest, RegistryError> {
        let what = format!("manifest {}:{object}", self.repo);
        let url = self.url("manifests", object);
        self.small(&url, &what, async {
            let resp = self.get(url.clone(), Some(MANIFEST_ACCEPT), &what).await?;
            let media_type = content_type(resp.headers());
            let bytes = self
                .read_small(
                    resp,
                    &url,
                    &what,
                    self.limits.manifest,
                    "registry.max_manifest_bytes",
                )
                .await?;
            Ok(FetchedManifest { media_type, bytes })
        })
        .await
    }

    /// Fetches a config blob into memory (at most the config limit).
    pub async fn config_blob(&self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let what = format!("config {digest}");
        let url = self.url("blobs", digest);
        self.small(&url, &what, async {
            let resp = self.get(url.clone(), None, &what).await?;
            self.read_small(
                resp,
                &url,
                &what,
                self.limits.config,
                "registry.max_config_bytes",
            )
            .await
        })
        .await
    }

    /// The configured config size limit.
    pub fn config_limit(&self) -> u64 {
        self.limits.config
    }

    /// Starts streaming a blob; read it with [`BlobStream::chunk`].
    pub async fn blob(&self, digest: &str) -> Result<BlobStream, RegistryError> {
        let what = format!("blob {digest} of {}", self.repo);
        let resp = self.get(self.url("blobs", digest), None, &what).await?;
        Ok(BlobStream::new(resp, self.name(), what, self.timeouts))
    }

    /// Reads a whole body of at most `limit` bytes (the caller bounds the time).
    async fn read_small(
        &self,
        resp: Response,
        url: &Url,
        what: &str,
        limit: u64,
        setting: &'static str,
    ) -> Result<Vec<u8>, RegistryError> {
        let too_large = || RegistryError::TooLarge {
            url: url.to_string(),
            what: what.to_owned(),
            limit,
            setting,
        };
        // Refuse a declared size over the limit before reading anything.
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let timeouts = Timeouts {
            min_rate: 0,
            ..self.timeouts
        };
        let mut stream = BlobStream::new(resp, url.to_string(), what.to_owned(), timeouts);
        let mut out = Vec::new();
        while let Some(chunk) = stream.chunk().await? {
            let chunk = chunk.as_ref();
            if (out.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            out.extend_from_slice(chunk);
        }
        Ok(out)
    }
}

/// Up to `limit` bytes of a body, ignoring errors (for error messages).
async fn read_prefix(mut resp: Response, limit: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = usize::try_from(limit.saturating_sub(out.len() as u64)).unwrap_or(usize::MAX);
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() as u64 >= limit {
            break;
        }
    }
    out
}

/// A blob body being received.
#[derive(Debug)]
pub struct BlobStream {
    resp: Response,
    endpoint: String,
    what: String,
    timeouts: Timeouts,
    /// Start of the current rate window and the bytes received in it.
    window_start: Instant,
    window_bytes: u64,
}

impl BlobStream {
    fn new(resp: Response, endpoint: String, what: String, timeouts: Timeouts) -> Self {
        Self {
            resp,
            endpoint,
            what,
            timeouts,
            window_start: Instant::now(),
            window_bytes: 0,
        }
    }

    /// The next piece of the body, `None` at the end. Fails if no data arrives
    /// within the no-progress timeout, or if a whole window of that length carried
    /// less than the minimum rate.
    pub async fn chunk(&mut self) -> Result<Option<impl AsRef<[u8]> + use<>>, RegistryError> {
        let stall = self.timeouts.stall;
        let stalled = || RegistryError::Stalled {
            endpoint: self.endpoint.clone(),
            what: self.what.clone(),
            secs: stall.as_secs(),
        };
        let chunk = match tokio::time::timeout(stall, self.resp.chunk()).await {
            Err(_) => return Err(stalled()),
            Ok(Err(source)) if source.is_timeout() => return Err(stalled()),
            Ok(Err(source)) => {
                return Err(RegistryError::Body {
                    endpoint: self.endpoint.clone(),
                    what: self.what.clone(),
                    source: redacted(source),
                });
            }
            Ok(Ok(c)) => c,
        };
        if let Some(c) = &chunk {
            self.window_bytes += c.len() as u64;
        }
        let elapsed = self.window_start.elapsed();
        if self.timeouts.min_rate > 0 && chunk.is_some() && elapsed >= stall {
            let secs = elapsed.as_secs().max(1);
            if self.window_bytes < self.timeouts.min_rate.saturating_mul(secs) {
                return Err(RegistryError::TooSlow {
                    endpoint: self.endpoint.clone(),
                    what: self.what.clone(),
                    bytes: self.window_bytes,
                    secs,
                    min_rate: self.timeouts.min_rate,
                });
            }
            self.window_start = Instant::now();
            self.window_bytes = 0;
        }
        Ok(chunk)
    }

    /// The endpoint serving this blob.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain-HTTP endpoint that may pull and resolve, with no headers or CAs.
    fn pull_endpoint(api: &str, mirror: bool) -> Endpoint {
        Endpoint {
            api: Url::parse(api).unwrap(),
            capabilities: crate::hosts::Capabilities {
                pull: true,
                resolve: true,
                push: false,
            },
            skip_verify: false,
            ca: vec![],
            headers: vec![],
            mirror,
        }
    }

    #[test]
    fn mirror_urls_carry_the_upstream_namespace() {
        let clients = HttpClients::new(Timeouts::default(), BodyLimits::default());
        let ep = pull_endpoint("http://127.0.0.1:5000/v2", true);
        let s = Session::new(&clients, ep, "registry.k8s.io", "pause", Auth::default()).unwrap();
        assert_eq!(
            s.url("manifests", "3.9").as_str(),
            "http://127.0.0.1:5000/v2/pause/manifests/3.9?ns=registry.k8s.io"
        );
    }

    /// A reqwest error names the URL it failed on; a signed URL's query string (and
    /// any user info) is cut before it reaches a message, the host and path kept.
    #[tokio::test]
    async fn signed_urls_are_cut_from_reqwest_errors() {
        // A port nothing listens on: connecting to it is refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let e = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!(
                "http://user:pw@{dead}/blobs/ab?X-Amz-Signature=s3cr3t&X-Amz-Credential=k3y#f"
            ))
            .send()
            .await
            .expect_err("nothing listens there");
        assert!(e.to_string().contains("s3cr3t"), "{e}");
        let text = RegistryError::Unreachable {
            endpoint: "example.test".into(),
            source: redacted(e),
        }
        .to_string();
        assert!(
            !text.contains("s3cr3t") && !text.contains("k3y") && !text.contains("pw@"),
            "{text}"
        );
        assert!(text.contains(&format!("http://{dead}/blobs/ab)")), "{text}");
    }

    /// A registry that redirects a blob to a pre-signed URL on a host that cannot be
    /// reached: the signature stays out of the error. (reqwest 0.13 names the request's
    /// URL, not the redirect's, in this error; this guards that, with [`redacted`],
    /// across reqwest upgrades.)
    #[tokio::test]
    async fn a_redirect_targets_signature_stays_out_of_the_message() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        let registry = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = registry.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = registry.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: \
                 http://{dead}/blobs/ab?X-Amz-Signature=s3cr3t\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            conn.write_all(answer.as_bytes()).await.unwrap();
        });
        let clients = HttpClients::new(Timeouts::default(), BodyLimits::default());
        let ep = pull_endpoint(&format!("http://{addr}/v2"), false);
        let s = Session::new(&clients, ep, "example.test", "app", Auth::default()).unwrap();
        let Err(e) = s.blob("sha256:ab").await else {
            panic!("a refused redirect target fetched a blob");
        };
        server.await.unwrap();
        assert!(matches!(e, RegistryError::Unreachable { .. }), "{e}");
        let text: Vec<String> =
            std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                .map(ToString::to_string)
                .collect();
        assert!(!text.concat().contains("s3cr3t"), "{text:?}");
    }
}
