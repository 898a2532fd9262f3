//! Container life cycle in berthd: overlay rootfs from the image's snapshots, the OCI
//! spec, one `berth-monitor` per container (started with a plain fork+exec; it creates
//! the container with runtime-core in its own single-threaded process and survives
//! berthd), start/stop/remove through runtime-core, exits read from the monitor's
//! exit record, and recovery of all of it after berthd restarts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use berth_image::ImageStore;
use berth_proto::v1::{
    Container as CriContainer, ContainerAttributes, ContainerConfig, ContainerFilter,
    ContainerMetadata, ContainerState, ContainerStats, ContainerStatsFilter,
    ContainerStatus as CriContainerStatus, CpuUsage, FilesystemIdentifier, FilesystemUsage,
    ImageSpec, LinuxContainerResources, MemoryUsage, UInt64Value,
};
use berth_runtime_core::monitor_protocol as protocol;
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use super::handler::{self, Handler};
use super::spec::{self, ImageConfig, PodContext, SpecInput};
use crate::config::{CgroupDriver, Config};
use crate::error::{Error, Result};
use crate::host::clock::now_nanos;
use crate::store;
use crate::systemd;

/// How long the monitor may take to create a container.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a killed container may take to be reported gone.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Largest ExecSync output kept per stream (kubelet's gRPC limit is 16 MiB).
const EXEC_OUTPUT_LIMIT: usize = 8 << 20;
const RECORD_VERSION: u32 = 1;

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Being set up; never shown.
    Creating,
    /// Created, init waiting for start.
    Created,
    /// Running.
    Running,
    /// Exited (or never started and killed).
    Exited,
}

/// Mutable, persisted state of a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CtrState {
    /// Phase.
    pub phase: Phase,
    /// Init pid on the host.
    pub pid: i32,
    /// The monitor's pid.
    pub monitor_pid: i32,
    /// The monitor's start time (clock ticks since boot, /proc/<pid>/stat): with the
    /// pid, what identifies it after a berthd restart (0 in older records).
    #[serde(default)]
    pub monitor_start: u64,
    /// Start time, ns.
    pub started_at: i64,
    /// Exit time, ns.
    pub finished_at: i64,
    /// Exit code (128+signal when killed).
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`.
    pub reason: String,
    /// Details for the reason.
    pub message: String,
    /// Whether the overlay rootfs is mounted.
    pub rootfs_mounted: bool,
    /// The process's uid, gid and supplementary groups, as resolved at creation.
    #[serde(default)]
    pub user: Option<(u32, u32, Vec<u32>)>,
    /// The pod's runtime handler (`""` = native), fixed at creation.
    #[serde(default)]
    pub runtime_handler: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    version: u32,
    id: String,
    name_key: String,
    pod_id: String,
    created_at: i64,
    image_id: String,
    image_name: String,
    image_ref: String,
    log_path: PathBuf,
    stop_signal: String,
    state: CtrState,
}

/// One container.
#[derive(Debug)]
pub struct Container {
    /// 64-hex id.
    pub id: String,
    /// Its pod.
    pub pod_id: String,
    /// CRI config, verbatim.
    pub config: ContainerConfig,
    /// Creation time, ns.
    pub created_at: i64,
    /// Image id (`sha256:...`).
    pub image_id: String,
    /// The image as the client named it.
    pub image_name: String,
    /// What kubelet records as the image id: a repo digest when there is one.
    pub image_ref: String,
    /// Absolute CRI log path (may be empty when kubelet gave none).
    pub log_path: PathBuf,
    /// STOPSIGNAL of the image.
    pub stop_signal: String,
    /// The reserved unique name (`<name>_<pod>_<namespace>_<uid>_<attempt>`).
    pub name_key: String,
    state: Mutex<CtrState>,
    changed: tokio::sync::watch::Sender<Phase>,
    op: tokio::sync::Mutex<()>,
    /// Last CPU sample (timestamp ns, usage ns), for usage_nano_cores.
    last_cpu: Mutex<Option<(i64, u64)>>,
    /// Serialises record writes, so the newest state is the one on disk.
    persist_lock: Mutex<()>,
}

impl Container {
    /// A copy of the current state.
    pub fn state(&self) -> CtrState {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The current phase, without copying the rest of the state (List and Status
    /// calls read it for every container).
    pub fn phase(&self) -> Phase {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .phase
    }

    fn update(&self, f: impl FnOnce(&mut CtrState)) {
        let phase = {
            let mut s = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut s);
            s.phase
        };
        self.changed.send_replace(phase);
    }

    fn cri_state(&self) -> ContainerState {
        match self.phase() {
            Phase::Creating | Phase::Created => ContainerState::ContainerCreated,
            Phase::Running => ContainerState::ContainerRunning,
            Phase::Exited => ContainerState::ContainerExited,
        }
    }

    fn metadata(&self) -> ContainerMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    /// `ListContainers` entry.
    pub fn to_cri(&self) -> CriContainer {
        CriContainer {
            id: self.id.clone(),
            pod_sandbox_id: self.pod_id.clone(),
            metadata: Some(self.metadata()),
            image: Some(ImageSpec {
                image: self.image_name.clone(),
                ..Default::default()
            }),
            image_ref: self.image_ref.clone(),
            state: self.cri_state().into(),
            created_at: self.created_at,
            labels: self.config.labels.clone(),
            annotations: self.config.annotations.clone(),
            image_id: self.image_id.clone(),
        }
    }

    /// `ContainerStatus` body.
    pub fn status(&self) -> CriContainerStatus {
        let s = self.state();
        CriContainerStatus {
            id: self.id.clone(),
            metadata: Some(self.metadata()),
            state: self.cri_state().into(),
            created_at: self.created_at,
            started_at: s.started_at,
            finished_at: s.finished_at,
            exit_code: s.exit_code,
            image: Some(ImageSpec {
                image: self.image_name.clone(),
                ..Default::default()
            }),
            image_ref: self.image_ref.clone(),
            reason: s.reason.clone(),
            message: s.message.clone(),
            labels: self.config.labels.clone(),
            annotations: self.config.annotations.clone(),
            mounts: self
                .config
                .mounts
                .iter()
                .map(super::image_volume::status_mount)
                .collect(),
            log_path: self.log_path.display().to_string(),
            resources: self
                .config
                .linux
                .as_ref()
                .and_then(|l| l.resources.clone())
                .map(|r| berth_proto::v1::ContainerResources {
                    linux: Some(r),
                    windows: None,
                }),
            image_id: self.image_id.clone(),
            user: s
                .user
                .as_ref()
                .map(|(uid, gid, groups)| berth_proto::v1::ContainerUser {
                    linux: Some(berth_proto::v1::LinuxContainerUser {
                        uid: i64::from(*uid),
                        gid: i64::from(*gid),
                        supplemental_groups: groups.iter().map(|g| i64::from(*g)).collect(),
                    }),
                }),
            // kubelet shows it as the container's `stopSignal` (ContainerStopSignals).
            stop_signal: self.config.stop_signal,
        }
    }

    /// `ContainerStatus(verbose).info["info"]`.
    pub fn verbose_info(&self) -> serde_json::Value {
        let s = self.state();
        json!({
            "id": self.id,
            "sandboxID": self.pod_id,
            "pid": s.pid,
            "monitorPid": s.monitor_pid,
            "phase": s.phase,
            "imageId": self.image_id,
            "logPath": self.log_path,
            "runtimeHandler": s.runtime_handler,
        })
    }

    fn matches(&self, f: &ContainerFilter) -> bool {
        if !f.id.is_empty() && !self.id.starts_with(&f.id) {
            return false;
        }
        if !f.pod_sandbox_id.is_empty() && !self.pod_id.starts_with(&f.pod_sandbox_id) {
            return false;
        }
        if let Some(s) = &f.state
            && s.state != i32::from(self.cri_state())
        {
            return false;
        }
        f.label_selector
            .iter()
            .all(|(k, v)| self.config.labels.get(k) == Some(v))
    }
}

/// Result of an ExecSync.
#[derive(Debug)]
pub struct ExecOutput {
    /// Standard output (capped).
    pub stdout: Vec<u8>,
    /// Standard error (capped).
    pub stderr: Vec<u8>,
    /// Exit code.
    pub exit_code: i32,
}

/// A container life-cycle event, for `GetContainerEvents` (kubelet's evented PLEG).
#[derive(Debug, Clone)]
pub struct Event {
    /// Container id.
    pub container_id: String,
    /// Its pod.
    pub pod_id: String,
    /// What happened.
    pub kind: berth_proto::v1::ContainerEventType,
    /// When, ns.
    pub at: i64,
}

/// Creates, tracks and removes containers.
#[derive(Debug)]
pub struct ContainerManager {
    config: Config,
    images: ImageStore,
    events: tokio::sync::broadcast::Sender<Event>,
    containers: RwLock<HashMap<String, Arc<Container>>>,
    names: Mutex<HashMap<String, String>>,
    /// Writable-layer usage, seconds old (see `fsinfo::USAGE_MAX_AGE`).
    layer_usage: crate::host::fsinfo::UsageCache,
    /// `cdi.spec_dirs`, replaced by a config reload (SIGHUP).
    cdi_spec_dirs: RwLock<Vec<PathBuf>>,
    /// The host's AppArmor and the default profile's loading.
    apparmor: Arc<super::apparmor::AppArmor>,
}

impl ContainerManager {
    /// A manager; call [`Self::recover`] before serving.
    pub fn new(config: Config, images: ImageStore) -> Self {
        Self {
            cdi_spec_dirs: RwLock::new(config.cdi.spec_dirs.clone()),
            config,
            images,
            events: tokio::sync::broadcast::channel(1024).0,
            containers: RwLock::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            layer_usage: crate::host::fsinfo::UsageCache::default(),
            apparmor: Arc::new(super::apparmor::AppArmor::detect()),
        }
    }

    /// The host's AppArmor, as detected at start.
    pub fn apparmor(&self) -> &Arc<super::apparmor::AppArmor> {
        &self.apparmor
    }

    /// Where CDI specs are looked up from now on (a config reload).
    pub fn set_cdi_spec_dirs(&self, dirs: Vec<PathBuf>) {
        *self
            .cdi_spec_dirs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = dirs;
    }

    fn records_dir(&self) -> PathBuf {
        self.config.root_dir.join("containers")
    }

    /// Subscribes to container events from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn emit(&self, ctr: &Container, kind: berth_proto::v1::ContainerEventType) {
        // No subscriber is not an error.
        let _ = self.events.send(Event {
            container_id: ctr.id.clone(),
            pod_id: ctr.pod_id.clone(),
            kind,
            at: now_nanos(),
        });
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.records_dir().join(id)
    }

    /// runtime-core's state root (volatile), shared by monitors and berth-runtime.
    /// Short on purpose: the monitors' attach sockets live below it and a Unix socket
    /// path must fit in 108 bytes (`<state_dir>/rt/<64-hex id>/attach.sock`).
    pub fn runtime_root(&self) -> PathBuf {
        self.config.state_dir.join("rt")
    }

    fn helper(&self, name: &str) -> Result<PathBuf> {
        let exe = std::env::current_exe().map_err(|e| Error::io("locating berthd", e))?;
        let candidate = exe.parent().map(|d| d.join(name));
        match candidate {
            Some(p) if p.exists() => Ok(p),
            _ => Err(Error::FailedPrecondition(format!(
                "{name} not found next to berthd ({}); install it beside berthd",
                exe.display()
            ))),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn names(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// By full id or unique prefix.
    pub fn find(&self, id: &str) -> Result<Option<Arc<Container>>> {
        store::find_by_id_or_prefix(&self.read(), id, "container_id", "container")
    }

    /// Like [`Self::find`], `NotFound` when missing.
    pub fn get(&self, id: &str) -> Result<Arc<Container>> {
        self.find(id)?
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))
    }

    /// Containers matching `filter`, newest first.
    pub fn list(&self, filter: Option<&ContainerFilter>) -> Vec<CriContainer> {
        let all = self.read();
        let mut v: Vec<&Arc<Container>> = all
            .values()
            .filter(|c| c.phase() != Phase::Creating)
            .filter(|c| filter.is_none_or(|f| c.matches(f)))
            .collect();
        v.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        v.into_iter().map(|c| c.to_cri()).collect()
    }

    /// Ids of the containers of a pod.
    pub fn in_pod(&self, pod_id: &str) -> Vec<String> {
        self.read()
            .values()
            .filter(|c| c.pod_id == pod_id)
            .map(|c| c.id.clone())
            .collect()
    }

    /// `CreateContainer`.
    pub async fn create(
        self: &Arc<Self>,
        pod_ctx: PodContext,
        config: ContainerConfig,
    ) -> Result<String> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::InvalidArgument("config.metadata is required".into()))?;
        if meta.name.is_empty() || meta.name.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "config.metadata.name {:?} must be a non-empty name without '/'",
                meta.name
            )));
        }
        let image_spec = config.image.clone().unwrap_or_default();
        let wanted = if image_spec.image.is_empty() {
            image_spec.user_specified_image.clone()
        } else {
            image_spec.image.clone()
        };
        if wanted.is_empty() {
            return Err(Error::InvalidArgument(
                "config.image.image is required".into(),
            ));
        }
        let image = self
            .images
            .status(&wanted)
            .map_err(Error::from)?
            .ok_or_else(|| {
                Error::NotFound(format!("image {wanted:?} is not present; pull it first"))
            })?;
        // CDI devices are resolved before anything is created: an unknown one fails
        // the request with nothing to roll back.
        let cdi_names = super::cdi::requested_devices(&config, &pod_ctx.annotations)?;
        let cdi = if cdi_names.is_empty() {
            super::cdi::Injection::default()
        } else {
            let dirs = self
                .cdi_spec_dirs
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            tokio::task::spawn_blocking(move || super::cdi::resolve(&dirs, &cdi_names))
                .await
                .map_err(|e| Error::Internal(format!("resolving CDI devices: {e}")))??
        };
        // The AppArmor label too: a profile that is not loaded (or a node without
        // AppArmor) fails the request before anything exists.
        let apparmor_profile = {
            let sc = config
                .linux
                .as_ref()
                .and_then(|l| l.security_context.clone())
                .unwrap_or_default();
            #[allow(deprecated, reason = "older kubelets send only apparmor_profile")]
            let req = super::apparmor::Request::parse(
                "linux.security_context",
                sc.apparmor.as_ref(),
                &sc.apparmor_profile,
            )?;
            let apparmor = Arc::clone(&self.apparmor);
            let what = format!("container {:?}", meta.name);
            tokio::task::spawn_blocking(move || apparmor.resolve(&req, sc.privileged, &what))
                .await
                .map_err(|e| Error::Internal(format!("resolving the AppArmor profile: {e}")))??
        };
        if pod_ctx.userns.is_some()
            && let Some((path, host)) = cdi.remapped_device_node()
        {
            return Err(Error::InvalidArgument(format!(
                "CDI device node {path} comes from host path {host}: a pod with its own user namespace can only get device nodes whose host path is their container path"
            )));
        }
        let mut config = config;
        let volumes = super::image_volume::resolve(&self.images, &mut config)?;
        let name = format!(
            "{}_{}_{}_{}_{}",
            meta.name, pod_ctx.pod_name, pod_ctx.pod_namespace, pod_ctx.pod_uid, meta.attempt
        );
        let id = store::new_id().map_err(|e| Error::io("generating a container id", e))?;
        {
            let mut names = self.names();
            if let Some(holder) = names.get(&name) {
                return Err(Error::AlreadyExists(format!(
                    "container name {name:?} is already reserved by container {holder}"
                )));
            }
            names.insert(name.clone(), id.clone());
        }

        let log_path = if config.log_path.is_empty() || pod_ctx.log_directory.is_empty() {
            PathBuf::new()
        } else {
            match container_log_path(&pod_ctx.log_directory, &config.log_path) {
                Ok(p) => p,
                Err(e) => {
                    self.names().remove(&name);
                    return Err(e);
                }
            }
        };
        let image_name = if image_spec.user_specified_image.is_empty() {
            wanted.clone()
        } else {
            image_spec.user_specified_image.clone()
        };
        let image_ref = image
            .repo_digests
            .first()
            .cloned()
            .unwrap_or_else(|| image.id.to_string());
        let (tx, _) = tokio::sync::watch::channel(Phase::Creating);
        let ctr = Arc::new(Container {
            id: id.clone(),
            pod_id: pod_ctx.sandbox_id.clone(),
            config,
            created_at: now_nanos(),
            image_id: image.id.to_string(),
            image_name,
            image_ref,
            log_path,
            stop_signal: image.config.stop_signal.clone(),
            name_key: name.clone(),
            state: Mutex::new(CtrState {
                phase: Phase::Creating,
                pid: 0,
                monitor_pid: 0,
                monitor_start: 0,
                started_at: 0,
                finished_at: 0,
                exit_code: 0,
                reason: String::new(),
                message: String::new(),
                rootfs_mounted: false,
                user: None,
                runtime_handler: pod_ctx.runtime_handler.clone(),
            }),
            changed: tx,
            op: tokio::sync::Mutex::new(()),
            last_cpu: Mutex::new(None),
            persist_lock: Mutex::new(()),
        });
        let image_config = ImageConfig {
            entrypoint: image.config.entrypoint.clone().unwrap_or_default(),
            cmd: image.config.cmd.clone().unwrap_or_default(),
            env: image.config.env.clone().unwrap_or_default(),
            user: image.config.user.clone(),
            working_dir: image.config.working_dir.clone(),
        };
        match self
            .create_steps(
                &ctr,
                &image,
                &image_config,
                &pod_ctx,
                &volumes,
                &cdi,
                apparmor_profile.as_deref(),
            )
            .await
        {
            Ok(()) => {
                self.write().insert(id.clone(), Arc::clone(&ctr));
                self.emit(
                    &ctr,
                    berth_proto::v1::ContainerEventType::ContainerCreatedEvent,
                );
                tracing::info!(container = %id, pod = %ctr.pod_id, name = %meta.name, "container created");
                Ok(id)
            }
            Err(e) => {
                self.cleanup(&ctr).await;
                self.names().remove(&name);
                tracing::info!(name = %meta.name, error = %e, "container creation failed; rolled back");
                Err(e)
            }
        }
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "each is resolved before anything is created, then applied here"
    )]
    async fn create_steps(
        self: &Arc<Self>,
        ctr: &Arc<Container>,
        image: &berth_image::Image,
        image_config: &ImageConfig,
        pod_ctx: &PodContext,
        volumes: &[super::image_volume::Resolved],
        cdi: &super::cdi::Injection,
        apparmor_profile: Option<&str>,
    ) -> Result<()> {
        let dir = self.dir(&ctr.id);
        // The container's dir is root's alone: below it are the rootfs (the image's
        // setuid binaries and device nodes, the container's files) and config.json
        // (its environment, secrets included), CVE-2021-41091. `upper` keeps the
        // default mode: overlayfs shows its mode as the container's `/`.
        create_container_dir(&dir, pod_ctx.userns.as_ref())
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        for (sub, mode) in [
            ("upper", None),
            ("work", Some(store::PRIVATE_DIR)),
            ("rootfs", None),
            ("bundle", Some(store::PRIVATE_DIR)),
        ] {
            let path = dir.join(sub);
            match mode {
                Some(mode) => store::ensure_dir(&path, mode),
                None => std::fs::create_dir_all(&path),
            }
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        }
        store::write_atomic(&dir.join("config.pb"), &ctr.config.encode_to_vec())
            .map_err(|e| Error::io("persisting the container config", e))?;
        self.persist(ctr)?;

        let lowers = self
            .images
            .lease(&ctr.id, image)
            .await
            .map_err(Error::from)?;
        let rootfs = dir.join("rootfs");
        match &pod_ctx.userns {
            Some(userns) => mount_idmapped_rootfs(&lowers, &dir, &rootfs, userns)?,
            None => mount_overlay(&lowers, &dir.join("upper"), &dir.join("work"), &rootfs)
                .map_err(|e| {
                    Error::io(
                        format!("mounting the overlay rootfs at {}", rootfs.display()),
                        e,
                    )
                })?,
        }
        ctr.update(|s| s.rootfs_mounted = true);
        // The spec sees image volumes as read-only binds of their mounts.
        let spec_config = super::image_volume::mount_all(
            &self.images,
            &ctr.id,
            &dir,
            &ctr.config,
            volumes,
            pod_ctx.userns.as_ref(),
        )
        .await?;

        let mut spec = spec::build(&SpecInput {
            id: &ctr.id,
            config: &spec_config,
            image: image_config,
            image_name: &ctr.image_name,
            rootfs: &rootfs,
            pod: pod_ctx,
            cgroup_driver: self.config.cgroup_driver,
        })?;
        cdi.apply(&mut spec);
        if let Some(profile) = apparmor_profile {
            spec["process"]["apparmorProfile"] = json!(profile);
        }
        if self.config.allow_degraded_device_filter {
            spec["annotations"][berth_runtime_core::cgroups::DEGRADED_DEVICES_ANNOTATION] =
                json!("true");
        }
        let user = &spec["process"]["user"];
        let id =
            |v: &serde_json::Value| v.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
        let groups = user["additionalGids"]
            .as_array()
            .map(|a| a.iter().map(id).collect())
            .unwrap_or_default();
        ctr.update(|s| s.user = Some((id(&user["uid"]), id(&user["gid"]), groups)));
        let bundle = dir.join("bundle");
        store::write_atomic(&bundle.join("config.json"), spec.to_string().as_bytes())
            .map_err(|e| Error::io("writing config.json", e))?;
        if let Some(parent) = ctr.log_path.parent()
            && !ctr.log_path.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating log dir {}", parent.display()), e))?;
        }

        let monitor = self.helper("berth-monitor")?;
        let log_path = if ctr.log_path.as_os_str().is_empty() {
            dir.join("console.log")
        } else {
            ctr.log_path.clone()
        };
        let mut cmd = tokio::process::Command::new(&monitor);
        cmd.arg("run")
            .arg("--root")
            .arg(self.runtime_root())
            .arg("--bundle")
            .arg(&bundle)
            .arg("--log-path")
            .arg(&log_path)
            .arg("--exit-file")
            .arg(dir.join(protocol::EXIT_FILE));
        if let Handler::Oci(rt) = self.handler(ctr)? {
            cmd.arg("--oci-runtime")
                .arg(&rt.path)
                .arg("--oci-root")
                .arg(&rt.root);
        }
        if ctr.config.stdin {
            cmd.arg("--stdin");
        }
        cmd.arg(&ctr.id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", monitor.display()), e))?;
        let monitor_pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        // Our unreaped child: its pid cannot be reused before we wait for it.
        let monitor_start = crate::host::procs::Pid::new(monitor_pid)
            .and_then(crate::host::procs::start_time)
            .unwrap_or(0);
        ctr.update(|s| {
            s.monitor_pid = monitor_pid;
            s.monitor_start = monitor_start;
        });
        #[cfg(feature = "test-hooks")]
        test_hook_die_after_monitor_spawn(monitor_pid);
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Internal("monitor stdout".into()))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(CREATE_TIMEOUT, lines.next_line()).await;
        let report = match first {
            Ok(Ok(Some(line))) => protocol::CreateReport::decode(&line)
                .map_err(|e| Error::Internal(format!("berth-monitor's report: {e}")))?,
            Ok(Ok(None)) => {
                let status = child.wait().await.ok();
                // Gone: the clean-up must not wait for an exit it will never see.
                ctr.update(|s| s.monitor_pid = 0);
                return Err(Error::Internal(format!(
                    "creating container {}: berth-monitor exited ({status:?}) without reporting the container; see berthd's log",
                    ctr.id
                )));
            }
            Ok(Err(e)) => return Err(Error::io("reading the monitor's report", e)),
            Err(_) => {
                let _ = child.kill().await;
                ctr.update(|s| s.monitor_pid = 0);
                return Err(Error::Internal(format!(
                    "creating container {}: berth-monitor did not create the container within {CREATE_TIMEOUT:?} (is the node overloaded?); retry",
                    ctr.id
                )));
            }
        };
        let pid = match report {
            (_, protocol::CreateReport::Created { pid }) => pid,
            (version, protocol::CreateReport::Failed(e)) => {
                // The monitor exits right after a failed create, having removed what it
                // made. Reaped here, so the clean-up has no monitor exit to wait for (it
                // used to wait KILL_WAIT for one: every failed create took 10 s).
                let _ = child.wait().await;
                ctr.update(|s| s.monitor_pid = 0);
                tracing::debug!(container = %ctr.id, version, kind = ?e.kind, "create failed in the monitor");
                // The monitor classifies (a bad executable or working dir is the
                // caller's mistake, out of fds the node's state, the rest ours).
                let msg = format!("creating the container: {}", e.message);
                return Err(match e.kind {
                    protocol::ErrorKind::SpecFault => Error::InvalidArgument(msg),
                    protocol::ErrorKind::ResourceExhausted => Error::ResourceExhausted(msg),
                    protocol::ErrorKind::Internal => Error::Internal(msg),
                });
            }
        };
        ctr.update(|s| s.pid = pid);
        if matches!(self.config.cgroup_driver, CgroupDriver::Systemd)
            && let Err(e) = self
                .start_scope(ctr, &spec, pid, &pod_ctx.cgroup_parent)
                .await
        {
            // The init never ran the user's process; kill it, and reap the monitor
            // (it exits once its container has), so the clean-up has no exit to wait for.
            self.kill(ctr, libc::SIGKILL, true);
            if tokio::time::timeout(KILL_WAIT, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
            ctr.update(|s| s.monitor_pid = 0);
            return Err(e);
        }
        ctr.update(|s| s.phase = Phase::Created);
        self.persist(ctr)?;
        self.watch(Arc::clone(ctr), Monitor::Child(child));
        Ok(())
    }

    /// The systemd driver's step between create and start: the init exists (and waits
    /// for StartContainer), so its transient scope `berth-<id>.scope` is started in the
    /// pod's slice with the init inside and the container's limits as unit properties,
    /// and systemd, not berthd, owns those limits (a daemon-reload keeps them).
    async fn start_scope(
        &self,
        ctr: &Container,
        spec: &serde_json::Value,
        pid: i32,
        cgroup_parent: &str,
    ) -> Result<()> {
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_value(spec["linux"]["resources"].clone())
                .map_err(|e| Error::Internal(format!("the spec's resources: {e}")))?;
        let pid = u32::try_from(pid)
            .map_err(|_| Error::Internal(format!("init pid {pid} out of range")))?;
        let unit = systemd::scope_name(&ctr.id);
        let props = systemd::scope_properties(
            systemd::pod_slice(cgroup_parent),
            pid,
            format!("berth container {} ({})", ctr.id, ctr.name_key),
            &resources,
        )?;
        systemd::client().start_scope(&unit, &props).await?;
        tracing::debug!(container = %ctr.id, %unit, "scope started");
        Ok(())
    }

    /// Waits for the monitor to exit in the background, then records the exit.
    fn watch(self: &Arc<Self>, ctr: Arc<Container>, monitor: Monitor) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            match monitor {
                Monitor::Child(mut c) => {
                    let _ = c.wait().await;
                }
                Monitor::Recovered(v) => wait_pidfd_exit(v.fd).await,
            }
            me.record_exit(&ctr);
            // An init that exits by itself can leave processes behind too (see
            // sweep_cgroup); end them now, not at RemoveContainer, which kubelet may
            // only call at garbage collection.
            me.sweep_cgroup(&ctr).await;
        });
    }

    fn record_exit(&self, ctr: &Container) {
        if ctr.state().phase == Phase::Exited {
            return;
        }
        let record = protocol::ExitRecord::read(&self.dir(&ctr.id).join(protocol::EXIT_FILE));
        if record.is_none() {
            // The monitor died before the container did: nobody holds its stdio or
            // would record its exit any more, so end it rather than leave an
            // unsupervised process that berthd reports as exited.
            tracing::warn!(container = %ctr.id, "berth-monitor died; killing its container");
            crate::prom::global().monitor_died();
            self.kill(ctr, libc::SIGKILL, true);
        }
        ctr.update(|s| {
            s.phase = Phase::Exited;
            match &record {
                Some(r) => {
                    s.exit_code = r.status_code();
                    s.finished_at = r.exited_at_ns;
                    s.reason = if r.oom_killed {
                        "OOMKilled".into()
                    } else if s.exit_code == 0 {
                        "Completed".into()
                    } else {
                        "Error".into()
                    };
                }
                None => {
                    s.exit_code = 255;
                    s.finished_at = now_nanos();
                    s.reason = "Error".into();
                    s.message = "its berth-monitor died, so the container was killed".into();
                }
            }
        });
        crate::prom::global().container_exited(&ctr.state().reason);
        if let Err(e) = self.persist(ctr) {
            tracing::warn!(container = %ctr.id, error = %e, "could not persist exit");
        }
        self.emit(
            ctr,
            berth_proto::v1::ContainerEventType::ContainerStoppedEvent,
        );
        tracing::info!(container = %ctr.id, exit_code = ctr.state().exit_code, "container exited");
    }

    fn persist(&self, ctr: &Container) -> Result<()> {
        let _serial = ctr
            .persist_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let record = Record {
            version: RECORD_VERSION,
            id: ctr.id.clone(),
            name_key: ctr.name_key.clone(),
            pod_id: ctr.pod_id.clone(),
            created_at: ctr.created_at,
            image_id: ctr.image_id.clone(),
            image_name: ctr.image_name.clone(),
            image_ref: ctr.image_ref.clone(),
            log_path: ctr.log_path.clone(),
            stop_signal: ctr.stop_signal.clone(),
            state: ctr.state(),
        };
        let bytes = serde_json::to_vec_pretty(&record)
            .map_err(|e| Error::Internal(format!("encoding container record: {e}")))?;
        store::write_atomic(&self.dir(&ctr.id).join("record.json"), &bytes)
            .map_err(|e| Error::io("persisting the container record", e))
    }

    fn runtime_container(&self, id: &str) -> Option<berth_runtime_core::Container> {
        berth_runtime_core::Container::load(&self.runtime_root(), id).ok()
    }

    /// The OCI runtime container `id` runs under; `None` for the native handler.
    pub fn oci_runtime(&self, id: &str) -> Option<handler::OciRuntime> {
        let ctr = self.find(id).ok().flatten()?;
        match self.handler(&ctr) {
            Ok(Handler::Oci(rt)) => Some(rt),
            _ => None,
        }
    }

    /// The runtime handler of `ctr` (its pod's, recorded at creation).
    fn handler(&self, ctr: &Container) -> Result<Handler> {
        handler::resolve(&self.config, &ctr.state().runtime_handler)
    }

    /// The cgroup of a container under an OCI runtime: the `linux.cgroupsPath` berthd
    /// wrote into its config.json (the runtime creates it there). `None` for native.
    fn oci_cgroup(&self, ctr: &Container) -> Option<berth_runtime_core::cgroups::Cgroup> {
        let Ok(Handler::Oci(_)) = self.handler(ctr) else {
            return None;
        };
        let config = std::fs::read(self.dir(&ctr.id).join("bundle").join("config.json")).ok()?;
        let spec: serde_json::Value = serde_json::from_slice(&config).ok()?;
        berth_runtime_core::cgroups::Cgroup::new(
            Path::new(berth_runtime_core::container::CGROUP_ROOT),
            spec["linux"]["cgroupsPath"].as_str().unwrap_or_default(),
            &ctr.id,
        )
        .ok()
    }

    /// Cgroup statistics of a live container, whatever its handler.
    fn cgroup_stats(&self, ctr: &Container) -> Option<berth_runtime_core::cgroups::Stats> {
        match self.oci_cgroup(ctr) {
            Some(cg) => cg.stats().ok(),
            None => self.runtime_container(&ctr.id).and_then(|c| c.stats().ok()),
        }
    }

    /// Whether the runtime says the container is running.
    fn runtime_running(&self, ctr: &Container) -> bool {
        match self.handler(ctr) {
            Ok(Handler::Oci(rt)) => rt.status(&ctr.id).as_deref() == Some("running"),
            _ => self
                .runtime_container(&ctr.id)
                .is_some_and(|rc| rc.status() == berth_runtime_core::container::Status::Running),
        }
    }

    /// `StartContainer`.
    pub async fn start(&self, id: &str) -> Result<()> {
        let ctr = self.get(id)?;
        let _op = ctr.op.lock().await;
        match ctr.state().phase {
            Phase::Created => {}
            Phase::Running => {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is already running",
                    ctr.id
                )));
            }
            _ => {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is not in the created state",
                    ctr.id
                )));
            }
        }
        if let Handler::Oci(rt) = self.handler(&ctr)? {
            rt.start(&ctr.id)
                .await
                .map_err(|e| Error::Internal(format!("starting container {}: {e}", ctr.id)))?;
        } else {
            let root = self.runtime_root();
            let cid = ctr.id.clone();
            tokio::task::spawn_blocking(move || {
                berth_runtime_core::Container::load(&root, &cid).and_then(|mut c| c.start())
            })
            .await
            .map_err(|e| Error::Internal(format!("start task: {e}")))?
            .map_err(|e| Error::Internal(format!("starting container {}: {e}", ctr.id)))?;
        }
        ctr.update(|s| {
            if s.phase == Phase::Created {
                s.phase = Phase::Running;
                s.started_at = now_nanos();
            }
        });
        self.persist(&ctr)?;
        self.emit(
            &ctr,
            berth_proto::v1::ContainerEventType::ContainerStartedEvent,
        );
        tracing::info!(container = %ctr.id, "container started");
        Ok(())
    }

    async fn wait_exited(ctr: &Container, timeout: Duration) -> bool {
        let mut rx = ctr.changed.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p == Phase::Exited))
            .await
            .is_ok()
    }

    fn kill(&self, ctr: &Container, signal: i32, all: bool) {
        if let Ok(Handler::Oci(rt)) = self.handler(ctr) {
            if let Err(e) = rt.kill(&ctr.id, signal, all) {
                tracing::debug!(container = %ctr.id, error = %e, "kill");
            }
            return;
        }
        if let Some(c) = self.runtime_container(&ctr.id)
            && let Err(e) = c.kill(signal, all)
        {
            tracing::debug!(container = %ctr.id, error = %e, "kill");
        }
    }

    /// `StopContainer`: the stop signal, then SIGKILL after `timeout`. Idempotent.
    pub async fn stop(&self, id: &str, timeout: i64) -> Result<()> {
        let Some(ctr) = self.find(id)? else {
            return Ok(());
        };
        let _op = ctr.op.lock().await;
        self.stop_locked(&ctr, timeout).await
    }

    async fn stop_locked(&self, ctr: &Container, timeout: i64) -> Result<()> {
        if ctr.state().phase == Phase::Exited {
            return Ok(());
        }
        if timeout > 0 && ctr.state().phase == Phase::Running {
            let signal = stop_signal(&ctr.stop_signal, ctr.config.stop_signal);
            self.kill(ctr, signal, false);
            let wait = Duration::from_secs(u64::try_from(timeout).unwrap_or(0));
            if Self::wait_exited(ctr, wait).await {
                self.sweep_cgroup(ctr).await;
                return Ok(());
            }
        }
        self.kill(ctr, libc::SIGKILL, true);
        if !Self::wait_exited(ctr, KILL_WAIT).await {
            return Err(Error::Internal(format!(
                "container {} did not exit {KILL_WAIT:?} after SIGKILL",
                ctr.id
            )));
        }
        self.sweep_cgroup(ctr).await;
        Ok(())
    }

    /// A container without a PID namespace of its own (the host's, or its pod's shared
    /// one) can outlive its init: its other processes are in no namespace that dies with
    /// the init, only in its cgroup. Once the init has exited, kill what is left there
    /// (as containerd's shim does for such containers) and wait, bounded, for it to go,
    /// so a stopped container runs nothing. A container with its own PID namespace has
    /// an empty cgroup by now and costs one read.
    async fn sweep_cgroup(&self, ctr: &Container) {
        const SWEEP_WAIT: Duration = Duration::from_secs(2);
        let Some(rc) = self.runtime_container(&ctr.id) else {
            return;
        };
        let Some(cg) = rc.cgroup().cloned() else {
            return;
        };
        let left = |cg: &berth_runtime_core::cgroups::Cgroup| {
            cg.procs().map(|p| !p.is_empty()).unwrap_or(false)
        };
        if !left(&cg) {
            return;
        }
        tracing::info!(container = %ctr.id, "killing the processes its init left in its cgroup");
        self.kill(ctr, libc::SIGKILL, true);
        let deadline = tokio::time::Instant::now() + SWEEP_WAIT;
        while left(&cg) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if left(&cg) {
            tracing::warn!(container = %ctr.id, "processes left in its cgroup {SWEEP_WAIT:?} after SIGKILL");
        }
    }

    /// `RemoveContainer`: kills it if needed and removes everything. Idempotent.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let Some(ctr) = self.find(id)? else {
            return Ok(());
        };
        let _op = ctr.op.lock().await;
        self.stop_locked(&ctr, 0).await?;
        self.cleanup(&ctr).await;
        self.write().remove(&ctr.id);
        let mut names = self.names();
        names.retain(|_, v| v != &ctr.id);
        self.emit(
            &ctr,
            berth_proto::v1::ContainerEventType::ContainerDeletedEvent,
        );
        tracing::info!(container = %ctr.id, "container removed");
        Ok(())
    }

    /// Releases what a container holds: runtime state and cgroup, rootfs mount,
    /// image lease, records. Best effort.
    async fn cleanup(&self, ctr: &Container) {
        let oci = match self.handler(ctr) {
            Ok(Handler::Oci(rt)) => Some(rt),
            _ => None,
        };
        if let Some(rt) = oci {
            let cid = ctr.id.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = rt.delete(&cid) {
                    tracing::warn!(container = %cid, error = %e, "runtime delete");
                }
            })
            .await;
        }
        let root = self.runtime_root();
        let cid = ctr.id.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(c) = berth_runtime_core::Container::load(&root, &cid)
                && let Err(e) = c.delete(true)
            {
                tracing::warn!(container = %cid, error = %e, "runtime delete");
            }
        })
        .await;
        if ctr.state().monitor_pid > 0 && ctr.state().phase != Phase::Exited {
            // The monitor exits by itself once the container is gone.
            Self::wait_exited(ctr, KILL_WAIT).await;
        }
        if matches!(self.config.cgroup_driver, CgroupDriver::Systemd) {
            // The scope stops by itself once its processes are gone; stopping it (and
            // resetting a failed state) makes sure systemd forgets the unit.
            let unit = systemd::scope_name(&ctr.id);
            if let Err(e) = systemd::client().stop_unit(&unit).await {
                tracing::warn!(container = %ctr.id, %unit, error = %e, "stopping the scope");
            }
        }
        // The runtime's state dir: the monitor's sockets should it have died before
        // removing them, and, for a native container whose create was cut short (its
        // state could not be loaded, so `delete` above had nothing to work on), the
        // half-written state itself. The crash storm found it left behind.
        store::remove_dir_all_eventually(
            self.runtime_root().join(&ctr.id),
            format!("runtime state of container {}", ctr.id),
        );
        let dir = self.dir(&ctr.id);
        if let Err(e) = crate::host::mounts::unmount(&dir.join("rootfs")) {
            tracing::warn!(container = %ctr.id, error = %e, "unmounting rootfs");
        }
        if let Err(e) = self.images.release(&ctr.id).await {
            tracing::warn!(container = %ctr.id, error = %e, "releasing image lease");
        }
        if !super::image_volume::unmount_all(&self.images, &ctr.id, &dir).await {
            // Deleting the dir would reach into a still-mounted image volume.
            return;
        }
        self.layer_usage.forget(&dir.join("upper"));
        store::remove_dir_all_eventually(dir, format!("container {}", ctr.id));
    }

    /// `ExecSync`: runs `cmd` in the container through `berth-runtime exec` (a
    /// single-threaded process does the namespace joining), with a timeout that kills
    /// the process and its children.
    pub async fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout: i64) -> Result<ExecOutput> {
        let ctr = self.get(id)?;
        if ctr.state().phase != Phase::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                ctr.id
            )));
        }
        if cmd.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "exec in container {}: cmd is required (give the command to run)",
                ctr.id
            )));
        }
        let handler = self.handler(&ctr)?;
        let runtime = match &handler {
            Handler::Oci(rt) => rt.path.clone(),
            Handler::Native => self.helper("berth-runtime")?,
        };
        let pid_file = self.dir(&ctr.id).join(format!(
            "exec-{}.pid",
            store::new_id()
                .map_err(|e| Error::io("exec id", e))?
                .get(..12)
                .unwrap_or("x")
        ));
        let mut command = tokio::process::Command::new(&runtime);
        match &handler {
            Handler::Oci(rt) => command.args(rt.exec_args(&pid_file, false, None, &ctr.id)),
            Handler::Native => command
                .arg("--root")
                .arg(self.runtime_root())
                .arg("exec")
                .arg("--pid-file")
                .arg(&pid_file)
                .arg(&ctr.id)
                .arg("--"),
        };
        let mut child = command
            .args(&cmd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // Not kill_on_drop: berth-runtime must live to reap the process it ran
            // (the guard kills that one); tokio reaps berth-runtime itself.
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", runtime.display()), e))?;
        // If the client goes away (its deadline usually equals ours), this future is
        // dropped mid-wait: the guard still kills the process in the container.
        let mut guard = ExecGuard {
            pid_file: pid_file.clone(),
            armed: true,
        };
        let mut out = child
            .stdout
            .take()
            .ok_or_else(|| Error::Internal("exec stdout".into()))?;
        let mut err = child
            .stderr
            .take()
            .ok_or_else(|| Error::Internal("exec stderr".into()))?;
        let read_out = tokio::spawn(async move { read_capped(&mut out).await });
        let read_err = tokio::spawn(async move { read_capped(&mut err).await });
        let waited = if timeout > 0 {
            tokio::time::timeout(
                Duration::from_secs(u64::try_from(timeout).unwrap_or(0)),
                child.wait(),
            )
            .await
        } else {
            Ok(child.wait().await)
        };
        let status = match waited {
            Ok(s) => s.map_err(|e| Error::io("waiting for exec", e))?,
            Err(_) => {
                // Kill the command; berth-runtime, its parent, then reaps it and
                // exits. Killing berth-runtime first would leave a zombie with the
                // host's init.
                drop(guard);
                if tokio::time::timeout(KILL_WAIT, child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
                return Err(Error::DeadlineExceeded(format!(
                    "command {cmd:?} timed out after {timeout}s and was killed"
                )));
            }
        };
        guard.armed = false;
        let _ = std::fs::remove_file(&pid_file);
        let stdout = read_out.await.unwrap_or_default();
        let mut stderr = read_err.await.unwrap_or_default();
        let exit_code = status.code().unwrap_or(255);
        // An OCI runtime's own failure: runc's logrus line on stderr.
        if exit_code != 0
            && matches!(handler, Handler::Oci(_))
            && stderr.starts_with(b"time=")
            && String::from_utf8_lossy(&stderr).contains("level=error")
        {
            let msg = handler::runtime_message(&stderr);
            if msg.contains("executable file not found") || msg.contains("no such file") {
                return Ok(ExecOutput {
                    stdout,
                    stderr: msg.into_bytes(),
                    exit_code: 126,
                });
            }
            return Err(Error::Internal(format!(
                "exec in container {}: {msg}",
                ctr.id
            )));
        }
        // berth-runtime reports its own failures (not the command's) with this prefix.
        if exit_code != 0 && stderr.starts_with(b"berth-runtime:") {
            let msg = String::from_utf8_lossy(&stderr).trim().to_owned();
            if msg.contains("executable") {
                stderr = msg.clone().into_bytes();
                return Ok(ExecOutput {
                    stdout,
                    stderr,
                    exit_code: 126,
                });
            }
            return Err(Error::Internal(format!(
                "exec in container {}: {msg}",
                ctr.id
            )));
        }
        Ok(ExecOutput {
            stdout,
            stderr,
            exit_code,
        })
    }

    /// `ContainerStats` of one container: cgroup cpu/memory, read now, and the
    /// writable layer's usage, measured at most `fsinfo::USAGE_MAX_AGE` ago (its
    /// `timestamp` says when).
    pub fn stats(&self, ctr: &Container) -> ContainerStats {
        let now = now_nanos();
        let cg = match ctr.state().phase {
            Phase::Created | Phase::Running => self.cgroup_stats(ctr).unwrap_or_default(),
            _ => berth_runtime_core::cgroups::Stats::default(),
        };
        let nano_cores = {
            let mut last = ctr
                .last_cpu
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let rate = last.and_then(|(t, u)| {
                let dt = u64::try_from(now - t).ok().filter(|d| *d > 0)?;
                let du = cg.cpu_usage_ns.checked_sub(u)?;
                Some(
                    u64::try_from(u128::from(du) * 1_000_000_000 / u128::from(dt))
                        .unwrap_or(u64::MAX),
                )
            });
            *last = Some((now, cg.cpu_usage_ns));
            rate
        };
        let upper = self.dir(&ctr.id).join("upper");
        let layer = self.layer_usage.usage(&upper);
        let (layer, layer_at) = match layer {
            Ok(m) => (m.usage, crate::host::fsinfo::nanos_since_epoch(m.at)),
            Err(_) => (crate::host::fsinfo::Usage::default(), now),
        };
        let mountpoint = self
            .layer_usage
            .mountpoint(&self.config.root_dir)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let v = |value: u64| Some(UInt64Value { value });
        ContainerStats {
            attributes: Some(ContainerAttributes {
                id: ctr.id.clone(),
                metadata: Some(ctr.metadata()),
                labels: ctr.config.labels.clone(),
                annotations: ctr.config.annotations.clone(),
            }),
            cpu: Some(CpuUsage {
                timestamp: now,
                usage_core_nano_seconds: v(cg.cpu_usage_ns),
                usage_nano_cores: nano_cores.and_then(v),
                psi: None,
            }),
            memory: Some(MemoryUsage {
                timestamp: now,
                working_set_bytes: v(cg.memory_working_set),
                usage_bytes: v(cg.memory_usage),
                ..Default::default()
            }),
            writable_layer: Some(FilesystemUsage {
                timestamp: layer_at,
                fs_id: Some(FilesystemIdentifier { mountpoint }),
                used_bytes: v(layer.used_bytes),
                inodes_used: v(layer.inodes_used),
            }),
            swap: None,
            io: None,
        }
    }

    /// Processes in the container's cgroup.
    pub fn process_count(&self, ctr: &Container) -> u64 {
        match ctr.state().phase {
            Phase::Created | Phase::Running => self.cgroup_stats(ctr).map(|s| s.pids).unwrap_or(0),
            _ => 0,
        }
    }

    /// The containers of a pod.
    pub fn of_pod(&self, pod_id: &str) -> Vec<Arc<Container>> {
        self.read()
            .values()
            .filter(|c| c.pod_id == pod_id && c.state().phase != Phase::Creating)
            .cloned()
            .collect()
    }

    /// `ListContainerStats`.
    pub fn list_stats(&self, filter: Option<&ContainerStatsFilter>) -> Vec<ContainerStats> {
        let all: Vec<Arc<Container>> = self.read().values().cloned().collect();
        all.into_iter()
            .filter(|c| c.phase() != Phase::Creating)
            .filter(|c| {
                filter.is_none_or(|f| {
                    (f.id.is_empty() || c.id.starts_with(&f.id))
                        && (f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id))
                        && f.label_selector
                            .iter()
                            .all(|(k, v)| c.config.labels.get(k) == Some(v))
                })
            })
            .map(|c| self.stats(&c))
            .collect()
    }

    /// `UpdateContainerResources`: applies to the live cgroup.
    pub async fn update_resources(&self, id: &str, r: &LinuxContainerResources) -> Result<()> {
        let ctr = self.get(id)?;
        if ctr.state().phase == Phase::Exited {
            return Err(Error::FailedPrecondition(format!(
                "container {} has exited",
                ctr.id
            )));
        }
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_value(spec::resources_update(r)?)
                .map_err(|e| Error::Internal(format!("resources: {e}")))?;
        if matches!(self.config.cgroup_driver, CgroupDriver::Systemd) {
            // The unit first: systemd owns these limits and would reset cgroupfs writes
            // at its next reload. What it cannot express is written below, after it.
            let props = systemd::resource_properties(&resources)?;
            let unit = systemd::scope_name(&ctr.id);
            match systemd::client().set_properties(&unit, &props).await {
                // A container with no scope (made by an older berthd that wrote
                // cgroupfs itself): its cgroup is not systemd's, so cgroupfs is right.
                Err(e) if e.is_no_such_unit() => {
                    tracing::info!(container = %ctr.id, %unit, "no scope unit: updating its cgroup directly");
                }
                r => r?,
            }
        }
        let root = self.runtime_root();
        let cid = ctr.id.clone();
        let oci_cgroup = self.oci_cgroup(&ctr);
        tokio::task::spawn_blocking(move || match oci_cgroup {
            Some(cg) => cg.apply(&resources).map_err(|e| e.to_string()),
            None => berth_runtime_core::Container::load(&root, &cid)
                .and_then(|c| c.update(&resources))
                .map_err(|e| e.to_string()),
        })
        .await
        .map_err(|e| Error::Internal(format!("update task: {e}")))?
        .map_err(|e| Error::InvalidArgument(format!("updating resources of {}: {e}", ctr.id)))?;
        Ok(())
    }

    /// `ReopenContainerLog`: asks the monitor to reopen the log file (after kubelet
    /// rotated it).
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ctr = self.get(id)?;
        if ctr.state().phase != Phase::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                ctr.id
            )));
        }
        let sock = self
            .runtime_root()
            .join(&ctr.id)
            .join(protocol::CONTROL_SOCKET);
        let talk = async {
            let mut s = tokio::net::UnixStream::connect(&sock).await?;
            s.write_all(protocol::ControlRequest::ReopenLog.encode())
                .await?;
            let mut reply = String::new();
            s.read_to_string(&mut reply).await?;
            Ok::<_, std::io::Error>(reply)
        };
        let reply = tokio::time::timeout(Duration::from_secs(10), talk)
            .await
            .map_err(|_| {
                Error::Internal(format!(
                    "reopening the log of container {}: its monitor did not answer within 10s",
                    ctr.id
                ))
            })?
            .map_err(|e| Error::io(format!("talking to the monitor at {}", sock.display()), e))?;
        match protocol::ControlReply::decode(&reply) {
            protocol::ControlReply::Ok => Ok(()),
            protocol::ControlReply::Error(e) => Err(Error::Internal(format!(
                "reopening the log of container {}: {e}",
                ctr.id
            ))),
        }
    }

    /// Rebuilds the index from disk and reattaches to live monitors; containers whose
    /// monitor died meanwhile get their exit recorded; half-created ones are removed.
    pub async fn recover(self: &Arc<Self>) -> Result<()> {
        let dirs = store::record_dirs(&self.records_dir())
            .map_err(|e| Error::io("listing container records", e))?;
        for dir in dirs {
            let id = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let ctr = match self.load(&dir) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "unreadable container record; removing it");
                    let _ = crate::host::mounts::unmount(&dir.join("rootfs"));
                    if !super::image_volume::unmount_all(&self.images, &id, &dir).await {
                        continue;
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                    continue;
                }
            };
            let state = ctr.state();
            if state.phase == Phase::Creating {
                tracing::info!(container = %id, "removing a container berthd died creating");
                // berthd may have died between spawning the monitor and recording its
                // pid, with the monitor still creating: the record does not name it,
                // so it is found by its command line (this daemon's bundle of this
                // container) and killed before its container is torn down.
                let bundle = self.dir(&id).join("bundle");
                let strays = kill_monitors_of(&id, &bundle).await;
                if strays > 0 {
                    tracing::info!(container = %id, monitors = strays, "killed the monitor of a container berthd died creating");
                }
                if state.monitor_pid > 0 {
                    self.kill(&ctr, libc::SIGKILL, true);
                }
                ctr.update(|s| s.phase = Phase::Exited);
                self.cleanup(&ctr).await;
                continue;
            }
            self.names().insert(ctr.name_key.clone(), id.clone());
            self.write().insert(id.clone(), Arc::clone(&ctr));
            if state.phase != Phase::Exited {
                if let Some(monitor) = monitor_of(&state, &id) {
                    crate::prom::global().monitor_reattached();
                    self.watch(Arc::clone(&ctr), Monitor::Recovered(monitor));
                } else {
                    self.record_exit(&ctr);
                }
                // A container created but never started stays created.
                if state.phase == Phase::Created && self.runtime_running(&ctr) {
                    // berthd died between starting it and recording that: the exact
                    // start time was lost with it, so it is when recovery found it
                    // running (kubelet needs one).
                    ctr.update(|s| {
                        s.phase = Phase::Running;
                        if s.started_at == 0 {
                            s.started_at = now_nanos();
                        }
                    });
                    if let Err(e) = self.persist(&ctr) {
                        tracing::warn!(container = %id, error = %e, "could not persist the recovered start");
                    }
                }
            }
        }
        Ok(())
    }

    fn load(&self, dir: &Path) -> std::result::Result<Container, String> {
        let record: Record = serde_json::from_slice(
            &std::fs::read(dir.join("record.json")).map_err(|e| format!("record.json: {e}"))?,
        )
        .map_err(|e| format!("record.json: {e}"))?;
        let config = ContainerConfig::decode(
            std::fs::read(dir.join("config.pb"))
                .map_err(|e| format!("config.pb: {e}"))?
                .as_slice(),
        )
        .map_err(|e| format!("config.pb: {e}"))?;
        let (tx, _) = tokio::sync::watch::channel(record.state.phase);
        Ok(Container {
            id: record.id,
            name_key: record.name_key,
            pod_id: record.pod_id,
            config,
            created_at: record.created_at,
            image_id: record.image_id,
            image_name: record.image_name,
            image_ref: record.image_ref,
            log_path: record.log_path,
            stop_signal: record.stop_signal,
            state: Mutex::new(record.state),
            changed: tx,
            op: tokio::sync::Mutex::new(()),
            last_cpu: Mutex::new(None),
            persist_lock: Mutex::new(()),
        })
    }
}

async fn read_capped(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = EXEC_OUTPUT_LIMIT.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    out
}

fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let lower = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    let c_target = std::ffi::CString::new(target.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let c_data = std::ffi::CString::new(data)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: all pointers are valid NUL-terminated strings alive for the call.
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            c_target.as_ptr(),
            c"overlay".as_ptr(),
            0,
            c_data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The root filesystem of a container in a pod with its own user namespace: the
/// image's layers idmapped with the pod's mappings under the overlay (so its files
/// show their image owners inside), and the upper layer owned by the namespace's
/// root (so `/` is the container root's and what it writes is owned by the mapped
/// host ids, never by host root).
fn mount_idmapped_rootfs(
    lowers: &[PathBuf],
    dir: &Path,
    rootfs: &Path,
    userns: &spec::PodUserNamespace,
) -> Result<()> {
    let (uid, gid) = userns.root_host_ids()?;
    let upper = dir.join("upper");
    std::os::unix::fs::chown(&upper, Some(uid), Some(gid))
        .map_err(|e| Error::io(format!("chown {}", upper.display()), e))?;
    userns.mount_idmapped_layers(
        lowers,
        Some((&upper, &dir.join("work"))),
        rootfs,
        "the container's root filesystem",
    )
}

/// Creates a container's own directory (see `store::ensure_owned_dir`).
fn create_container_dir(
    dir: &Path,
    userns: Option<&spec::PodUserNamespace>,
) -> std::io::Result<()> {
    let root_gid = userns.and_then(|u| {
        u.gids
            .iter()
            .find(|m| m.container_id == 0 && m.length > 0)
            .map(|m| m.host_id)
    });
    store::ensure_owned_dir(dir, root_gid)
}

/// The host path of a container's log: `log_path` (relative, or absolute) must stay
/// inside the pod's `log_directory`; it names the file the monitor, root, creates
/// and appends to. Symlinks below the log directory are refused too (the monitor
/// opens the file itself with O_NOFOLLOW).
fn container_log_path(log_directory: &str, log_path: &str) -> Result<PathBuf> {
    let escape = || {
        Error::InvalidArgument(format!(
            "log_path {log_path:?} must stay inside the pod's log_directory {log_directory:?}"
        ))
    };
    let dir = Path::new(log_directory);
    if !dir.is_absolute() || log_directory.split('/').any(|c| c == "..") {
        return Err(Error::InvalidArgument(format!(
            "log_directory {log_directory:?} must be an absolute path without '..'"
        )));
    }
    if log_path.split('/').any(|c| c == "..") {
        return Err(escape());
    }
    let lp = Path::new(log_path);
    let rel = if lp.is_absolute() {
        lp.strip_prefix(dir).map_err(|_| escape())?
    } else {
        lp
    };
    if rel.as_os_str().is_empty() || rel.file_name().is_none() {
        return Err(escape());
    }
    let full = dir.join(rel);
    let mut at = dir.to_path_buf();
    for part in rel.components() {
        at.push(part);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(Error::InvalidArgument(format!(
                "log_path {log_path:?}: {} is a symbolic link",
                at.display()
            )));
        }
    }
    Ok(full)
}

/// The signal that asks a container to stop: the CRI's, else the image's STOPSIGNAL,
/// else SIGTERM.
fn stop_signal(image: &str, cri: i32) -> i32 {
    if let Some(sig) = cri_signal(cri) {
        return sig;
    }
    let name = image.trim().trim_start_matches("SIG").to_ascii_uppercase();
    if let Ok(n) = name.parse::<i32>() {
        return n;
    }
    match name.as_str() {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "WINCH" => libc::SIGWINCH,
        _ => libc::SIGTERM,
    }
}

/// The Linux signal number of a CRI `Signal` (kubelet's `lifecycle.stopSignal`). The
/// enum's values are its own (SIGABRT = 1, SIGKILL = 13), not signal numbers; `None`
/// for RUNTIME_DEFAULT and unknown values. Real-time signals count from glibc's
/// SIGRTMIN (34), as Go's and runc's tables do.
fn cri_signal(cri: i32) -> Option<i32> {
    let signal = berth_proto::v1::Signal::try_from(cri).ok()?;
    let name = signal.as_str_name().strip_prefix("SIGNAL_SIG")?;
    if let Some(n) = name.strip_prefix("RTMINPLUS") {
        return Some(libc::SIGRTMIN() + n.parse::<i32>().ok()?);
    }
    if let Some(n) = name.strip_prefix("RTMAXMINUS") {
        return Some(libc::SIGRTMAX() - n.parse::<i32>().ok()?);
    }
    Some(match name {
        "ABRT" | "IOT" => libc::SIGABRT,
        "ALRM" => libc::SIGALRM,
        "BUS" => libc::SIGBUS,
        "CHLD" | "CLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "FPE" => libc::SIGFPE,
        "HUP" => libc::SIGHUP,
        "ILL" => libc::SIGILL,
        "INT" => libc::SIGINT,
        "IO" | "POLL" => libc::SIGIO,
        "KILL" => libc::SIGKILL,
        "PIPE" => libc::SIGPIPE,
        "PROF" => libc::SIGPROF,
        "PWR" => libc::SIGPWR,
        "QUIT" => libc::SIGQUIT,
        "SEGV" => libc::SIGSEGV,
        "STKFLT" => libc::SIGSTKFLT,
        "STOP" => libc::SIGSTOP,
        "SYS" => libc::SIGSYS,
        "TERM" => libc::SIGTERM,
        "TRAP" => libc::SIGTRAP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "VTALRM" => libc::SIGVTALRM,
        "WINCH" => libc::SIGWINCH,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "RTMIN" => libc::SIGRTMIN(),
        "RTMAX" => libc::SIGRTMAX(),
        _ => return None,
    })
}

/// Kills an exec'd process tree unless disarmed (the process finished normally).
struct ExecGuard {
    pid_file: PathBuf,
    armed: bool,
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            kill_tree(pid);
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// SIGKILLs `pid` and all its descendants (children first listed via /proc).
fn kill_tree(pid: i32) {
    // kill(2) reads 0 and -1 as "my process group" and "every process"; 1 is init.
    if crate::host::procs::Pid::new(pid).is_none() {
        return;
    }
    let mut stack = vec![pid];
    let mut all = Vec::new();
    while let Some(p) = stack.pop() {
        all.push(p);
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        stack.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    for p in all {
        // SAFETY: kill(2) has no memory preconditions.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

/// Test hook for the crash window between spawning a container's monitor and
/// recording its pid (`privileged_crash_storm`). When the environment variable
/// `BERTHD_TEST_HOOK_DIE_AFTER_MONITOR_SPAWN` names an existing file, the file is
/// removed (one shot) and berthd SIGKILLs itself right here; if the file says
/// `stop-monitor`, the monitor is SIGSTOPped first, so that it is certainly still
/// mid-create when berthd comes back. Without the variable this does nothing; without
/// the `test-hooks` cargo feature (release builds) it is not compiled at all.
#[cfg(feature = "test-hooks")]
fn test_hook_die_after_monitor_spawn(monitor_pid: i32) {
    let Some(trigger) = std::env::var_os("BERTHD_TEST_HOOK_DIE_AFTER_MONITOR_SPAWN") else {
        return;
    };
    let Ok(what) = std::fs::read_to_string(&trigger) else {
        return;
    };
    if std::fs::remove_file(&trigger).is_err() {
        return;
    }
    tracing::warn!(
        monitor = monitor_pid,
        "test hook: berthd dies right after spawning a monitor"
    );
    use rustix::process::{Pid, Signal, getpid, kill_process};
    if what.trim() == "stop-monitor"
        && let Some(monitor) = Pid::from_raw(monitor_pid)
    {
        // Our unreaped child: the pid cannot have been reused.
        let _ = kill_process(monitor, Signal::STOP);
    }
    // berthd kills itself, as a crash would.
    let _ = kill_process(getpid(), Signal::KILL);
}

/// SIGKILLs every berth-monitor whose command line names container `id` and
/// `bundle` (so this daemon's monitor of it, whoever its parent is now) and waits
/// (up to 5 s) until they are gone. Returns how many there were.
async fn kill_monitors_of(id: &str, bundle: &Path) -> usize {
    let bundle = bundle.display().to_string();
    // Only real monitors (procs::is_host_monitor): a container process that names
    // itself after this container's monitor is left alone.
    let monitors = crate::host::procs::berth_monitors(|_, args| {
        args.contains(&id.as_bytes()) && args.contains(&bundle.as_bytes())
    });
    let count = monitors.len();
    for m in &monitors {
        m.signal(libc::SIGKILL);
    }
    for m in monitors {
        let _ = tokio::time::timeout(KILL_WAIT_MONITOR, wait_pidfd_exit(m.fd)).await;
    }
    count
}

/// How berthd follows a container's monitor: its own child, or, after a restart,
/// a verified process held by a pidfd.
enum Monitor {
    Child(tokio::process::Child),
    Recovered(crate::host::procs::Verified),
}

/// How long recovery waits for a killed stray monitor to be gone.
const KILL_WAIT_MONITOR: Duration = Duration::from_secs(5);

/// The recorded monitor of container `id`, if it still runs: the same pid with the
/// same start time (pids are reused, and a container can name its processes
/// anything). Records from before start times were kept fall back to what a
/// container cannot forge (procs::is_host_monitor) plus the id in its arguments.
fn monitor_of(state: &CtrState, id: &str) -> Option<crate::host::procs::Verified> {
    let pid = crate::host::procs::Pid::new(state.monitor_pid)?;
    let monitor = crate::host::procs::verify(pid, state.monitor_start)?;
    if state.monitor_start == 0 {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.raw())).ok()?;
        if !cmdline.split(|b| *b == 0).any(|a| a == id.as_bytes()) {
            return None;
        }
    }
    Some(monitor)
}

/// Waits until the process behind `fd`, a pidfd (not our child), exits.
async fn wait_pidfd_exit(fd: std::os::fd::OwnedFd) {
    let spare = fd.try_clone();
    // SAFETY: `fd` is an open pidfd owned by the AsyncFd for its whole lifetime; its
    // raw fd never changes.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    };
    match registered {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(_) => {
            let Ok(spare) = spare else { return };
            let _ = tokio::task::spawn_blocking(move || {
                use std::os::fd::AsRawFd;
                let mut p = libc::pollfd {
                    fd: spare.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: `p` is one valid pollfd for the call; `spare` stays open.
                while unsafe { libc::poll(&raw mut p, 1, -1) } < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                }
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_path_cannot_leave_the_log_directory() {
        let d = tempfile::tempdir().expect("tempdir");
        let logs = d.path().join("pod-logs");
        std::fs::create_dir(&logs).expect("mkdir");
        let dir = logs.display().to_string();
        assert_eq!(
            container_log_path(&dir, "app/0.log").expect("relative"),
            logs.join("app/0.log")
        );
        assert_eq!(
            container_log_path(&dir, &format!("{dir}/app/0.log")).expect("absolute inside"),
            logs.join("app/0.log")
        );
        for bad in ["/etc/cron.d/x", "../x.log", "app/../../x.log", "/", ""] {
            let e = container_log_path(&dir, bad).expect_err(bad);
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e:?}");
        }
        let e = container_log_path(&dir, &format!("{dir}-evil/x.log")).expect_err("sibling");
        assert!(e.to_string().contains("log_directory"), "{e}");
        std::os::unix::fs::symlink("/etc", logs.join("app2")).expect("link");
        let e = container_log_path(&dir, "app2/passwd").expect_err("through a link");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::os::unix::fs::symlink("/etc/passwd", logs.join("1.log")).expect("link");
        assert!(
            container_log_path(&dir, "1.log").is_err(),
            "a link as the log"
        );
    }

    #[test]
    fn stop_signals() {
        assert_eq!(stop_signal("", 0), libc::SIGTERM);
        assert_eq!(stop_signal("SIGQUIT", 0), libc::SIGQUIT);
        assert_eq!(stop_signal("9", 0), 9);
        // A CRI stop signal is the `Signal` enum, not a signal number.
        use berth_proto::v1::Signal;
        assert_eq!(stop_signal("SIGQUIT", Signal::Sigint.into()), libc::SIGINT);
        assert_eq!(stop_signal("", Signal::Sigusr1.into()), libc::SIGUSR1);
        assert_eq!(stop_signal("", Signal::Sigkill.into()), libc::SIGKILL);
        assert_eq!(stop_signal("", Signal::Sigabrt.into()), libc::SIGABRT);
        assert_eq!(stop_signal("", Signal::Sigrtmin.into()), libc::SIGRTMIN());
        assert_eq!(
            stop_signal("", Signal::Sigrtminplus3.into()),
            libc::SIGRTMIN() + 3
        );
        assert_eq!(
            stop_signal("", Signal::Sigrtmaxminus1.into()),
            libc::SIGRTMAX() - 1
        );
        assert_eq!(stop_signal("", Signal::Sigrtmax.into()), libc::SIGRTMAX());
        assert_eq!(
            stop_signal("SIGQUIT", Signal::RuntimeDefault.into()),
            libc::SIGQUIT
        );
        assert_eq!(stop_signal("", 999), libc::SIGTERM);
        // Every value of the enum names a real signal.
        for v in 1..=65 {
            assert!(
                cri_signal(v).is_some_and(|s| s > 0 && s <= libc::SIGRTMAX()),
                "{v}"
            );
        }
    }
}
