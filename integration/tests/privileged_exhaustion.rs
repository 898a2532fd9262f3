//! Resource exhaustion: the disk under berthd's root fills up during a pull and
//! during a container create, and a container floods its log onto a full disk. Each
//! time the client gets a clear error naming the cause, the daemon keeps serving, a
//! later pod works once space is back, nothing half-made is visible, and after a
//! restart berthd recovers its records.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_integration::client::CriClient;
use berth_integration::fixtures::{
    self, BUSYBOX, container_config, create, pod_config, run_pod, start, try_pull,
};
use berth_integration::setup::Node;
use berth_proto::v1 as cri;

/// A tmpfs mounted by the test; lazily unmounted on drop (after the daemon that
/// used it stopped, when declared before the node).
struct Tmpfs(Option<PathBuf>);

impl Tmpfs {
    fn mount(&mut self, at: &Path, size: &str) {
        std::fs::create_dir_all(at).expect("mount point");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount");
        assert!(st.success(), "mounting a tmpfs at {}", at.display());
        self.0 = Some(at.to_owned());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = Command::new("umount").arg("-l").arg(&p).status();
        }
    }
}

/// Fills the filesystem holding `dir` with `dir/filler` until ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let block = vec![0u8; 1 << 16];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    // Single bytes too, so not even a page is left.
    while f.write(&[0]).is_ok_and(|n| n == 1) {}
    path
}

async fn containers(client: &mut CriClient) -> Vec<cri::Container> {
    client
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
}

async fn images(client: &mut CriClient) -> Vec<String> {
    client
        .image
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("ListImages")
        .into_inner()
        .images
        .into_iter()
        .flat_map(|i| i.repo_tags)
        .collect()
}

/// The error a full disk must produce: a code kubelet reports as a failure (not a
/// retryable Unavailable) with the kernel's words in it.
fn assert_enospc(what: &str, status: &tonic::Status) {
    assert!(
        matches!(
            status.code(),
            tonic::Code::ResourceExhausted | tonic::Code::Internal | tonic::Code::Unknown
        ),
        "{what}: unexpected code {status:?}"
    );
    assert!(
        status
            .message()
            .to_lowercase()
            .contains("no space left on device"),
        "{what}: the message does not name the cause: {}",
        status.message()
    );
}

fn assert_cri_log(path: &Path) -> usize {
    let text = std::fs::read(path).expect("read container log");
    let mut n = 0;
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let line = String::from_utf8_lossy(line);
        let mut parts = line.splitn(4, ' ');
        let (time, stream, tag) = (parts.next(), parts.next(), parts.next());
        assert!(
            time.is_some_and(|t| t.contains('T') && t.ends_with('Z'))
                && matches!(stream, Some("stdout" | "stderr"))
                && matches!(tag, Some("F" | "P")),
            "corrupt CRI log line: {line:?}"
        );
        n += 1;
    }
    n
}

/// Checks that every whole line of the flood container's log (the last one may still
/// be being written) is one CRI record: one timestamp, `stdout`, `F` or `P`, and a
/// message of flood characters only (the flood prints no spaces). A record torn by
/// ENOSPC and continued by the next one shows up as a line with a second header in
/// it. Records dropped whole while the disk was full are allowed. Returns the number
/// of lines.
fn assert_flood_records(path: &Path) -> usize {
    let text = std::fs::read(path).expect("read container log");
    let whole = text
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(&text[..0], |end| &text[..end]);
    let mut n = 0;
    for line in whole.split(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(line);
        let mut parts = line.splitn(4, ' ');
        let (time, stream, tag, msg) = (parts.next(), parts.next(), parts.next(), parts.next());
        let time_ok = time.is_some_and(|t| {
            t.matches('T').count() == 1 && t.matches('Z').count() == 1 && t.ends_with('Z')
        });
        let msg_ok = msg.is_some_and(|m| {
            m.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
        assert!(
            time_ok && stream == Some("stdout") && matches!(tag, Some("F" | "P")) && msg_ok,
            "line {n} of the log is not one whole CRI record: {line:?}"
        );
        n += 1;
    }
    n
}

#[tokio::test]
async fn disk_full_during_pull_and_create_then_recovery() {
    let mut root_fs = Tmpfs(None);
    let mut node = Node::start().await.expect("node");
    // Put the daemon's root (content store, snapshots, records) on a small tmpfs.
    node.daemon.stop().expect("stop berthd");
    let root = node.daemon.root_dir.clone();
    let saved = node.daemon.dir().join("root.saved");
    std::fs::rename(&root, &saved).expect("move root aside");
    root_fs.mount(&root, "64m");
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", saved.display()))
        .arg(&root)
        .status()
        .expect("cp");
    assert!(st.success());
    node.daemon
        .restart()
        .await
        .expect("restart on the tmpfs root");
    let mut client = node.daemon.client().await.expect("client");
    let logs = tempfile::tempdir().expect("log dir");

    // Pull onto a full disk.
    let filler = fill(&root);
    let err = try_pull(&mut client, BUSYBOX)
        .await
        .expect_err("a pull onto a full disk fails");
    assert_enospc("PullImage", &err);
    assert!(
        !images(&mut client).await.iter().any(|t| t == BUSYBOX),
        "a failed pull left the image listed"
    );
    client
        .runtime
        .version(cri::VersionRequest::default())
        .await
        .expect("berthd serves after a failed pull");
    std::fs::remove_file(&filler).expect("free space");
    try_pull(&mut client, BUSYBOX)
        .await
        .expect("the pull works once space is back");

    // Create onto a full disk.
    let pod = pod_config("full", logs.path());
    let pod_id = run_pod(&mut client, &pod).await;
    let filler = fill(&root);
    let err = create(
        &mut client,
        &pod_id,
        &pod,
        container_config("c1", BUSYBOX, &["sleep", "3600"]),
    )
    .await
    .expect_err("a create onto a full disk fails");
    assert_enospc("CreateContainer", &err);
    assert!(
        containers(&mut client).await.is_empty(),
        "a failed create left a container behind"
    );
    std::fs::remove_file(&filler).expect("free space");
    let id = create(
        &mut client,
        &pod_id,
        &pod,
        container_config("c2", BUSYBOX, &["sleep", "3600"]),
    )
    .await
    .expect("a create works once space is back");
    start(&mut client, &id).await.expect("StartContainer");

    // A restart recovers exactly the pod and the one container.
    node.daemon.stop().expect("stop");
    node.daemon.restart().await.expect("restart");
    let mut client = node.daemon.client().await.expect("client");
    let listed = containers(&mut client).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, id);
    assert_eq!(
        listed[0].state,
        cri::ContainerState::ContainerRunning as i32
    );
    assert!(images(&mut client).await.iter().any(|t| t == BUSYBOX));
    let _ = client
        .runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await;
    client
        .runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await
        .expect("RemovePodSandbox");
}

#[tokio::test]
async fn a_container_flooding_its_log_onto_a_full_disk() {
    let mut log_fs = Tmpfs(None);
    let node = Node::start().await.expect("node");
    let mut client = node.daemon.client().await.expect("client");
    let logs = tempfile::tempdir().expect("log dir");
    log_fs.mount(logs.path(), "4m");
    // Ballast on the same disk: deleting it later gives space back without
    // rotating the log, so the monitor appends to the very file it tore a record in.
    let ballast = logs.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 256 * 1024]).expect("ballast");
    try_pull(&mut client, BUSYBOX).await.expect("pull");
    let pod = pod_config("flood", logs.path());
    let pod_id = run_pod(&mut client, &pod).await;
    let id = create(
        &mut client,
        &pod_id,
        &pod,
        container_config(
            "flood",
            BUSYBOX,
            &[
                "sh",
                "-c",
                "while :; do echo 0123456789abcdefghijklmnopqrstuvwxyz-$RANDOM; done",
            ],
        ),
    )
    .await
    .expect("create");
    start(&mut client, &id).await.expect("StartContainer");
    let log_path = logs.path().join("flood.log");
    // Wait until the disk is full.
    let mut full = false;
    for _ in 0..300 {
        let out = Command::new("df")
            .arg("--output=avail")
            .arg(logs.path())
            .output()
            .expect("df");
        let avail: u64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(u64::MAX);
        if avail < 64 {
            full = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(full, "the container never filled its log disk");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The container runs on, the daemon answers, exec works.
    let st = fixtures::container_status(&mut client, &id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    let r = client
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["echo".into(), "alive".into()],
            timeout: 20,
        })
        .await
        .expect("ExecSync on a container whose log disk is full")
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "alive");

    // Space comes back under the same log (no rotation): what is appended next must
    // not run into a record torn by ENOSPC. Every whole line is one flood record.
    std::fs::remove_file(&ballast).expect("remove the ballast");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = assert_flood_records(&log_path);
    assert!(records > 0, "nothing in the log");

    // kubelet's rotation: move the full log away, reopen, and the log resumes with
    // whole records only.
    std::fs::remove_file(&log_path).expect("remove the full log");
    client
        .runtime
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .expect("ReopenContainerLog");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Stop the flood before the disk fills again, then check every record.
    client
        .runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 5,
        })
        .await
        .expect("StopContainer");
    let lines = assert_cri_log(&log_path);
    assert!(lines > 0, "nothing was logged after the reopen");
    fixtures::stop_and_remove_pod(&mut client, &pod_id).await;
    drop(node);
}
