//! Recovery after a berthd restart: containers are re-read from their records, live
//! monitors re-adopted (verified by pid and start time), exits that happened meanwhile
//! recorded, and containers berthd died creating removed.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::v1::ContainerConfig;

use super::error::{Error, Result};
use super::monitor::Monitor;
use super::{Container, ContainerManager, CtrState, Phase, Record};
use crate::error::Plain;
use crate::host::clock::now_nanos;
use crate::host::procs::wait_pidfd_exit;
use crate::store::{self, StateCell};

impl ContainerManager {
    /// Rebuilds the index from disk and reattaches to live monitors; containers whose
    /// monitor died meanwhile get their exit recorded; half-created ones are removed.
    pub async fn recover(self: &Arc<Self>) -> Result<()> {
        let dirs = store::record_dirs(&self.records_dir())
            .map_err(|e| Error::io("listing container records", e))?;
        for dir in dirs {
            let id = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let ctr = match self.load(&dir) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "unreadable container record; removing it");
                    let _ = crate::host::mounts::unmount(&dir.join("rootfs"));
                    if !super::image_volume::unmount_all(&self.images, &id, &dir).await {
                        continue;
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                    continue;
                }
            };
            let state = ctr.state();
            if state.phase == Phase::Creating {
                tracing::info!(container = %id, "removing a container berthd died creating");
                // berthd may have died between spawning the monitor and recording its
                // pid, with the monitor still creating: the record does not name it,
                // so it is found by its command line (this daemon's bundle of this
                // container) and killed before its container is torn down.
                let bundle = self.dir(&id).join("bundle");
                let strays = kill_monitors_of(&id, &bundle).await;
                if strays > 0 {
                    tracing::info!(container = %id, monitors = strays, "killed the monitor of a container berthd died creating");
                }
                if state.monitor_pid > 0 {
                    self.kill(&ctr, libc::SIGKILL, true);
                }
                ctr.update(|s| s.phase = Phase::Exited);
                self.cleanup(&ctr).await;
                continue;
            }
            self.containers
                .names()
                .insert(ctr.name_key.clone(), id.clone());
            self.containers.write().insert(id.clone(), Arc::clone(&ctr));
            if state.phase != Phase::Exited {
                if let Some(monitor) = monitor_of(&state, &id) {
                    crate::prom::global().monitor_reattached();
                    self.watch(Arc::clone(&ctr), Monitor::Recovered(monitor));
                } else {
                    self.record_exit(&ctr);
                }
                // A container created but never started stays created.
                if state.phase == Phase::Created && self.runtime_running(&ctr) {
                    // berthd died between starting it and recording that: the exact
                    // start time was lost with it, so it is when recovery found it
                    // running (kubelet needs one).
                    ctr.update(|s| {
                        s.phase = Phase::Running;
                        if s.started_at == 0 {
                            s.started_at = now_nanos();
                        }
                    });
                    if let Err(e) = self.persist(&ctr) {
                        tracing::warn!(container = %id, error = %e, "could not persist the recovered start");
                    }
                }
            }
        }
        Ok(())
    }

    fn load(&self, dir: &Path) -> std::result::Result<Container, String> {
        let (record, config): (Record, ContainerConfig) = store::read_record(dir)?;
        let (tx, _) = tokio::sync::watch::channel(record.state.phase);
        Ok(Container {
            id: record.id,
            name_key: record.name_key,
            pod_id: record.pod_id,
            config,
            created_at: record.created_at,
            image_id: record.image_id,
            image_name: record.image_name,
            image_ref: record.image_ref,
            log_path: record.log_path,
            stop_signal: record.stop_signal,
            state: StateCell::new(record.state),
            changed: tx,
            op: tokio::sync::Mutex::new(()),
            last_cpu: Mutex::new(None),
            persist_lock: Mutex::new(()),
        })
    }
}

/// SIGKILLs every berth-monitor whose command line names container `id` and
/// `bundle` (so this daemon's monitor of it, whoever its parent is now) and waits
/// (up to 5 s) until they are gone. Returns how many there were.
async fn kill_monitors_of(id: &str, bundle: &Path) -> usize {
    let bundle = bundle.display().to_string();
    // Only real monitors (procs::is_host_monitor): a container process that names
    // itself after this container's monitor is left alone.
    let monitors = crate::host::procs::berth_monitors(|_, args| {
        args.contains(&id.as_bytes()) && args.contains(&bundle.as_bytes())
    });
    let count = monitors.len();
    for m in &monitors {
        m.signal(libc::SIGKILL);
    }
    for m in monitors {
        let _ = tokio::time::timeout(KILL_WAIT_MONITOR, wait_pidfd_exit(m.fd)).await;
    }
    count
}

/// How long recovery waits for a killed stray monitor to be gone.
const KILL_WAIT_MONITOR: Duration = Duration::from_secs(5);

/// The recorded monitor of container `id`, if it still runs: the same pid with the
/// same start time (pids are reused, and a container can name its processes
/// anything). Records from before start times were kept fall back to what a
/// container cannot forge (procs::is_host_monitor) plus the id in its arguments.
fn monitor_of(state: &CtrState, id: &str) -> Option<crate::host::procs::Verified> {
    let pid = crate::host::procs::Pid::new(state.monitor_pid)?;
    let monitor = crate::host::procs::verify(pid, state.monitor_start)?;
    if state.monitor_start == 0 {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.raw())).ok()?;
        if !cmdline.split(|b| *b == 0).any(|a| a == id.as_bytes()) {
            return None;
        }
    }
    Some(monitor)
}
