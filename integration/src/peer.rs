//! containerd peers: a containerd (1.6 from Debian, or 2.x built by
//! integration/scripts/build-containerd2.sh) with its CRI plugin on, run side by side
//! with berthd in the same test or benchmark run, through the same CRI client.
//!
//! Each peer runs with its own root, state and socket in a temp dir, mirrors to the
//! same local registry as berthd's (its own certs.d: containerd 1.6 rejects the
//! `server`-only hosts.toml berthd reads), network namespaces under its state dir,
//! and its own bridge network. Everything it creates (processes, shims, mounts,
//! network namespaces, CNI state, NAT rules, bridges, cgroups) is removed on drop, also
//! when the test or bench fails. Used by benches/pod_start.rs, benches/exec_latency.rs
//! and tests/privileged_differential.rs.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_proto::v1 as cri;

use crate::CriClient;
use crate::cgroup;
pub use crate::daemon::remove_all_pods;
use crate::daemon::unmount_below;
use crate::forge::{self, BuiltImage, ImageBuilder, LayerBuilder};

/// The sandbox (pause) image the peers are configured with.
pub const PAUSE: &str = "registry.k8s.io/pause:3.9";
/// containerd 2.x as integration/scripts/build-containerd2.sh caches it.
pub const CONTAINERD2_DIR: &str = "/var/cache/berth/tools/bin/containerd2";
const CONTAINERD_READY_TIMEOUT: Duration = Duration::from_secs(30);
const CONTAINERD_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A busybox image both berthd and containerd can run: the static busybox with
/// `applets` as symlinks. (It was written when forge's hard-link headers carried mode
/// 0644, which containerd applies to the shared inode — busybox lost its exec bit
/// there; forge now writes the linked file's mode, and this image keeps its symlinks
/// so the benchmarks' numbers stay comparable.)
pub fn peer_busybox_image(
    applets: &[&str],
    entrypoint: &[&str],
    cmd: &[&str],
) -> anyhow::Result<BuiltImage> {
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
    let mut layer = layer.host_binary_at("bin/busybox", Path::new(forge::BUSYBOX))?;
    for applet in applets {
        layer = layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    let mut image = ImageBuilder::new().layer(layer).cmd(cmd.iter().copied());
    if !entrypoint.is_empty() {
        image = image.entrypoint(entrypoint.iter().copied());
    }
    image.build()
}

/// One containerd peer: which binaries, which OCI runtime, and its own CNI network
/// (distinct from berthd's and from the other peers', so each cleans up its own).
#[derive(Debug, Clone)]
pub struct PeerSpec {
    /// Short name: pod uids, log dirs, `BENCH_PEERS`.
    pub key: &'static str,
    /// Directory holding `containerd` and `containerd-shim-runc-v2`; `None`: Debian's
    /// on PATH.
    pub bin_dir: Option<PathBuf>,
    /// Config format: 2 (containerd 1.x) or 3 (containerd 2.x).
    pub config_version: u8,
    /// The OCI runtime binary the runc shim runs (`runc` or `crun`).
    pub oci_runtime: &'static str,
    /// Its CNI network's name.
    pub network: &'static str,
    /// Its CNI bridge.
    pub bridge: &'static str,
    /// Its pods' subnet.
    pub subnet: &'static str,
}

/// The containerd peers Berth is compared with, in report order.
pub fn peer_specs() -> Vec<PeerSpec> {
    vec![
        PeerSpec {
            key: "containerd",
            bin_dir: None,
            config_version: 2,
            oci_runtime: "runc",
            network: "berth-bench",
            bridge: "berthbench1",
            subnet: "10.90.0.0/16",
        },
        PeerSpec {
            key: "containerd2",
            bin_dir: Some(PathBuf::from(CONTAINERD2_DIR)),
            config_version: 3,
            oci_runtime: "runc",
            network: "berth-bench-c2",
            bridge: "berthbench3",
            subnet: "10.93.0.0/16",
        },
        PeerSpec {
            key: "containerd-crun",
            bin_dir: None,
            config_version: 2,
            oci_runtime: "crun",
            network: "berth-bench-crun",
            bridge: "berthbench4",
            subnet: "10.94.0.0/16",
        },
    ]
}

impl PeerSpec {
    pub fn bin(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }

    /// Why this peer cannot run here, if it cannot.
    pub fn missing(&self) -> Option<String> {
        let present = |name: &str| match &self.bin_dir {
            Some(d) => d.join(name).is_file(),
            None => on_path(name),
        };
        for bin in ["containerd", "containerd-shim-runc-v2"] {
            if !present(bin) {
                let hint = if self.bin_dir.is_some() {
                    "run integration/scripts/build-containerd2.sh (install-deps.sh does)"
                } else {
                    "install Debian's containerd (integration/scripts/install-deps.sh)"
                };
                return Some(format!("{} not found: {hint}", self.bin(bin).display()));
            }
        }
        if !on_path(self.oci_runtime) {
            return Some(format!(
                "{} not on PATH: apt-get install {}",
                self.oci_runtime, self.oci_runtime
            ));
        }
        None
    }
}

/// A containerd with its CRI plugin on, owned by the test or bench that started it.
#[derive(Debug)]
pub struct Containerd {
    spec: PeerSpec,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Its CRI socket.
    pub socket: PathBuf,
    /// Cgroup controllers where `k8s.io` (containerd's default cgroup parent for
    /// namespace k8s.io) did not exist before: removed on drop once empty.
    new_k8s_cgroups: Vec<PathBuf>,
}

/// Names of the entries of `dir` (empty when it does not exist).
fn entry_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|e| {
            e.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The same set-up as the 1.x config, in containerd 2.x's config version 3: the CRI
/// plugin is split into `io.containerd.cri.v1.images` (snapshotter, sandbox image as
/// `pinned_images.sandbox`, registry) and `io.containerd.cri.v1.runtime` (runtimes,
/// CNI with `bin_dirs`, OOM score and netns options); NRI is off so it does not
/// claim the host-wide /var/run/nri socket.
fn containerd2_config(
    spec: &PeerSpec,
    p: &Path,
    socket: &Path,
    cni_dir: &Path,
    certs: &Path,
) -> String {
    format!(
        r#"version = 3
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE}"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{certs}"

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{oci}"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{cni}"
"#,
        root = p.join("root").display(),
        state = p.join("state").display(),
        socket = socket.display(),
        cni = cni_dir.display(),
        certs = certs.display(),
        oci = spec.oci_runtime,
    )
}

impl Containerd {
    /// Starts containerd with the CRI plugin, mirroring `hosts` to `registry_url`.
    pub async fn start(
        spec: &PeerSpec,
        registry_url: &str,
        hosts: &[&str],
    ) -> anyhow::Result<Self> {
        // Short path: the socket path must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("berth-peer-ctd-")
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
            "name": spec.network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": spec.bridge,
                    "isGateway": true,
                    "forceAddress": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "ranges": [[{ "subnet": spec.subnet }]]
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
        let config = if spec.config_version >= 3 {
            containerd2_config(spec, p, &socket, &cni_dir, &certs)
        } else {
            format!(
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
        BinaryName = "{oci}"
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
                oci = spec.oci_runtime,
            )
        };
        fs::write(p.join("config.toml"), config)?;
        let new_k8s_cgroups = cgroup::hierarchies()
            .into_iter()
            .map(|c| c.join("k8s.io"))
            .filter(|c| !c.exists())
            .collect();
        let log = fs::File::create(p.join("containerd.log"))?;
        let mut cmd = Command::new(spec.bin("containerd"));
        if let Some(d) = &spec.bin_dir {
            // containerd finds its shim on PATH: this build's shim, not Debian's.
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![d.clone()];
            dirs.extend(std::env::split_paths(&path));
            cmd.env("PATH", std::env::join_paths(dirs)?);
        }
        let child = cmd
            .arg("--config")
            .arg(p.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", spec.bin("containerd").display()))?;
        let mut ctd = Self {
            spec: spec.clone(),
            child: Some(child),
            dir,
            socket,
            new_k8s_cgroups,
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

    /// containerd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What containerd logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Stops containerd: SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
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
/// CNI network `network`, for pods whose CNI DEL never ran (the runtime died).
fn remove_peer_iptables(network: &str) {
    let Ok(out) = Command::new("iptables").args(["-t", "nat", "-S"]).output() else {
        return;
    };
    let marker = format!("name: \\\"{network}\\\"");
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
        // Sandboxes and containers containerd still knows about (it died, or their
        // teardown failed): their cgroups and CNI result caches are named after them.
        // Only these are touched, so a concurrent containerd of another bench keeps
        // its own.
        let cri_root = self.dir.path().join("root/io.containerd.grpc.v1.cri");
        let mut ids = entry_names(&cri_root.join("sandboxes"));
        ids.extend(entry_names(&cri_root.join("containers")));
        // Shims outlive containerd: kill those started for this instance (their
        // command line names its socket), then whatever still runs in its cgroups.
        let needle = self.dir.path().display().to_string();
        for pid in pids_where(|_, cmdline| cmdline.contains(&needle)) {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let mut cgroups = Vec::new();
        for ctl in cgroup::hierarchies() {
            for id in &ids {
                cgroups.push(ctl.join("k8s.io").join(id));
            }
        }
        cgroup::kill_and_remove(cgroups);
        for cg in &self.new_k8s_cgroups {
            // rmdir fails while another containerd still has pods there: fine.
            let _ = fs::remove_dir(cg);
        }
        // Network namespaces are pinned under the state dir
        // (netns_mounts_under_state_dir), so this releases them too.
        unmount_below(self.dir.path());
        let network = self.spec.network;
        let _ = Command::new("ip")
            .args(["link", "del", self.spec.bridge])
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(network));
        if let Ok(entries) = fs::read_dir("/var/lib/cni/results") {
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                if ids.iter().any(|id| {
                    name == format!("{network}-{id}-eth0")
                        || name == format!("cni-loopback-{id}-lo")
                }) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        remove_peer_iptables(network);
        if std::thread::panicking() {
            eprintln!(
                "---- {} log ----\n{}---- end ----",
                self.spec.key,
                self.log()
            );
        }
    }
}

/// Pids whose (comm, cmdline) satisfy `pred`.
pub fn pids_where(pred: impl Fn(&str, &str) -> bool) -> Vec<u32> {
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

/// Whether `bin` is an executable file in a directory of PATH.
pub fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| Path::new(&d).join(bin).is_file())
    })
}
