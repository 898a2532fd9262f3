//! Which containers `ListContainers` and the stats RPCs show, and their usage
//! (cri/convert.rs builds the replies from them).

use std::sync::Arc;

use berth_proto::v1::{ContainerFilter, ContainerState, ContainerStatsFilter};

use super::{Container, ContainerManager, Phase};
use crate::host::clock::now_nanos;

/// One reading of a container's usage, for the stats RPCs (cri/convert.rs makes it a
/// `ContainerStats`).
#[derive(Debug, Clone)]
pub struct Usage {
    /// When the cgroup was read, ns.
    pub at: i64,
    /// CPU time used since the container started, ns.
    pub cpu_usage_ns: u64,
    /// CPU rate since the previous reading, nanocores (none at the first).
    pub nano_cores: Option<u64>,
    /// Memory working set, bytes.
    pub memory_working_set: u64,
    /// Memory usage, bytes.
    pub memory_usage: u64,
    /// The writable layer's usage.
    pub layer: crate::host::fsinfo::Usage,
    /// When the writable layer was measured, ns.
    pub layer_at: i64,
    /// Mount point of the filesystem holding the writable layer.
    pub mountpoint: String,
}

impl Container {
    /// The CRI state: what `ListContainers` and `ContainerStatus` show, and what a
    /// `ContainerFilter`'s state is matched against.
    pub fn cri_state(&self) -> ContainerState {
        match self.phase() {
            Phase::Creating | Phase::Created => ContainerState::ContainerCreated,
            Phase::Running => ContainerState::ContainerRunning,
            Phase::Exited => ContainerState::ContainerExited,
        }
    }

    fn matches(&self, f: &ContainerFilter) -> bool {
        if !f.id.is_empty() && !self.id.starts_with(&f.id) {
            return false;
        }
        if !f.pod_sandbox_id.is_empty() && !self.pod_id.starts_with(&f.pod_sandbox_id) {
            return false;
        }
        if let Some(s) = &f.state
            && s.state != i32::from(self.cri_state())
        {
            return false;
        }
        f.label_selector
            .iter()
            .all(|(k, v)| self.config.labels.get(k) == Some(v))
    }
}

impl ContainerManager {
    /// Containers matching `filter`, newest first.
    pub fn list(&self, filter: Option<&ContainerFilter>) -> Vec<Arc<Container>> {
        let all = self.containers.read();
        let mut v: Vec<&Arc<Container>> = all
            .values()
            .filter(|c| c.phase() != Phase::Creating)
            .filter(|c| filter.is_none_or(|f| c.matches(f)))
            .collect();
        v.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        v.into_iter().cloned().collect()
    }

    /// Ids of the containers of a pod.
    pub fn in_pod(&self, pod_id: &str) -> Vec<String> {
        self.containers
            .read()
            .values()
            .filter(|c| c.pod_id == pod_id)
            .map(|c| c.id.clone())
            .collect()
    }

    /// The usage of one container: cgroup cpu/memory, read now, and the writable
    /// layer's usage, measured at most `fsinfo::USAGE_MAX_AGE` ago (`layer_at` says
    /// when).
    pub fn stats(&self, ctr: &Container) -> Usage {
        let now = now_nanos();
        let cg = match ctr.state().phase {
            Phase::Created | Phase::Running => self.cgroup_stats(ctr).unwrap_or_default(),
            _ => berth_runtime_core::cgroups::Stats::default(),
        };
        let nano_cores = {
            let mut last = ctr
                .last_cpu
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let rate = last.and_then(|(t, u)| {
                let dt = u64::try_from(now - t).ok().filter(|d| *d > 0)?;
                let du = cg.cpu_usage_ns.checked_sub(u)?;
                Some(
                    u64::try_from(u128::from(du) * 1_000_000_000 / u128::from(dt))
                        .unwrap_or(u64::MAX),
                )
            });
            *last = Some((now, cg.cpu_usage_ns));
            rate
        };
        let upper = self.dir(&ctr.id).join("upper");
        let layer = self.layer_usage.usage(&upper);
        let (layer, layer_at) = match layer {
            Ok(m) => (m.usage, crate::host::fsinfo::nanos_since_epoch(m.at)),
            Err(_) => (crate::host::fsinfo::Usage::default(), now),
        };
        let mountpoint = self
            .layer_usage
            .mountpoint(&self.config.root_dir)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        Usage {
            at: now,
            cpu_usage_ns: cg.cpu_usage_ns,
            nano_cores,
            memory_working_set: cg.memory_working_set,
            memory_usage: cg.memory_usage,
            layer,
            layer_at,
            mountpoint,
        }
    }

    /// Processes in the container's cgroup.
    pub fn process_count(&self, ctr: &Container) -> u64 {
        match ctr.state().phase {
            Phase::Created | Phase::Running => self.cgroup_stats(ctr).map(|s| s.pids).unwrap_or(0),
            _ => 0,
        }
    }

    /// The containers of a pod.
    pub fn of_pod(&self, pod_id: &str) -> Vec<Arc<Container>> {
        self.containers
            .read()
            .values()
            .filter(|c| c.pod_id == pod_id && c.state().phase != Phase::Creating)
            .cloned()
            .collect()
    }

    /// `ListContainerStats`: the containers matching `filter`, each with its usage.
    pub fn list_stats(
        &self,
        filter: Option<&ContainerStatsFilter>,
    ) -> Vec<(Arc<Container>, Usage)> {
        let all: Vec<Arc<Container>> = self.containers.read().values().cloned().collect();
        all.into_iter()
            .filter(|c| c.phase() != Phase::Creating)
            .filter(|c| {
                filter.is_none_or(|f| {
                    (f.id.is_empty() || c.id.starts_with(&f.id))
                        && (f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id))
                        && f.label_selector
                            .iter()
                            .all(|(k, v)| c.config.labels.get(k) == Some(v))
                })
            })
            .map(|c| {
                let usage = self.stats(&c);
                (c, usage)
            })
            .collect()
    }
}
