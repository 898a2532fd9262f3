//! RuntimeService: the table below hands each RPC's request to its handler, a function
//! of the same name in the file of its family: pod sandboxes (`pod.rs`), containers
//! (`container.rs`), streaming URLs (`streaming.rs`), stats and metrics (`usage.rs`),
//! and the runtime's own status and config (`node.rs`).

mod container;
mod node;
mod pod;
mod streaming;
mod usage;

use berth_proto::v1;
use berth_proto::v1::runtime_service_server::RuntimeService;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::CriService;

/// `impl RuntimeService for CriService`, one line an RPC:
/// `family::rpc(Request) -> Reply;` answers `rpc` with `family::rpc(service, request)`.
/// A handler sees only the request's body: one that needs the call's metadata, peer
/// address or deadline gets its own method in a plain `impl` block instead of a line here.
/// Spans, timing and logging of every RPC live in the tower layer (`cri/trace.rs`).
macro_rules! runtime_service {
    ($($family:ident::$rpc:ident($req:ident) -> $reply:ty;)*) => {
        #[tonic::async_trait]
        impl RuntimeService for CriService {
            $(
                async fn $rpc(
                    &self,
                    request: Request<v1::$req>,
                ) -> Result<Response<$reply>, Status> {
                    $family::$rpc(self, request.into_inner()).await.map(Response::new)
                }
            )*
        }
    };
}

runtime_service! {
    node::version(VersionRequest) -> v1::VersionResponse;
    node::status(StatusRequest) -> v1::StatusResponse;
    node::runtime_config(RuntimeConfigRequest) -> v1::RuntimeConfigResponse;
    node::update_runtime_config(UpdateRuntimeConfigRequest) -> v1::UpdateRuntimeConfigResponse;

    pod::run_pod_sandbox(RunPodSandboxRequest) -> v1::RunPodSandboxResponse;
    pod::stop_pod_sandbox(StopPodSandboxRequest) -> v1::StopPodSandboxResponse;
    pod::remove_pod_sandbox(RemovePodSandboxRequest) -> v1::RemovePodSandboxResponse;
    pod::pod_sandbox_status(PodSandboxStatusRequest) -> v1::PodSandboxStatusResponse;
    pod::list_pod_sandbox(ListPodSandboxRequest) -> v1::ListPodSandboxResponse;
    pod::stream_pod_sandboxes(StreamPodSandboxesRequest)
        -> BoxStream<v1::StreamPodSandboxesResponse>;
    pod::update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest)
        -> v1::UpdatePodSandboxResourcesResponse;
    pod::checkpoint_pod(CheckpointPodRequest) -> v1::CheckpointPodResponse;
    pod::restore_pod(RestorePodRequest) -> v1::RestorePodResponse;

    container::create_container(CreateContainerRequest) -> v1::CreateContainerResponse;
    container::start_container(StartContainerRequest) -> v1::StartContainerResponse;
    container::stop_container(StopContainerRequest) -> v1::StopContainerResponse;
    container::remove_container(RemoveContainerRequest) -> v1::RemoveContainerResponse;
    container::container_status(ContainerStatusRequest) -> v1::ContainerStatusResponse;
    container::list_containers(ListContainersRequest) -> v1::ListContainersResponse;
    container::stream_containers(StreamContainersRequest)
        -> BoxStream<v1::StreamContainersResponse>;
    container::update_container_resources(UpdateContainerResourcesRequest)
        -> v1::UpdateContainerResourcesResponse;
    container::reopen_container_log(ReopenContainerLogRequest)
        -> v1::ReopenContainerLogResponse;
    container::exec_sync(ExecSyncRequest) -> v1::ExecSyncResponse;
    container::checkpoint_container(CheckpointContainerRequest)
        -> v1::CheckpointContainerResponse;
    container::get_container_events(GetEventsRequest) -> BoxStream<v1::ContainerEventResponse>;

    streaming::exec(ExecRequest) -> v1::ExecResponse;
    streaming::attach(AttachRequest) -> v1::AttachResponse;
    streaming::port_forward(PortForwardRequest) -> v1::PortForwardResponse;

    usage::container_stats(ContainerStatsRequest) -> v1::ContainerStatsResponse;
    usage::list_container_stats(ListContainerStatsRequest) -> v1::ListContainerStatsResponse;
    usage::stream_container_stats(StreamContainerStatsRequest)
        -> BoxStream<v1::StreamContainerStatsResponse>;
    usage::pod_sandbox_stats(PodSandboxStatsRequest) -> v1::PodSandboxStatsResponse;
    usage::list_pod_sandbox_stats(ListPodSandboxStatsRequest)
        -> v1::ListPodSandboxStatsResponse;
    usage::stream_pod_sandbox_stats(StreamPodSandboxStatsRequest)
        -> BoxStream<v1::StreamPodSandboxStatsResponse>;
    usage::list_metric_descriptors(ListMetricDescriptorsRequest)
        -> v1::ListMetricDescriptorsResponse;
    usage::list_pod_sandbox_metrics(ListPodSandboxMetricsRequest)
        -> v1::ListPodSandboxMetricsResponse;
    usage::stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest)
        -> BoxStream<v1::StreamPodSandboxMetricsResponse>;
}
