//! Stopping (`StopPodSandbox`) and removing (`RemovePodSandbox`) a sandbox, and the
//! teardown both share with a failed run.

use super::*;

impl PodManager {
    /// Undoes what a sandbox holds on the host: CNI attachment, /dev/shm, namespace
    /// pins. Best effort: every step runs even if an earlier one failed; the first
    /// CNI error is returned so the caller (and kubelet) can retry.
    pub(super) async fn teardown(&self, sb: &Sandbox, state: &SandboxState) -> Option<Error> {
        let mut first_error = None;
        if let (Some(netns), Some(network)) = (&state.pins.net, &state.network)
            && network == NATIVE_NETWORK_NAME
        {
            if let Err(e) = self.native_del(sb, netns).await {
                tracing::warn!(pod = %sb.id, error = %e, "native network teardown failed");
                first_error = Some(e);
            }
        } else if let (Some(netns), Some(network)) = (&state.pins.net, &state.network) {
            // Use the network the pod was attached to, even if the config changed.
            let net = self
                .network()
                .ok()
                .filter(|n| &n.name == network)
                .unwrap_or_else(|| NetworkConfig {
                    source: cni::ConfigSource::Builtin,
                    name: network.clone(),
                    conflist: json!({ "name": network, "plugins": [] }),
                    plugin_types: Vec::new(),
                });
            let att = self.attachment(sb, netns);
            if let Err(e) = self.cni_runner().del(&net, &att).await {
                tracing::warn!(pod = %sb.id, error = %e, "CNI DEL failed");
                first_error = Some(Error::NetworkTeardown(e));
            }
        }
        if let Some(infra) = infra_of(state) {
            // pid 1 of the pod's pid namespace: every process in it dies with it.
            infra.signal(libc::SIGKILL);
        }
        if state.pins.pid.is_some() && matches!(self.config.cgroup_driver, CgroupDriver::Systemd) {
            let unit = systemd::scope_name(&sb.id);
            if let Err(e) = systemd::client().stop_unit(&unit).await {
                tracing::warn!(pod = %sb.id, %unit, error = %e, "stopping the infra's scope");
            }
        }
        if let Some(shm) = &state.shm
            && let Err(e) = crate::host::mounts::unmount(shm)
        {
            tracing::warn!(pod = %sb.id, error = %e, "could not unmount /dev/shm");
        }
        namespaces::unpin(&state.pins);
        let _ = std::fs::remove_dir(self.pin_dir(&sb.id));
        first_error
    }

    /// `StopPodSandbox`: idempotent; an unknown id is not an error.
    pub async fn stop(&self, id: &str) -> Result<()> {
        let Some(sb) = self.find(id)? else {
            return Ok(());
        };
        let _op = sb.op.lock().await;
        self.stop_locked(&sb).await
    }

    pub(super) async fn stop_locked(&self, sb: &Sandbox) -> Result<()> {
        let state = sb.state();
        if state.phase != Phase::Ready {
            return Ok(());
        }
        if let Some(e) = self.teardown(sb, &state).await {
            return Err(e);
        }
        self.update_state(sb, |s| {
            s.phase = Phase::NotReady;
            s.pins = PinnedNamespaces::default();
            s.shm = None;
            s.infra_pid = None;
            s.infra_start = 0;
        });
        self.persist(sb)?;
        tracing::info!(pod = %sb.id, "pod sandbox stopped");
        Ok(())
    }

    /// `RemovePodSandbox`: stops the sandbox if needed and forgets it. Idempotent.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let Some(sb) = self.find(id)? else {
            return Ok(());
        };
        let _op = sb.op.lock().await;
        self.stop_locked(&sb).await?;
        self.remove_files(&sb.id);
        self.pods.write().remove(&sb.id);
        let name = sandbox_name(&sb.metadata());
        {
            let mut names = self.pods.names();
            if names.get(&name) == Some(&sb.id) {
                names.remove(&name);
            }
        }
        // Best effort and possibly slow (a systemd job): the name is free already, so a
        // new sandbox of the same name does not wait for it.
        if matches!(self.config.cgroup_driver, CgroupDriver::Systemd) {
            let shared = self
                .pods
                .read()
                .values()
                .any(|o| o.cgroup_parent == sb.cgroup_parent);
            systemd::release_pod_slice(&sb.id, &sb.cgroup_parent, shared).await;
        }
        tracing::info!(pod = %sb.id, "pod sandbox removed");
        Ok(())
    }
}
