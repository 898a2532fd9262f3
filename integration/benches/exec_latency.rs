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
//! The peer is Debian's containerd (1.6) with its CRI plugin and runc, started with its
//! own root, state, socket, certs.d mirrors to the same local registry as berthd's, and
//! a bridge network of its own (`berthbench2`, 10.91.0.0/16; distinct from
//! pod_start's) and its pods under cgroup parent `/berth-bench-exec` (not `k8s.io`,
//! which pod_start uses); its streaming server listens on 127.0.0.1 (the CRI
//! plugin's default). Everything containerd creates (processes, shims, mounts, network
//! namespaces, CNI state, NAT rules, cgroups) is removed on exit, also on failure.
//! The containerd set-up is copied from pod_start.rs (to be shared later).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use berth_integration::CriClient;
use berth_integration::daemon::{DaemonOptions, unmount_below};
use berth_integration::forge::{self, BuiltImage, ImageBuilder, LayerBuilder};
use berth_integration::registry::CRITEST_HOSTS;
use berth_integration::setup::Node;
use berth_integration::tools;
use berth_proto::v1 as cri;

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
const PAUSE: &str = "registry.k8s.io/pause:3.9";
/// containerd's CNI network: distinct from berthd's test network (berthtest0).
const BENCH_NETWORK: &str = "berth-bench-exec";
const BENCH_BRIDGE: &str = "berthbench2";
const BENCH_SUBNET: &str = "10.91.0.0/16";
/// Upper bound for one RPC; a runtime that takes longer is broken, not slow.
/// The cgroup parent of containerd's pods here, instead of its default `k8s.io`: a
/// pod_start bench running at the same time uses (and cleans up) `k8s.io`, and this
/// bench's clean-up must not kill its containers, nor it ours.
const CTD_CGROUP_PARENT: &str = "/berth-bench-exec";
const RPC_TIMEOUT: Duration = Duration::from_secs(60);
const CONTAINERD_READY_TIMEOUT: Duration = Duration::from_secs(30);
const CONTAINERD_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A busybox image both runtimes can run: the static busybox with `sleep` and `sh`
/// as symlinks. critest's forged images link their applets as hard links whose tar
/// headers carry mode 0644; containerd applies a link header's mode to the shared
/// inode, so busybox loses its exec bit there ("exec: /bin/sleep: permission
/// denied"), while berthd ignores it. This image avoids that; it is pushed over the
/// busybox and pause tags of this run's throwaway registry, so both runtimes pull
/// exactly the same bytes under the usual names.
fn bench_image(entrypoint: &[&str], cmd: &[&str]) -> anyhow::Result<BuiltImage> {
    let mut layer = LayerBuilder::new();
    for (dir, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
    ] {
        layer = layer.dir(dir, mode);
    }
    let layer = layer
        .host_binary_at("bin/busybox", Path::new(forge::BUSYBOX))?
        .symlink("bin/sleep", "busybox")
        .symlink("bin/sh", "busybox")
        .symlink("bin/true", "busybox");
    let mut image = ImageBuilder::new().layer(layer).cmd(cmd.iter().copied());
    if !entrypoint.is_empty() {
        image = image.entrypoint(entrypoint.iter().copied());
    }
    image.build()
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

// ---------------------------------------------------------------------------------
// containerd, started and torn down by the bench
// ---------------------------------------------------------------------------------

/// A containerd with its CRI plugin on, owned by the bench.
struct Containerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    socket: PathBuf,
    /// `/var/run/netns` entries that existed before containerd started: the others
    /// named `cni-*` are containerd's, removed on drop if it leaves any.
    netns_before: HashSet<String>,
    /// `CTD_CGROUP_PARENT` in every cgroup controller: containerd's pods' cgroups,
    /// to clean up.
    pod_cgroups: Vec<PathBuf>,
}

fn list_netns() -> HashSet<String> {
    fs::read_dir("/var/run/netns")
        .map(|e| {
            e.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn cgroup_controllers() -> Vec<PathBuf> {
    fs::read_dir("/sys/fs/cgroup")
        .map(|e| {
            e.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

impl Containerd {
    /// Starts containerd with the CRI plugin, mirroring `hosts` to `registry_url`.
    async fn start(registry_url: &str, hosts: &[&str]) -> anyhow::Result<Self> {
        // Short path: the socket path must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("berth-bench-ctd-")
            .tempdir_in("/tmp")
            .context("creating containerd's temp dir")?;
        let p = dir.path();
        // The same mirrors as berthd's certs.d, in a form containerd 1.6 reads: it
        // rejects a hosts.toml without a `[host]` table ("invalid `host` tree") and
        // then silently falls back to the upstream registry.
        let certs = p.join("certs.d");
        for host in hosts {
            let d = certs.join(host);
            fs::create_dir_all(&d)?;
            fs::write(
                d.join("hosts.toml"),
                format!(
                    "server = \"{registry_url}\"\n\n[host.\"{registry_url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
                ),
            )?;
        }
        let socket = p.join("c.sock");
        let cni_dir = p.join("cni");
        fs::create_dir(&cni_dir)?;
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": BENCH_NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BENCH_BRIDGE,
                    "isGateway": true,
                    "forceAddress": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "ranges": [[{ "subnet": BENCH_SUBNET }]]
                    }
                },
                { "type": "portmap", "capabilities": { "portMappings": true } }
            ]
        });
        fs::write(
            cni_dir.join("10-berth-bench.conflist"),
            conflist.to_string(),
        )?;
        // restrict_oom_score_adj: containerd's sandbox default of -998 needs
        // CAP_SYS_RESOURCE, which root lacks here (lab-containerd.md, obstacle 1).
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc_root}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
            root = p.join("root").display(),
            state = p.join("state").display(),
            socket = socket.display(),
            cni = cni_dir.display(),
            certs = certs.display(),
            // runc's state in the temp dir, not /run/containerd/runc: a containerd
            // killed with containers running leaves it behind.
            runc_root = p.join("runc").display(),
        );
        fs::write(p.join("config.toml"), config)?;
        let netns_before = list_netns();
        let pod_cgroups = cgroup_controllers()
            .into_iter()
            .map(|c| c.join(CTD_CGROUP_PARENT.trim_start_matches('/')))
            .collect();
        let log = fs::File::create(p.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(p.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning containerd")?;
        let mut ctd = Self {
            child: Some(child),
            dir,
            socket,
            netns_before,
            pod_cgroups,
        };
        ctd.wait_ready().await?;
        Ok(ctd)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + CONTAINERD_READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "containerd exited during start-up ({status}):\n{}",
                    self.log()
                );
            }
            if let Ok(mut c) = CriClient::connect(&self.socket).await
                && c.runtime
                    .version(cri::VersionRequest::default())
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd's CRI did not answer within {CONTAINERD_READY_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child's.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + CONTAINERD_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Stops and removes every pod (and container) through the runtime's own API, on a
/// thread with its own runtime: Drop cannot await.
fn remove_all_pods(socket: PathBuf) {
    let worker = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let cleanup = async {
                let mut c = CriClient::connect(&socket).await.ok()?;
                let containers = c
                    .runtime
                    .list_containers(cri::ListContainersRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .containers;
                for ctr in containers {
                    let _ = c
                        .runtime
                        .remove_container(cri::RemoveContainerRequest {
                            container_id: ctr.id,
                        })
                        .await;
                }
                let pods = c
                    .runtime
                    .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .items;
                for pod in pods {
                    let _ = c
                        .runtime
                        .stop_pod_sandbox(cri::StopPodSandboxRequest {
                            pod_sandbox_id: pod.id.clone(),
                        })
                        .await;
                    let _ = c
                        .runtime
                        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                            pod_sandbox_id: pod.id,
                        })
                        .await;
                }
                Some(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(60), cleanup).await;
        });
    });
    let _ = worker.join();
}

fn kill_pids_in(cgroup: &Path) {
    for pid in fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
    {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Removes a cgroup directory tree bottom-up (cgroupfs directories are removed with
/// rmdir, once their processes are gone).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Splits a line of `iptables -S` output into arguments (double quotes group,
/// `\"` inside them is a literal quote).
fn split_iptables(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    args.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        args.push(cur);
    }
    args
}

/// Removes the NAT rules and chains the bridge plugin's ipMasq added for pods of the
/// bench network, for pods whose CNI DEL never ran (containerd died).
fn remove_bench_iptables() {
    let Ok(out) = Command::new("iptables").args(["-t", "nat", "-S"]).output() else {
        return;
    };
    let marker = format!("name: \\\"{BENCH_NETWORK}\\\"");
    let mut chains = HashSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !(line.starts_with("-A POSTROUTING ") && line.contains(&marker)) {
            continue;
        }
        let mut args = split_iptables(line);
        args[0] = "-D".to_owned();
        if let Some(chain) = args
            .iter()
            .position(|a| a == "-j")
            .and_then(|i| args.get(i + 1))
            .filter(|c| c.starts_with("CNI-"))
        {
            chains.insert(chain.clone());
        }
        let _ = Command::new("iptables")
            .args(["-t", "nat"])
            .args(&args)
            .stderr(Stdio::null())
            .status();
    }
    for chain in chains {
        for op in ["-F", "-X"] {
            let _ = Command::new("iptables")
                .args(["-t", "nat", op, &chain])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            remove_all_pods(self.socket.clone());
        }
        self.stop();
        // Sandboxes containerd still knows about (it died, or their teardown failed):
        // their CNI result caches are named after them.
        let sandboxes: Vec<String> = fs::read_dir(
            self.dir
                .path()
                .join("root/io.containerd.grpc.v1.cri/sandboxes"),
        )
        .map(|e| {
            e.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
        // Shims outlive containerd: kill those started for this instance (their
        // command line names its socket), then whatever still runs in its cgroups.
        let needle = self.dir.path().display().to_string();
        for pid in pids_where(|_, cmdline| cmdline.contains(&needle)) {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for cg in &self.pod_cgroups {
            if let Ok(entries) = fs::read_dir(cg) {
                for e in entries.filter_map(Result::ok) {
                    kill_pids_in(&e.path());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        for cg in &self.pod_cgroups {
            remove_cgroup_tree(cg);
        }
        for ns in list_netns().difference(&self.netns_before) {
            if ns.starts_with("cni-") {
                let path = Path::new("/var/run/netns").join(ns);
                unmount_below(&path);
                let _ = fs::remove_file(&path);
            }
        }
        unmount_below(self.dir.path());
        let _ = Command::new("ip")
            .args(["link", "del", BENCH_BRIDGE])
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(BENCH_NETWORK));
        if let Ok(entries) = fs::read_dir("/var/lib/cni/results") {
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{BENCH_NETWORK}-"))
                    || sandboxes
                        .iter()
                        .any(|id| name == format!("cni-loopback-{id}-lo"))
                {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        remove_bench_iptables();
        if std::thread::panicking() {
            eprintln!("---- containerd log ----\n{}---- end ----", self.log());
        }
    }
}

// ---------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------

/// Pids whose (comm, cmdline) satisfy `pred`.
fn pids_where(pred: impl Fn(&str, &str) -> bool) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.filter_map(Result::ok) {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = fs::read_to_string(p.path().join("comm")).unwrap_or_default();
        let cmdline = fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if pred(comm.trim_end(), &cmdline) {
            out.push(pid);
        }
    }
    out
}

struct Runtime {
    name: &'static str,
    client: CriClient,
    /// `unix://<socket>`, for crictl.
    endpoint: String,
    logs: PathBuf,
    /// Empty: the runtime's default.
    cgroup_parent: &'static str,
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
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: rt.cgroup_parent.to_owned(),
            ..Default::default()
        }),
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

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| Path::new(&d).join(bin).is_file())
    })
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

/// Removes the bench's pod from a runtime even when the bench fails (Drop cannot
/// await, so it uses a thread with its own runtime, like `remove_all_pods`).
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
    for bin in ["containerd", "containerd-shim-runc-v2", "runc"] {
        ensure!(
            on_path(bin),
            "{bin} not on PATH: install Debian's containerd and runc (integration/scripts/install-deps.sh)"
        );
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
    let ctd = Containerd::start(&node.registry.url(), CRITEST_HOSTS)
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
        cgroup_parent: "",
    };
    let mut containerd = Runtime {
        name: "containerd",
        client: CriClient::connect(&ctd.socket).await?,
        endpoint: format!("unix://{}", ctd.socket.display()),
        logs: logs.path().join("containerd"),
        cgroup_parent: CTD_CGROUP_PARENT,
    };
    println!("berthd:     {}", describe(&mut berth).await);
    println!("containerd: {}", describe(&mut containerd).await);

    pull(&mut berth, BUSYBOX).await?;
    pull(&mut containerd, BUSYBOX).await?;
    pull(&mut containerd, PAUSE).await?;

    // Guards drop before `ctd` and `node` (declared later): pods go first.
    let _berth_pods = PodGuard {
        socket: node.daemon.socket.clone(),
    };
    let _ctd_pods = PodGuard {
        socket: ctd.socket.clone(),
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
