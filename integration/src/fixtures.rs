//! The CRI objects and calls most tests start from: the busybox image, a pod config, a
//! container config, and the RPCs around them (pull, run a pod, create and start a
//! container, exec, remove), each failing with the RPC's name and status so a test
//! reads as its scenario. Tests adjust a config with struct update syntax
//! (`ContainerConfig { working_dir, ..container_config(..) }`).

use std::path::{Path, PathBuf};

use berth_proto::v1 as cri;

use crate::CriClient;

/// The busybox image critest uses; the local registry serves it (registry.rs).
pub const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

/// Writes `text` to `dir/name` (a pod or container config for crictl); the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

/// Builds the Rust program `source` into `dir/name` with the toolchain that builds
/// the project, statically linked so it runs in a busybox rootfs (a probe run inside
/// a container for what busybox has no applet for). Panics when rustc fails.
pub fn build_static_program(dir: &Path, name: &str, source: &str) -> PathBuf {
    let src = dir.join(format!("{name}.rs"));
    std::fs::write(&src, source).expect("write the program's source");
    let out = dir.join(name);
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let status = std::process::Command::new(rustc)
        .args([
            "--edition",
            "2024",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("running rustc");
    assert!(status.success(), "building {name} failed");
    out
}

/// A pod named `name` (uid unique to this test process) logging under `logs`.
pub fn pod_config(name: &str, logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_owned(),
            uid: format!("{name}-uid-{}", std::process::id()),
            namespace: "default".to_owned(),
            attempt: 0,
        }),
        hostname: name.to_owned(),
        log_directory: logs.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// `pod` in its own user namespace (kubelet's `hostUsers: false`): container ids
/// 0..65536 mapped to host ids `host_base..`. Its containers join that namespace.
pub fn in_own_user_namespace(
    mut pod: cri::PodSandboxConfig,
    host_base: u32,
) -> cri::PodSandboxConfig {
    let map = vec![cri::IdMapping {
        host_id: host_base,
        container_id: 0,
        length: 65_536,
    }];
    let linux = pod.linux.get_or_insert_with(Default::default);
    let security = linux.security_context.get_or_insert_with(Default::default);
    security
        .namespace_options
        .get_or_insert_with(Default::default)
        .userns_options = Some(cri::UserNamespace {
        mode: cri::NamespaceMode::Pod as i32,
        uids: map.clone(),
        gids: map,
    });
    pod
}

/// A container named `name` running `command` from `image`, logging to `<name>.log`.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// `config` under seccomp profile `profile` (RuntimeDefault, Unconfined...), as kubelet
/// asks for it with the pod's or container's `seccompProfile`.
pub fn with_seccomp(
    mut config: cri::ContainerConfig,
    profile: cri::security_profile::ProfileType,
) -> cri::ContainerConfig {
    let linux = config.linux.get_or_insert_with(Default::default);
    linux
        .security_context
        .get_or_insert_with(Default::default)
        .seccomp = Some(cri::SecurityProfile {
        profile_type: profile as i32,
        localhost_ref: String::new(),
    });
    config
}

/// `PullImage`; panics naming the image when it fails. The image's id (what kubelet
/// passes on in a container config).
pub async fn pull(client: &mut CriClient, image: &str) -> String {
    try_pull(client, image)
        .await
        .unwrap_or_else(|e| panic!("PullImage {image}: {e}"))
}

/// `PullImage`: the image's id, or the status when berthd refuses.
pub async fn try_pull(client: &mut CriClient, image: &str) -> Result<String, tonic::Status> {
    Ok(client
        .image
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .image_ref)
}

/// `RunPodSandbox` with the default handler; the pod's id.
pub async fn run_pod(client: &mut CriClient, config: &cri::PodSandboxConfig) -> String {
    run_pod_with(client, config, "")
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"))
}

/// `RunPodSandbox` with runtime handler `handler` (`""`: the default); the status
/// when berthd refuses.
pub async fn run_pod_with(
    client: &mut CriClient,
    config: &cri::PodSandboxConfig,
    handler: &str,
) -> Result<String, tonic::Status> {
    Ok(client
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_owned(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id)
}

/// `CreateContainer` in pod `pod_id`; the status when berthd refuses.
pub async fn create(
    client: &mut CriClient,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    Ok(client
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_owned(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await?
        .into_inner()
        .container_id)
}

/// `StartContainer`; the status when berthd refuses.
pub async fn start(client: &mut CriClient, id: &str) -> Result<(), tonic::Status> {
    client
        .runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.to_owned(),
        })
        .await
        .map(drop)
}

/// `CreateContainer` then `StartContainer`, both expected to succeed; the id.
pub async fn create_started(
    client: &mut CriClient,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> String {
    let id = create(client, pod_id, pod, config)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}"));
    start(client, &id)
        .await
        .unwrap_or_else(|e| panic!("StartContainer {id}: {e}"));
    id
}

/// `CreateContainer` then `StartContainer`; the status of the first that berthd
/// refuses (a container it created but could not start is left for the pod's
/// removal).
pub async fn try_create_started(
    client: &mut CriClient,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    let id = create(client, pod_id, pod, config).await?;
    start(client, &id).await?;
    Ok(id)
}

/// What an `ExecSync` gave back, its output as text.
#[derive(Debug)]
pub struct ExecOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `ExecSync` of `cmd` (20 s timeout): exit code, stdout, stderr.
pub async fn exec(client: &mut CriClient, id: &str, cmd: &[&str]) -> (i32, String, String) {
    let r = exec_output(client, id, cmd).await;
    (r.code, r.stdout, r.stderr)
}

/// `ExecSync` of `cmd` (20 s timeout), expected to be answered; panics naming the
/// command when it is not.
pub async fn exec_output(client: &mut CriClient, id: &str, cmd: &[&str]) -> ExecOutput {
    exec_within(client, id, cmd, 20).await
}

/// `ExecSync` of `cmd` given `timeout` seconds, expected to be answered; panics naming
/// the command when it is not.
pub async fn exec_within(
    client: &mut CriClient,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> ExecOutput {
    let r = client
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}"))
        .into_inner();
    ExecOutput {
        code: r.exit_code,
        stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
    }
}

/// `ContainerStatus` (not verbose), expected to answer; the status.
pub async fn container_status(client: &mut CriClient, id: &str) -> cri::ContainerStatus {
    client
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        })
        .await
        .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
        .into_inner()
        .status
        .unwrap_or_else(|| panic!("ContainerStatus {id}: no status"))
}

/// `ContainerStatus` with `verbose`: the status, and berthd's verbose `info` as JSON
/// (`Null` when absent).
pub async fn container_status_verbose(
    client: &mut CriClient,
    id: &str,
) -> (cri::ContainerStatus, serde_json::Value) {
    let r = client
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: true,
        })
        .await
        .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
        .into_inner();
    let info = r
        .info
        .get("info")
        .and_then(|i| serde_json::from_str(i).ok())
        .unwrap_or_default();
    let status = r
        .status
        .unwrap_or_else(|| panic!("ContainerStatus {id}: no status"));
    (status, info)
}

/// `PodSandboxStatus` (not verbose), expected to answer; the status.
pub async fn pod_status(client: &mut CriClient, pod_id: &str) -> cri::PodSandboxStatus {
    client
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.to_owned(),
            verbose: false,
        })
        .await
        .unwrap_or_else(|e| panic!("PodSandboxStatus {pod_id}: {e}"))
        .into_inner()
        .status
        .unwrap_or_else(|| panic!("PodSandboxStatus {pod_id}: no status"))
}

/// `RemoveContainer`, errors ignored (clean-up).
pub async fn remove_container(client: &mut CriClient, id: &str) {
    let _ = client
        .runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.to_owned(),
        })
        .await;
}

/// `StopPodSandbox` then `RemovePodSandbox`, errors ignored (clean-up).
pub async fn remove_pod(client: &mut CriClient, pod_id: &str) {
    let _ = client
        .runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.to_owned(),
        })
        .await;
    let _ = client
        .runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.to_owned(),
        })
        .await;
}

/// `StopPodSandbox` then `RemovePodSandbox`, both expected to succeed (the end of a
/// test that checks tear-down works).
pub async fn stop_and_remove_pod(client: &mut CriClient, pod_id: &str) {
    client
        .runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.to_owned(),
        })
        .await
        .expect("StopPodSandbox");
    client
        .runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.to_owned(),
        })
        .await
        .expect("RemovePodSandbox");
}

/// `Status`: the `NetworkReady` condition, and with `verbose` the `cni` info as JSON
/// (`Null` when not asked for or absent).
pub async fn network_status(
    client: &mut CriClient,
    verbose: bool,
) -> (cri::RuntimeCondition, serde_json::Value) {
    let s = client
        .runtime
        .status(cri::StatusRequest { verbose })
        .await
        .expect("Status")
        .into_inner();
    let cni = s
        .info
        .get("cni")
        .map(|v| serde_json::from_str(v).expect("cni info is JSON"))
        .unwrap_or_default();
    let cond = s
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("NetworkReady");
    (cond, cni)
}
