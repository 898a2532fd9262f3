//! The native built-in network on the real kernel: berthd (empty CNI conf dir,
//! `builtin_mode = "native"`) creates its bridge, veth pairs, addresses and routes
//! itself, allocates IPs in-process, runs portmap only for hostPort pods, and leaves
//! nothing behind on stop, remove, or a SIGKILL and restart.
//!
//! These tests use their own bridge and subnet (`berthnat0`, 10.93.0.0/16), so they
//! never collide with the shared CNI test network; a guard removes the bridge and the
//! masquerade rule even when a test fails.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_integration::daemon::{DaemonOptions, TestDaemon};
use berth_integration::fixtures;
use berth_integration::tools::{self, CritestRun};
use berth_proto::v1::{
    PodSandboxConfig, PodSandboxMetadata, PodSandboxState, PodSandboxStatusRequest, PortMapping,
    RemovePodSandboxRequest, StopPodSandboxRequest,
};

const BRIDGE: &str = "berthnat0";
const SUBNET: &str = "10.93.0.0/16";

/// Tests in this file share the bridge; under plain `cargo test` (threads) they take
/// turns, as nextest's one-at-a-time group makes them anyway.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Removes the test bridge and the native network's masquerade rule on drop.
struct NetGuard {
    conf_dir: tempfile::TempDir,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl NetGuard {
    fn new() -> Self {
        Self {
            _serial: SERIAL
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            conf_dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn cni_section(&self) -> String {
        format!(
            "[cni]\nconf_dir = {:?}\nbuiltin_mode = \"native\"\nbuiltin_bridge = \"{BRIDGE}\"\nbuiltin_subnet = \"{SUBNET}\"\n",
            self.conf_dir.path().display().to_string()
        )
    }
}

fn masquerade_rule() -> Vec<String> {
    [
        "POSTROUTING",
        "-s",
        SUBNET,
        "!",
        "-d",
        SUBNET,
        "-m",
        "comment",
        "--comment",
        &format!("berth native network {BRIDGE}"),
        "-j",
        "MASQUERADE",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn masquerade_rules() -> usize {
    let out = Command::new("iptables")
        .args(["-w", "10", "-t", "nat", "-S", "POSTROUTING"])
        .output()
        .expect("iptables -S");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("berth native network {BRIDGE}")))
        .count()
}

impl Drop for NetGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
        for _ in 0..10 {
            let deleted = Command::new("iptables")
                .args(["-w", "10", "-t", "nat", "-D"])
                .args(masquerade_rule())
                .output()
                .is_ok_and(|o| o.status.success());
            if !deleted {
                break;
            }
        }
    }
}

async fn daemon(guard: &NetGuard) -> TestDaemon {
    TestDaemon::start_with(DaemonOptions {
        cni_section: Some(guard.cni_section()),
        ..Default::default()
    })
    .await
    .expect("start berthd")
}

fn pod_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "berth-native".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        ..Default::default()
    }
}

async fn run(d: &TestDaemon, config: PodSandboxConfig) -> String {
    let mut c = d.client().await.expect("client");
    fixtures::run_pod(&mut c, &config).await
}

/// The pod's IP and the verbose info's `hostInterface`.
async fn ip_and_veth(d: &TestDaemon, id: &str) -> (String, String) {
    let mut c = d.client().await.expect("client");
    let st = c
        .runtime
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let s = st.status.expect("status");
    assert_eq!(s.state, i32::from(PodSandboxState::SandboxReady));
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).expect("info json");
    assert_eq!(info["network"], "berth-native", "{info}");
    (
        s.network.expect("network").ip,
        info["hostInterface"]
            .as_str()
            .expect("hostInterface")
            .to_owned(),
    )
}

async fn stop(d: &TestDaemon, id: &str) {
    let mut c = d.client().await.expect("client");
    c.runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .expect("StopPodSandbox");
}

async fn remove(d: &TestDaemon, id: &str) {
    let mut c = d.client().await.expect("client");
    c.runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .expect("RemovePodSandbox");
}

fn netns_pin(d: &TestDaemon, id: &str) -> PathBuf {
    d.state_dir.join("ns").join(id).join("net")
}

fn ip_file(d: &TestDaemon, ip: &str) -> PathBuf {
    d.state_dir.join("net").join("ips").join(ip)
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn link_master(name: &str) -> Option<String> {
    std::fs::read_link(Path::new("/sys/class/net").join(name).join("master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn iptables_mentions(id: &str) -> bool {
    let out = Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .expect("iptables-save");
    String::from_utf8_lossy(&out.stdout).contains(id)
}

/// Runs `f` on a thread inside the network namespace at `netns`.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let ns = std::fs::File::open(netns).expect("open netns");
    std::thread::spawn(move || {
        // SAFETY: setns(2) on a valid namespace fd moves only this thread.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// Serves one TCP connection on `port` inside the pod's netns, answering `reply`.
fn serve_once(netns: &Path, port: u16, reply: &'static str) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_netns(netns, move || {
        let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind in pod");
        tx.send(()).expect("ready");
        let (mut conn, _) = listener.accept().expect("accept");
        conn.write_all(reply.as_bytes()).expect("write");
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("listener ready");
    h
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

#[tokio::test]
async fn pods_get_addresses_reach_host_and_each_other_and_leave_nothing_behind() {
    let guard = NetGuard::new();
    let d = daemon(&guard).await;

    // Ready without any plugin run; the network is the native one.
    let mut c = d.client().await.expect("client");
    let (net, _) = berth_integration::fixtures::network_status(&mut c, false).await;
    assert!(net.status, "network not ready: {}", net.message);

    let a = run(&d, pod_config("a")).await;
    let b = run(&d, pod_config("b")).await;
    let (ip_a, veth_a) = ip_and_veth(&d, &a).await;
    let (ip_b, veth_b) = ip_and_veth(&d, &b).await;
    assert!(ip_a.starts_with("10.93."), "{ip_a}");
    assert!(ip_b.starts_with("10.93."), "{ip_b}");
    assert_ne!(ip_a, ip_b);
    assert_eq!(
        std::fs::read_to_string(ip_file(&d, &ip_a)).expect("IP file of a"),
        a,
        "the IP file names its pod"
    );
    assert_eq!(link_master(&veth_a).as_deref(), Some(BRIDGE));
    assert_eq!(link_master(&veth_b).as_deref(), Some(BRIDGE));
    assert_eq!(masquerade_rules(), 1, "one masquerade rule for the subnet");
    // Pods without hostPorts exec no plugin: no CNI result was cached.
    assert!(!d.root_dir.join("cni/results").exists());

    // Host → pod a.
    let server = serve_once(&netns_pin(&d, &a), 8080, "hello from a");
    assert_eq!(fetch(&format!("{ip_a}:8080")), "hello from a");
    server.join().expect("server");
    // Pod b → pod a, across the bridge.
    let server = serve_once(&netns_pin(&d, &a), 8081, "a to b");
    let target = format!("{ip_a}:8081");
    let got = in_netns(&netns_pin(&d, &b), move || fetch(&target))
        .join()
        .expect("client in b");
    assert_eq!(got, "a to b");
    server.join().expect("server");

    // Stop (twice: idempotent) deletes the veth and releases the IP.
    let pin_a = netns_pin(&d, &a);
    stop(&d, &a).await;
    stop(&d, &a).await;
    assert!(!link_exists(&veth_a), "veth {veth_a} deleted on stop");
    assert!(!ip_file(&d, &ip_a).exists(), "IP {ip_a} released on stop");
    assert!(!pin_a.exists(), "netns unpinned");
    assert!(link_exists(&veth_b), "the other pod keeps its veth");
    remove(&d, &a).await;
    remove(&d, &b).await;
    assert!(!link_exists(&veth_b));
    assert!(!ip_file(&d, &ip_b).exists());
    let left: Vec<String> = std::fs::read_dir(d.state_dir.join("net/ips"))
        .expect("ips dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "last_reserved")
        .collect();
    assert!(left.is_empty(), "IPAM files left: {left:?}");
}

#[tokio::test]
async fn host_port_goes_through_portmap_and_is_undone_on_stop() {
    let guard = NetGuard::new();
    let d = daemon(&guard).await;
    let mut config = pod_config("ports");
    config.port_mappings = vec![PortMapping {
        protocol: 0,
        container_port: 80,
        host_port: 12093,
        host_ip: String::new(),
    }];
    let id = run(&d, config).await;
    assert!(iptables_mentions(&id), "portmap installed its DNAT chain");
    let server = serve_once(&netns_pin(&d, &id), 80, "hello via hostPort");
    assert_eq!(fetch("127.0.0.1:12093"), "hello via hostPort");
    server.join().expect("server");
    stop(&d, &id).await;
    assert!(!iptables_mentions(&id), "portmap rules removed on stop");
    let cached: Vec<_> = std::fs::read_dir(d.root_dir.join("cni/results"))
        .map(|r| r.filter_map(Result::ok).collect())
        .unwrap_or_default();
    assert!(
        cached.is_empty(),
        "portmap result cache removed: {cached:?}"
    );
    remove(&d, &id).await;
}

#[tokio::test]
async fn teardown_after_sigkill_and_restart_still_cleans_up_and_never_reuses_a_live_ip() {
    let guard = NetGuard::new();
    let mut d = daemon(&guard).await;
    let a = run(&d, pod_config("survivor")).await;
    let (ip_a, veth_a) = ip_and_veth(&d, &a).await;

    d.kill().expect("SIGKILL berthd");
    // An address whose pod record is gone (berthd died between allocating it and
    // recording the pod) must go back to the pool at start-up.
    let orphan = ip_file(&d, "10.93.0.200");
    std::fs::write(&orphan, "f".repeat(64)).expect("write orphan IP file");
    d.restart().await.expect("restart");
    assert!(!orphan.exists(), "orphaned IP released at recovery");

    // The survivor keeps its address; a new pod gets another one; the masquerade rule
    // is not added twice by the second daemon.
    assert_eq!(ip_and_veth(&d, &a).await.0, ip_a);
    let b = run(&d, pod_config("newcomer")).await;
    let (ip_b, veth_b) = ip_and_veth(&d, &b).await;
    assert_ne!(ip_a, ip_b, "a live pod's IP is not reused");
    assert_eq!(masquerade_rules(), 1);
    let server = serve_once(&netns_pin(&d, &a), 8080, "still here");
    assert_eq!(fetch(&format!("{ip_a}:8080")), "still here");
    server.join().expect("server");

    stop(&d, &a).await;
    assert!(
        !link_exists(&veth_a),
        "veth deleted by the restarted berthd"
    );
    assert!(
        !ip_file(&d, &ip_a).exists(),
        "IP released by the restarted berthd"
    );
    remove(&d, &a).await;
    remove(&d, &b).await;
    assert!(!link_exists(&veth_b));
    assert!(!ip_file(&d, &ip_b).exists());
}

#[tokio::test]
async fn critest_networking_specs_pass_on_the_native_network() {
    let guard = NetGuard::new();
    let node = berth_integration::setup::Node::start_with(DaemonOptions {
        cni_section: Some(guard.cni_section()),
        ..Default::default()
    })
    .await
    .expect("node");
    let ep = node.daemon.endpoint();
    let CritestRun { out, text, summary } = tools::critest(
        &ep,
        &["--ginkgo.focus=Networking"],
        Duration::from_secs(600),
    )
    .await
    .expect("critest");
    assert!(
        out.output.status.success() && summary.contains("| 0 Failed |"),
        "critest networking failed: {summary}\n{text}\n{}",
        out.stderr()
    );
    assert!(
        !summary.contains(" 0 Passed"),
        "no networking spec ran: {summary}"
    );
    drop(node);
}
