//! Container stats against a running container: the writable layer's usage is served
//! from berthd's cache (seconds old, see `fsinfo::USAGE_MAX_AGE` in berth-server), so
//! after the container writes a file its usage must grow within that bound, the
//! answer's timestamp must say when the usage was measured, and it is never older
//! than the bound.

use std::time::{Duration, Instant, SystemTime};

use berth_integration::fixtures::{self, BUSYBOX};
use berth_integration::setup::Node;
use berth_proto::v1::{
    ContainerStatsRequest, ExecSyncRequest, FilesystemUsage, LinuxPodSandboxConfig,
    ListContainerStatsRequest, PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest,
    StopPodSandboxRequest,
};

/// berthd's `fsinfo::USAGE_MAX_AGE`: the oldest writable-layer usage it serves.
const MAX_AGE: Duration = Duration::from_secs(30);
/// Slack for a loaded machine on top of the bound.
const SLACK: Duration = Duration::from_secs(10);

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).expect("nanos fit"))
        .expect("clock after 1970")
}

fn bound_nanos() -> i64 {
    i64::try_from((MAX_AGE + SLACK).as_nanos()).expect("bound fits")
}

fn used(fs: &FilesystemUsage) -> u64 {
    fs.used_bytes.as_ref().expect("used_bytes").value
}

#[tokio::test]
async fn writable_layer_usage_grows_within_the_refresh_bound() {
    let node = Node::start().await.expect("node");
    let mut c = node.daemon.client().await.expect("client");
    let logs = tempfile::tempdir().expect("tempdir");
    let pod_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "stats".to_owned(),
            uid: "stats-uid".to_owned(),
            namespace: "stats-ns".to_owned(),
            attempt: 0,
        }),
        log_directory: logs.path().display().to_string(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    let pod_id = fixtures::run_pod(&mut c, &pod_config).await;
    fixtures::pull(&mut c, BUSYBOX).await;
    let ctr_id = fixtures::create(
        &mut c,
        &pod_id,
        &pod_config,
        fixtures::container_config("writer", BUSYBOX, &["sleep", "3600"]),
    )
    .await
    .expect("CreateContainer");
    fixtures::start(&mut c, &ctr_id)
        .await
        .expect("StartContainer");

    let stats = |mut c: berth_integration::CriClient, id: String| async move {
        c.runtime
            .container_stats(ContainerStatsRequest { container_id: id })
            .await
            .expect("ContainerStats")
            .into_inner()
            .stats
            .expect("stats")
            .writable_layer
            .expect("writable_layer")
    };
    let before = stats(c.clone(), ctr_id.clone()).await;
    assert!(
        now_nanos() - before.timestamp <= bound_nanos(),
        "usage older than the bound: {before:?}"
    );

    // One MiB in the writable layer.
    let written_at = now_nanos();
    let out = c
        .runtime
        .exec_sync(ExecSyncRequest {
            container_id: ctr_id.clone(),
            cmd: ["dd", "if=/dev/zero", "of=/ballast", "bs=1024", "count=1024"]
                .map(String::from)
                .to_vec(),
            timeout: 30,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(
        out.exit_code,
        0,
        "dd: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Polled like kubelet (faster): the growth shows within the bound, with a
    // timestamp after the write.
    let deadline = Instant::now() + MAX_AGE + SLACK;
    let grown = loop {
        let now = stats(c.clone(), ctr_id.clone()).await;
        assert!(
            now_nanos() - now.timestamp <= bound_nanos(),
            "usage older than the bound: {now:?}"
        );
        if used(&now) >= used(&before) + (1 << 20) {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the 1 MiB write never showed in the writable layer's usage: {before:?} then {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        grown.timestamp >= written_at,
        "the grown usage was measured after the write: {grown:?}, write at {written_at}"
    );
    let listed = c
        .runtime
        .list_container_stats(ListContainerStatsRequest { filter: None })
        .await
        .expect("ListContainerStats")
        .into_inner()
        .stats;
    let mine = listed
        .iter()
        .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == ctr_id))
        .and_then(|s| s.writable_layer.as_ref())
        .expect("the container in ListContainerStats");
    assert!(used(mine) >= used(&before) + (1 << 20), "{mine:?}");

    c.runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("StopPodSandbox");
    c.runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await
        .expect("RemovePodSandbox");
}
