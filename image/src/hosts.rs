//! Registry host configuration in containerd's `certs.d` format, so an operator moving
//! from containerd copies the directory over:
//!
//! ```toml
//! # <config dir>/registry.k8s.io/hosts.toml
//! server = "https://registry.k8s.io"
//!
//! [host."http://10.0.0.5:5000"]
//!   capabilities = ["pull", "resolve"]
//!   skip_verify = true
//!   ca = "/etc/berth/certs.d/mirror.pem"
//!   [host."http://10.0.0.5:5000".header]
//!     x-custom = "value"
//! ```
//!
//! Hosts are tried in file order, the `server` last. Without a file a registry is
//! reached at `https://<host>`, except loopback registries (127.0.0.0/8, ::1,
//! localhost), which are reached over plain HTTP as Docker does.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use reqwest::Url;

/// The default directory holding `<host>/hosts.toml` files.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/berth/certs.d";

/// A broken hosts.toml.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("reading registry host config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing registry host config {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("registry host {host:?}: {what}")]
    BadHost { host: String, what: String },
    #[error("registry host config {path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

/// What an endpoint may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetch manifests by digest and blobs.
    pub pull: bool,
    /// Resolve tags to manifests.
    pub resolve: bool,
    /// Push (unused by berthd; kept so configs round-trip).
    pub push: bool,
}

impl Capabilities {
    const ALL: Self = Self {
        pull: true,
        resolve: true,
        push: true,
    };
    const MIRROR_DEFAULT: Self = Self {
        pull: true,
        resolve: true,
        push: false,
    };
}

/// One place a repository may be fetched from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The API root, ending in `/v2` (e.g. `http://127.0.0.1:5000/v2`).
    pub api: Url,
    pub capabilities: Capabilities,
    /// Accept any TLS certificate.
    pub skip_verify: bool,
    /// Extra CA certificates (PEM files).
    pub ca: Vec<PathBuf>,
    /// Headers sent with every request.
    pub headers: Vec<(String, String)>,
    /// A mirror (not the registry the reference names): requests carry `ns=<host>`.
    pub mirror: bool,
}

impl Endpoint {
    /// A short name for logs and errors: the API URL.
    pub fn name(&self) -> &str {
        self.api.as_str()
    }
}

/// Reads `hosts.toml` files from a `certs.d`-style directory.
#[derive(Clone, Debug)]
pub struct RegistryHosts {
    dir: Option<PathBuf>,
}

impl Default for RegistryHosts {
    fn default() -> Self {
        Self::new(Some(PathBuf::from(DEFAULT_CONFIG_DIR)))
    }
}

impl RegistryHosts {
    /// Reads configuration from `dir` (a missing directory means "no configuration").
    /// `None` disables host configuration entirely.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    /// The configuration directory.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The endpoints for registry `host` (as written in a reference: `docker.io`,
    /// `localhost:5000`), in the order they are tried. The file is re-read on each
    /// call so operators can edit it without a restart.
    pub fn endpoints(&self, host: &str) -> Result<Vec<Endpoint>, HostsError> {
        let file = self.dir.as_ref().and_then(|dir| {
            [host, "_default"]
                .iter()
                .map(|h| dir.join(h).join("hosts.toml"))
                .find(|p| p.is_file())
        });
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| HostsError::Read {
                    path: path.clone(),
                    source,
                })?;
                parse_hosts(host, &text, &path)
            }
            None => Ok(vec![default_endpoint(host)?]),
        }
    }
}

/// Whether `host` (with optional port) is a loopback address or `localhost`.
pub fn is_loopback(host: &str) -> bool {
    let bare = strip_port(host);
    if bare == "localhost" || bare.ends_with(".localhost") {
        return true;
    }
    let bare = bare.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(host, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The upstream API root for a registry host when nothing is configured.
fn default_server(host: &str) -> String {
    if host == "docker.io" {
        "https://registry-1.docker.io".to_owned()
    } else if is_loopback(host) {
        format!("http://{host}")
    } else {
        format!("https://{host}")
    }
}

fn default_endpoint(host: &str) -> Result<Endpoint, HostsError> {
    let api = api_url(&default_server(host), false).map_err(|what| HostsError::BadHost {
        host: host.to_owned(),
        what,
    })?;
    Ok(Endpoint {
        api,
        capabilities: Capabilities::ALL,
        skip_verify: false,
        ca: Vec::new(),
        headers: Vec::new(),
        mirror: false,
    })
}

/// `https://mirror` → `https://mirror/v2`; `https://mirror/path` → `https://mirror/path/v2`
/// unless `override_path` says the path is already the API root.
fn api_url(raw: &str, override_path: bool) -> Result<Url, String> {
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else if is_loopback(raw.split('/').next().unwrap_or(raw)) {
        format!("http://{raw}")
    } else {
        format!("https://{raw}")
    };
    let mut url = Url::parse(&with_scheme).map_err(|e| format!("bad URL {raw:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("bad URL {raw:?}: scheme must be http or https"));
    }
    let path = url.path().trim_end_matches('/').to_owned();
    let path = if override_path || path.ends_with("/v2") {
        path
    } else {
        format!("{path}/v2")
    };
    url.set_path(&path);
    url.set_query(None);
    Ok(url)
}

fn parse_hosts(host: &str, text: &str, path: &Path) -> Result<Vec<Endpoint>, HostsError> {
    let invalid = |what: String| HostsError::Invalid {
        path: path.to_owned(),
        what,
    };
    let table: toml::Table = toml::from_str(text).map_err(|source| HostsError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("/"));
    let mut endpoints = Vec::new();
    if let Some(hosts) = table.get("host") {
        let hosts = hosts
            .as_table()
            .ok_or_else(|| invalid("`host` must be a table of URLs".into()))?;
        for (url, settings) in hosts {
            let settings = settings
                .as_table()
                .ok_or_else(|| invalid(format!("host {url:?} must be a table")))?;
            endpoints.push(
                endpoint_from(url, settings, Capabilities::MIRROR_DEFAULT, true, base)
                    .map_err(invalid)?,
            );
        }
    }
    let server = match table.get("server") {
        Some(v) => v
            .as_str()
            .ok_or_else(|| invalid("`server` must be a string".into()))?
            .to_owned(),
        None => default_server(host),
    };
    endpoints
        .push(endpoint_from(&server, &table, Capabilities::ALL, false, base).map_err(invalid)?);
    // A host entry that is really the upstream is not a mirror.
    if let Some(upstream) = endpoints.last().map(|e| e.api.clone()) {
        for e in &mut endpoints {
            if e.api == upstream {
                e.mirror = false;
            }
        }
    }
    Ok(endpoints)
}

fn endpoint_from(
    url: &str,
    settings: &toml::Table,
    default_caps: Capabilities,
    mirror: bool,
    base: &Path,
) -> Result<Endpoint, String> {
    let override_path = match settings.get("override_path") {
        Some(v) => v
            .as_bool()
            .ok_or_else(|| format!("{url}: override_path must be a boolean"))?,
        None => false,
    };
    let capabilities = match settings.get("capabilities") {
        Some(v) => {
            let list = v
                .as_array()
                .ok_or_else(|| format!("{url}: capabilities must be a list"))?;
            let mut caps = Capabilities {
                pull: false,
                resolve: false,
                push: false,
            };
            for c in list {
                match c.as_str() {
                    Some("pull") => caps.pull = true,
                    Some("resolve") => caps.resolve = true,
                    Some("push") => caps.push = true,
                    other => return Err(format!("{url}: unknown capability {other:?}")),
                }
            }
            caps
        }
        None => default_caps,
    };
    let skip_verify = match settings.get("skip_verify") {
        Some(v) => v
            .as_bool()
            .ok_or_else(|| format!("{url}: skip_verify must be a boolean"))?,
        None => false,
    };
    let ca = match settings.get("ca") {
        None => Vec::new(),
        Some(toml::Value::String(s)) => vec![base.join(s)],
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(|s| base.join(s))
                    .ok_or_else(|| format!("{url}: ca entries must be strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(format!("{url}: ca must be a path or a list of paths")),
    };
    let mut headers = Vec::new();
    if let Some(h) = settings.get("header") {
        let h = h
            .as_table()
            .ok_or_else(|| format!("{url}: header must be a table"))?;
        for (name, value) in h {
            match value {
                toml::Value::String(s) => headers.push((name.clone(), s.clone())),
                toml::Value::Array(a) => {
                    for v in a {
                        let s = v.as_str().ok_or_else(|| {
                            format!("{url}: header {name} values must be strings")
                        })?;
                        headers.push((name.clone(), s.to_owned()));
                    }
                }
                _ => return Err(format!("{url}: header {name} must be a string or list")),
            }
        }
    }
    Ok(Endpoint {
        api: api_url(url, override_path)?,
        capabilities,
        skip_verify,
        ca,
        headers,
        mirror,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, host: &str, text: &str) {
        std::fs::create_dir_all(dir.join(host)).unwrap();
        std::fs::write(dir.join(host).join("hosts.toml"), text).unwrap();
    }

    #[test]
    fn without_config_docker_hub_and_https_and_loopback_http() {
        let tmp = tempfile::tempdir().unwrap();
        let hosts = RegistryHosts::new(Some(tmp.path().join("missing")));
        let e = hosts.endpoints("docker.io").unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].api.as_str(), "https://registry-1.docker.io/v2");
        assert!(!e[0].mirror);
        let e = hosts.endpoints("quay.io").unwrap();
        assert_eq!(e[0].api.as_str(), "https://quay.io/v2");
        for lo in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.9.8.7",
            "[::1]:5000",
            "localhost",
        ] {
            let e = hosts.endpoints(lo).unwrap();
            assert_eq!(e[0].api.scheme(), "http", "{lo}");
        }
        let e = hosts.endpoints("10.0.0.1:5000").unwrap();
        assert_eq!(e[0].api.scheme(), "https");
    }

    #[test]
    fn mirrors_in_file_order_then_server() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "registry.k8s.io",
            r#"
server = "https://registry.k8s.io"

[host."http://127.0.0.1:1"]
  capabilities = ["pull", "resolve"]

[host."https://b.example/some/path"]
  capabilities = ["pull"]
  skip_verify = true
  ca = ["b.pem", "/abs/c.pem"]
  [host."https://b.example/some/path".header]
    x-one = "1"
    x-two = ["2a", "2b"]

[host."https://a.example"]
  override_path = true
"#,
        );
        let hosts = RegistryHosts::new(Some(tmp.path().to_owned()));
        let e = hosts.endpoints("registry.k8s.io").unwrap();
        let apis: Vec<_> = e.iter().map(|e| e.api.as_str()).collect();
        assert_eq!(
            apis,
            [
                "http://127.0.0.1:1/v2",
                "https://b.example/some/path/v2",
                "https://a.example/",
                "https://registry.k8s.io/v2",
            ]
        );
        assert!(e[0].mirror && e[1].mirror && !e[3].mirror);
        assert!(!e[1].capabilities.resolve && e[1].capabilities.pull);
        assert!(e[1].skip_verify);
        assert_eq!(
            e[1].ca,
            [
                tmp.path().join("registry.k8s.io/b.pem"),
                PathBuf::from("/abs/c.pem")
            ]
        );
        assert_eq!(
            e[1].headers,
            [
                ("x-one".to_owned(), "1".to_owned()),
                ("x-two".to_owned(), "2a".to_owned()),
                ("x-two".to_owned(), "2b".to_owned())
            ]
        );
        assert!(e[3].capabilities.resolve && e[3].capabilities.pull);
    }

    #[test]
    fn default_dir_applies_when_host_has_none_and_server_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "_default", "[host.\"http://127.0.0.1:9/\"]\n");
        let hosts = RegistryHosts::new(Some(tmp.path().to_owned()));
        let e = hosts.endpoints("gcr.io").unwrap();
        assert_eq!(e[0].api.as_str(), "http://127.0.0.1:9/v2");
        assert_eq!(e[1].api.as_str(), "https://gcr.io/v2");
    }

    #[test]
    fn broken_files_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "bad.io", "server = [");
        write(
            tmp.path(),
            "caps.io",
            "[host.\"https://m\"]\ncapabilities = [\"fly\"]\n",
        );
        write(tmp.path(), "scheme.io", "server = \"ftp://x\"\n");
        let hosts = RegistryHosts::new(Some(tmp.path().to_owned()));
        for h in ["bad.io", "caps.io", "scheme.io"] {
            let err = hosts.endpoints(h).unwrap_err().to_string();
            assert!(err.contains(&format!("{h}/hosts.toml")), "{err}");
        }
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("[::1]:80"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("128.0.0.1"));
        assert!(!is_loopback("example.com:5000"));
    }
}
