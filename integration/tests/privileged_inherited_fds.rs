//! Descriptors berthd inherits from whatever started it (here: a file the test opens
//! without close-on-exec, as `flock(1)` hands its lock to the command it runs) must
//! not leak into the processes berthd spawns: a pod's infra process, container
//! monitors and containers live for days and would pin the file — a lock held
//! forever, a deleted file whose space never comes back, a host fd in a container.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use berth_integration::fixtures::BUSYBOX;
use berth_integration::setup::Node;
use berth_integration::tools::crictl_ok;

/// Pids of the processes that have `path` open.
fn holders(path: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    for p in fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t == path))
        {
            out.push(pid);
        }
    }
    out
}

fn ppid(pid: u32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[tokio::test]
async fn spawned_processes_do_not_inherit_berthds_descriptors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("inherited-marker");
    fs::write(&marker, "x").expect("marker");
    let c_path = std::ffi::CString::new(marker.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: open(2) of a NUL-terminated path; the result is checked and owned below.
    let raw = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY) };
    assert!(raw >= 0, "open: {}", std::io::Error::last_os_error());
    // SAFETY: `raw` is a fresh descriptor nothing else owns. Deliberately not
    // close-on-exec, so berthd (spawned next) inherits it.
    let inherited = unsafe { OwnedFd::from_raw_fd(raw) };

    let node = Node::start().await.expect("node");
    let ep = node.daemon.endpoint();
    let berthd = node.daemon.pid().expect("berthd pid");
    assert!(
        holders(&marker).contains(&berthd),
        "the test set-up is wrong: berthd did not inherit the descriptor"
    );

    // A pod with a shared PID namespace (so berthd starts an infra process) and a
    // running container (a monitor and the container's init).
    let pod = dir.path().join("pod.json");
    fs::write(
        &pod,
        r#"{"metadata":{"name":"fds","namespace":"default","uid":"fds-uid","attempt":0},
            "linux":{"security_context":{"namespace_options":{"pid":0}}}}"#,
    )
    .expect("pod.json");
    let ctr = dir.path().join("ctr.json");
    fs::write(
        &ctr,
        format!(
            r#"{{"metadata":{{"name":"main"}},"image":{{"image":"{BUSYBOX}"}},
                "command":["sleep","3600"]}}"#
        ),
    )
    .expect("ctr.json");
    let pod_s = pod.display().to_string();
    let pod_id = crictl_ok(&ep, &["runp", &pod_s]).await.trim().to_owned();
    crictl_ok(&ep, &["pull", BUSYBOX]).await;
    let id = crictl_ok(
        &ep,
        &["create", &pod_id, &ctr.display().to_string(), &pod_s],
    )
    .await
    .trim()
    .to_owned();
    crictl_ok(&ep, &["start", &id]).await;
    // An exec'd process is spawned through the same paths.
    let out = crictl_ok(&ep, &["exec", "-s", &id, "ls", "/proc/1/fd"]).await;
    assert!(!out.trim().is_empty(), "ls /proc/1/fd printed nothing");

    // The test's own children (berthd, the registry) inherit it from the test; what
    // matters is what berthd starts.
    let me = std::process::id();
    let strays: Vec<String> = holders(&marker)
        .into_iter()
        .filter(|p| *p != me && *p != berthd && ppid(*p) != Some(me))
        .map(|p| format!("{p}: {}", cmdline(p)))
        .collect();
    assert!(
        strays.is_empty(),
        "processes spawned by berthd hold its inherited descriptor {}: {strays:#?}",
        inherited.as_raw_fd()
    );

    crictl_ok(&ep, &["stopp", &pod_id]).await;
    crictl_ok(&ep, &["rmp", &pod_id]).await;
}
