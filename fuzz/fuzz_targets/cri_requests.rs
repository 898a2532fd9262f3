//! The CRI request handlers: arbitrary bytes decoded as a request message (the first
//! byte picks the RPC) and handed to an in-process `CriService` whose root and state
//! directories are temporary. No panic, no hang (each call has a deadline), and every
//! error is a gRPC status the client can read.
//!
//! Left out on purpose: RunPodSandbox (it would build real namespaces, cgroups and
//! network for every input) and PullImage (it would reach out to registries). With no
//! pod ever created, the other RPCs exercise decoding, validation and lookups.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use berth_proto::v1 as cri;
use berth_proto::v1::image_service_server::ImageService;
use berth_proto::v1::runtime_service_server::RuntimeService;
use berth_server::config::Config;
use berth_server::cri::CriService;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tonic::Request;

struct Env {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    svc: CriService,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::default();
        config.root_dir = dir.path().join("root");
        config.state_dir = dir.path().join("state");
        config.grpc.socket = dir.path().join("berth.sock");
        config.cni.conf_dir = dir.path().join("cni");
        config.cni.plugin_dirs = vec![dir.path().join("cni-bin")];
        config.registry.config_path = dir.path().join("certs.d");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let svc = CriService::new(config).expect("service");
        rt.block_on(svc.recover()).expect("recover");
        Env { _dir: dir, rt, svc }
    })
}

macro_rules! call {
    ($svc:expr, $data:expr, $trait:ident :: $method:ident, $req:ty) => {{
        let Ok(req) = <$req>::decode($data) else {
            return;
        };
        let svc = $svc.clone();
        Box::pin(async move {
            let _ = $trait::$method(&svc, Request::new(req)).await;
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>
    }};
}

fuzz_target!(|input: &[u8]| {
    let Some((&which, data)) = input.split_first() else {
        return;
    };
    let env = env();
    let svc = &env.svc;
    let fut = match which % 33 {
        0 => call!(svc, data, RuntimeService::version, cri::VersionRequest),
        1 => call!(
            svc,
            data,
            RuntimeService::stop_pod_sandbox,
            cri::StopPodSandboxRequest
        ),
        2 => call!(
            svc,
            data,
            RuntimeService::remove_pod_sandbox,
            cri::RemovePodSandboxRequest
        ),
        3 => call!(
            svc,
            data,
            RuntimeService::pod_sandbox_status,
            cri::PodSandboxStatusRequest
        ),
        4 => call!(
            svc,
            data,
            RuntimeService::list_pod_sandbox,
            cri::ListPodSandboxRequest
        ),
        5 => call!(
            svc,
            data,
            RuntimeService::create_container,
            cri::CreateContainerRequest
        ),
        6 => call!(
            svc,
            data,
            RuntimeService::start_container,
            cri::StartContainerRequest
        ),
        7 => call!(
            svc,
            data,
            RuntimeService::stop_container,
            cri::StopContainerRequest
        ),
        8 => call!(
            svc,
            data,
            RuntimeService::remove_container,
            cri::RemoveContainerRequest
        ),
        9 => call!(
            svc,
            data,
            RuntimeService::container_status,
            cri::ContainerStatusRequest
        ),
        10 => call!(
            svc,
            data,
            RuntimeService::list_containers,
            cri::ListContainersRequest
        ),
        11 => call!(svc, data, RuntimeService::exec_sync, cri::ExecSyncRequest),
        12 => call!(svc, data, RuntimeService::exec, cri::ExecRequest),
        13 => call!(svc, data, RuntimeService::attach, cri::AttachRequest),
        14 => call!(
            svc,
            data,
            RuntimeService::port_forward,
            cri::PortForwardRequest
        ),
        15 => call!(
            svc,
            data,
            RuntimeService::container_stats,
            cri::ContainerStatsRequest
        ),
        16 => call!(
            svc,
            data,
            RuntimeService::list_container_stats,
            cri::ListContainerStatsRequest
        ),
        17 => call!(
            svc,
            data,
            RuntimeService::update_container_resources,
            cri::UpdateContainerResourcesRequest
        ),
        18 => call!(
            svc,
            data,
            RuntimeService::reopen_container_log,
            cri::ReopenContainerLogRequest
        ),
        19 => call!(
            svc,
            data,
            RuntimeService::pod_sandbox_stats,
            cri::PodSandboxStatsRequest
        ),
        20 => call!(
            svc,
            data,
            RuntimeService::list_pod_sandbox_stats,
            cri::ListPodSandboxStatsRequest
        ),
        21 => call!(
            svc,
            data,
            RuntimeService::stream_pod_sandboxes,
            cri::StreamPodSandboxesRequest
        ),
        22 => call!(
            svc,
            data,
            RuntimeService::stream_containers,
            cri::StreamContainersRequest
        ),
        23 => call!(
            svc,
            data,
            RuntimeService::stream_container_stats,
            cri::StreamContainerStatsRequest
        ),
        24 => call!(
            svc,
            data,
            RuntimeService::stream_pod_sandbox_stats,
            cri::StreamPodSandboxStatsRequest
        ),
        25 => call!(
            svc,
            data,
            RuntimeService::update_pod_sandbox_resources,
            cri::UpdatePodSandboxResourcesRequest
        ),
        26 => call!(svc, data, RuntimeService::status, cri::StatusRequest),
        27 => call!(
            svc,
            data,
            RuntimeService::runtime_config,
            cri::RuntimeConfigRequest
        ),
        28 => call!(
            svc,
            data,
            RuntimeService::update_runtime_config,
            cri::UpdateRuntimeConfigRequest
        ),
        29 => call!(
            svc,
            data,
            ImageService::image_status,
            cri::ImageStatusRequest
        ),
        30 => call!(svc, data, ImageService::list_images, cri::ListImagesRequest),
        31 => call!(
            svc,
            data,
            ImageService::remove_image,
            cri::RemoveImageRequest
        ),
        _ => call!(
            svc,
            data,
            ImageService::image_fs_info,
            cri::ImageFsInfoRequest
        ),
    };
    env.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("a CRI handler took more than 10 s on a request with no pods");
    });
});
