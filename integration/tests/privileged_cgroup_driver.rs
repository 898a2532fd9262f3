//! berthd with `cgroup_driver = "systemd"` on this host: without systemd as init it
//! warns at start-up and refuses pods with a FailedPrecondition that names the fix;
//! with systemd it refuses invalid slice names.

use std::collections::HashMap;
use std::path::Path;

use berth_integration::daemon::{DaemonOptions, TestDaemon};
use berth_proto::v1::{
    LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, RunPodSandboxRequest,
};
use tonic::Code;

fn pod(name: &str, cgroup_parent: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "berth-test".into(),
            attempt: 0,
        }),
        labels: HashMap::new(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn systemd_driver_says_it_needs_systemd() {
    let d = TestDaemon::start_with(DaemonOptions {
        top_level_config: "cgroup_driver = \"systemd\"".into(),
        ..DaemonOptions::default()
    })
    .await
    .expect("start");
    let mut c = d.client().await.expect("client");
    let run = |name: &str, parent: &str| RunPodSandboxRequest {
        config: Some(pod(name, parent)),
        runtime_handler: String::new(),
    };
    if Path::new("/run/systemd/system").is_dir() {
        // A systemd host: slice names are checked.
        let e = c
            .runtime
            .run_pod_sandbox(run("bad", "kubepods--pod1.slice"))
            .await
            .expect_err("invalid slice");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        return;
    }
    let log = d.log();
    assert!(
        log.contains("cgroup_driver = \\\"systemd\\\" needs systemd")
            || log.contains("cgroup_driver = \"systemd\" needs systemd"),
        "start-up log does not warn: {log}"
    );
    for parent in ["kubepods-burstable-podu1.slice", ""] {
        let e = c
            .runtime
            .run_pod_sandbox(run("p", parent))
            .await
            .expect_err("no systemd here");
        assert_eq!(e.code(), Code::FailedPrecondition, "{parent:?}: {e:?}");
        assert!(
            e.message().contains("needs systemd")
                && e.message().contains("/run/systemd/system")
                && e.message().contains("cgroup_driver = \"cgroupfs\""),
            "{}",
            e.message()
        );
    }
    // Nothing was left behind: no sandbox exists.
    let pods = c
        .runtime
        .list_pod_sandbox(berth_proto::v1::ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
}
