//! Containers: CRI config → OCI spec, and their life cycle in berthd: overlay rootfs
//! from the image's snapshots, the OCI spec, one `berth-monitor` per container
//! (started with a plain fork+exec; it creates the container with runtime-core in its
//! own single-threaded process and survives berthd), start/stop/remove through
//! runtime-core, exits read from the monitor's exit record, and recovery of all of it
//! after berthd restarts.
//!
//! The container side knows its pod only through [`spec::PodContext`], a value the
//! caller builds: this module never imports `pod` or `cri`.
//!
//! Where things are:
//! - this file: the [`ContainerManager`] type, the [`Container`] record with its
//!   persisted state, and the helpers every step shares (records, handler, kill);
//! - `create.rs`: `CreateContainer` (rootfs, spec, monitor spawn, systemd scope);
//! - `start.rs`, `stop.rs` (stop signal, cgroup sweep), `remove.rs` (clean-up);
//! - `exec.rs`: `ExecSync`; `update.rs`: resources and log reopening;
//! - `status.rs`: List/Status/Stats views; `monitor.rs`: following a monitor to the
//!   container's exit; `recovery.rs`: re-adoption after a berthd restart;
//! - `spec`: the OCI spec; `cdi`, `apparmor`, `seccomp`, `image_volume`, `handler`,
//!   `checkpoint`: what their names say.

// Raw syscalls (mount(2), kill(2), poll(2) on a pidfd) live in `crate::host`; nothing
// here needs `unsafe`, and nothing new should.
#![deny(unsafe_code)]

pub mod apparmor;
pub mod cdi;
pub mod checkpoint;
pub mod error;
pub mod handler;
pub mod image_volume;
pub mod seccomp;
pub mod spec;

mod create;
mod exec;
mod monitor;
mod recovery;
mod remove;
mod start;
mod status;
mod stop;
mod update;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use berth_image::ImageStore;
use berth_proto::v1::{ContainerConfig, ContainerMetadata};
use serde::{Deserialize, Serialize};

pub use self::error::{Error, Result};
use self::handler::Handler;
pub use self::status::Usage;
use crate::config::Config;
use crate::error::Plain;
use crate::host::clock::now_nanos;
use crate::store::{self, StateCell};

/// How long a killed container may take to be reported gone.
const KILL_WAIT: Duration = Duration::from_secs(10);

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
    state: StateCell<CtrState>,
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
        self.state.get()
    }

    /// The current phase, without copying the rest of the state (List and Status
    /// calls read it for every container).
    pub fn phase(&self) -> Phase {
        self.state.read(|s| s.phase)
    }

    fn update(&self, f: impl FnOnce(&mut CtrState)) {
        let phase = self.state.update(|s| {
            f(s);
            s.phase
        });
        self.changed.send_replace(phase);
    }

    /// The metadata kubelet created it with.
    pub fn metadata(&self) -> ContainerMetadata {
        self.config.metadata.clone().unwrap_or_default()
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

/// What happened to a container (cri/ names it as a CRI `ContainerEventType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created (CreateContainer succeeded).
    Created,
    /// Its process started.
    Started,
    /// Its process exited.
    Stopped,
    /// Removed.
    Deleted,
}

/// A container life-cycle event, for `GetContainerEvents` (kubelet's evented PLEG).
#[derive(Debug, Clone)]
pub struct Event {
    /// Container id.
    pub container_id: String,
    /// Its pod.
    pub pod_id: String,
    /// What happened.
    pub kind: EventKind,
    /// When, ns.
    pub at: i64,
}

/// Creates, tracks and removes containers.
#[derive(Debug)]
pub struct ContainerManager {
    config: Config,
    images: ImageStore,
    events: tokio::sync::broadcast::Sender<Event>,
    /// The containers by id, and the reserved container names
    /// (`<name>_<pod>_<namespace>_<uid>_<attempt>`) → id.
    containers: store::Records<Container>,
    /// Writable-layer usage, seconds old (see `fsinfo::USAGE_MAX_AGE`).
    layer_usage: crate::host::fsinfo::UsageCache,
    /// `cdi.spec_dirs`, replaced by a config reload (SIGHUP).
    cdi_spec_dirs: RwLock<Vec<PathBuf>>,
    /// The host's AppArmor and the default profile's loading.
    apparmor: Arc<self::apparmor::AppArmor>,
}

impl ContainerManager {
    /// A manager; call [`Self::recover`] before serving.
    pub fn new(config: Config, images: ImageStore) -> Self {
        Self {
            cdi_spec_dirs: RwLock::new(config.cdi.spec_dirs.clone()),
            config,
            images,
            events: tokio::sync::broadcast::channel(1024).0,
            containers: store::Records::new("container_id", "container"),
            layer_usage: crate::host::fsinfo::UsageCache::default(),
            apparmor: Arc::new(self::apparmor::AppArmor::detect()),
        }
    }

    /// The host's AppArmor, as detected at start.
    pub fn apparmor(&self) -> &Arc<self::apparmor::AppArmor> {
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

    fn emit(&self, ctr: &Container, kind: EventKind) {
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
            _ => Err(Error::failed_precondition(format!(
                "{name} not found next to berthd ({}); install it beside berthd",
                exe.display()
            ))),
        }
    }

    /// By full id or unique prefix.
    pub fn find(&self, id: &str) -> Result<Option<Arc<Container>>> {
        Ok(self.containers.find(id)?)
    }

    /// Like [`Self::find`], `NotFound` when missing.
    pub fn get(&self, id: &str) -> Result<Arc<Container>> {
        Ok(self.containers.get(id)?)
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
        store::write_record(&self.dir(&ctr.id), &record, "container").map_err(Error::from)
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
        let spec =
            oci_spec::runtime::Spec::load(self.dir(&ctr.id).join("bundle").join("config.json"))
                .ok()?;
        let cgroups_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        berth_runtime_core::cgroups::Cgroup::new(
            Path::new(berth_runtime_core::container::CGROUP_ROOT),
            &cgroups_path,
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
}
