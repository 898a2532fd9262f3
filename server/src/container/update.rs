//! `UpdateContainerResources` and `ReopenContainerLog`: changes to a live container.

use std::time::Duration;

use berth_proto::v1::LinuxContainerResources;
use berth_runtime_core::ContainerError;
use berth_runtime_core::monitor_protocol as protocol;

use super::error::{Error, Result};
use super::{ContainerManager, Phase, spec};
use crate::config::CgroupDriver;
use crate::error::Plain;
use crate::systemd;

impl ContainerManager {
    /// `UpdateContainerResources`: applies to the live cgroup.
    pub async fn update_resources(&self, id: &str, r: &LinuxContainerResources) -> Result<()> {
        let ctr = self.get(id)?;
        if ctr.state().phase == Phase::Exited {
            return Err(Error::failed_precondition(format!(
                "container {} has exited",
                ctr.id
            )));
        }
        let resources = spec::resources_update(r)?;
        if matches!(self.config.cgroup_driver, CgroupDriver::Systemd) {
            // The unit first: systemd owns these limits and would reset cgroupfs writes
            // at its next reload. What it cannot express is written below, after it.
            let props = systemd::resource_properties(&resources)?;
            let unit = systemd::scope_name(&ctr.id);
            match systemd::client().set_properties(&unit, &props).await {
                // A container with no scope (made by an older berthd that wrote
                // cgroupfs itself): its cgroup is not systemd's, so cgroupfs is right.
                Err(e) if e.is_no_such_unit() => {
                    tracing::info!(container = %ctr.id, %unit, "no scope unit: updating its cgroup directly");
                }
                r => r?,
            }
        }
        let root = self.runtime_root();
        let cid = ctr.id.clone();
        let oci_cgroup = self.oci_cgroup(&ctr);
        tokio::task::spawn_blocking(move || match oci_cgroup {
            Some(cg) => cg.apply(&resources).map_err(|e| Error::update(cid, e)),
            None => berth_runtime_core::Container::load(&root, &cid)
                .and_then(|c| c.update(&resources))
                .map_err(|e| match e {
                    ContainerError::Cgroup(e) => Error::update(cid, e),
                    source => Error::RuntimeCore {
                        context: format!("updating resources of {cid}"),
                        source,
                    },
                }),
        })
        .await
        .map_err(Error::task("update"))??;
        Ok(())
    }

    /// `ReopenContainerLog`: asks the monitor to reopen the log file (after kubelet
    /// rotated it).
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ctr = self.get(id)?;
        if ctr.state().phase != Phase::Running {
            return Err(Error::NotRunning { id: ctr.id.clone() });
        }
        let sock = self
            .runtime_root()
            .join(&ctr.id)
            .join(protocol::CONTROL_SOCKET);
        let talk = async {
            let mut s = tokio::net::UnixStream::connect(&sock).await?;
            s.write_all(protocol::ControlRequest::ReopenLog.encode())
                .await?;
            let mut reply = String::new();
            s.read_to_string(&mut reply).await?;
            Ok::<_, std::io::Error>(reply)
        };
        let reply = tokio::time::timeout(Duration::from_secs(10), talk)
            .await
            .map_err(|_| {
                Error::internal(format!(
                    "reopening the log of container {}: its monitor did not answer within 10s",
                    ctr.id
                ))
            })?
            .map_err(|e| Error::io(format!("talking to the monitor at {}", sock.display()), e))?;
        match protocol::ControlReply::decode(&reply) {
            protocol::ControlReply::Ok => Ok(()),
            protocol::ControlReply::Error(e) => Err(Error::internal(format!(
                "reopening the log of container {}: {e}",
                ctr.id
            ))),
        }
    }
}
