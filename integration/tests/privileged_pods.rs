//! Pod sandboxes on the real kernel: pinned namespaces, CNI bridge networking with
//! Debian's plugins, sysctls, DNS files, stop/remove idempotence, rollback of failed
//! creations, and recovery after berthd is killed.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_integration::daemon::{TEST_NETWORK, TestDaemon};
use berth_integration::tools::crictl;
use berth_proto::v1::{
    DnsConfig, LinuxPodSandboxConfig, ListPodSandboxRequest, PodSandboxConfig, PodSandboxFilter,
    PodSandboxMetadata, PodSandboxState, PodSandboxStateValue, PodSandboxStatusRequest,
    PortMapping, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use tonic::Code;

fn pod_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "berth-test".into(),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        dns_config: Some(DnsConfig {
            servers: vec!["10.10.10.10".into()],
            searches: vec!["google.com".into()],
            options: vec!["ndots:8".into()],
        }),
        labels: HashMap::from([("app".into(), name.into())]),
        annotations: HashMap::from([("note".into(), "kept verbatim".into())]),
        ..Default::default()
    }
}

async fn run(d: &TestDaemon, config: PodSandboxConfig) -> Result<String, tonic::Status> {
    let mut c = d.client().await.expect("client");
    berth_integration::fixtures::run_pod_with(&mut c, &config, "").await
}

async fn status(d: &TestDaemon, id: &str) -> berth_proto::v1::PodSandboxStatusResponse {
    let mut c = d.client().await.expect("client");
    c.runtime
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
}

async fn stop_and_remove(d: &TestDaemon, id: &str) {
    let mut c = d.client().await.expect("client");
    berth_integration::fixtures::stop_and_remove_pod(&mut c, id).await;
}

fn netns_pin(d: &TestDaemon, id: &str) -> PathBuf {
    d.state_dir.join("ns").join(id).join("net")
}

/// Serves one TCP connection on `port` inside the network namespace at `netns`,
/// answering "hello from the pod".
fn serve_once_in_netns(netns: &Path, port: u16) -> std::thread::JoinHandle<()> {
    let ns = std::fs::File::open(netns).expect("open netns");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        // SAFETY: setns(2) on a valid namespace fd moves only this thread.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind in pod");
        ready_tx.send(()).expect("ready");
        let (mut conn, _) = listener.accept().expect("accept");
        conn.write_all(b"hello from the pod").expect("write");
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("listener ready");
    handle
}

fn fetch(addr: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

fn ip_allocated(ip: &str) -> bool {
    Path::new("/var/lib/cni/networks")
        .join(TEST_NETWORK)
        .join(ip)
        .exists()
}

#[tokio::test]
async fn pod_gets_namespaces_an_ip_reachable_from_the_host_and_its_files() {
    let d = TestDaemon::start().await.expect("start");
    let mut config = pod_config("web");
    config.linux = Some(LinuxPodSandboxConfig {
        sysctls: HashMap::from([
            ("kernel.shm_rmid_forced".into(), "1".into()),
            ("net.ipv4.ip_unprivileged_port_start".into(), "81".into()),
        ]),
        ..Default::default()
    });
    let id = run(&d, config).await.expect("RunPodSandbox");

    let st = status(&d, &id).await;
    let s = st.status.expect("status");
    assert_eq!(s.state, i32::from(PodSandboxState::SandboxReady));
    assert!(s.created_at > 0);
    assert_eq!(s.labels["app"], "web");
    assert_eq!(s.annotations["note"], "kept verbatim");
    let ip = s.network.expect("network").ip;
    assert!(ip.starts_with("10.89."), "pod IP {ip} in the test subnet");
    assert!(ip_allocated(&ip));

    // Reachable from the host through the bridge.
    let netns = netns_pin(&d, &id);
    let server = serve_once_in_netns(&netns, 8080);
    assert_eq!(fetch(&format!("{ip}:8080")), "hello from the pod");
    server.join().expect("server thread");

    // Hostname and sysctls were set inside the pod's namespaces.
    let uts = d.state_dir.join("ns").join(&id).join("uts");
    let out = std::process::Command::new("nsenter")
        .arg(format!("--uts={}", uts.display()))
        .arg("hostname")
        .output()
        .expect("nsenter");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "web-host");
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"])
        .output()
        .expect("nsenter");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "81");
    let ipc = d.state_dir.join("ns").join(&id).join("ipc");
    let out = std::process::Command::new("nsenter")
        .arg(format!("--ipc={}", ipc.display()))
        .args(["cat", "/proc/sys/kernel/shm_rmid_forced"])
        .output()
        .expect("nsenter");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    let host_value = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .expect("host sysctl");
    assert_ne!(host_value.trim(), "81", "the host's value is untouched");

    let pod_dir = d.root_dir.join("pods").join(&id);
    let resolv = std::fs::read_to_string(pod_dir.join("resolv.conf")).expect("resolv.conf");
    assert!(resolv.contains("nameserver 10.10.10.10"), "{resolv}");
    assert!(resolv.contains("search google.com"), "{resolv}");
    assert!(resolv.contains("options ndots:8"), "{resolv}");
    let hosts = std::fs::read_to_string(pod_dir.join("hosts")).expect("hosts");
    assert!(hosts.contains(&format!("{ip}\tweb-host")), "{hosts}");

    // Stop: network and namespaces released, idempotent.
    let mut c = d.client().await.expect("client");
    for _ in 0..2 {
        c.runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .expect("StopPodSandbox");
    }
    let s = status(&d, &id).await.status.expect("status");
    assert_eq!(s.state, i32::from(PodSandboxState::SandboxNotready));
    assert!(!ip_allocated(&ip), "IP released on stop");
    assert!(!netns.exists(), "netns unpinned on stop");

    // Remove: gone, idempotent, nothing left on disk.
    for _ in 0..2 {
        c.runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .expect("RemovePodSandbox");
    }
    let err = c
        .runtime
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .expect_err("removed");
    assert_eq!(err.code(), Code::NotFound);
    assert!(!pod_dir.exists());
    assert!(!d.state_dir.join("pods").join(&id).exists());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mountinfo.contains(&id), "no mount of the pod is left");
}

#[tokio::test]
async fn host_port_is_reachable_on_localhost() {
    let d = TestDaemon::start().await.expect("start");
    let mut config = pod_config("ports");
    config.port_mappings = vec![PortMapping {
        protocol: 0,
        container_port: 80,
        host_port: 12000,
        host_ip: String::new(),
    }];
    let id = run(&d, config).await.expect("RunPodSandbox");
    let server = serve_once_in_netns(&netns_pin(&d, &id), 80);
    assert_eq!(fetch("127.0.0.1:12000"), "hello from the pod");
    server.join().expect("server thread");
    stop_and_remove(&d, &id).await;
}

#[tokio::test]
async fn list_filters_by_id_prefix_state_and_labels() {
    let d = TestDaemon::start().await.expect("start");
    let a = run(&d, pod_config("a")).await.expect("a");
    let b = run(&d, pod_config("b")).await.expect("b");
    let mut c = d.client().await.expect("client");
    c.runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: b.clone(),
        })
        .await
        .expect("stop b");
    let list = |filter: Option<PodSandboxFilter>| {
        let mut c = c.clone();
        async move {
            let mut ids: Vec<String> = c
                .runtime
                .list_pod_sandbox(ListPodSandboxRequest { filter })
                .await
                .expect("ListPodSandbox")
                .into_inner()
                .items
                .into_iter()
                .map(|p| p.id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(list(None).await, both);
    assert_eq!(
        list(Some(PodSandboxFilter {
            id: a[..12].to_owned(),
            ..Default::default()
        }))
        .await,
        vec![a.clone()]
    );
    assert_eq!(
        list(Some(PodSandboxFilter {
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxReady.into(),
            }),
            ..Default::default()
        }))
        .await,
        vec![a.clone()]
    );
    assert_eq!(
        list(Some(PodSandboxFilter {
            label_selector: HashMap::from([("app".into(), "b".into())]),
            ..Default::default()
        }))
        .await,
        vec![b.clone()]
    );
    stop_and_remove(&d, &a).await;
    stop_and_remove(&d, &b).await;
}

#[tokio::test]
async fn bad_requests_are_refused_and_leave_nothing_behind() {
    let d = TestDaemon::start().await.expect("start");
    let id = run(&d, pod_config("dup")).await.expect("first");
    let err = run(&d, pod_config("dup")).await.expect_err("same name");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        err.message().contains(&id),
        "names the holder: {}",
        err.message()
    );

    let mut c = d.client().await.expect("client");
    let err = c
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config("h")),
            runtime_handler: "kata".into(),
        })
        .await
        .expect_err("unknown handler");
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut bad = pod_config("sysctl");
    bad.linux = Some(LinuxPodSandboxConfig {
        sysctls: HashMap::from([("kernel.panic".into(), "1".into())]),
        ..Default::default()
    });
    let err = run(&d, bad).await.expect_err("host-wide sysctl");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("kernel.panic"), "{}", err.message());

    // A failure after the network was set up (a sysctl that does not exist) is
    // rolled back: no record, no pin, no IP.
    let leases_before = leases();
    let mut late = pod_config("late");
    late.linux = Some(LinuxPodSandboxConfig {
        sysctls: HashMap::from([("net.ipv4.no_such_sysctl".into(), "1".into())]),
        ..Default::default()
    });
    let err = run(&d, late).await.expect_err("missing sysctl");
    assert!(
        err.message().contains("no_such_sysctl"),
        "{}",
        err.message()
    );
    assert_eq!(leases(), leases_before, "no IP leaked");

    let listed = c
        .runtime
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .items;
    assert_eq!(listed.len(), 1, "only the first pod exists: {listed:?}");
    let records: Vec<_> = std::fs::read_dir(d.root_dir.join("pods"))
        .expect("pods dir")
        .collect();
    assert_eq!(records.len(), 1);
    let pins: Vec<_> = std::fs::read_dir(d.state_dir.join("ns"))
        .expect("ns dir")
        .collect();
    assert_eq!(pins.len(), 1);

    // Idempotence on unknown ids.
    for unknown in ["0123456789abcdef", "nonexistent"] {
        c.runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: unknown.into(),
            })
            .await
            .expect("stop of an unknown pod is OK");
        c.runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: unknown.into(),
            })
            .await
            .expect("remove of an unknown pod is OK");
    }
    stop_and_remove(&d, &id).await;
}

fn leases() -> Vec<String> {
    let dir = Path::new("/var/lib/cni/networks").join(TEST_NETWORK);
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|e| {
            e.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn pods_survive_a_berthd_crash() {
    let mut d = TestDaemon::start().await.expect("start");
    let ready = run(&d, pod_config("survivor")).await.expect("run");
    let stopped = run(&d, pod_config("stopped")).await.expect("run");
    let mut c = d.client().await.expect("client");
    c.runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: stopped.clone(),
        })
        .await
        .expect("stop");
    let ip = status(&d, &ready)
        .await
        .status
        .expect("status")
        .network
        .expect("net")
        .ip;
    drop(c);

    d.kill().expect("SIGKILL berthd");
    d.restart().await.expect("restart");

    let s = status(&d, &ready).await.status.expect("status");
    assert_eq!(s.state, i32::from(PodSandboxState::SandboxReady));
    assert_eq!(s.network.expect("net").ip, ip, "same IP after restart");
    assert_eq!(s.labels["app"], "survivor");
    let s = status(&d, &stopped).await.status.expect("status");
    assert_eq!(s.state, i32::from(PodSandboxState::SandboxNotready));
    // Still reachable, and the name is still reserved.
    let server = serve_once_in_netns(&netns_pin(&d, &ready), 8081);
    assert_eq!(fetch(&format!("{ip}:8081")), "hello from the pod");
    server.join().expect("server");
    let err = run(&d, pod_config("survivor"))
        .await
        .expect_err("name kept");
    assert_eq!(err.code(), Code::AlreadyExists);

    stop_and_remove(&d, &ready).await;
    stop_and_remove(&d, &stopped).await;
    assert!(!ip_allocated(&ip));
}

#[tokio::test]
async fn crictl_pod_workflow() {
    let d = TestDaemon::start().await.expect("start");
    let dir = tempfile::tempdir().expect("tempdir");
    let pod_json = dir.path().join("pod.json");
    std::fs::write(
        &pod_json,
        r#"{"metadata":{"name":"crictl-pod","namespace":"default","uid":"crictl-uid","attempt":1},
            "hostname":"crictl-pod","log_directory":"/tmp","linux":{}}"#,
    )
    .expect("write");
    let ep = d.endpoint();
    let out = crictl(&ep, &["runp", pod_json.to_str().expect("utf8")])
        .await
        .expect("crictl")
        .success()
        .expect("crictl runp");
    let id = out.stdout().trim().to_owned();
    assert_eq!(id.len(), 64, "{id}");

    let pods = crictl(&ep, &["pods"])
        .await
        .expect("crictl")
        .success()
        .expect("pods");
    let line = pods
        .stdout()
        .lines()
        .find(|l| l.starts_with(&id[..13]))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("pod not listed: {}", pods.stdout()));
    assert!(
        line.contains("Ready") && line.contains("crictl-pod"),
        "{line}"
    );

    let inspect = crictl(&ep, &["inspectp", &id[..12]])
        .await
        .expect("crictl")
        .success()
        .expect("inspectp");
    let v: serde_json::Value = serde_json::from_str(&inspect.stdout()).expect("JSON");
    assert_eq!(v["status"]["state"], "SANDBOX_READY");
    assert!(
        v["status"]["network"]["ip"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.89.")),
        "{v}"
    );

    crictl(&ep, &["stopp", &id])
        .await
        .expect("crictl")
        .success()
        .expect("stopp");
    let pods = crictl(&ep, &["pods", "--state", "NotReady", "-q"])
        .await
        .expect("crictl")
        .success()
        .expect("pods");
    assert_eq!(pods.stdout().trim(), id);
    crictl(&ep, &["rmp", &id])
        .await
        .expect("crictl")
        .success()
        .expect("rmp");
    let pods = crictl(&ep, &["pods", "-q"])
        .await
        .expect("crictl")
        .success()
        .expect("pods");
    assert_eq!(pods.stdout().trim(), "");
}

#[tokio::test]
async fn critest_pod_sandbox_specs_pass() {
    use berth_integration::tools;
    let d = TestDaemon::start().await.expect("start");
    let critest = tools::tool("critest").expect("critest");
    let endpoint = d.endpoint();
    let out = tools::run(
        critest.as_os_str(),
        [
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
            // The sysctl and metrics specs run a container from busybox, which this
            // daemon (no registry mirror) cannot pull: they run in privileged_critest
            // and privileged_metrics, against a daemon with the local registry.
            r"--ginkgo.focus=\[k8s.io\] PodSandbox|Idempotence (Stop|Remove)PodSandbox",
            "--ginkgo.skip=sysctls|metrics operations",
            "--ginkgo.no-color",
        ],
        Duration::from_secs(300),
    )
    .await
    .expect("critest");
    let text = out.stdout();
    assert!(
        out.output.status.success() && text.contains("7 Passed | 0 Failed"),
        "critest:\n{text}\n{}",
        out.stderr()
    );
}

#[tokio::test]
async fn update_pod_sandbox_resources_resizes_the_pod_cgroup() {
    use berth_proto::v1::{LinuxContainerResources, UpdatePodSandboxResourcesRequest};
    let parent = format!("/berth-test-resize-{}", std::process::id());
    let _guard = berth_integration::cgroup::CgroupParent(parent.clone());
    let d = TestDaemon::start().await.expect("start");
    let mut config = pod_config("resize");
    config.linux = Some(LinuxPodSandboxConfig {
        cgroup_parent: parent.clone(),
        ..Default::default()
    });
    let id = run(&d, config).await.expect("RunPodSandbox");
    let mut c = d.client().await.expect("client");
    c.runtime
        .update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: id.clone(),
            overhead: None,
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: 128 << 20,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                ..Default::default()
            }),
        })
        .await
        .expect("UpdatePodSandboxResources");
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{parent}/memory.limit_in_bytes"
    ))
    .expect("pod memory cgroup");
    assert_eq!(limit.trim(), (128u64 << 20).to_string());
    let quota = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/cpu,cpuacct{parent}/cpu.cfs_quota_us"
    ))
    .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{parent}/cpu.cfs_quota_us")))
    .expect("pod cpu cgroup");
    assert_eq!(quota.trim(), "50000");
    let err = c
        .runtime
        .update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "nonexistent".into(),
            overhead: None,
            resources: None,
        })
        .await
        .expect_err("unknown pod");
    assert_eq!(err.code(), Code::NotFound);
    stop_and_remove(&d, &id).await;
}
