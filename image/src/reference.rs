//! Image references, parsed and normalised the way Docker and containerd do it:
//! `busybox` is `docker.io/library/busybox:latest`, `localhost:5000/app@sha256:..`
//! keeps its registry, and a reference carrying both a tag and a digest is pinned
//! by the digest.

use std::fmt;
use std::str::FromStr;

/// The registry that short names (`busybox`, `library/busybox`) live on.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// The repository prefix Docker Hub uses for official images.
const OFFICIAL_PREFIX: &str = "library/";
/// The tag a reference without tag or digest gets.
pub const DEFAULT_TAG: &str = "latest";
/// Longest repository name (domain + path) Docker accepts.
const NAME_MAX: usize = 255;
/// Longest tag Docker accepts.
const TAG_MAX: usize = 128;

/// A malformed reference or digest. The message names the input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid image reference {input:?}: the reference is empty")]
    Empty { input: String },
    #[error("invalid image reference {input:?}: repository name must be lowercase")]
    Uppercase { input: String },
    #[error("invalid image reference {input:?}: bad registry host {domain:?}")]
    Domain { input: String, domain: String },
    #[error("invalid image reference {input:?}: bad repository path component {component:?}")]
    PathComponent { input: String, component: String },
    #[error("invalid image reference {input:?}: bad tag {tag:?}")]
    Tag { input: String, tag: String },
    #[error("invalid image reference {input:?}: repository name longer than {NAME_MAX} characters")]
    NameTooLong { input: String },
    #[error("invalid image reference {input:?}: {source}")]
    Digest {
        input: String,
        #[source]
        source: DigestError,
    },
    #[error(
        "invalid image reference {input:?}: a 64-character hex string is an image id, not a reference"
    )]
    LooksLikeId { input: String },
}

/// A malformed content digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest {0:?} is not of the form algorithm:hex")]
    Format(String),
    #[error("digest {0:?} uses an unsupported algorithm (only sha256 is supported)")]
    Algorithm(String),
    #[error("digest {0:?} must have 64 lowercase hex characters")]
    Hex(String),
}

/// A `sha256:<64 lowercase hex>` content digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<hex>`.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(DigestError::Format(s.to_owned()));
        };
        if alg.is_empty() || hex.is_empty() {
            return Err(DigestError::Format(s.to_owned()));
        }
        if alg != "sha256" {
            return Err(DigestError::Algorithm(s.to_owned()));
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::Hex(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest as _;
        Self::from_sha256(sha2::Sha256::digest(data).into())
    }

    /// Wraps a finished SHA-256 hash.
    pub fn from_sha256(hash: [u8; 32]) -> Self {
        Self(format!("sha256:{}", hex::encode(hash)))
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part, usable as a file name.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A normalised image reference: registry domain, repository path, and a tag or a
/// digest (a reference with neither gets the tag `latest`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises a reference such as `busybox`, `nginx:1.25`,
    /// `localhost:5000/a/b@sha256:...` or `name:tag@sha256:...`.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let err_input = || input.to_owned();
        if input.is_empty() {
            return Err(ReferenceError::Empty { input: err_input() });
        }
        if input.len() == 64 && input.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ReferenceError::LooksLikeId { input: err_input() });
        }
        // Split off the digest first: it contains a ':' of its own.
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => {
                let digest = Digest::parse(d).map_err(|source| ReferenceError::Digest {
                    input: err_input(),
                    source,
                })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/', so that a registry
        // port (`host:5000/app`) is not taken for a tag.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(&rest[at + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(ReferenceError::Tag {
                input: err_input(),
                tag: tag.to_owned(),
            });
        }
        if name.is_empty() {
            return Err(ReferenceError::Empty { input: err_input() });
        }
        let (domain, path) = split_domain(name);
        if !valid_domain(&domain) {
            return Err(ReferenceError::Domain {
                input: err_input(),
                domain,
            });
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase { input: err_input() });
        }
        for component in path.split('/') {
            if !valid_path_component(component) {
                return Err(ReferenceError::PathComponent {
                    input: err_input(),
                    component: component.to_owned(),
                });
            }
        }
        if domain.len() + 1 + path.len() > NAME_MAX {
            return Err(ReferenceError::NameTooLong { input: err_input() });
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// The registry host as written in the reference (`docker.io`, `localhost:5000`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry (`library/busybox`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The tag, if the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference is pinned by one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `domain/path`, the repository name.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// What a registry is asked for: the digest when pinned, else the tag.
    pub fn object(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.as_str(),
            (None, Some(t)) => t,
            (None, None) => DEFAULT_TAG,
        }
    }

    /// `name:tag` as recorded in an image's repo tags; `None` for references pinned
    /// by digest (containerd records those by digest only).
    pub fn repo_tag(&self) -> Option<String> {
        match (&self.digest, &self.tag) {
            (None, Some(t)) => Some(format!("{}:{t}", self.name())),
            _ => None,
        }
    }

    /// `name@digest` for a given manifest digest.
    pub fn repo_digest(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.name())
    }

    /// The same repository pinned by `digest` (the tag is dropped).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: Some(digest),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Splits a name into registry domain and repository path, applying Docker's rule:
/// the first component is a registry if it contains `.` or `:`, is `localhost`, or
/// has uppercase letters; otherwise the name lives on Docker Hub.
fn split_domain(name: &str) -> (String, String) {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => (DEFAULT_DOMAIN.to_owned(), name.to_owned()),
    };
    let domain = if domain == "index.docker.io" {
        DEFAULT_DOMAIN.to_owned()
    } else {
        domain
    };
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("{OFFICIAL_PREFIX}{path}")
    } else {
        path
    };
    (domain, path)
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= TAG_MAX
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or any number of '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A host name or IP (IPv6 in brackets), with an optional port.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("", port),
                None => return false,
            },
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (h, p),
            None => (domain, ""),
        }
    };
    if domain.contains(':') && !domain.starts_with('[') && port.is_empty() {
        return false;
    }
    if !port.is_empty() && (port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    if domain.starts_with('[') {
        return true;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:9700f9a2f5bf2c45f2f605a0bd3bce7cf37420ec9d3ed50ac2758413308766bf";

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn short_names_go_to_docker_hub_library_with_latest() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("index.docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(norm("bitnami/redis"), "docker.io/bitnami/redis:latest");
    }

    #[test]
    fn registries_with_ports_and_localhost_are_kept() {
        let r = Reference::parse("localhost:5000/app/web:v1").unwrap();
        assert_eq!(r.domain(), "localhost:5000");
        assert_eq!(r.path(), "app/web");
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("127.0.0.1:5000/app"), "127.0.0.1:5000/app:latest");
        assert_eq!(norm("[::1]:5000/app"), "[::1]:5000/app:latest");
        assert_eq!(
            norm("registry.k8s.io/e2e-test-images/busybox:1.29-2"),
            "registry.k8s.io/e2e-test-images/busybox:1.29-2"
        );
        // A port without a tag is not taken for a tag.
        let r = Reference::parse("myhost:5000/app").unwrap();
        assert_eq!(r.domain(), "myhost:5000");
        assert_eq!(r.tag(), Some("latest"));
    }

    #[test]
    fn digests_pin_the_reference_and_drop_the_tag_from_repo_tags() {
        let r = Reference::parse(&format!("gcr.io/x/test-image-digest@{D}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().as_str(), D);
        assert_eq!(r.object(), D);
        assert_eq!(r.repo_tag(), None);
        assert_eq!(r.to_string(), format!("gcr.io/x/test-image-digest@{D}"));

        let r = Reference::parse(&format!("busybox:1.36@{D}")).unwrap();
        assert_eq!(r.tag(), Some("1.36"));
        assert_eq!(r.object(), D);
        assert_eq!(r.repo_tag(), None);
        assert_eq!(
            r.repo_digest(r.digest().unwrap()),
            format!("docker.io/library/busybox@{D}")
        );
    }

    #[test]
    fn repo_tag_is_the_normalised_name_and_tag() {
        let r = Reference::parse("nginx").unwrap();
        assert_eq!(r.repo_tag().unwrap(), "docker.io/library/nginx:latest");
        assert_eq!(r.name(), "docker.io/library/nginx");
    }

    #[test]
    fn malformed_references_are_rejected_naming_the_input() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busy box",
            "a//b",
            "a/b/",
            "/a",
            "busybox@sha256:abc",
            "busybox@md5:0123",
            "busybox@",
            "a..b",
            "a-",
            "host:port/app",
            "ex ample.com/app",
            "[::1/app",
            "[zz::1]:5000/app",
            "UPPER.io/App",
        ] {
            let err = Reference::parse(bad).expect_err(bad);
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "{bad}: {err}"
            );
        }
        // Non-ASCII input is rejected, never a panic on a char boundary.
        for bad in ["busyböx", "ü", "a/ü:1", "höst.io/a", "a:tägs", "a@sha256:ü"] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
        let tag = "a".repeat(129);
        assert!(Reference::parse(&format!("busybox:{tag}")).is_err());
        let long = format!("example.com/{}", "a".repeat(250));
        assert!(matches!(
            Reference::parse(&long),
            Err(ReferenceError::NameTooLong { .. })
        ));
        let id = "0".repeat(64);
        assert!(matches!(
            Reference::parse(&id),
            Err(ReferenceError::LooksLikeId { .. })
        ));
    }

    #[test]
    fn separators_inside_path_components() {
        for ok in ["a_b", "a__b", "a---b", "a.b", "a-b.c_d", "0"] {
            assert!(valid_path_component(ok), "{ok}");
        }
        for bad in ["a___b", "a._b", "_a", "a.", "", "A"] {
            assert!(!valid_path_component(bad), "{bad}");
        }
    }

    #[test]
    fn digest_parsing() {
        assert!(Digest::parse(D).is_ok());
        assert!(matches!(
            Digest::parse("sha512:00"),
            Err(DigestError::Algorithm(_))
        ));
        assert!(matches!(
            Digest::parse(&D.to_uppercase().replace("SHA256", "sha256")),
            Err(DigestError::Hex(_))
        ));
        assert!(matches!(
            Digest::parse("nocolon"),
            Err(DigestError::Format(_))
        ));
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::of(b"").hex().len(), 64);
    }
}
