//! The image store: content-addressed blobs, image records, and one unpacked
//! snapshot directory per layer chain id, shared between images.
//!
//! Layout under the root directory:
//!
//! ```text
//! blobs/sha256/<hex>        manifests, configs and layer blobs, verified
//! ingest/                   downloads in progress (cleared at open)
//! snapshots/<chain hex>/fs  an unpacked layer, usable as an overlay lower dir
//! snapshots/tmp-*           unpacks in progress (cleared at open)
//! images/<id hex>.json      image records, written atomically
//! leases/<holder>.json      snapshots a container holds (kept by GC even after
//!                           its image is removed)
//! ```
//!
//! A pull writes blobs, then snapshots, then the image record last, so an
//! interrupted pull never leaves a visible half image; its leftovers are temporary
//! files removed at the next open, or unreferenced snapshots removed by [`ImageStore::gc`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::distribution::HttpClients;
use crate::locks::KeyedLocks;
use crate::oci::ImageConfig;
use crate::reference::{Digest, Reference};

mod error;
mod export;
mod gc;
mod import;
mod leases;
mod options;
mod pull;
mod snapshots;

pub use error::{ErrorKind, StoreError};
pub use gc::{FsUsage, GcReport};
pub use import::{ImportProgress, ProgressFn};
pub use options::StoreOptions;
pub use pull::{PullProgress, PullProgressFn};

use error::io_err;
use leases::load_leases;
use snapshots::unpack_snapshot;

/// One layer of a stored image.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Layer {
    /// The (compressed) blob's digest.
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// The uncompressed tar's digest.
    pub diff_id: Digest,
    /// The snapshot this layer (with its parents) is unpacked as.
    pub chain_id: Digest,
}

/// A stored image.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Image {
    /// The image id: the config's digest.
    pub id: Digest,
    /// `name:tag` references, normalised.
    pub repo_tags: Vec<String>,
    /// `name@sha256:...` of the manifest (or index) pulled.
    pub repo_digests: Vec<String>,
    /// Bytes of the compressed layers, config and manifest.
    pub size: u64,
    /// How containers from this image run by default.
    pub config: ImageConfig,
    /// The platform manifest's digest.
    pub manifest_digest: Digest,
    /// Every manifest and index blob this image needs (kept by GC).
    pub manifest_blobs: Vec<Digest>,
    /// Bottom layer first.
    pub layers: Vec<Layer>,
    /// The config's `created` timestamp, if any.
    #[serde(default)]
    pub created: Option<String>,
}

impl Image {
    /// The uid from the image's USER if numeric (CRI `Image.uid`).
    pub fn uid(&self) -> Option<i64> {
        self.config.uid_or_username().0
    }

    /// The user name from the image's USER if not numeric (CRI `Image.username`).
    pub fn username(&self) -> String {
        self.config.uid_or_username().1
    }
}

/// The image store. Cheap to clone; all clones share state.
#[derive(Clone, Debug)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    /// Replaced whole by [`ImageStore::set_options`] (a config reload); a pull uses
    /// the options it started with.
    options: RwLock<Arc<StoreOptions>>,
    http: RwLock<Arc<HttpClients>>,
    images: RwLock<HashMap<Digest, Image>>,
    /// Snapshot chain ids held by containers, by holder.
    leases: RwLock<HashMap<String, Vec<Digest>>>,
    /// Serialises changes to image records.
    write: tokio::sync::Mutex<()>,
    locks: KeyedLocks,
    /// Pulls hold it shared; GC takes it exclusively so that it never removes a
    /// snapshot a pull in progress is about to reference.
    gc: tokio::sync::RwLock<()>,
    /// Holds the store's exclusive `flock` for as long as the store is open.
    _lock: std::fs::File,
}

impl ImageStore {
    /// The registry and unpack options in force.
    pub(crate) fn options(&self) -> Arc<StoreOptions> {
        Arc::clone(
            &self
                .inner
                .options
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn http(&self) -> Arc<HttpClients> {
        Arc::clone(
            &self
                .inner
                .http
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Replaces the registry and unpack options (berthd's config reload): pulls that
    /// start from now on use them; pulls in progress finish with the old ones.
    pub fn set_options(&self, options: StoreOptions) {
        let http = HttpClients::new(options.timeouts(), options.body_limits());
        *self
            .inner
            .http
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(http);
        *self
            .inner
            .options
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(options);
    }

    /// Opens (creating if needed) the store at `root`: removes leftovers of
    /// interrupted pulls and loads the image records.
    pub fn open(root: impl Into<PathBuf>, options: StoreOptions) -> Result<Self, StoreError> {
        let root = root.into();
        for dir in ["blobs/sha256", "ingest", "snapshots", "images", "leases"] {
            let d = root.join(dir);
            std::fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
        }
        // One process per store: opening clears in-progress downloads and unpacks,
        // which would break another process's pulls.
        let lock_path = root.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("opening", &lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                if e == rustix::io::Errno::WOULDBLOCK {
                    StoreError::Locked(root.clone())
                } else {
                    io_err("locking", &lock_path)(e.into())
                }
            },
        )?;
        clear_dir(&root.join("ingest"))?;
        let snapshots = root.join("snapshots");
        for entry in std::fs::read_dir(&snapshots).map_err(io_err("listing", &snapshots))? {
            let entry = entry.map_err(io_err("listing", &snapshots))?;
            if entry.file_name().to_string_lossy().starts_with("tmp-") {
                remove_path(&entry.path())?;
            }
        }
        let mut images = HashMap::new();
        let dir = root.join("images");
        for entry in std::fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let path = entry.map_err(io_err("listing", &dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                // A temp file of an interrupted record write.
                remove_path(&path)?;
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io_err("reading", &path))?;
            let image: Image = match serde_json::from_slice(&bytes) {
                Ok(i) => i,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "skipping corrupt image record");
                    continue;
                }
            };
            let missing = image
                .layers
                .iter()
                .any(|l| !snapshot_fs(&root, &l.chain_id).is_dir());
            if missing {
                warn!(image = %image.id, "image record refers to a missing snapshot; dropping it");
                remove_path(&path)?;
                continue;
            }
            images.insert(image.id.clone(), image);
        }
        let leases = load_leases(&root.join("leases"))?;
        info!(root = %root.display(), images = images.len(), leases = leases.len(), "image store opened");
        let http = HttpClients::new(options.timeouts(), options.body_limits());
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                options: RwLock::new(Arc::new(options)),
                http: RwLock::new(Arc::new(http)),
                images: RwLock::new(images),
                leases: RwLock::new(leases),
                write: tokio::sync::Mutex::new(()),
                locks: KeyedLocks::default(),
                gc: tokio::sync::RwLock::new(()),
                _lock: lock,
            }),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Every stored image.
    pub fn list(&self) -> Vec<Image> {
        let mut v: Vec<Image> = self.read_images().values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The image named by `ref_or_id`: an image id (`sha256:<hex>` or bare hex), a
    /// tag reference or a digest reference. `Ok(None)` if it is not stored; an error
    /// only for a malformed reference.
    pub fn status(&self, ref_or_id: &str) -> Result<Option<Image>, StoreError> {
        let images = self.read_images();
        if let Some(id) = as_image_id(ref_or_id) {
            if let Some(i) = images.get(&id) {
                return Ok(Some(i.clone()));
            }
            // A bare 64-hex string is never a reference (the parser refuses it), so an
            // unknown id is simply not stored; kubelet and critest remove by bare id.
            return Ok(None);
        }
        let r = Reference::parse(ref_or_id)?;
        let found = match (r.digest(), r.repo_tag()) {
            (Some(d), _) => {
                let want = r.repo_digest(d);
                images.values().find(|i| i.repo_digests.contains(&want))
            }
            (None, Some(tag)) => images.values().find(|i| i.repo_tags.contains(&tag)),
            (None, None) => None,
        };
        Ok(found.cloned())
    }

    /// The overlay lower directories of `image`, top layer first.
    pub fn snapshot_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image
            .layers
            .iter()
            .rev()
            .map(|l| snapshot_fs(&self.inner.root, &l.chain_id))
            .collect()
    }

    /// The image's raw configuration document (for verbose status).
    pub fn config_json(&self, image: &Image) -> Result<serde_json::Value, StoreError> {
        let path = blob_path(&self.inner.root, &image.id);
        let bytes = std::fs::read(&path).map_err(io_err("reading", &path))?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path,
            detail: e.to_string(),
        })
    }

    /// The `pinned` entry that pins `image`, if any: a tag or digest reference naming
    /// one of its names, or its id.
    pub fn pinned_by(&self, image: &Image) -> Option<String> {
        self.options()
            .pinned
            .iter()
            .find(|entry| pins(entry, image))
            .cloned()
    }

    /// Removes the image named by `ref_or_id` with all its tags, as containerd does
    /// (critest expects removing by one tag to remove the others). Returns the removed
    /// image, or `None` if there was none (not an error). Unreferenced snapshots and
    /// blobs are then collected. A pinned image is refused ([`StoreError::Pinned`]).
    pub async fn remove(&self, ref_or_id: &str) -> Result<Option<Image>, StoreError> {
        self.remove_with(ref_or_id, false).await
    }

    /// [`ImageStore::remove`]; with `force`, a pinned image is removed too (an
    /// operator's explicit `berthd image rm --force`).
    pub async fn remove_with(
        &self,
        ref_or_id: &str,
        force: bool,
    ) -> Result<Option<Image>, StoreError> {
        let removed = {
            let _w = self.inner.write.lock().await;
            let Some(image) = self.status(ref_or_id)? else {
                return Ok(None);
            };
            if !force && let Some(entry) = self.pinned_by(&image) {
                return Err(StoreError::Pinned {
                    reference: ref_or_id.to_owned(),
                    image: image.id.clone(),
                    pinned_by: entry,
                });
            }
            self.delete_record(&image.id).await?;
            image
        };
        info!(image = %removed.id, tags = ?removed.repo_tags, "image removed");
        if let Ok(_gc) = self.inner.gc.try_write() {
            self.collect().await?;
        }
        Ok(Some(removed))
    }

    /// Removes one tag from its image; the image itself goes when it has no names
    /// left. Returns whether the tag existed.
    pub async fn untag(&self, reference: &str) -> Result<bool, StoreError> {
        let r = Reference::parse(reference)?;
        let Some(tag) = r.repo_tag() else {
            return Ok(false);
        };
        let _w = self.inner.write.lock().await;
        let Some(mut image) = self
            .read_images()
            .values()
            .find(|i| i.repo_tags.contains(&tag))
            .cloned()
        else {
            return Ok(false);
        };
        image.repo_tags.retain(|t| t != &tag);
        if image.repo_tags.is_empty() && image.repo_digests.is_empty() {
            self.delete_record(&image.id).await?;
        } else {
            self.write_record(image).await?;
        }
        Ok(true)
    }

    /// Records a pulled image: merges names into an existing record of the same id
    /// and moves a tag away from the image that had it before.
    async fn commit(&self, mut image: Image) -> Result<Image, StoreError> {
        let _w = self.inner.write.lock().await;
        let existing = self.read_images().get(&image.id).cloned();
        if let Some(old) = existing {
            let mut tags = old.repo_tags.clone();
            for t in image.repo_tags.drain(..) {
                if !tags.contains(&t) {
                    tags.push(t);
                }
            }
            let mut digests = old.repo_digests.clone();
            for d in image.repo_digests.drain(..) {
                if !digests.contains(&d) {
                    digests.push(d);
                }
            }
            let mut blobs = old.manifest_blobs.clone();
            for b in image.manifest_blobs.drain(..) {
                if !blobs.contains(&b) {
                    blobs.push(b);
                }
            }
            image.repo_tags = tags;
            image.repo_digests = digests;
            image.manifest_blobs = blobs;
        }
        // A tag names one image: take it from any other image.
        let others: Vec<Image> = self
            .read_images()
            .values()
            .filter(|i| i.id != image.id && i.repo_tags.iter().any(|t| image.repo_tags.contains(t)))
            .cloned()
            .collect();
        for mut other in others {
            other.repo_tags.retain(|t| !image.repo_tags.contains(t));
            if other.repo_tags.is_empty() && other.repo_digests.is_empty() {
                self.delete_record(&other.id).await?;
            } else {
                self.write_record(other).await?;
            }
        }
        self.write_record(image.clone()).await?;
        Ok(image)
    }

    async fn write_record(&self, image: Image) -> Result<(), StoreError> {
        write_json(self.record_path(&image.id), &image).await?;
        self.write_images().insert(image.id.clone(), image);
        Ok(())
    }

    async fn delete_record(&self, id: &Digest) -> Result<(), StoreError> {
        let path = self.record_path(id);
        blocking(move || remove_durably(&path)).await?;
        self.write_images().remove(id);
        Ok(())
    }

    fn record_path(&self, id: &Digest) -> PathBuf {
        self.inner
            .root
            .join("images")
            .join(format!("{}.json", id.hex()))
    }

    fn read_images(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Digest, Image>> {
        self.inner.images.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_images(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Digest, Image>> {
        self.inner.images.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether the configured `entry` (an image id, a tag or a digest reference) names
/// `image`. Entries that parse as neither pin nothing (config validation refuses
/// them before they get here).
fn pins(entry: &str, image: &Image) -> bool {
    if let Some(id) = as_image_id(entry) {
        return id == image.id;
    }
    let Ok(r) = Reference::parse(entry) else {
        return false;
    };
    match (r.digest(), r.repo_tag()) {
        (Some(d), _) => image.repo_digests.contains(&r.repo_digest(d)),
        (None, Some(tag)) => image.repo_tags.contains(&tag),
        (None, None) => false,
    }
}

/// `sha256:<hex>` or a bare 64-hex id.
fn as_image_id(s: &str) -> Option<Digest> {
    if let Ok(d) = Digest::parse(s) {
        return Some(d);
    }
    if s.len() == 64 {
        return Digest::parse(&format!("sha256:{s}")).ok();
    }
    None
}

fn blob_path(root: &Path, digest: &Digest) -> PathBuf {
    root.join("blobs/sha256").join(digest.hex())
}

fn snapshot_dir(root: &Path, chain_id: &Digest) -> PathBuf {
    root.join("snapshots").join(chain_id.hex())
}

fn snapshot_fs(root: &Path, chain_id: &Digest) -> PathBuf {
    snapshot_dir(root, chain_id).join("fs")
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Writes `bytes` to `path` atomically and durably (berth-durable: temp file, fsync,
/// rename, fsync directory; no temp file left on failure).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    berth_durable::write_atomic(path, bytes).map_err(io_err("writing atomically", path))
}

/// Runs the blocking file work `f` off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// Writes `value` as JSON to `path`, atomically and durably, off the async threads.
async fn write_json(path: PathBuf, value: &impl Serialize) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Corrupt {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    blocking(move || write_atomic(&path, &bytes)).await
}

/// Removes `path` (if there) and syncs its directory, so the removal survives a crash.
fn remove_durably(path: &Path) -> Result<(), StoreError> {
    remove_path(path)?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

fn remove_path(path: &Path) -> Result<(), StoreError> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(io_err("removing", path))
}

fn clear_dir(dir: &Path) -> Result<(), StoreError> {
    for entry in std::fs::read_dir(dir).map_err(io_err("listing", dir))? {
        remove_path(&entry.map_err(io_err("listing", dir))?.path())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn store(dir: &Path) -> ImageStore {
        ImageStore::open(dir, StoreOptions::default()).unwrap()
    }

    pub(super) fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    pub(super) fn image(id: char, tags: &[&str], chain: char) -> Image {
        Image {
            id: d(id),
            repo_tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            repo_digests: vec![format!("docker.io/library/x@{}", d('f'))],
            size: 1,
            config: ImageConfig::default(),
            manifest_digest: d('f'),
            manifest_blobs: vec![d('f')],
            layers: vec![Layer {
                digest: d('e'),
                media_type: String::new(),
                size: 1,
                diff_id: d(chain),
                chain_id: d(chain),
            }],
            created: None,
        }
    }

    #[tokio::test]
    async fn records_survive_reopen_and_lookups_by_id_tag_digest_agree() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        std::fs::create_dir_all(snapshot_fs(tmp.path(), &d('c'))).unwrap();
        s.commit(image('a', &["docker.io/library/x:1"], 'c'))
            .await
            .unwrap();
        drop(s);
        let s = store(tmp.path());
        let by_tag = s.status("x:1").unwrap().unwrap();
        let by_id = s.status(d('a').as_str()).unwrap().unwrap();
        let by_bare_id = s.status(d('a').hex()).unwrap().unwrap();
        let by_digest = s.status(&format!("x@{}", d('f'))).unwrap().unwrap();
        assert_eq!(by_tag, by_id);
        assert_eq!(by_id, by_bare_id);
        assert_eq!(by_id, by_digest);
        assert!(s.status("x:2").unwrap().is_none());
        assert!(s.status(d('b').as_str()).unwrap().is_none());
        assert!(s.status("Bad Ref").is_err());
        assert_eq!(
            s.snapshot_dirs(&by_id),
            vec![tmp.path().join("snapshots").join(d('c').hex()).join("fs")]
        );
    }

    #[tokio::test]
    async fn a_record_whose_snapshot_is_missing_is_dropped_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        std::fs::create_dir_all(snapshot_fs(tmp.path(), &d('c'))).unwrap();
        s.commit(image('a', &["docker.io/library/x:1"], 'c'))
            .await
            .unwrap();
        drop(s);
        std::fs::remove_dir_all(snapshot_dir(tmp.path(), &d('c'))).unwrap();
        std::fs::create_dir_all(tmp.path().join("snapshots/tmp-half")).unwrap();
        std::fs::write(tmp.path().join("ingest/partial"), "x").unwrap();
        let s = store(tmp.path());
        assert!(s.list().is_empty());
        assert!(!tmp.path().join("snapshots/tmp-half").exists());
        assert!(!tmp.path().join("ingest/partial").exists());
    }

    #[tokio::test]
    async fn retagging_moves_the_tag_and_removal_collects_unshared_snapshots() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        for c in ['c', 'd'] {
            std::fs::create_dir_all(snapshot_fs(tmp.path(), &d(c))).unwrap();
        }
        s.commit(image(
            'a',
            &["docker.io/library/x:1", "docker.io/library/x:2"],
            'c',
        ))
        .await
        .unwrap();
        s.commit(image('b', &["docker.io/library/x:2"], 'd'))
            .await
            .unwrap();
        assert_eq!(s.status("x:2").unwrap().unwrap().id, d('b'));
        assert_eq!(
            s.status("x:1").unwrap().unwrap().repo_tags,
            ["docker.io/library/x:1"]
        );
        // Removing by tag removes the whole image, as containerd does.
        let removed = s.remove("x:1").await.unwrap().unwrap();
        assert_eq!(removed.id, d('a'));
        assert!(s.status(d('a').as_str()).unwrap().is_none());
        assert!(!snapshot_dir(tmp.path(), &d('c')).exists());
        assert!(snapshot_dir(tmp.path(), &d('d')).exists());
        // Unknown images are not an error.
        assert!(s.remove(d('9').as_str()).await.unwrap().is_none());
        assert!(s.untag("x:2").await.unwrap());
        // Image b still has its repo digest, so it stays.
        assert!(s.status(d('b').as_str()).unwrap().is_some());
    }

    #[tokio::test]
    async fn pinned_images_are_refused_removal_unless_forced() {
        let tmp = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            // A tag (normalised when matched), a digest reference and an id.
            pinned: vec![
                "x:1".into(),
                format!("docker.io/library/y@{}", d('f')),
                d('b').to_string(),
            ],
            ..StoreOptions::default()
        };
        let s = ImageStore::open(tmp.path(), options).unwrap();
        std::fs::create_dir_all(snapshot_fs(tmp.path(), &d('c'))).unwrap();
        let pinned = s
            .commit(image('a', &["docker.io/library/x:1"], 'c'))
            .await
            .unwrap();
        let free = s
            .commit(image('e', &["docker.io/library/x:2"], 'c'))
            .await
            .unwrap();
        assert_eq!(s.pinned_by(&pinned).as_deref(), Some("x:1"));
        assert_eq!(s.pinned_by(&free), None);
        // By any of its names or its id: refused, naming the config entry.
        for name in ["x:1", pinned.id.as_str(), pinned.id.hex()] {
            let err = s.remove(name).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
            let msg = err.to_string();
            assert!(
                msg.contains("image.pinned_images") && msg.contains("\"x:1\""),
                "{msg}"
            );
        }
        assert!(s.status("x:1").unwrap().is_some());
        s.remove("x:2").await.unwrap().unwrap();
        s.remove_with("x:1", true).await.unwrap().unwrap();
        assert!(s.list().is_empty());

        let by_id = image('b', &[], 'c');
        assert_eq!(s.pinned_by(&by_id).as_deref(), Some(d('b').as_str()));
        let mut by_digest = image('9', &[], 'c');
        by_digest.repo_digests = vec![format!("docker.io/library/y@{}", d('f'))];
        assert!(s.pinned_by(&by_digest).is_some_and(|e| e.contains("y@")));
    }

    #[test]
    fn a_store_is_opened_by_one_owner_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let first = store(tmp.path());
        let err = ImageStore::open(tmp.path(), StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::Locked(_)), "{err}");
        assert!(err.to_string().contains("in use"), "{err}");
        // Clones share the lock; dropping the last one frees it.
        let clone = first.clone();
        drop(first);
        assert!(ImageStore::open(tmp.path(), StoreOptions::default()).is_err());
        drop(clone);
        store(tmp.path());
    }
}
