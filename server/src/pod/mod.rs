//! Pod sandboxes: the namespaces, network and files a pod's containers share.
//!
//! A sandbox is created in steps, each undone if a later one fails: a durable record
//! marked `creating`, pinned net/IPC/UTS namespaces with the pod's sysctls and hostname,
//! the pod's /dev/shm, resolv.conf and hostname files, the infra process and its pinned
//! pid namespace (pods sharing one), CNI ADD, /etc/hosts, and finally
//! the record marked `ready`. A `creating` record found at start-up (berthd died
//! mid-way) is torn down, so a half-created pod is never visible.

pub mod error;
#[allow(unsafe_code)] // mount(2) of the pod's /dev/shm tmpfs
pub mod files;
#[allow(unsafe_code)] // unshare(2), setns(2), sethostname(2), bind mounts of the namespace pins
pub mod namespaces;
mod network;
mod recovery;
mod request;
#[allow(unsafe_code)] // the pre_exec hook entering the pod's user namespace
mod run;
mod stop;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use berth_proto::v1::{
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata,
    PodSandboxState,
};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub use self::error::{Error, Result};
use crate::cni::exec::{Attachment, CniRunner, result_ips};
use crate::cni::native::{NATIVE_NETWORK_NAME, NativeNetwork};
use crate::cni::{self, NetworkConfig};
use crate::config::{CgroupDriver, Config};
use crate::error::Plain;
use crate::host::clock::now_nanos;
use crate::store::{self, StateCell};
use crate::systemd;
use namespaces::{NamespaceError, NamespaceSet, PinnedNamespaces};
use request::validate;
pub use request::{pod_user_mappings, sandbox_name};

/// The runtime handler berthd runs pods with when the request names none.
pub const DEFAULT_HANDLER: &str = "";
const RECORD_VERSION: u32 = 1;

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Being set up; never shown to clients.
    Creating,
    /// Namespaces and network are up.
    Ready,
    /// Stopped: network torn down, namespaces released.
    NotReady,
}

/// The mutable part of a sandbox, persisted in its record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxState {
    /// Life-cycle phase.
    pub phase: Phase,
    /// Pod IPs from CNI, first one primary.
    pub ips: Vec<String>,
    /// Pinned namespaces.
    pub pins: PinnedNamespaces,
    /// The pod's /dev/shm tmpfs, when it has its own.
    pub shm: Option<PathBuf>,
    /// The CNI network the pod is attached to.
    pub network: Option<String>,
    /// Pid (on the host) of the infra process that is pid 1 of the pod's shared pid
    /// namespace, when the pod shares one.
    #[serde(default)]
    pub infra_pid: Option<i32>,
    /// The infra process's start time (/proc/<pid>/stat): with the pid, what
    /// identifies it (0 in older records).
    #[serde(default)]
    pub infra_start: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    version: u32,
    id: String,
    created_at: i64,
    runtime_handler: String,
    cgroup_parent: String,
    state: SandboxState,
}

/// One pod sandbox.
#[derive(Debug)]
pub struct Sandbox {
    /// 64-hex id.
    pub id: String,
    /// The config kubelet created it with, verbatim.
    pub config: PodSandboxConfig,
    /// Creation time, ns since the epoch.
    pub created_at: i64,
    /// Runtime handler name as requested.
    pub runtime_handler: String,
    /// Cgroup parent (validated against the driver).
    pub cgroup_parent: String,
    state: StateCell<SandboxState>,
    /// Serialises stop and remove of this sandbox.
    op: tokio::sync::Mutex<()>,
}

impl Sandbox {
    /// A copy of the current state.
    pub fn state(&self) -> SandboxState {
        self.state.get()
    }

    /// The current phase, without copying the rest of the state (List and Status
    /// calls read it for every pod).
    pub fn phase(&self) -> Phase {
        self.state.read(|s| s.phase)
    }

    /// Whether the sandbox is ready for containers.
    pub fn is_ready(&self) -> bool {
        self.phase() == Phase::Ready
    }

    /// The metadata kubelet created it with.
    pub fn metadata(&self) -> PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    /// The CRI state: what `ListPodSandbox` and `PodSandboxStatus` show, and what a
    /// `PodSandboxFilter`'s state is matched against.
    pub fn cri_state(&self) -> PodSandboxState {
        match self.phase() {
            Phase::Ready => PodSandboxState::SandboxReady,
            Phase::Creating | Phase::NotReady => PodSandboxState::SandboxNotready,
        }
    }

    /// The namespace options the pod was created with (defaults: all POD).
    pub fn namespace_options(&self) -> NamespaceOption {
        namespace_options(&self.config)
    }

    fn matches(&self, filter: &PodSandboxFilter) -> bool {
        if !filter.id.is_empty() && !self.id.starts_with(&filter.id) {
            return false;
        }
        if let Some(s) = &filter.state
            && s.state != i32::from(self.cri_state())
        {
            return false;
        }
        filter
            .label_selector
            .iter()
            .all(|(k, v)| self.config.labels.get(k) == Some(v))
    }
}

/// Creates, tracks and removes pod sandboxes.
#[derive(Debug)]
pub struct PodManager {
    config: Config,
    pod_cidrs: Arc<RwLock<Vec<String>>>,
    /// The sandboxes by id, and the reserved sandbox names
    /// (`name_namespace_uid_attempt`) → id.
    pods: store::Records<Sandbox>,
    /// The native built-in network (used when `cni.builtin_mode` is `native`).
    native: Arc<NativeNetwork>,
    /// `[cni]` with the keys a config reload (SIGHUP) may change: conf_dir and
    /// plugin_dirs.
    cni: RwLock<crate::config::CniConfig>,
}

impl PodManager {
    /// A manager over `config`'s directories; call [`Self::recover`] before serving.
    pub fn new(config: Config, pod_cidrs: Arc<RwLock<Vec<String>>>) -> Self {
        Self {
            native: Arc::new(NativeNetwork::new(&config.state_dir)),
            cni: RwLock::new(config.cni.clone()),
            config,
            pod_cidrs,
            pods: store::Records::new("pod_sandbox_id", "pod sandbox"),
        }
    }

    /// What the pod gives each of its containers: namespaces, shm, DNS files.
    /// A pod sharing one pid namespace whose infra process is gone (and whose
    /// namespace is not pinned) is FailedPrecondition: its containers cannot join it.
    pub fn pod_context(&self, sb: &Sandbox) -> Result<crate::container::spec::PodContext> {
        let state = sb.state();
        // The pinned pid namespace; a pod created before pid namespaces were pinned
        // has only the infra's pid, named by /proc path only while the infra is
        // verifiably the process berthd started (pid and start time).
        // Either way a dead infra is a clear FailedPrecondition (its pinned namespace
        // takes no new process: clone would fail with ENOMEM).
        let infra_gone = || {
            Error::failed_precondition(format!(
                "pod sandbox {}: its infra process (pid 1 of the pod's shared pid namespace) is gone; stop and recreate the pod",
                sb.id
            ))
        };
        let pidns = match (&state.pins.pid, state.infra_pid) {
            // The check reads /proc and opens a pidfd: at berthd's fd limit it fails
            // for that reason, which is the error to report, not a dead infra.
            (_, Some(pid)) => match crate::host::procs::Pid::new(pid)
                .map(|p| crate::host::procs::verify_checked(p, state.infra_start))
                .transpose()
                .map_err(|e| Error::io("checking the pod's infra process", e))?
                .flatten()
            {
                None => return Err(infra_gone()),
                Some(_) => state
                    .pins
                    .pid
                    .clone()
                    .or_else(|| Some(PathBuf::from(format!("/proc/{pid}/ns/pid")))),
            },
            (Some(pin), None) => Some(pin.clone()),
            (None, None) => None,
        };
        let dir = self.pod_dir(&sb.id);
        let meta = sb.metadata();
        let opts = sb.namespace_options();
        Ok(crate::container::spec::PodContext {
            sandbox_id: sb.id.clone(),
            sandbox_name: sandbox_name(&meta),
            netns: state.pins.net.clone(),
            ipcns: state.pins.ipc.clone(),
            utsns: state.pins.uts.clone(),
            userns: state.pins.user.clone().and_then(|path| {
                let (uids, gids) = pod_user_mappings(&opts).ok().flatten()?;
                Some(crate::container::spec::PodUserNamespace { path, uids, gids })
            }),
            pidns,
            host_pid: opts.pid == i32::from(NamespaceMode::Node),
            shm: state.shm.clone(),
            resolv_conf: dir.join("resolv.conf"),
            hosts: dir.join("hosts"),
            hostname: dir.join("hostname"),
            hostname_value: pod_hostname(sb),
            cgroup_parent: sb.cgroup_parent.clone(),
            pod_name: meta.name.clone(),
            pod_namespace: meta.namespace.clone(),
            pod_uid: meta.uid.clone(),
            annotations: sb.config.annotations.clone(),
            log_directory: sb.config.log_directory.clone(),
            runtime_handler: sb.runtime_handler.clone(),
        })
    }

    fn records_dir(&self) -> PathBuf {
        self.config.root_dir.join("pods")
    }

    fn pod_dir(&self, id: &str) -> PathBuf {
        self.records_dir().join(id)
    }

    fn volatile_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("pods").join(id)
    }

    fn pin_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("ns").join(id)
    }

    /// The CNI configuration in force.
    pub fn cni_config(&self) -> crate::config::CniConfig {
        self.cni
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Looks for network configs in `conf_dir` and plugins in `plugin_dirs` from now
    /// on (a config reload); pods already set up keep their network.
    pub fn set_cni_dirs(&self, conf_dir: PathBuf, plugin_dirs: Vec<PathBuf>) {
        let mut cni = self
            .cni
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cni.conf_dir = conf_dir;
        cni.plugin_dirs = plugin_dirs;
    }

    fn cni_runner(&self) -> CniRunner {
        CniRunner {
            plugin_dirs: self.cni_config().plugin_dirs,
            cache_dir: self.config.root_dir.join("cni").join("results"),
        }
    }

    /// Finds a sandbox by full id or unique id prefix (as crictl abbreviates them).
    pub fn find(&self, id: &str) -> Result<Option<Arc<Sandbox>>> {
        Ok(self.pods.find(id)?)
    }

    /// Like [`Self::find`], but a missing sandbox is `NotFound`.
    pub fn get(&self, id: &str) -> Result<Arc<Sandbox>> {
        Ok(self.pods.get(id)?)
    }

    /// All sandboxes that are not being created.
    pub fn all(&self) -> Vec<Arc<Sandbox>> {
        self.pods
            .read()
            .values()
            .filter(|p| p.phase() != Phase::Creating)
            .cloned()
            .collect()
    }

    /// Sandboxes matching `filter`, newest first.
    pub fn list(&self, filter: Option<&PodSandboxFilter>) -> Vec<Arc<Sandbox>> {
        let pods = self.pods.read();
        let mut out: Vec<&Arc<Sandbox>> = pods
            .values()
            .filter(|p| p.phase() != Phase::Creating)
            .filter(|p| filter.is_none_or(|f| p.matches(f)))
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.created_at));
        out.into_iter().cloned().collect()
    }

    fn update_state(&self, sb: &Sandbox, f: impl FnOnce(&mut SandboxState)) {
        sb.state.update(f);
    }

    fn persist(&self, sb: &Sandbox) -> Result<()> {
        let record = Record {
            version: RECORD_VERSION,
            id: sb.id.clone(),
            created_at: sb.created_at,
            runtime_handler: sb.runtime_handler.clone(),
            cgroup_parent: sb.cgroup_parent.clone(),
            state: sb.state(),
        };
        store::write_record(&self.pod_dir(&sb.id), &record, "sandbox").map_err(Error::from)
    }

    /// The record goes last: it is what recovery finds, so a berthd killed between
    /// these removals finds the pod again and removes the rest (the crash storm found a
    /// volatile dir left when the record went first), as containers' removal does.
    fn remove_files(&self, id: &str) {
        for dir in [self.volatile_dir(id), self.pin_dir(id), self.pod_dir(id)] {
            crate::store::remove_dir_all_eventually(dir, format!("sandbox files of pod {id}"));
        }
    }
}

fn namespace_error(e: NamespaceError) -> Error {
    match e {
        NamespaceError::Sysctl(m) => Error::invalid_argument(format!("linux.sysctls: {m}")),
        NamespaceError::Io { step, source } => {
            Error::io(format!("setting up pod namespaces: {step}"), source)
        }
    }
}

/// The environment variable naming an infra process's sandbox.
const INFRA_ID_ENV: &str = "BERTH_SANDBOX_ID";

/// The recorded infra process of a sandbox if it still runs: the same pid with the
/// same start time (pids get reused; a container can name a process "pause").
/// Records without a start time fall back to what a container cannot forge.
fn infra_of(state: &SandboxState) -> Option<crate::host::procs::Verified> {
    let pid = crate::host::procs::Pid::new(state.infra_pid?)?;
    crate::host::procs::verify(pid, state.infra_start)
}

fn namespace_options(config: &PodSandboxConfig) -> NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

/// The pod's hostname: its config's, else the node's (as containerd does): what
/// /etc/hostname holds and what the containers get as `HOSTNAME`.
fn pod_hostname(sb: &Sandbox) -> String {
    if sb.config.hostname.is_empty() {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    } else {
        sb.config.hostname.clone()
    }
}
