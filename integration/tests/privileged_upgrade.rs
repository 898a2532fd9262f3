//! Upgrading berthd with running containers, as an operator upgrading the package
//! would: the previous release's berthd (built from git history by
//! integration/scripts/build-previous-release.sh, with its own berth-monitor and
//! berth-runtime) runs a pod with a container that logs a line a second, one that
//! exited 3, one killed while no berthd runs and one created but not started; it is
//! stopped with SIGTERM, and this workspace's berthd starts on the same root and state
//! directories. Everything a user sees of the old objects must still work, through the
//! old monitors (protocol version 1), and removing the pod must leave nothing behind.
//! docs/operability.md, "Upgrading berthd".

mod reliability_common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_integration::daemon::DaemonOptions;
use berth_integration::fixtures::{
    container_config, container_status_verbose, create_started, exec, pod_config, pull,
};
use berth_integration::forge::ImageBuilder;
use berth_integration::setup::Node;
use berth_integration::tools::crictl;
use berth_integration::{CriClient, TestDaemon};
use berth_proto::v1 as cri;
use reliability_common::{CgroupParent, become_reaper, cgroups_under, leases_of, mounts_under};

/// The previous release's commit (integration/previous-release).
const PREVIOUS_RELEASE: &str = include_str!("../previous-release");

/// The directory holding the previous release's berthd and helpers:
/// `$BERTH_PREV_RELEASE_BIN`, else where build-previous-release.sh puts them.
fn previous_release_bin() -> PathBuf {
    let dir = std::env::var_os("BERTH_PREV_RELEASE_BIN").map_or_else(
        || {
            Path::new("/var/cache/berth/prev-release")
                .join(PREVIOUS_RELEASE.trim())
                .join("bin")
        },
        PathBuf::from,
    );
    for bin in ["berthd", "berth-monitor", "berth-runtime"] {
        assert!(
            dir.join(bin).is_file(),
            "the previous release's {bin} is not in {}: run integration/scripts/build-previous-release.sh \
             (integration/scripts/run-tests.sh does)",
            dir.display()
        );
    }
    dir
}

async fn runtime_version(c: &mut CriClient) -> String {
    c.runtime
        .version(cri::VersionRequest::default())
        .await
        .expect("Version")
        .into_inner()
        .runtime_version
}

fn now_ns() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    i64::try_from(since.as_nanos()).expect("nanoseconds fit")
}

fn pid_of(info: &serde_json::Value, key: &str) -> i64 {
    info[key]
        .as_i64()
        .unwrap_or_else(|| panic!("verbose info has no {key}: {info}"))
}

async fn wait_exited(c: &mut CriClient, id: &str) -> cri::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, _) = container_status_verbose(c, id).await;
        if s.state == cri::ContainerState::ContainerExited as i32 {
            return s;
        }
        assert!(Instant::now() < deadline, "{id} did not exit: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn alive(pid: i64) -> bool {
    // A zombie is dead for every purpose here.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_owned()))
        .is_some_and(|r| !r.starts_with('Z'))
}

/// Lines of a CRI log file that carry `tick`.
fn ticks(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" tick "))
        .count()
}

/// The memory limit of `pid`'s cgroup, from the host's side (cgroup v1 or v2).
fn memory_limit(pid: i64) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if ctls.split(',').any(|c| c == "memory") {
            let file = format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes");
            return std::fs::read_to_string(file)
                .expect("v1 limit")
                .trim()
                .into();
        }
    }
    let path = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 path");
    std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max"))
        .expect("v2 limit")
        .trim()
        .into()
}

/// Live processes whose command line names `dir` (monitors, pod infra), besides berthd.
fn processes_naming(dir: &Path, berthd: Option<u32>) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
    {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if Some(pid) != berthd && cmd.contains(&needle) && alive(i64::from(pid)) {
            out.push(format!("{pid}: {cmd}"));
        }
    }
    out
}

#[tokio::test]
async fn containers_survive_an_upgrade_from_the_previous_release() {
    // Old monitors are orphaned when the old berthd exits: reap them when they end.
    become_reaper();
    let old = previous_release_bin();
    let cgroup_parent = format!("/berthupgrade{}", std::process::id());
    let _cg = CgroupParent(cgroup_parent.clone());
    let mut node = Node::start_bare_with(DaemonOptions {
        binary: Some(old.join("berthd")),
        ..DaemonOptions::default()
    })
    .await
    .expect("the previous release's berthd starts");
    // Only the busybox image (critest's whole set takes a minute to build).
    let busybox = ImageBuilder::busybox()
        .and_then(|b| b.build())
        .expect("busybox image");
    node.registry
        .push("e2e-test-images/busybox", "1.29-2", &busybox)
        .await
        .expect("push busybox");

    // --- the previous release runs a pod ---
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    let mut pod = pod_config("upgrade", &logs);
    pod.linux.get_or_insert_with(Default::default).cgroup_parent = cgroup_parent.clone();
    let mut c = node.daemon.client().await.expect("client");
    assert_eq!(
        runtime_version(&mut c).await,
        "0.1.0",
        "the old berthd runs"
    );
    pull(&mut c, berth_integration::fixtures::BUSYBOX).await;
    let pod_id = berth_integration::fixtures::run_pod(&mut c, &pod).await;
    let ticker = create_started(
        &mut c,
        &pod_id,
        &pod,
        container_config(
            "ticker",
            berth_integration::fixtures::BUSYBOX,
            &[
                "sh",
                "-c",
                "echo ticker >/tmp/who; trap 'echo bye; exit 42' TERM; i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done",
            ],
        ),
    )
    .await;
    let three = create_started(
        &mut c,
        &pod_id,
        &pod,
        container_config(
            "three",
            berth_integration::fixtures::BUSYBOX,
            &["sh", "-c", "exit 3"],
        ),
    )
    .await;
    assert_eq!(wait_exited(&mut c, &three).await.exit_code, 3);
    // One that dies while no berthd runs: only its old monitor sees the exit.
    let victim = create_started(
        &mut c,
        &pod_id,
        &pod,
        container_config(
            "victim",
            berth_integration::fixtures::BUSYBOX,
            &["sleep", "3600"],
        ),
    )
    .await;
    let (_, info) = container_status_verbose(&mut c, &victim).await;
    let victim_pid = pid_of(&info, "pid");
    // One created but not yet started: kubelet may start it after the upgrade.
    let later = berth_integration::fixtures::create(
        &mut c,
        &pod_id,
        &pod,
        container_config(
            "later",
            berth_integration::fixtures::BUSYBOX,
            &["sleep", "3600"],
        ),
    )
    .await
    .expect("CreateContainer");
    let (_, info) = container_status_verbose(&mut c, &ticker).await;
    let (pid, monitor_pid) = (pid_of(&info, "pid"), pid_of(&info, "monitorPid"));
    drop(c);

    // --- the upgrade: SIGTERM the old berthd, start the new one on its state ---
    let stopped = node.daemon.stop().expect("SIGTERM the old berthd");
    assert!(stopped.success(), "the old berthd exits cleanly: {stopped}");
    assert!(alive(pid), "the container outlives the old berthd");
    let killed_at = now_ns();
    let victim_pid32 = i32::try_from(victim_pid).expect("pid");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is the victim's.
    assert_eq!(unsafe { libc::kill(victim_pid32, libc::SIGKILL) }, 0);
    while alive(victim_pid) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // the old monitor records it
    let restarted_at = now_ns();
    let log = logs.join("ticker.log");
    node.daemon
        .set_binary(TestDaemon::binary().expect("this workspace's berthd"));
    node.daemon
        .restart()
        .await
        .expect("the new berthd starts on the old state");
    let mut c = node.daemon.client().await.expect("client");
    assert_eq!(
        runtime_version(&mut c).await,
        env!("CARGO_PKG_VERSION"),
        "the new berthd runs"
    );

    // The pod and the containers are as they were.
    let ps = berth_integration::fixtures::pod_status(&mut c, &pod_id).await;
    assert_eq!(
        ps.state,
        cri::PodSandboxState::SandboxReady as i32,
        "{ps:?}"
    );
    let (s, info) = container_status_verbose(&mut c, &ticker).await;
    assert_eq!(
        s.state,
        cri::ContainerState::ContainerRunning as i32,
        "{s:?}"
    );
    assert_eq!(pid_of(&info, "pid"), pid, "the same process: {info}");
    assert_eq!(
        pid_of(&info, "monitorPid"),
        monitor_pid,
        "the old monitor: {info}"
    );
    let (s, _) = container_status_verbose(&mut c, &three).await;
    assert_eq!(
        s.state,
        cri::ContainerState::ContainerExited as i32,
        "{s:?}"
    );
    assert_eq!(s.exit_code, 3, "{s:?}");

    // The one that died during the upgrade shows its exit, recorded by its old
    // monitor: SIGKILL, at the time it happened.
    let (s, _) = container_status_verbose(&mut c, &victim).await;
    assert_eq!(
        s.state,
        cri::ContainerState::ContainerExited as i32,
        "{s:?}"
    );
    assert_eq!(s.exit_code, 137, "{s:?}");
    assert!(
        (killed_at..restarted_at).contains(&s.finished_at),
        "finished at the kill ({killed_at}..{restarted_at}): {s:?}"
    );

    // Its log goes on, also after kubelet rotates it.
    let before = ticks(&log);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ticks(&log) < before + 2 {
        assert!(
            Instant::now() < deadline,
            "no new log lines after the upgrade"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    std::fs::rename(&log, logs.join("ticker.log.1")).expect("rotate the log");
    c.runtime
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: ticker.clone(),
        })
        .await
        .expect("ReopenContainerLog through the old monitor");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ticks(&log) < 1 {
        assert!(Instant::now() < deadline, "no lines in the reopened log");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // kubelet's stats of the old container.
    let stats = c
        .runtime
        .container_stats(cri::ContainerStatsRequest {
            container_id: ticker.clone(),
        })
        .await
        .expect("ContainerStats of the old container")
        .into_inner()
        .stats
        .expect("stats");
    assert!(
        stats
            .memory
            .and_then(|m| m.working_set_bytes)
            .is_some_and(|w| w.value > 0),
        "{stats:?}"
    );

    // Exec, both ways kubelet and a person do it.
    let (code, out, err) = exec(&mut c, &ticker, &["sh", "-c", "echo exec-ok; cat /tmp/who"]).await;
    assert_eq!(code, 0, "ExecSync: {out} {err}");
    assert!(
        out == "exec-ok\nticker\n",
        "ExecSync ran in the old container: {out:?}"
    );
    let ep = node.daemon.endpoint();
    let out = crictl(&ep, &["exec", &ticker, "echo", "crictl-exec-ok"])
        .await
        .expect("crictl")
        .success()
        .expect("crictl exec into the old container");
    assert_eq!(out.stdout().trim(), "crictl-exec-ok");

    // Resources change on the old container's cgroup.
    let limit: i64 = 96 << 20;
    c.runtime
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: ticker.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: limit,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources of the old container");
    assert_eq!(memory_limit(pid), limit.to_string());

    // The container the old berthd created starts now, through its old monitor.
    berth_integration::fixtures::start(&mut c, &later)
        .await
        .expect("StartContainer of a container the old berthd created");
    let (s, _) = container_status_verbose(&mut c, &later).await;
    assert_eq!(
        s.state,
        cri::ContainerState::ContainerRunning as i32,
        "{s:?}"
    );
    let (code, out, _) = exec(&mut c, &later, &["hostname"]).await;
    assert_eq!((code, out.trim()), (0, "upgrade"));

    // A new container joins the old pod.
    let fresh = create_started(
        &mut c,
        &pod_id,
        &pod,
        container_config(
            "fresh",
            berth_integration::fixtures::BUSYBOX,
            &["sleep", "3600"],
        ),
    )
    .await;
    let (code, out, _) = exec(&mut c, &fresh, &["hostname"]).await;
    assert_eq!(
        (code, out.trim()),
        (0, "upgrade"),
        "the new container is in the old pod's UTS namespace"
    );

    // Stopping the old container goes through its old monitor, which reports the exit.
    c.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: ticker.clone(),
            timeout: 10,
        })
        .await
        .expect("StopContainer of the old container");
    let s = wait_exited(&mut c, &ticker).await;
    assert_eq!(
        s.exit_code, 42,
        "its own exit, through the old monitor: {s:?}"
    );
    assert!(s.finished_at > s.started_at, "{s:?}");
    assert!(!alive(pid), "the old container's process is gone");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(monitor_pid) {
        assert!(
            Instant::now() < deadline,
            "the old monitor exits after its container"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(" bye")
    );

    // Removing the pod leaves nothing behind.
    berth_integration::fixtures::remove_pod(&mut c, &pod_id).await;
    let pods = c
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert!(
        pods.is_empty(),
        "RemovePodSandbox removed the pod: {pods:?}"
    );
    let d = &node.daemon;
    let ns_dir = d.state_dir.join("ns");
    let mut leaks: Vec<String> = mounts_under(d.dir())
        .into_iter()
        .filter(|m| Path::new(m) != ns_dir)
        .map(|m| format!("mount {m}"))
        .collect();
    leaks.extend(
        processes_naming(d.dir(), d.pid())
            .into_iter()
            .map(|p| format!("process {p}")),
    );
    leaks.extend(
        cgroups_under(&cgroup_parent)
            .into_iter()
            .map(|g| format!("cgroup {}", g.display())),
    );
    leaks.extend(
        leases_of(&BTreeSet::from([pod_id.clone()]))
            .into_iter()
            .map(|l| format!("IPAM lease {l}")),
    );
    assert!(
        leaks.is_empty(),
        "left behind after RemovePodSandbox: {leaks:#?}"
    );
}
