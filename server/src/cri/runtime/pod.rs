//! Pod sandbox RPCs: run, stop, remove, status, list, resize, and the pod checkpoints
//! berth does not take.

use std::collections::HashMap;

use berth_proto::v1::{
    CheckpointPodRequest, CheckpointPodResponse, ListPodSandboxRequest, ListPodSandboxResponse,
    PodSandbox, PodSandboxConfig, PodSandboxFilter, PodSandboxStatusRequest,
    PodSandboxStatusResponse, RemovePodSandboxRequest, RemovePodSandboxResponse, RestorePodRequest,
    RestorePodResponse, RunPodSandboxRequest, RunPodSandboxResponse, StopPodSandboxRequest,
    StopPodSandboxResponse, StreamPodSandboxesRequest, StreamPodSandboxesResponse,
    UpdatePodSandboxResourcesRequest, UpdatePodSandboxResourcesResponse,
};
use tonic::Status;
use tonic::codegen::BoxStream;

use crate::config::CgroupDriver;
use crate::container::Error as ContainerError;
use crate::cri::{CriService, convert};
use crate::error::{Error, Plain};
use crate::host::clock::now_nanos;

pub(super) async fn run_pod_sandbox(
    svc: &CriService,
    req: RunPodSandboxRequest,
) -> Result<RunPodSandboxResponse, Status> {
    let config = req
        .config
        .ok_or_else(|| Error::InvalidArgument("config is required".into()))?;
    check_sandbox_apparmor(svc, &config).await?;
    let pod_sandbox_id = svc.shared.pods.run(config, req.runtime_handler).await?;
    Ok(RunPodSandboxResponse { pod_sandbox_id })
}

pub(super) async fn stop_pod_sandbox(
    svc: &CriService,
    req: StopPodSandboxRequest,
) -> Result<StopPodSandboxResponse, Status> {
    let id = req.pod_sandbox_id;
    // A pod's containers are killed when it stops (kubelet has already stopped them
    // gracefully when it wanted to).
    let containers = &svc.shared.containers;
    each_pod_container(
        svc,
        &id,
        |cid| async move { containers.stop(&cid, 0).await },
    )
    .await?;
    svc.shared.pods.stop(&id).await?;
    Ok(StopPodSandboxResponse {})
}

pub(super) async fn remove_pod_sandbox(
    svc: &CriService,
    req: RemovePodSandboxRequest,
) -> Result<RemovePodSandboxResponse, Status> {
    let id = req.pod_sandbox_id;
    let containers = &svc.shared.containers;
    each_pod_container(svc, &id, |cid| async move { containers.remove(&cid).await }).await?;
    svc.shared.pods.remove(&id).await?;
    Ok(RemovePodSandboxResponse {})
}

pub(super) async fn pod_sandbox_status(
    svc: &CriService,
    req: PodSandboxStatusRequest,
) -> Result<PodSandboxStatusResponse, Status> {
    let sb = svc.shared.pods.get(&req.pod_sandbox_id)?;
    let mut info = HashMap::new();
    if req.verbose {
        info.insert("info".to_owned(), convert::sandbox_info(&sb).to_string());
    }
    Ok(PodSandboxStatusResponse {
        status: Some(convert::sandbox_status(&sb)),
        info,
        containers_statuses: Vec::new(),
        timestamp: now_nanos(),
    })
}

pub(super) async fn list_pod_sandbox(
    svc: &CriService,
    req: ListPodSandboxRequest,
) -> Result<ListPodSandboxResponse, Status> {
    Ok(ListPodSandboxResponse {
        items: svc.pod_sandboxes(req.filter.as_ref()),
    })
}

pub(super) async fn stream_pod_sandboxes(
    svc: &CriService,
    req: StreamPodSandboxesRequest,
) -> Result<BoxStream<StreamPodSandboxesResponse>, Status> {
    let items = svc.pod_sandboxes(req.filter.as_ref());
    Ok(crate::cri::chunked(items, |pod_sandboxes| {
        StreamPodSandboxesResponse { pod_sandboxes }
    }))
}

pub(super) async fn update_pod_sandbox_resources(
    svc: &CriService,
    req: UpdatePodSandboxResourcesRequest,
) -> Result<UpdatePodSandboxResourcesResponse, Status> {
    let sb = svc.shared.pods.get(&req.pod_sandbox_id)?;
    let Some(resources) = req.resources else {
        return Ok(Default::default());
    };
    if sb.cgroup_parent.is_empty() {
        // No pod cgroup (kubelet without cgroupsPerQOS): nothing to resize.
        tracing::debug!(pod = %sb.id, "pod has no cgroup parent; resize is a no-op");
        return Ok(Default::default());
    }
    let linux = crate::container::spec::resources_update(&resources)?;
    let systemd_driver = matches!(svc.config().cgroup_driver, CgroupDriver::Systemd);
    let parent = if systemd_driver {
        use crate::systemd;
        // A valid slice name before systemd hears of it (a pod made under the
        // cgroupfs driver has a path here). Then the slice unit (systemd owns its
        // limits); the cgroup files for what systemd cannot express, after it, at
        // the slice's cgroup path.
        let path = systemd::expand_slice(&sb.cgroup_parent)
            .map_err(|e| Error::InvalidArgument(format!("linux.cgroup_parent: {e}")))?;
        let props = systemd::resource_properties(&linux)?;
        systemd::client()
            .update_slice(&sb.cgroup_parent, &props)
            .await
            .map_err(Error::from)?;
        path
    } else {
        sb.cgroup_parent.clone()
    };
    let id = sb.id.clone();
    tokio::task::spawn_blocking(move || {
        let cg = berth_runtime_core::cgroups::Cgroup::new(
            std::path::Path::new(berth_runtime_core::container::CGROUP_ROOT),
            &parent,
            &id,
        )?;
        if !systemd_driver {
            // kubelet normally created it; creating is idempotent.
            cg.create()?;
        }
        cg.apply(&linux)
    })
    .await
    .map_err(Error::task("resize"))?
    .map_err(|source| crate::pod::Error::Resize {
        id: sb.id.clone(),
        source,
    })?;
    tracing::info!(pod = %sb.id, "pod cgroup resized");
    Ok(Default::default())
}

/// cri-api v0.37 pod checkpoints (KEP-5823, alpha; kubelet sends them only with its
/// feature gate). Berth cannot dump one container yet (see `checkpoint_container`),
/// so a consistent pod-wide cut is out of reach: Unimplemented, as containerd 2.4
/// answers too.
pub(super) async fn checkpoint_pod(
    _svc: &CriService,
    _req: CheckpointPodRequest,
) -> Result<CheckpointPodResponse, Status> {
    Err(Status::unimplemented(
        "CheckpointPod is not implemented by berth (pod checkpoints need CRIU dumps, \
         which berth does not drive yet)",
    ))
}

pub(super) async fn restore_pod(
    _svc: &CriService,
    _req: RestorePodRequest,
) -> Result<RestorePodResponse, Status> {
    Err(Status::unimplemented(
        "RestorePod is not implemented by berth (it restores no checkpoints)",
    ))
}

impl CriService {
    /// The `ListPodSandbox` entries of the sandboxes matching `filter`, newest first.
    fn pod_sandboxes(&self, filter: Option<&PodSandboxFilter>) -> Vec<PodSandbox> {
        let pods = self.shared.pods.list(filter);
        pods.iter().map(|sb| convert::sandbox(sb)).collect()
    }
}

/// The sandbox's AppArmor profile is checked like a container's, so a pod asking
/// for one this node cannot give fails at RunPodSandbox with the reason. Berth's
/// infra process (shared-pid pods only) is its own pause binary and is not confined.
async fn check_sandbox_apparmor(
    svc: &CriService,
    config: &PodSandboxConfig,
) -> Result<(), ContainerError> {
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    if sc.apparmor.is_none() {
        return Ok(());
    }
    let req = crate::container::apparmor::Request::parse(
        "config.linux.security_context",
        sc.apparmor.as_ref(),
        "",
    )?;
    let apparmor = std::sync::Arc::clone(svc.shared.containers.apparmor());
    tokio::task::spawn_blocking(move || apparmor.resolve(&req, sc.privileged, "pod sandbox"))
        .await
        .map_err(ContainerError::task("resolving the AppArmor profile"))??;
    Ok(())
}

/// Runs `op` on each container of pod `id`, when the pod is known (see
/// `each_container`).
async fn each_pod_container<F, Fut>(svc: &CriService, id: &str, op: F) -> Result<(), Status>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), ContainerError>>,
{
    if let Some(pod) = svc.shared.pods.find(id)? {
        let known = |cid: &str| svc.shared.containers.get(cid).is_ok();
        each_container(svc.shared.containers.in_pod(&pod.id), known, op).await?;
    }
    Ok(())
}

/// Runs `op` on each of a pod's containers, in order, for StopPodSandbox and
/// RemovePodSandbox. A container that is found gone (NotFound: removed concurrently)
/// is skipped: answering NotFound would make kubelet take the pod's stop as done, and
/// the pod's network would never be torn down. Any other failure ends the walk.
/// `known` says whether a container still has its record: a NotFound from `op` is the
/// container being gone only when its record is gone too.
async fn each_container<K, F, Fut>(ids: Vec<String>, known: K, op: F) -> Result<(), ContainerError>
where
    K: Fn(&str) -> bool,
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), ContainerError>>,
{
    for cid in ids {
        match op(cid.clone()).await {
            // Only the record lookup's own "container … not found": a host file that
            // is missing (ENOENT, also NotFound by kind) is a real failure of the stop,
            // and so is any other NotFound while the record is still there.
            Err(e @ ContainerError::Host(crate::error::Error::NotFound(_))) if !known(&cid) => {
                tracing::debug!(error = %e, "pod container gone while the pod was stopped");
            }
            r => r?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of the pod's containers is removed concurrently: the others are still
    /// handled and the pod's stop goes on; any other failure still stops it.
    #[tokio::test]
    async fn a_container_gone_midway_does_not_abort_the_pods_stop() {
        let ids = || vec!["c1".to_owned(), "c2".to_owned(), "c3".to_owned()];
        let seen = std::sync::Mutex::new(Vec::new());
        let gone_c2 = |cid: &str| cid != "c2";
        let r = each_container(ids(), gone_c2, |cid| {
            seen.lock().unwrap().push(cid.clone());
            async move {
                if cid == "c2" {
                    Err(ContainerError::Host(crate::error::Error::NotFound(
                        "container \"c2\" not found".into(),
                    )))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(*seen.lock().unwrap(), ids());

        // A NotFound while c2's record is still there is not c2 being gone.
        let r = each_container(
            ids(),
            |_: &str| true,
            |cid| async move {
                if cid == "c2" {
                    Err(ContainerError::not_found(
                        "image \"x\" is not present".into(),
                    ))
                } else {
                    Ok(())
                }
            },
        )
        .await;
        assert!(
            r.is_err(),
            "a NotFound of a known container was skipped: {r:?}"
        );

        let r = each_container(ids(), gone_c2, |cid| async move {
            if cid == "c2" {
                Err(ContainerError::internal("boom".into()))
            } else {
                Ok(())
            }
        })
        .await;
        assert!(
            matches!(
                r,
                Err(ContainerError::Host(crate::error::Error::Internal(_)))
            ),
            "{r:?}"
        );

        // A host file missing during the stop is not the container being gone.
        let r = each_container(ids(), gone_c2, |cid| async move {
            if cid == "c2" {
                Err(ContainerError::io(
                    "stopping c2",
                    std::io::Error::from_raw_os_error(libc::ENOENT),
                ))
            } else {
                Ok(())
            }
        })
        .await;
        assert!(r.is_err(), "a missing host file was skipped: {r:?}");
    }
}
