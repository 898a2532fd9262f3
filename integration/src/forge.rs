//! Builds OCI images locally — busybox-based images from Debian's static
//! `/bin/busybox`, with users, groups and any files — and pushes them to a registry
//! over the OCI distribution API (blob upload POST/PATCH/PUT, manifest PUT).
//!
//! ```no_run
//! # async fn demo(registry: &berth_integration::registry::TestRegistry) -> anyhow::Result<()> {
//! use berth_integration::forge::{Compression, ImageBuilder, LayerBuilder};
//! let image = ImageBuilder::busybox()?
//!     .layer(LayerBuilder::new().file("/hello.txt", "hi\n", 0o644))
//!     .cmd(["sh", "-c", "cat /hello.txt"])
//!     .user("1002")
//!     .build()?;
//! registry.push("e2e-test-images/hello", "1", &image).await?;
//! # Ok(()) }
//! ```

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::json;
use sha2::Digest as _;

/// Debian's static busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// Debian's dynamically linked busybox (package `busybox`, which conflicts with
/// `busybox-static`), unpacked here by install-deps.sh. Unlike the static build its
/// `sh` execs external commands instead of running applets in-process, so a masked
/// `/bin/ls` really fails the way critest's MaskedPaths spec expects.
pub const DYNAMIC_BUSYBOX: &str = "/var/cache/berth/busybox/bin/busybox";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    None,
    #[default]
    Gzip,
    Zstd,
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

#[derive(Clone, Debug)]
enum Entry {
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
        uid: u64,
        gid: u64,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    HardLink {
        path: String,
        target: String,
    },
    CharDevice {
        path: String,
        major: u32,
        minor: u32,
    },
    Fifo {
        path: String,
    },
    /// A file whose name is written into the header verbatim (no `..` checks), for
    /// forging malicious layers.
    RawName {
        name: Vec<u8>,
        data: Vec<u8>,
    },
    /// A hard link whose target is written verbatim.
    RawLink {
        path: String,
        target: Vec<u8>,
    },
}

/// A layer: a list of tar entries, in order.
#[derive(Clone, Debug, Default)]
pub struct LayerBuilder {
    entries: Vec<Entry>,
    compression: Compression,
}

/// A layer as it will be pushed.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    /// The compressed blob.
    pub blob: Vec<u8>,
    /// Digest of `blob`.
    pub digest: String,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    pub media_type: String,
}

fn rel(path: &str) -> String {
    path.trim_start_matches('/').to_owned()
}

impl LayerBuilder {
    /// An empty gzip layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the compression of this layer.
    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }

    /// A regular file owned by root.
    pub fn file(self, path: &str, data: impl AsRef<[u8]>, mode: u32) -> Self {
        self.file_owned(path, data, mode, 0, 0)
    }

    /// A regular file with an owner.
    pub fn file_owned(
        mut self,
        path: &str,
        data: impl AsRef<[u8]>,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Self {
        self.entries.push(Entry::File {
            path: rel(path),
            data: data.as_ref().to_vec(),
            mode,
            uid,
            gid,
        });
        self
    }

    /// A copy of a host file.
    pub fn host_file(self, path: &str, host: &Path, mode: u32) -> anyhow::Result<Self> {
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        Ok(self.file(path, data, mode))
    }

    /// A host executable at the same path, with the shared libraries and dynamic
    /// loader it needs (as `ldd` lists them), so dynamically linked programs from
    /// Debian packages (nginx, ...) run in a busybox image.
    pub fn host_binary(self, path: &str) -> anyhow::Result<Self> {
        self.host_binary_at(path, Path::new(path))
    }

    /// Like [`LayerBuilder::host_binary`], with the binary taken from `host` and
    /// stored at `path` (its libraries keep their host paths).
    pub fn host_binary_at(mut self, path: &str, host: &Path) -> anyhow::Result<Self> {
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(host)
                .with_context(|| format!("reading {}", host.display()))?
                .permissions()
                .mode()
                & 0o7777
        };
        self = self.host_file(path, host, mode)?;
        let out = std::process::Command::new("ldd")
            .arg(host)
            .output()
            .context("running ldd")?;
        // A static binary makes ldd fail with "not a dynamic executable".
        if !out.status.success() {
            return Ok(self);
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let line = line.trim();
            let lib = match line.split_once("=>") {
                Some((_, rest)) => rest.trim().split(' ').next().unwrap_or(""),
                None => line.split(' ').next().unwrap_or(""),
            };
            if lib.starts_with('/') {
                self = self.host_file(lib, Path::new(lib), 0o755)?;
                // glibc dlopen()s libgcc_s for thread cancellation and unwinding;
                // ldd does not list it.
                if lib.ends_with("/libc.so.6") {
                    let gcc = Path::new(lib).with_file_name("libgcc_s.so.1");
                    if gcc.is_file() {
                        let gcc = gcc.display().to_string();
                        self = self.host_file(&gcc, Path::new(&gcc), 0o644)?;
                    }
                }
            }
        }
        Ok(self)
    }

    /// A directory.
    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        self.entries.push(Entry::Dir {
            path: rel(path),
            mode,
        });
        self
    }

    /// A symbolic link.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.entries.push(Entry::Symlink {
            path: rel(path),
            target: target.to_owned(),
        });
        self
    }

    /// A hard link to an earlier entry of this layer.
    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        self.entries.push(Entry::HardLink {
            path: rel(path),
            target: rel(target),
        });
        self
    }

    /// A character device node.
    pub fn char_device(mut self, path: &str, major: u32, minor: u32) -> Self {
        self.entries.push(Entry::CharDevice {
            path: rel(path),
            major,
            minor,
        });
        self
    }

    /// A named pipe (FIFO).
    pub fn fifo(mut self, path: &str) -> Self {
        self.entries.push(Entry::Fifo { path: rel(path) });
        self
    }

    /// An OCI whiteout deleting `path` from the layers below.
    pub fn whiteout(self, path: &str) -> Self {
        let p = rel(path);
        let (dir, name) = match p.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n.to_owned()),
            None => (String::new(), p),
        };
        self.file(&format!("{dir}.wh.{name}"), b"", 0o644)
    }

    /// An OCI opaque-directory marker: `dir` hides everything below it.
    pub fn opaque(self, dir: &str) -> Self {
        let d = rel(dir);
        self.file(
            &format!("{}/.wh..wh..opq", d.trim_end_matches('/')),
            b"",
            0o644,
        )
    }

    /// A file whose tar name is written verbatim (e.g. `../../etc/evil`).
    pub fn raw_name(mut self, name: &[u8], data: impl AsRef<[u8]>) -> Self {
        self.entries.push(Entry::RawName {
            name: name.to_vec(),
            data: data.as_ref().to_vec(),
        });
        self
    }

    /// A hard link whose target is written verbatim (e.g. `../../etc/shadow`).
    pub fn raw_hardlink(mut self, path: &str, target: &[u8]) -> Self {
        self.entries.push(Entry::RawLink {
            path: rel(path),
            target: target.to_vec(),
        });
        self
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> anyhow::Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Deterministic);
        for e in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            match e {
                Entry::File {
                    path,
                    data,
                    mode,
                    uid,
                    gid,
                } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_uid(*uid);
                    h.set_gid(*gid);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, &data[..])?;
                }
                Entry::Dir { path, mode } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    b.append_data(&mut h, path, std::io::empty())?;
                }
                Entry::Symlink { path, target } => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, path, target)?;
                }
                Entry::HardLink { path, target } => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_mode(0o644);
                    h.set_size(0);
                    b.append_link(&mut h, path, target)?;
                }
                Entry::CharDevice { path, major, minor } => {
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_mode(0o666);
                    h.set_size(0);
                    h.set_device_major(*major)?;
                    h.set_device_minor(*minor)?;
                    b.append_data(&mut h, path, std::io::empty())?;
                }
                Entry::Fifo { path } => {
                    h.set_entry_type(tar::EntryType::Fifo);
                    h.set_mode(0o644);
                    h.set_size(0);
                    b.append_data(&mut h, path, std::io::empty())?;
                }
                Entry::RawName { name, data } => {
                    if name.len() > 100 {
                        bail!("raw tar names are limited to 100 bytes");
                    }
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(data.len() as u64);
                    h.as_old_mut().name[..name.len()].copy_from_slice(name);
                    h.set_cksum();
                    b.append(&h, &data[..])?;
                }
                Entry::RawLink { path, target } => {
                    if target.len() > 100 {
                        bail!("raw link targets are limited to 100 bytes");
                    }
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_mode(0o644);
                    h.set_size(0);
                    h.set_path(path)?;
                    h.as_old_mut().linkname[..target.len()].copy_from_slice(target);
                    h.set_cksum();
                    b.append(&h, std::io::empty())?;
                }
            }
        }
        Ok(b.into_inner()?)
    }

    /// Builds the blob.
    pub fn build(&self, docker_media_types: bool) -> anyhow::Result<BuiltLayer> {
        let tar = self.tar()?;
        let diff_id = sha256(&tar);
        let (blob, media_type) = match self.compression {
            Compression::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&tar)?;
                let media = if docker_media_types {
                    DOCKER_LAYER_GZIP
                } else {
                    "application/vnd.oci.image.layer.v1.tar+gzip"
                };
                (gz.finish()?, media)
            }
            Compression::Zstd => (
                zstd::encode_all(&tar[..], 3)?,
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        Ok(BuiltLayer {
            digest: sha256(&blob),
            blob,
            diff_id,
            media_type: media_type.to_owned(),
        })
    }
}

/// A user in the base layer's `/etc/passwd`.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// A group in the base layer's `/etc/group`.
#[derive(Clone, Debug)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    /// Supplementary members.
    pub members: Vec<String>,
}

/// The busybox base layer: `/bin/busybox` with every applet as a hard link at its
/// usual path (critest's MaskedPaths spec needs `/bin/ls` to be a real file), the
/// usual directories, and `/etc/passwd` + `/etc/group` with root, nobody, www-data
/// and the given extra users and groups.
pub fn busybox_layer(users: &[User], groups: &[Group]) -> anyhow::Result<LayerBuilder> {
    busybox_layer_from(Path::new(BUSYBOX), users, groups)
}

/// [`busybox_layer`] built from the busybox binary at `busybox` on the host, copied
/// with the shared libraries it needs when it is dynamically linked.
pub fn busybox_layer_from(
    busybox: &Path,
    users: &[User],
    groups: &[Group],
) -> anyhow::Result<LayerBuilder> {
    if !busybox.is_file() {
        bail!(
            "{} is missing: run integration/scripts/install-deps.sh",
            busybox.display()
        );
    }
    let mut layer = LayerBuilder::new();
    for (dir, mode) in [
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("var", 0o755),
        ("var/run", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
    ] {
        layer = layer.dir(dir, mode);
    }
    layer = layer.host_binary_at("bin/busybox", busybox)?;
    let out = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .context("running busybox --list-full")?;
    if !out.status.success() {
        bail!("busybox --list-full failed: {}", out.status);
    }
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "bin/busybox" || applet.contains("..") {
            continue;
        }
        layer = layer.hardlink(applet, "bin/busybox");
    }
    let mut passwd = String::from(
        "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/false\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
    );
    let mut group = String::from("root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n");
    for u in users {
        passwd.push_str(&format!(
            "{}:x:{}:{}:{}:/home/{}:/bin/sh\n",
            u.name, u.uid, u.gid, u.name, u.name
        ));
    }
    for g in groups {
        group.push_str(&format!("{}:x:{}:{}\n", g.name, g.gid, g.members.join(",")));
    }
    Ok(layer
        .file("etc/passwd", passwd, 0o644)
        .file("etc/group", group, 0o644))
}

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

fn host_arch() -> &'static str {
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

/// Pushes images to a registry over the distribution API.
#[derive(Debug, Clone)]
pub struct Pusher {
    http: reqwest::Client,
    base: String,
    basic: Option<(String, String)>,
}

impl Pusher {
    /// A pusher for the registry at `base` (`http://127.0.0.1:5000`).
    pub fn new(base: &str, basic: Option<(String, String)>) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(60))
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            basic,
        })
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.basic {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        }
    }

    /// Uploads a blob unless the registry has it: POST to start, PATCH the bytes,
    /// PUT with the digest to finish.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> anyhow::Result<String> {
        let digest = sha256(data);
        let head = self
            .auth(
                self.http
                    .head(format!("{}/v2/{repo}/blobs/{digest}", self.base)),
            )
            .send()
            .await?;
        if head.status().is_success() {
            return Ok(digest);
        }
        let start = self
            .auth(
                self.http
                    .post(format!("{}/v2/{repo}/blobs/uploads/", self.base)),
            )
            .send()
            .await?;
        if start.status() != reqwest::StatusCode::ACCEPTED {
            bail!("starting upload to {repo}: HTTP {}", start.status());
        }
        let location = self.location(&start)?;
        let patch = self
            .auth(self.http.patch(&location))
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await?;
        if patch.status() != reqwest::StatusCode::ACCEPTED {
            bail!("uploading {digest} to {repo}: HTTP {}", patch.status());
        }
        let location = self.location(&patch)?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = self
            .auth(self.http.put(format!("{location}{sep}digest={digest}")))
            .header("Content-Length", "0")
            .send()
            .await?;
        if put.status() != reqwest::StatusCode::CREATED {
            let status = put.status();
            let body = put.text().await.unwrap_or_default();
            bail!("finishing upload of {digest} to {repo}: HTTP {status}: {body}");
        }
        Ok(digest)
    }

    fn location(&self, resp: &reqwest::Response) -> anyhow::Result<String> {
        let loc = resp
            .headers()
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .context("upload response has no Location")?;
        Ok(if loc.starts_with("http") {
            loc.to_owned()
        } else {
            format!("{}{loc}", self.base)
        })
    }

    /// Uploads a manifest (or index) document under `reference` (tag or digest).
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let resp = self
            .auth(
                self.http
                    .put(format!("{}/v2/{repo}/manifests/{reference}", self.base)),
            )
            .header("Content-Type", media_type)
            .body(body.to_vec())
            .send()
            .await?;
        if resp.status() != reqwest::StatusCode::CREATED {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            bail!("pushing manifest {repo}:{reference}: HTTP {status}: {text}");
        }
        Ok(())
    }

    /// Pushes a whole image under `repo:tag`.
    pub async fn push(&self, repo: &str, tag: &str, image: &BuiltImage) -> anyhow::Result<()> {
        for layer in &image.layers {
            self.push_blob(repo, &layer.blob).await?;
        }
        self.push_blob(repo, &image.config).await?;
        match &image.index {
            None => {
                self.push_manifest(repo, tag, &image.manifest_media_type, &image.manifest)
                    .await
            }
            Some(index) => {
                if let Some(decoy) = &image.decoy {
                    self.push_manifest(repo, &sha256(decoy), &image.manifest_media_type, decoy)
                        .await?;
                }
                self.push_manifest(
                    repo,
                    &image.manifest_digest,
                    &image.manifest_media_type,
                    &image.manifest,
                )
                .await?;
                self.push_manifest(repo, tag, OCI_INDEX, index).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_record_diff_ids_and_compression() {
        let layer = LayerBuilder::new().file("/a", "x", 0o644);
        let gz = layer.clone().build(false).unwrap();
        let zs = layer
            .clone()
            .compression(Compression::Zstd)
            .build(false)
            .unwrap();
        let raw = layer.compression(Compression::None).build(false).unwrap();
        assert_eq!(gz.diff_id, zs.diff_id);
        assert_eq!(raw.diff_id, raw.digest);
        assert_ne!(gz.digest, zs.digest);
        assert!(gz.blob.starts_with(&[0x1f, 0x8b]));
        assert!(zs.blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]));
        assert!(zs.media_type.ends_with("+zstd"));
    }

    #[test]
    fn whiteout_names() {
        let tar = LayerBuilder::new()
            .whiteout("/etc/gone")
            .opaque("/var/cache")
            .tar()
            .unwrap();
        let mut names = Vec::new();
        for e in tar::Archive::new(&tar[..]).entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(names, ["etc/.wh.gone", "var/cache/.wh..wh..opq"]);
    }

    #[test]
    fn config_carries_runtime_settings_and_the_id_is_its_digest() {
        let img = ImageBuilder::new()
            .files(&[("/x", b"1", 0o644)])
            .user("1003:1004")
            .workdir("/srv")
            .entrypoint(["/bin/sh"])
            .cmd(["-c", "true"])
            .env("A=b")
            .build()
            .unwrap();
        let cfg: serde_json::Value = serde_json::from_slice(&img.config).unwrap();
        assert_eq!(cfg["config"]["User"], "1003:1004");
        assert_eq!(cfg["config"]["WorkingDir"], "/srv");
        assert_eq!(cfg["config"]["Entrypoint"][0], "/bin/sh");
        assert_eq!(cfg["config"]["Env"][1], "A=b");
        assert_eq!(cfg["rootfs"]["diff_ids"][0], img.layers[0].diff_id);
        assert_eq!(img.id(), sha256(&img.config));
    }
}

/// An image as critest (or any test) names it upstream, with its tags.
#[derive(Clone, Debug)]
pub struct Published {
    /// Full upstream repository, e.g. `gcr.io/k8s-staging-cri-tools/test-image-tags`.
    pub upstream: String,
    pub tags: Vec<String>,
    pub image: BuiltImage,
}

impl Published {
    /// The repository path inside a registry (the upstream without its host).
    pub fn path(&self) -> &str {
        self.upstream
            .split_once('/')
            .map_or(self.upstream.as_str(), |(_, p)| p)
    }
}

fn published(upstream: &str, tags: &[&str], image: BuiltImage) -> Published {
    Published {
        upstream: upstream.to_owned(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        image,
    }
}

/// The images critest's image specs pull (cri-tools `pkg/validate/consts.go`), plus
/// the default busybox and `pause:3.9` under both registry names. Built from the
/// busybox base (shared by all, so one snapshot), each with its distinguishing file
/// or USER. Not included: nginx, httpd, nonewprivs and hostnet-nginx (they need
/// more than busybox), and `test-image-digest` (its upstream digest cannot be
/// reproduced). The busybox is Debian's dynamically linked one, whose `sh` execs
/// commands (the MaskedPaths spec needs a masked `/bin/ls` to fail to run).
pub fn critest_images() -> anyhow::Result<Vec<Published>> {
    const STAGING: &str = "gcr.io/k8s-staging-cri-tools";
    let base = busybox_layer_from(
        Path::new(DYNAMIC_BUSYBOX),
        &[User {
            name: "default-user".into(),
            uid: 1000,
            gid: 1000,
        }],
        &[
            Group {
                name: "default-user".into(),
                gid: 1000,
                members: vec![],
            },
            Group {
                name: "group-defined-in-image".into(),
                gid: 50000,
                members: vec!["default-user".into()],
            },
        ],
    )?;
    let busybox = || ImageBuilder::new().layer(base.clone()).cmd(["sh"]);
    let with_file = |name: &str| -> anyhow::Result<BuiltImage> {
        busybox()
            .layer(LayerBuilder::new().file(&format!("/{name}"), format!("{name}\n"), 0o644))
            .build()
    };
    let mut out = vec![
        published(
            "registry.k8s.io/e2e-test-images/busybox",
            &["1.29-2"],
            // Debian's busybox lacks pgrep and ipcs, which the specs run
            // inside containers: take procps' and util-linux's.
            busybox()
                .layer(
                    LayerBuilder::new()
                        .host_binary("/usr/bin/pgrep")?
                        .host_binary("/usr/bin/ipcs")?,
                )
                .build()?,
        ),
        published(
            &format!("{STAGING}/test-image-latest"),
            &["latest"],
            with_file("test-image-latest")?,
        ),
        published(
            &format!("{STAGING}/test-image-tag"),
            &["test", "all"],
            with_file("test-image-tag")?,
        ),
        published(
            &format!("{STAGING}/test-image-tags"),
            &["1", "2", "3"],
            with_file("test-image-tags")?,
        ),
    ];
    for n in 1..=3 {
        let name = format!("test-image-{n}");
        out.push(published(
            &format!("{STAGING}/{name}"),
            &["latest"],
            with_file(&name)?,
        ));
    }
    for (name, user) in [
        ("test-image-user-uid", "1002"),
        ("test-image-user-username", "www-data"),
        ("test-image-user-uid-group", "1003:1004"),
        ("test-image-user-username-group", "www-data:1004"),
        ("test-image-predefined-group", "1000"),
    ] {
        out.push(published(
            &format!("{STAGING}/{name}"),
            &["latest"],
            busybox().user(user).build()?,
        ));
    }
    // The pause image: never run by the image specs, only pulled under two names.
    let pause = busybox().entrypoint(["/bin/sleep", "2147483647"]).build()?;
    out.push(published("registry.k8s.io/pause", &["3.9"], pause.clone()));
    out.push(published("k8s.gcr.io/pause", &["3.9"], pause));
    Ok(out)
}

/// Debian's nginx binary (package `nginx`).
pub const NGINX: &str = "/usr/sbin/nginx";
/// Debian's Apache binary (package `apache2-bin`).
pub const APACHE: &str = "/usr/sbin/apache2";
/// Where Debian keeps Apache's loadable modules.
const APACHE_MODULES: &str = "/usr/lib/apache2/modules";

/// The `berth-nnp` test program built by cargo next to the running test binary
/// (`$BERTH_NNP_BIN` overrides).
pub fn nnp_binary() -> anyhow::Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_NNP_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("berth-nnp");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "berth-nnp not found next to {}; build it with `cargo build -p berth-integration --bins` or set BERTH_NNP_BIN",
        exe.display()
    )
}

/// nginx from Debian on the busybox base, started by its ENTRYPOINT in the
/// foreground (so PID 1's command line reads `nginx: master process ...`), writing
/// `/var/run/nginx.pid` and serving a page on `port`.
pub fn nginx_image(base: &LayerBuilder, port: u16) -> anyhow::Result<BuiltImage> {
    let conf = format!(
        "user nobody nogroup;\nworker_processes 1;\npid /var/run/nginx.pid;\n\
         error_log /dev/stderr notice;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log /dev/stdout;\n  server {{\n    listen {port};\n\
         \x20   root /usr/share/nginx/html;\n    index index.html;\n  }}\n}}\n"
    );
    ImageBuilder::new()
        .layer(base.clone())
        .layer(
            LayerBuilder::new()
                .host_binary(NGINX)?
                .dir("etc/nginx", 0o755)
                .file("etc/nginx/nginx.conf", conf, 0o644)
                .dir("var/log/nginx", 0o755)
                .dir("var/lib/nginx", 0o755)
                .dir("usr/share/nginx/html", 0o755)
                .file(
                    "usr/share/nginx/html/index.html",
                    "<html><head><title>Welcome to nginx!</title></head><body>Welcome to nginx!</body></html>\n",
                    0o644,
                ),
        )
        .entrypoint(["nginx", "-g", "daemon off;"])
        .cmd(Vec::<String>::new())
        .expose(&format!("{port}/tcp"))
        .stop_signal("SIGQUIT")
        .build()
}

/// Apache httpd from Debian on the busybox base, run as `httpd -DFOREGROUND` so its
/// log says `Command line: 'httpd -D FOREGROUND'` as the upstream image's does.
pub fn httpd_image(base: &LayerBuilder) -> anyhow::Result<BuiltImage> {
    let mut layer = LayerBuilder::new().host_binary(APACHE)?;
    let modules = ["mod_mpm_event.so", "mod_authz_core.so", "mod_dir.so"];
    for m in modules {
        layer = layer.host_binary(&format!("{APACHE_MODULES}/{m}"))?;
    }
    let conf = format!(
        "ServerRoot /etc/apache2\nDefaultRuntimeDir /var/run/apache2\nPidFile /var/run/apache2/httpd.pid\n\
         Mutex file:/var/run/apache2 default\nListen 80\n\
         LoadModule mpm_event_module {APACHE_MODULES}/mod_mpm_event.so\n\
         LoadModule authz_core_module {APACHE_MODULES}/mod_authz_core.so\n\
         LoadModule dir_module {APACHE_MODULES}/mod_dir.so\n\
         User www-data\nGroup www-data\nServerName localhost\n\
         ErrorLog /proc/self/fd/2\nLogLevel info\n\
         DocumentRoot /usr/local/apache2/htdocs\n\
         <Directory /usr/local/apache2/htdocs>\n  Require all granted\n</Directory>\n\
         DirectoryIndex index.html\n"
    );
    let layer = layer
        .hardlink("usr/local/bin/httpd", APACHE)
        .file(
            "usr/local/bin/httpd-foreground",
            "#!/bin/sh\nset -e\nrm -f /var/run/apache2/httpd.pid\n# A full path: busybox sh would prefer its own httpd applet.\nexec /usr/local/bin/httpd -DFOREGROUND \"$@\"\n",
            0o755,
        )
        .dir("etc/apache2", 0o755)
        .file("etc/apache2/apache2.conf", conf, 0o644)
        .dir("var/run/apache2", 0o755)
        .dir("usr/local/apache2/htdocs", 0o755)
        .file(
            "usr/local/apache2/htdocs/index.html",
            "<html><body><h1>It works!</h1></body></html>\n",
            0o644,
        );
    ImageBuilder::new()
        .layer(base.clone())
        .layer(layer)
        .cmd(["httpd-foreground"])
        .expose("80/tcp")
        .stop_signal("SIGWINCH")
        .build()
}

/// critest's `nonewprivs` image: `/usr/local/bin/nnp` set-uid root, `CMD ["nnp"]`.
pub fn nonewprivs_image(base: &LayerBuilder) -> anyhow::Result<BuiltImage> {
    let nnp = nnp_binary()?;
    let mut layer = LayerBuilder::new().host_file("usr/local/bin/nnp", &nnp, 0o4755)?;
    // The program is dynamically linked: bring its loader and libraries.
    let probe = LayerBuilder::new().host_binary(&nnp.display().to_string())?;
    for e in probe.entries.into_iter().skip(1) {
        layer.entries.push(e);
    }
    ImageBuilder::new()
        .layer(base.clone())
        .layer(layer)
        .cmd(["nnp"])
        .build()
}

/// The critest images that need more than busybox: nginx (pod port 80),
/// hostnet-nginx (port 12003), httpd and nonewprivs. Needs Debian's `nginx` and
/// `apache2-bin` and the `berth-nnp` binary of this crate.
pub fn critest_server_images() -> anyhow::Result<Vec<Published>> {
    let base = busybox_layer(&[], &[])?;
    Ok(vec![
        published(
            "registry.k8s.io/e2e-test-images/nginx",
            &["1.14-2"],
            nginx_image(&base, 80)?,
        ),
        published(
            &format!("gcr.io/k8s-staging-cri-tools/hostnet-nginx-{}", host_arch()),
            &["latest"],
            nginx_image(&base, 12003)?,
        ),
        published(
            "registry.k8s.io/e2e-test-images/httpd",
            &["2.4.39-4"],
            httpd_image(&base)?,
        ),
        published(
            "registry.k8s.io/e2e-test-images/nonewprivs",
            &["1.3"],
            nonewprivs_image(&base)?,
        ),
    ])
}
