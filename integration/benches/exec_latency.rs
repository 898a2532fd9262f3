//! Exec round trip, berthd against containerd, in the same run on the same machine.
//!
//! One pod with one busybox `sleep 3600` container runs in each runtime (created
//! through the CRI API). Then, alternating which runtime goes first, each sample
//! times on both runtimes:
//! - `ExecSync(["true"])` through the CRI client, measured from the client;
//! - `crictl exec <id> true`, wall time of the real client process: Exec RPC, then
//!   the runtime's streaming server (SPDY, crictl's default);
//! - `crictl version`, the same client's start-up plus one trivial RPC: the floor
//!   under `crictl exec` that is not the runtime's.
//!
//! It prints median / p95 / p99 per runtime and the berth/containerd ratio.
//!
//! Run as root: `sudo cargo bench -p berth-integration --bench exec_latency`, after
//! `cargo build --release -p berth-server -p berth-runtime-core --bins` (the bench
//! starts `target/release/berthd`, or `$BERTHD_BIN`). Environment: `BENCH_SAMPLES`
//! (default 100), `BENCH_BERTH_LOG` (berthd's log level, default `info`).
//!
//! The peer is Debian's containerd (1.6) with its CRI plugin and runc, started by
//! `berth_integration::peer` (as pod_start's peers are) with its own root, state,
//! socket, certs.d mirrors to the same local registry as berthd's, and a bridge network
//! of its own (`berthbench2`, 10.91.0.0/16; distinct from pod_start's); its streaming
//! server listens on 127.0.0.1 (the CRI plugin's default). Everything containerd creates
//! (processes, shims, mounts, network namespaces, CNI state, NAT rules, cgroups) is
//! removed on exit, also on failure.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use berth_integration::CriClient;
use berth_integration::bench::{
    self, check_interrupted, describe, env_usize, install_signal_handlers, machine, pct, pull,
    push_bench_images, rpc, sorted,
};
use berth_integration::daemon::DaemonOptions;
use berth_integration::fixtures::BUSYBOX;
use berth_integration::peer::{Containerd, PAUSE, PeerSpec, remove_all_pods};
use berth_integration::registry::CRITEST_HOSTS;
use berth_integration::setup::Node;
use berth_integration::tools;
use berth_proto::v1 as cri;

/// The containerd peer: Debian's containerd 1.6 with runc, on a CNI network of its own
/// (pod_start's peers use theirs), so the two benches can run at the same time.
fn peer_spec() -> PeerSpec {
    PeerSpec {
        key: "containerd",
        bin_dir: None,
        config_version: 2,
        oci_runtime: "runc",
        network: "berth-bench-exec",
        bridge: "berthbench2",
        subnet: "10.91.0.0/16",
    }
}

struct Runtime {
    name: &'static str,
    client: CriClient,
    /// `unix://<socket>`, for crictl.
    endpoint: String,
    logs: PathBuf,
}

// ---------------------------------------------------------------------------------
// Statistics and output
// ---------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------

/// RunPodSandbox + CreateContainer + StartContainer; returns (pod id, container id).
async fn start_pod(rt: &mut Runtime) -> anyhow::Result<(String, String)> {
    let started = bench::start_pod(&mut rt.client, rt.name, &rt.logs, 0).await?;
    Ok((started.pod_id, started.container_id))
}

async fn remove_pod(rt: &mut Runtime, pod_id: &str) -> anyhow::Result<()> {
    rpc(
        "StopPodSandbox",
        rt.client
            .runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod_id.to_owned(),
            }),
    )
    .await?;
    rpc(
        "RemovePodSandbox",
        rt.client
            .runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.to_owned(),
            }),
    )
    .await?;
    Ok(())
}

/// One `ExecSync(["true"])`, timed from the client; a non-zero exit fails the bench.
async fn exec_sync(rt: &mut Runtime, ctr_id: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let resp = rpc(
        "ExecSync",
        rt.client.runtime.exec_sync(cri::ExecSyncRequest {
            container_id: ctr_id.to_owned(),
            cmd: vec!["true".to_owned()],
            timeout: 10,
        }),
    )
    .await
    .with_context(|| format!("{}: ExecSync true", rt.name))?;
    let elapsed = t0.elapsed();
    ensure!(
        resp.exit_code == 0,
        "{}: ExecSync true exited {}: {}",
        rt.name,
        resp.exit_code,
        String::from_utf8_lossy(&resp.stderr)
    );
    Ok(elapsed)
}

/// One `crictl exec <id> true`, wall time of the crictl process.
async fn crictl_exec(rt: &Runtime, ctr_id: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    tools::crictl(&rt.endpoint, &["exec", ctr_id, "true"])
        .await
        .and_then(tools::ToolOutput::success)
        .with_context(|| format!("{}: crictl exec true", rt.name))?;
    Ok(t0.elapsed())
}

/// One `crictl version`, wall time of the crictl process.
async fn crictl_version(rt: &Runtime) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    tools::crictl(&rt.endpoint, &["version"])
        .await
        .and_then(tools::ToolOutput::success)
        .with_context(|| format!("{}: crictl version", rt.name))?;
    Ok(t0.elapsed())
}

/// Timings of one sample on one runtime.
#[derive(Default)]
struct Samples {
    exec_sync: Vec<Duration>,
    crictl: Vec<Duration>,
    /// `crictl version`: the client's own start-up plus one trivial RPC, the floor
    /// under `crictl exec`.
    crictl_version: Vec<Duration>,
}

async fn sample(rt: &mut Runtime, ctr_id: &str, into: &mut Samples) -> anyhow::Result<()> {
    into.exec_sync.push(exec_sync(rt, ctr_id).await?);
    into.crictl.push(crictl_exec(rt, ctr_id).await?);
    into.crictl_version.push(crictl_version(rt).await?);
    Ok(())
}

/// Removes the bench's pod from berthd even when the bench fails.
struct PodGuard {
    socket: PathBuf,
}

impl Drop for PodGuard {
    fn drop(&mut self) {
        remove_all_pods(self.socket.clone());
    }
}

fn print_row(label: &str, berth: &[Duration], ctd: &[Duration]) {
    let (b, c) = (sorted(berth.iter().copied()), sorted(ctd.iter().copied()));
    for (name, p) in [("median", 50), ("p95", 95), ("p99", 99)] {
        let (bv, cv) = (pct(&b, p), pct(&c, p));
        println!(
            "| {label} {name} | {bv:.2} ms | {cv:.2} ms | {:.2} |",
            bv / cv
        );
    }
}

// ---------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let samples = env_usize("BENCH_SAMPLES", 100)?;
    ensure!(samples > 0, "BENCH_SAMPLES must be at least 1");
    // SAFETY: geteuid(2) has no preconditions.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "run as root: sudo cargo bench -p berth-integration --bench exec_latency"
    );
    let spec = peer_spec();
    if let Some(why) = spec.missing() {
        bail!("{why}");
    }
    let crictl = tools::tool("crictl")?;
    install_signal_handlers();
    println!("machine: {}", machine());
    println!("crictl: {}", crictl.display());
    println!("starting registry + berthd, and containerd…");
    let node = Node::start_with(DaemonOptions {
        log_level: std::env::var("BENCH_BERTH_LOG").unwrap_or_else(|_| "info".to_owned()),
        ..DaemonOptions::default()
    })
    .await
    .context("starting the registry and berthd")?;
    push_bench_images(&node.registry, &["sleep", "sh", "true"]).await?;
    let ctd = Containerd::start(&spec, &node.registry.url(), CRITEST_HOSTS)
        .await
        .context("starting containerd")?;
    let logs = tempfile::Builder::new()
        .prefix("berth-bench-logs-")
        .tempdir()
        .context("creating the pod log dir")?;
    let mut berth = Runtime {
        name: "berthd",
        client: node.daemon.client().await?,
        endpoint: node.daemon.endpoint(),
        logs: logs.path().join("berthd"),
    };
    let mut containerd = Runtime {
        name: "containerd",
        client: CriClient::connect(&ctd.socket).await?,
        endpoint: format!("unix://{}", ctd.socket.display()),
        logs: logs.path().join("containerd"),
    };
    println!("berthd:     {}", describe(&mut berth.client).await);
    println!("containerd: {}", describe(&mut containerd.client).await);

    pull(&mut berth.client, berth.name, BUSYBOX).await?;
    pull(&mut containerd.client, containerd.name, BUSYBOX).await?;
    pull(&mut containerd.client, containerd.name, PAUSE).await?;

    // The guard drops before `node` (declared later): berthd's pods go first.
    // containerd's are removed when `ctd` drops.
    let _berth_pods = PodGuard {
        socket: node.daemon.socket.clone(),
    };
    let (berth_pod, berth_ctr) = start_pod(&mut berth)
        .await
        .context("berthd: starting the pod")?;
    let (ctd_pod, ctd_ctr) = start_pod(&mut containerd)
        .await
        .context("containerd: starting the pod")?;

    // Untimed warm-up: first execs pay one-time costs (page cache, the streaming
    // server's first connection, crictl's binary in memory).
    let mut discard = Samples::default();
    for _ in 0..3 {
        sample(&mut berth, &berth_ctr, &mut discard).await?;
        sample(&mut containerd, &ctd_ctr, &mut discard).await?;
    }

    println!("{samples} samples per runtime, alternating…");
    let mut sb = Samples::default();
    let mut sc = Samples::default();
    for i in 1..=samples {
        check_interrupted()?;
        if i % 2 == 1 {
            sample(&mut berth, &berth_ctr, &mut sb).await?;
            sample(&mut containerd, &ctd_ctr, &mut sc).await?;
        } else {
            sample(&mut containerd, &ctd_ctr, &mut sc).await?;
            sample(&mut berth, &berth_ctr, &mut sb).await?;
        }
        if i % 20 == 0 || i == samples {
            println!("  {i}/{samples}");
        }
    }
    remove_pod(&mut berth, &berth_pod).await?;
    remove_pod(&mut containerd, &ctd_pod).await?;

    println!("\n{samples} serial samples per runtime\n");
    println!("| | berthd | containerd | berth/containerd |");
    println!("|---|---|---|---|");
    print_row("ExecSync(true)", &sb.exec_sync, &sc.exec_sync);
    print_row("`crictl exec <id> true`", &sb.crictl, &sc.crictl);
    print_row(
        "`crictl version` (client floor)",
        &sb.crictl_version,
        &sc.crictl_version,
    );
    Ok(())
}
