//! A small OCI distribution (registry v2) client: manifests and blobs over HTTP(S),
//! with anonymous, basic and bearer-token auth, mirrors with `ns=`, and a
//! no-progress timeout on every read.
//!
//! We use our own client on reqwest rather than oci-client because mirrors need
//! per-endpoint TLS settings, headers and `ns=` with fallback across endpoints, and
//! blobs must stream straight into our content store with our own progress and
//! stall accounting; oci-client's configuration is per client and its mirror support
//! does not fall back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode, Url};

use crate::hosts::Endpoint;

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

/// Credentials for a pull, as CRI's `AuthConfig` carries them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Auth {
    pub username: String,
    pub password: String,
    /// base64 of `username:password`.
    pub auth: String,
    /// A bearer token to send as is.
    pub registry_token: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log secrets.
        f.debug_struct("Auth")
            .field("username", &self.username)
            .field("has_password", &!self.password.is_empty())
            .field("has_auth", &!self.auth.is_empty())
            .field("has_registry_token", &!self.registry_token.is_empty())
            .finish()
    }
}

impl Auth {
    /// No credentials.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// Username and password.
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
            ..Self::default()
        }
    }

    fn user_password(&self) -> Option<(String, String)> {
        if !self.username.is_empty() || !self.password.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        if !self.auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (u, p) = text.split_once(':')?;
            return Some((u.to_owned(), p.to_owned()));
        }
        None
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
    #[error("{what} from {endpoint} is larger than {limit} bytes")]
    TooLarge {
        endpoint: String,
        what: String,
        limit: u64,
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
            | Self::Body { .. } => true,
            Self::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// Builds and caches one HTTP client per TLS configuration.
#[derive(Debug)]
pub struct HttpClients {
    stall: Duration,
    clients: Mutex<HashMap<(bool, Vec<PathBuf>), reqwest::Client>>,
}

impl HttpClients {
    /// `stall` is both the connect timeout and the longest wait for any read.
    pub fn new(stall: Duration) -> Self {
        // reqwest is built without a bundled crypto provider; install ring once for
        // the process. A provider someone else installed first is fine too.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            stall,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The no-progress timeout.
    pub fn stall(&self) -> Duration {
        self.stall
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
            .connect_timeout(self.stall)
            .read_timeout(self.stall)
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
    stall: Duration,
    authorization: tokio::sync::Mutex<Option<String>>,
}

/// A fetched manifest or index.
#[derive(Debug)]
pub struct FetchedManifest {
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl Session {
    /// Opens a session for `repo` (e.g. `library/busybox`) of registry `host` on
    /// `endpoint`.
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
            stall: clients.stall,
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
            let resp = match tokio::time::timeout(self.stall, req.send()).await {
                Err(_) => {
                    return Err(RegistryError::Stalled {
                        endpoint: self.name(),
                        what: what.to_owned(),
                        secs: self.stall.as_secs(),
                    });
                }
                Ok(Err(source)) if source.is_timeout() => {
                    return Err(RegistryError::Stalled {
                        endpoint: self.name(),
                        what: what.to_owned(),
                        secs: self.stall.as_secs(),
                    });
                }
                Ok(Err(source)) => {
                    return Err(RegistryError::Unreachable {
                        endpoint: self.name(),
                        source,
                    });
                }
                Ok(Ok(r)) => r,
            };
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
                    let authorization = self.answer_challenge(&header).await?;
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
                    let body = tokio::time::timeout(self.stall, resp.text())
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or_default();
                    return Err(RegistryError::Status {
                        endpoint: self.name(),
                        what: what.to_owned(),
                        status: status.as_u16(),
                        body: body.chars().take(300).collect(),
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
                let scope = challenge
                    .params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", self.repo));
                let mut url = Url::parse(realm).map_err(|e| RegistryError::Token {
                    realm: realm.clone(),
                    detail: e.to_string(),
                })?;
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(service) = challenge.params.get("service") {
                        q.append_pair("service", service);
                    }
                    q.append_pair("scope", &scope);
                }
                let mut req = self.http.get(url);
                if let Some((u, p)) = &creds {
                    req = req.header(AUTHORIZATION, basic_header(u, p));
                }
                let token_err = |detail: String| RegistryError::Token {
                    realm: realm.clone(),
                    detail,
                };
                let resp = tokio::time::timeout(self.stall, req.send())
                    .await
                    .map_err(|_| token_err("timed out".into()))?
                    .map_err(|e| token_err(e.to_string()))?;
                if resp.status() == StatusCode::UNAUTHORIZED
                    || resp.status() == StatusCode::FORBIDDEN
                {
                    return Ok(None);
                }
                if !resp.status().is_success() {
                    return Err(token_err(format!("HTTP {}", resp.status())));
                }
                let body = tokio::time::timeout(self.stall, resp.bytes())
                    .await
                    .map_err(|_| token_err("timed out".into()))?
                    .map_err(|e| token_err(e.to_string()))?;
                #[derive(serde::Deserialize)]
                struct TokenResponse {
                    #[serde(default)]
                    token: String,
                    #[serde(default)]
                    access_token: String,
                }
                let t: TokenResponse =
                    serde_json::from_slice(&body).map_err(|e| token_err(e.to_string()))?;
                let token = if t.token.is_empty() {
                    t.access_token
                } else {
                    t.token
                };
                if token.is_empty() {
                    return Err(token_err("response has no token".into()));
                }
                Ok(Some(format!("Bearer {token}")))
            }
            _ => Ok(None),
        }
    }

    /// Fetches a manifest or index by tag or digest (at most 4 MiB).
    pub async fn manifest(&self, object: &str) -> Result<FetchedManifest, RegistryError> {
        let what = format!("manifest {}:{object}", self.repo);
        let resp = self
            .get(self.url("manifests", object), Some(MANIFEST_ACCEPT), &what)
            .await?;
        let media_type = content_type(resp.headers());
        let bytes = self.read_small(resp, &what, 4 << 20).await?;
        Ok(FetchedManifest { media_type, bytes })
    }

    /// Fetches a small blob (a config) into memory.
    pub async fn small_blob(&self, digest: &str, limit: u64) -> Result<Vec<u8>, RegistryError> {
        let what = format!("blob {digest}");
        let resp = self.get(self.url("blobs", digest), None, &what).await?;
        self.read_small(resp, &what, limit).await
    }

    /// Starts streaming a blob; read it with [`BlobStream::chunk`].
    pub async fn blob(&self, digest: &str) -> Result<BlobStream, RegistryError> {
        let what = format!("blob {digest} of {}", self.repo);
        let resp = self.get(self.url("blobs", digest), None, &what).await?;
        Ok(BlobStream {
            resp,
            endpoint: self.name(),
            what,
            stall: self.stall,
        })
    }

    async fn read_small(
        &self,
        resp: Response,
        what: &str,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut stream = BlobStream {
            resp,
            endpoint: self.name(),
            what: what.to_owned(),
            stall: self.stall,
        };
        let mut out = Vec::new();
        while let Some(chunk) = stream.chunk().await? {
            out.extend_from_slice(chunk.as_ref());
            if out.len() as u64 > limit {
                return Err(RegistryError::TooLarge {
                    endpoint: self.name(),
                    what: what.to_owned(),
                    limit,
                });
            }
        }
        Ok(out)
    }
}

/// A blob body being received.
#[derive(Debug)]
pub struct BlobStream {
    resp: Response,
    endpoint: String,
    what: String,
    stall: Duration,
}

impl BlobStream {
    /// The next piece of the body, `None` at the end. Fails if no data arrives
    /// within the no-progress timeout.
    pub async fn chunk(&mut self) -> Result<Option<impl AsRef<[u8]> + use<>>, RegistryError> {
        match tokio::time::timeout(self.stall, self.resp.chunk()).await {
            Err(_) => Err(RegistryError::Stalled {
                endpoint: self.endpoint.clone(),
                what: self.what.clone(),
                secs: self.stall.as_secs(),
            }),
            Ok(Err(source)) if source.is_timeout() => Err(RegistryError::Stalled {
                endpoint: self.endpoint.clone(),
                what: self.what.clone(),
                secs: self.stall.as_secs(),
            }),
            Ok(Err(source)) => Err(RegistryError::Body {
                endpoint: self.endpoint.clone(),
                what: self.what.clone(),
                source,
            }),
            Ok(Ok(c)) => Ok(c),
        }
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

fn basic_header(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// A parsed `WWW-Authenticate` header: scheme (lowercased) and its parameters.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: HashMap<String, String>,
}

impl Challenge {
    fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, rest) = match header.split_once(' ') {
            Some((s, r)) => (s, r),
            None => (header, ""),
        };
        if scheme.is_empty() {
            return None;
        }
        let mut params = HashMap::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if key.is_empty() {
                break;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(c) = chars.peek() {
                    if *c == ',' {
                        break;
                    }
                    value.push(*c);
                    chars.next();
                }
                value = value.trim().to_owned();
            }
            params.insert(key.trim().to_ascii_lowercase(), value);
        }
        Some(Self {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_quoted_params() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["service"], "registry.example");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
    }

    #[test]
    fn basic_challenge() {
        let c = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");
        assert!(Challenge::parse("").is_none());
    }

    #[test]
    fn credentials_from_auth_field_and_debug_hides_secrets() {
        let a = Auth {
            auth: base64::engine::general_purpose::STANDARD.encode("u:p:w"),
            ..Auth::default()
        };
        assert_eq!(a.user_password(), Some(("u".into(), "p:w".into())));
        assert_eq!(Auth::anonymous().user_password(), None);
        let b = Auth::basic("me", "secret");
        assert!(!format!("{b:?}").contains("secret"));
        assert_eq!(basic_header("me", "secret"), "Basic bWU6c2VjcmV0");
    }

    #[test]
    fn mirror_urls_carry_the_upstream_namespace() {
        let clients = HttpClients::new(Duration::from_secs(5));
        let ep = Endpoint {
            api: Url::parse("http://127.0.0.1:5000/v2").unwrap(),
            capabilities: crate::hosts::Capabilities {
                pull: true,
                resolve: true,
                push: false,
            },
            skip_verify: false,
            ca: vec![],
            headers: vec![],
            mirror: true,
        };
        let s = Session::new(&clients, ep, "registry.k8s.io", "pause", Auth::default()).unwrap();
        assert_eq!(
            s.url("manifests", "3.9").as_str(),
            "http://127.0.0.1:5000/v2/pause/manifests/3.9?ns=registry.k8s.io"
        );
    }
}
