//! Images: layers plus a config, a manifest (OCI or Docker media types) and optionally
//! an index.

use serde_json::json;

use super::{
    BuiltLayer, DOCKER_CONFIG, DOCKER_MANIFEST, LayerBuilder, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST,
    busybox_layer, sha256,
};

/// An image being put together.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    layers: Vec<LayerBuilder>,
    config: serde_json::Map<String, serde_json::Value>,
    architecture: String,
    docker_media_types: bool,
    index: bool,
}

/// An image ready to push.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub layers: Vec<BuiltLayer>,
    pub config: Vec<u8>,
    /// The image id (digest of `config`).
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    /// The index wrapping the manifest, when asked for.
    pub index: Option<Vec<u8>>,
    /// The other-platform manifest the index also lists.
    pub decoy: Option<Vec<u8>>,
}

impl BuiltImage {
    /// The digest a pull by tag resolves to: the index's if there is one.
    pub fn top_digest(&self) -> String {
        match &self.index {
            Some(i) => sha256(i),
            None => self.manifest_digest.clone(),
        }
    }

    /// The image id (`sha256:` of the config).
    pub fn id(&self) -> &str {
        &self.config_digest
    }

    /// The image as an OCI image-layout tar (what `ctr images export` or `docker
    /// save` write) naming it `name` (`io.containerd.image.name`), for
    /// `berthd image import` without a registry.
    pub fn oci_archive(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let (top, top_media_type) = match &self.index {
            Some(i) => (i.clone(), OCI_INDEX),
            None => (self.manifest.clone(), self.manifest_media_type.as_str()),
        };
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{
                "mediaType": top_media_type, "digest": sha256(&top), "size": top.len(),
                "annotations": {"io.containerd.image.name": name},
            }],
        }))?;
        let mut files: Vec<(String, &[u8])> = vec![
            ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json".into(), &index),
        ];
        let blob = |data: &[u8]| format!("blobs/sha256/{}", &sha256(data)[7..]);
        files.push((blob(&top), &top));
        if self.index.is_some() {
            files.push((blob(&self.manifest), &self.manifest));
        }
        files.push((blob(&self.config), &self.config));
        for l in &self.layers {
            files.push((blob(&l.blob), &l.blob));
        }
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, name, data)?;
        }
        Ok(tar.into_inner()?)
    }
}

pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageBuilder {
    /// An image with no layers.
    pub fn new() -> Self {
        let mut config = serde_json::Map::new();
        config.insert(
            "Env".into(),
            json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]),
        );
        Self {
            layers: Vec::new(),
            config,
            architecture: host_arch().to_owned(),
            docker_media_types: false,
            index: false,
        }
    }

    /// An image whose first layer is [`busybox_layer`] without extra users.
    pub fn busybox() -> anyhow::Result<Self> {
        Ok(Self::new().layer(busybox_layer(&[], &[])?).cmd(["sh"]))
    }

    /// Adds a layer on top.
    pub fn layer(mut self, layer: LayerBuilder) -> Self {
        self.layers.push(layer);
        self
    }

    /// Adds a gzip layer with the given files (path, contents, mode).
    pub fn files(self, files: &[(&str, &[u8], u32)]) -> Self {
        let mut layer = LayerBuilder::new();
        for (path, data, mode) in files {
            layer = layer.file(path, data, *mode);
        }
        self.layer(layer)
    }

    fn set(mut self, key: &str, value: serde_json::Value) -> Self {
        self.config.insert(key.to_owned(), value);
        self
    }

    pub fn cmd<I: IntoIterator<Item = S>, S: Into<String>>(self, cmd: I) -> Self {
        let v: Vec<String> = cmd.into_iter().map(Into::into).collect();
        self.set("Cmd", json!(v))
    }

    pub fn entrypoint<I: IntoIterator<Item = S>, S: Into<String>>(self, ep: I) -> Self {
        let v: Vec<String> = ep.into_iter().map(Into::into).collect();
        self.set("Entrypoint", json!(v))
    }

    /// Adds `KEY=value` to the environment.
    pub fn env(mut self, kv: &str) -> Self {
        let mut env = self
            .config
            .get("Env")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        env.push(json!(kv));
        self.config.insert("Env".into(), json!(env));
        self
    }

    pub fn user(self, user: &str) -> Self {
        self.set("User", json!(user))
    }

    pub fn workdir(self, dir: &str) -> Self {
        self.set("WorkingDir", json!(dir))
    }

    pub fn stop_signal(self, sig: &str) -> Self {
        self.set("StopSignal", json!(sig))
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        let mut labels = self
            .config
            .get("Labels")
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        labels.insert(key.into(), json!(value));
        self.config.insert("Labels".into(), json!(labels));
        self
    }

    /// Declares exposed ports such as `80/tcp`.
    pub fn expose(mut self, port: &str) -> Self {
        let mut ports = self
            .config
            .get("ExposedPorts")
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        ports.insert(port.into(), json!({}));
        self.config.insert("ExposedPorts".into(), json!(ports));
        self
    }

    /// Use Docker schema 2 media types instead of OCI ones.
    pub fn docker_media_types(mut self) -> Self {
        self.docker_media_types = true;
        self
    }

    /// Wrap the manifest in a multi-platform index (with a decoy s390x entry first).
    pub fn with_index(mut self) -> Self {
        self.index = true;
        self
    }

    /// Builds layers, config, manifest (and index).
    pub fn build(&self) -> anyhow::Result<BuiltImage> {
        let layers: Vec<BuiltLayer> = self
            .layers
            .iter()
            .map(|l| l.build(self.docker_media_types))
            .collect::<anyhow::Result<_>>()?;
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let config = serde_json::to_vec(&json!({
            "architecture": self.architecture,
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": layers.iter().map(|_| json!({"created_by": "berth forge"})).collect::<Vec<_>>(),
        }))?;
        let config_digest = sha256(&config);
        let (manifest_media_type, config_media_type) = if self.docker_media_types {
            (DOCKER_MANIFEST, DOCKER_CONFIG)
        } else {
            (OCI_MANIFEST, OCI_CONFIG)
        };
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": manifest_media_type,
            "config": {"mediaType": config_media_type, "digest": config_digest, "size": config.len()},
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type, "digest": l.digest, "size": l.blob.len()
            })).collect::<Vec<_>>(),
        }))?;
        let manifest_digest = sha256(&manifest);
        let (index, decoy) = if self.index {
            // A decoy manifest for another platform, pushed by digest; the puller
            // must skip it.
            let mut decoy: serde_json::Value = serde_json::from_slice(&manifest)?;
            decoy["annotations"] = json!({"berth.test/decoy": "s390x"});
            let decoy = serde_json::to_vec(&decoy)?;
            let index = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {"mediaType": manifest_media_type,
                     "digest": sha256(&decoy), "size": decoy.len(),
                     "platform": {"architecture": "s390x", "os": "linux"}},
                    {"mediaType": manifest_media_type, "digest": manifest_digest,
                     "size": manifest.len(),
                     "platform": {"architecture": self.architecture, "os": "linux"}},
                ],
            }))?;
            (Some(index), Some(decoy))
        } else {
            (None, None)
        };
        Ok(BuiltImage {
            layers,
            config,
            config_digest,
            manifest,
            manifest_digest,
            manifest_media_type: manifest_media_type.to_owned(),
            index,
            decoy,
        })
    }
}
