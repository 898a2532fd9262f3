//! Following a container's `berth-monitor`: its exit is the container's, recorded
//! from the monitor's exit record (or, if the monitor died first, the container is
//! killed and recorded as such).

use std::sync::Arc;

use berth_runtime_core::monitor_protocol as protocol;

use super::{Container, ContainerManager, Phase};
use crate::host::clock::now_nanos;
use crate::host::procs::wait_pidfd_exit;

impl ContainerManager {
    /// Waits for the monitor to exit in the background, then records the exit.
    pub(super) fn watch(self: &Arc<Self>, ctr: Arc<Container>, monitor: Monitor) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            match monitor {
                Monitor::Child(mut c) => {
                    let _ = c.wait().await;
                }
                Monitor::Recovered(v) => wait_pidfd_exit(v.fd).await,
            }
            me.record_exit(&ctr);
            // An init that exits by itself can leave processes behind too (see
            // sweep_cgroup); end them now, not at RemoveContainer, which kubelet may
            // only call at garbage collection.
            me.sweep_cgroup(&ctr).await;
        });
    }

    pub(super) fn record_exit(&self, ctr: &Container) {
        if ctr.state().phase == Phase::Exited {
            return;
        }
        let record = protocol::ExitRecord::read(&self.dir(&ctr.id).join(protocol::EXIT_FILE));
        if record.is_none() {
            // The monitor died before the container did: nobody holds its stdio or
            // would record its exit any more, so end it rather than leave an
            // unsupervised process that berthd reports as exited.
            tracing::warn!(container = %ctr.id, "berth-monitor died; killing its container");
            crate::prom::global().monitor_died();
            self.kill(ctr, libc::SIGKILL, true);
        }
        ctr.update(|s| {
            s.phase = Phase::Exited;
            match &record {
                Some(r) => {
                    s.exit_code = r.status_code();
                    s.finished_at = r.exited_at_ns;
                    s.reason = if r.oom_killed {
                        "OOMKilled".into()
                    } else if s.exit_code == 0 {
                        "Completed".into()
                    } else {
                        "Error".into()
                    };
                }
                None => {
                    s.exit_code = 255;
                    s.finished_at = now_nanos();
                    s.reason = "Error".into();
                    s.message = "its berth-monitor died, so the container was killed".into();
                }
            }
        });
        crate::prom::global().container_exited(&ctr.state().reason);
        if let Err(e) = self.persist(ctr) {
            tracing::warn!(container = %ctr.id, error = %e, "could not persist exit");
        }
        self.emit(ctr, super::EventKind::Stopped);
        tracing::info!(container = %ctr.id, exit_code = ctr.state().exit_code, "container exited");
    }
}

/// How berthd follows a container's monitor: its own child, or, after a restart,
/// a verified process held by a pidfd.
pub(super) enum Monitor {
    Child(tokio::process::Child),
    Recovered(crate::host::procs::Verified),
}
