//! CheckpointContainer against a real berthd: the request is validated (unknown
//! container, bad location, container not running), and on a host where CRIU cannot
//! run (Debian 12's criu 3.17 on Linux 6.13 and later) the answer is a
//! `FailedPrecondition` that carries `criu check`'s own diagnosis.

use std::process::Command;
use std::time::Duration;

use berth_integration::fixtures::BUSYBOX;
use berth_integration::setup::Node;
use berth_integration::tools::crictl_ok;
use berth_proto::v1::CheckpointContainerRequest;
use tonic::Code;

async fn wait_state(ep: &str, id: &str, state: &str) {
    for _ in 0..100 {
        let v: serde_json::Value =
            serde_json::from_str(&crictl_ok(ep, &["inspect", id]).await).expect("JSON");
        if v["status"]["state"] == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("container {id} never reached {state}");
}

/// What `criu check` says on this host: `None` when it passes, else its output.
/// This is the host fact the RPC's answer must reflect.
fn host_criu_check() -> Option<String> {
    let criu = ["/usr/sbin/criu", "/usr/bin/criu", "/usr/local/sbin/criu"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())?;
    let out = Command::new(criu)
        .arg("check")
        .output()
        .expect("running criu check");
    if out.status.success() {
        None
    } else {
        Some(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn checkpoint_validates_and_reports_why_criu_cannot_run() {
    let node = Node::start().await.expect("node");
    let d = &node.daemon;
    let ep = d.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = dir.path().join("pod.json");
    std::fs::write(
        &pod,
        r#"{"metadata":{"name":"ckpt","namespace":"default","uid":"ckpt-uid","attempt":0},"linux":{}}"#,
    )
    .expect("write");
    let ctr = dir.path().join("ctr.json");
    std::fs::write(
        &ctr,
        format!(
            r#"{{"metadata":{{"name":"main"}},"image":{{"image":"{BUSYBOX}"}},"command":["sleep","3600"]}}"#
        ),
    )
    .expect("write");
    let pod = pod.display().to_string();
    let ctr = ctr.display().to_string();
    let pod_id = crictl_ok(&ep, &["runp", &pod]).await.trim().to_owned();
    crictl_ok(&ep, &["pull", BUSYBOX]).await;
    let running = crictl_ok(&ep, &["create", &pod_id, &ctr, &pod])
        .await
        .trim()
        .to_owned();
    crictl_ok(&ep, &["start", &running]).await;
    wait_state(&ep, &running, "CONTAINER_RUNNING").await;
    // A second container that is created but never started.
    let idle_cfg = dir.path().join("idle.json");
    std::fs::write(
        &idle_cfg,
        format!(
            r#"{{"metadata":{{"name":"idle"}},"image":{{"image":"{BUSYBOX}"}},"command":["sleep","3600"]}}"#
        ),
    )
    .expect("write");
    let idle = crictl_ok(
        &ep,
        &["create", &pod_id, &idle_cfg.display().to_string(), &pod],
    )
    .await
    .trim()
    .to_owned();

    let mut c = d.client().await.expect("client");
    let archive = dir.path().join("checkpoint.tar");
    let call = |id: &str, location: &str| CheckpointContainerRequest {
        container_id: id.to_owned(),
        location: location.to_owned(),
        timeout: 60,
    };

    // Unknown container.
    let e = c
        .runtime
        .checkpoint_container(call("0123456789abcdef", archive.to_str().expect("utf-8")))
        .await
        .expect_err("unknown container");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Bad locations: relative, directory missing, a directory.
    for (location, says) in [
        ("checkpoint.tar", "not an absolute path"),
        ("/nonexistent-berth-dir/checkpoint.tar", "does not exist"),
        ("", "location is empty"),
    ] {
        let e = c
            .runtime
            .checkpoint_container(call(&running, location))
            .await
            .expect_err("bad location");
        assert_eq!(e.code(), Code::InvalidArgument, "{location:?}: {e:?}");
        assert!(e.message().contains(says), "{location:?}: {}", e.message());
    }
    let e = c
        .runtime
        .checkpoint_container(call(&running, dir.path().to_str().expect("utf-8")))
        .await
        .expect_err("directory");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // The running container, on this host.
    let answer = c
        .runtime
        .checkpoint_container(call(&running, archive.to_str().expect("utf-8")))
        .await;
    match host_criu_check() {
        Some(check_output) => {
            let e = answer.expect_err("criu cannot run here");
            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
            assert!(
                e.message().contains("CRIU is unusable on this host"),
                "{}",
                e.message()
            );
            // The first error line `criu check` printed is quoted in the answer.
            let first = check_output
                .lines()
                .find(|l| l.contains("Error"))
                .expect("criu check printed an error");
            assert!(
                e.message().contains(first.trim()),
                "{} does not quote {first}",
                e.message()
            );
            if check_output.contains("vDSO area bounds") {
                assert!(e.message().contains("CRIU 4.1 or newer"), "{}", e.message());
            }
            assert!(!archive.exists(), "no archive is left behind");
        }
        None if !std::path::Path::new("/usr/sbin/criu").exists() => {
            let e = answer.expect_err("criu missing");
            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
            assert!(
                e.message().contains("criu is not installed"),
                "{}",
                e.message()
            );
        }
        None => {
            let e = answer.expect_err("dump not driven yet");
            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
            assert!(
                e.message().contains("passes `criu check`"),
                "{}",
                e.message()
            );
        }
    }
    // The container keeps running whatever the answer.
    wait_state(&ep, &running, "CONTAINER_RUNNING").await;

    // Neither a created nor a stopped container can be checkpointed.
    let e = c
        .runtime
        .checkpoint_container(call(&idle, archive.to_str().expect("utf-8")))
        .await
        .expect_err("created only");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("is not running (created)"),
        "{}",
        e.message()
    );

    // A stopped container cannot be checkpointed.
    crictl_ok(&ep, &["stop", "--timeout", "0", &running]).await;
    wait_state(&ep, &running, "CONTAINER_EXITED").await;
    let e = c
        .runtime
        .checkpoint_container(call(&running, archive.to_str().expect("utf-8")))
        .await
        .expect_err("not running");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("is not running"), "{}", e.message());

    crictl_ok(&ep, &["stopp", &pod_id]).await;
    crictl_ok(&ep, &["rmp", &pod_id]).await;
}
