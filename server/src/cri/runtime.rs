//! RuntimeService handlers.

use std::collections::HashMap;

use berth_proto::v1::runtime_service_server::RuntimeService;
use berth_proto::v1::{
    CgroupDriver as ProtoCgroupDriver, ContainerStatusRequest, ContainerStatusResponse,
    CreateContainerRequest, CreateContainerResponse, ExecSyncRequest, ExecSyncResponse,
    LinuxRuntimeConfiguration, ListContainersRequest, ListContainersResponse,
    ListPodSandboxRequest, ListPodSandboxResponse, PodSandboxStatusRequest,
    PodSandboxStatusResponse, RemoveContainerRequest, RemoveContainerResponse,
    RemovePodSandboxRequest, RemovePodSandboxResponse, RunPodSandboxRequest, RunPodSandboxResponse,
    RuntimeConfigRequest, RuntimeConfigResponse, RuntimeFeatures, RuntimeHandler,
    RuntimeHandlerFeatures, RuntimeStatus, StartContainerRequest, StartContainerResponse,
    StatusRequest, StatusResponse, StopContainerRequest, StopContainerResponse,
    StopPodSandboxRequest, StopPodSandboxResponse, UpdateRuntimeConfigRequest,
    UpdateRuntimeConfigResponse, VersionRequest, VersionResponse,
};
use berth_proto::v1::{
    ContainerEventResponse, GetEventsRequest, ListPodSandboxStatsRequest,
    ListPodSandboxStatsResponse, PodSandboxStatsRequest, PodSandboxStatsResponse,
};
use berth_proto::v1::{
    ContainerStatsRequest, ContainerStatsResponse, ListContainerStatsRequest,
    ListContainerStatsResponse, ReopenContainerLogRequest, ReopenContainerLogResponse,
    UpdateContainerResourcesRequest, UpdateContainerResourcesResponse,
};
use serde_json::json;
use tonic::{Request, Response, Status};

use super::status::{condition, parse_pod_cidrs, state_dirs_problem, verbose_config};
use super::{CriService, KUBELET_API_VERSION, RUNTIME_API_VERSION, RUNTIME_NAME};
use crate::cni;
use crate::config::CgroupDriver;
use crate::error::{Error, Plain};
use crate::host::clock::now_nanos;

/// Condition type kubelet requires to be true before it syncs any pod.
pub const RUNTIME_READY: &str = "RuntimeReady";
/// Condition type kubelet requires to be true before it runs non-hostNetwork pods.
pub const NETWORK_READY: &str = "NetworkReady";

#[tonic::async_trait]
impl RuntimeService for CriService {
    async fn version(
        &self,
        _request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: KUBELET_API_VERSION.to_owned(),
            runtime_name: RUNTIME_NAME.to_owned(),
            runtime_version: env!("CARGO_PKG_VERSION").to_owned(),
            runtime_api_version: RUNTIME_API_VERSION.to_owned(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        let req = request.into_inner();
        let config = req
            .config
            .ok_or_else(|| Error::InvalidArgument("config is required".into()))?;
        self.check_sandbox_apparmor(&config).await?;
        let pod_sandbox_id = self.shared.pods.run(config, req.runtime_handler).await?;
        Ok(Response::new(RunPodSandboxResponse { pod_sandbox_id }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        if let Some(pod) = self.shared.pods.find(&id)? {
            // A pod's containers are killed when it stops (kubelet has already
            // stopped them gracefully when it wanted to).
            let containers = &self.shared.containers;
            each_container(containers.in_pod(&pod.id), |cid| async move {
                containers.stop(&cid, 0).await
            })
            .await?;
        }
        self.shared.pods.stop(&id).await?;
        Ok(Response::new(StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        if let Some(pod) = self.shared.pods.find(&id)? {
            let containers = &self.shared.containers;
            each_container(containers.in_pod(&pod.id), |cid| async move {
                containers.remove(&cid).await
            })
            .await?;
        }
        self.shared.pods.remove(&id).await?;
        Ok(Response::new(RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        let req = request.into_inner();
        let sb = self.shared.pods.get(&req.pod_sandbox_id)?;
        let mut info = HashMap::new();
        if req.verbose {
            info.insert("info".to_owned(), sb.verbose_info().to_string());
        }
        Ok(Response::new(PodSandboxStatusResponse {
            status: Some(sb.status()),
            info,
            containers_statuses: Vec::new(),
            timestamp: now_nanos(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        let filter = request.into_inner().filter;
        Ok(Response::new(ListPodSandboxResponse {
            items: self.shared.pods.list(filter.as_ref()),
        }))
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let req = request.into_inner();
        let config = req
            .config
            .ok_or_else(|| Error::InvalidArgument("config is required".into()))?;
        let pod = self.shared.pods.find(&req.pod_sandbox_id)?.ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "pod sandbox {:?} does not exist",
                req.pod_sandbox_id
            ))
        })?;
        if !pod.is_ready() {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready (stopped)",
                pod.id
            ))
            .into());
        }
        let ctx = self.shared.pods.pod_context(&pod)?;
        let container_id = self.shared.containers.create(ctx, config).await?;
        Ok(Response::new(CreateContainerResponse { container_id }))
    }

    async fn start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        self.shared
            .containers
            .start(&request.into_inner().container_id)
            .await?;
        Ok(Response::new(StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let req = request.into_inner();
        self.shared
            .containers
            .stop(&req.container_id, req.timeout)
            .await?;
        Ok(Response::new(StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        self.shared
            .containers
            .remove(&request.into_inner().container_id)
            .await?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    async fn checkpoint_container(
        &self,
        request: Request<berth_proto::v1::CheckpointContainerRequest>,
    ) -> Result<Response<berth_proto::v1::CheckpointContainerResponse>, Status> {
        let req = request.into_inner();
        let work = crate::container::checkpoint::checkpoint(
            &self.shared.containers,
            &req.container_id,
            &req.location,
        );
        match u64::try_from(req.timeout).ok().filter(|t| *t > 0) {
            Some(secs) => tokio::time::timeout(std::time::Duration::from_secs(secs), work)
                .await
                .map_err(|_| {
                    Error::DeadlineExceeded(format!(
                        "checkpointing container {} took longer than {secs}s",
                        req.container_id
                    ))
                })??,
            None => work.await?,
        }
        Ok(Response::new(Default::default()))
    }

    /// cri-api v0.37 pod checkpoints (KEP-5823, alpha; kubelet sends them only with its
    /// feature gate). Berth cannot dump one container yet (see `checkpoint_container`),
    /// so a consistent pod-wide cut is out of reach: Unimplemented, as containerd 2.4
    /// answers too.
    async fn checkpoint_pod(
        &self,
        _request: Request<berth_proto::v1::CheckpointPodRequest>,
    ) -> Result<Response<berth_proto::v1::CheckpointPodResponse>, Status> {
        Err(Status::unimplemented(
            "CheckpointPod is not implemented by berth (pod checkpoints need CRIU dumps, \
             which berth does not drive yet)",
        ))
    }

    async fn restore_pod(
        &self,
        _request: Request<berth_proto::v1::RestorePodRequest>,
    ) -> Result<Response<berth_proto::v1::RestorePodResponse>, Status> {
        Err(Status::unimplemented(
            "RestorePod is not implemented by berth (it restores no checkpoints)",
        ))
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let req = request.into_inner();
        let ctr = self.shared.containers.get(&req.container_id)?;
        let mut info = HashMap::new();
        if req.verbose {
            info.insert("info".to_owned(), ctr.verbose_info().to_string());
        }
        Ok(Response::new(ContainerStatusResponse {
            status: Some(ctr.status()),
            info,
        }))
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let filter = request.into_inner().filter;
        Ok(Response::new(ListContainersResponse {
            containers: self.shared.containers.list(filter.as_ref()),
        }))
    }

    async fn exec_sync(
        &self,
        request: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        let req = request.into_inner();
        let out = self
            .shared
            .containers
            .exec_sync(&req.container_id, req.cmd, req.timeout)
            .await?;
        Ok(Response::new(ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }

    async fn exec(
        &self,
        request: Request<berth_proto::v1::ExecRequest>,
    ) -> Result<Response<berth_proto::v1::ExecResponse>, Status> {
        let r = request.into_inner();
        let mut req = berth_stream::ExecRequest {
            container_id: r.container_id,
            cmd: r.cmd,
            tty: r.tty,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
        };
        req.validate()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        req.container_id =
            crate::stream::check_running(&self.shared.containers, &req.container_id)?;
        let url = self
            .streams()?
            .register_exec(req)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok(Response::new(berth_proto::v1::ExecResponse { url }))
    }

    async fn attach(
        &self,
        request: Request<berth_proto::v1::AttachRequest>,
    ) -> Result<Response<berth_proto::v1::AttachResponse>, Status> {
        let r = request.into_inner();
        let mut req = berth_stream::AttachRequest {
            container_id: r.container_id,
            tty: r.tty,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
        };
        req.validate()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        req.container_id =
            crate::stream::check_running(&self.shared.containers, &req.container_id)?;
        let url = self
            .streams()?
            .register_attach(req)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok(Response::new(berth_proto::v1::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        request: Request<berth_proto::v1::PortForwardRequest>,
    ) -> Result<Response<berth_proto::v1::PortForwardResponse>, Status> {
        let r = request.into_inner();
        let mut req = berth_stream::PortForwardRequest {
            pod_sandbox_id: r.pod_sandbox_id,
            ports: r.port,
        };
        req.validate()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let sb = self.shared.pods.get(&req.pod_sandbox_id)?;
        if !sb.is_ready() {
            return Err(
                Error::FailedPrecondition(format!("pod sandbox {} is not ready", sb.id)).into(),
            );
        }
        req.pod_sandbox_id = sb.id.clone();
        let url = self
            .streams()?
            .register_portforward(req)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok(Response::new(berth_proto::v1::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let ctr = self
            .shared
            .containers
            .get(&request.into_inner().container_id)?;
        let containers = std::sync::Arc::clone(&self.shared.containers);
        let stats = tokio::task::spawn_blocking(move || containers.stats(&ctr))
            .await
            .map_err(Error::task("stats"))?;
        Ok(Response::new(ContainerStatsResponse { stats: Some(stats) }))
    }

    async fn list_container_stats(
        &self,
        request: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        let filter = request.into_inner().filter;
        let containers = std::sync::Arc::clone(&self.shared.containers);
        let stats = tokio::task::spawn_blocking(move || containers.list_stats(filter.as_ref()))
            .await
            .map_err(Error::task("stats"))?;
        Ok(Response::new(ListContainerStatsResponse { stats }))
    }

    async fn update_container_resources(
        &self,
        request: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        let req = request.into_inner();
        let linux = req.linux.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "UpdateContainerResources of container {:?}: linux resources are required",
                req.container_id
            ))
        })?;
        self.shared
            .containers
            .update_resources(&req.container_id, &linux)
            .await?;
        Ok(Response::new(UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        self.shared
            .containers
            .reopen_log(&request.into_inner().container_id)
            .await?;
        Ok(Response::new(ReopenContainerLogResponse {}))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        let sb = self.shared.pods.get(&request.into_inner().pod_sandbox_id)?;
        let shared = std::sync::Arc::clone(&self.shared);
        let stats = tokio::task::spawn_blocking(move || super::stats::pod_stats(&shared, &sb))
            .await
            .map_err(Error::task("stats"))?;
        Ok(Response::new(PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        let filter = request.into_inner().filter;
        let shared = std::sync::Arc::clone(&self.shared);
        let stats = tokio::task::spawn_blocking(move || {
            super::stats::list_pod_stats(&shared, filter.as_ref())
        })
        .await
        .map_err(Error::task("stats"))?;
        Ok(Response::new(ListPodSandboxStatsResponse { stats }))
    }

    async fn stream_pod_sandboxes(
        &self,
        request: Request<berth_proto::v1::StreamPodSandboxesRequest>,
    ) -> Result<
        Response<tonic::codegen::BoxStream<berth_proto::v1::StreamPodSandboxesResponse>>,
        Status,
    > {
        let items = self.shared.pods.list(request.into_inner().filter.as_ref());
        Ok(Response::new(super::chunked(items, |pod_sandboxes| {
            berth_proto::v1::StreamPodSandboxesResponse { pod_sandboxes }
        })))
    }

    async fn stream_containers(
        &self,
        request: Request<berth_proto::v1::StreamContainersRequest>,
    ) -> Result<
        Response<tonic::codegen::BoxStream<berth_proto::v1::StreamContainersResponse>>,
        Status,
    > {
        let items = self
            .shared
            .containers
            .list(request.into_inner().filter.as_ref());
        Ok(Response::new(super::chunked(items, |containers| {
            berth_proto::v1::StreamContainersResponse { containers }
        })))
    }

    async fn stream_container_stats(
        &self,
        request: Request<berth_proto::v1::StreamContainerStatsRequest>,
    ) -> Result<
        Response<tonic::codegen::BoxStream<berth_proto::v1::StreamContainerStatsResponse>>,
        Status,
    > {
        let filter = request.into_inner().filter;
        let containers = std::sync::Arc::clone(&self.shared.containers);
        let items = tokio::task::spawn_blocking(move || containers.list_stats(filter.as_ref()))
            .await
            .map_err(Error::task("stats"))?;
        Ok(Response::new(super::chunked(items, |container_stats| {
            berth_proto::v1::StreamContainerStatsResponse { container_stats }
        })))
    }

    async fn stream_pod_sandbox_stats(
        &self,
        request: Request<berth_proto::v1::StreamPodSandboxStatsRequest>,
    ) -> Result<
        Response<tonic::codegen::BoxStream<berth_proto::v1::StreamPodSandboxStatsResponse>>,
        Status,
    > {
        let filter = request.into_inner().filter;
        let shared = std::sync::Arc::clone(&self.shared);
        let items = tokio::task::spawn_blocking(move || {
            super::stats::list_pod_stats(&shared, filter.as_ref())
        })
        .await
        .map_err(Error::task("stats"))?;
        Ok(Response::new(super::chunked(items, |pod_sandbox_stats| {
            berth_proto::v1::StreamPodSandboxStatsResponse { pod_sandbox_stats }
        })))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<berth_proto::v1::ListMetricDescriptorsRequest>,
    ) -> Result<Response<berth_proto::v1::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(
            berth_proto::v1::ListMetricDescriptorsResponse {
                descriptors: super::metrics::descriptors(),
            },
        ))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<berth_proto::v1::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<berth_proto::v1::ListPodSandboxMetricsResponse>, Status> {
        let shared = std::sync::Arc::clone(&self.shared);
        let pod_metrics =
            tokio::task::spawn_blocking(move || super::metrics::list_pod_metrics(&shared))
                .await
                .map_err(Error::task("metrics"))?;
        Ok(Response::new(
            berth_proto::v1::ListPodSandboxMetricsResponse { pod_metrics },
        ))
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _request: Request<berth_proto::v1::StreamPodSandboxMetricsRequest>,
    ) -> Result<
        Response<tonic::codegen::BoxStream<berth_proto::v1::StreamPodSandboxMetricsResponse>>,
        Status,
    > {
        let shared = std::sync::Arc::clone(&self.shared);
        let items = tokio::task::spawn_blocking(move || super::metrics::list_pod_metrics(&shared))
            .await
            .map_err(Error::task("metrics"))?;
        Ok(Response::new(super::chunked(
            items,
            |pod_sandbox_metrics| berth_proto::v1::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            },
        )))
    }

    async fn get_container_events(
        &self,
        _request: Request<GetEventsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<ContainerEventResponse>>, Status> {
        use tokio_stream::StreamExt;
        let shared = std::sync::Arc::clone(&self.shared);
        let events = tokio_stream::wrappers::BroadcastStream::new(shared.containers.subscribe());
        let stream = events.filter_map(move |event| {
            let event = match event {
                Ok(e) => e,
                // A slow reader missed events: tell it, kubelet relists.
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    return Some(Err(Status::data_loss(format!(
                        "{n} container events were dropped; relist"
                    ))));
                }
            };
            let pod = shared.pods.find(&event.pod_id).ok().flatten();
            let containers_statuses = shared
                .containers
                .of_pod(&event.pod_id)
                .iter()
                .map(|c| c.status())
                .collect();
            Some(Ok(ContainerEventResponse {
                container_id: event.container_id,
                container_event_type: event.kind.into(),
                created_at: event.at,
                pod_sandbox_status: pod.map(|p| p.status()),
                containers_statuses,
            }))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn update_pod_sandbox_resources(
        &self,
        request: Request<berth_proto::v1::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<berth_proto::v1::UpdatePodSandboxResourcesResponse>, Status> {
        let req = request.into_inner();
        let sb = self.shared.pods.get(&req.pod_sandbox_id)?;
        let Some(resources) = req.resources else {
            return Ok(Response::new(Default::default()));
        };
        if sb.cgroup_parent.is_empty() {
            // No pod cgroup (kubelet without cgroupsPerQOS): nothing to resize.
            tracing::debug!(pod = %sb.id, "pod has no cgroup parent; resize is a no-op");
            return Ok(Response::new(Default::default()));
        }
        let linux = crate::container::spec::resources_update(&resources)?;
        let systemd_driver = matches!(self.config().cgroup_driver, CgroupDriver::Systemd);
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
        Ok(Response::new(Default::default()))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let verbose = request.into_inner().verbose;
        let config = self.config();
        let pod_cidrs = self.pod_cidrs();

        let runtime = match state_dirs_problem(config) {
            None => condition(RUNTIME_READY, true, "", String::new()),
            Some(why) => condition(RUNTIME_READY, false, "StateDirUnusable", why),
        };
        let network = cni::check_ready(&self.shared.pods.cni_config(), &pod_cidrs);
        let network_condition = match &network {
            Ok(_) => condition(NETWORK_READY, true, "", String::new()),
            Err(why) => condition(
                NETWORK_READY,
                false,
                "NetworkPluginNotReady",
                why.to_string(),
            ),
        };

        let mut info = HashMap::new();
        if verbose {
            info.insert("config".to_owned(), verbose_config(config).to_string());
            info.insert(
                "versions".to_owned(),
                json!({
                    "berth": env!("CARGO_PKG_VERSION"),
                    "criApi": berth_proto::CRI_API_VERSION,
                })
                .to_string(),
            );
            let cni_info = match &network {
                Ok(n) => json!({
                    "ready": true,
                    "network": n.name,
                    "source": n.source.to_string(),
                    "plugins": n.plugin_types,
                    "podCIDRs": pod_cidrs,
                }),
                Err(why) => {
                    json!({ "ready": false, "error": why.to_string(), "podCIDRs": pod_cidrs })
                }
            };
            info.insert("cni".to_owned(), cni_info.to_string());
            info.insert(
                "apparmor".to_owned(),
                self.shared
                    .containers
                    .apparmor()
                    .host()
                    .describe()
                    .to_string(),
            );
        }

        // `features` runs each OCI runtime once (then cached): off the async threads.
        let cfg = self.config().clone();
        let handlers =
            tokio::task::spawn_blocking(move || crate::container::handler::all_features(&cfg))
                .await
                .map_err(|e| Status::internal(format!("runtime handler features: {e}")))?;
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus {
                conditions: vec![runtime, network_condition],
            }),
            info,
            // The native handler and each configured OCI runtime; a feature is advertised
            // only when that handler has it, so clients (and critest) do not ask for more.
            runtime_handlers: handlers
                .into_iter()
                .map(|(name, f)| RuntimeHandler {
                    name,
                    features: Some(RuntimeHandlerFeatures {
                        recursive_read_only_mounts: f.recursive_read_only_mounts,
                        user_namespaces: f.user_namespaces,
                    }),
                })
                .collect(),
            features: Some(RuntimeFeatures {
                supplemental_groups_policy: true,
                user_namespaces_host_network: false,
                // Mount.mount_options (noexec, nodev, nosuid) are applied to binds.
                mount_options: true,
            }),
        }))
    }

    async fn runtime_config(
        &self,
        _request: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        // Always set explicitly: an empty `linux` block means SYSTEMD (enum value 0) to
        // kubelet, which would silently switch its driver.
        let driver = match self.config().cgroup_driver {
            CgroupDriver::Cgroupfs => ProtoCgroupDriver::Cgroupfs,
            CgroupDriver::Systemd => ProtoCgroupDriver::Systemd,
        };
        Ok(Response::new(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: driver.into(),
            }),
        }))
    }

    async fn update_runtime_config(
        &self,
        request: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        let pod_cidr = request
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        let cidrs = parse_pod_cidrs(&pod_cidr)?;
        let mut current = self
            .shared
            .pod_cidrs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current != cidrs {
            tracing::info!(pod_cidrs = ?cidrs, "pod CIDR updated by kubelet");
            *current = cidrs;
        }
        Ok(Response::new(UpdateRuntimeConfigResponse {}))
    }
}

impl CriService {
    /// The sandbox's AppArmor profile is checked like a container's, so a pod asking
    /// for one this node cannot give fails at RunPodSandbox with the reason. Berth's
    /// infra process (shared-pid pods only) is its own pause binary and is not confined.
    async fn check_sandbox_apparmor(
        &self,
        config: &berth_proto::v1::PodSandboxConfig,
    ) -> Result<(), crate::container::Error> {
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
        let apparmor = std::sync::Arc::clone(self.shared.containers.apparmor());
        tokio::task::spawn_blocking(move || apparmor.resolve(&req, sc.privileged, "pod sandbox"))
            .await
            .map_err(crate::container::Error::task(
                "resolving the AppArmor profile",
            ))??;
        Ok(())
    }
}

/// Runs `op` on each of a pod's containers, in order, for StopPodSandbox and
/// RemovePodSandbox. A container that is found gone (NotFound: removed concurrently)
/// is skipped: answering NotFound would make kubelet take the pod's stop as done, and
/// the pod's network would never be torn down. Any other failure ends the walk.
async fn each_container<F, Fut>(ids: Vec<String>, op: F) -> Result<(), crate::container::Error>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::container::Error>>,
{
    for cid in ids {
        match op(cid).await {
            // Only the record lookup's own "container … not found": a host file that
            // is missing (ENOENT, also NotFound by kind) is a real failure of the stop.
            Err(e @ crate::container::Error::Host(crate::error::Error::NotFound(_))) => {
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
    use crate::container::Error as ContainerError;

    /// One of the pod's containers is removed concurrently: the others are still
    /// handled and the pod's stop goes on; any other failure still stops it.
    #[tokio::test]
    async fn a_container_gone_midway_does_not_abort_the_pods_stop() {
        let ids = || vec!["c1".to_owned(), "c2".to_owned(), "c3".to_owned()];
        let seen = std::sync::Mutex::new(Vec::new());
        let r = each_container(ids(), |cid| {
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

        let r = each_container(ids(), |cid| async move {
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
        let r = each_container(ids(), |cid| async move {
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
