//! Runtime handlers: berthd configured with `[runtime_handlers.runc]` runs a pod's
//! containers under Debian's runc (a RuntimeClass picking handler `runc`): `Status`
//! lists the handler, the container shows in `runc list`, its logs reach the CRI log
//! file, ExecSync and `crictl exec` run inside it, stats come from the cgroup berthd
//! put in the spec, it survives a berthd restart, and stop/remove leave no runc state
//! and no cgroup. An unknown handler is refused with InvalidArgument. A runtime slow
//! to start an exec still has its command killed when ExecSync times out.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_integration::client::CriClient;
use berth_integration::daemon::DaemonOptions;
use berth_integration::fixtures::{
    self, BUSYBOX, container_config, create, create_started, exec_output, exec_within, pod_config,
    pull, run_pod_with, start,
};
use berth_integration::setup::Node;
use berth_integration::tools::crictl;
use berth_proto::v1 as cri;

const RUNC: &str = "/usr/sbin/runc";

/// Force-deletes whatever runc still has under `root` (the test's safety net: a
/// failed test must not leave runc containers or their cgroups behind).
struct RuncCleanup(PathBuf);

impl Drop for RuncCleanup {
    fn drop(&mut self) {
        for id in runc_list(&self.0) {
            let _ = std::process::Command::new(RUNC)
                .arg("--root")
                .arg(&self.0)
                .args(["delete", "--force", &id.0])
                .status();
        }
    }
}

/// `runc --root R list`: (id, status) pairs.
fn runc_list(root: &Path) -> Vec<(String, String)> {
    let out = std::process::Command::new(RUNC)
        .arg("--root")
        .arg(root)
        .args(["list", "--format", "json"])
        .output()
        .expect("runc list");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["id"].as_str().unwrap_or_default().to_owned(),
                        c["status"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The container's state and berthd's verbose info.
async fn container_state(client: &mut CriClient, id: &str) -> (i32, serde_json::Value) {
    let (status, info) = fixtures::container_status_verbose(client, id).await;
    (status.state, info)
}

/// The init's cgroup (v1 memory controller line of /proc/<pid>/cgroup).
fn memory_cgroup_of(pid: i64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctrl.split(',')
                .any(|c| c == "memory")
                .then(|| path.to_owned())
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn runc_handler_runs_pods_like_the_native_one() {
    let node = Node::start_with(DaemonOptions {
        extra_config: format!("\n[runtime_handlers.runc]\nruntime_path = {RUNC:?}\n"),
        ..Default::default()
    })
    .await
    .expect("start node");
    let mut node = node;
    let runc_root = node.daemon.state_dir.join("oci").join("runc");
    let _cleanup = RuncCleanup(runc_root.clone());
    let mut client = node.daemon.client().await.expect("client");

    // Status lists both handlers; runc's features are what runc itself reports.
    let status = client
        .runtime
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    let names: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, ["", "runc"], "handlers in Status");
    let runc_features = std::process::Command::new(RUNC)
        .arg("features")
        .output()
        .expect("runc features");
    let runc_has_rro = String::from_utf8_lossy(&runc_features.stdout).contains("\"rro\"");
    let f = status.runtime_handlers[1]
        .features
        .expect("runc handler features");
    assert_eq!(f.recursive_read_only_mounts, runc_has_rro);
    assert!(
        !f.user_namespaces,
        "runc 1.1 has no idmapped mounts: no user namespaces"
    );

    // An unknown handler is refused, naming it and the configured ones.
    let logs = tempfile::tempdir().expect("log dir");
    let err = run_pod_with(&mut client, &pod_config("rh-unknown", logs.path()), "kata")
        .await
        .expect_err("unknown handler must fail");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(
        err.message().contains("\"kata\"") && err.message().contains("\"runc\""),
        "{}",
        err.message()
    );

    pull(&mut client, BUSYBOX).await;

    let pod = pod_config("rh-runc", logs.path());
    let pod_id = run_pod_with(&mut client, &pod, "runc")
        .await
        .expect("RunPodSandbox with handler runc");
    let pod_status = fixtures::pod_status(&mut client, &pod_id).await;
    assert_eq!(pod_status.runtime_handler, "runc");

    let ctr_id = create(
        &mut client,
        &pod_id,
        &pod,
        container_config(
            "app",
            BUSYBOX,
            &[
                "sh",
                "-c",
                "echo hello-from-runc; echo oops-on-stderr >&2; \
                 i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 3600",
            ],
        ),
    )
    .await
    .expect("CreateContainer under runc");
    assert_eq!(
        runc_list(&runc_root),
        vec![(ctr_id.clone(), "created".to_owned())],
        "runc list after create"
    );
    start(&mut client, &ctr_id).await.expect("StartContainer");
    assert_eq!(
        runc_list(&runc_root),
        vec![(ctr_id.clone(), "running".to_owned())],
        "runc list after start"
    );
    let (state, info) = container_state(&mut client, &ctr_id).await;
    assert_eq!(state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(info["runtimeHandler"], "runc", "{info}");

    // runc put the init into the cgroup berthd wrote as linux.cgroupsPath.
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            node.daemon
                .root_dir
                .join("containers")
                .join(&ctr_id)
                .join("bundle/config.json"),
        )
        .expect("config.json"),
    )
    .expect("spec json");
    let cgroups_path = spec["linux"]["cgroupsPath"]
        .as_str()
        .expect("cgroupsPath")
        .to_owned();
    let pid = info["pid"].as_i64().expect("pid");
    assert_eq!(memory_cgroup_of(pid), cgroups_path);
    let memory_cgroup =
        Path::new("/sys/fs/cgroup/memory").join(cgroups_path.trim_start_matches('/'));
    assert!(memory_cgroup.is_dir(), "{}", memory_cgroup.display());

    // Logs: both streams, in CRI format, through the monitor's pipes.
    let log_file = logs.path().join("app.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let text = std::fs::read_to_string(&log_file).unwrap_or_default();
        if text.contains("hello-from-runc") && text.contains("oops-on-stderr") {
            break text;
        }
        assert!(Instant::now() < deadline, "log so far: {text:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        log.lines().any(|l| l.contains(" stdout F hello-from-runc")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains(" stderr F oops-on-stderr")),
        "{log}"
    );
    let ep = node.daemon.endpoint();
    let out = crictl(&ep, &["logs", &ctr_id])
        .await
        .expect("crictl logs")
        .success()
        .expect("crictl logs ok");
    assert!(out.stdout().contains("hello-from-runc"), "{}", out.stdout());

    // ExecSync runs in the container (its hostname, its rootfs) and keeps the code.
    let r = exec_output(
        &mut client,
        &ctr_id,
        &["sh", "-c", "hostname; echo $((6*7)); echo e >&2; exit 3"],
    )
    .await;
    assert_eq!(r.code, 3);
    assert_eq!(r.stdout, "rh-runc\n42\n");
    assert_eq!(r.stderr, "e\n");
    let r = exec_output(&mut client, &ctr_id, &["/no/such/binary"]).await;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("/no/such/binary"), "{}", r.stderr);
    // The streaming Exec goes through runc exec as well.
    let out = crictl(
        &ep,
        &[
            "exec",
            &ctr_id,
            "sh",
            "-c",
            "echo via-stream; cat /etc/hostname",
        ],
    )
    .await
    .expect("crictl exec")
    .success()
    .expect("crictl exec ok");
    assert!(out.stdout().contains("via-stream"), "{}", out.stdout());

    // Stats from the cgroup: the busy loop used CPU, the processes use memory.
    let stats = client
        .runtime
        .container_stats(cri::ContainerStatsRequest {
            container_id: ctr_id.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    let cpu = stats
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map(|v| v.value)
        .unwrap_or(0);
    let mem = stats.memory.expect("memory");
    assert!(cpu > 0, "cpu usage {cpu}");
    assert!(
        mem.usage_bytes.map(|v| v.value).unwrap_or(0) > 0,
        "memory {mem:?}"
    );

    // A second container with what kubelet sends for a restricted pod is valid for
    // runc too: RuntimeDefault seccomp, no capabilities, a non-root user, read-only
    // rootfs, a recursively read-only bind mount, and a terminal.
    let host_dir = tempfile::tempdir().expect("host dir");
    std::fs::create_dir(host_dir.path().join("sub")).expect("sub");
    let secure_id = create(
        &mut client,
        &pod_id,
        &pod,
        cri::ContainerConfig {
            tty: true,
            stdin: true,
            mounts: vec![cri::Mount {
                container_path: "/data".into(),
                host_path: host_dir.path().display().to_string(),
                readonly: true,
                recursive_read_only: runc_has_rro,
                ..Default::default()
            }],
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    run_as_user: Some(cri::Int64Value { value: 1000 }),
                    readonly_rootfs: true,
                    no_new_privs: true,
                    capabilities: Some(cri::Capability {
                        drop_capabilities: vec!["ALL".into()],
                        ..Default::default()
                    }),
                    seccomp: Some(cri::SecurityProfile {
                        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..container_config(
                "restricted",
                BUSYBOX,
                &["sh", "-c", "echo tty-hello; exec sleep 3600"],
            )
        },
    )
    .await
    .expect("CreateContainer (restricted, tty) under runc");
    start(&mut client, &secure_id)
        .await
        .expect("StartContainer (restricted)");
    let r = exec_output(
        &mut client,
        &secure_id,
        &[
            "sh",
            "-c",
            "id -u; grep Seccomp: /proc/self/status; grep CapEff /proc/self/status; \
             touch /x 2>/dev/null || echo rootfs-ro; \
             touch /data/sub/y 2>/dev/null || echo data-ro",
        ],
    )
    .await;
    let out = r.stdout;
    assert!(out.starts_with("1000\n"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "seccomp filter mode: {out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(
        out.contains("rootfs-ro") && out.contains("data-ro"),
        "{out}"
    );
    let tty_log = logs.path().join("restricted.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&tty_log)
        .unwrap_or_default()
        .contains(" stdout F tty-hello")
    {
        assert!(
            Instant::now() < deadline,
            "tty log: {:?}",
            std::fs::read_to_string(&tty_log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: secure_id.clone(),
        })
        .await
        .expect("RemoveContainer (restricted)");

    // berthd restarts; the container keeps running under runc and stays manageable.
    node.daemon.restart().await.expect("restart berthd");
    let mut client = node.daemon.client().await.expect("client after restart");
    let (state, info) = container_state(&mut client, &ctr_id).await;
    assert_eq!(
        state,
        cri::ContainerState::ContainerRunning as i32,
        "{info}"
    );
    assert_eq!(info["pid"].as_i64(), Some(pid));
    let r = exec_output(&mut client, &ctr_id, &["echo", "after-restart"]).await;
    assert_eq!(r.stdout, "after-restart\n");

    // Stop: the stop signal (SIGTERM) or, after the timeout, SIGKILL ends it.
    client
        .runtime
        .stop_container(cri::StopContainerRequest {
            container_id: ctr_id.clone(),
            timeout: 1,
        })
        .await
        .expect("StopContainer");
    let (state, _) = container_state(&mut client, &ctr_id).await;
    assert_eq!(state, cri::ContainerState::ContainerExited as i32);
    let exit = fixtures::container_status(&mut client, &ctr_id).await;
    assert!(matches!(exit.exit_code, 137 | 143), "{exit:?}");

    client
        .runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: ctr_id.clone(),
        })
        .await
        .expect("RemoveContainer");
    assert!(runc_list(&runc_root).is_empty(), "runc state left behind");
    assert!(!runc_root.join(&ctr_id).exists());
    assert!(
        !node.daemon.state_dir.join("rt").join(&ctr_id).exists(),
        "monitor sockets left behind"
    );
    assert!(
        !memory_cgroup.exists(),
        "cgroup left behind: {}",
        memory_cgroup.display()
    );

    fixtures::stop_and_remove_pod(&mut client, &pod_id).await;
}

/// ExecSync's timeout can fire before the runtime has started the command (measured in
/// the VM lane: under QEMU TCG, critest's 1 s `sleep 4321` timed out before
/// berth-runtime wrote its pid file). berthd must still kill that command once the
/// runtime starts it, not kill only the runtime and leave the command running in the
/// container — critest's "execSync with timeout" then finds it with `pgrep sleep`.
/// Here runc is wrapped by a script that waits 3 s before any `exec`, so the 1 s
/// timeout always fires first.
#[tokio::test]
async fn a_timed_out_exec_is_killed_even_when_the_runtime_starts_it_late() {
    let dir = tempfile::tempdir().expect("temp dir");
    let slow = dir.path().join("slow-exec-runc");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\n\
             for a in \"$@\"; do [ \"$a\" = exec ] && sleep 3 && break; done\n\
             exec {RUNC} \"$@\"\n"
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod wrapper");
    let node = Node::start_with(DaemonOptions {
        extra_config: format!("\n[runtime_handlers.slowexec]\nruntime_path = {slow:?}\n"),
        ..Default::default()
    })
    .await
    .expect("start node");
    let runc_root = node.daemon.state_dir.join("oci").join("slowexec");
    let _cleanup = RuncCleanup(runc_root);
    let mut client = node.daemon.client().await.expect("client");
    pull(&mut client, BUSYBOX).await;
    let logs = tempfile::tempdir().expect("log dir");
    let pod = pod_config("rh-slowexec", logs.path());
    let pod_id = run_pod_with(&mut client, &pod, "slowexec")
        .await
        .expect("RunPodSandbox with handler slowexec");
    let ctr_id = create_started(
        &mut client,
        &pod_id,
        &pod,
        // Not a sleep: the check below is critest's, `pgrep sleep`.
        container_config("app", BUSYBOX, &["tail", "-f", "/dev/null"]),
    )
    .await;

    let err = client
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: ctr_id.clone(),
            cmd: vec!["sleep".into(), "4321".into()],
            timeout: 1,
        })
        .await
        .expect_err("ExecSync of sleep 4321 with a 1 s timeout must time out");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
    // critest's check: no `sleep` left in the container.
    let r = exec_within(
        &mut client,
        &ctr_id,
        &["sh", "-c", "pgrep sleep || true"],
        30,
    )
    .await;
    assert_eq!(
        r.stdout.trim(),
        "",
        "the timed-out command still runs in the container"
    );
    assert!(r.stderr.is_empty(), "{}", r.stderr);

    fixtures::stop_and_remove_pod(&mut client, &pod_id).await;
}
