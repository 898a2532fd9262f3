//! `StartContainer`: releases the created container's init.

use super::error::{Error, Result};
use super::handler::Handler;
use super::{ContainerManager, Phase};
use crate::error::Plain;
use crate::host::clock::now_nanos;

impl ContainerManager {
    /// `StartContainer`.
    pub async fn start(&self, id: &str) -> Result<()> {
        let ctr = self.get(id)?;
        let _op = ctr.op.lock().await;
        match ctr.state().phase {
            Phase::Created => {}
            Phase::Running => {
                return Err(Error::failed_precondition(format!(
                    "container {} is already running",
                    ctr.id
                )));
            }
            _ => {
                return Err(Error::failed_precondition(format!(
                    "container {} is not in the created state",
                    ctr.id
                )));
            }
        }
        if let Handler::Oci(rt) = self.handler(&ctr)? {
            rt.start(&ctr.id)
                .await
                .map_err(Error::runtime(format!("starting container {}", ctr.id)))?;
        } else {
            let root = self.runtime_root();
            let cid = ctr.id.clone();
            tokio::task::spawn_blocking(move || {
                berth_runtime_core::Container::load(&root, &cid).and_then(|mut c| c.start())
            })
            .await
            .map_err(Error::task("start"))?
            .map_err(|source| Error::RuntimeCore {
                context: format!("starting container {}", ctr.id),
                source,
            })?;
        }
        ctr.update(|s| {
            if s.phase == Phase::Created {
                s.phase = Phase::Running;
                s.started_at = now_nanos();
            }
        });
        self.persist(&ctr)?;
        self.emit(&ctr, super::EventKind::Started);
        tracing::info!(container = %ctr.id, "container started");
        Ok(())
    }
}
