//! `RemoveContainer` and the clean-up a failed create shares with it.

use super::error::Result;
use super::handler::Handler;
use super::{Container, ContainerManager, KILL_WAIT, Phase};
use crate::config::CgroupDriver;
use crate::store;
use crate::systemd;

impl ContainerManager {
    /// `RemoveContainer`: kills it if needed and removes everything. Idempotent.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let Some(ctr) = self.find(id)? else {
            return Ok(());
        };
        let _op = ctr.op.lock().await;
        self.stop_locked(&ctr, 0).await?;
        self.cleanup(&ctr).await;
        self.containers.write().remove(&ctr.id);
        let mut names = self.containers.names();
        names.retain(|_, v| v != &ctr.id);
        self.emit(&ctr, super::EventKind::Deleted);
        tracing::info!(container = %ctr.id, "container removed");
        Ok(())
    }

    /// Releases what a container holds: runtime state and cgroup, rootfs mount,
    /// image lease, records. Best effort.
    pub(super) async fn cleanup(&self, ctr: &Container) {
        let oci = match self.handler(ctr) {
            Ok(Handler::Oci(rt)) => Some(rt),
            _ => None,
        };
        if let Some(rt) = oci {
            let cid = ctr.id.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = rt.delete(&cid) {
                    tracing::warn!(container = %cid, error = %e, "runtime delete");
                }
            })
            .await;
        }
        let root = self.runtime_root();
        let cid = ctr.id.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(c) = berth_runtime_core::Container::load(&root, &cid)
                && let Err(e) = c.delete(true)
            {
                tracing::warn!(container = %cid, error = %e, "runtime delete");
            }
        })
        .await;
        if ctr.state().monitor_pid > 0 && ctr.state().phase != Phase::Exited {
            // The monitor exits by itself once the container is gone.
            Self::wait_exited(ctr, KILL_WAIT).await;
        }
        if matches!(self.config.cgroup_driver, CgroupDriver::Systemd) {
            // The scope stops by itself once its processes are gone; stopping it (and
            // resetting a failed state) makes sure systemd forgets the unit.
            let unit = systemd::scope_name(&ctr.id);
            if let Err(e) = systemd::client().stop_unit(&unit).await {
                tracing::warn!(container = %ctr.id, %unit, error = %e, "stopping the scope");
            }
        }
        // The runtime's state dir: the monitor's sockets should it have died before
        // removing them, and, for a native container whose create was cut short (its
        // state could not be loaded, so `delete` above had nothing to work on), the
        // half-written state itself. The crash storm found it left behind.
        store::remove_dir_all_eventually(
            self.runtime_root().join(&ctr.id),
            format!("runtime state of container {}", ctr.id),
        );
        let dir = self.dir(&ctr.id);
        if let Err(e) = crate::host::mounts::unmount(&dir.join("rootfs")) {
            tracing::warn!(container = %ctr.id, error = %e, "unmounting rootfs");
        }
        if let Err(e) = self.images.release(&ctr.id).await {
            tracing::warn!(container = %ctr.id, error = %e, "releasing image lease");
        }
        if !super::image_volume::unmount_all(&self.images, &ctr.id, &dir).await {
            // Deleting the dir would reach into a still-mounted image volume.
            return;
        }
        self.layer_usage.forget(&dir.join("upper"));
        store::remove_dir_all_eventually(dir, format!("container {}", ctr.id));
    }
}
