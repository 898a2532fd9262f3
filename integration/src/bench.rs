//! What the benches (benches/pod_start.rs, benches/exec_latency.rs) share: the images
//! both runtimes pull, the pod and container each sample starts, RPCs bounded in
//! time, a clean stop on Ctrl-C, percentiles, and the machine line of the report.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_proto::v1 as cri;

use crate::CriClient;
use crate::fixtures::{self, BUSYBOX};
use crate::peer::peer_busybox_image;
use crate::registry::TestRegistry;

/// Upper bound for one RPC; a runtime that takes longer is broken, not slow.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(60);

/// Pushes the bench's busybox ([`peer_busybox_image`] with `applets`, one both berthd
/// and the containerd peers can run) over the busybox and pause tags of this run's
/// throwaway registry, so every runtime pulls exactly the same bytes under the usual
/// names.
pub async fn push_bench_images(registry: &TestRegistry, applets: &[&str]) -> anyhow::Result<()> {
    registry
        .push(
            "e2e-test-images/busybox",
            "1.29-2",
            &peer_busybox_image(applets, &[], &["sh"])?,
        )
        .await
        .context("pushing the bench busybox")?;
    registry
        .push(
            "pause",
            "3.9",
            &peer_busybox_image(applets, &["/bin/sleep", "2147483647"], &[])?,
        )
        .await
        .context("pushing the bench pause image")
}

/// Set by SIGINT/SIGTERM: the bench stops between samples and cleans up. (A Ctrl-C
/// reaches the daemons too, being in the same process group; the clean-up copes.)
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set a flag that [`check_interrupted`] reads between samples.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Whether SIGINT/SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// An error once SIGINT/SIGTERM arrived, so the bench unwinds and cleans up.
pub fn check_interrupted() -> anyhow::Result<()> {
    if interrupted() {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

/// Awaits one RPC with a timeout, naming it in errors.
pub async fn rpc<T>(
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

/// Pod `i` of runtime `key` (its uid names the runtime), logging below `logs`.
pub fn pod_config(key: &str, logs: &Path, i: usize) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: format!("bench-{i}"),
            uid: format!("bench-{key}-{i}"),
            namespace: "bench".to_owned(),
            attempt: 0,
        }),
        hostname: format!("bench-{i}"),
        log_directory: logs.join(format!("pod-{i}")).display().to_string(),
        // cgroup_parent empty: each runtime's default with the cgroupfs driver.
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// The one container of a bench pod: busybox `sleep 3600`.
pub fn container_config() -> cri::ContainerConfig {
    fixtures::container_config("main", BUSYBOX, &["sleep", "3600"])
}

/// A bench pod [`start_pod`] started: its ids and how long each step took.
#[derive(Debug)]
pub struct StartedPod {
    pub pod_id: String,
    pub container_id: String,
    /// RunPodSandbox, CreateContainer, StartContainer.
    pub times: [Duration; 3],
}

/// RunPodSandbox + CreateContainer + StartContainer of pod `i` ([`pod_config`],
/// [`container_config`]) on runtime `key`, each step timed from the client.
pub async fn start_pod(
    client: &mut CriClient,
    key: &str,
    logs: &Path,
    i: usize,
) -> anyhow::Result<StartedPod> {
    let config = pod_config(key, logs, i);
    let t0 = Instant::now();
    let pod_id = rpc(
        "RunPodSandbox",
        client.runtime.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        }),
    )
    .await?
    .pod_sandbox_id;
    let t1 = Instant::now();
    let container_id = rpc(
        "CreateContainer",
        client
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(container_config()),
                sandbox_config: Some(config),
            }),
    )
    .await?
    .container_id;
    let t2 = Instant::now();
    rpc(
        "StartContainer",
        client.runtime.start_container(cri::StartContainerRequest {
            container_id: container_id.clone(),
        }),
    )
    .await?;
    let t3 = Instant::now();
    Ok(StartedPod {
        pod_id,
        container_id,
        times: [t1 - t0, t2 - t1, t3 - t2],
    })
}

/// `PullImage` on runtime `who`, bounded by [`RPC_TIMEOUT`].
pub async fn pull(client: &mut CriClient, who: &str, image: &str) -> anyhow::Result<()> {
    rpc(
        "PullImage",
        client.image.pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await
    .with_context(|| format!("{who}: pulling {image}"))?;
    Ok(())
}

/// The runtime's name and version and its cgroup driver, for the report.
pub async fn describe(client: &mut CriClient) -> String {
    let version = rpc(
        "Version",
        client.runtime.version(cri::VersionRequest::default()),
    )
    .await
    .map(|v| format!("{} {}", v.runtime_name, v.runtime_version))
    .unwrap_or_else(|e| format!("version unknown ({e})"));
    let cgroup = match rpc(
        "RuntimeConfig",
        client
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

/// Nearest-rank percentile of sorted durations, in ms.
pub fn pct(sorted: &[Duration], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len()).div_ceil(100);
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

/// The durations, sorted (for [`pct`]).
pub fn sorted(v: impl Iterator<Item = Duration>) -> Vec<Duration> {
    let mut v: Vec<Duration> = v.collect();
    v.sort();
    v
}

/// The report's machine line: cores, memory, kernel, cgroup version, runc.
pub fn machine() -> String {
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

/// `MemTotal` of /proc/meminfo, in kB.
pub fn proc_meminfo_total() -> Option<u64> {
    fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A count from the environment (`BENCH_SAMPLES`...), `default` when unset.
pub fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}
