//! What `ListContainers`, `ContainerStatus` and the container stats RPCs show.

use std::sync::Arc;

use berth_proto::v1::{
    Container as CriContainer, ContainerAttributes, ContainerFilter, ContainerState,
    ContainerStats, ContainerStatsFilter, ContainerStatus as CriContainerStatus, CpuUsage,
    FilesystemIdentifier, FilesystemUsage, ImageSpec, MemoryUsage, UInt64Value,
};
use serde_json::json;

use super::{Container, ContainerManager, Phase};
use crate::host::clock::now_nanos;

impl Container {
    fn cri_state(&self) -> ContainerState {
        match self.phase() {
            Phase::Creating | Phase::Created => ContainerState::ContainerCreated,
            Phase::Running => ContainerState::ContainerRunning,
            Phase::Exited => ContainerState::ContainerExited,
        }
    }

    /// `ListContainers` entry.
    pub fn to_cri(&self) -> CriContainer {
        CriContainer {
            id: self.id.clone(),
            pod_sandbox_id: self.pod_id.clone(),
            metadata: Some(self.metadata()),
            image: Some(ImageSpec {
                image: self.image_name.clone(),
                ..Default::default()
            }),
            image_ref: self.image_ref.clone(),
            state: self.cri_state().into(),
            created_at: self.created_at,
            labels: self.config.labels.clone(),
            annotations: self.config.annotations.clone(),
            image_id: self.image_id.clone(),
        }
    }

    /// `ContainerStatus` body.
    pub fn status(&self) -> CriContainerStatus {
        let s = self.state();
        CriContainerStatus {
            id: self.id.clone(),
            metadata: Some(self.metadata()),
            state: self.cri_state().into(),
            created_at: self.created_at,
            started_at: s.started_at,
            finished_at: s.finished_at,
            exit_code: s.exit_code,
            image: Some(ImageSpec {
                image: self.image_name.clone(),
                ..Default::default()
            }),
            image_ref: self.image_ref.clone(),
            reason: s.reason.clone(),
            message: s.message.clone(),
            labels: self.config.labels.clone(),
            annotations: self.config.annotations.clone(),
            mounts: self
                .config
                .mounts
                .iter()
                .map(super::image_volume::status_mount)
                .collect(),
            log_path: self.log_path.display().to_string(),
            resources: self
                .config
                .linux
                .as_ref()
                .and_then(|l| l.resources.clone())
                .map(|r| berth_proto::v1::ContainerResources {
                    linux: Some(r),
                    windows: None,
                }),
            image_id: self.image_id.clone(),
            user: s
                .user
                .as_ref()
                .map(|(uid, gid, groups)| berth_proto::v1::ContainerUser {
                    linux: Some(berth_proto::v1::LinuxContainerUser {
                        uid: i64::from(*uid),
                        gid: i64::from(*gid),
                        supplemental_groups: groups.iter().map(|g| i64::from(*g)).collect(),
                    }),
                }),
            // kubelet shows it as the container's `stopSignal` (ContainerStopSignals).
            stop_signal: self.config.stop_signal,
        }
    }

    /// `ContainerStatus(verbose).info["info"]`.
    pub fn verbose_info(&self) -> serde_json::Value {
        let s = self.state();
        json!({
            "id": self.id,
            "sandboxID": self.pod_id,
            "pid": s.pid,
            "monitorPid": s.monitor_pid,
            "phase": s.phase,
            "imageId": self.image_id,
            "logPath": self.log_path,
            "runtimeHandler": s.runtime_handler,
        })
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
    pub fn list(&self, filter: Option<&ContainerFilter>) -> Vec<CriContainer> {
        let all = self.containers.read();
        let mut v: Vec<&Arc<Container>> = all
            .values()
            .filter(|c| c.phase() != Phase::Creating)
            .filter(|c| filter.is_none_or(|f| c.matches(f)))
            .collect();
        v.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        v.into_iter().map(|c| c.to_cri()).collect()
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

    /// `ContainerStats` of one container: cgroup cpu/memory, read now, and the
    /// writable layer's usage, measured at most `fsinfo::USAGE_MAX_AGE` ago (its
    /// `timestamp` says when).
    pub fn stats(&self, ctr: &Container) -> ContainerStats {
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
        let v = |value: u64| Some(UInt64Value { value });
        ContainerStats {
            attributes: Some(ContainerAttributes {
                id: ctr.id.clone(),
                metadata: Some(ctr.metadata()),
                labels: ctr.config.labels.clone(),
                annotations: ctr.config.annotations.clone(),
            }),
            cpu: Some(CpuUsage {
                timestamp: now,
                usage_core_nano_seconds: v(cg.cpu_usage_ns),
                usage_nano_cores: nano_cores.and_then(v),
                psi: None,
            }),
            memory: Some(MemoryUsage {
                timestamp: now,
                working_set_bytes: v(cg.memory_working_set),
                usage_bytes: v(cg.memory_usage),
                ..Default::default()
            }),
            writable_layer: Some(FilesystemUsage {
                timestamp: layer_at,
                fs_id: Some(FilesystemIdentifier { mountpoint }),
                used_bytes: v(layer.used_bytes),
                inodes_used: v(layer.inodes_used),
            }),
            swap: None,
            io: None,
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

    /// `ListContainerStats`.
    pub fn list_stats(&self, filter: Option<&ContainerStatsFilter>) -> Vec<ContainerStats> {
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
            .map(|c| self.stats(&c))
            .collect()
    }
}
