//! Leases: the snapshots a container holds, kept by GC even after their image is
//! removed (`leases/<holder>.json`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::{
    Image, ImageStore, StoreError, blocking, io_err, remove_durably, remove_path, write_json,
};
use crate::reference::Digest;

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

pub(super) fn load_leases(dir: &Path) -> Result<HashMap<String, Vec<Digest>>, StoreError> {
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

impl ImageStore {
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
        write_json(self.lease_path(holder), &chains).await?;
        self.write_leases().insert(holder.to_owned(), chains);
        Ok(self.snapshot_dirs(image))
    }

    /// Drops `holder`'s lease (no error if it had none). Its snapshots go at the next
    /// GC if no image or other lease uses them.
    pub async fn release(&self, holder: &str) -> Result<(), StoreError> {
        validate_holder(holder)?;
        let _w = self.inner.write.lock().await;
        let path = self.lease_path(holder);
        blocking(move || remove_durably(&path)).await?;
        self.write_leases().remove(holder);
        Ok(())
    }

    fn lease_path(&self, holder: &str) -> PathBuf {
        self.inner
            .root
            .join("leases")
            .join(format!("{holder}.json"))
    }

    fn write_leases(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Vec<Digest>>> {
        self.inner.leases.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::snapshot_fs;
    use crate::store::tests::{d, image, store};

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
}
