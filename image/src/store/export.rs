//! Export: write stored images as one tar that is both a `docker save` archive
//! (`manifest.json`) and an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`), the shape `docker save` has had since Docker 25. Docker's
//! `docker load`, containerd's `ctr images import` and `berthd image import` read it.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::{Image, ImageStore, StoreError, blob_path, io_err};
use crate::distribution::media;
use crate::reference::{Digest, Reference};

/// The annotation containerd (and Docker 25+) write with the full image name.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation naming the tag.
const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

impl ImageStore {
    /// Writes the images named by `refs` (tags, digest references or ids) to `out`
    /// as a `docker save`-compatible OCI image layout tar and returns them. Every
    /// name must exist ([`StoreError::NotFound`] otherwise, before anything is
    /// written). GC is held off while the blobs are copied.
    pub async fn export_archive(
        &self,
        refs: &[String],
        out: File,
    ) -> Result<Vec<Image>, StoreError> {
        let _no_gc = self.inner.gc.read().await;
        let mut images: Vec<Image> = Vec::new();
        for r in refs {
            let Some(image) = self.status(r)? else {
                return Err(StoreError::NotFound {
                    reference: r.clone(),
                    tried: vec!["the local image store".into()],
                });
            };
            if !images.iter().any(|i| i.id == image.id) {
                images.push(image);
            }
        }
        let root = self.inner.root.clone();
        let written = images.clone();
        tokio::task::spawn_blocking(move || write_archive(&root, &written, out))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(images)
    }
}

/// One `index.json` entry: the top manifest (or index) blob and the name it had.
fn index_entries(image: &Image, root: &Path) -> Result<Vec<serde_json::Value>, StoreError> {
    let top = image
        .manifest_blobs
        .first()
        .unwrap_or(&image.manifest_digest);
    // The digest this name was pulled by, so a re-import keeps its repo digest.
    let top_for = |name: &str| -> Digest {
        image
            .repo_digests
            .iter()
            .filter_map(|rd| rd.split_once('@'))
            .filter(|(n, _)| *n == name)
            .filter_map(|(_, d)| Digest::parse(d).ok())
            .find(|d| image.manifest_blobs.contains(d))
            .unwrap_or_else(|| top.clone())
    };
    let mut entries = Vec::new();
    let named = |digest: Digest, annotations: serde_json::Value| {
        descriptor(root, &digest).map(|mut d| {
            if !annotations.is_null() {
                d["annotations"] = annotations;
            }
            d
        })
    };
    for tag in &image.repo_tags {
        let r = Reference::parse(tag)?;
        entries.push(named(
            top_for(&r.name()),
            serde_json::json!({
                CONTAINERD_NAME: tag,
                OCI_REF_NAME: r.tag().unwrap_or("latest"),
            }),
        )?);
    }
    if image.repo_tags.is_empty() {
        for rd in &image.repo_digests {
            let r = Reference::parse(rd)?;
            let Some(d) = r.digest().cloned() else {
                continue;
            };
            entries.push(named(d, serde_json::json!({ CONTAINERD_NAME: rd }))?);
        }
    }
    if entries.is_empty() {
        // Nameless: found by id after an import.
        entries.push(named(top.clone(), serde_json::Value::Null)?);
    }
    Ok(entries)
}

/// The descriptor of a stored manifest or index blob.
fn descriptor(root: &Path, digest: &Digest) -> Result<serde_json::Value, StoreError> {
    let path = blob_path(root, digest);
    let bytes = std::fs::read(&path).map_err(io_err("reading", &path))?;
    let doc: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
    let media_type = match doc.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) => m.to_owned(),
        None if doc.get("manifests").is_some() => media::OCI_INDEX.to_owned(),
        None => media::OCI_MANIFEST.to_owned(),
    };
    Ok(serde_json::json!({
        "mediaType": media_type,
        "digest": digest,
        "size": bytes.len(),
    }))
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

fn write_archive(root: &Path, images: &[Image], out: File) -> Result<(), StoreError> {
    let target = Path::new("the export archive");
    let werr = |e: std::io::Error| io_err("writing", target)(e);
    let mut index = Vec::new();
    let mut docker = Vec::new();
    let mut blobs = BTreeSet::new();
    for image in images {
        index.extend(index_entries(image, root)?);
        docker.push(serde_json::json!({
            "Config": blob_name(&image.id),
            "RepoTags": image.repo_tags,
            "Layers": image.layers.iter().map(|l| blob_name(&l.digest)).collect::<Vec<_>>(),
        }));
        blobs.insert(image.id.clone());
        blobs.extend(image.manifest_blobs.iter().cloned());
        blobs.extend(image.layers.iter().map(|l| l.digest.clone()));
    }
    let mut tar = tar::Builder::new(std::io::BufWriter::new(out));
    tar.mode(tar::HeaderMode::Deterministic);
    let add_bytes = |tar: &mut tar::Builder<_>, name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, bytes).map_err(werr)
    };
    let json = |v: &serde_json::Value| serde_json::to_vec(v).unwrap_or_default();
    add_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add_bytes(
        &mut tar,
        "index.json",
        &json(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": index,
        })),
    )?;
    add_bytes(
        &mut tar,
        "manifest.json",
        &json(&serde_json::Value::Array(docker)),
    )?;
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        tar.append_data(&mut h, dir, std::io::empty())
            .map_err(werr)?;
    }
    for digest in &blobs {
        let path = blob_path(root, digest);
        let mut f = File::open(&path).map_err(io_err("opening", &path))?;
        tar.append_file(blob_name(digest), &mut f).map_err(werr)?;
    }
    let mut w = tar.into_inner().map_err(werr)?;
    w.flush().map_err(werr)?;
    w.into_inner()
        .map_err(|e| werr(e.into_error()))?
        .sync_all()
        .map_err(werr)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::store::StoreOptions;

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

    /// The archive's regular files, by name.
    fn members(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut out = std::collections::BTreeMap::new();
        let mut a = tar::Archive::new(File::open(path).unwrap());
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            if !e.header().entry_type().is_file() {
                continue;
            }
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(name, data);
        }
        out
    }

    /// An OCI layout (as a registry would serve it: index -> manifest) imported,
    /// exported, and imported again into a fresh store is the same image with the
    /// same names and repo digest; the archive is a valid `docker save` too.
    #[tokio::test]
    async fn export_then_import_round_trips_names_digests_and_content() {
        let tmp = tempfile::tempdir().unwrap();
        let l = layer("etc/motd", b"exported\n");
        let diff = Digest::of(&l);
        let cfg = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {"Cmd": ["cat", "/etc/motd"]},
            "rootfs": {"type": "layers", "diff_ids": [diff]},
        }))
        .unwrap();
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
                "annotations": {"io.containerd.image.name": "example.com/app:1"}}],
        }))
        .unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("index.json".to_owned(), &index),
            (blob_name(&md), &manifest),
            (blob_name(&Digest::of(&cfg)), &cfg),
            (blob_name(&diff), &l),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        let src = tmp.path().join("src.tar");
        std::fs::write(&src, b.into_inner().unwrap()).unwrap();
        let first = ImageStore::open(tmp.path().join("a"), StoreOptions::default()).unwrap();
        let original = first.import_archive(&src).await.unwrap().remove(0);

        let out = tmp.path().join("out.tar");
        let exported = first
            .export_archive(&["example.com/app:1".into()], File::create(&out).unwrap())
            .await
            .unwrap();
        assert_eq!(exported, std::slice::from_ref(&original));
        let files = members(&out);
        for name in ["oci-layout", "index.json", "manifest.json"] {
            assert!(
                files.contains_key(name),
                "{name} missing: {:?}",
                files.keys()
            );
        }
        // docker load reads manifest.json: every path it names is in the archive.
        let docker: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(docker[0]["RepoTags"][0], "example.com/app:1");
        let config = docker[0]["Config"].as_str().unwrap();
        assert_eq!(Digest::of(&files[config]), original.id);
        let layer_path = docker[0]["Layers"][0].as_str().unwrap();
        assert_eq!(files[layer_path], l);

        let second = ImageStore::open(tmp.path().join("b"), StoreOptions::default()).unwrap();
        let again = second.import_archive(&out).await.unwrap();
        assert_eq!(again, std::slice::from_ref(&original));
        assert_eq!(
            std::fs::read(second.snapshot_dirs(&again[0])[0].join("etc/motd")).unwrap(),
            b"exported\n"
        );

        // Without index.json (a pre-25 docker load path), manifest.json alone
        // still imports the same image id and tag.
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files.iter().filter(|(n, _)| n.as_str() != "index.json") {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        let docker_only = tmp.path().join("docker.tar");
        std::fs::write(&docker_only, b.into_inner().unwrap()).unwrap();
        let third = ImageStore::open(tmp.path().join("c"), StoreOptions::default()).unwrap();
        let images = third.import_archive(&docker_only).await.unwrap();
        assert_eq!(images[0].id, original.id);
        assert_eq!(images[0].repo_tags, original.repo_tags);

        // An unknown name fails before anything is written.
        let err = first
            .export_archive(
                &["example.com/app:1".into(), "nothere:1".into()],
                File::create(tmp.path().join("none.tar")).unwrap(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("nothere"), "{err}");
        assert_eq!(
            std::fs::metadata(tmp.path().join("none.tar"))
                .unwrap()
                .len(),
            0
        );
    }
}
