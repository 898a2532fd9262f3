//! The CRI replies built from what container/ and pod/ keep: list entries, status
//! bodies, verbose info and event types. container/ and pod/ take CRI request messages
//! as input (and persist them verbatim) but build no reply; this is where state becomes
//! one (server/tests/module_graph.rs holds them to that).

use berth_proto::v1::{
    Container as CriContainer, ContainerAttributes, ContainerEventType, ContainerResources,
    ContainerStats, ContainerStatus as CriContainerStatus, ContainerUser, CpuUsage,
    FilesystemIdentifier, FilesystemUsage, ImageSpec, LinuxContainerUser, LinuxPodSandboxStatus,
    MemoryUsage, Mount, Namespace, PodIp, PodSandbox, PodSandboxNetworkStatus, PodSandboxStatus,
    UInt64Value,
};
use serde_json::{Value, json};

use crate::cni;
use crate::container::{Container, EventKind, Usage};
use crate::pod::Sandbox;

/// `ListContainers` entry.
pub fn container(ctr: &Container) -> CriContainer {
    CriContainer {
        id: ctr.id.clone(),
        pod_sandbox_id: ctr.pod_id.clone(),
        metadata: Some(ctr.metadata()),
        image: Some(image_spec(ctr)),
        image_ref: ctr.image_ref.clone(),
        state: ctr.cri_state().into(),
        created_at: ctr.created_at,
        labels: ctr.config.labels.clone(),
        annotations: ctr.config.annotations.clone(),
        image_id: ctr.image_id.clone(),
    }
}

/// `ContainerStatus` body.
pub fn container_status(ctr: &Container) -> CriContainerStatus {
    let s = ctr.state();
    CriContainerStatus {
        id: ctr.id.clone(),
        metadata: Some(ctr.metadata()),
        state: ctr.cri_state().into(),
        created_at: ctr.created_at,
        started_at: s.started_at,
        finished_at: s.finished_at,
        exit_code: s.exit_code,
        image: Some(image_spec(ctr)),
        image_ref: ctr.image_ref.clone(),
        reason: s.reason.clone(),
        message: s.message.clone(),
        labels: ctr.config.labels.clone(),
        annotations: ctr.config.annotations.clone(),
        mounts: ctr.config.mounts.iter().map(status_mount).collect(),
        log_path: ctr.log_path.display().to_string(),
        resources: ctr
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|r| ContainerResources {
                linux: Some(r),
                windows: None,
            }),
        image_id: ctr.image_id.clone(),
        user: s.user.as_ref().map(|(uid, gid, groups)| ContainerUser {
            linux: Some(LinuxContainerUser {
                uid: i64::from(*uid),
                gid: i64::from(*gid),
                supplemental_groups: groups.iter().map(|g| i64::from(*g)).collect(),
            }),
        }),
        // kubelet shows it as the container's `stopSignal` (ContainerStopSignals).
        stop_signal: ctr.config.stop_signal,
    }
}

/// The image as the client named it.
fn image_spec(ctr: &Container) -> ImageSpec {
    ImageSpec {
        image: ctr.image_name.clone(),
        ..Default::default()
    }
}

/// The `ContainerStatus` view of a configured mount: image mounts keep their image
/// (with the resolved `image_ref`) and sub path.
fn status_mount(m: &Mount) -> Mount {
    Mount {
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone(),
        readonly: m.readonly,
        selinux_relabel: m.selinux_relabel,
        propagation: m.propagation,
        recursive_read_only: m.recursive_read_only,
        image: m.image.clone(),
        image_sub_path: m.image_sub_path.clone(),
        ..Default::default()
    }
}

/// `ContainerStatus(verbose).info["info"]`.
pub fn container_info(ctr: &Container) -> Value {
    let s = ctr.state();
    json!({
        "id": ctr.id,
        "sandboxID": ctr.pod_id,
        "pid": s.pid,
        "monitorPid": s.monitor_pid,
        "phase": s.phase,
        "imageId": ctr.image_id,
        "logPath": ctr.log_path,
        "runtimeHandler": s.runtime_handler,
    })
}

/// `ContainerStats` of a container from its `usage` reading.
pub fn container_stats(ctr: &Container, usage: &Usage) -> ContainerStats {
    let v = |value: u64| Some(UInt64Value { value });
    ContainerStats {
        attributes: Some(ContainerAttributes {
            id: ctr.id.clone(),
            metadata: Some(ctr.metadata()),
            labels: ctr.config.labels.clone(),
            annotations: ctr.config.annotations.clone(),
        }),
        cpu: Some(CpuUsage {
            timestamp: usage.at,
            usage_core_nano_seconds: v(usage.cpu_usage_ns),
            usage_nano_cores: usage.nano_cores.and_then(v),
            psi: None,
        }),
        memory: Some(MemoryUsage {
            timestamp: usage.at,
            working_set_bytes: v(usage.memory_working_set),
            usage_bytes: v(usage.memory_usage),
            ..Default::default()
        }),
        writable_layer: Some(FilesystemUsage {
            timestamp: usage.layer_at,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: usage.mountpoint.clone(),
            }),
            used_bytes: v(usage.layer.used_bytes),
            inodes_used: v(usage.layer.inodes_used),
        }),
        swap: None,
        io: None,
    }
}

/// The CRI name of a container event (`GetContainerEvents`).
pub fn event_type(kind: EventKind) -> ContainerEventType {
    match kind {
        EventKind::Created => ContainerEventType::ContainerCreatedEvent,
        EventKind::Started => ContainerEventType::ContainerStartedEvent,
        EventKind::Stopped => ContainerEventType::ContainerStoppedEvent,
        EventKind::Deleted => ContainerEventType::ContainerDeletedEvent,
    }
}

/// `ListPodSandbox` entry.
pub fn sandbox(sb: &Sandbox) -> PodSandbox {
    PodSandbox {
        id: sb.id.clone(),
        metadata: Some(sb.metadata()),
        state: sb.cri_state().into(),
        created_at: sb.created_at,
        labels: sb.config.labels.clone(),
        annotations: sb.config.annotations.clone(),
        runtime_handler: sb.runtime_handler.clone(),
    }
}

/// `PodSandboxStatus` body.
pub fn sandbox_status(sb: &Sandbox) -> PodSandboxStatus {
    let state = sb.state();
    let mut ips = state.ips.iter();
    PodSandboxStatus {
        id: sb.id.clone(),
        metadata: Some(sb.metadata()),
        state: sb.cri_state().into(),
        created_at: sb.created_at,
        network: Some(PodSandboxNetworkStatus {
            ip: ips.next().cloned().unwrap_or_default(),
            additional_ips: ips.map(|ip| PodIp { ip: ip.clone() }).collect(),
        }),
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace {
                options: Some(sb.namespace_options()),
            }),
        }),
        labels: sb.config.labels.clone(),
        annotations: sb.config.annotations.clone(),
        runtime_handler: sb.runtime_handler.clone(),
    }
}

/// `PodSandboxStatus(verbose).info["info"]`.
pub fn sandbox_info(sb: &Sandbox) -> Value {
    let state = sb.state();
    let native = state.network.as_deref() == Some(cni::native::NATIVE_NETWORK_NAME);
    json!({
        "id": sb.id,
        "phase": state.phase,
        "runtimeHandler": sb.runtime_handler,
        "cgroupParent": sb.cgroup_parent,
        "network": state.network,
        "hostInterface": native.then(|| cni::native::host_veth_name(&sb.id)),
        "ips": state.ips,
        "namespaces": state.pins,
        "shm": state.shm,
    })
}
