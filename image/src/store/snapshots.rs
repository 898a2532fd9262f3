//! Unpacking a layer blob into its snapshot directory (`snapshots/<chain hex>/fs`),
//! shared by pulls and archive imports.

use std::path::Path;
use std::time::Instant;

use tracing::debug;

use super::{ImageStore, Layer, StoreError, io_err, millis, remove_path};
use crate::unpack::{self, UnpackLimits};

/// Unpacks `blob` into a temporary directory and renames it into place as the
/// layer's snapshot. Runs on a blocking thread.
pub(super) fn unpack_snapshot(
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

fn set_mode(path: &Path, mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", path))
}

impl ImageStore {
    pub(super) async fn sync_fs(&self) -> Result<(), StoreError> {
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
}
