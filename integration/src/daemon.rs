//! Starts a real `berthd` as a child process with a temporary socket and temporary
//! root/state directories, waits until it answers, and stops it on drop.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::client::CriClient;

/// How long berthd may take to answer `Version` after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long berthd may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Knobs for a test daemon. The defaults give a daemon that uses the host's CNI
/// directories and temporary everything else.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Extra TOML appended to the generated config (top-level keys must come first,
    /// so prefer whole `[section]`s here).
    pub extra_config: String,
    /// Extra top-level keys (e.g. `cgroup_driver = "systemd"`).
    pub top_level_config: String,
    /// `log.level` of the daemon.
    pub log_level: String,
    /// `log.format` of the daemon: `text` or `json`.
    pub log_format: String,
    /// Replaces the `[cni]` section when set.
    pub cni_section: Option<String>,
    /// The berthd to run instead of [`TestDaemon::binary`] (another release's, for
    /// the upgrade test); it finds its helpers next to itself.
    pub binary: Option<PathBuf>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            extra_config: String::new(),
            top_level_config: String::new(),
            log_level: "debug".to_owned(),
            log_format: "text".to_owned(),
            cni_section: None,
            binary: None,
        }
    }
}

/// berthd's fault-injection hook for the window between spawning a container's monitor
/// and recording it: set to a file path, berthd SIGKILLs itself there once the file
/// exists (after SIGSTOPping the monitor if the file says `stop-monitor`).
pub const DIE_AFTER_MONITOR_SPAWN: &str = "BERTHD_TEST_HOOK_DIE_AFTER_MONITOR_SPAWN";

/// Why a test hook may not fire: what an assertion on one says.
pub const TEST_HOOKS_NEEDED: &str = "berthd has its test hooks only when built with \
    `--features berth-server/test-hooks` (as integration/scripts/run-tests.sh builds it)";

/// A running berthd owned by a test.
#[derive(Debug)]
pub struct TestDaemon {
    child: Option<Child>,
    /// The berthd executable started by the next (re)start.
    binary: PathBuf,
    dir: tempfile::TempDir,
    /// The gRPC socket.
    pub socket: PathBuf,
    /// `root_dir` of this daemon.
    pub root_dir: PathBuf,
    /// `state_dir` of this daemon.
    pub state_dir: PathBuf,
    /// The config file it was started with.
    pub config_path: PathBuf,
    log_path: PathBuf,
    /// Extra environment of the daemon process, from the next (re)start on.
    env: Vec<(String, String)>,
}

impl TestDaemon {
    /// The berthd binary under test: `$BERTHD_BIN`, else the one cargo built next to
    /// this test executable (`target/<profile>/berthd`).
    pub fn binary() -> anyhow::Result<PathBuf> {
        if let Some(p) = std::env::var_os("BERTHD_BIN") {
            return Ok(PathBuf::from(p));
        }
        let exe = std::env::current_exe().context("locating the test executable")?;
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .context("test executable has no target directory")?;
        let bin = profile_dir.join("berthd");
        if !bin.exists() {
            bail!(
                "berthd binary not found at {}; build it first (`cargo build -p berth-server`) or set BERTHD_BIN",
                bin.display()
            );
        }
        Ok(bin)
    }

    /// Starts a daemon with default options.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(DaemonOptions::default()).await
    }

    /// Starts a daemon and waits until it answers `Version`.
    pub async fn start_with(options: DaemonOptions) -> anyhow::Result<Self> {
        // Short paths: a Unix socket path must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("berth-it-")
            .tempdir_in("/tmp")
            .context("creating the daemon's temp dir")?;
        // Traversable (not listable) by others, as /var/lib is: containers of pods with
        // their own user namespace reach their rootfs as an unprivileged host uid.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .context("making the daemon's temp dir traversable")?;
        let socket = dir.path().join("berth.sock");
        let root_dir = dir.path().join("root");
        let state_dir = dir.path().join("state");
        let config_path = dir.path().join("config.toml");
        let log_path = dir.path().join("berthd.log");

        let cni = match &options.cni_section {
            Some(section) => section.clone(),
            None => test_network(dir.path())?,
        };
        let config = format!(
            "{top}\nroot_dir = {root:?}\nstate_dir = {state:?}\n\n[grpc]\nsocket = {socket:?}\n\n[log]\nlevel = {level:?}\nformat = {format:?}\n\n{cni}\n{extra}\n",
            top = options.top_level_config,
            format = options.log_format,
            root = root_dir.display().to_string(),
            state = state_dir.display().to_string(),
            socket = socket.display().to_string(),
            level = options.log_level,
            extra = options.extra_config,
        );
        fs::write(&config_path, config).context("writing the daemon config")?;

        let binary = match options.binary {
            Some(b) => b,
            None => Self::binary()?,
        };
        let mut daemon = Self {
            child: None,
            binary,
            dir,
            socket,
            root_dir,
            state_dir,
            config_path,
            log_path,
            env: Vec::new(),
        };
        daemon.spawn()?;
        daemon.wait_ready().await?;
        Ok(daemon)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .context("opening the daemon log")?;
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config_path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning berthd")?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts the daemon again with the same config and state (after [`Self::kill`] or
    /// [`Self::stop`]), as an operator restarting berthd would.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.stop()?;
        }
        self.spawn()?;
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("berthd exited during start-up ({status}):\n{}", self.log());
            }
            if CriClient::answers(&self.socket).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "berthd did not answer Version within {READY_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `binary` from the next (re)start on: a restart onto it with the same config
    /// and state is an upgrade (or a rollback).
    pub fn set_binary(&mut self, binary: PathBuf) {
        self.binary = binary;
    }

    /// Sets an environment variable of the daemon from its next (re)start on (test
    /// hooks such as [`DIE_AFTER_MONITOR_SPAWN`]).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// `berthd --config <this daemon's config>`, for its subcommands (`image ...`),
    /// which reach the running daemon through its admin socket.
    pub fn command(&self) -> anyhow::Result<Command> {
        let mut c = Command::new(&self.binary);
        c.arg("--config").arg(&self.config_path);
        Ok(c)
    }

    /// `unix://<socket>`, as crictl and critest take it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// A new CRI client connected to this daemon.
    pub async fn client(&self) -> anyhow::Result<CriClient> {
        CriClient::connect(&self.socket).await
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The temp dir holding everything this daemon uses.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let pid = self.pid().context("berthd is not running")?;
        let pid = i32::try_from(pid).context("pid out of range")?;
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child's.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("signalling berthd");
        }
        Ok(())
    }

    /// SIGTERM, then waits for the exit (SIGKILL after a timeout). Returns the status.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("berthd is not running");
        };
        if child.try_wait()?.is_none() {
            let pid = i32::try_from(child.id()).context("pid out of range")?;
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child's.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait()?;
                bail!("berthd ignored SIGTERM for {STOP_TIMEOUT:?} and was killed ({status})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would, and reaps the process.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("berthd is not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

/// Name, bridge and subnet of the network test daemons use, distinct from the
/// built-in one so tests never touch a real berthd's pods on the same host.
pub const TEST_NETWORK: &str = "berth-test";
/// The test network's bridge device.
pub const TEST_BRIDGE: &str = "berthtest0";
/// The test network's pod subnet: a /16, so a scale benchmark's 500 pods fit.
pub const TEST_SUBNET: &str = "10.89.0.0/16";

/// Writes the test network's conflist into `dir/cni` and returns the `[cni]` section
/// pointing at it (with the host's plugin directories).
fn test_network(dir: &Path) -> anyhow::Result<String> {
    let conf_dir = dir.join("cni");
    fs::create_dir_all(&conf_dir)?;
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": TEST_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": TEST_BRIDGE,
                "isGateway": true,
                // A bridge left from before the subnet was widened gets the new address.
                "forceAddress": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "ranges": [[{ "subnet": TEST_SUBNET }]]
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    });
    fs::write(
        conf_dir.join("10-berth-test.conflist"),
        conflist.to_string(),
    )?;
    Ok(format!(
        "[cni]\nconf_dir = {:?}\nbuiltin_default = false\n",
        conf_dir.display().to_string()
    ))
}

/// Deletes the test bridge and the test network's IPAM state when no pod uses them.
fn remove_test_network() {
    let members = Command::new("ip")
        .args(["-o", "link", "show", "master", TEST_BRIDGE])
        .output();
    if let Ok(out) = members
        && out.status.success()
        && out.stdout.is_empty()
    {
        let _ = Command::new("ip")
            .args(["link", "del", TEST_BRIDGE])
            .status();
    }
    let ipam = Path::new("/var/lib/cni/networks").join(TEST_NETWORK);
    let leases = fs::read_dir(&ipam)
        .map(|e| {
            e.filter_map(Result::ok).any(|e| {
                e.file_name().to_string_lossy().contains('.')
                    && !e
                        .file_name()
                        .to_string_lossy()
                        .starts_with("last_reserved_ip")
            })
        })
        .unwrap_or(false);
    if !leases {
        let _ = fs::remove_dir_all(&ipam);
    }
}

/// Detaches every mount below `dir`, deepest first: the test's safety net so that a
/// failed test never leaves mounts (pinned namespaces, /dev/shm, rootfs) behind.
pub fn unmount_below(dir: &Path) {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut targets: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    targets.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for t in targets {
        let Ok(c) = std::ffi::CString::new(t.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: `c` is a valid NUL-terminated path that lives across the call.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Stops and removes every pod (and container) through the runtime's own API (berthd
/// or a containerd peer), on a thread with its own runtime: Drop cannot await, and may
/// run inside a test's runtime.
pub fn remove_all_pods(socket: PathBuf) {
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
                    .list_containers(berth_proto::v1::ListContainersRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .containers;
                for ctr in containers {
                    let _ = c
                        .runtime
                        .remove_container(berth_proto::v1::RemoveContainerRequest {
                            container_id: ctr.id,
                        })
                        .await;
                }
                let pods = c
                    .runtime
                    .list_pod_sandbox(berth_proto::v1::ListPodSandboxRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .items;
                for pod in pods {
                    let _ = c
                        .runtime
                        .stop_pod_sandbox(berth_proto::v1::StopPodSandboxRequest {
                            pod_sandbox_id: pod.id.clone(),
                        })
                        .await;
                    let _ = c
                        .runtime
                        .remove_pod_sandbox(berth_proto::v1::RemovePodSandboxRequest {
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

/// Last resort after the daemon is gone: kills monitors started for this daemon
/// (their command line names its directory) and the processes of its containers'
/// cgroups, then removes those cgroups.
fn kill_leftovers(dir: &Path, root_dir: &Path) {
    let needle = dir.display().to_string();
    if let Ok(procs) = fs::read_dir("/proc") {
        for p in procs.filter_map(Result::ok) {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = fs::read(p.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let ids: Vec<String> = fs::read_dir(root_dir.join("containers"))
        .map(|e| {
            e.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let controllers = crate::cgroup::hierarchies();
    let mut cgroups = Vec::new();
    for id in &ids {
        for ctl in &controllers {
            cgroups.extend(find_dirs_named(ctl, id, 4));
        }
    }
    crate::cgroup::kill_and_remove(cgroups);
}

fn find_dirs_named(root: &Path, name: &str, depth: u32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if depth == 0 {
        return out;
    }
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.filter_map(Result::ok) {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if e.file_name().to_string_lossy() == name {
                    out.push(e.path());
                } else {
                    out.extend(find_dirs_named(&e.path(), name, depth - 1));
                }
            }
        }
    }
    out
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            remove_all_pods(self.socket.clone());
        }
        if self.child.is_some()
            && let Err(e) = self.stop()
        {
            eprintln!("test daemon: {e}");
        }
        kill_leftovers(self.dir.path(), &self.root_dir);
        unmount_below(self.dir.path());
        // A daemon that attached pods to the test network leaves its bridge and
        // IPAM directory behind like any CNI user; remove them once unused.
        if self.root_dir.join("cni/results").exists() {
            remove_test_network();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- berthd log ({}) ----\n{}---- end of berthd log ----",
                self.log_path.display(),
                self.log()
            );
        }
    }
}
