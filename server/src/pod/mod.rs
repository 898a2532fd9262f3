//! Pod sandboxes: the namespaces, network and files a pod's containers share.
//!
//! A sandbox is created in steps, each undone if a later one fails: a durable record
//! marked `creating`, pinned net/IPC/UTS namespaces with the pod's sysctls and hostname,
//! the pod's /dev/shm, resolv.conf and hostname files, the infra process and its pinned
//! pid namespace (pods sharing one), CNI ADD, /etc/hosts, and finally
//! the record marked `ready`. A `creating` record found at start-up (berthd died
//! mid-way) is torn down, so a half-created pod is never visible.

pub mod files;
pub mod namespaces;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use berth_proto::v1::{
    NamespaceMode, NamespaceOption, PodSandbox, PodSandboxConfig, PodSandboxFilter,
    PodSandboxMetadata, PodSandboxState, PodSandboxStatus,
};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::cni::exec::{Attachment, CniRunner, result_ips};
use crate::cni::native::{NATIVE_NETWORK_NAME, NativeNetwork};
use crate::cni::{self, NetworkConfig};
use crate::config::{CgroupDriver, Config};
use crate::error::{Error, Result};
use crate::host::clock::now_nanos;
use crate::store;
use crate::systemd;
use namespaces::{NamespaceError, NamespaceSet, PinnedNamespaces};

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
    state: Mutex<SandboxState>,
    /// Serialises stop and remove of this sandbox.
    op: tokio::sync::Mutex<()>,
}

impl Sandbox {
    /// A copy of the current state.
    pub fn state(&self) -> SandboxState {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The current phase, without copying the rest of the state (List and Status
    /// calls read it for every pod).
    pub fn phase(&self) -> Phase {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .phase
    }

    fn set_state(&self, s: SandboxState) {
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = s;
    }

    /// Whether the sandbox is ready for containers.
    pub fn is_ready(&self) -> bool {
        self.phase() == Phase::Ready
    }

    fn metadata(&self) -> PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    fn cri_state(&self) -> PodSandboxState {
        match self.phase() {
            Phase::Ready => PodSandboxState::SandboxReady,
            Phase::Creating | Phase::NotReady => PodSandboxState::SandboxNotready,
        }
    }

    /// The namespace options the pod was created with (defaults: all POD).
    pub fn namespace_options(&self) -> NamespaceOption {
        namespace_options(&self.config)
    }

    /// `ListPodSandbox` entry.
    pub fn to_cri(&self) -> PodSandbox {
        PodSandbox {
            id: self.id.clone(),
            metadata: Some(self.metadata()),
            state: self.cri_state().into(),
            created_at: self.created_at,
            labels: self.config.labels.clone(),
            annotations: self.config.annotations.clone(),
            runtime_handler: self.runtime_handler.clone(),
        }
    }

    /// `PodSandboxStatus` body.
    pub fn status(&self) -> PodSandboxStatus {
        let state = self.state();
        let mut ips = state.ips.iter();
        PodSandboxStatus {
            id: self.id.clone(),
            metadata: Some(self.metadata()),
            state: self.cri_state().into(),
            created_at: self.created_at,
            network: Some(berth_proto::v1::PodSandboxNetworkStatus {
                ip: ips.next().cloned().unwrap_or_default(),
                additional_ips: ips
                    .map(|ip| berth_proto::v1::PodIp { ip: ip.clone() })
                    .collect(),
            }),
            linux: Some(berth_proto::v1::LinuxPodSandboxStatus {
                namespaces: Some(berth_proto::v1::Namespace {
                    options: Some(self.namespace_options()),
                }),
            }),
            labels: self.config.labels.clone(),
            annotations: self.config.annotations.clone(),
            runtime_handler: self.runtime_handler.clone(),
        }
    }

    /// `PodSandboxStatus(verbose).info["info"]`.
    pub fn verbose_info(&self) -> Value {
        let state = self.state();
        json!({
            "id": self.id,
            "phase": state.phase,
            "runtimeHandler": self.runtime_handler,
            "cgroupParent": self.cgroup_parent,
            "network": state.network,
            "hostInterface": (state.network.as_deref() == Some(NATIVE_NETWORK_NAME))
                .then(|| cni::native::host_veth_name(&self.id)),
            "ips": state.ips,
            "namespaces": state.pins,
            "shm": state.shm,
        })
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
    pods: RwLock<HashMap<String, Arc<Sandbox>>>,
    /// The native built-in network (used when `cni.builtin_mode` is `native`).
    native: Arc<NativeNetwork>,
    /// Reserved sandbox names (`name_namespace_uid_attempt`) → id.
    names: Mutex<HashMap<String, String>>,
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
            pods: RwLock::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
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
            Error::FailedPrecondition(format!(
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

    fn pods_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Sandbox>>> {
        self.pods
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn pods_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Sandbox>>> {
        self.pods
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn names(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Finds a sandbox by full id or unique id prefix (as crictl abbreviates them).
    pub fn find(&self, id: &str) -> Result<Option<Arc<Sandbox>>> {
        store::find_by_id_or_prefix(&self.pods_read(), id, "pod_sandbox_id", "pod sandbox")
    }

    /// Like [`Self::find`], but a missing sandbox is `NotFound`.
    pub fn get(&self, id: &str) -> Result<Arc<Sandbox>> {
        self.find(id)?
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id:?} not found")))
    }

    /// All sandboxes that are not being created.
    pub fn all(&self) -> Vec<Arc<Sandbox>> {
        self.pods_read()
            .values()
            .filter(|p| p.phase() != Phase::Creating)
            .cloned()
            .collect()
    }

    /// Sandboxes matching `filter`, newest first.
    pub fn list(&self, filter: Option<&PodSandboxFilter>) -> Vec<PodSandbox> {
        let pods = self.pods_read();
        let mut out: Vec<&Arc<Sandbox>> = pods
            .values()
            .filter(|p| p.phase() != Phase::Creating)
            .filter(|p| filter.is_none_or(|f| p.matches(f)))
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.created_at));
        out.into_iter().map(|p| p.to_cri()).collect()
    }

    /// `RunPodSandbox`: returns the new sandbox's id once it is ready.
    pub async fn run(&self, config: PodSandboxConfig, runtime_handler: String) -> Result<String> {
        // Unknown handlers are refused before anything is created.
        crate::container::handler::resolve(&self.config, &runtime_handler)?;
        let meta = validate(&config)?;
        let cgroup_parent = self.validate_cgroup_parent(&config)?;
        let name = sandbox_name(&meta);
        let id = store::new_id().map_err(|e| Error::io("generating a sandbox id", e))?;
        {
            let mut names = self.names();
            if let Some(holder) = names.get(&name) {
                return Err(Error::AlreadyExists(format!(
                    "pod sandbox name {name:?} is already reserved by sandbox {holder}"
                )));
            }
            names.insert(name.clone(), id.clone());
        }
        let sandbox = Arc::new(Sandbox {
            id: id.clone(),
            config,
            created_at: now_nanos(),
            runtime_handler,
            cgroup_parent,
            state: Mutex::new(SandboxState {
                phase: Phase::Creating,
                ips: Vec::new(),
                pins: PinnedNamespaces::default(),
                shm: None,
                network: None,
                infra_pid: None,
                infra_start: 0,
            }),
            op: tokio::sync::Mutex::new(()),
        });
        match self.create(&sandbox).await {
            Ok(()) => {
                self.pods_write().insert(id.clone(), sandbox);
                tracing::info!(pod = %id, name = %name, "pod sandbox ready");
                Ok(id)
            }
            Err(e) => {
                let state = sandbox.state();
                self.teardown(&sandbox, &state).await;
                self.remove_files(&id);
                self.names().remove(&name);
                tracing::info!(name = %name, error = %e, "pod sandbox creation failed; rolled back");
                Err(e)
            }
        }
    }

    async fn create(&self, sb: &Arc<Sandbox>) -> Result<()> {
        let dir = self.pod_dir(&sb.id);
        // Root's alone (CVE-2021-41091 class): the records hold the pod's config;
        // with a user namespace, its root's group may pass through to resolv.conf,
        // hosts and hostname, which its containers' set-up bind-mounts.
        let userns_root_gid = pod_user_mappings(&sb.namespace_options())
            .ok()
            .flatten()
            .and_then(|(_, gids)| {
                gids.iter()
                    .find(|m| m.container_id == 0 && m.length > 0)
                    .map(|m| m.host_id)
            });
        // Likewise its volatile files (its /dev/shm, a tmpfs others could otherwise
        // read and write) and its pinned namespaces.
        for d in [dir.clone(), self.volatile_dir(&sb.id), self.pin_dir(&sb.id)] {
            store::ensure_owned_dir(&d, userns_root_gid)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        store::write_atomic(&dir.join("config.pb"), &sb.config.encode_to_vec())
            .map_err(|e| Error::io("persisting the sandbox config", e))?;
        self.persist(sb)?;

        let opts = sb.namespace_options();
        let host_net = opts.network == i32::from(NamespaceMode::Node);
        let host_ipc = opts.ipc == i32::from(NamespaceMode::Node);
        let set = NamespaceSet {
            net: !host_net,
            ipc: !host_ipc,
            uts: !host_net,
        };
        let hostname = sb.config.hostname.clone();
        let mut sysctls: Vec<(String, String)> = sb
            .config
            .linux
            .as_ref()
            .map(|l| {
                l.sysctls
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        sysctls.sort();
        let pin_dir = self.pin_dir(&sb.id);
        let userns = match pod_user_mappings(&opts)? {
            Some((uids, gids)) => Some(namespaces::UserNamespaceRequest {
                uids,
                gids,
                holder: monitor_path()?,
            }),
            None => None,
        };
        let pins = tokio::task::spawn_blocking(move || {
            namespaces::create_and_pin(&pin_dir, set, &hostname, &sysctls, userns.as_ref())
        })
        .await
        .map_err(|e| Error::Internal(format!("namespace task: {e}")))?
        .map_err(namespace_error)?;
        self.update_state(sb, |s| s.pins = pins.clone());

        if !host_ipc {
            let shm = self.volatile_dir(&sb.id).join("shm");
            files::mount_shm(&shm)
                .map_err(|e| Error::io(format!("mounting /dev/shm at {}", shm.display()), e))?;
            self.update_state(sb, |s| s.shm = Some(shm.clone()));
        }
        let resolv = files::resolv_conf(sb.config.dns_config.as_ref())
            .map_err(|e| Error::io("reading the host's /etc/resolv.conf", e))?;
        // resolv.conf, hostname and hosts are derived files, complete before any
        // container can see them and useless after a reboot (the pod is gone then): no
        // fsync (write_atomic's two per file were a good part of RunPodSandbox).
        std::fs::write(dir.join("resolv.conf"), resolv.as_bytes())
            .map_err(|e| Error::io("writing resolv.conf", e))?;
        let hostname = pod_hostname(sb);
        std::fs::write(dir.join("hostname"), format!("{hostname}\n").as_bytes())
            .map_err(|e| Error::io("writing hostname", e))?;

        if opts.pid == i32::from(NamespaceMode::Pod) {
            let (pid, mut unshare) = start_infra(pins.user.as_deref(), &sb.id).await?;
            // Pinned now, while `unshare` is unreaped: the infra is then known as its
            // child, and containers join the pin, never a /proc/<pid> path that a
            // reused pid would make name another process's namespace.
            let parent = unshare.id().unwrap_or(0);
            let dir = self.pin_dir(&sb.id);
            let pinned = tokio::task::spawn_blocking(move || {
                namespaces::pin_pid_namespace(&dir, pid, parent)
            })
            .await
            .map_err(|e| Error::Internal(format!("namespace task: {e}")))
            .and_then(|r| r.map_err(namespace_error));
            if pinned.is_err() {
                // SIGKILL to unshare; --kill-child takes the infra with it.
                let _ = unshare.start_kill();
            }
            // Reap `unshare` whenever it ends (it lives as long as the infra).
            tokio::spawn(async move {
                let _ = unshare.wait().await;
            });
            let (pin, start) = pinned?;
            self.update_state(sb, |s| {
                s.infra_pid = Some(pid);
                s.infra_start = start;
                s.pins.pid = Some(pin);
            });
            self.persist(sb)?;
            if matches!(self.config.cgroup_driver, CgroupDriver::Systemd) {
                // The infra's own scope in the pod slice, as containers get theirs:
                // not left in berthd's cgroup, where a restart of berthd's service
                // would take it along.
                let unit = systemd::scope_name(&sb.id);
                let pid = u32::try_from(pid)
                    .map_err(|_| Error::Internal(format!("infra pid {pid} out of range")))?;
                let props = systemd::scope_properties(
                    systemd::pod_slice(&sb.cgroup_parent),
                    pid,
                    format!("berth pod {} infra", sb.id),
                    &oci_spec::runtime::LinuxResources::default(),
                )?;
                systemd::client().start_scope(&unit, &props).await?;
            }
        }

        let mut ips = Vec::new();
        if let Some(netns) = &pins.net {
            let net = self.network()?;
            self.update_state(sb, |s| s.network = Some(net.name.clone()));
            if net.source == cni::ConfigSource::BuiltinNative {
                ips = self.native_add(sb, netns).await?;
            } else {
                let att = self.attachment(sb, netns);
                let result = self.cni_runner().add(&net, &att).await.map_err(|e| {
                    Error::Internal(format!("pod sandbox {}: pod network: {e}", sb.id))
                })?;
                ips = result_ips(&result);
            }
        }
        std::fs::write(dir.join("hosts"), files::hosts(&hostname, &ips).as_bytes())
            .map_err(|e| Error::io("writing hosts", e))?;
        self.update_state(sb, |s| {
            s.ips = ips.clone();
            s.phase = Phase::Ready;
        });
        self.persist(sb)
    }

    /// Attaches the pod to the native built-in network; a pod with hostPorts then runs
    /// the portmap plugin with the native attachment as its `prevResult`. On error the
    /// caller's teardown undoes what was done.
    async fn native_add(&self, sb: &Sandbox, netns: &Path) -> Result<Vec<String>> {
        let att = self.attachment(sb, netns);
        let runner = self.cni_runner();
        let has_ports = att.capabilities.contains_key("portMappings");
        if has_ports && cni::find_plugin(&runner.plugin_dirs, "portmap").is_none() {
            return Err(Error::FailedPrecondition(format!(
                "the pod has hostPort mappings, which need CNI plugin \"portmap\", but it is not in {} (install containernetworking-plugins)",
                runner
                    .plugin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let cidrs = self
            .pod_cidrs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let subnet = cni::native::pod_subnet(&self.config.cni.builtin_subnet, &cidrs)
            .map_err(|e| Error::FailedPrecondition(format!("pod network: {e}")))?;
        let native = Arc::clone(&self.native);
        let bridge = self.config.cni.builtin_bridge.clone();
        let id = sb.id.clone();
        let path = netns.to_path_buf();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || native.add(&bridge, &subnet, &id, &path))
            .await
            .map_err(|e| Error::Internal(format!("pod network task: {e}")))?
            .map_err(|e| Error::Internal(format!("pod sandbox {}: pod network: {e}", sb.id)))?;
        tracing::debug!(
            pod = %sb.id,
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "attached to the native network"
        );
        if has_ports {
            runner
                .add_after(&cni::native_portmap(), &att, Some(result.clone()))
                .await
                .map_err(|e| {
                    Error::Internal(format!(
                        "pod sandbox {}: pod network (hostPort): {e}",
                        sb.id
                    ))
                })?;
        }
        Ok(result_ips(&result))
    }

    /// Detaches the pod from the native network: portmap DEL (hostPort pods only), then
    /// the host veth and the pod's addresses. Idempotent.
    async fn native_del(&self, sb: &Sandbox, netns: &Path) -> std::result::Result<(), String> {
        let att = self.attachment(sb, netns);
        let mut first_error = None;
        if att.capabilities.contains_key("portMappings")
            && let Err(e) = self.cni_runner().del(&cni::native_portmap(), &att).await
        {
            first_error = Some(e.to_string());
        }
        let native = Arc::clone(&self.native);
        let id = sb.id.clone();
        let res = tokio::task::spawn_blocking(move || native.del(&id))
            .await
            .map_err(|e| format!("pod network task: {e}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        match (first_error, res) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(())) => Ok(()),
        }
    }

    fn network(&self) -> Result<NetworkConfig> {
        let cidrs = self
            .pod_cidrs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        cni::check_ready(&self.cni_config(), &cidrs)
            .map_err(|e| Error::FailedPrecondition(format!("pod network is not ready: {e}")))
    }

    fn attachment(&self, sb: &Sandbox, netns: &Path) -> Attachment {
        let meta = sb.metadata();
        let mut caps = Map::new();
        let ports: Vec<Value> = sb
            .config
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| {
                let proto = match berth_proto::v1::Protocol::try_from(p.protocol) {
                    Ok(berth_proto::v1::Protocol::Udp) => "udp",
                    Ok(berth_proto::v1::Protocol::Sctp) => "sctp",
                    _ => "tcp",
                };
                json!({
                    "hostPort": p.host_port,
                    "containerPort": p.container_port,
                    "protocol": proto,
                    "hostIP": p.host_ip,
                })
            })
            .collect();
        if !ports.is_empty() {
            caps.insert("portMappings".into(), Value::Array(ports));
        }
        Attachment {
            container_id: sb.id.clone(),
            netns: netns.to_path_buf(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), meta.namespace.clone()),
                ("K8S_POD_NAME".into(), meta.name.clone()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), sb.id.clone()),
                ("K8S_POD_UID".into(), meta.uid),
            ],
            capabilities: caps,
        }
    }

    fn update_state(&self, sb: &Sandbox, f: impl FnOnce(&mut SandboxState)) {
        let mut s = sb.state();
        f(&mut s);
        sb.set_state(s);
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
        let bytes = serde_json::to_vec_pretty(&record)
            .map_err(|e| Error::Internal(format!("encoding sandbox record: {e}")))?;
        store::write_atomic(&self.pod_dir(&sb.id).join("record.json"), &bytes)
            .map_err(|e| Error::io("persisting the sandbox record", e))
    }

    /// Undoes what a sandbox holds on the host: CNI attachment, /dev/shm, namespace
    /// pins. Best effort: every step runs even if an earlier one failed; the first
    /// CNI error is returned so the caller (and kubelet) can retry.
    async fn teardown(&self, sb: &Sandbox, state: &SandboxState) -> Option<Error> {
        let mut first_error = None;
        if let (Some(netns), Some(network)) = (&state.pins.net, &state.network)
            && network == NATIVE_NETWORK_NAME
        {
            if let Err(e) = self.native_del(sb, netns).await {
                tracing::warn!(pod = %sb.id, error = %e, "native network teardown failed");
                first_error = Some(Error::Internal(format!(
                    "tearing down the pod network: {e}"
                )));
            }
        } else if let (Some(netns), Some(network)) = (&state.pins.net, &state.network) {
            // Use the network the pod was attached to, even if the config changed.
            let net = self
                .network()
                .ok()
                .filter(|n| &n.name == network)
                .unwrap_or_else(|| NetworkConfig {
                    source: cni::ConfigSource::Builtin,
                    name: network.clone(),
                    conflist: json!({ "name": network, "plugins": [] }),
                    plugin_types: Vec::new(),
                });
            let att = self.attachment(sb, netns);
            if let Err(e) = self.cni_runner().del(&net, &att).await {
                tracing::warn!(pod = %sb.id, error = %e, "CNI DEL failed");
                first_error = Some(Error::Internal(format!(
                    "tearing down the pod network: {e}"
                )));
            }
        }
        if let Some(infra) = infra_of(state) {
            // pid 1 of the pod's pid namespace: every process in it dies with it.
            infra.signal(libc::SIGKILL);
        }
        if state.pins.pid.is_some() && matches!(self.config.cgroup_driver, CgroupDriver::Systemd) {
            let unit = systemd::scope_name(&sb.id);
            if let Err(e) = systemd::client().stop_unit(&unit).await {
                tracing::warn!(pod = %sb.id, %unit, error = %e, "stopping the infra's scope");
            }
        }
        if let Some(shm) = &state.shm
            && let Err(e) = crate::host::mounts::unmount(shm)
        {
            tracing::warn!(pod = %sb.id, error = %e, "could not unmount /dev/shm");
        }
        namespaces::unpin(&state.pins);
        let _ = std::fs::remove_dir(self.pin_dir(&sb.id));
        first_error
    }

    /// What a sandbox berthd died creating may hold beyond what its record says: the
    /// record is rewritten only after some steps, so namespaces pinned, a /dev/shm
    /// mounted or a CNI ADD begun since the last write are found by their fixed paths
    /// (tearing down what was never set up is harmless: unmounting a missing pin and
    /// CNI DEL of an unknown attachment are no-ops).
    fn creating_leftovers(&self, id: &str, mut state: SandboxState) -> SandboxState {
        let pins = self.pin_dir(id);
        for (slot, name) in [
            (&mut state.pins.net, "net"),
            (&mut state.pins.ipc, "ipc"),
            (&mut state.pins.uts, "uts"),
            (&mut state.pins.pid, "pid"),
        ] {
            let pin = pins.join(name);
            if slot.is_none() && pin.exists() {
                *slot = Some(pin);
            }
        }
        let shm = self.volatile_dir(id).join("shm");
        if state.shm.is_none() && shm.exists() {
            state.shm = Some(shm);
        }
        if state.network.is_none() && state.pins.net.is_some() {
            state.network = self.network().ok().map(|n| n.name);
        }
        state
    }

    fn remove_files(&self, id: &str) {
        for dir in [self.pod_dir(id), self.volatile_dir(id), self.pin_dir(id)] {
            crate::store::remove_dir_all_eventually(dir, format!("sandbox files of pod {id}"));
        }
    }

    /// `StopPodSandbox`: idempotent; an unknown id is not an error.
    pub async fn stop(&self, id: &str) -> Result<()> {
        let Some(sb) = self.find(id)? else {
            return Ok(());
        };
        let _op = sb.op.lock().await;
        self.stop_locked(&sb).await
    }

    async fn stop_locked(&self, sb: &Sandbox) -> Result<()> {
        let state = sb.state();
        if state.phase != Phase::Ready {
            return Ok(());
        }
        if let Some(e) = self.teardown(sb, &state).await {
            return Err(e);
        }
        self.update_state(sb, |s| {
            s.phase = Phase::NotReady;
            s.pins = PinnedNamespaces::default();
            s.shm = None;
            s.infra_pid = None;
            s.infra_start = 0;
        });
        self.persist(sb)?;
        tracing::info!(pod = %sb.id, "pod sandbox stopped");
        Ok(())
    }

    /// `RemovePodSandbox`: stops the sandbox if needed and forgets it. Idempotent.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let Some(sb) = self.find(id)? else {
            return Ok(());
        };
        let _op = sb.op.lock().await;
        self.stop_locked(&sb).await?;
        self.remove_files(&sb.id);
        self.pods_write().remove(&sb.id);
        if matches!(self.config.cgroup_driver, CgroupDriver::Systemd) {
            let shared = self
                .pods_read()
                .values()
                .any(|o| o.cgroup_parent == sb.cgroup_parent);
            systemd::release_pod_slice(&sb.id, &sb.cgroup_parent, shared).await;
        }
        let name = sandbox_name(&sb.metadata());
        let mut names = self.names();
        if names.get(&name) == Some(&sb.id) {
            names.remove(&name);
        }
        tracing::info!(pod = %sb.id, "pod sandbox removed");
        Ok(())
    }

    /// Rebuilds the index from the records on disk. Sandboxes berthd died creating
    /// are torn down; ready sandboxes whose namespaces are gone (a reboot) are
    /// stopped, releasing their IPs.
    pub async fn recover(&self) -> Result<()> {
        let dirs = store::record_dirs(&self.records_dir())
            .map_err(|e| Error::io("listing sandbox records", e))?;
        for dir in dirs {
            let id = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match self.load(&dir) {
                Ok(sb) => {
                    let sb = Arc::new(sb);
                    let state = sb.state();
                    match state.phase {
                        Phase::Creating => {
                            tracing::info!(pod = %id, "removing a sandbox berthd died creating");
                            let state = self.creating_leftovers(&id, state);
                            self.teardown(&sb, &state).await;
                            kill_unrecorded_infra(&id);
                            self.remove_files(&id);
                            continue;
                        }
                        Phase::Ready
                            if state.pins.all().any(|p| !p.exists())
                                || (state.infra_pid.is_some() && infra_of(&state).is_none()) =>
                        {
                            tracing::info!(pod = %id, "sandbox namespaces are gone (reboot?); stopping it");
                            if let Err(e) = self.stop_locked(&sb).await {
                                tracing::warn!(pod = %id, error = %e, "stopping a stale sandbox");
                            }
                        }
                        _ => {}
                    }
                    self.names()
                        .insert(sandbox_name(&sb.metadata()), id.clone());
                    self.pods_write().insert(id, sb);
                }
                Err(e) => {
                    tracing::warn!(pod = %id, error = %e, "unreadable sandbox record; removing it");
                    self.remove_files(&id);
                }
            }
        }
        // Addresses of the native network whose pod has no record any more (berthd died
        // between allocating and recording, or the record was lost) go back to the pool.
        let live: std::collections::HashSet<String> = self.pods_read().keys().cloned().collect();
        for ip in self.native.ipam().release_orphans(&live) {
            tracing::info!(ip = %ip, "released a native network address no pod holds");
        }
        Ok(())
    }

    fn load(&self, dir: &Path) -> std::result::Result<Sandbox, String> {
        let record: Record = serde_json::from_slice(
            &std::fs::read(dir.join("record.json")).map_err(|e| format!("record.json: {e}"))?,
        )
        .map_err(|e| format!("record.json: {e}"))?;
        let config = PodSandboxConfig::decode(
            std::fs::read(dir.join("config.pb"))
                .map_err(|e| format!("config.pb: {e}"))?
                .as_slice(),
        )
        .map_err(|e| format!("config.pb: {e}"))?;
        Ok(Sandbox {
            id: record.id,
            config,
            created_at: record.created_at,
            runtime_handler: record.runtime_handler,
            cgroup_parent: record.cgroup_parent,
            state: Mutex::new(record.state),
            op: tokio::sync::Mutex::new(()),
        })
    }

    fn validate_cgroup_parent(&self, config: &PodSandboxConfig) -> Result<String> {
        let parent = config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default();
        if matches!(self.config.cgroup_driver, CgroupDriver::Systemd) {
            systemd::validate_pod_slice(&parent, systemd::systemd_running())?;
            return Ok(parent);
        }
        if parent.is_empty() {
            return Ok(parent);
        }
        if parent.contains("..") || parent.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "linux.cgroup_parent {parent:?} must not contain \"..\""
            )));
        }
        match self.config.cgroup_driver {
            CgroupDriver::Cgroupfs if parent.ends_with(".slice") => {
                Err(Error::InvalidArgument(format!(
                    "linux.cgroup_parent {parent:?} is a systemd slice, but berthd uses the cgroupfs driver (set cgroup_driver = \"systemd\" or give a path like /kubepods/pod<uid>)"
                )))
            }
            _ => Ok(parent),
        }
    }
}

/// Starts the pod's infra process: pid 1 of a new pid namespace that the pod's
/// containers join, reaping orphans. `unshare --pid --fork` does the namespace
/// creation in its own single-threaded process (berthd never forks containers);
/// the infra is `berth-monitor pause`, found next to berthd.
///
/// With `userns` (the pod's pinned user namespace) `unshare` runs inside it as its root,
/// so the pid namespace is owned by it and the pod's containers may mount /proc.
/// Returns the infra's pid and the `unshare` child, unreaped: the caller pins the
/// infra's pid namespace while the infra is still known as that child's child, then
/// reaps it.
async fn start_infra(
    userns: Option<&Path>,
    sandbox_id: &str,
) -> Result<(i32, tokio::process::Child)> {
    let monitor = monitor_path()?;
    let mut cmd = tokio::process::Command::new(unshare_path());
    if let Some(pin) = userns {
        let fd = std::fs::File::open(pin).map_err(|e| {
            Error::io(
                format!("opening the pod's user namespace {}", pin.display()),
                e,
            )
        })?;
        // SAFETY: runs in the forked child before exec; setns(2), setresgid(2),
        // setresuid(2) and setgroups(2) are async-signal-safe. `fd` is moved into the
        // closure and stays open (it is close-on-exec) until the child execs.
        unsafe {
            cmd.pre_exec(move || {
                use std::os::fd::AsRawFd;
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWUSER) != 0
                    || libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(0, 0, 0) != 0
                    || libc::setresuid(0, 0, 0) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd
        .arg("--pid")
        .arg("--fork")
        .arg("--kill-child=SIGKILL")
        .arg("--")
        .arg(&monitor)
        .arg("pause")
        // Names the sandbox, so that recovery finds an infra started by a berthd
        // that died before recording its pid.
        .env(INFRA_ID_ENV, sandbox_id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            Error::io(
                "starting the pod infra process (unshare from util-linux)",
                e,
            )
        })?;
    let parent = child.id().unwrap_or(0);
    // The forked child of `unshare` is the infra; it is pid 1 inside. It appears within
    // a millisecond or two: poll at the timer's finest step rather than make every pod
    // wait a coarse one.
    for _ in 0..1000 {
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<i32>().ok())
        {
            return Ok((pid, child));
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let mut child = child;
    let _ = child.start_kill();
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Err(Error::Internal(format!(
        "pod sandbox {sandbox_id}: the pod infra process did not start within 1s (is the node overloaded?); retry"
    )))
}

/// util-linux `unshare`, looked up in PATH once (every pod runs it; exec'ing a bare
/// name walks PATH with a failing execve per directory).
fn unshare_path() -> &'static Path {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join("unshare"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("unshare"))
    })
}

/// `berth-monitor`, next to berthd: the pod infra and user namespace holder.
fn monitor_path() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| Error::io("locating berthd", e))?;
    let monitor = exe.with_file_name("berth-monitor");
    if !monitor.exists() {
        return Err(Error::FailedPrecondition(format!(
            "berth-monitor not found next to berthd ({})",
            monitor.display()
        )));
    }
    Ok(monitor)
}

fn namespace_error(e: NamespaceError) -> Error {
    match e {
        NamespaceError::Sysctl(m) => Error::InvalidArgument(format!("linux.sysctls: {m}")),
        NamespaceError::Io { step, source } => {
            Error::io(format!("setting up pod namespaces: {step}"), source)
        }
    }
}

/// The environment variable naming an infra process's sandbox.
const INFRA_ID_ENV: &str = "BERTH_SANDBOX_ID";

/// SIGKILLs infra processes of sandbox `id` (found by [`INFRA_ID_ENV`]): berthd may
/// have died between starting one and recording its pid. Only real berth-monitors
/// are considered (procs::berth_monitors); a container process that copies an
/// infra's arguments and environment is not one.
fn kill_unrecorded_infra(id: &str) {
    let needle = format!("{INFRA_ID_ENV}={id}");
    let infras = crate::host::procs::berth_monitors(|dir, args| {
        args.get(1) == Some(&b"pause".as_slice())
            && std::fs::read(dir.join("environ"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .any(|v| v == needle.as_bytes())
    });
    for infra in infras {
        tracing::info!(pod = %id, pid = infra.pid.raw(), "killing an infra process berthd died starting");
        infra.signal(libc::SIGKILL);
    }
}

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

/// The validated uid and gid mappings of a pod with its own user namespace
/// (`userns_options` mode POD), `None` for mode NODE (the host's user namespace).
/// Errors are InvalidArgument naming the offending field.
pub fn pod_user_mappings(
    opts: &NamespaceOption,
) -> Result<
    Option<(
        Vec<crate::host::idmap::IdMapping>,
        Vec<crate::host::idmap::IdMapping>,
    )>,
> {
    let Some(userns) = &opts.userns_options else {
        return Ok(None);
    };
    match NamespaceMode::try_from(userns.mode) {
        Ok(NamespaceMode::Node) => return Ok(None),
        Ok(NamespaceMode::Pod) => {}
        _ => {
            return Err(Error::InvalidArgument(format!(
                "namespace_options.userns_options.mode: mode {} is not valid, only POD and NODE are",
                userns.mode
            )));
        }
    }
    for (field, mode) in [
        ("network", opts.network),
        ("pid", opts.pid),
        ("ipc", opts.ipc),
    ] {
        if mode == i32::from(NamespaceMode::Node) {
            return Err(Error::InvalidArgument(format!(
                "namespace_options.{field}: the host's {field} namespace cannot be used with userns_options mode POD"
            )));
        }
    }
    let convert = |maps: &[berth_proto::v1::IdMapping]| -> Vec<crate::host::idmap::IdMapping> {
        maps.iter()
            .map(|m| crate::host::idmap::IdMapping {
                container_id: m.container_id,
                host_id: m.host_id,
                length: m.length,
            })
            .collect()
    };
    let uids = convert(&userns.uids);
    let gids = convert(&userns.gids);
    for (field, maps) in [
        ("namespace_options.userns_options.uids", &uids),
        ("namespace_options.userns_options.gids", &gids),
    ] {
        namespaces::validate_mappings(field, maps).map_err(Error::InvalidArgument)?;
    }
    Ok(Some((uids, gids)))
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

/// The unique name kubelet's metadata gives a sandbox (as containerd forms it).
pub fn sandbox_name(meta: &PodSandboxMetadata) -> String {
    format!(
        "{}_{}_{}_{}",
        meta.name, meta.namespace, meta.uid, meta.attempt
    )
}

fn validate(config: &PodSandboxConfig) -> Result<PodSandboxMetadata> {
    let meta = config
        .metadata
        .clone()
        .ok_or_else(|| Error::InvalidArgument("config.metadata is required".into()))?;
    for (field, value) in [
        ("name", &meta.name),
        ("namespace", &meta.namespace),
        ("uid", &meta.uid),
    ] {
        if value.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "config.metadata.{field} is required"
            )));
        }
        if value.contains('/') || value.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "config.metadata.{field} {value:?} must not contain '/'"
            )));
        }
    }
    let opts = namespace_options(config);
    for (field, mode) in [
        ("network", opts.network),
        ("pid", opts.pid),
        ("ipc", opts.ipc),
    ] {
        match NamespaceMode::try_from(mode) {
            Ok(NamespaceMode::Pod | NamespaceMode::Node) => {}
            Ok(NamespaceMode::Container) if field == "pid" => {}
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "namespace_options.{field}: mode {mode} is not valid for a pod sandbox"
                )));
            }
        }
    }
    pod_user_mappings(&opts)?;
    if !config.log_directory.is_empty() && !Path::new(&config.log_directory).is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "config.log_directory {:?} must be an absolute path",
            config.log_directory
        )));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::v1::{LinuxPodSandboxConfig, LinuxSandboxSecurityContext};

    fn config(name: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn metadata_is_required_and_named() {
        let mut c = config("a");
        c.metadata.as_mut().expect("meta").uid.clear();
        let e = validate(&c).expect_err("uid missing");
        assert!(e.to_string().contains("metadata.uid"), "{e}");
        let e = validate(&PodSandboxConfig::default()).expect_err("no metadata");
        assert!(e.to_string().contains("metadata"), "{e}");
    }

    #[test]
    fn target_namespace_mode_is_invalid_for_pods() {
        let mut c = config("a");
        c.linux = Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: NamespaceMode::Target.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let e = validate(&c).expect_err("target");
        assert!(e.to_string().contains("namespace_options.pid"), "{e}");
    }

    #[test]
    fn cgroup_parent_must_match_the_driver() {
        let m = PodManager::new(Config::default(), Arc::default());
        let mut c = config("a");
        c.linux = Some(LinuxPodSandboxConfig {
            cgroup_parent: "/test.slice".into(),
            ..Default::default()
        });
        let e = m
            .validate_cgroup_parent(&c)
            .expect_err("slice with cgroupfs");
        assert!(e.to_string().contains("systemd slice"), "{e}");
        c.linux.as_mut().expect("linux").cgroup_parent = "/kubepods/burstable/podu1".into();
        assert_eq!(
            m.validate_cgroup_parent(&c).expect("path"),
            "/kubepods/burstable/podu1"
        );
    }

    #[test]
    fn names_follow_containerds_form() {
        let meta = config("web").metadata.expect("meta");
        assert_eq!(sandbox_name(&meta), "web_default_u1_0");
    }
}
