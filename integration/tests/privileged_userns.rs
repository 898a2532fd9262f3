//! Pods with their own user namespace (`userns_options` mode POD) on the real kernel:
//! root inside the container is an unprivileged uid on the host, volumes are
//! idmapped, bad mappings are refused naming the field, removal leaves no pinned
//! namespace, and critest's UserNamespaces specs pass against berthd.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use berth_integration::fixtures::{BUSYBOX, write_file};
use berth_integration::setup::Node;
use berth_integration::tools::{self, CritestRun, crictl, crictl_ok};

/// A pod config with a user namespace given by `userns` (JSON of `userns_options`).
fn pod_json(name: &str, logs: &Path, userns: &str) -> String {
    format!(
        r#"{{"metadata":{{"name":"{name}","namespace":"default","uid":"{name}-uid","attempt":0}},
            "log_directory":"{}",
            "linux":{{"security_context":{{"namespace_options":{{"userns_options":{userns}}}}}}}}}"#,
        logs.display()
    )
}

const MAPPING: &str = r#"{"mode":0,"uids":[{"host_id":100000,"container_id":0,"length":65536}],"gids":[{"host_id":100000,"container_id":0,"length":65536}]}"#;

/// Mount points below `dir` in berthd's mount namespace (the host's).
fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // `dir` itself is a shared bind mount on itself (as `ip netns` makes /run/netns).
        .filter(|m| Path::new(m).starts_with(dir) && Path::new(m) != dir)
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn pod_user_namespace_maps_root_and_idmaps_volumes() {
    let node = Node::start().await.expect("node");
    let d = &node.daemon;
    let ep = d.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    // An emptyDir-like volume: host root's directory, writable only by host root.
    let vol = dir.path().join("vol");
    std::fs::create_dir(&vol).expect("volume dir");
    let pod = write_file(dir.path(), "pod.json", &pod_json("userns", &logs, MAPPING));
    let ctr = write_file(
        dir.path(),
        "ctr.json",
        &format!(
            r#"{{"metadata":{{"name":"main"}},"image":{{"image":"{BUSYBOX}"}},
                "command":["sh","-c","cat /proc/self/uid_map; id -u; head -n 1 /etc/passwd | cut -c 1-5; echo from-ctr > /vol/made && echo wrote; exec sleep 3600"],
                "mounts":[{{"container_path":"/vol","host_path":"{}"}}],
                "log_path":"main.log"}}"#,
            vol.display()
        ),
    );
    let pod_id = crictl_ok(&ep, &["runp", &pod]).await.trim().to_owned();
    let pin_dir = d.state_dir.join("ns").join(&pod_id);
    assert!(pin_dir.join("user").exists(), "no pinned user namespace");
    crictl_ok(&ep, &["pull", BUSYBOX]).await;
    let id = crictl_ok(&ep, &["create", &pod_id, &ctr, &pod])
        .await
        .trim()
        .to_owned();
    crictl_ok(&ep, &["start", &id]).await;

    let log_path = logs.join("main.log");
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("wrote") || text.contains("can't create") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out: Vec<&str> = text
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .collect();
    let map: Vec<&str> = out
        .first()
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(map, ["0", "100000", "65536"], "log: {text}");
    assert_eq!(out.get(1), Some(&"0"), "root inside; log: {text}");
    assert_eq!(out.get(2), Some(&"root:"), "rootfs readable; log: {text}");
    assert_eq!(out.get(3), Some(&"wrote"), "volume writable; log: {text}");
    // Through the idmapped mount the container's root writes as host root.
    let made = vol.join("made");
    assert_eq!(std::fs::read_to_string(&made).expect("made"), "from-ctr\n");
    assert_eq!(std::fs::metadata(&made).expect("stat").uid(), 0);

    // On the host the container's root is uid 100000, not root.
    let v: serde_json::Value =
        serde_json::from_str(&crictl_ok(&ep, &["inspect", &id]).await).expect("inspect JSON");
    let pid = v["info"]["pid"].as_i64().expect("pid in inspect info");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_owned();
    assert_eq!(uid, "100000", "{status}");
    // The container is in the pod's pinned user namespace.
    let pinned = std::fs::metadata(pin_dir.join("user")).expect("pin").ino();
    let joined = std::fs::metadata(format!("/proc/{pid}/ns/user"))
        .expect("ns")
        .ino();
    assert_eq!(pinned, joined, "container not in the pod's user namespace");

    crictl_ok(&ep, &["stopp", &pod_id]).await;
    crictl_ok(&ep, &["rmp", &pod_id]).await;
    assert!(!pin_dir.exists(), "pin dir left behind");
    assert!(
        mounts_under(&d.state_dir.join("ns")).is_empty(),
        "pinned namespaces left: {:?}",
        mounts_under(&d.state_dir.join("ns"))
    );
}

#[tokio::test]
async fn bad_user_namespace_requests_are_refused_naming_the_field() {
    let node = Node::start().await.expect("node");
    let d = &node.daemon;
    let ep = d.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    let two = r#"{"mode":0,"uids":[{"host_id":100000,"container_id":0,"length":10},{"host_id":200000,"container_id":10,"length":10}],"gids":[{"host_id":100000,"container_id":0,"length":65536}]}"#;
    let no_root = r#"{"mode":0,"uids":[{"host_id":100000,"container_id":1,"length":65536}],"gids":[{"host_id":100000,"container_id":0,"length":65536}]}"#;
    let no_gids =
        r#"{"mode":0,"uids":[{"host_id":100000,"container_id":0,"length":65536}],"gids":[]}"#;
    let container_mode = r#"{"mode":1}"#;
    let host_root = r#"{"mode":0,"uids":[{"host_id":0,"container_id":0,"length":65536}],"gids":[{"host_id":0,"container_id":0,"length":65536}]}"#;
    for (name, userns, field) in [
        ("two", two, "userns_options.uids"),
        ("noroot", no_root, "container id 0"),
        ("nogids", no_gids, "userns_options.gids"),
        ("ctrmode", container_mode, "userns_options.mode"),
        ("hostroot", host_root, "host id 0"),
    ] {
        let pod = write_file(dir.path(), "pod.json", &pod_json(name, &logs, userns));
        let out = crictl(&ep, &["runp", &pod]).await.expect("crictl");
        assert!(!out.output.status.success(), "{name}: accepted");
        let err = out.stderr();
        assert!(err.contains("InvalidArgument"), "{name}: {err}");
        assert!(err.contains(field), "{name}: {err}");
    }
    let pods = crictl_ok(&ep, &["pods", "-q"]).await;
    assert!(pods.trim().is_empty(), "refused pods listed: {pods}");
    assert!(
        mounts_under(&d.state_dir.join("ns")).is_empty(),
        "pins left by refused pods"
    );
}

/// critest v1.37.0's UserNamespaces specs (POD and NODE modes, and the refusals),
/// none skipped: berthd advertises user namespaces and idmapped mounts work here.
#[tokio::test]
async fn critest_user_namespace_specs_pass() {
    let node = Node::start().await.expect("node");
    let ep = node.daemon.endpoint();
    let CritestRun { out, text, summary } = tools::critest(
        &ep,
        &["--ginkgo.focus=UserNamespaces"],
        Duration::from_secs(600),
    )
    .await
    .expect("critest");
    assert!(
        // Six specs, all run: a skip (feature not advertised) would not count as passed.
        out.output.status.success() && summary.contains("6 Passed | 0 Failed"),
        "critest: {summary}\n{text}\n{}",
        out.stderr()
    );
}
