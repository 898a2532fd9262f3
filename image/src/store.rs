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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::io::AsyncWriteExt as _;
use tracing::{debug, info, warn};

use crate::distribution::{Auth, BodyLimits, HttpClients, RegistryError, Session, Timeouts};
use crate::hosts::{HostsError, RegistryHosts};
use crate::locks::KeyedLocks;
use crate::oci::{
    self, ConfigFile, Descriptor, ImageConfig, ManifestError, ManifestKind, Platform,
};
use crate::reference::{Digest, Reference, ReferenceError};
use crate::unpack::{self, UnpackError, UnpackLimits};

mod export;
mod import;

pub use import::{ImportProgress, ProgressFn};

/// How often a running pull logs its progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// How often a running pull reports to a [`PullProgressFn`] (a person watching).
const PULL_PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// Where a pull is: reported when a layer is ready and every half second between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PullProgress {
    /// Layers ready (unpacked, or found already present).
    pub layers_done: usize,
    /// Layers of the image.
    pub layers: usize,
    /// Layer bytes downloaded so far by this pull.
    pub received_bytes: u64,
    /// Compressed bytes of all the image's layers.
    pub total_bytes: u64,
}

/// Called with each step of a pull.
pub type PullProgressFn = Arc<dyn Fn(PullProgress) + Send + Sync>;

/// How the store reaches registries.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `certs.d`-style registry host configuration.
    pub hosts: RegistryHosts,
    /// A layer download that receives nothing for this long is abandoned.
    pub stall_timeout: Duration,
    /// Connecting (TCP and TLS) to a registry.
    pub connect_timeout: Duration,
    /// From a request sent to its response headers.
    pub header_timeout: Duration,
    /// A whole small request (token, manifest, index, config).
    pub request_timeout: Duration,
    /// Least average layer download rate over each `stall_timeout` window, bytes/s.
    pub min_layer_rate: u64,
    /// Largest manifest or index read.
    pub max_manifest_bytes: u64,
    /// Largest image config read.
    pub max_config_bytes: u64,
    /// Limits on what one layer may unpack to.
    pub unpack: UnpackLimits,
    /// Layers downloaded at the same time per pull.
    pub max_concurrent_downloads: usize,
    /// The platform picked from image indexes.
    pub platform: Platform,
    /// Images [`ImageStore::remove`] refuses to remove (and that ImageStatus reports
    /// as pinned): references (tag or digest) or image ids, as configured.
    pub pinned: Vec<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        let t = Timeouts::default();
        let l = BodyLimits::default();
        Self {
            hosts: RegistryHosts::default(),
            stall_timeout: t.stall,
            connect_timeout: t.connect,
            header_timeout: t.headers,
            request_timeout: t.request,
            min_layer_rate: t.min_rate,
            max_manifest_bytes: l.manifest,
            max_config_bytes: l.config,
            unpack: UnpackLimits::default(),
            max_concurrent_downloads: 3,
            platform: oci::host_platform(),
            pinned: Vec::new(),
        }
    }
}

impl StoreOptions {
    fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.connect_timeout,
            headers: self.header_timeout,
            request: self.request_timeout,
            stall: self.stall_timeout,
            min_rate: self.min_layer_rate,
        }
    }

    fn body_limits(&self) -> BodyLimits {
        BodyLimits {
            manifest: self.max_manifest_bytes,
            config: self.max_config_bytes,
        }
    }
}

/// Coarse classes of failure, for mapping onto gRPC codes in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    Unavailable,
    PermissionDenied,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
}

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Hosts(#[from] HostsError),
    #[error("image {reference} not found; tried: {}", tried.join("; "))]
    NotFound {
        reference: String,
        tried: Vec<String>,
    },
    #[error("pulling {reference}: no registry reachable; tried: {}", tried.join("; "))]
    Unavailable {
        reference: String,
        tried: Vec<String>,
    },
    #[error("pulling {reference}: access denied; tried: {}", tried.join("; "))]
    Unauthorized {
        reference: String,
        tried: Vec<String>,
    },
    #[error("pulling {reference}: {source}")]
    Registry {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("pulling {reference}: {what} has digest {actual}, expected {expected}; discarded")]
    DigestMismatch {
        reference: String,
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "pulling {reference}: {what} is {actual} bytes, the manifest says {expected}; discarded"
    )]
    SizeMismatch {
        reference: String,
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("pulling {reference}: {source}")]
    Manifest {
        reference: String,
        #[source]
        source: ManifestError,
    },
    #[error("pulling {reference}: the index has no manifest for {platform} (it has: {available})")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("pulling {reference}: bad image config {digest}: {detail}")]
    Config {
        reference: String,
        digest: Digest,
        detail: String,
    },
    #[error(
        "pulling {reference}: layer {digest} declares {size} bytes, more than it may unpack to \
         (the limit is image.max_layer_unpacked_bytes = {limit})"
    )]
    LayerTooLarge {
        reference: String,
        digest: Digest,
        size: u64,
        limit: u64,
    },
    #[error("unpacking layer {digest}: {source}")]
    Unpack {
        digest: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image record {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("invalid lease holder {0:?}: use letters, digits, '-', '_' and '.'")]
    InvalidHolder(String),
    #[error("image store {0} is in use by another process (is berthd running?)")]
    Locked(PathBuf),
    #[error("background task failed: {0}")]
    Task(String),
    #[error(
        "image {image} ({reference}) is pinned by the image.pinned_images entry {pinned_by:?}; \
         remove that entry from the configuration (and reload berthd with SIGHUP) to allow its removal, or use `berthd image rm --force`"
    )]
    Pinned {
        reference: String,
        image: Digest,
        pinned_by: String,
    },
}

impl StoreError {
    /// The class of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Reference(_) | Self::InvalidHolder(_) => ErrorKind::InvalidArgument,
            Self::NotFound { .. } | Self::NoPlatform { .. } => ErrorKind::NotFound,
            Self::Unpack { source, .. } if source.is_bad_layer() => ErrorKind::InvalidArgument,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Unauthorized { .. } => ErrorKind::PermissionDenied,
            Self::Registry { source, .. } => match source {
                RegistryError::Unreachable { .. }
                | RegistryError::Stalled { .. }
                | RegistryError::Body { .. }
                | RegistryError::Token { .. } => ErrorKind::Unavailable,
                RegistryError::Deadline { .. } | RegistryError::TooSlow { .. } => {
                    ErrorKind::DeadlineExceeded
                }
                RegistryError::NotFound { .. } => ErrorKind::NotFound,
                RegistryError::Unauthorized { .. } => ErrorKind::PermissionDenied,
                // The registry served something no image may be: bad image input.
                RegistryError::TooLarge { .. } => ErrorKind::InvalidArgument,
                RegistryError::Status { status, .. } if *status >= 500 => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            // What the registry served is not a usable image (a malformed or
            // unsupported manifest, content that does not match its digest, a blob
            // longer than declared): bad image input, not a fault of Berth's.
            Self::Config { .. }
            | Self::LayerTooLarge { .. }
            | Self::Manifest { .. }
            | Self::DigestMismatch { .. } => ErrorKind::InvalidArgument,
            Self::SizeMismatch {
                expected, actual, ..
            } if actual > expected => ErrorKind::InvalidArgument,
            // Shorter than declared: the download was cut off; a retry may work.
            Self::SizeMismatch { .. } => ErrorKind::Unavailable,
            Self::Unpack { source, .. } if source.is_limit() => ErrorKind::InvalidArgument,
            Self::Pinned { .. } => ErrorKind::FailedPrecondition,
            _ => ErrorKind::Internal,
        }
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { what, path, source }
}

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

/// What a garbage collection removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub snapshots: usize,
    pub blobs: usize,
}

/// Disk usage of the store.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub used_bytes: u64,
    pub inodes_used: u64,
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

    /// Holds `image`'s snapshots for `holder` (a container id) so that removing the
    /// image does not delete lower dirs a running container uses. Returns the
    /// overlay lower dirs, top first. Holding again replaces the holder's lease.
    pub async fn lease(&self, holder: &str, image: &Image) -> Result<Vec<PathBuf>, StoreError> {
        validate_holder(holder)?;
        let _w = self.inner.write.lock().await;
        if !self.read_images().contains_key(&image.id) {
            return Err(StoreError::NotFound {
                reference: image.id.to_string(),
                tried: vec!["local image store".into()],
            });
        }
        let chains: Vec<Digest> = image.layers.iter().map(|l| l.chain_id.clone()).collect();
        let path = self
            .inner
            .root
            .join("leases")
            .join(format!("{holder}.json"));
        let bytes = serde_json::to_vec(&chains).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        self.inner
            .leases
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(holder.to_owned(), chains);
        Ok(self.snapshot_dirs(image))
    }

    /// Drops `holder`'s lease (no error if it had none). Its snapshots go at the next
    /// GC if no image or other lease uses them.
    pub async fn release(&self, holder: &str) -> Result<(), StoreError> {
        validate_holder(holder)?;
        let _w = self.inner.write.lock().await;
        let path = self
            .inner
            .root
            .join("leases")
            .join(format!("{holder}.json"));
        tokio::task::spawn_blocking(move || {
            remove_path(&path)?;
            sync_parent(&path)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        self.inner
            .leases
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(holder);
        Ok(())
    }

    /// Removes snapshots and blobs no image refers to.
    pub async fn gc(&self) -> Result<GcReport, StoreError> {
        let _gc = self.inner.gc.write().await;
        self.collect().await
    }

    /// Disk usage of everything under the root.
    pub async fn fs_usage(&self) -> Result<FsUsage, StoreError> {
        let root = self.inner.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut usage = FsUsage::default();
            walk_usage(&root, &mut usage)?;
            Ok(usage)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Pulls `reference` (tag or digest) and returns the stored image. Concurrent
    /// pulls of the same reference, layer or blob share the work; dropping the
    /// returned future cancels the pull and leaves no half image.
    pub async fn pull(&self, reference: &str, auth: &Auth) -> Result<Image, StoreError> {
        self.pull_with_progress(reference, auth, None).await
    }

    /// [`pull`](Self::pull), reporting its layers to `progress` as they come.
    pub async fn pull_with_progress(
        &self,
        reference: &str,
        auth: &Auth,
        progress: Option<PullProgressFn>,
    ) -> Result<Image, StoreError> {
        let r = Reference::parse(reference)?;
        let started = Instant::now();
        let _one_pull = self.inner.locks.lock(format!("ref:{r}")).await;
        let _no_gc = self.inner.gc.read().await;
        let (sources, top) = self.resolve(&r, auth).await?;
        let sources: Sources = Arc::from(sources);
        let name = r.to_string();
        let top_digest = Digest::of(&top.bytes);
        if let Some(want) = r.digest()
            && want != &top_digest
        {
            return Err(StoreError::DigestMismatch {
                reference: name,
                what: "manifest".into(),
                expected: want.clone(),
                actual: top_digest,
            });
        }
        let mut manifest_blobs = vec![top_digest.clone()];
        self.put_blob(&top_digest, &top.bytes).await?;
        let parsed = oci::parse_manifest(&top.media_type, &top.bytes).map_err(|source| {
            StoreError::Manifest {
                reference: name.clone(),
                source,
            }
        })?;
        let (manifest_digest, manifest) = match parsed {
            ManifestKind::Manifest(m) => (top_digest.clone(), m),
            ManifestKind::Index(index) => {
                let options = self.options();
                let platform = &options.platform;
                let Some(desc) = oci::select_platform(&index, platform) else {
                    let available = index
                        .manifests
                        .iter()
                        .filter_map(|d| d.platform.as_ref())
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(StoreError::NoPlatform {
                        reference: name,
                        platform: format!("{}/{}", platform.os, platform.architecture),
                        available,
                    });
                };
                let fetched = from_sources(&sources, |s| s.manifest(desc.digest.as_str()))
                    .await
                    .map_err(|source| StoreError::Registry {
                        reference: name.clone(),
                        source,
                    })?;
                let actual = Digest::of(&fetched.bytes);
                if actual != desc.digest {
                    return Err(StoreError::DigestMismatch {
                        reference: name,
                        what: "platform manifest".into(),
                        expected: desc.digest.clone(),
                        actual,
                    });
                }
                self.put_blob(&actual, &fetched.bytes).await?;
                manifest_blobs.push(actual.clone());
                match oci::parse_manifest(&fetched.media_type, &fetched.bytes) {
                    Ok(ManifestKind::Manifest(m)) => (actual, m),
                    Ok(ManifestKind::Index(_)) => {
                        return Err(StoreError::Manifest {
                            reference: name,
                            source: ManifestError {
                                media_type: fetched.media_type,
                                detail: "nested index".into(),
                            },
                        });
                    }
                    Err(source) => {
                        return Err(StoreError::Manifest {
                            reference: name,
                            source,
                        });
                    }
                }
            }
        };
        let config_bytes = self.fetch_config(&sources, &manifest.config, &name).await?;
        let config: ConfigFile =
            serde_json::from_slice(&config_bytes).map_err(|e| StoreError::Config {
                reference: name.clone(),
                digest: manifest.config.digest.clone(),
                detail: e.to_string(),
            })?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(StoreError::Config {
                reference: name,
                digest: manifest.config.digest.clone(),
                detail: format!(
                    "{} diff_ids for {} layers",
                    config.rootfs.diff_ids.len(),
                    manifest.layers.len()
                ),
            });
        }
        let chain = oci::chain_ids(&config.rootfs.diff_ids);
        let layers: Vec<Layer> = manifest
            .layers
            .iter()
            .zip(config.rootfs.diff_ids.iter().zip(chain))
            .map(|(d, (diff_id, chain_id))| Layer {
                digest: d.digest.clone(),
                media_type: d.media_type.clone(),
                size: d.size,
                diff_id: diff_id.clone(),
                chain_id,
            })
            .collect();
        // Refuse before any download what could never be unpacked: the blob would
        // otherwise stream into ingest/ up to its declared size.
        let unpack_limits = self.options().unpack;
        let max_blob = max_layer_blob(&unpack_limits);
        if let Some(l) = layers.iter().find(|l| l.size > max_blob) {
            return Err(StoreError::LayerTooLarge {
                reference: name,
                digest: l.digest.clone(),
                size: l.size,
                limit: unpack_limits.max_bytes,
            });
        }
        let downloaded = self
            .fetch_layers(&sources, &layers, &name, progress.as_ref())
            .await?;
        // Make the unpacked files durable before the record that makes them visible.
        self.sync_fs().await?;
        let size = layers.iter().map(|l| l.size).sum::<u64>()
            + manifest.config.size
            + top.bytes.len() as u64;
        let image = Image {
            id: manifest.config.digest.clone(),
            repo_tags: r.repo_tag().into_iter().collect(),
            repo_digests: vec![r.repo_digest(&top_digest)],
            size,
            config: config.config.clone().unwrap_or_default(),
            manifest_digest,
            manifest_blobs,
            layers,
            created: config.created.clone(),
        };
        let image = self.commit(image).await?;
        info!(
            reference = %name,
            image = %image.id,
            endpoint = sources[0].endpoint().name(),
            layers = image.layers.len(),
            downloaded_bytes = downloaded,
            elapsed_ms = millis(started),
            "image pulled"
        );
        Ok(image)
    }

    /// Finds the first endpoint that has the manifest.
    async fn resolve(
        &self,
        r: &Reference,
        auth: &Auth,
    ) -> Result<(Vec<Session>, crate::distribution::FetchedManifest), StoreError> {
        let endpoints = self.options().hosts.endpoints(r.domain())?;
        let http = self.http();
        // Credentials go only to the registry they were given for, never to a mirror
        // (a mirror that needs credentials gets them from its hosts.toml `header`).
        let auth = auth.scoped_to(r.domain());
        let auth_for = |ep: &crate::hosts::Endpoint| {
            if ep.mirror {
                Auth::anonymous()
            } else {
                auth.clone()
            }
        };
        let mut tried = Vec::new();
        let mut not_found = false;
        let mut denied = false;
        let mut definitive = None;
        let mut endpoints = endpoints.into_iter();
        while let Some(ep) = endpoints.next() {
            if !ep.capabilities.pull || (r.digest().is_none() && !ep.capabilities.resolve) {
                continue;
            }
            let name = ep.name().to_owned();
            let ep_auth = auth_for(&ep);
            let session = match Session::new(&http, ep, r.domain(), r.path(), ep_auth) {
                Ok(s) => s,
                Err(e) => {
                    tried.push(e.to_string());
                    continue;
                }
            };
            match session.manifest(r.object()).await {
                Ok(m) => {
                    debug!(reference = %r, endpoint = %name, "manifest resolved");
                    // Blobs come from this endpoint, falling back to the pull-capable
                    // endpoints after it (a mirror may lack some blobs).
                    let mut sources = vec![session];
                    for ep in endpoints.filter(|e| e.capabilities.pull) {
                        let ep_auth = auth_for(&ep);
                        if let Ok(s) = Session::new(&http, ep, r.domain(), r.path(), ep_auth) {
                            sources.push(s);
                        }
                    }
                    return Ok((sources, m));
                }
                Err(e) => {
                    warn!(reference = %r, endpoint = %name, error = %e, "endpoint failed, trying the next");
                    not_found |= e.is_not_found();
                    denied |= matches!(e, RegistryError::Unauthorized { .. });
                    tried.push(e.to_string());
                    if !e.is_retryable() && !matches!(e, RegistryError::Unauthorized { .. }) {
                        definitive = Some(e);
                    }
                }
            }
        }
        let reference = r.to_string();
        if tried.is_empty() {
            tried.push("no endpoint with pull/resolve capability configured".into());
        }
        // An endpoint that answered with something no image may be (over a limit)
        // is reported as such, not as "unreachable".
        if !not_found
            && !denied
            && let Some(source) = definitive
        {
            return Err(StoreError::Registry { reference, source });
        }
        Err(if not_found {
            StoreError::NotFound { reference, tried }
        } else if denied {
            StoreError::Unauthorized { reference, tried }
        } else {
            StoreError::Unavailable { reference, tried }
        })
    }

    async fn fetch_config(
        &self,
        sources: &Sources,
        desc: &Descriptor,
        name: &str,
    ) -> Result<Vec<u8>, StoreError> {
        let path = blob_path(&self.inner.root, &desc.digest);
        if let Ok(bytes) = tokio::fs::read(&path).await {
            return Ok(bytes);
        }
        let limit = self.options().max_config_bytes;
        if desc.size > limit {
            return Err(StoreError::Config {
                reference: name.to_owned(),
                digest: desc.digest.clone(),
                detail: format!(
                    "the manifest declares {} bytes, more than registry.max_config_bytes = {limit}",
                    desc.size
                ),
            });
        }
        let bytes = from_sources(sources, |s| s.config_blob(desc.digest.as_str()))
            .await
            .map_err(|source| StoreError::Registry {
                reference: name.to_owned(),
                source,
            })?;
        let actual = Digest::of(&bytes);
        if actual != desc.digest {
            return Err(StoreError::DigestMismatch {
                reference: name.to_owned(),
                what: "image config".into(),
                expected: desc.digest.clone(),
                actual,
            });
        }
        self.put_blob(&actual, &bytes).await?;
        Ok(bytes)
    }

    /// Downloads and unpacks every layer not yet unpacked, in parallel. Returns the
    /// bytes downloaded.
    async fn fetch_layers(
        &self,
        sources: &Sources,
        layers: &[Layer],
        name: &str,
        progress: Option<&PullProgressFn>,
    ) -> Result<u64, StoreError> {
        let permits = Arc::new(tokio::sync::Semaphore::new(
            self.options().max_concurrent_downloads.max(1),
        ));
        let received = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, layer) in layers.iter().enumerate() {
            let store = self.clone();
            let sources = sources.clone();
            let layer = layer.clone();
            let permits = permits.clone();
            let name = name.to_owned();
            let received = received.clone();
            tasks.spawn(async move {
                store
                    .ensure_layer(&sources, &layer, &permits, &name, &received)
                    .await
                    .map(|n| (i, n))
            });
        }
        let total = layers.len();
        let to_download: u64 = layers.iter().map(|l| l.size).sum();
        let mut done = 0;
        let mut downloaded = 0;
        let report = |done: usize| {
            if let Some(progress) = progress {
                progress(PullProgress {
                    layers_done: done,
                    layers: total,
                    received_bytes: received.load(Ordering::Relaxed),
                    total_bytes: to_download,
                });
            }
        };
        report(0);
        let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
        ticker.tick().await;
        let mut watched = tokio::time::interval(PULL_PROGRESS_EVERY);
        watched.tick().await;
        // Dropping `tasks` on an early return aborts the other layers.
        loop {
            tokio::select! {
                joined = tasks.join_next() => {
                    let Some(joined) = joined else { break };
                    let (i, bytes) = joined.map_err(|e| StoreError::Task(e.to_string()))??;
                    done += 1;
                    downloaded += bytes;
                    info!(reference = %name, layer = i, done, total, downloaded_bytes = downloaded, "layer ready");
                    report(done);
                }
                _ = watched.tick(), if progress.is_some() => report(done),
                _ = ticker.tick() => {
                    info!(
                        reference = %name,
                        layers_done = done,
                        layers = total,
                        received_bytes = received.load(Ordering::Relaxed),
                        image_bytes = to_download,
                        "pull in progress"
                    );
                }
            }
        }
        Ok(downloaded)
    }

    /// Makes sure `layer` is unpacked as its chain id's snapshot. Returns the bytes
    /// downloaded for it (0 if already present).
    async fn ensure_layer(
        &self,
        sources: &Sources,
        layer: &Layer,
        permits: &tokio::sync::Semaphore,
        name: &str,
        received: &AtomicU64,
    ) -> Result<u64, StoreError> {
        let root = &self.inner.root;
        let snap = snapshot_dir(root, &layer.chain_id);
        if snap.is_dir() {
            return Ok(0);
        }
        let _unpack = self
            .inner
            .locks
            .lock(format!("snap:{}", layer.chain_id))
            .await;
        if snap.is_dir() {
            return Ok(0);
        }
        let blob = blob_path(root, &layer.digest);
        let mut downloaded = 0;
        if !blob.is_file() {
            let _slot = permits
                .acquire()
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?;
            let _fetch = self
                .inner
                .locks
                .lock(format!("blob:{}", layer.digest))
                .await;
            if !blob.is_file() {
                downloaded = self.download_blob(sources, layer, name, received).await?;
            }
        }
        let snapshots = root.join("snapshots");
        let layer = layer.clone();
        let limits = self.options().unpack;
        tokio::task::spawn_blocking(move || unpack_snapshot(&snapshots, &blob, &layer, &limits))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(downloaded)
    }

    /// Downloads a layer blob from the first source that serves it whole.
    async fn download_blob(
        &self,
        sources: &Sources,
        layer: &Layer,
        name: &str,
        received: &AtomicU64,
    ) -> Result<u64, StoreError> {
        let mut last = None;
        for session in sources.iter() {
            match self
                .download_blob_from(session, layer, name, received)
                .await
            {
                Err(StoreError::Registry { reference, source }) if source.is_retryable() => {
                    warn!(layer = %layer.digest, endpoint = session.endpoint().name(), error = %source, "blob download failed, trying the next endpoint");
                    last = Some(StoreError::Registry { reference, source });
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| StoreError::Task("no endpoint to download from".into())))
    }

    /// Streams a layer blob into `ingest/`, verifying size and digest, then moves it
    /// into `blobs/`. On any failure (or cancellation) the partial file is removed.
    async fn download_blob_from(
        &self,
        session: &Session,
        layer: &Layer,
        name: &str,
        progress: &AtomicU64,
    ) -> Result<u64, StoreError> {
        let ingest = self.inner.root.join("ingest");
        let tmp = tempfile::Builder::new()
            .prefix(layer.digest.hex())
            .tempfile_in(&ingest)
            .map_err(io_err("creating a download file in", &ingest))?;
        let std_file = tmp.reopen().map_err(io_err("opening", tmp.path()))?;
        let mut file = tokio::fs::File::from_std(std_file);
        let registry_err = |source| StoreError::Registry {
            reference: name.to_owned(),
            source,
        };
        let mut stream = session
            .blob(layer.digest.as_str())
            .await
            .map_err(registry_err)?;
        let mut hasher = sha2::Sha256::new();
        let mut received: u64 = 0;
        let started = Instant::now();
        let what = format!("layer {}", layer.digest);
        while let Some(chunk) = stream.chunk().await.map_err(registry_err)? {
            let chunk = chunk.as_ref();
            received += chunk.len() as u64;
            if received > layer.size {
                return Err(StoreError::SizeMismatch {
                    reference: name.to_owned(),
                    what,
                    expected: layer.size,
                    actual: received,
                });
            }
            hasher.update(chunk);
            progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            file.write_all(chunk)
                .await
                .map_err(io_err("writing", tmp.path()))?;
        }
        if received != layer.size {
            return Err(StoreError::SizeMismatch {
                reference: name.to_owned(),
                what,
                expected: layer.size,
                actual: received,
            });
        }
        let actual = Digest::from_sha256(hasher.finalize().into());
        if actual != layer.digest {
            return Err(StoreError::DigestMismatch {
                reference: name.to_owned(),
                what,
                expected: layer.digest.clone(),
                actual,
            });
        }
        file.flush().await.map_err(io_err("writing", tmp.path()))?;
        file.sync_all()
            .await
            .map_err(io_err("syncing", tmp.path()))?;
        drop(file);
        let dest = blob_path(&self.inner.root, &layer.digest);
        tokio::task::spawn_blocking(move || {
            tmp.persist(&dest).map_err(|e| StoreError::Io {
                what: "storing blob",
                path: dest.clone(),
                source: e.error,
            })?;
            sync_parent(&dest)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        debug!(
            layer = %layer.digest,
            bytes = received,
            elapsed_ms = millis(started),
            endpoint = stream.endpoint(),
            "layer downloaded"
        );
        Ok(received)
    }

    async fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let path = blob_path(&self.inner.root, digest);
        if path.is_file() {
            return Ok(());
        }
        let bytes = bytes.to_vec();
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn sync_fs(&self) -> Result<(), StoreError> {
        let snapshots = self.inner.root.join("snapshots");
        tokio::task::spawn_blocking(move || {
            let dir = std::fs::File::open(&snapshots).map_err(io_err("opening", &snapshots))?;
            rustix::fs::syncfs(&dir).map_err(|e| StoreError::Io {
                what: "syncing the filesystem of",
                path: snapshots.clone(),
                source: e.into(),
            })
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
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
        let path = self.record_path(&image.id);
        let bytes = serde_json::to_vec_pretty(&image).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        self.write_images().insert(image.id.clone(), image);
        Ok(())
    }

    async fn delete_record(&self, id: &Digest) -> Result<(), StoreError> {
        let path = self.record_path(id);
        tokio::task::spawn_blocking(move || {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &path)(e)),
            }
            sync_parent(&path)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        self.write_images().remove(id);
        Ok(())
    }

    /// GC proper; the caller holds the GC lock exclusively.
    async fn collect(&self) -> Result<GcReport, StoreError> {
        // No lease or record may change while we decide what to delete.
        let _w = self.inner.write.lock().await;
        let (chains, blobs): (HashSet<String>, HashSet<String>) = {
            let images = self.read_images();
            let leases = self.inner.leases.read().unwrap_or_else(|p| p.into_inner());
            let chains = images
                .values()
                .flat_map(|i| i.layers.iter().map(|l| l.chain_id.hex().to_owned()))
                .chain(leases.values().flatten().map(|c| c.hex().to_owned()))
                .collect();
            let blobs = images
                .values()
                .flat_map(|i| {
                    i.layers
                        .iter()
                        .map(|l| l.digest.hex().to_owned())
                        .chain(i.manifest_blobs.iter().map(|d| d.hex().to_owned()))
                        .chain(std::iter::once(i.id.hex().to_owned()))
                })
                .collect();
            (chains, blobs)
        };
        let root = self.inner.root.clone();
        let report = tokio::task::spawn_blocking(move || -> Result<GcReport, StoreError> {
            let mut report = GcReport::default();
            let snapshots = root.join("snapshots");
            for entry in std::fs::read_dir(&snapshots).map_err(io_err("listing", &snapshots))? {
                let entry = entry.map_err(io_err("listing", &snapshots))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("tmp-") || chains.contains(&name) {
                    continue;
                }
                // Rename first so a crash mid-delete never leaves a partial snapshot
                // under a valid chain id.
                let doomed = snapshots.join(format!("tmp-gc-{name}"));
                std::fs::rename(entry.path(), &doomed)
                    .map_err(io_err("renaming", &entry.path()))?;
                remove_path(&doomed)?;
                report.snapshots += 1;
            }
            let blob_dir = root.join("blobs/sha256");
            for entry in std::fs::read_dir(&blob_dir).map_err(io_err("listing", &blob_dir))? {
                let entry = entry.map_err(io_err("listing", &blob_dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !blobs.contains(&name) {
                    remove_path(&entry.path())?;
                    report.blobs += 1;
                }
            }
            Ok(report)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        if report != GcReport::default() {
            info!(
                snapshots = report.snapshots,
                blobs = report.blobs,
                "image store garbage collected"
            );
        }
        Ok(report)
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

/// The endpoints a pull fetches from: the one that resolved the manifest first.
type Sources = Arc<[Session]>;

/// Runs `fetch` against each source in turn until one succeeds or fails for a
/// reason another endpoint would not fix.
async fn from_sources<'a, T, F, Fut>(sources: &'a [Session], fetch: F) -> Result<T, RegistryError>
where
    F: Fn(&'a Session) -> Fut,
    Fut: std::future::Future<Output = Result<T, RegistryError>>,
{
    let mut last = None;
    for s in sources {
        match fetch(s).await {
            Err(e) if e.is_retryable() => {
                warn!(endpoint = s.endpoint().name(), error = %e, "fetch failed, trying the next endpoint");
                last = Some(e);
            }
            other => return other,
        }
    }
    Err(last.unwrap_or(RegistryError::NoEndpoint))
}

/// The largest layer blob worth downloading: what `limits` lets a layer unpack to,
/// plus what compression can add to incompressible data (gzip's stored blocks cost
/// 5 bytes per 64 KiB, zstd's raw blocks 3 per 128 KiB; 1/1024 is ample), plus
/// headers.
fn max_layer_blob(limits: &UnpackLimits) -> u64 {
    limits
        .max_bytes
        .saturating_add(limits.max_bytes / 1024)
        .saturating_add(1 << 20)
}

/// A lease holder name is used as a file name: keep it plain.
fn validate_holder(holder: &str) -> Result<(), StoreError> {
    let ok = !holder.is_empty()
        && holder.len() <= 128
        && !holder.starts_with('.')
        && holder
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidHolder(holder.to_owned()))
    }
}

fn load_leases(dir: &Path) -> Result<HashMap<String, Vec<Digest>>, StoreError> {
    let mut leases = HashMap::new();
    for entry in std::fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let path = entry.map_err(io_err("listing", dir))?.path();
        let Some(holder) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            remove_path(&path)?;
            continue;
        };
        let bytes = std::fs::read(&path).map_err(io_err("reading", &path))?;
        match serde_json::from_slice::<Vec<Digest>>(&bytes) {
            Ok(chains) => {
                leases.insert(holder.to_owned(), chains);
            }
            Err(e) => warn!(path = %path.display(), error = %e, "skipping corrupt lease"),
        }
    }
    Ok(leases)
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

/// Unpacks `blob` into a temporary directory and renames it into place as the
/// layer's snapshot. Runs on a blocking thread.
fn unpack_snapshot(
    snapshots: &Path,
    blob: &Path,
    layer: &Layer,
    limits: &UnpackLimits,
) -> Result<(), StoreError> {
    let tmp = tempfile::Builder::new()
        .prefix("tmp-")
        .tempdir_in(snapshots)
        .map_err(io_err("creating an unpack directory in", snapshots))?;
    let fs = tmp.path().join("fs");
    std::fs::create_dir(&fs).map_err(io_err("creating", &fs))?;
    // Lower dirs' roots must be traversable by container users.
    set_mode(tmp.path(), 0o700)?;
    set_mode(&fs, 0o755)?;
    let started = Instant::now();
    let bytes = unpack::unpack_layer(blob, &fs, &layer.diff_id, limits).map_err(|source| {
        StoreError::Unpack {
            digest: layer.digest.clone(),
            source,
        }
    })?;
    let dest = snapshots.join(layer.chain_id.hex());
    let kept = tmp.keep();
    match std::fs::rename(&kept, &dest) {
        Ok(()) => {}
        Err(_) if dest.is_dir() => {
            // Someone else unpacked the same chain id meanwhile; theirs is as good.
            remove_path(&kept)?;
        }
        Err(e) => {
            let _ = remove_path(&kept);
            return Err(io_err("moving snapshot into place at", &dest)(e));
        }
    }
    debug!(
        layer = %layer.digest,
        chain_id = %layer.chain_id,
        bytes,
        elapsed_ms = millis(started),
        "layer unpacked"
    );
    Ok(())
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", path))
}

/// Writes `bytes` to `path` atomically and durably (berth-durable: temp file, fsync,
/// rename, fsync directory; no temp file left on failure).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    berth_durable::write_atomic(path, bytes).map_err(io_err("writing atomically", path))
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

fn walk_usage(path: &Path, usage: &mut FsUsage) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = BTreeSet::new();
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            // Removed while we walked.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("measuring", &p)(e)),
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        usage.inodes_used += 1;
        usage.used_bytes += meta.blocks() * 512;
        if meta.is_dir() {
            let entries = match std::fs::read_dir(&p) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("listing", &p)(e)),
            };
            for entry in entries {
                stack.push(entry.map_err(io_err("listing", &p))?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a registry served wrong is the image's problem (InvalidArgument), a
    /// download cut short the network's (Unavailable); neither is Berth's (Internal).
    #[test]
    fn bad_registry_content_is_not_an_internal_error() {
        let reference = "r.test/x:1".to_owned();
        let manifest = StoreError::Manifest {
            reference: reference.clone(),
            source: ManifestError {
                media_type: "text/html".into(),
                detail: "not a manifest".into(),
            },
        };
        assert_eq!(manifest.kind(), ErrorKind::InvalidArgument, "{manifest}");
        let digest = StoreError::DigestMismatch {
            reference: reference.clone(),
            what: "layer".into(),
            expected: d('a'),
            actual: d('b'),
        };
        assert_eq!(digest.kind(), ErrorKind::InvalidArgument, "{digest}");
        let size = |actual| StoreError::SizeMismatch {
            reference: reference.clone(),
            what: "layer".into(),
            expected: 10,
            actual,
        };
        assert_eq!(size(11).kind(), ErrorKind::InvalidArgument);
        assert_eq!(size(9).kind(), ErrorKind::Unavailable);
        let corrupt = StoreError::Corrupt {
            path: "/x".into(),
            detail: "y".into(),
        };
        assert_eq!(corrupt.kind(), ErrorKind::Internal, "the store's own state");
    }

    fn store(dir: &Path) -> ImageStore {
        ImageStore::open(dir, StoreOptions::default()).unwrap()
    }

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn image(id: char, tags: &[&str], chain: char) -> Image {
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
    async fn leased_snapshots_outlive_their_image_until_released() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        std::fs::create_dir_all(snapshot_fs(tmp.path(), &d('c'))).unwrap();
        let img = s
            .commit(image('a', &["docker.io/library/x:1"], 'c'))
            .await
            .unwrap();
        let dirs = s.lease("ctr-1", &img).await.unwrap();
        assert_eq!(dirs, s.snapshot_dirs(&img));
        assert!(s.lease("../evil", &img).await.is_err());
        s.remove("x:1").await.unwrap().unwrap();
        assert!(
            dirs[0].exists(),
            "a leased snapshot must survive image removal"
        );
        // The lease survives a restart.
        drop(s);
        let s = store(tmp.path());
        s.gc().await.unwrap();
        assert!(dirs[0].exists());
        s.release("ctr-1").await.unwrap();
        s.release("ctr-1").await.unwrap();
        assert_eq!(s.gc().await.unwrap().snapshots, 1);
        assert!(!dirs[0].exists());
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

    #[tokio::test]
    async fn fs_usage_counts_files() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let before = s.fs_usage().await.unwrap();
        std::fs::write(tmp.path().join("blobs/sha256/x"), vec![1u8; 10000]).unwrap();
        let after = s.fs_usage().await.unwrap();
        assert_eq!(after.inodes_used, before.inodes_used + 1);
        assert!(after.used_bytes >= before.used_bytes + 8192);
    }

    #[tokio::test]
    async fn pulling_from_an_unreachable_loopback_registry_is_unavailable() {
        let tmp = tempfile::tempdir().unwrap();
        let s = ImageStore::open(
            tmp.path(),
            StoreOptions {
                hosts: RegistryHosts::new(None),
                stall_timeout: Duration::from_secs(5),
                ..StoreOptions::default()
            },
        )
        .unwrap();
        // Port 1 on loopback: nothing listens there.
        let err = s
            .pull("127.0.0.1:1/app:1", &Auth::anonymous())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.to_string().contains("http://127.0.0.1:1/v2"), "{err}");
        let err = s.pull("Bad:Ref", &Auth::anonymous()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("Bad:Ref"));
    }

    /// A tiny registry on loopback serving one image whose single layer declares
    /// `layer_size` bytes; the layer blob itself is 8 MiB of zeros, then the
    /// connection closes. Returns the host and a counter of layer blob requests.
    async fn registry_with_layer_of(
        layer_size: u64,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let layer_digest = d('a');
        let diff_id = d('b');
        let platform = oci::host_platform();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": platform.architecture,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
            "config": {}
        }))
        .unwrap();
        let config_digest = Digest::of(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest.to_string(),
                "size": config.len()
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest.to_string(),
                "size": layer_size
            }]
        }))
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let layer_requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = layer_requests.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (manifest, config, counter) =
                    (manifest.clone(), config.clone(), counter.clone());
                let (config_path, layer_path) = (
                    format!("/v2/app/blobs/{config_digest}"),
                    format!("/v2/app/blobs/{layer_digest}"),
                );
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    let reply = |ctype: &str, body: &[u8]| {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(body);
                        r
                    };
                    if path == "/v2/" {
                        let _ = conn.write_all(&reply("application/json", b"{}")).await;
                    } else if path.starts_with("/v2/app/manifests/") {
                        let r = reply("application/vnd.oci.image.manifest.v1+json", &manifest);
                        let _ = conn.write_all(&r).await;
                    } else if path == config_path {
                        let _ = conn.write_all(&reply("application/json", &config)).await;
                    } else if path == layer_path {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let h = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {layer_size}\r\nConnection: close\r\n\r\n"
                        );
                        let _ = conn.write_all(h.as_bytes()).await;
                        let zeros = vec![0u8; 64 << 10];
                        for _ in 0..128 {
                            if conn.write_all(&zeros).await.is_err() {
                                break;
                            }
                        }
                    } else {
                        let _ = conn
                            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await;
                    }
                });
            }
        });
        (host, layer_requests)
    }

    /// A registry (or an image's author) declaring a layer larger than any layer
    /// Berth would unpack gets the pull refused before the layer is requested:
    /// before, berthd streamed it into `ingest/` up to its declared size (1 TiB
    /// here), filling the node's disk long before the unpack limit was checked.
    #[tokio::test]
    async fn a_layer_declared_larger_than_the_unpack_limit_is_never_downloaded() {
        let tmp = tempfile::tempdir().unwrap();
        let s = ImageStore::open(
            tmp.path(),
            StoreOptions {
                hosts: RegistryHosts::new(None),
                unpack: UnpackLimits {
                    max_bytes: 4 << 20,
                    ..UnpackLimits::default()
                },
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let (host, layer_requests) = registry_with_layer_of(1 << 40).await;
        let started = Instant::now();
        let err = tokio::time::timeout(
            Duration::from_secs(60),
            s.pull(&format!("{host}/app:1"), &Auth::anonymous()),
        )
        .await
        .expect("the pull ends")
        .unwrap_err();
        let requested = layer_requests.load(Ordering::SeqCst);
        assert_eq!(requested, 0, "the layer was requested ({err})");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        let msg = err.to_string();
        for want in [
            "1099511627776",
            "image.max_layer_unpacked_bytes",
            "sha256:aaaa",
        ] {
            assert!(msg.contains(want), "{want:?} not in {msg}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}
