//! Pulling from a registry: resolve the reference against the configured endpoints,
//! fetch the manifest and config, download and verify the layers (concurrently,
//! bounded), unpack each into its snapshot and commit the image record last.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::Digest as _;
use tokio::io::AsyncWriteExt as _;
use tracing::{debug, info, warn};

use super::{
    Image, ImageStore, Layer, StoreError, blob_path, blocking, io_err, millis, snapshot_dir,
    sync_parent, unpack_snapshot, write_atomic,
};
use crate::distribution::{Auth, RegistryError, Session};
use crate::oci::{self, ConfigFile, Descriptor, ManifestError, ManifestKind};
use crate::reference::{Digest, Reference};
use crate::unpack::UnpackLimits;

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

impl ImageStore {
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
        blocking(move || write_atomic(&path, &bytes)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::RegistryHosts;
    use crate::store::tests::d;
    use crate::store::{ErrorKind, StoreOptions};

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
