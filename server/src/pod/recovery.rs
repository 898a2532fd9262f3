//! Rebuilding the sandbox index from the records on disk at start-up, and cleaning up
//! after a berthd that died mid-way.

use super::*;

impl PodManager {
    /// What a sandbox berthd died creating may hold beyond what its record says: the
    /// record is rewritten only after some steps, so namespaces pinned, a /dev/shm
    /// mounted or a CNI ADD begun since the last write are found by their fixed paths
    /// (tearing down what was never set up is harmless: unmounting a missing pin and
    /// CNI DEL of an unknown attachment are no-ops).
    pub(super) fn creating_leftovers(&self, id: &str, mut state: SandboxState) -> SandboxState {
        let pins = self.pin_dir(id);
        for (slot, name) in [
            (&mut state.pins.net, "net"),
            (&mut state.pins.ipc, "ipc"),
            (&mut state.pins.uts, "uts"),
            (&mut state.pins.pid, "pid"),
        ] {
            let pin = pins.join(name);
            if slot.is_none() && pin.exists() {
                *slot = Some(pin);
            }
        }
        let shm = self.volatile_dir(id).join("shm");
        if state.shm.is_none() && shm.exists() {
            state.shm = Some(shm);
        }
        if state.network.is_none() && state.pins.net.is_some() {
            state.network = self.network().ok().map(|n| n.name);
        }
        state
    }

    /// Rebuilds the index from the records on disk. Sandboxes berthd died creating
    /// are torn down; ready sandboxes whose namespaces are gone (a reboot) are
    /// stopped, releasing their IPs.
    pub async fn recover(&self) -> Result<()> {
        let dirs = store::record_dirs(&self.records_dir())
            .map_err(|e| Error::io("listing sandbox records", e))?;
        for dir in dirs {
            let id = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match self.load(&dir) {
                Ok(sb) => {
                    let sb = Arc::new(sb);
                    let state = sb.state();
                    match state.phase {
                        Phase::Creating => {
                            tracing::info!(pod = %id, "removing a sandbox berthd died creating");
                            let state = self.creating_leftovers(&id, state);
                            self.teardown(&sb, &state).await;
                            kill_unrecorded_infra(&id);
                            self.remove_files(&id);
                            continue;
                        }
                        Phase::Ready
                            if state.pins.all().any(|p| !p.exists())
                                || (state.infra_pid.is_some() && infra_of(&state).is_none()) =>
                        {
                            tracing::info!(pod = %id, "sandbox namespaces are gone (reboot?); stopping it");
                            if let Err(e) = self.stop_locked(&sb).await {
                                tracing::warn!(pod = %id, error = %e, "stopping a stale sandbox");
                            }
                        }
                        _ => {}
                    }
                    self.pods
                        .names()
                        .insert(sandbox_name(&sb.metadata()), id.clone());
                    self.pods.write().insert(id, sb);
                }
                Err(e) => {
                    tracing::warn!(pod = %id, error = %e, "unreadable sandbox record; removing it");
                    self.remove_files(&id);
                }
            }
        }
        // Addresses of the native network whose pod has no record any more (berthd died
        // between allocating and recording, or the record was lost) go back to the pool.
        let live: std::collections::HashSet<String> = self.pods.read().keys().cloned().collect();
        for ip in self.native.ipam().release_orphans(&live) {
            tracing::info!(ip = %ip, "released a native network address no pod holds");
        }
        Ok(())
    }

    pub(super) fn load(&self, dir: &Path) -> std::result::Result<Sandbox, String> {
        let (record, config): (Record, PodSandboxConfig) = store::read_record(dir)?;
        Ok(Sandbox {
            id: record.id,
            config,
            created_at: record.created_at,
            runtime_handler: record.runtime_handler,
            cgroup_parent: record.cgroup_parent,
            state: StateCell::new(record.state),
            op: tokio::sync::Mutex::new(()),
        })
    }
}

/// SIGKILLs infra processes of sandbox `id` (found by [`INFRA_ID_ENV`]): berthd may
/// have died between starting one and recording its pid. Only real berth-monitors
/// are considered (procs::berth_monitors); a container process that copies an
/// infra's arguments and environment is not one.
pub(super) fn kill_unrecorded_infra(id: &str) {
    let needle = format!("{INFRA_ID_ENV}={id}");
    let infras = crate::host::procs::berth_monitors(|dir, args| {
        args.get(1) == Some(&b"pause".as_slice())
            && std::fs::read(dir.join("environ"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .any(|v| v == needle.as_bytes())
    });
    for infra in infras {
        tracing::info!(pod = %id, pid = infra.pid.raw(), "killing an infra process berthd died starting");
        infra.signal(libc::SIGKILL);
    }
}
