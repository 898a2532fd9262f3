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

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use berth_integration::CriClient;
use berth_integration::daemon::DaemonOptions;
use berth_integration::forge::BuiltImage;
use berth_integration::peer::{Containerd, PAUSE, PeerSpec, peer_busybox_image, remove_all_pods};
use berth_integration::registry::CRITEST_HOSTS;
use berth_integration::setup::Node;
use berth_integration::tools;
use berth_proto::v1 as cri;

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
/// Upper bound for one RPC; a runtime that takes longer is broken, not slow.
const RPC_TIMEOUT: Duration = Duration::from_secs(60);

/// The bench's busybox: [`peer_busybox_image`] (one both runtimes can run), pushed over
/// the busybox and pause tags of this run's throwaway registry, so both runtimes pull
/// exactly the same bytes under the usual names.
fn bench_image(entrypoint: &[&str], cmd: &[&str]) -> anyhow::Result<BuiltImage> {
    peer_busybox_image(&["sleep", "sh", "true"], entrypoint, cmd)
}

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

/// Set by SIGINT/SIGTERM: the bench stops between samples and cleans up. (A Ctrl-C
/// reaches the daemons too, being in the same process group; the clean-up copes.)
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

/// Awaits one RPC with a timeout, naming it in errors.
async fn rpc<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(RPC_TIMEOUT, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(anyhow::anyhow!(
            "{what}: {:?}: {}",
            status.code(),
            status.message()
        )),
        Err(_) => bail!("{what}: no answer within {RPC_TIMEOUT:?}"),
    }
}

struct Runtime {
    name: &'static str,
    client: CriClient,
    /// `unix://<socket>`, for crictl.
    endpoint: String,
    logs: PathBuf,
}

fn pod_config(rt: &Runtime, i: usize) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: format!("bench-{i}"),
            uid: format!("bench-{}-{i}", rt.name),
            namespace: "bench".to_owned(),
            attempt: 0,
        }),
        hostname: format!("bench-{i}"),
        log_directory: rt.logs.join(format!("pod-{i}")).display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

fn container_config() -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "main".to_owned(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: BUSYBOX.to_owned(),
            ..Default::default()
        }),
        command: vec!["sleep".to_owned(), "3600".to_owned()],
        log_path: "main.log".to_owned(),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

async fn pull(rt: &mut Runtime, image: &str) -> anyhow::Result<()> {
    rpc(
        "PullImage",
        rt.client.image.pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await
    .with_context(|| format!("{}: pulling {image}", rt.name))?;
    Ok(())
}

async fn describe(rt: &mut Runtime) -> String {
    let version = rpc(
        "Version",
        rt.client.runtime.version(cri::VersionRequest::default()),
    )
    .await
    .map(|v| format!("{} {}", v.runtime_name, v.runtime_version))
    .unwrap_or_else(|e| format!("version unknown ({e})"));
    let cgroup = match rpc(
        "RuntimeConfig",
        rt.client
            .runtime
            .runtime_config(cri::RuntimeConfigRequest::default()),
    )
    .await
    {
        Ok(c) => match c.linux.map(|l| l.cgroup_driver) {
            Some(d) if d == cri::CgroupDriver::Systemd as i32 => "systemd".to_owned(),
            Some(_) => "cgroupfs".to_owned(),
            None => "not reported".to_owned(),
        },
        Err(e) => format!("RuntimeConfig failed: {e}"),
    };
    format!("{version}, cgroup driver: {cgroup}")
}

// ---------------------------------------------------------------------------------
// Statistics and output
// ---------------------------------------------------------------------------------

/// Nearest-rank percentile of sorted durations, in ms.
fn pct(sorted: &[Duration], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len()).div_ceil(100);
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

fn sorted(v: impl Iterator<Item = Duration>) -> Vec<Duration> {
    let mut v: Vec<Duration> = v.collect();
    v.sort();
    v
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kb = proc_meminfo_total().unwrap_or(0);
    let cgroup = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "cgroup v2"
    } else if Path::new("/sys/fs/cgroup/unified").exists() {
        "cgroup v1 (hybrid)"
    } else {
        "cgroup v1"
    };
    let runc = Command::new("runc")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    format!(
        "{cores} cores, {:.0} GiB, kernel {}, {cgroup}, {runc}",
        mem_kb as f64 / 1048576.0,
        kernel.trim()
    )
}

fn proc_meminfo_total() -> Option<u64> {
    fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

// ---------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------

/// RunPodSandbox + CreateContainer + StartContainer; returns (pod id, container id).
async fn start_pod(rt: &mut Runtime) -> anyhow::Result<(String, String)> {
    let config = pod_config(rt, 0);
    let pod_id = rpc(
        "RunPodSandbox",
        rt.client
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }),
    )
    .await?
    .pod_sandbox_id;
    let ctr_id = rpc(
        "CreateContainer",
        rt.client
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(container_config()),
                sandbox_config: Some(config),
            }),
    )
    .await?
    .container_id;
    rpc(
        "StartContainer",
        rt.client
            .runtime
            .start_container(cri::StartContainerRequest {
                container_id: ctr_id.clone(),
            }),
    )
    .await?;
    Ok((pod_id, ctr_id))
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
    node.registry
        .push(
            "e2e-test-images/busybox",
            "1.29-2",
            &bench_image(&[], &["sh"])?,
        )
        .await
        .context("pushing the bench busybox")?;
    node.registry
        .push(
            "pause",
            "3.9",
            &bench_image(&["/bin/sleep", "2147483647"], &[])?,
        )
        .await
        .context("pushing the bench pause image")?;
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
    println!("berthd:     {}", describe(&mut berth).await);
    println!("containerd: {}", describe(&mut containerd).await);

    pull(&mut berth, BUSYBOX).await?;
    pull(&mut containerd, BUSYBOX).await?;
    pull(&mut containerd, PAUSE).await?;

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
