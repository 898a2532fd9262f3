//! berthd as a process: start-up, the RPCs that work from day one, bad input, and
//! shutdown. Each test starts its own daemon with temporary directories.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use berth_integration::{DaemonOptions, TestDaemon, fixtures};
use berth_proto::v1::{
    CgroupDriver, ImageFsInfoRequest, NetworkConfig, RuntimeConfig, RuntimeConfigRequest,
    StatusRequest, UpdateRuntimeConfigRequest, VersionRequest,
};
use tonic::Code;

fn berthd() -> std::process::Command {
    std::process::Command::new(TestDaemon::binary().expect("berthd binary"))
}

#[tokio::test]
async fn version_reports_berth_and_the_kubelet_api_version() {
    let d = TestDaemon::start().await.expect("start");
    let mut c = d.client().await.expect("client");
    let v = c
        .runtime
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(v.version, "0.1.0", "kubelet rejects anything else");
    assert_eq!(v.runtime_name, "berth");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(v.runtime_api_version, "v1");
}

#[tokio::test]
async fn runtime_config_sets_cgroupfs_explicitly() {
    let d = TestDaemon::start().await.expect("start");
    let mut c = d.client().await.expect("client");
    let r = c
        .runtime
        .runtime_config(RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig")
        .into_inner();
    let linux = r.linux.expect("linux block must be present");
    assert_eq!(linux.cgroup_driver, i32::from(CgroupDriver::Cgroupfs));
}

#[tokio::test]
async fn runtime_config_follows_the_configured_driver() {
    let d = TestDaemon::start_with(DaemonOptions {
        top_level_config: "cgroup_driver = \"systemd\"".into(),
        ..DaemonOptions::default()
    })
    .await
    .expect("start");
    let mut c = d.client().await.expect("client");
    let r = c
        .runtime
        .runtime_config(RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig")
        .into_inner();
    assert_eq!(
        r.linux.expect("linux").cgroup_driver,
        i32::from(CgroupDriver::Systemd)
    );
}

#[tokio::test]
async fn status_reports_both_conditions_ready_with_plugins_installed() {
    let plugins = tempfile::tempdir().expect("tempdir");
    for p in ["bridge", "portmap"] {
        let path = plugins.path().join(p);
        std::fs::write(&path, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let conf = tempfile::tempdir().expect("tempdir");
    let d = TestDaemon::start_with(DaemonOptions {
        cni_section: Some(format!(
            "[cni]\nconf_dir = {:?}\nplugin_dirs = [{:?}]\nbuiltin_mode = \"plugins\"\n",
            conf.path().display().to_string(),
            plugins.path().display().to_string()
        )),
        ..DaemonOptions::default()
    })
    .await
    .expect("start");
    let mut c = d.client().await.expect("client");
    let s = c
        .runtime
        .status(StatusRequest { verbose: true })
        .await
        .expect("Status")
        .into_inner();
    let conditions = s.status.expect("status").conditions;
    let get = |t: &str| conditions.iter().find(|c| c.r#type == t).cloned();
    let runtime = get("RuntimeReady").expect("RuntimeReady present");
    let network = get("NetworkReady").expect("NetworkReady present");
    assert!(runtime.status, "{runtime:?}");
    assert!(network.status, "{network:?}");

    let config: serde_json::Value =
        serde_json::from_str(s.info.get("config").expect("verbose config")).expect("json");
    assert_eq!(config["stateDir"], d.state_dir.display().to_string());
    let cni: serde_json::Value =
        serde_json::from_str(s.info.get("cni").expect("verbose cni")).expect("json");
    assert_eq!(cni["source"], "built-in default");
    assert!(s.info.contains_key("versions"));
    assert!(
        s.runtime_handlers.iter().any(|h| h.name.is_empty()),
        "the default handler is listed"
    );

    // Not verbose: no info map.
    let s = c
        .runtime
        .status(StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    assert!(s.info.is_empty());
}

#[tokio::test]
async fn network_not_ready_names_the_missing_plugin() {
    let empty = tempfile::tempdir().expect("tempdir");
    let d = TestDaemon::start_with(DaemonOptions {
        cni_section: Some(format!(
            "[cni]\nconf_dir = {:?}\nplugin_dirs = [{:?}]\nbuiltin_mode = \"plugins\"\n",
            empty.path().display().to_string(),
            empty.path().display().to_string()
        )),
        ..DaemonOptions::default()
    })
    .await
    .expect("start");
    let mut c = d.client().await.expect("client");
    let (network, _) = fixtures::network_status(&mut c, false).await;
    assert!(!network.status);
    assert_eq!(network.reason, "NetworkPluginNotReady");
    assert!(
        network.message.contains("\"bridge\""),
        "{}",
        network.message
    );
}

/// The default (native) built-in network needs no plugin binary: with an empty conf dir
/// and no plugins at all, the node's network is ready and says where it comes from.
#[tokio::test]
async fn native_builtin_network_is_ready_without_any_plugin() {
    let empty = tempfile::tempdir().expect("tempdir");
    let d = TestDaemon::start_with(DaemonOptions {
        cni_section: Some(format!(
            "[cni]\nconf_dir = {:?}\nplugin_dirs = [{:?}]\n",
            empty.path().display().to_string(),
            empty.path().display().to_string()
        )),
        ..DaemonOptions::default()
    })
    .await
    .expect("start");
    let mut c = d.client().await.expect("client");
    let (network, cni) = fixtures::network_status(&mut c, true).await;
    assert!(network.status, "{network:?}");
    assert_eq!(cni["source"], "built-in default (native)");
}

#[tokio::test]
async fn runtime_not_ready_when_the_state_dir_disappears() {
    let d = TestDaemon::start().await.expect("start");
    let mut c = d.client().await.expect("client");
    // Replace the root dir with a file behind the daemon's back.
    std::fs::rename(&d.root_dir, d.dir().join("moved")).expect("move root dir");
    std::fs::write(&d.root_dir, "not a dir").expect("write");
    let s = c
        .runtime
        .status(StatusRequest::default())
        .await
        .expect("Status")
        .into_inner();
    let runtime = s
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.r#type == "RuntimeReady")
        .expect("RuntimeReady");
    assert!(!runtime.status);
    assert!(runtime.message.contains("root_dir"), "{}", runtime.message);
}

#[tokio::test]
async fn image_fs_info_reports_real_usage_of_the_image_store() {
    let d = TestDaemon::start().await.expect("start");
    let mut c = d.client().await.expect("client");
    let before = c
        .image
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .expect("ImageFsInfo")
        .into_inner();
    assert_eq!(before.image_filesystems.len(), 1, "kubelet needs an entry");
    let fs = &before.image_filesystems[0];
    assert!(fs.timestamp > 0);
    let mountpoint = &fs.fs_id.as_ref().expect("fs_id").mountpoint;
    assert!(d.root_dir.starts_with(mountpoint), "{mountpoint}");
    let used_before = fs.used_bytes.as_ref().expect("used").value;
    let inodes_before = fs.inodes_used.as_ref().expect("inodes").value;

    // Put 1 MiB into the store: usage grows by at least that and one inode.
    std::fs::write(d.root_dir.join("images/blob"), vec![1u8; 1 << 20]).expect("write");
    let after = c
        .image
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .expect("ImageFsInfo")
        .into_inner();
    let fs = &after.image_filesystems[0];
    assert!(fs.used_bytes.as_ref().expect("used").value >= used_before + (1 << 20));
    assert_eq!(
        fs.inodes_used.as_ref().expect("inodes").value,
        inodes_before + 1
    );
}

#[tokio::test]
async fn update_runtime_config_feeds_the_builtin_network() {
    let d = TestDaemon::start().await.expect("start");
    let mut c = d.client().await.expect("client");
    let update = |cidr: &str| UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig {
            network_config: Some(NetworkConfig {
                pod_cidr: cidr.to_owned(),
            }),
        }),
    };
    c.runtime
        .update_runtime_config(update("10.244.3.0/24"))
        .await
        .expect("UpdateRuntimeConfig");
    let s = c
        .runtime
        .status(StatusRequest { verbose: true })
        .await
        .expect("Status")
        .into_inner();
    let cni: serde_json::Value = serde_json::from_str(&s.info["cni"]).expect("json");
    assert_eq!(cni["podCIDRs"], serde_json::json!(["10.244.3.0/24"]));

    let err = c
        .runtime
        .update_runtime_config(update("10.244.3.0"))
        .await
        .expect_err("a CIDR without prefix is invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("pod_cidr"), "{}", err.message());
}

#[tokio::test]
async fn socket_is_not_world_accessible() {
    let d = TestDaemon::start().await.expect("start");
    let mode = std::fs::metadata(&d.socket)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
}

#[tokio::test]
async fn sigterm_exits_zero_and_removes_the_socket() {
    let mut d = TestDaemon::start().await.expect("start");
    let status = d.stop().expect("stop");
    assert!(status.success(), "{status}");
    assert!(!d.socket.exists(), "socket removed on shutdown");
    assert!(d.log().contains("berthd stopped"), "{}", d.log());
}

#[tokio::test]
async fn restart_after_a_crash_replaces_the_stale_socket() {
    let mut d = TestDaemon::start().await.expect("start");
    d.kill().expect("SIGKILL");
    assert!(d.socket.exists(), "a crash leaves the socket file behind");
    d.restart().await.expect("restart over a stale socket");
    assert!(d.log().contains("replacing stale socket"));
}

#[tokio::test]
async fn a_second_daemon_does_not_steal_a_live_socket() {
    let d = TestDaemon::start().await.expect("start");
    let other = tempfile::tempdir().expect("tempdir");
    let out = berthd()
        .arg("--socket")
        .arg(&d.socket)
        .arg("--root")
        .arg(other.path().join("r"))
        .arg("--state")
        .arg(other.path().join("s"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another live server"), "{err}");
    // The first daemon still serves.
    let mut c = d.client().await.expect("client");
    c.runtime
        .version(VersionRequest::default())
        .await
        .expect("first daemon still answers");
}

#[tokio::test]
async fn a_second_daemon_on_the_same_state_dir_is_refused() {
    let d = TestDaemon::start().await.expect("start");
    let out = berthd()
        .arg("--config")
        .arg(&d.config_path)
        .arg("--socket")
        .arg(d.dir().join("other.sock"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already using state dir"), "{err}");
}

/// Bad input at start-up: one clear line naming the problem, exit 1, no backtrace.
#[test]
fn bad_start_up_input_gives_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[grpc]\nsocket_path = \"/x\"\n").expect("write");
    let file_as_dir = dir.path().join("file");
    std::fs::write(&file_as_dir, "x").expect("write");
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).expect("mkdir");

    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (
            vec!["--config".into(), unknown.clone().into()],
            "socket_path",
        ),
        (
            vec!["--config".into(), dir.path().join("missing.toml").into()],
            "cannot read config file",
        ),
        (
            vec![
                "--root".into(),
                file_as_dir.join("root").into(),
                "--state".into(),
                dir.path().join("s").into(),
                "--socket".into(),
                dir.path().join("b.sock").into(),
            ],
            "root_dir",
        ),
        (
            vec![
                "--root".into(),
                dir.path().join("r").into(),
                "--state".into(),
                dir.path().join("s").into(),
                "--socket".into(),
                file_as_dir.join("sub/b.sock").into(),
            ],
            "cannot listen on socket",
        ),
        (vec!["--state".into(), "relative/dir".into()], "state_dir"),
        (vec!["--log-level".into(), "[[[".into()], "log.level"),
    ];
    for (args, expect) in cases {
        let out = berthd().args(&args).output().expect("run berthd");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(expect),
            "{args:?}: expected {expect:?} in {err}"
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn config_default_prints_a_loadable_file() {
    let out = berthd().args(["config", "default"]).output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf8");
    assert!(
        text.contains("socket = \"/run/berth/berth.sock\""),
        "{text}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &text).expect("write");
    let shown = berthd()
        .arg("--config")
        .arg(&path)
        .args(["config", "show"])
        .output()
        .expect("run");
    assert!(shown.status.success(), "{shown:?}");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("root_dir = \"/var/lib/berth\""), "{shown}");
}

/// `--version` names what an operator needs to report a bug: Berth's version, the
/// commit it was built from, and the CRI API it serves.
#[test]
fn version_flag_names_the_version_commit_and_cri_api() {
    let out = berthd().arg("--version").output().expect("run");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], format!("berthd {}", env!("CARGO_PKG_VERSION")));
    assert_eq!(
        lines[2],
        format!(
            "CRI API: runtime.v1 (k8s.io/cri-api {})",
            berth_proto::CRI_API_VERSION
        )
    );
    let commit = lines[1].strip_prefix("commit: ").expect("a commit line");
    if commit != "unknown" {
        assert!(
            commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
            "{commit:?}"
        );
        // Built from this checkout: the commit is one of its own (not necessarily HEAD:
        // the binary may predate the last commit).
        let repo = env!("CARGO_MANIFEST_DIR");
        if let Ok(found) = std::process::Command::new("git")
            .args(["-C", repo, "cat-file", "-e"])
            .arg(format!("{commit}^{{commit}}"))
            .status()
        {
            assert!(found.success(), "commit {commit} is not in {repo}");
        }
    }
}

#[tokio::test]
async fn failed_rpcs_are_logged_with_method_code_and_duration() {
    let d = TestDaemon::start().await.expect("start");
    let mut c = d.client().await.expect("client");
    // No container id: refused before anything else happens.
    let _ = c
        .runtime
        .checkpoint_container(berth_proto::v1::CheckpointContainerRequest::default())
        .await;
    let line = wait_for_log_line(&d, |l| {
        l.contains("rpc failed") && l.contains("CheckpointContainer")
    })
    .await;
    assert!(line.contains("InvalidArgument"), "{line}");
    assert!(line.contains("container_id"), "{line}");
    assert!(line.contains("duration_ms"), "{line}");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_rpc_span() {
    let d = TestDaemon::start_with(DaemonOptions {
        log_format: "json".into(),
        ..DaemonOptions::default()
    })
    .await
    .expect("start");
    let mut c = d.client().await.expect("client");
    let _ = c
        .runtime
        .checkpoint_container(berth_proto::v1::CheckpointContainerRequest::default())
        .await;
    let line = wait_for_log_line(&d, |l| l.contains("rpc failed")).await;
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON object");
    assert_eq!(
        v["span"]["method"],
        "/runtime.v1.RuntimeService/CheckpointContainer"
    );
    assert!(v["fields"]["duration_ms"].is_number(), "{v}");
    for l in d.log().lines() {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
}

async fn wait_for_log_line(d: &TestDaemon, want: impl Fn(&str) -> bool) -> String {
    for _ in 0..100 {
        if let Some(l) = d.log().lines().find(|l| want(l)) {
            return l.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no matching log line in:\n{}", d.log());
}

#[test]
fn deploy_config_is_the_default_config() {
    let deployed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config.toml"),
    )
    .expect("deploy/config.toml");
    let out = berthd().args(["config", "default"]).output().expect("run");
    assert_eq!(
        deployed,
        String::from_utf8_lossy(&out.stdout),
        "deploy/config.toml drifted: regenerate it with `berthd config default > deploy/config.toml`"
    );
}

/// The next datagram on the notify socket, or `None` after `wait`.
async fn notify_message(sock: &tokio::net::UnixDatagram, wait: Duration) -> Option<String> {
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(wait, sock.recv(&mut buf))
        .await
        .ok()?
        .expect("recv on the notify socket");
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Under systemd's `Type=notify`, kubelet (ordered after berthd) starts when berthd
/// says READY=1: that must mean the CRI socket answers, not "the process exists".
/// And STOPPING=1 tells systemd a stop is under way, only once it is.
#[tokio::test]
async fn systemd_notify_ready_once_the_socket_serves_and_stopping_on_sigterm() {
    use std::os::linux::net::SocketAddrExt;
    // An abstract address (`@name`), as systemd may hand out; unique per run.
    let name = format!(
        "berth-it-notify-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos()
    );
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .expect("abstract address");
    let std_sock = std::os::unix::net::UnixDatagram::bind_addr(&addr).expect("bind notify");
    std_sock.set_nonblocking(true).expect("nonblocking");
    let sock = tokio::net::UnixDatagram::from_std(std_sock).expect("tokio socket");

    // A daemon whose next start has NOTIFY_SOCKET set.
    let mut d = TestDaemon::start().await.expect("start");
    d.stop().expect("stop");
    assert!(
        notify_message(&sock, Duration::ZERO).await.is_none(),
        "nothing without NOTIFY_SOCKET"
    );
    d.set_env("NOTIFY_SOCKET", &format!("@{name}"));
    let socket = d.socket.clone();
    let restart = tokio::spawn(async move {
        d.restart().await.expect("restart with NOTIFY_SOCKET");
        d
    });

    let ready = notify_message(&sock, Duration::from_secs(20))
        .await
        .expect("READY=1 within 20 s");
    // At READY the socket answers at once: one attempt, no retry.
    let mut client = tokio::time::timeout(
        Duration::from_secs(2),
        berth_integration::CriClient::connect(&socket),
    )
    .await
    .expect("connect within 2 s of READY")
    .expect("the CRI socket accepts at READY");
    tokio::time::timeout(
        Duration::from_secs(2),
        client.runtime.version(VersionRequest::default()),
    )
    .await
    .expect("Version within 2 s of READY")
    .expect("Version answers at READY");

    let mut d = restart.await.expect("restart task");
    let pid = d.pid().expect("running");
    let lines: Vec<&str> = ready.lines().collect();
    assert_eq!(lines[0], "READY=1", "{ready}");
    assert!(
        lines.contains(&format!("MAINPID={pid}").as_str()),
        "{ready}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("STATUS=") && l.contains(&socket.display().to_string())),
        "{ready}"
    );
    // Nothing more until the stop signal: READY is sent once, STOPPING only on stop.
    assert_eq!(
        notify_message(&sock, Duration::from_millis(300)).await,
        None,
        "{}",
        d.log()
    );

    let status = d.stop().expect("SIGTERM");
    assert!(status.success(), "{status}");
    let stopping = notify_message(&sock, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("no STOPPING=1 after SIGTERM:\n{}", d.log()));
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert!(
        stopping.contains("STATUS=stopping on SIGTERM"),
        "{stopping}"
    );
    assert_eq!(notify_message(&sock, Duration::ZERO).await, None);
}

/// The setting docs/networking.md prescribes for a node whose network comes from a
/// cluster add-on (`builtin_default = false`): until the add-on writes its config berthd
/// reports NetworkReady=false, so kubelet starts no pod that could land on another
/// network; the config appearing later makes the node ready without a restart, on the
/// add-on's network.
#[tokio::test]
async fn without_the_builtin_default_a_node_waits_for_its_cni_addon() {
    let conf = tempfile::tempdir().expect("tempdir");
    let d = TestDaemon::start_with(DaemonOptions {
        cni_section: Some(format!(
            "[cni]\nconf_dir = {:?}\nplugin_dirs = [\"/usr/lib/cni\", \"/opt/cni/bin\"]\nbuiltin_default = false\n",
            conf.path().display().to_string()
        )),
        ..DaemonOptions::default()
    })
    .await
    .expect("start");
    let mut c = d.client().await.expect("client");
    let (before, _) = fixtures::network_status(&mut c, true).await;
    assert!(!before.status, "no add-on config yet: {before:?}");
    assert_eq!(before.reason, "NetworkPluginNotReady");
    assert!(
        before.message.contains(&conf.path().display().to_string()),
        "names the directory it waits on: {}",
        before.message
    );
    // The add-on's DaemonSet writes its config (renamed into place, as add-ons do).
    let tmp = conf.path().join(".10-addon.conflist");
    std::fs::write(
        &tmp,
        r#"{"cniVersion":"1.0.0","name":"addon","plugins":[{"type":"loopback"}]}"#,
    )
    .expect("write conflist");
    std::fs::rename(&tmp, conf.path().join("10-addon.conflist")).expect("rename");
    let (after, cni) = fixtures::network_status(&mut c, true).await;
    assert!(
        after.status,
        "the add-on's config makes the node ready: {after:?}"
    );
    assert_eq!(cni["network"], "addon", "{cni}");
}
