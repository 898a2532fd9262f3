//! Offline import: load images from an OCI image-layout tar or a `docker save` tar
//! (gzip-compressed or not) into the store, for air-gapped nodes and tests.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::Digest as _;

use super::{
    Image, ImageStore, Layer, StoreError, blob_path, io_err, remove_path, snapshot_dir,
    unpack_snapshot, write_atomic,
};
use crate::distribution::media;
use crate::oci::{self, ConfigFile, Descriptor, ManifestKind};
use crate::reference::{Digest, Reference};

/// The annotation containerd writes with the full image name.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation naming a tag (sometimes a full reference).
const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An image read from the archive, its blobs already verified and in the store.
struct Staged {
    tags: Vec<String>,
    repo_digests: Vec<String>,
    config: ConfigFile,
    config_digest: Digest,
    config_size: u64,
    manifest_digest: Digest,
    manifest_blobs: Vec<Digest>,
    manifest_size: u64,
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn bad(path: &Path, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        detail: detail.into(),
    }
}

/// How far an import has got, for a progress display.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportProgress {
    /// Bytes of the archive file read so far.
    pub read_bytes: u64,
    /// Layers unpacked (or found already unpacked) so far.
    pub layers_done: usize,
    /// Layers to unpack; 0 until the archive has been read.
    pub layers: usize,
}

/// Called with each step of an import, from a blocking thread.
pub type ProgressFn = std::sync::Arc<dyn Fn(ImportProgress) + Send + Sync>;

/// Counts the bytes read through it and reports them every 1 MiB.
struct Counting<R> {
    inner: R,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
    reported: u64,
    progress: Option<ProgressFn>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let read = self
            .read
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed)
            + n as u64;
        if let Some(p) = &self.progress
            && (read - self.reported >= 1 << 20 || n == 0)
        {
            self.reported = read;
            p(ImportProgress {
                read_bytes: read,
                ..ImportProgress::default()
            });
        }
        Ok(n)
    }
}

impl ImageStore {
    /// Imports every image in the archive at `path` (OCI image layout or `docker
    /// save` format, optionally gzip-compressed) and returns them. Names come from
    /// `RepoTags` (docker) or the `io.containerd.image.name` /
    /// `org.opencontainers.image.ref.name` annotations (OCI); an image without a
    /// name is still stored and found by id.
    pub async fn import_archive(&self, path: &Path) -> Result<Vec<Image>, StoreError> {
        let file = File::open(path).map_err(io_err("opening", path))?;
        self.import_archive_file(file, path, None).await
    }

    /// [`ImageStore::import_archive`] from an open file (berthd receives the
    /// client's descriptor), calling `progress` as the archive is read and its
    /// layers unpacked. `label` names the archive in errors and logs.
    pub async fn import_archive_file(
        &self,
        file: File,
        label: &Path,
        progress: Option<ProgressFn>,
    ) -> Result<Vec<Image>, StoreError> {
        let _no_gc = self.inner.gc.read().await;
        let root = self.inner.root.clone();
        let options = self.options();
        let platform = options.platform.clone();
        let limits = options.unpack;
        let json_limits = (options.max_manifest_bytes, options.max_config_bytes);
        let archive = label.to_owned();
        let staged = tokio::task::spawn_blocking(move || {
            let work = tempfile::Builder::new()
                .prefix("import-")
                .tempdir_in(root.join("ingest"))
                .map_err(io_err(
                    "creating an import directory in",
                    &root.join("ingest"),
                ))?;
            let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let reader = Counting {
                inner: file,
                read: read.clone(),
                reported: 0,
                progress: progress.clone(),
            };
            extract(reader, &archive, work.path())?;
            let read_bytes = read.load(std::sync::atomic::Ordering::Relaxed);
            let staged = if work.path().join("index.json").is_file() {
                // Docker 25+ archives are OCI layouts too: the layout keeps the
                // manifest digests (and so the repo digests).
                stage_oci(&root, work.path(), &platform, json_limits)?
            } else if work.path().join("manifest.json").is_file() {
                stage_docker(&root, work.path(), json_limits)?
            } else {
                return Err(bad(
                    &archive,
                    "neither manifest.json (docker save) nor index.json (OCI layout) found",
                ));
            };
            let layers = staged.iter().map(|s| s.layers.len()).sum();
            let mut done = 0;
            let report = |layers_done| {
                if let Some(p) = &progress {
                    p(ImportProgress {
                        read_bytes,
                        layers_done,
                        layers,
                    });
                }
            };
            report(0);
            for image in &staged {
                for layer in &image.layers {
                    if !snapshot_dir(&root, &layer.chain_id).is_dir() {
                        unpack_snapshot(
                            &root.join("snapshots"),
                            &blob_path(&root, &layer.digest),
                            layer,
                            &limits,
                        )?;
                    }
                    done += 1;
                    report(done);
                }
            }
            Ok(staged)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        self.sync_fs().await?;
        let mut out = Vec::new();
        for s in staged {
            let size =
                s.layers.iter().map(|l| l.size).sum::<u64>() + s.config_size + s.manifest_size;
            let image = Image {
                id: s.config_digest,
                repo_tags: s.tags,
                repo_digests: s.repo_digests,
                size,
                config: s.config.config.clone().unwrap_or_default(),
                manifest_digest: s.manifest_digest,
                manifest_blobs: s.manifest_blobs,
                layers: s.layers,
                created: s.config.created.clone(),
            };
            let image = self.commit(image).await?;
            tracing::info!(image = %image.id, tags = ?image.repo_tags, archive = %label.display(), "image imported");
            out.push(image);
        }
        Ok(out)
    }
}

/// Reads a JSON document of the archive, refusing one over `limit` bytes (an
/// archive is image input: its manifests and configs get the registry's limits).
fn read_json_file(path: &Path, limit: u64, key: &str) -> Result<Vec<u8>, StoreError> {
    let file = File::open(path).map_err(io_err("opening", path))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("reading", path))?;
    if bytes.len() as u64 > limit {
        return Err(bad(
            path,
            format!("larger than {key} = {limit} bytes; refused"),
        ));
    }
    Ok(bytes)
}

/// Unpacks the archive's regular files and directories into `dest`. Links and
/// special files are ignored (neither format needs them); `..` is refused.
fn extract(file: impl Read, archive: &Path, dest: &Path) -> Result<(), StoreError> {
    let mut reader = BufReader::new(file);
    let head = reader.fill_buf().map_err(io_err("reading", archive))?;
    let stream: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut tar = tar::Archive::new(stream);
    let entries = tar.entries().map_err(io_err("reading", archive))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err("reading", archive))?;
        let raw = entry
            .path()
            .map_err(io_err("reading", archive))?
            .into_owned();
        let mut rel = PathBuf::new();
        for c in raw.components() {
            match c {
                Component::Normal(p) => rel.push(p),
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    return Err(bad(archive, format!("entry {} escapes", raw.display())));
                }
            }
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(&rel);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(io_err("creating", &target))?;
        } else if kind.is_file() {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
            }
            let mut out = File::create(&target).map_err(io_err("creating", &target))?;
            io::copy(&mut entry, &mut out).map_err(io_err("writing", &target))?;
        }
    }
    // Read what follows the end-of-archive blocks (record padding), so progress
    // ends at the file's size; best effort, the images are complete already.
    let _ = io::copy(&mut tar.into_inner(), &mut io::sink());
    Ok(())
}

/// SHA-256 of a file.
fn digest_file(path: &Path) -> Result<(Digest, u64), StoreError> {
    let mut f = File::open(path).map_err(io_err("opening", path))?;
    let mut h = sha2::Sha256::new();
    let n = io::copy(&mut f, &mut h).map_err(io_err("reading", path))?;
    Ok((Digest::from_sha256(h.finalize().into()), n))
}

/// Moves a verified file into the blob store (or drops it if already there).
fn store_blob_file(root: &Path, file: &Path, digest: &Digest) -> Result<(), StoreError> {
    let dest = blob_path(root, digest);
    if dest.is_file() {
        return remove_path(file);
    }
    std::fs::rename(file, &dest).map_err(io_err("storing blob", &dest))?;
    super::sync_parent(&dest)
}

fn store_blob_bytes(root: &Path, digest: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
    let dest = blob_path(root, digest);
    if dest.is_file() {
        return Ok(());
    }
    write_atomic(&dest, bytes)
}

fn layer_media_type(path: &Path) -> Result<&'static str, StoreError> {
    let mut head = [0u8; 4];
    let mut f = File::open(path).map_err(io_err("opening", path))?;
    let n = f.read(&mut head).map_err(io_err("reading", path))?;
    Ok(if head[..n].starts_with(&[0x1f, 0x8b]) {
        media::DOCKER_LAYER_GZIP
    } else if head[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        media::OCI_LAYER_ZSTD
    } else {
        "application/vnd.docker.image.rootfs.diff.tar"
    })
}

fn parse_config(path: &Path, bytes: &[u8]) -> Result<ConfigFile, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| bad(path, format!("image config: {e}")))
}

fn layers_of(
    config: &ConfigFile,
    blobs: Vec<(Digest, String, u64)>,
    at: &Path,
) -> Result<Vec<Layer>, StoreError> {
    if config.rootfs.diff_ids.len() != blobs.len() {
        return Err(bad(
            at,
            format!(
                "{} diff_ids for {} layers",
                config.rootfs.diff_ids.len(),
                blobs.len()
            ),
        ));
    }
    let chains = oci::chain_ids(&config.rootfs.diff_ids);
    Ok(blobs
        .into_iter()
        .zip(config.rootfs.diff_ids.iter().zip(chains))
        .map(|((digest, media_type, size), (diff_id, chain_id))| Layer {
            digest,
            media_type,
            size,
            diff_id: diff_id.clone(),
            chain_id,
        })
        .collect())
}

/// Limits on the archive's JSON documents: (manifests and indexes, configs).
type JsonLimits = (u64, u64);
const MANIFEST_KEY: &str = "registry.max_manifest_bytes";
const CONFIG_KEY: &str = "registry.max_config_bytes";

fn stage_docker(root: &Path, work: &Path, limits: JsonLimits) -> Result<Vec<Staged>, StoreError> {
    let manifest_path = work.join("manifest.json");
    let bytes = read_json_file(&manifest_path, limits.0, MANIFEST_KEY)?;
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(&bytes).map_err(|e| bad(&manifest_path, e.to_string()))?;
    let inside = |name: &str| -> Result<PathBuf, StoreError> {
        if Path::new(name)
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(bad(&manifest_path, format!("path {name:?} escapes")));
        }
        Ok(work.join(name))
    };
    let mut out = Vec::new();
    // Layer files shared by several images are moved into the store once.
    let mut seen: std::collections::HashMap<String, (Digest, u64, &'static str)> =
        std::collections::HashMap::new();
    for entry in entries {
        let config_path = inside(&entry.config)?;
        let config_bytes = read_json_file(&config_path, limits.1, CONFIG_KEY)?;
        let config_digest = Digest::of(&config_bytes);
        let config = parse_config(&config_path, &config_bytes)?;
        let mut blobs = Vec::new();
        let mut descriptors = Vec::new();
        for name in &entry.layers {
            let (digest, size, media_type) = match seen.get(name) {
                Some(known) => known.clone(),
                None => {
                    let path = inside(name)?;
                    let (digest, size) = digest_file(&path)?;
                    let media_type = layer_media_type(&path)?;
                    store_blob_file(root, &path, &digest)?;
                    seen.insert(name.clone(), (digest.clone(), size, media_type));
                    (digest, size, media_type)
                }
            };
            descriptors.push(serde_json::json!({
                "mediaType": media_type, "digest": digest, "size": size
            }));
            blobs.push((digest, media_type.to_owned(), size));
        }
        let layers = layers_of(&config, blobs, &config_path)?;
        store_blob_bytes(root, &config_digest, &config_bytes)?;
        // `docker save` has no manifest; write the schema 2 manifest it stands for.
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::DOCKER_MANIFEST,
            "config": {"mediaType": media::DOCKER_CONFIG, "digest": config_digest, "size": config_bytes.len()},
            "layers": descriptors,
        }))
        .map_err(|e| bad(&manifest_path, e.to_string()))?;
        let manifest_digest = Digest::of(&manifest);
        store_blob_bytes(root, &manifest_digest, &manifest)?;
        let mut tags = Vec::new();
        for t in entry.repo_tags.unwrap_or_default() {
            let r = Reference::parse(&t)?;
            tags.extend(r.repo_tag());
        }
        out.push(Staged {
            tags,
            repo_digests: Vec::new(),
            config,
            config_digest,
            config_size: config_bytes.len() as u64,
            manifest_size: manifest.len() as u64,
            manifest_blobs: vec![manifest_digest.clone()],
            manifest_digest,
            layers,
        });
    }
    Ok(out)
}

/// Reads `blobs/sha256/<hex>` of an OCI layout (at most `limit` bytes) and checks
/// its digest.
fn oci_blob(work: &Path, digest: &Digest, limit: u64, key: &str) -> Result<Vec<u8>, StoreError> {
    let path = work.join("blobs/sha256").join(digest.hex());
    let bytes = read_json_file(&path, limit, key)?;
    let actual = Digest::of(&bytes);
    if &actual != digest {
        return Err(bad(&path, format!("content has digest {actual}")));
    }
    Ok(bytes)
}

#[derive(Deserialize)]
struct OciIndexFile {
    manifests: Vec<AnnotatedDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnnotatedDescriptor {
    #[serde(flatten)]
    descriptor: Descriptor,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// `RepoTags` of a `docker save` manifest.json by config digest, for OCI layout
/// entries without a name annotation. Best effort: the layout is what is imported.
fn docker_tags(work: &Path, limits: JsonLimits) -> HashMap<Digest, Vec<String>> {
    let mut tags = HashMap::new();
    let path = work.join("manifest.json");
    let Ok(bytes) = read_json_file(&path, limits.0, MANIFEST_KEY) else {
        return tags;
    };
    let Ok(entries) = serde_json::from_slice::<Vec<DockerEntry>>(&bytes) else {
        return tags;
    };
    for entry in entries {
        let safe = Path::new(&entry.config)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !safe {
            continue;
        }
        if let Ok(config) = read_json_file(&work.join(&entry.config), limits.1, CONFIG_KEY) {
            tags.insert(Digest::of(&config), entry.repo_tags.unwrap_or_default());
        }
    }
    tags
}

fn stage_oci(
    root: &Path,
    work: &Path,
    platform: &oci::Platform,
    limits: JsonLimits,
) -> Result<Vec<Staged>, StoreError> {
    let index_path = work.join("index.json");
    let bytes = read_json_file(&index_path, limits.0, MANIFEST_KEY)?;
    let index: OciIndexFile =
        serde_json::from_slice(&bytes).map_err(|e| bad(&index_path, e.to_string()))?;
    let mut out = Vec::new();
    let mut tags_by_config: Option<HashMap<Digest, Vec<String>>> = None;
    for entry in index.manifests {
        let top = entry.descriptor.digest.clone();
        let top_bytes = oci_blob(work, &top, limits.0, MANIFEST_KEY)?;
        let mut manifest_blobs = vec![(top.clone(), top_bytes.clone())];
        let parsed = oci::parse_manifest(&entry.descriptor.media_type, &top_bytes)
            .map_err(|e| bad(&index_path, e.to_string()))?;
        let (manifest_digest, manifest, manifest_size) = match parsed {
            ManifestKind::Manifest(m) => (top.clone(), m, top_bytes.len() as u64),
            ManifestKind::Index(i) => {
                let Some(d) = oci::select_platform(&i, platform) else {
                    return Err(bad(
                        &index_path,
                        format!("no manifest for {}/{}", platform.os, platform.architecture),
                    ));
                };
                let b = oci_blob(work, &d.digest, limits.0, MANIFEST_KEY)?;
                let m = match oci::parse_manifest(&d.media_type, &b) {
                    Ok(ManifestKind::Manifest(m)) => m,
                    _ => return Err(bad(&index_path, format!("{} is not a manifest", d.digest))),
                };
                manifest_blobs.push((d.digest.clone(), b.clone()));
                (d.digest.clone(), m, b.len() as u64)
            }
        };
        let config_bytes = oci_blob(work, &manifest.config.digest, limits.1, CONFIG_KEY)?;
        let config = parse_config(&index_path, &config_bytes)?;
        let mut blobs = Vec::new();
        for l in &manifest.layers {
            let src = work.join("blobs/sha256").join(l.digest.hex());
            let dest = blob_path(root, &l.digest);
            if !dest.is_file() {
                let (actual, _) = digest_file(&src)?;
                if actual != l.digest {
                    return Err(bad(&src, format!("content has digest {actual}")));
                }
                // Several manifests may share a layer: copy, the source may be needed
                // again. A private temp name: a pull or another import may store
                // the same blob at the same time.
                let ingest = root.join("ingest");
                let tmp = tempfile::Builder::new()
                    .prefix("blob-")
                    .tempfile_in(&ingest)
                    .map_err(io_err("creating a blob file in", &ingest))?;
                std::fs::copy(&src, tmp.path()).map_err(io_err("copying", &src))?;
                tmp.persist(&dest).map_err(|e| StoreError::Io {
                    what: "storing blob",
                    path: dest.clone(),
                    source: e.error,
                })?;
            }
            blobs.push((l.digest.clone(), l.media_type.clone(), l.size));
        }
        let layers = layers_of(&config, blobs, &index_path)?;
        store_blob_bytes(root, &manifest.config.digest, &config_bytes)?;
        for (d, b) in &manifest_blobs {
            store_blob_bytes(root, d, b)?;
        }
        let name = entry
            .annotations
            .get(CONTAINERD_NAME)
            .or_else(|| {
                entry
                    .annotations
                    .get(OCI_REF_NAME)
                    .filter(|n| n.contains(['/', ':']))
            })
            .map(|n| Reference::parse(n))
            .transpose()?;
        let (tags, repo_digests) = match &name {
            Some(r) => (
                r.repo_tag().into_iter().collect(),
                vec![r.repo_digest(&top)],
            ),
            None => {
                let docker = tags_by_config.get_or_insert_with(|| docker_tags(work, limits));
                let mut tags = Vec::new();
                for t in docker.get(&manifest.config.digest).into_iter().flatten() {
                    tags.extend(Reference::parse(t)?.repo_tag());
                }
                (tags, Vec::new())
            }
        };
        out.push(Staged {
            tags,
            repo_digests,
            config,
            config_digest: manifest.config.digest.clone(),
            config_size: config_bytes.len() as u64,
            manifest_digest,
            manifest_blobs: manifest_blobs.into_iter().map(|(d, _)| d).collect(),
            manifest_size,
            layers,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::store::StoreOptions;

    /// An uncompressed layer with one file owned by the test's user.
    fn layer(name: &str, data: &[u8]) -> Vec<u8> {
        let me = std::fs::metadata("/proc/self").unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(me.uid().into());
        h.set_gid(me.gid().into());
        b.append_data(&mut h, name, data).unwrap();
        b.into_inner().unwrap()
    }

    fn config(diff_ids: &[&Digest]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"User": "1002", "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap()
    }

    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn open(dir: &Path) -> ImageStore {
        ImageStore::open(dir, StoreOptions::default()).unwrap()
    }

    #[tokio::test]
    async fn docker_save_archives_import_with_their_tags() {
        let tmp = tempfile::tempdir().unwrap();
        let l = layer("hello", b"world");
        let diff = Digest::of(&l);
        let cfg = config(&[&diff]);
        let manifest = br#"[{"Config":"cfg.json","RepoTags":["busybox:1.36","example.com/a/b:v1"],"Layers":["l1/layer.tar"]}]"#;
        let tar = archive(&[
            ("manifest.json", manifest),
            ("cfg.json", &cfg),
            ("l1/layer.tar", &l),
        ]);
        let file = tmp.path().join("save.tar");
        std::fs::write(&file, tar).unwrap();
        let store = open(&tmp.path().join("store"));
        let images = store.import_archive(&file).await.unwrap();
        assert_eq!(images.len(), 1);
        let img = &images[0];
        assert_eq!(img.id, Digest::of(&cfg));
        assert_eq!(
            img.repo_tags,
            ["docker.io/library/busybox:1.36", "example.com/a/b:v1"]
        );
        assert_eq!(img.uid(), Some(1002));
        assert_eq!(store.status("busybox:1.36").unwrap().as_ref(), Some(img));
        let dirs = store.snapshot_dirs(img);
        assert_eq!(std::fs::read(dirs[0].join("hello")).unwrap(), b"world");
        assert!(
            std::fs::read_dir(tmp.path().join("store/ingest"))
                .unwrap()
                .next()
                .is_none()
        );
    }

    #[tokio::test]
    async fn oci_layouts_import_with_the_containerd_name_and_reject_bad_blobs() {
        let tmp = tempfile::tempdir().unwrap();
        let l = layer("oci", b"layout");
        let diff = Digest::of(&l);
        let cfg = config(&[&diff]);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": Digest::of(&cfg), "size": cfg.len()},
            "layers": [{"mediaType": media::OCI_LAYER, "digest": diff, "size": l.len()}],
        }))
        .unwrap();
        let md = Digest::of(&manifest);
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": media::OCI_MANIFEST, "digest": md, "size": manifest.len(),
                "annotations": {"io.containerd.image.name": "registry.k8s.io/pause:3.9",
                                "org.opencontainers.image.ref.name": "3.9"}}],
        }))
        .unwrap();
        let blob = |d: &Digest| format!("blobs/sha256/{}", d.hex());
        let (bm, bc, bl) = (blob(&md), blob(&Digest::of(&cfg)), blob(&diff));
        let tar = archive(&[
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json", &index),
            (&bm, &manifest),
            (&bc, &cfg),
            (&bl, &l),
        ]);
        let file = tmp.path().join("oci.tar");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        std::fs::write(&file, gz.finish().unwrap()).unwrap();
        let store = open(&tmp.path().join("store"));
        let images = store.import_archive(&file).await.unwrap();
        assert_eq!(images[0].repo_tags, ["registry.k8s.io/pause:3.9"]);
        assert_eq!(
            images[0].repo_digests,
            [format!("registry.k8s.io/pause@{md}")]
        );

        // The same layout with a tampered layer is refused and adds nothing.
        let mut evil = l.clone();
        let last = evil.len() - 1;
        evil[last] ^= 1;
        let tar = archive(&[
            ("index.json", &index),
            (&bm, &manifest),
            (&bc, &cfg),
            (&bl, &evil),
        ]);
        std::fs::write(&file, tar).unwrap();
        let store2 = open(&tmp.path().join("store2"));
        assert!(store2.import_archive(&file).await.is_err());
        assert!(store2.list().is_empty());

        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        std::fs::write(&file, b.into_inner().unwrap()).unwrap();
        let err = store2.import_archive(&file).await.unwrap_err().to_string();
        assert!(err.contains("escapes"), "{err}");
        assert!(!tmp.path().join("store2/ingest/escape").exists());
    }

    /// The archive's JSON documents are image input: an oversized one is refused
    /// with the limit named, before it is read into memory.
    #[tokio::test]
    async fn oversized_archive_manifests_are_refused_naming_the_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let padded = format!("[{}]", " ".repeat(4096));
        let file = tmp.path().join("big.tar");
        std::fs::write(&file, archive(&[("manifest.json", padded.as_bytes())])).unwrap();
        let options = StoreOptions {
            max_manifest_bytes: 1024,
            ..StoreOptions::default()
        };
        let store = ImageStore::open(tmp.path().join("store"), options).unwrap();
        let err = store.import_archive(&file).await.unwrap_err().to_string();
        assert!(err.contains("registry.max_manifest_bytes = 1024"), "{err}");
        assert!(store.list().is_empty());
    }
}
