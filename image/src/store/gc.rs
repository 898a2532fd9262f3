//! Garbage collection (snapshots and blobs no image or lease refers to) and the
//! store's disk usage.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use tracing::info;

use super::{ImageStore, StoreError, io_err, remove_path};

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

impl ImageStore {
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

    /// GC proper; the caller holds the GC lock exclusively.
    pub(super) async fn collect(&self) -> Result<GcReport, StoreError> {
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
}

#[cfg(test)]
mod tests {
    use crate::store::tests::store;

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
}
