//! The runtime's own RPCs: Version, Status (its readiness conditions and features),
//! RuntimeConfig and UpdateRuntimeConfig.

use std::collections::HashMap;

use berth_proto::v1::{
    CgroupDriver as ProtoCgroupDriver, LinuxRuntimeConfiguration, RuntimeConfigRequest,
    RuntimeConfigResponse, RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus,
    StatusRequest, StatusResponse, UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse,
    VersionRequest, VersionResponse,
};
use serde_json::json;
use tonic::Status;

use crate::cni;
use crate::config::CgroupDriver;
use crate::cri::status::{condition, parse_pod_cidrs, state_dirs_problem, verbose_config};
use crate::cri::{CriService, KUBELET_API_VERSION, RUNTIME_API_VERSION, RUNTIME_NAME};

/// Condition type kubelet requires to be true before it syncs any pod.
pub const RUNTIME_READY: &str = "RuntimeReady";
/// Condition type kubelet requires to be true before it runs non-hostNetwork pods.
pub const NETWORK_READY: &str = "NetworkReady";

pub(super) async fn version(
    _svc: &CriService,
    _req: VersionRequest,
) -> Result<VersionResponse, Status> {
    Ok(VersionResponse {
        version: KUBELET_API_VERSION.to_owned(),
        runtime_name: RUNTIME_NAME.to_owned(),
        runtime_version: env!("CARGO_PKG_VERSION").to_owned(),
        runtime_api_version: RUNTIME_API_VERSION.to_owned(),
    })
}

pub(super) async fn status(svc: &CriService, req: StatusRequest) -> Result<StatusResponse, Status> {
    let verbose = req.verbose;
    let config = svc.config();
    let pod_cidrs = svc.pod_cidrs();

    let runtime = match state_dirs_problem(config) {
        None => condition(RUNTIME_READY, true, "", String::new()),
        Some(why) => condition(RUNTIME_READY, false, "StateDirUnusable", why),
    };
    let network = cni::check_ready(&svc.shared.pods.cni_config(), &pod_cidrs);
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
            svc.shared
                .containers
                .apparmor()
                .host()
                .describe()
                .to_string(),
        );
    }

    // `features` runs each OCI runtime once (then cached): off the async threads.
    let cfg = svc.config().clone();
    let handlers =
        tokio::task::spawn_blocking(move || crate::container::handler::all_features(&cfg))
            .await
            .map_err(|e| Status::internal(format!("runtime handler features: {e}")))?;
    Ok(StatusResponse {
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
    })
}

pub(super) async fn runtime_config(
    svc: &CriService,
    _req: RuntimeConfigRequest,
) -> Result<RuntimeConfigResponse, Status> {
    // Always set explicitly: an empty `linux` block means SYSTEMD (enum value 0) to
    // kubelet, which would silently switch its driver.
    let driver = match svc.config().cgroup_driver {
        CgroupDriver::Cgroupfs => ProtoCgroupDriver::Cgroupfs,
        CgroupDriver::Systemd => ProtoCgroupDriver::Systemd,
    };
    Ok(RuntimeConfigResponse {
        linux: Some(LinuxRuntimeConfiguration {
            cgroup_driver: driver.into(),
        }),
    })
}

pub(super) async fn update_runtime_config(
    svc: &CriService,
    req: UpdateRuntimeConfigRequest,
) -> Result<UpdateRuntimeConfigResponse, Status> {
    let pod_cidr = req
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    let cidrs = parse_pod_cidrs(&pod_cidr)?;
    let mut current = svc
        .shared
        .pod_cidrs
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *current != cidrs {
        tracing::info!(pod_cidrs = ?cidrs, "pod CIDR updated by kubelet");
        *current = cidrs;
    }
    Ok(UpdateRuntimeConfigResponse {})
}
