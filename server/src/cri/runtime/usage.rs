//! Stats and metrics RPCs: containers' and pods' usage, read off the async threads
//! (cgroup files, the pod's network namespace), listed or streamed in chunks.

use berth_proto::v1::{
    ContainerStats, ContainerStatsFilter, ContainerStatsRequest, ContainerStatsResponse,
    ListContainerStatsRequest, ListContainerStatsResponse, ListMetricDescriptorsRequest,
    ListMetricDescriptorsResponse, ListPodSandboxMetricsRequest, ListPodSandboxMetricsResponse,
    ListPodSandboxStatsRequest, ListPodSandboxStatsResponse, PodSandboxStatsRequest,
    PodSandboxStatsResponse, StreamContainerStatsRequest, StreamContainerStatsResponse,
    StreamPodSandboxMetricsRequest, StreamPodSandboxMetricsResponse, StreamPodSandboxStatsRequest,
    StreamPodSandboxStatsResponse,
};
use tonic::Status;
use tonic::codegen::BoxStream;

use crate::cri::{CriService, Shared, chunked, convert, metrics, stats};
use crate::error::Error;

pub(super) async fn container_stats(
    svc: &CriService,
    req: ContainerStatsRequest,
) -> Result<ContainerStatsResponse, Status> {
    let ctr = svc.shared.containers.get(&req.container_id)?;
    let stats = blocking(svc, "stats", move |s| {
        convert::container_stats(&ctr, &s.containers.stats(&ctr))
    })
    .await?;
    Ok(ContainerStatsResponse { stats: Some(stats) })
}

pub(super) async fn list_container_stats(
    svc: &CriService,
    req: ListContainerStatsRequest,
) -> Result<ListContainerStatsResponse, Status> {
    let filter = req.filter;
    let stats = blocking(svc, "stats", move |s| {
        container_stats_of(s, filter.as_ref())
    })
    .await?;
    Ok(ListContainerStatsResponse { stats })
}

pub(super) async fn stream_container_stats(
    svc: &CriService,
    req: StreamContainerStatsRequest,
) -> Result<BoxStream<StreamContainerStatsResponse>, Status> {
    let filter = req.filter;
    let items = blocking(svc, "stats", move |s| {
        container_stats_of(s, filter.as_ref())
    })
    .await?;
    Ok(chunked(items, |container_stats| {
        StreamContainerStatsResponse { container_stats }
    }))
}

pub(super) async fn pod_sandbox_stats(
    svc: &CriService,
    req: PodSandboxStatsRequest,
) -> Result<PodSandboxStatsResponse, Status> {
    let sb = svc.shared.pods.get(&req.pod_sandbox_id)?;
    let stats = blocking(svc, "stats", move |s| stats::pod_stats(s, &sb)).await?;
    Ok(PodSandboxStatsResponse { stats: Some(stats) })
}

pub(super) async fn list_pod_sandbox_stats(
    svc: &CriService,
    req: ListPodSandboxStatsRequest,
) -> Result<ListPodSandboxStatsResponse, Status> {
    let filter = req.filter;
    let stats = blocking(svc, "stats", move |s| {
        stats::list_pod_stats(s, filter.as_ref())
    })
    .await?;
    Ok(ListPodSandboxStatsResponse { stats })
}

pub(super) async fn stream_pod_sandbox_stats(
    svc: &CriService,
    req: StreamPodSandboxStatsRequest,
) -> Result<BoxStream<StreamPodSandboxStatsResponse>, Status> {
    let filter = req.filter;
    let items = blocking(svc, "stats", move |s| {
        stats::list_pod_stats(s, filter.as_ref())
    })
    .await?;
    Ok(chunked(items, |pod_sandbox_stats| {
        StreamPodSandboxStatsResponse { pod_sandbox_stats }
    }))
}

pub(super) async fn list_metric_descriptors(
    _svc: &CriService,
    _req: ListMetricDescriptorsRequest,
) -> Result<ListMetricDescriptorsResponse, Status> {
    Ok(ListMetricDescriptorsResponse {
        descriptors: metrics::descriptors(),
    })
}

pub(super) async fn list_pod_sandbox_metrics(
    svc: &CriService,
    _req: ListPodSandboxMetricsRequest,
) -> Result<ListPodSandboxMetricsResponse, Status> {
    let pod_metrics = blocking(svc, "metrics", metrics::list_pod_metrics).await?;
    Ok(ListPodSandboxMetricsResponse { pod_metrics })
}

pub(super) async fn stream_pod_sandbox_metrics(
    svc: &CriService,
    _req: StreamPodSandboxMetricsRequest,
) -> Result<BoxStream<StreamPodSandboxMetricsResponse>, Status> {
    let items = blocking(svc, "metrics", metrics::list_pod_metrics).await?;
    Ok(chunked(items, |pod_sandbox_metrics| {
        StreamPodSandboxMetricsResponse {
            pod_sandbox_metrics,
        }
    }))
}

/// The `ContainerStats` of the containers matching `filter` (blocking: reads their
/// cgroups).
fn container_stats_of(
    shared: &Shared,
    filter: Option<&ContainerStatsFilter>,
) -> Vec<ContainerStats> {
    let listed = shared.containers.list_stats(filter);
    listed
        .iter()
        .map(|(ctr, usage)| convert::container_stats(ctr, usage))
        .collect()
}

/// `read` run on a blocking thread over the daemon's state: stats and metrics read
/// cgroup files and enter network namespaces. A panic there is an internal error
/// naming `what`.
async fn blocking<T: Send + 'static>(
    svc: &CriService,
    what: &'static str,
    read: impl FnOnce(&Shared) -> T + Send + 'static,
) -> Result<T, Status> {
    let shared = std::sync::Arc::clone(&svc.shared);
    let out = tokio::task::spawn_blocking(move || read(&shared))
        .await
        .map_err(Error::task(what))?;
    Ok(out)
}
