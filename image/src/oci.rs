//! The parts of the OCI image spec (and Docker schema 2) berthd reads: manifests,
//! indexes, and the image configuration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::distribution::media;
use crate::reference::Digest;

/// A content descriptor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// A platform an index entry is built for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// An image index / manifest list.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// What a manifest document turned out to be.
#[derive(Debug)]
pub enum ManifestKind {
    Manifest(Manifest),
    Index(Index),
}

/// A document that is not a manifest or index we understand.
#[derive(Debug, thiserror::Error)]
#[error("unsupported or malformed manifest (content type {media_type:?}): {detail}")]
pub struct ManifestError {
    pub media_type: String,
    pub detail: String,
}

/// Parses a manifest or index, using the Content-Type header or the document's own
/// `mediaType` (or the presence of `manifests`).
pub fn parse_manifest(content_type: &str, bytes: &[u8]) -> Result<ManifestKind, ManifestError> {
    let err = |detail: String| ManifestError {
        media_type: content_type.to_owned(),
        detail,
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))?;
    let declared = value
        .get("mediaType")
        .and_then(|v| v.as_str())
        .unwrap_or(content_type)
        .to_owned();
    let is_index = match declared.as_str() {
        media::OCI_INDEX | media::DOCKER_LIST => true,
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => false,
        _ => value.get("manifests").is_some(),
    };
    if value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
        return Err(err("Docker schema 1 manifests are not supported".into()));
    }
    if is_index {
        serde_json::from_value(value)
            .map(ManifestKind::Index)
            .map_err(|e| err(e.to_string()))
    } else {
        serde_json::from_value(value)
            .map(ManifestKind::Manifest)
            .map_err(|e| err(e.to_string()))
    }
}

/// The platform of this host in OCI terms (`linux`, `amd64`/`arm64`/...).
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    };
    Platform {
        architecture: architecture.to_owned(),
        os: "linux".to_owned(),
        variant: (architecture == "arm64").then(|| "v8".to_owned()),
    }
}

/// Picks the index entry for `platform`: same OS and architecture, preferring an
/// exact variant match (an entry without variant also matches).
pub fn select_platform<'a>(index: &'a Index, platform: &Platform) -> Option<&'a Descriptor> {
    let candidates = index.manifests.iter().filter(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == platform.os && p.architecture == platform.architecture)
    });
    let mut fallback = None;
    for d in candidates {
        let variant = d.platform.as_ref().and_then(|p| p.variant.as_deref());
        if variant == platform.variant.as_deref() {
            return Some(d);
        }
        if fallback.is_none() && (variant.is_none() || platform.variant.is_none()) {
            fallback = Some(d);
        }
    }
    fallback
}

/// The image configuration document (`application/vnd.oci.image.config.v1+json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub config: Option<ImageConfig>,
    pub rootfs: RootFs,
}

/// The layers' uncompressed digests.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// How a container from this image runs by default (the config's `config`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
}

impl ImageConfig {
    /// The image's USER split the way CRI reports it: a numeric user gives a uid, a
    /// name gives a username (`1003:1004` → uid 1003; `www-data:1004` → username).
    pub fn uid_or_username(&self) -> (Option<i64>, String) {
        let user = self.user.split(':').next().unwrap_or("");
        if user.is_empty() {
            return (None, String::new());
        }
        match user.parse::<i64>() {
            Ok(uid) => (Some(uid), String::new()),
            Err(_) => (None, user.to_owned()),
        }
    }
}

/// The chain ids of a layer stack: `chain(0) = diff(0)`,
/// `chain(n) = sha256(chain(n-1) + " " + diff(n))`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    #[test]
    fn chain_ids_follow_the_oci_formula() {
        let ids = chain_ids(&[d('a'), d('b')]);
        assert_eq!(ids[0], d('a'));
        assert_eq!(
            ids[1],
            Digest::of(format!("{} {}", d('a'), d('b')).as_bytes())
        );
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn index_platform_selection() {
        let entry = |arch: &str, variant: Option<&str>, c: char| Descriptor {
            media_type: media::OCI_MANIFEST.into(),
            digest: d(c),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(Into::into),
            }),
        };
        let index = Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![
                entry("arm", Some("v7"), 'a'),
                entry("arm64", None, 'b'),
                entry("arm64", Some("v8"), 'c'),
                entry("amd64", None, 'e'),
            ],
        };
        let amd64 = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(select_platform(&index, &amd64).unwrap().digest, d('e'));
        let arm64 = Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            variant: Some("v8".into()),
        };
        assert_eq!(select_platform(&index, &arm64).unwrap().digest, d('c'));
        let s390 = Platform {
            architecture: "s390x".into(),
            os: "linux".into(),
            variant: None,
        };
        assert!(select_platform(&index, &s390).is_none());
    }

    #[test]
    fn manifest_kinds_from_header_or_body() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{}","digest":"{}","size":3}},"layers":[]}}"#,
            media::OCI_CONFIG,
            d('1')
        );
        assert!(matches!(
            parse_manifest(media::OCI_MANIFEST, m.as_bytes()).unwrap(),
            ManifestKind::Manifest(_)
        ));
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"x","digest":"{}","size":3}}]}}"#,
            d('2')
        );
        assert!(matches!(
            parse_manifest("application/json", i.as_bytes()).unwrap(),
            ManifestKind::Index(_)
        ));
        assert!(parse_manifest("", br#"{"schemaVersion":1,"fsLayers":[]}"#).is_err());
        assert!(parse_manifest("", b"not json").is_err());
    }

    #[test]
    fn user_gives_uid_or_username() {
        let c = |u: &str| ImageConfig {
            user: u.into(),
            ..ImageConfig::default()
        };
        assert_eq!(c("1002").uid_or_username(), (Some(1002), String::new()));
        assert_eq!(
            c("1003:1004").uid_or_username(),
            (Some(1003), String::new())
        );
        assert_eq!(c("www-data").uid_or_username(), (None, "www-data".into()));
        assert_eq!(
            c("www-data:1004").uid_or_username(),
            (None, "www-data".into())
        );
        assert_eq!(c("").uid_or_username(), (None, String::new()));
    }
}
