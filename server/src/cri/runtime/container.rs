//! Container RPCs: create, start, stop, remove, status, list, resize, log reopening,
//! ExecSync, checkpoints and the event stream.

use std::collections::HashMap;

use berth_proto::v1::{
    CheckpointContainerRequest, CheckpointContainerResponse, Container, ContainerEventResponse,
    ContainerFilter, ContainerStatusRequest, ContainerStatusResponse, CreateContainerRequest,
    CreateContainerResponse, ExecSyncRequest, ExecSyncResponse, GetEventsRequest,
    ListContainersRequest, ListContainersResponse, RemoveContainerRequest, RemoveContainerResponse,
    ReopenContainerLogRequest, ReopenContainerLogResponse, StartContainerRequest,
    StartContainerResponse, StopContainerRequest, StopContainerResponse, StreamContainersRequest,
    StreamContainersResponse, UpdateContainerResourcesRequest, UpdateContainerResourcesResponse,
};
use tonic::Status;
use tonic::codegen::BoxStream;

use crate::cri::{CriService, convert};
use crate::error::Error;

pub(super) async fn create_container(
    svc: &CriService,
    req: CreateContainerRequest,
) -> Result<CreateContainerResponse, Status> {
    let config = req
        .config
        .ok_or_else(|| Error::InvalidArgument("config is required".into()))?;
    let pod = svc.shared.pods.find(&req.pod_sandbox_id)?.ok_or_else(|| {
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
    let ctx = svc.shared.pods.pod_context(&pod)?;
    let container_id = svc.shared.containers.create(ctx, config).await?;
    Ok(CreateContainerResponse { container_id })
}

pub(super) async fn start_container(
    svc: &CriService,
    req: StartContainerRequest,
) -> Result<StartContainerResponse, Status> {
    svc.shared.containers.start(&req.container_id).await?;
    Ok(StartContainerResponse {})
}

pub(super) async fn stop_container(
    svc: &CriService,
    req: StopContainerRequest,
) -> Result<StopContainerResponse, Status> {
    svc.shared
        .containers
        .stop(&req.container_id, req.timeout)
        .await?;
    Ok(StopContainerResponse {})
}

pub(super) async fn remove_container(
    svc: &CriService,
    req: RemoveContainerRequest,
) -> Result<RemoveContainerResponse, Status> {
    svc.shared.containers.remove(&req.container_id).await?;
    Ok(RemoveContainerResponse {})
}

pub(super) async fn container_status(
    svc: &CriService,
    req: ContainerStatusRequest,
) -> Result<ContainerStatusResponse, Status> {
    let ctr = svc.shared.containers.get(&req.container_id)?;
    let mut info = HashMap::new();
    if req.verbose {
        info.insert("info".to_owned(), convert::container_info(&ctr).to_string());
    }
    Ok(ContainerStatusResponse {
        status: Some(convert::container_status(&ctr)),
        info,
    })
}

pub(super) async fn list_containers(
    svc: &CriService,
    req: ListContainersRequest,
) -> Result<ListContainersResponse, Status> {
    Ok(ListContainersResponse {
        containers: svc.containers(req.filter.as_ref()),
    })
}

pub(super) async fn stream_containers(
    svc: &CriService,
    req: StreamContainersRequest,
) -> Result<BoxStream<StreamContainersResponse>, Status> {
    let items = svc.containers(req.filter.as_ref());
    Ok(crate::cri::chunked(items, |containers| {
        StreamContainersResponse { containers }
    }))
}

pub(super) async fn update_container_resources(
    svc: &CriService,
    req: UpdateContainerResourcesRequest,
) -> Result<UpdateContainerResourcesResponse, Status> {
    let linux = req.linux.ok_or_else(|| {
        Error::InvalidArgument(format!(
            "UpdateContainerResources of container {:?}: linux resources are required",
            req.container_id
        ))
    })?;
    svc.shared
        .containers
        .update_resources(&req.container_id, &linux)
        .await?;
    Ok(UpdateContainerResourcesResponse {})
}

pub(super) async fn reopen_container_log(
    svc: &CriService,
    req: ReopenContainerLogRequest,
) -> Result<ReopenContainerLogResponse, Status> {
    svc.shared.containers.reopen_log(&req.container_id).await?;
    Ok(ReopenContainerLogResponse {})
}

pub(super) async fn exec_sync(
    svc: &CriService,
    req: ExecSyncRequest,
) -> Result<ExecSyncResponse, Status> {
    let out = svc
        .shared
        .containers
        .exec_sync(&req.container_id, req.cmd, req.timeout)
        .await?;
    Ok(ExecSyncResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit_code,
    })
}

pub(super) async fn checkpoint_container(
    svc: &CriService,
    req: CheckpointContainerRequest,
) -> Result<CheckpointContainerResponse, Status> {
    let work = crate::container::checkpoint::checkpoint(
        &svc.shared.containers,
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
    Ok(Default::default())
}

pub(super) async fn get_container_events(
    svc: &CriService,
    _req: GetEventsRequest,
) -> Result<BoxStream<ContainerEventResponse>, Status> {
    use tokio_stream::StreamExt;
    let shared = std::sync::Arc::clone(&svc.shared);
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
            .map(|c| convert::container_status(c))
            .collect();
        Some(Ok(ContainerEventResponse {
            container_id: event.container_id,
            container_event_type: convert::event_type(event.kind).into(),
            created_at: event.at,
            pod_sandbox_status: pod.map(|p| convert::sandbox_status(&p)),
            containers_statuses,
        }))
    });
    Ok(Box::pin(stream))
}

impl CriService {
    /// The `ListContainers` entries of the containers matching `filter`, newest first.
    fn containers(&self, filter: Option<&ContainerFilter>) -> Vec<Container> {
        let containers = self.shared.containers.list(filter);
        containers.iter().map(|c| convert::container(c)).collect()
    }
}
