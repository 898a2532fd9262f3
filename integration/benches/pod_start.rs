//! Pod + container start latency, throughput, kubelet-like polling and memory: berthd
//! against containerd peers, in the same run on the same machine, through the same CRI
//! client with the same pod and container configs.
//!
//! Runtimes: berthd the way a user gets it (when it has the native built-in network:
//! an empty CNI conf dir and `builtin_mode = "native"` on its own bridge
//! `berthbench0`, 10.92.0.0/16), plus — for the serial step only — a second berthd with
//! the exec'd CNI chain the peers use (bridge + host-local + portmap on the shared test
//! bridge `berthtest0`); then every peer of `BENCH_PEERS` that can run here:
//! `containerd` (Debian's 1.6 + runc, `berthbench1` 10.90.0.0/16), `containerd2`
//! (2.x built by integration/scripts/build-containerd2.sh + Debian's runc,
//! `berthbench3` 10.93.0.0/16), `containerd-crun` (Debian's 1.6 + crun,
//! `berthbench4` 10.94.0.0/16; crun 1.8 refuses hybrid cgroup hosts). A peer whose
//! binaries are missing is skipped with a loud message.
//!
//! Serial step: each iteration runs on every runtime (rotating which goes first):
//! RunPodSandbox (CNI bridge) + CreateContainer + StartContainer of busybox
//! `sleep 3600`, image present (timed), then StopPodSandbox + RemovePodSandbox (timed
//! separately): median / p95 / p99 per runtime and the berthd/peer ratios, the
//! daemons' RSS (started, idle before and after the run, with pods running) and the
//! per-pod monitor/shim memory (RSS and PSS) with `BENCH_PODS` pods running.
//!
//! Each scale step starts N pods (pod + container) from `BENCH_CLIENTS` concurrent
//! clients (throughput), polls ListPodSandbox / ListContainers / ContainerStatus /
//! ListContainerStats like kubelet with them running (latency), reads the daemon's RSS
//! and the summed PSS of the per-pod monitors or shims (runtime-side memory), then
//! tears them all down concurrently.
//!
//! Run as root: `sudo cargo bench -p berth-integration --bench pod_start`, after
//! `cargo build --release -p berth-server -p berth-runtime-core --bins` (the bench
//! starts `target/release/berthd`, or `$BERTHD_BIN`).
//! Environment: `BENCH_SAMPLES` (iterations, default 50), `BENCH_PODS` (pods running
//! for the memory figures, default 10), `BENCH_SCALE` (comma-separated pod counts for
//! the scale steps, default `100,500`), `BENCH_CLIENTS` (concurrent clients in the
//! scale steps, default 10), `BENCH_PEERS` (default `containerd,containerd2`),
//! `BENCH_BERTH_NETWORK` (`auto`, `native` or `plugins`), `BENCH_CHART_DIR` (where the
//! SVG charts go, default `target/bench-charts`; cargo runs benches in the package
//! directory, so give an absolute path), `BENCH_BERTH_LOG` (berthd's log
//! level, default `info` like containerd's; `debug` logs every RPC's duration).
//!
//! Each peer runs its CRI plugin with its own root, state and socket in a temp dir,
//! mirrors to the same local registry as berthd's (its own certs.d: containerd 1.6
//! rejects the `server`-only hosts.toml berthd reads), network namespaces under its
//! state dir, and its own bridge network. Everything the runtimes create (processes,
//! shims, mounts, network namespaces, CNI state, NAT rules, bridges, cgroups) is
//! removed on exit, also when the bench fails.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use berth_integration::CriClient;
use berth_integration::bench::{
    self, check_interrupted, describe, env_usize, install_signal_handlers, interrupted, machine,
    pct, pull, push_bench_images, rpc, sorted,
};
use berth_integration::daemon::DaemonOptions;
use berth_integration::fixtures::BUSYBOX;
use berth_integration::peer::{Containerd, PAUSE, peer_specs, pids_where};
use berth_integration::registry::CRITEST_HOSTS;
use berth_integration::setup::Node;
use berth_proto::v1 as cri;

// ---------------------------------------------------------------------------------
// ---------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------

/// A `kB` field of a /proc file (`VmRSS:` of status, `Pss:` of smaps_rollup).
fn proc_kb(pid: u32, file: &str, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    proc_kb(pid, "status", "VmRSS:").with_context(|| format!("reading VmRSS of pid {pid}"))
}

/// Summed RSS and PSS (kB) of `pids`.
fn sum_memory(pids: &[u32]) -> (u64, u64) {
    pids.iter().fold((0, 0), |(rss, pss), &pid| {
        (
            rss + proc_kb(pid, "status", "VmRSS:").unwrap_or(0),
            pss + proc_kb(pid, "smaps_rollup", "Pss:").unwrap_or(0),
        )
    })
}

// ---------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------

/// One runtime under test (a berthd or a containerd peer), under one client type.
#[derive(Clone)]
struct Runtime {
    /// Display name, with the version for peers.
    name: String,
    /// Short name for pod uids and log dirs.
    key: &'static str,
    /// berthd (the numerator of the ratios) or a peer (a denominator).
    berth: bool,
    /// Only in the serial start step (a second berthd configuration).
    serial_only: bool,
    client: CriClient,
    pid: u32,
    logs: PathBuf,
    /// Its per-pod processes (monitors or shims): `comm` prefix, and a string their
    /// command line holds (the daemon's dir or socket).
    per_pod_comm: &'static str,
    per_pod_needle: String,
}

impl Runtime {
    fn is_per_pod(&self, comm: &str, cmdline: &str) -> bool {
        comm.starts_with(self.per_pod_comm) && cmdline.contains(&self.per_pod_needle)
    }
}

/// Durations of one start and teardown.
#[derive(Debug, Clone, Copy)]
struct Sample {
    run_pod: Duration,
    create: Duration,
    start: Duration,
    teardown: Duration,
}

impl Sample {
    fn total(&self) -> Duration {
        self.run_pod + self.create + self.start
    }
}

/// RunPodSandbox + CreateContainer + StartContainer; returns the pod id.
async fn start_pod(rt: &mut Runtime, i: usize) -> anyhow::Result<(String, [Duration; 3])> {
    let started = bench::start_pod(&mut rt.client, rt.key, &rt.logs, i).await?;
    Ok((started.pod_id, started.times))
}

/// StopPodSandbox + RemovePodSandbox (both runtimes remove the pod's containers with
/// it; a runtime that refused would fail the bench here, not hide the cost).
async fn remove_pod(rt: &mut Runtime, pod_id: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
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
    Ok(t0.elapsed())
}

async fn cycle(rt: &mut Runtime, i: usize) -> anyhow::Result<Sample> {
    let (pod_id, [run_pod, create, start]) = start_pod(rt, i)
        .await
        .with_context(|| format!("{}: starting pod {i}", rt.name))?;
    let teardown = remove_pod(rt, &pod_id)
        .await
        .with_context(|| format!("{}: tearing down pod {i}", rt.name))?;
    Ok(Sample {
        run_pod,
        create,
        start,
        teardown,
    })
}

/// After a run, nothing of it may remain listed: a leak would make later samples
/// (and the memory figures) meaningless.
async fn ensure_empty(rt: &mut Runtime) -> anyhow::Result<()> {
    let pods = rpc(
        "ListPodSandbox",
        rt.client
            .runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest::default()),
    )
    .await?
    .items;
    let ctrs = rpc(
        "ListContainers",
        rt.client
            .runtime
            .list_containers(cri::ListContainersRequest::default()),
    )
    .await?
    .containers;
    ensure!(
        pods.is_empty() && ctrs.is_empty(),
        "{}: {} pods and {} containers left after teardown",
        rt.name,
        pods.len(),
        ctrs.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Statistics and output
// ---------------------------------------------------------------------------------

/// The report table: one value column per runtime, then one ratio column per
/// (berthd, peer) pair.
struct Table<'a> {
    out: String,
    rts: &'a [Runtime],
}

impl<'a> Table<'a> {
    fn new(rts: &'a [Runtime]) -> Self {
        let mut out = String::from("|");
        for rt in rts {
            let _ = write!(out, " | {}", rt.name);
        }
        for (b, p) in Self::pairs(rts) {
            let _ = write!(out, " | {}/{}", rts[b].name, rts[p].name);
        }
        out.push_str(" |\n|---|");
        for _ in 0..rts.len() + Self::pairs(rts).len() {
            out.push_str("---|");
        }
        out.push('\n');
        Self { out, rts }
    }

    fn pairs(rts: &[Runtime]) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        for (b, _) in rts.iter().enumerate().filter(|(_, r)| r.berth) {
            for (p, _) in rts.iter().enumerate().filter(|(_, r)| !r.berth) {
                v.push((b, p));
            }
        }
        v
    }

    /// A row; `None` where a runtime was not measured for it.
    fn row(&mut self, label: &str, vals: &[Option<f64>], unit: &str) {
        let _ = write!(self.out, "| {label}");
        for v in vals {
            match v {
                Some(v) if unit.is_empty() => {
                    let _ = write!(self.out, " | {v:.1}");
                }
                Some(v) => {
                    let _ = write!(self.out, " | {v:.1} {unit}");
                }
                None => self.out.push_str(" | —"),
            }
        }
        for (b, p) in Self::pairs(self.rts) {
            match (vals[b], vals[p]) {
                (Some(b), Some(p)) => {
                    let _ = write!(self.out, " | {:.2}", b / p);
                }
                _ => self.out.push_str(" | —"),
            }
        }
        self.out.push_str(" |\n");
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The 1/5/15-minute load averages: the machine is shared, and other work on its two
/// cores shifts the figures (compare ratios within one run).
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Memory with `n` pods running on one runtime: daemon RSS, and the summed RSS/PSS
/// of the per-pod processes that `per_pod` selects (monitors or shims).
struct PodsMemory {
    daemon_rss_kb: u64,
    procs: usize,
    rss_kb: u64,
    pss_kb: u64,
}

async fn memory_with_pods(rt: &mut Runtime, n: usize) -> anyhow::Result<PodsMemory> {
    let mut pods = Vec::new();
    let mut result = Ok(());
    for i in 0..n {
        if let Err(e) = check_interrupted() {
            result = Err(e);
            break;
        }
        match start_pod(rt, 10_000 + i).await {
            Ok((id, _)) => pods.push(id),
            Err(e) => {
                result = Err(e.context(format!("{}: starting pod {i} of {n}", rt.name)));
                break;
            }
        }
    }
    let measured = async {
        result?;
        // Let start-up allocations settle before reading memory.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pids = pids_where(|comm, cmdline| rt.is_per_pod(comm, cmdline));
        let (procs_rss, procs_pss) = sum_memory(&pids);
        Ok::<_, anyhow::Error>(PodsMemory {
            daemon_rss_kb: rss_kb(rt.pid)?,
            procs: pids.len(),
            rss_kb: procs_rss,
            pss_kb: procs_pss,
        })
    }
    .await;
    for id in pods {
        remove_pod(rt, &id).await?;
    }
    measured
}

// ---------------------------------------------------------------------------------
// Scale: many pods started by concurrent clients, kubelet-like polling with them
// running, memory, and concurrent teardown.

/// Figures of one scale step on one runtime.
struct Scale {
    n: usize,
    start_total: Duration,
    teardown_total: Duration,
    /// Median and p99 per polled RPC, in the order of `POLLED`.
    polls: Vec<(f64, f64)>,
    daemon_rss_kb: u64,
    procs: usize,
    pss_kb: u64,
}

impl Scale {
    fn pods_per_sec(&self) -> f64 {
        self.n as f64 / self.start_total.as_secs_f64()
    }
    /// Daemon RSS plus the summed PSS of the per-pod processes (monitors or shims).
    fn runtime_side_kb(&self) -> u64 {
        self.daemon_rss_kb + self.pss_kb
    }
}

const POLLED: [&str; 4] = [
    "ListPodSandbox",
    "ListContainers",
    "ContainerStatus",
    "ListContainerStats",
];
/// Samples per polled RPC: the listings and status answer in about a millisecond, so
/// many samples are cheap and steady their median; ListContainerStats takes seconds
/// on a peer with 500 pods, so it gets fewer.
const POLL_SAMPLES: usize = 100;
const STATS_POLL_SAMPLES: usize = 20;

/// Runs `work(i)` for i in 0..n on `clients` concurrent tasks, each with its own copy
/// of the runtime's client; returns the wall time and the first error.
async fn concurrently<F, Fut, T>(
    rt: &Runtime,
    n: usize,
    clients: usize,
    progress: &str,
    work: F,
) -> (Duration, Vec<T>, Option<anyhow::Error>)
where
    F: Fn(Runtime, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send,
    T: Send + 'static,
{
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Progress about five times per step, so a long step shows it is moving.
    let every = n.div_ceil(5).max(1);
    let progress = std::sync::Arc::new(progress.to_owned());
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (rt, next, work) = (rt.clone(), next.clone(), work.clone());
        let (finished, progress) = (finished.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n || interrupted() {
                    return (done, None);
                }
                match work(rt.clone(), i).await {
                    Ok(v) => {
                        done.push(v);
                        let k = finished.fetch_add(1, Ordering::SeqCst) + 1;
                        if k % every == 0 || k == n {
                            println!("{progress} {k}/{n} ({:.0} s)", t0.elapsed().as_secs_f64());
                        }
                    }
                    Err(e) => {
                        // Stop the other clients too.
                        next.store(n, Ordering::SeqCst);
                        return (done, Some(e));
                    }
                }
            }
        }));
    }
    let mut out = Vec::new();
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok((done, err)) => {
                out.extend(done);
                if first_err.is_none() {
                    first_err = err;
                }
            }
            Err(e) => first_err = first_err.or(Some(anyhow::anyhow!("client task: {e}"))),
        }
    }
    (t0.elapsed(), out, first_err)
}

async fn poll_latencies(rt: &mut Runtime) -> anyhow::Result<Vec<(f64, f64)>> {
    let ctrs = rpc(
        "ListContainers",
        rt.client
            .runtime
            .list_containers(cri::ListContainersRequest::default()),
    )
    .await?
    .containers;
    ensure!(!ctrs.is_empty(), "{}: no containers to poll", rt.name);
    let mut out = Vec::new();
    for name in POLLED {
        let count = if name == "ListContainerStats" {
            STATS_POLL_SAMPLES
        } else {
            POLL_SAMPLES
        };
        let mut d = Vec::with_capacity(count);
        for i in 0..count {
            let t0 = Instant::now();
            match name {
                "ListPodSandbox" => {
                    rpc(
                        name,
                        rt.client
                            .runtime
                            .list_pod_sandbox(cri::ListPodSandboxRequest::default()),
                    )
                    .await?;
                }
                "ListContainers" => {
                    rpc(
                        name,
                        rt.client
                            .runtime
                            .list_containers(cri::ListContainersRequest::default()),
                    )
                    .await?;
                }
                "ContainerStatus" => {
                    rpc(
                        name,
                        rt.client
                            .runtime
                            .container_status(cri::ContainerStatusRequest {
                                container_id: ctrs[i % ctrs.len()].id.clone(),
                                verbose: false,
                            }),
                    )
                    .await?;
                }
                _ => {
                    rpc(
                        name,
                        rt.client
                            .runtime
                            .list_container_stats(cri::ListContainerStatsRequest::default()),
                    )
                    .await?;
                }
            }
            d.push(t0.elapsed());
        }
        let d = sorted(d.into_iter());
        out.push((pct(&d, 50), pct(&d, 99)));
    }
    Ok(out)
}

async fn scale(rt: &mut Runtime, n: usize, clients: usize) -> anyhow::Result<Scale> {
    let base = 100_000 + n * 10;
    let what = format!("  {}: pods started", rt.name);
    let (start_total, pods, err) =
        concurrently(rt, n, clients, &what, move |mut rt, i| async move {
            start_pod(&mut rt, base + i)
                .await
                .with_context(|| format!("{}: starting pod {i}", rt.name))
                .map(|(id, _)| id)
        })
        .await;
    let measured = async {
        if let Some(e) = err {
            return Err(e.context(format!("{}: starting {n} pods", rt.name)));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("  {}: polling like kubelet with {n} pods…", rt.name);
        let polls = poll_latencies(rt).await?;
        let pids = pids_where(|comm, cmdline| rt.is_per_pod(comm, cmdline));
        let (_, pss_kb) = sum_memory(&pids);
        Ok::<_, anyhow::Error>((polls, rss_kb(rt.pid)?, pids.len(), pss_kb))
    }
    .await;
    let pods = std::sync::Arc::new(pods);
    let ids = pods.clone();
    let what = format!("  {}: pods removed", rt.name);
    let (teardown_total, _, terr) =
        concurrently(rt, pods.len(), clients, &what, move |mut rt, i| {
            let ids = ids.clone();
            async move { remove_pod(&mut rt, &ids[i]).await }
        })
        .await;
    let (polls, daemon_rss_kb, procs, pss_kb) = measured?;
    if let Some(e) = terr {
        return Err(e.context(format!("{}: tearing down {n} pods", rt.name)));
    }
    Ok(Scale {
        n,
        start_total,
        teardown_total,
        polls,
        daemon_rss_kb,
        procs,
        pss_kb,
    })
}

// ---------------------------------------------------------------------------------
// Charts: small hand-written SVG line charts (no plotting dependency for two charts).

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

fn svg_chart(title: &str, x_label: &str, y_label: &str, series: &[Series<'_>]) -> String {
    let (w, h, l, r, t, b) = (640.0, 400.0, 70.0, 20.0, 40.0, 50.0);
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = all.clone().map(|p| p.0).fold(0.0_f64, f64::max).max(1e-9) * 1.05;
    let y_max = all.map(|p| p.1).fold(0.0_f64, f64::max).max(1e-9) * 1.1;
    let sx = |x: f64| l + x / x_max * (w - l - r);
    let sy = |y: f64| h - b - y / y_max * (h - t - b);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n",
        w / 2.0
    );
    for k in 0..=5 {
        let (xv, yv) = (x_max * k as f64 / 5.0, y_max * k as f64 / 5.0);
        let _ = writeln!(
            svg,
            "<line x1=\"{l}\" y1=\"{y:.1}\" x2=\"{x2}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{yv:.0}</text>\
             <text x=\"{xx:.1}\" y=\"{xy}\" text-anchor=\"middle\">{xv:.0}</text>",
            y = sy(yv),
            x2 = w - r,
            tx = l - 6.0,
            ty = sy(yv) + 4.0,
            xx = sx(xv),
            xy = h - b + 16.0,
        );
    }
    let _ = writeln!(
        svg,
        "<line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{yb}\" stroke=\"black\"/>\
         <line x1=\"{l}\" y1=\"{yb}\" x2=\"{xr}\" y2=\"{yb}\" stroke=\"black\"/>\
         <text x=\"{xc}\" y=\"{xl}\" text-anchor=\"middle\">{x_label}</text>\
         <text x=\"16\" y=\"{yc}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {yc})\">{y_label}</text>",
        yb = h - b,
        xr = w - r,
        xc = (l + w - r) / 2.0,
        xl = h - 12.0,
        yc = (t + h - b) / 2.0,
    );
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{p}\"/>",
            c = s.color,
            p = pts.join(" ")
        );
        for &(x, y) in s.points.iter().filter(|_| s.points.len() <= 12) {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>",
                sx(x),
                sy(y),
                s.color
            );
        }
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"{y}\" width=\"12\" height=\"12\" fill=\"{c}\"/><text x=\"{tx}\" y=\"{ty}\">{n}</text>",
            x = l + 10.0,
            y = t + 6.0 + 18.0 * i as f64,
            c = s.color,
            tx = l + 28.0,
            ty = t + 16.0 + 18.0 * i as f64,
            n = s.name
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Sorted samples as a cumulative distribution: (latency ms, percent of samples).
fn cdf(sorted: &[Duration]) -> Vec<(f64, f64)> {
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(i, d)| (d.as_secs_f64() * 1e3, (i + 1) as f64 / n * 100.0))
        .collect()
}

// ---------------------------------------------------------------------------------

/// berthd's built-in default network the bench gives its main berthd: native mode
/// (in-process bridge/veth/IPAM) on a bridge of its own, with an empty CNI conf dir,
/// the way a user gets berthd out of the box.
const NATIVE_BRIDGE: &str = "berthbench0";
const NATIVE_SUBNET: &str = "10.92.0.0/16";

/// Whether this berthd has the native built-in network (`builtin_mode` in its
/// default config).
fn berthd_has_native_network() -> bool {
    let bin = berth_integration::daemon::TestDaemon::binary();
    bin.ok()
        .and_then(|b| Command::new(b).args(["config", "default"]).output().ok())
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains("builtin_mode"))
}

/// Deletes the native network's bridge and the masquerade rule berthd adds for its
/// subnet when the bench ends (declared before the daemons, so it drops after them).
struct NativeBridgeCleanup(bool);

impl Drop for NativeBridgeCleanup {
    fn drop(&mut self) {
        if !self.0 {
            return;
        }
        let _ = Command::new("ip")
            .args(["link", "del", NATIVE_BRIDGE])
            .stderr(Stdio::null())
            .status();
        let comment = format!("berth native network {NATIVE_BRIDGE}");
        let rule = [
            "POSTROUTING",
            "-s",
            NATIVE_SUBNET,
            "!",
            "-d",
            NATIVE_SUBNET,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "MASQUERADE",
        ];
        // Once per copy of the rule (berthd adds it once per daemon start).
        for _ in 0..8 {
            let removed = Command::new("iptables")
                .args(["-w", "10", "-t", "nat", "-D"])
                .args(rule)
                .stderr(Stdio::null())
                .status();
            if !removed.is_ok_and(|s| s.success()) {
                break;
            }
        }
    }
}

/// `1.6.20~ds1` → `1.6.20`; `v2.4.2` → `2.4.2`.
fn short_version(v: &str) -> String {
    v.trim_start_matches('v')
        .split(['~', '+', '-'])
        .next()
        .unwrap_or(v)
        .to_owned()
}

async fn version_of(client: &mut CriClient) -> String {
    rpc(
        "Version",
        client.runtime.version(cri::VersionRequest::default()),
    )
    .await
    .map(|v| short_version(&v.runtime_version))
    .unwrap_or_default()
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];
const LIGHT_COLORS: [&str; 6] = [
    "#aec7e8", "#ff9896", "#98df8a", "#c5b0d5", "#ffbb78", "#c49c94",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bench_start = Instant::now();
    let samples = env_usize("BENCH_SAMPLES", 50)?;
    let n_pods = env_usize("BENCH_PODS", 10)?;
    let clients = env_usize("BENCH_CLIENTS", 10)?;
    let scale_counts: Vec<usize> = std::env::var("BENCH_SCALE")
        .unwrap_or_else(|_| "100,500".to_owned())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .with_context(|| format!("BENCH_SCALE entry {s:?} is not a number"))
        })
        .collect::<anyhow::Result<_>>()?;
    let peer_keys: Vec<String> = std::env::var("BENCH_PEERS")
        .unwrap_or_else(|_| "containerd,containerd2".to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    ensure!(samples > 0, "BENCH_SAMPLES must be at least 1");
    // SAFETY: geteuid(2) has no preconditions.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "run as root: sudo cargo bench -p berth-integration --bench pod_start"
    );
    let known = peer_specs();
    for k in &peer_keys {
        ensure!(
            known.iter().any(|s| s.key == k),
            "BENCH_PEERS: unknown peer {k:?} (known: containerd, containerd2, containerd-crun)"
        );
    }
    let mut specs = Vec::new();
    for spec in known
        .into_iter()
        .filter(|s| peer_keys.iter().any(|k| k == s.key))
    {
        match spec.missing() {
            None => specs.push(spec),
            Some(why) => eprintln!(
                "\n!!!!!!!! SKIPPING PEER {}: {why}\n!!!!!!!! its figures are missing from this run\n",
                spec.key
            ),
        }
    }
    ensure!(
        !specs.is_empty(),
        "no containerd peer can run here (see above); nothing to compare berthd with"
    );
    install_signal_handlers();
    println!("machine: {}", machine());
    println!("load average at start: {}", load_average());

    // berthd the way a user gets it: native built-in network when this berthd has
    // it (and BENCH_BERTH_NETWORK is not `plugins`); then a second berthd with the
    // exec'd CNI chain containerd uses, for the serial start step only.
    let mode = std::env::var("BENCH_BERTH_NETWORK").unwrap_or_else(|_| "auto".to_owned());
    ensure!(
        ["auto", "native", "plugins"].contains(&mode.as_str()),
        "BENCH_BERTH_NETWORK={mode:?}: expected auto, native or plugins"
    );
    let native = match mode.as_str() {
        "plugins" => false,
        "native" => true,
        _ => berthd_has_native_network(),
    };
    if !native {
        println!(
            "berthd: exec'd CNI plugins (bridge + host-local + portmap, like containerd){}",
            if mode == "auto" {
                "; this berthd has no native built-in network"
            } else {
                ""
            }
        );
    }
    let _native_cleanup = NativeBridgeCleanup(native);
    let log_level = std::env::var("BENCH_BERTH_LOG").unwrap_or_else(|_| "info".to_owned());
    println!("starting registry + berthd…");
    let empty_conf = tempfile::Builder::new()
        .prefix("berth-bench-cni-")
        .tempdir()
        .context("creating an empty CNI conf dir")?;
    let node = Node::start_with(DaemonOptions {
        log_level: log_level.clone(),
        cni_section: native.then(|| {
            format!(
                "[cni]\nconf_dir = {:?}\nbuiltin_mode = \"native\"\nbuiltin_bridge = {NATIVE_BRIDGE:?}\nbuiltin_subnet = {NATIVE_SUBNET:?}\n",
                empty_conf.path().display().to_string()
            )
        }),
        ..DaemonOptions::default()
    })
    .await
    .context("starting the registry and berthd")?;
    let berth_cni = if native {
        println!("starting a second berthd with the exec'd CNI chain (serial step only)…");
        Some(
            berth_integration::daemon::TestDaemon::start_with(DaemonOptions {
                log_level: log_level.clone(),
                extra_config: format!(
                    "\n[registry]\nconfig_path = {:?}\nstall_timeout_secs = 20\n",
                    node.certs.path().display().to_string()
                ),
                ..DaemonOptions::default()
            })
            .await
            .context("starting the second berthd")?,
        )
    } else {
        None
    };
    push_bench_images(&node.registry, &["sleep", "sh"]).await?;
    let logs = tempfile::Builder::new()
        .prefix("berth-bench-logs-")
        .tempdir()
        .context("creating the pod log dir")?;
    let mut rts = vec![Runtime {
        name: if native {
            "berthd".to_owned()
        } else {
            "berthd (CNI plugins)".to_owned()
        },
        key: "berthd",
        berth: true,
        serial_only: false,
        client: node.daemon.client().await?,
        pid: node.daemon.pid().context("berthd is not running")?,
        logs: logs.path().join("berthd"),
        per_pod_comm: "berth-monitor",
        per_pod_needle: node.daemon.dir().display().to_string(),
    }];
    if let Some(d) = &berth_cni {
        rts.push(Runtime {
            name: "berthd (CNI plugins)".to_owned(),
            key: "berthd-cni",
            berth: true,
            serial_only: true,
            client: d.client().await?,
            pid: d.pid().context("the second berthd is not running")?,
            logs: logs.path().join("berthd-cni"),
            per_pod_comm: "berth-monitor",
            per_pod_needle: d.dir().display().to_string(),
        });
    }
    // Peers start one after the other; each is dropped (stopped and cleaned up) at the
    // end, or when the bench fails.
    let mut peers = Vec::new();
    for spec in &specs {
        println!("starting {}…", spec.key);
        let ctd = Containerd::start(spec, &node.registry.url(), CRITEST_HOSTS)
            .await
            .with_context(|| format!("starting {}", spec.key))?;
        let mut client = CriClient::connect(&ctd.socket).await?;
        let version = version_of(&mut client).await;
        let name = match spec.oci_runtime {
            "runc" => format!("containerd {version}"),
            other => format!("containerd {version} + {other}"),
        };
        rts.push(Runtime {
            name,
            key: spec.key,
            berth: false,
            serial_only: false,
            client,
            pid: ctd.pid().context("containerd is not running")?,
            logs: logs.path().join(spec.key),
            per_pod_comm: "containerd-shim",
            per_pod_needle: ctd.socket.display().to_string(),
        });
        peers.push(ctd);
    }
    let started: Vec<u64> = rts
        .iter()
        .map(|r| rss_kb(r.pid))
        .collect::<anyhow::Result<_>>()?;
    for rt in &mut rts {
        let d = describe(&mut rt.client).await;
        println!("{}: {d}", rt.name);
    }
    for rt in &mut rts {
        pull(&mut rt.client, &rt.name, BUSYBOX).await?;
        if !rt.berth {
            pull(&mut rt.client, &rt.name, PAUSE).await?;
        }
    }

    // One untimed cycle each: the first pod pays one-time costs (CNI bridge
    // creation, iptables chains, page cache) that a running node has paid already.
    let mut warm = Vec::new();
    for rt in &mut rts {
        let w = cycle(rt, 0).await?;
        warm.push(format!(
            "{} {:.1} ms",
            rt.name,
            w.total().as_secs_f64() * 1e3
        ));
    }
    println!("warm-up (untimed) start: {}", warm.join(", "));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_before: Vec<u64> = rts
        .iter()
        .map(|r| rss_kb(r.pid))
        .collect::<anyhow::Result<_>>()?;

    let n_rt = rts.len();
    println!("{samples} serial iterations on {n_rt} runtimes, rotating which goes first…");
    let mut serial: Vec<Vec<Sample>> = vec![Vec::with_capacity(samples); n_rt];
    for i in 1..=samples {
        check_interrupted()?;
        for k in 0..n_rt {
            let j = (i + k) % n_rt;
            serial[j].push(cycle(&mut rts[j], i).await?);
        }
        if i % 10 == 0 || i == samples {
            println!(
                "  {i}/{samples} ({:.0} s since the bench started)",
                bench_start.elapsed().as_secs_f64()
            );
        }
    }
    println!("load average after the samples: {}", load_average());
    for rt in &mut rts {
        ensure_empty(rt).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_after: Vec<u64> = rts
        .iter()
        .map(|r| rss_kb(r.pid))
        .collect::<anyhow::Result<_>>()?;

    println!("memory with {n_pods} pods running on each runtime…");
    let mut mem: Vec<Option<PodsMemory>> = Vec::new();
    for rt in &mut rts {
        if rt.serial_only {
            mem.push(None);
            continue;
        }
        mem.push(Some(memory_with_pods(rt, n_pods).await?));
        ensure_empty(rt).await?;
    }

    let mut scales: Vec<Vec<Option<Scale>>> = Vec::new();
    for &n in &scale_counts {
        println!("scale: {n} pods started by {clients} concurrent clients on each runtime…");
        let mut step = Vec::new();
        for rt in &mut rts {
            if rt.serial_only {
                step.push(None);
                continue;
            }
            check_interrupted()?;
            let s = scale(rt, n, clients).await?;
            ensure_empty(rt).await?;
            println!(
                "  {}: {n} pods at {:.1} pods/s ({:.0} s since the bench started)",
                rt.name,
                s.pods_per_sec(),
                bench_start.elapsed().as_secs_f64()
            );
            step.push(Some(s));
        }
        scales.push(step);
    }

    // Report, as a markdown table.
    let mut t = Table::new(&rts);
    let totals: Vec<Vec<Duration>> = serial
        .iter()
        .map(|v| sorted(v.iter().map(Sample::total)))
        .collect();
    let all =
        |f: &dyn Fn(usize) -> f64| -> Vec<Option<f64>> { (0..n_rt).map(|k| Some(f(k))).collect() };
    for (label, p) in [("median", 50), ("p95", 95), ("p99", 99)] {
        t.row(
            &format!("pod+container start {label}"),
            &all(&|k| pct(&totals[k], p)),
            "ms",
        );
    }
    type Phase = fn(&Sample) -> Duration;
    let phases: [(&str, Phase); 3] = [
        ("RunPodSandbox", |s| s.run_pod),
        ("CreateContainer", |s| s.create),
        ("StartContainer", |s| s.start),
    ];
    for (label, f) in phases {
        t.row(
            &format!("— {label} median"),
            &all(&|k| pct(&sorted(serial[k].iter().map(f)), 50)),
            "ms",
        );
    }
    let teardowns: Vec<Vec<Duration>> = serial
        .iter()
        .map(|v| sorted(v.iter().map(|s| s.teardown)))
        .collect();
    for (label, p) in [("median", 50), ("p95", 95), ("p99", 99)] {
        t.row(
            &format!("teardown (Stop+Remove pod) {label}"),
            &all(&|k| pct(&teardowns[k], p)),
            "ms",
        );
    }
    for (label, v) in [
        ("daemon RSS just started", &started),
        ("daemon RSS idle, before the run", &idle_before),
        ("daemon RSS idle, after the run", &idle_after),
    ] {
        t.row(label, &all(&|k| mb(v[k])), "MB");
    }
    let memf = |f: &dyn Fn(&PodsMemory) -> f64| -> Vec<Option<f64>> {
        mem.iter().map(|m| m.as_ref().map(f)).collect()
    };
    let n = n_pods.max(1) as u64;
    t.row(
        &format!("daemon RSS with {n_pods} pods"),
        &memf(&|m| mb(m.daemon_rss_kb)),
        "MB",
    );
    let procs: Vec<String> = mem.iter().flatten().map(|m| m.procs.to_string()).collect();
    t.row(
        &format!(
            "per pod: monitor / shim RSS ({} processes)",
            procs.join(" / ")
        ),
        &memf(&|m| mb(m.rss_kb / n)),
        "MB",
    );
    t.row(
        "per pod: monitor / shim PSS",
        &memf(&|m| mb(m.pss_kb / n)),
        "MB",
    );
    for step in &scales {
        let Some(n) = step.iter().flatten().map(|s| s.n).next() else {
            continue;
        };
        let sf = |f: &dyn Fn(&Scale) -> f64| -> Vec<Option<f64>> {
            step.iter().map(|s| s.as_ref().map(f)).collect()
        };
        t.row(
            &format!("{n} pods, {clients} clients: throughput (pods/s, higher is better)"),
            &sf(&Scale::pods_per_sec),
            "",
        );
        t.row(
            &format!("{n} pods: time to start all"),
            &sf(&|s| s.start_total.as_secs_f64()),
            "s",
        );
        t.row(
            &format!("{n} pods: time to stop and remove all"),
            &sf(&|s| s.teardown_total.as_secs_f64()),
            "s",
        );
        for (k, name) in POLLED.iter().enumerate() {
            t.row(
                &format!("{n} pods: {name} median"),
                &sf(&|s| s.polls[k].0),
                "ms",
            );
            t.row(
                &format!("{n} pods: {name} p99"),
                &sf(&|s| s.polls[k].1),
                "ms",
            );
        }
        t.row(
            &format!("{n} pods: daemon RSS"),
            &sf(&|s| mb(s.daemon_rss_kb)),
            "MB",
        );
        let procs: Vec<String> = step.iter().flatten().map(|s| s.procs.to_string()).collect();
        t.row(
            &format!(
                "{n} pods: runtime-side memory (daemon RSS + PSS of {} monitors / shims)",
                procs.join(" / ")
            ),
            &sf(&|s| mb(s.runtime_side_kb())),
            "MB",
        );
    }
    let mut out = format!(
        "\n{samples} serial samples per runtime (ms; memory in MB); load average at the end: {}\n\n",
        load_average()
    );
    out.push_str(&t.out);
    for (p, rt) in rts.iter().enumerate().filter(|(_, r)| !r.berth) {
        let ratio = pct(&totals[0], 50) / pct(&totals[p], 50);
        let _ = writeln!(
            out,
            "\ntarget: pod+container start median ≤ 0.25 of {}'s — {} ({ratio:.3})",
            rt.name,
            if ratio <= 0.25 { "met" } else { "MISSED" }
        );
    }
    println!("{out}");

    let chart_dir = PathBuf::from(
        std::env::var("BENCH_CHART_DIR").unwrap_or_else(|_| "target/bench-charts".to_owned()),
    );
    fs::create_dir_all(&chart_dir).with_context(|| format!("creating {}", chart_dir.display()))?;
    let latency_series: Vec<Series<'_>> = rts
        .iter()
        .enumerate()
        .map(|(k, rt)| Series {
            name: &rt.name,
            color: COLORS[k % COLORS.len()],
            points: cdf(&totals[k]),
        })
        .collect();
    let latency = svg_chart(
        &format!("Pod + container start latency, {samples} serial samples"),
        "latency (ms)",
        "% of samples at or below",
        &latency_series,
    );
    // (pods, value) per scale step for runtime k.
    let points = |k: usize, value: &dyn Fn(&Scale) -> f64| -> Vec<(f64, f64)> {
        scales
            .iter()
            .filter_map(|step| step[k].as_ref())
            .map(|s| (s.n as f64, value(s)))
            .collect()
    };
    let start_secs = |s: &Scale| s.start_total.as_secs_f64();
    let mem_tenths = |s: &Scale| mb(s.runtime_side_kb() / 10);
    let labels: Vec<(String, String)> = rts
        .iter()
        .map(|rt| {
            (
                format!("{}: start time (s)", rt.name),
                format!("{}: memory (MB/10)", rt.name),
            )
        })
        .collect();
    let mut cost_series = Vec::new();
    for k in (0..rts.len()).filter(|&k| !rts[k].serial_only) {
        cost_series.push(Series {
            name: &labels[k].0,
            color: COLORS[k % COLORS.len()],
            points: points(k, &start_secs),
        });
        cost_series.push(Series {
            name: &labels[k].1,
            color: LIGHT_COLORS[k % LIGHT_COLORS.len()],
            points: points(k, &mem_tenths),
        });
    }
    let cost = svg_chart(
        &format!("Cost vs number of pods ({clients} concurrent clients)"),
        "pods",
        "seconds to start all / runtime-side MB ÷ 10",
        &cost_series,
    );
    for (name, svg) in [
        ("pod-start-latency.svg", latency),
        ("cost-vs-pods.svg", cost),
    ] {
        let path = chart_dir.join(name);
        fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        println!("chart: {}", path.display());
    }
    drop(rts);
    drop(peers);
    println!(
        "the bench took {:.1} min (set-up, samples, scale steps and teardown)",
        bench_start.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}
