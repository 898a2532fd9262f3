//! Containers through CRI on the real kernel: the crictl workflow operators use,
//! exits and their reasons, ExecSync with timeouts, and containers that outlive a
//! crash of berthd.

use std::time::Duration;

use berth_integration::fixtures::{self, BUSYBOX, write_file};
use berth_integration::setup::Node;
use berth_integration::tools::{crictl, crictl_ok};

/// Polls `crictl inspect` until the container reaches `state`.
async fn wait_state(ep: &str, id: &str, state: &str) -> serde_json::Value {
    for _ in 0..100 {
        let v: serde_json::Value =
            serde_json::from_str(&crictl_ok(ep, &["inspect", id]).await).expect("JSON");
        if v["status"]["state"] == state {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("container {id} never reached {state}");
}

#[tokio::test]
async fn crictl_container_workflow() {
    let node = Node::start().await.expect("node");
    let d = &node.daemon;
    let ep = d.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    let pod = write_file(
        dir.path(),
        "pod.json",
        &format!(
            r#"{{"metadata":{{"name":"wf","namespace":"default","uid":"wf-uid","attempt":0}},
                "hostname":"wf-host","log_directory":"{}","linux":{{}}}}"#,
            logs.display()
        ),
    );
    let ctr = write_file(
        dir.path(),
        "ctr.json",
        &format!(
            r#"{{"metadata":{{"name":"main"}},"image":{{"image":"{BUSYBOX}"}},
            "command":["sh","-c","echo hello; echo oops >&2; exec sleep 3600"],
            "log_path":"main.log","labels":{{"tier":"test"}}}}"#
        ),
    );
    let pod_id = crictl_ok(&ep, &["runp", &pod]).await.trim().to_owned();
    crictl_ok(&ep, &["pull", BUSYBOX]).await;
    let id = crictl_ok(&ep, &["create", &pod_id, &ctr, &pod])
        .await
        .trim()
        .to_owned();
    assert_eq!(id.len(), 64, "{id}");
    let v = wait_state(&ep, &id, "CONTAINER_CREATED").await;
    assert_eq!(v["status"]["labels"]["tier"], "test");

    crictl_ok(&ep, &["start", &id]).await;
    let v = wait_state(&ep, &id, "CONTAINER_RUNNING").await;
    let log_path = v["status"]["logPath"].as_str().expect("logPath").to_owned();
    assert_eq!(log_path, logs.join("main.log").display().to_string());
    assert!(
        v["status"]["imageRef"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );

    let ps = crictl_ok(&ep, &["ps"]).await;
    assert!(
        ps.lines()
            .any(|l| l.starts_with(&id[..13]) && l.contains("Running") && l.contains("main")),
        "{ps}"
    );

    // Logs: CRI format on disk, and crictl reads them.
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("oops") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = text
        .lines()
        .find(|l| l.ends_with(" stdout F hello"))
        .unwrap_or_else(|| panic!("log: {text:?}"));
    assert!(
        first
            .split(' ')
            .next()
            .is_some_and(|ts| ts.contains('T') && ts.ends_with('Z')),
        "{first}"
    );
    assert!(
        text.lines().any(|l| l.ends_with(" stderr F oops")),
        "{text}"
    );
    let out = crictl(&ep, &["logs", &id])
        .await
        .expect("crictl")
        .success()
        .expect("logs");
    assert!(out.stdout().contains("hello"), "{}", out.stdout());
    assert!(out.stderr().contains("oops"), "{}", out.stderr());

    // Stats and a live resource update, as an operator checks them.
    let stats = crictl_ok(&ep, &["stats", "-o", "json", &id]).await;
    let v: serde_json::Value = serde_json::from_str(&stats).expect("stats JSON");
    let s = &v["stats"][0];
    assert_eq!(s["attributes"]["id"], id);
    assert!(
        s["memory"]["workingSetBytes"]["value"]
            .as_str()
            .and_then(|b| b.parse::<u64>().ok())
            .is_some_and(|b| b > 0),
        "{s}"
    );
    crictl_ok(&ep, &["update", "--memory", "67108864", &id]).await;
    // The pod has no cgroup parent, so the container's cgroup is /berth/<id>.
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/berth/{id}/memory.limit_in_bytes"
    ))
    .expect("the container's memory cgroup");
    assert_eq!(
        limit.trim(),
        "67108864",
        "the limit reached the container's cgroup"
    );

    // Exec: output, exit codes, and the container's own view.
    // crictl prints ExecSync's stdout with trailing newlines of its own.
    let out = crictl_ok(&ep, &["exec", "-s", &id, "sh", "-c", "echo -n $(hostname)"]).await;
    assert_eq!(out.trim_end(), "wf-host");
    // The pod shares one pid namespace (the CRI default): its infra process is pid 1.
    let pid1 = crictl_ok(&ep, &["exec", "-s", &id, "cat", "/proc/1/cmdline"]).await;
    assert!(pid1.contains("pause"), "pod infra is pid 1: {pid1:?}");
    let failed = crictl(&ep, &["exec", "-s", &id, "sh", "-c", "exit 3"])
        .await
        .expect("crictl");
    assert!(!failed.output.status.success());
    assert!(
        failed.stderr().contains("exited with 3"),
        "{}",
        failed.stderr()
    );

    crictl_ok(&ep, &["stop", "-t", "10", &id]).await;
    let v = wait_state(&ep, &id, "CONTAINER_EXITED").await;
    assert_eq!(
        v["status"]["exitCode"], 143,
        "SIGTERM ends sleep (not pid 1 here): {v}"
    );
    assert_eq!(v["status"]["reason"], "Error");
    crictl_ok(&ep, &["rm", &id]).await;
    assert_eq!(crictl_ok(&ep, &["ps", "-a", "-q"]).await.trim(), "");
    crictl_ok(&ep, &["stopp", &pod_id]).await;
    crictl_ok(&ep, &["rmp", &pod_id]).await;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mountinfo.contains(&id), "rootfs unmounted");
}

#[tokio::test]
async fn exits_are_recorded_with_their_reason() {
    let node = Node::start().await.expect("node");
    let d = &node.daemon;
    let ep = d.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = write_file(
        dir.path(),
        "pod.json",
        r#"{"metadata":{"name":"ex","namespace":"default","uid":"ex-uid","attempt":0},"linux":{}}"#,
    );
    let pod_id = crictl_ok(&ep, &["runp", &pod]).await.trim().to_owned();
    crictl_ok(&ep, &["pull", BUSYBOX]).await;
    for (name, cmd, code, reason) in [
        ("ok", "exit 0", 0, "Completed"),
        ("bad", "exit 42", 42, "Error"),
    ] {
        let ctr = write_file(
            dir.path(),
            &format!("{name}.json"),
            &format!(
                r#"{{"metadata":{{"name":"{name}"}},"image":{{"image":"{BUSYBOX}"}},"command":["sh","-c","{cmd}"]}}"#
            ),
        );
        let id = crictl_ok(&ep, &["create", &pod_id, &ctr, &pod])
            .await
            .trim()
            .to_owned();
        crictl_ok(&ep, &["start", &id]).await;
        let v = wait_state(&ep, &id, "CONTAINER_EXITED").await;
        assert_eq!(v["status"]["exitCode"], code, "{v}");
        assert_eq!(v["status"]["reason"], reason, "{v}");
        assert!(
            v["status"]["finishedAt"]
                .as_str()
                .is_some_and(|t| !t.starts_with("1970")),
            "{v}"
        );
    }
    // A missing executable fails create with a message naming it.
    let ctr = write_file(
        dir.path(),
        "nx.json",
        &format!(
            r#"{{"metadata":{{"name":"nx"}},"image":{{"image":"{BUSYBOX}"}},"command":["/no/such/binary"]}}"#
        ),
    );
    let out = crictl(&ep, &["create", &pod_id, &ctr, &pod])
        .await
        .expect("crictl");
    assert!(!out.output.status.success());
    assert!(out.stderr().contains("/no/such/binary"), "{}", out.stderr());
    crictl_ok(&ep, &["stopp", &pod_id]).await;
    crictl_ok(&ep, &["rmp", &pod_id]).await;
    assert_eq!(
        crictl_ok(&ep, &["ps", "-a", "-q"]).await.trim(),
        "",
        "rmp removed the containers"
    );
}

#[tokio::test]
async fn containers_outlive_a_berthd_crash() {
    let mut node = Node::start().await.expect("node");
    let ep = node.daemon.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    let pod = write_file(
        dir.path(),
        "pod.json",
        &format!(
            r#"{{"metadata":{{"name":"cr","namespace":"default","uid":"cr-uid","attempt":0}},
                "log_directory":"{}","linux":{{}}}}"#,
            logs.display()
        ),
    );
    let pod_id = crictl_ok(&ep, &["runp", &pod]).await.trim().to_owned();
    crictl_ok(&ep, &["pull", BUSYBOX]).await;
    let long = write_file(
        dir.path(),
        "long.json",
        &format!(
            r#"{{"metadata":{{"name":"long"}},"image":{{"image":"{BUSYBOX}"}},"log_path":"long.log",
                "command":["sh","-c","i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"]}}"#
        ),
    );
    let short = write_file(
        dir.path(),
        "short.json",
        &format!(
            r#"{{"metadata":{{"name":"short"}},"image":{{"image":"{BUSYBOX}"}},"command":["sh","-c","sleep 2; exit 7"]}}"#
        ),
    );
    let long_id = crictl_ok(&ep, &["create", &pod_id, &long, &pod])
        .await
        .trim()
        .to_owned();
    crictl_ok(&ep, &["start", &long_id]).await;
    let short_id = crictl_ok(&ep, &["create", &pod_id, &short, &pod])
        .await
        .trim()
        .to_owned();
    crictl_ok(&ep, &["start", &short_id]).await;

    node.daemon.kill().expect("SIGKILL berthd");
    let log = logs.join("long.log");
    let ticks = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let before = ticks();
    tokio::time::sleep(Duration::from_secs(3)).await; // short exits while berthd is down
    assert!(ticks() > before, "logs keep flowing while berthd is down");
    node.daemon.restart().await.expect("restart");

    let v = wait_state(&ep, &long_id, "CONTAINER_RUNNING").await;
    assert_eq!(v["status"]["metadata"]["name"], "long");
    let v = wait_state(&ep, &short_id, "CONTAINER_EXITED").await;
    assert_eq!(
        v["status"]["exitCode"], 7,
        "exit recorded while berthd was down: {v}"
    );
    let out = crictl_ok(&ep, &["exec", "-s", &long_id, "echo", "-n", "still here"]).await;
    assert_eq!(out.trim_end(), "still here");
    let pods = crictl_ok(&ep, &["pods", "-q"]).await;
    assert_eq!(pods.trim(), pod_id);

    crictl_ok(&ep, &["stop", "-t", "1", &long_id]).await;
    wait_state(&ep, &long_id, "CONTAINER_EXITED").await;
    crictl_ok(&ep, &["stopp", &pod_id]).await;
    crictl_ok(&ep, &["rmp", &pod_id]).await;

    // Nothing of the pod is left on the host: no monitor, mount, cgroup or netns pin.
    let root = node.daemon.dir().display().to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mounts: Vec<&str> = mountinfo
        .lines()
        .filter(|l| l.contains(&root) && !l.contains("/state/ns "))
        .collect();
    assert!(mounts.is_empty(), "leaked mounts: {mounts:?}");
    for id in [&long_id, &short_id] {
        assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/memory/berth/{id}")).exists());
    }
    let monitors = std::process::Command::new("pgrep")
        .args(["-f", &format!("berth-monitor run --root {root}")])
        .output()
        .expect("pgrep");
    assert!(monitors.stdout.is_empty(), "leaked monitors");
}

#[tokio::test]
async fn events_and_pod_stats() {
    use berth_proto::v1::{
        ContainerEventType, GetEventsRequest, ListPodSandboxStatsRequest, PodSandboxStatsRequest,
    };
    let node = Node::start().await.expect("node");
    let ep = node.daemon.endpoint();
    let mut c = node.daemon.client().await.expect("client");
    let mut events = c
        .runtime
        .get_container_events(GetEventsRequest {})
        .await
        .expect("GetContainerEvents")
        .into_inner();
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = write_file(
        dir.path(),
        "pod.json",
        r#"{"metadata":{"name":"ev","namespace":"default","uid":"ev-uid","attempt":0},"linux":{}}"#,
    );
    let ctr = write_file(
        dir.path(),
        "ctr.json",
        &format!(
            r#"{{"metadata":{{"name":"ev"}},"image":{{"image":"{BUSYBOX}"}},"command":["sleep","3600"]}}"#
        ),
    );
    let pod_id = crictl_ok(&ep, &["runp", &pod]).await.trim().to_owned();
    crictl_ok(&ep, &["pull", BUSYBOX]).await;
    let id = crictl_ok(&ep, &["create", &pod_id, &ctr, &pod])
        .await
        .trim()
        .to_owned();
    crictl_ok(&ep, &["start", &id]).await;

    let stats = c
        .runtime
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .expect("stats");
    let linux = stats.linux.expect("linux");
    assert_eq!(linux.containers.len(), 1);
    assert!(
        linux
            .process
            .expect("process")
            .process_count
            .expect("count")
            .value
            >= 1
    );
    assert!(
        linux
            .memory
            .expect("memory")
            .working_set_bytes
            .expect("ws")
            .value
            > 0
    );
    let net = linux.network.expect("network");
    assert_eq!(net.default_interface.expect("eth0").name, "eth0");
    let all = c
        .runtime
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: None })
        .await
        .expect("ListPodSandboxStats")
        .into_inner()
        .stats;
    assert_eq!(all.len(), 1);

    crictl_ok(&ep, &["stop", "-t", "1", &id]).await;
    crictl_ok(&ep, &["rm", &id]).await;
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        let e = tokio::time::timeout(Duration::from_secs(20), events.message())
            .await
            .expect("an event in time")
            .expect("stream ok")
            .expect("not closed");
        assert_eq!(e.container_id, id);
        assert!(e.created_at > 0);
        assert_eq!(e.pod_sandbox_status.expect("pod status").id, pod_id);
        kinds.push(ContainerEventType::try_from(e.container_event_type).expect("known type"));
    }
    assert_eq!(
        kinds,
        [
            ContainerEventType::ContainerCreatedEvent,
            ContainerEventType::ContainerStartedEvent,
            ContainerEventType::ContainerStoppedEvent,
            ContainerEventType::ContainerDeletedEvent,
        ]
    );
}

#[tokio::test]
async fn bad_container_requests_are_refused_cleanly() {
    use berth_proto::v1::{
        ContainerConfig, ContainerMetadata, ContainerStatusRequest, CreateContainerRequest,
        ImageSpec, RemoveContainerRequest, StopContainerRequest,
    };
    use tonic::Code;
    let node = Node::start().await.expect("node");
    let ep = node.daemon.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = write_file(
        dir.path(),
        "pod.json",
        r#"{"metadata":{"name":"bad","namespace":"default","uid":"bad-uid","attempt":0},"linux":{}}"#,
    );
    let pod_id = crictl_ok(&ep, &["runp", &pod]).await.trim().to_owned();
    crictl_ok(&ep, &["pull", BUSYBOX]).await;
    let mut c = node.daemon.client().await.expect("client");
    let config = |name: &str| ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "60".into()],
        ..Default::default()
    };
    let create = |pod: &str, cfg: ContainerConfig| CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(cfg),
        sandbox_config: None,
    };
    let first = c
        .runtime
        .create_container(create(&pod_id, config("dup")))
        .await
        .expect("create")
        .into_inner()
        .container_id;
    let err = c
        .runtime
        .create_container(create(&pod_id, config("dup")))
        .await
        .expect_err("dup");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        err.message().contains(&first),
        "names the holder: {}",
        err.message()
    );

    let err = c
        .runtime
        .create_container(create("nonexistent", config("x")))
        .await
        .expect_err("no pod");
    assert_eq!(err.code(), Code::FailedPrecondition);

    let mut no_image = config("noimg");
    no_image.image = Some(ImageSpec {
        image: "registry.k8s.io/not/pulled:1".into(),
        ..Default::default()
    });
    let err = c
        .runtime
        .create_container(create(&pod_id, no_image))
        .await
        .expect_err("image missing");
    assert_eq!(err.code(), Code::NotFound);

    let mut bad_mount = config("badmount");
    bad_mount.mounts = vec![berth_proto::v1::Mount {
        container_path: "relative/path".into(),
        host_path: "/tmp".into(),
        ..Default::default()
    }];
    let err = c
        .runtime
        .create_container(create(&pod_id, bad_mount))
        .await
        .expect_err("bad mount");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("relative/path"), "{}", err.message());

    for id in ["0123456789ab", "nonexistent"] {
        let err = c
            .runtime
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .expect_err("unknown");
        assert_eq!(err.code(), Code::NotFound);
        let err = fixtures::start(&mut c, id).await.expect_err("unknown");
        assert_eq!(err.code(), Code::NotFound);
        c.runtime
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout: 0,
            })
            .await
            .expect("stop of an unknown container is OK");
        c.runtime
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .expect("remove of an unknown container is OK");
    }

    // Failed creations left nothing: one container record, one rootfs mount.
    let records = std::fs::read_dir(node.daemon.root_dir.join("containers"))
        .expect("dir")
        .count();
    assert_eq!(records, 1);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let rootfs_mounts = mountinfo
        .lines()
        .filter(|l| {
            l.contains(&node.daemon.root_dir.display().to_string()) && l.contains("overlay")
        })
        .count();
    assert_eq!(rootfs_mounts, 1, "{mountinfo}");

    // A stopped pod takes no new containers.
    crictl_ok(&ep, &["stopp", &pod_id]).await;
    let err = c
        .runtime
        .create_container(create(&pod_id, config("late")))
        .await
        .expect_err("stopped pod");
    assert_eq!(err.code(), Code::FailedPrecondition);
    crictl_ok(&ep, &["rmp", &pod_id]).await;
}

#[tokio::test]
async fn a_killed_monitor_takes_its_container_down_and_says_why() {
    let node = Node::start().await.expect("node");
    let ep = node.daemon.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = write_file(
        dir.path(),
        "pod.json",
        r#"{"metadata":{"name":"mon","namespace":"default","uid":"mon-uid","attempt":0},"linux":{}}"#,
    );
    let ctr = write_file(
        dir.path(),
        "ctr.json",
        &format!(
            r#"{{"metadata":{{"name":"mon"}},"image":{{"image":"{BUSYBOX}"}},"command":["sleep","3600"]}}"#
        ),
    );
    let pod_id = crictl_ok(&ep, &["runp", &pod]).await.trim().to_owned();
    crictl_ok(&ep, &["pull", BUSYBOX]).await;
    let id = crictl_ok(&ep, &["create", &pod_id, &ctr, &pod])
        .await
        .trim()
        .to_owned();
    crictl_ok(&ep, &["start", &id]).await;
    let v: serde_json::Value =
        serde_json::from_str(&crictl_ok(&ep, &["inspect", &id]).await).expect("JSON");
    let monitor = v["info"]["monitorPid"].as_i64().expect("monitor pid");
    let init = v["info"]["pid"].as_i64().expect("init pid");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is the monitor's.
    unsafe { libc::kill(i32::try_from(monitor).expect("pid"), libc::SIGKILL) };
    let v = wait_state(&ep, &id, "CONTAINER_EXITED").await;
    assert!(
        v["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("berth-monitor died")),
        "{v}"
    );
    for _ in 0..50 {
        if !std::path::Path::new(&format!("/proc/{init}")).exists()
            || std::fs::read_to_string(format!("/proc/{init}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stat = std::fs::read_to_string(format!("/proc/{init}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "the container's init is gone: {stat}"
    );
    crictl_ok(&ep, &["rm", &id]).await;
    crictl_ok(&ep, &["stopp", &pod_id]).await;
    crictl_ok(&ep, &["rmp", &pod_id]).await;
}

/// cri-api v0.37: `Mount.mount_options` narrow a bind as asked (an executable on a
/// `noexec` volume cannot run), an option outside noexec/nodev/nosuid is refused, and
/// the CRI stop signal (the `Signal` enum, kubelet's `lifecycle.stopSignal`) reaches
/// the process as the signal it names.
#[tokio::test]
async fn mount_options_and_the_cri_stop_signal_reach_the_container() {
    use berth_proto::v1::{
        ContainerConfig, ContainerMetadata, ContainerStatusRequest, CreateContainerRequest,
        ImageSpec, Mount, Signal,
    };
    use std::os::unix::fs::PermissionsExt;
    use tonic::Code;
    let node = Node::start().await.expect("node");
    let ep = node.daemon.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = write_file(
        dir.path(),
        "pod.json",
        &format!(
            r#"{{"metadata":{{"name":"v037","namespace":"default","uid":"v037-uid","attempt":0}},"log_directory":"{}","linux":{{}}}}"#,
            dir.path().display()
        ),
    );
    let pod_id = crictl_ok(&ep, &["runp", &pod]).await.trim().to_owned();
    crictl_ok(&ep, &["pull", BUSYBOX]).await;
    // The volume's filesystem (/tmp here) allows exec: only the mount option forbids it.
    let vol = tempfile::tempdir().expect("volume");
    let script = vol.path().join("run.sh");
    std::fs::write(&script, "#!/bin/sh\necho script-ran\n").expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut c = node.daemon.client().await.expect("client");
    let config = |name: &str, options: &[&str]| ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: vec![
            "sh".into(),
            "-c".into(),
            "grep ' /data ' /proc/self/mountinfo; /data/run.sh; echo exec-rc=$?; \
             trap 'echo got-usr1; exit 0' USR1; echo ready; \
             while true; do sleep 0.1; done"
                .into(),
        ],
        mounts: vec![Mount {
            container_path: "/data".into(),
            host_path: vol.path().display().to_string(),
            mount_options: options.iter().map(|o| (*o).to_owned()).collect(),
            ..Default::default()
        }],
        stop_signal: Signal::Sigusr1.into(),
        log_path: format!("{name}.log"),
        ..Default::default()
    };

    let err = c
        .runtime
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(config("widening", &["noexec", "exec"])),
            sandbox_config: None,
        })
        .await
        .expect_err("an option that is not a narrowing one");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().contains("/data") && err.message().contains("\"exec\""),
        "names the mount and the option: {}",
        err.message()
    );
    assert_eq!(
        crictl_ok(&ep, &["ps", "-a", "-q"]).await.trim(),
        "",
        "a refused create leaves no container"
    );

    let id = c
        .runtime
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(config("narrowed", &["noexec", "nosuid", "nodev"])),
            sandbox_config: None,
        })
        .await
        .expect("create")
        .into_inner()
        .container_id;
    crictl_ok(&ep, &["start", &id]).await;
    let mut logs = String::new();
    for _ in 0..100 {
        logs = crictl_ok(&ep, &["logs", &id]).await;
        if logs.contains("ready") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(logs.contains("ready"), "{logs}");
    let flags: Vec<&str> = logs
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/data"))
        .and_then(|l| l.split(' ').nth(5))
        .unwrap_or_default()
        .split(',')
        .collect();
    for f in ["noexec", "nosuid", "nodev"] {
        assert!(flags.contains(&f), "/data lacks {f}: {logs}");
    }
    assert!(
        !logs.contains("script-ran") && logs.contains("exec-rc=126"),
        "a script on a noexec volume ran: {logs}"
    );
    let status = c
        .runtime
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .expect("status")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(status.stop_signal, i32::from(Signal::Sigusr1));

    // SIGUSR1 is 29 in the CRI enum; sending 29 (SIGIO on Linux) would leave the shell
    // (pid 1, no handler) running until the SIGKILL after the timeout: exit 137.
    crictl_ok(&ep, &["stop", "-t", "20", &id]).await;
    let v = wait_state(&ep, &id, "CONTAINER_EXITED").await;
    let logs = crictl_ok(&ep, &["logs", &id]).await;
    assert!(logs.contains("got-usr1"), "{logs}");
    assert_eq!(v["status"]["exitCode"], 0, "{v}");
    crictl_ok(&ep, &["rm", &id]).await;
    crictl_ok(&ep, &["stopp", &pod_id]).await;
    crictl_ok(&ep, &["rmp", &pod_id]).await;
}

/// Host pids whose command line is exactly `sleep <arg>`.
fn sleepers(arg: &str) -> Vec<i32> {
    let want = format!("sleep\0{arg}\0");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want.as_bytes())
        })
        .collect()
}

/// Kills the test's own `sleep <tag>` processes if the test fails before berthd did.
struct KillSleepers(String);

impl Drop for KillSleepers {
    fn drop(&mut self) {
        for pid in sleepers(&self.0) {
            // SAFETY: kill(2) of a pid just read from /proc whose command line is this
            // test's unique `sleep <tag>`; a stale pid gets ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Creates and starts busybox container `name` running `sh -c script` in the host's
/// PID namespace, in pod `pod_id` (config file `pod`); its id.
async fn start_host_pid(
    ep: &str,
    dir: &std::path::Path,
    pod_id: &str,
    pod: &str,
    name: &str,
    script: &str,
) -> String {
    let config = serde_json::json!({
        "metadata": { "name": name },
        "image": { "image": BUSYBOX },
        "command": ["sh", "-c", script],
        "linux": { "security_context": { "namespace_options": { "network": 2, "pid": 2 } } },
    });
    let ctr = write_file(dir, &format!("{name}.json"), &config.to_string());
    let id = crictl_ok(ep, &["create", pod_id, &ctr, pod])
        .await
        .trim()
        .to_owned();
    crictl_ok(ep, &["start", &id]).await;
    id
}

/// A container in the host's PID namespace can leave processes behind when its init
/// exits: they die with no namespace, only its cgroup holds them. StopContainer, or the
/// init's own exit, must end them too (as containerd's shim does), not leave them
/// running until RemoveContainer.
#[tokio::test]
async fn stop_ends_what_a_host_pid_container_left_in_its_cgroup() {
    let node = Node::start().await.expect("node");
    let ep = node.daemon.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let tag = format!("{}", 40_000 + std::process::id() % 20_000);
    let _guard = KillSleepers(tag.clone());
    let pod = write_file(
        dir.path(),
        "pod.json",
        &format!(
            r#"{{"metadata":{{"name":"hostpid","namespace":"default","uid":"hostpid-uid","attempt":0}},
                "log_directory":"{}",
                "linux":{{"security_context":{{"namespace_options":{{"network":2,"pid":2}}}}}}}}"#,
            dir.path().join("logs").display()
        ),
    );
    let pod_id = crictl_ok(&ep, &["runp", &pod]).await.trim().to_owned();
    crictl_ok(&ep, &["pull", BUSYBOX]).await;
    let id = start_host_pid(
        &ep,
        dir.path(),
        &pod_id,
        &pod,
        "bg",
        &format!("sleep {tag} & wait"),
    )
    .await;
    let mut started = false;
    for _ in 0..100 {
        if !sleepers(&tag).is_empty() {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started,
        "the container's background `sleep {tag}` never started"
    );

    // The shell dies of SIGTERM at once; its background child does not.
    crictl_ok(&ep, &["stop", "-t", "5", &id]).await;
    let v = wait_state(&ep, &id, "CONTAINER_EXITED").await;
    let left = sleepers(&tag);
    assert!(
        left.is_empty(),
        "after StopContainer the container's child `sleep {tag}` still runs as {left:?} \
         (exit {})",
        v["status"]["exitCode"]
    );
    crictl_ok(&ep, &["rm", &id]).await;

    // An init that exits by itself leaves nothing running either (kubelet removes an
    // exited container only at garbage collection).
    let tag2 = format!("{}", 60_000 + std::process::id() % 20_000);
    let _guard2 = KillSleepers(tag2.clone());
    let script2 = format!("sleep {tag2} & sleep 1; exit 0");
    let id2 = start_host_pid(&ep, dir.path(), &pod_id, &pod, "bg2", &script2).await;
    wait_state(&ep, &id2, "CONTAINER_EXITED").await;
    let mut left = sleepers(&tag2);
    for _ in 0..30 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = sleepers(&tag2);
    }
    assert!(
        left.is_empty(),
        "3 s after its init exited, the container's child `sleep {tag2}` still runs as {left:?}"
    );
    crictl_ok(&ep, &["rm", &id2]).await;
    crictl_ok(&ep, &["stopp", &pod_id]).await;
    crictl_ok(&ep, &["rmp", &pod_id]).await;
}
