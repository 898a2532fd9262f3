//! Leaks over time: pod create/start/stop/remove cycles (a pod with one running
//! container each), sampling berthd's RSS, open fds and threads and the host's mounts
//! and cgroups early in the run and at its end. Mounts and cgroups must be equal and
//! fds must not grow (every cycle ends with nothing left); threads and RSS may move
//! only within bounds
//! that a per-cycle leak would exceed. The figures are printed.
//!
//! `BERTH_LEAK_CYCLES` sets the number of cycles: 150 by default (CI), 1000 for the
//! long variant (`BERTH_LEAK_CYCLES=1000`, about 15 minutes in a debug build).

mod reliability_common;

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use berth_integration::daemon::DaemonOptions;
use berth_integration::fixtures;
use berth_integration::setup::Node;
use berth_integration::{CriClient, TestDaemon};
use berth_proto::v1::{RemovePodSandboxRequest, StopPodSandboxRequest};
use reliability_common::{
    BUSYBOX, CgroupParent, cgroups_under, env_number, mounts_under, pod_config, process_figures,
    sleeper,
};

/// What is sampled.
#[derive(Debug, Clone, Copy)]
struct Figures {
    cycle: u64,
    rss_kib: u64,
    fds: usize,
    threads: usize,
    /// All mounts of the host's mount namespace.
    mounts: usize,
    /// Mounts below the daemon's directories.
    daemon_mounts: usize,
    /// Cgroup directories below the test's cgroup parent (all controllers).
    cgroups: usize,
    /// Cgroup directories in the host's memory controller.
    host_memory_cgroups: usize,
}

fn count_dirs(dir: &std::path::Path) -> usize {
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                n += 1 + count_dirs(&e.path());
            }
        }
    }
    n
}

async fn sample(d: &TestDaemon, cycle: u64, cgroup_parent: &str) -> anyhow::Result<Figures> {
    // Let short-lived work (reaping, blocking tasks) settle before sampling.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = d.pid().context("berthd is not running")?;
    let (fds, threads, rss_kib) = process_figures(pid);
    Ok(Figures {
        cycle,
        rss_kib,
        fds,
        threads,
        mounts: std::fs::read_to_string("/proc/self/mountinfo")?
            .lines()
            .count(),
        daemon_mounts: mounts_under(d.dir()).len(),
        cgroups: cgroups_under(cgroup_parent).len(),
        host_memory_cgroups: count_dirs(std::path::Path::new("/sys/fs/cgroup/memory")),
    })
}

async fn cycle(c: &mut CriClient, n: u64, cgroup_parent: &str) -> anyhow::Result<()> {
    let name = format!("leak-{n}");
    let pod = fixtures::run_pod_with(c, &pod_config(&name, cgroup_parent), "")
        .await
        .with_context(|| format!("cycle {n}: RunPodSandbox"))?;
    let ctr = fixtures::create(c, &pod, &pod_config(&name, cgroup_parent), sleeper("main"))
        .await
        .with_context(|| format!("cycle {n}: CreateContainer"))?;
    fixtures::start(c, &ctr)
        .await
        .with_context(|| format!("cycle {n}: StartContainer"))?;
    c.runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .with_context(|| format!("cycle {n}: StopPodSandbox"))?;
    c.runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .with_context(|| format!("cycle {n}: RemovePodSandbox"))?;
    Ok(())
}

async fn run(node: &Node, cycles: u64, cgroup_parent: &str) -> anyhow::Result<()> {
    let d = &node.daemon;
    let mut c = d.client().await?;
    fixtures::try_pull(&mut c, BUSYBOX)
        .await
        .context("pulling busybox")?;
    // The first sample after warm-up: cycle 50, or 10% in for longer runs.
    let first_at = (cycles / 10).max(50).min(cycles / 2);
    let mut first = None;
    let started = Instant::now();
    for n in 1..=cycles {
        cycle(&mut c, n, cgroup_parent).await?;
        if n == first_at {
            first = Some(sample(d, n, cgroup_parent).await?);
        }
    }
    let last = sample(d, cycles, cgroup_parent).await?;
    let first = first.context("no early sample")?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{cycles} cycles in {secs:.1}s ({:.0} ms/cycle)",
        secs * 1000.0 / cycles as f64
    );
    eprintln!(
        "figure              cycle {:>5}  cycle {:>5}",
        first.cycle, last.cycle
    );
    for (what, a, b) in [
        ("berthd RSS (KiB)", first.rss_kib, last.rss_kib),
        ("berthd open fds", first.fds as u64, last.fds as u64),
        ("berthd threads", first.threads as u64, last.threads as u64),
        ("host mounts", first.mounts as u64, last.mounts as u64),
        (
            "daemon-dir mounts",
            first.daemon_mounts as u64,
            last.daemon_mounts as u64,
        ),
        ("test cgroups", first.cgroups as u64, last.cgroups as u64),
        (
            "host memory cgroups",
            first.host_memory_cgroups as u64,
            last.host_memory_cgroups as u64,
        ),
    ] {
        eprintln!("{what:<20}{a:>11}  {b:>11}");
    }
    // Not one more fd (a transient one open at the early sample may be gone: the
    // 1000-cycle run went from 18 to 16).
    ensure!(
        last.fds <= first.fds,
        "berthd fds grew: {first:?} → {last:?}"
    );
    ensure!(
        last.mounts == first.mounts && last.daemon_mounts == first.daemon_mounts,
        "mounts grew: {first:?} → {last:?}"
    );
    ensure!(
        last.cgroups == 0 && first.cgroups == 0,
        "cgroups left below {cgroup_parent}: {first:?} → {last:?}"
    );
    ensure!(
        last.host_memory_cgroups == first.host_memory_cgroups,
        "host memory cgroups changed: {first:?} → {last:?}"
    );
    // tokio's blocking pool keeps idle threads for a while: a few more are noise, one
    // per cycle is a leak.
    ensure!(
        last.threads <= first.threads + 8,
        "berthd threads grew: {first:?} → {last:?}"
    );
    // A leak of even 16 KiB per cycle over the 100+ cycles after the first sample
    // exceeds this; allocator noise stays well inside it.
    let rss_bound = first.rss_kib + (first.rss_kib / 10).max(1024);
    ensure!(
        last.rss_kib <= rss_bound,
        "berthd RSS grew beyond {rss_bound} KiB: {first:?} → {last:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_cycles_leave_berthd_and_the_host_flat() {
    let cycles = env_number("BERTH_LEAK_CYCLES", 150);
    let cgroup_parent = format!("/berthleak{}", std::process::id());
    let _cg = CgroupParent(cgroup_parent.clone());
    let node = Node::start_with(DaemonOptions {
        log_level: "info".into(),
        ..DaemonOptions::default()
    })
    .await
    .expect("node");
    let limit = Duration::from_secs(120 + cycles * 2);
    match tokio::time::timeout(limit, run(&node, cycles, &cgroup_parent)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{e:#}"),
        Err(_) => panic!("{cycles} cycles did not finish within {limit:?}"),
    }
}
