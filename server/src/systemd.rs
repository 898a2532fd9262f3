//! The systemd cgroup driver. A pod's cgroup parent is a slice unit
//! (`kubepods-burstable-pod<uid>.slice`), which lives in the cgroup tree at
//! `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice` (each
//! `-` opens a nested slice); kubelet sends that cgroup path, other clients may send the
//! unit name, and berthd keeps the unit name ([`pod_slice_unit`]). Each container is a
//! transient scope unit `berth-<id>.scope` inside it.
//!
//! systemd is the single writer of the cgroups it manages: what berthd writes behind its
//! back is reset at the next `systemctl daemon-reload` (the runc/containerd bug). So the
//! scope is started through systemd's manager API over D-Bus
//! (`StartTransientUnit`, with the container's init pid, `Delegate=yes` and the resource
//! limits as unit properties, waiting for the job's `JobRemoved`), resized with
//! `SetUnitProperties`, and stopped (`StopUnit`, `ResetFailedUnit`) on removal. What
//! systemd cannot express (hugepages, `unified` keys) runtime-core still writes to the
//! cgroup files, after the unit has its properties.
//!
//! Where systemd is not the init system (no `/run/systemd/system`), the driver cannot
//! work and berthd refuses pods with a `FailedPrecondition` saying so (as runc/containerd
//! and CRI-O fail when systemd is absent), and warns at start-up.

use std::path::Path;
use std::time::Duration;

use oci_spec::runtime::LinuxResources;

use crate::error::{Error, HasKind, Kind};

/// Where systemd, when it is the init system, says so (`sd_booted(3)`).
pub const SYSTEMD_RUNTIME_DIR: &str = "/run/systemd/system";
/// Container scope units are `<SCOPE_PREFIX>-<id>.scope`.
pub const SCOPE_PREFIX: &str = "berth";

/// A cgroup parent that is not a valid systemd slice name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SliceError {
    /// No `.slice` suffix.
    #[error("{0:?} is not a systemd slice name (it must end in \".slice\")")]
    NotASlice(String),
    /// A path that is not a slice's own cgroup path.
    #[error(
        "{0:?} is a path but not a slice's cgroup path; the systemd driver takes a slice unit name like kubepods-burstable-pod<uid>.slice or its cgroup path /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice"
    )]
    Path(String),
    /// A dash at either end, or two in a row: no parent slice could be named.
    #[error(
        "{0:?} is not a valid slice name: \"-\" separates parent slices and may not start, end or repeat"
    )]
    BadDash(String),
    /// Characters systemd does not allow in unit names.
    #[error(
        "{0:?} is not a valid slice name: only ASCII letters, digits and \":_.\\-\" are allowed"
    )]
    BadChar(String),
    /// Longer than systemd allows a unit name (its cgroup path, which repeats every
    /// parent's name, would grow with the square of the length).
    #[error(
        "{name:?} is not a valid slice name: it is {len} bytes long, and systemd unit names are at most {UNIT_NAME_MAX} bytes"
    )]
    TooLong {
        /// The name, cut short ([`shown`]).
        name: String,
        /// Its length in bytes.
        len: usize,
    },
}

/// The longest unit name systemd accepts, in bytes (`UNIT_NAME_MAX` less its NUL).
pub const UNIT_NAME_MAX: usize = 255;

/// A caller's value as an error message quotes it: whole when it could be a unit
/// name, else its first 64 bytes and "…" (a hostile value can be megabytes long, and
/// the message goes back to the client and into the log).
fn shown(value: &str) -> String {
    if value.len() <= UNIT_NAME_MAX {
        return value.to_owned();
    }
    let mut end = 64;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}

/// Whether systemd runs as the init system here.
pub fn systemd_running() -> bool {
    Path::new(SYSTEMD_RUNTIME_DIR).is_dir()
}

/// The message berthd gives when the systemd driver is configured without systemd.
pub fn needs_systemd_message() -> String {
    format!(
        "cgroup_driver = \"systemd\" needs systemd as the init system, but it is not running on this host \
         ({SYSTEMD_RUNTIME_DIR} is missing); set cgroup_driver = \"cgroupfs\" in berthd's config \
         and cgroupDriver: cgroupfs in kubelet's"
    )
}

/// The cgroup path of a slice unit: `a-b-c.slice` → `/a.slice/a-b.slice/a-b-c.slice`;
/// the root slice `-.slice` is `/`.
pub fn expand_slice(slice: &str) -> Result<String, SliceError> {
    if slice.contains('/') {
        return Err(SliceError::Path(shown(slice)));
    }
    // Before expanding: the path holds every prefix of the name, so its length grows
    // with the square of the name's (a 16 MiB `a-a-…` would need terabytes).
    if slice.len() > UNIT_NAME_MAX {
        return Err(SliceError::TooLong {
            name: shown(slice),
            len: slice.len(),
        });
    }
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(SliceError::NotASlice(slice.to_owned()));
    };
    if stem == "-" {
        return Ok("/".to_owned());
    }
    if stem.is_empty() {
        return Err(SliceError::NotASlice(slice.to_owned()));
    }
    if !stem
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-' | '\\'))
    {
        return Err(SliceError::BadChar(slice.to_owned()));
    }
    if stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return Err(SliceError::BadDash(slice.to_owned()));
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push('/');
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    Ok(path)
}

/// The slice unit a pod's cgroup parent names. kubelet's systemd cgroup manager sends
/// the slice's cgroup path (`/kubepods.slice/kubepods-pod<uid>.slice`: its `ToSystemd`
/// expands the unit name), other clients may send the unit name itself; like
/// containerd and CRI-O, berthd takes the path's last component, but only when the
/// path is exactly that slice's own cgroup path (anything else would put the pod
/// somewhere the path does not say).
pub fn slice_unit(parent: &str) -> Result<String, SliceError> {
    if !parent.contains('/') {
        expand_slice(parent)?;
        return Ok(parent.to_owned());
    }
    let path = parent.trim_end_matches('/');
    let unit = path.rsplit('/').next().unwrap_or_default();
    match expand_slice(unit) {
        Ok(expanded) if expanded == path => Ok(unit.to_owned()),
        Err(e @ SliceError::TooLong { .. }) => Err(e),
        _ => Err(SliceError::Path(shown(parent))),
    }
}

/// RunPodSandbox's check of a pod's cgroup parent under the systemd driver: the slice
/// unit to keep as the pod's parent ([`slice_unit`]; empty for none);
/// `FailedPrecondition` when systemd is not running (whatever the parent), else
/// `InvalidArgument` when the parent names no slice.
pub fn pod_slice_unit(parent: &str, systemd_running: bool) -> Result<String, Error> {
    if !systemd_running {
        return Err(Error::FailedPrecondition(needs_systemd_message()));
    }
    if parent.is_empty() {
        return Ok(String::new());
    }
    slice_unit(parent).map_err(|e| Error::InvalidArgument(format!("linux.cgroup_parent: {e}")))
}

/// A container's scope unit name.
pub fn scope_name(id: &str) -> String {
    format!("{SCOPE_PREFIX}-{id}.scope")
}

/// A container's cgroup path under the systemd driver: its scope inside the pod's
/// slice (`system.slice` when the pod has no cgroup parent).
pub fn container_cgroup_path(pod_slice: &str, id: &str) -> Result<String, SliceError> {
    let slice = if pod_slice.is_empty() {
        "system.slice"
    } else {
        pod_slice
    };
    let mut path = expand_slice(slice)?;
    if !path.ends_with('/') {
        path.push('/');
    }
    path.push_str(&scope_name(id));
    Ok(path)
}

/// The slice a container's scope goes in: the pod's cgroup parent, `system.slice`
/// when it has none (as [`container_cgroup_path`] places it).
pub fn pod_slice(parent: &str) -> &str {
    if parent.is_empty() {
        "system.slice"
    } else {
        parent
    }
}

/// Slices that are systemd's own: never stopped for a pod, whoever names them.
const SYSTEM_SLICES: &[&str] = &["-.slice", "system.slice", "user.slice", "machine.slice"];

/// Whether a slice is named as a pod's own: its last `-` part starts with `pod`, as
/// kubelet names pod slices (`kubepods-burstable-pod<uid>.slice`). kubelet's QoS slices
/// (`kubepods.slice`, `kubepods-besteffort.slice`) and any other parent slice are not,
/// even when they happen to be empty: stopping one would drop the settings kubelet gave
/// it.
fn is_pod_slice(parent: &str) -> bool {
    parent
        .strip_suffix(".slice")
        .and_then(|n| n.rsplit('-').next())
        .is_some_and(|last| last.starts_with("pod"))
}

/// RemovePodSandbox's question under the systemd driver: is the pod's cgroup parent a
/// slice of its own, which berthd stops so that systemd forgets it (a transient slice
/// is otherwise left loaded and active for good)? Only when the pod named one, it is
/// not one of systemd's own slices, no other sandbox berthd knows names it (`shared`),
/// and stopping it can end nothing: no process runs in it any more (`cgroup.events`
/// says `populated 0`, or its cgroup is already gone) and it holds no other slice (a
/// pod's slice holds scopes; one holding slices is a parent such as kubelet's QoS
/// slices). `cgroup_root` is the cgroup mount; on a host that is not pure cgroup v2
/// (no `cgroup.controllers` there) nothing is stopped.
pub fn pod_slice_to_stop(parent: &str, shared: bool, cgroup_root: &Path) -> bool {
    if parent.is_empty() || shared || SYSTEM_SLICES.contains(&parent) || !is_pod_slice(parent) {
        return false;
    }
    let Ok(path) = expand_slice(parent) else {
        return false;
    };
    if !cgroup_root.join("cgroup.controllers").exists() {
        // Not a pure cgroup v2 host: whether the slice is in use cannot be read here.
        return false;
    }
    let dir = cgroup_root.join(path.trim_start_matches('/'));
    let events = match std::fs::read_to_string(dir.join("cgroup.events")) {
        Ok(e) => e,
        Err(_) if !dir.exists() => return true,
        Err(_) => return false,
    };
    if events.lines().any(|l| l.trim() == "populated 1") {
        return false;
    }
    match std::fs::read_dir(&dir) {
        Ok(entries) => !entries.flatten().any(|e| {
            e.file_name().to_string_lossy().ends_with(".slice")
                && e.file_type().is_ok_and(|t| t.is_dir())
        }),
        Err(_) => false,
    }
}

/// RemovePodSandbox under the systemd driver, once the pod's infra scope and
/// containers are gone: stops the pod's slice when [`pod_slice_to_stop`] says it is
/// the pod's own, as its scopes are stopped, so that no unit outlives the pod. kubelet
/// stops the pod slices it made itself too; whoever is second finds no unit, which is
/// not an error. Best effort: a failure is logged, the pod is removed all the same.
pub async fn release_pod_slice(pod: &str, parent: &str, shared: bool) {
    let root = Path::new(berth_runtime_core::container::CGROUP_ROOT);
    if !pod_slice_to_stop(parent, shared, root) {
        tracing::debug!(
            pod,
            slice = parent,
            "pod slice kept (shared, systemd's own, or in use)"
        );
        return;
    }
    match client().stop_unit(parent).await {
        Ok(()) => tracing::info!(pod, slice = parent, "pod slice stopped"),
        Err(e) => tracing::warn!(pod, slice = parent, error = %e, "stopping the pod slice"),
    }
}

/// One unit property value (the `v` of systemd's `a(sv)`), plain so that the
/// translation from OCI resources is testable without a bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropValue {
    /// `t`
    U64(u64),
    /// `b`
    Bool(bool),
    /// `s`
    Str(String),
    /// `au` (PIDs)
    U32s(Vec<u32>),
    /// `ay` (a CPU or NUMA node bitmask)
    Bytes(Vec<u8>),
}

/// Unit properties in the order they are sent.
pub type Properties = Vec<(&'static str, PropValue)>;

/// systemd's "infinity" for `t` limits.
const INFINITY: u64 = u64::MAX;
/// The CFS period the kernel (and systemd) use when none is given, in µs.
const DEFAULT_CPU_PERIOD_US: u64 = 100_000;
/// The highest CPU or memory node number a cpuset may name here (systemd's own
/// cpu_set parser stops at 8192 too).
const MAX_CPUSET_INDEX: u32 = 8191;

/// The unit properties that carry `r`'s limits, for `StartTransientUnit` and
/// `SetUnitProperties`: MemoryMax, MemorySwapMax, CPUWeight, CPUQuotaPerSecUSec with
/// CPUQuotaPeriodUSec, TasksMax, AllowedCPUs and AllowedMemoryNodes (systemd ≥ 244).
/// A limit of -1 is "infinity"; an absent one is not sent.
pub fn resource_properties(r: &LinuxResources) -> Result<Properties, Error> {
    let mut props = Properties::new();
    if let Some(mem) = r.memory() {
        let limit = mem.limit();
        match limit {
            Some(l) if l > 0 => props.push(("MemoryMax", PropValue::U64(l.unsigned_abs()))),
            Some(-1) => props.push(("MemoryMax", PropValue::U64(INFINITY))),
            _ => {}
        }
        // OCI's swap is memory+swap; systemd's MemorySwapMax is swap alone.
        match (mem.swap(), limit) {
            (Some(-1), _) => props.push(("MemorySwapMax", PropValue::U64(INFINITY))),
            (Some(swap), Some(l)) if swap > 0 && l > 0 => {
                if swap < l {
                    return Err(Error::InvalidArgument(format!(
                        "resources: memory+swap limit {swap} is below the memory limit {l}"
                    )));
                }
                props.push(("MemorySwapMax", PropValue::U64((swap - l).unsigned_abs())));
            }
            _ => {}
        }
    }
    if let Some(cpu) = r.cpu() {
        if let Some(shares) = cpu.shares().filter(|s| *s > 0) {
            props.push((
                "CPUWeight",
                PropValue::U64(berth_runtime_core::cgroups::shares_to_weight(shares)),
            ));
        }
        let period = cpu.period().filter(|p| *p > 0);
        match cpu.quota() {
            Some(q) if q > 0 => {
                let period = period.unwrap_or(DEFAULT_CPU_PERIOD_US);
                let quota = q.unsigned_abs();
                // systemd keeps the quota as µs per second and writes
                // cpu.max = per_sec * period / 1s; it rounds to whole percent, so a
                // fractional percent is rounded up, as runc does, not down to nothing.
                let per_sec = quota.saturating_mul(1_000_000).div_ceil(period);
                let per_sec = per_sec.div_ceil(10_000).saturating_mul(10_000);
                props.push(("CPUQuotaPerSecUSec", PropValue::U64(per_sec)));
                props.push(("CPUQuotaPeriodUSec", PropValue::U64(period)));
            }
            Some(-1) => {
                props.push(("CPUQuotaPerSecUSec", PropValue::U64(INFINITY)));
                if let Some(p) = period {
                    props.push(("CPUQuotaPeriodUSec", PropValue::U64(p)));
                }
            }
            _ => {
                if let Some(p) = period {
                    props.push(("CPUQuotaPeriodUSec", PropValue::U64(p)));
                }
            }
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.trim().is_empty()) {
            props.push((
                "AllowedCPUs",
                PropValue::Bytes(cpuset_mask(cpus).map_err(|e| {
                    Error::InvalidArgument(format!("resources: cpuset_cpus {cpus:?}: {e}"))
                })?),
            ));
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|c| !c.trim().is_empty()) {
            props.push((
                "AllowedMemoryNodes",
                PropValue::Bytes(cpuset_mask(mems).map_err(|e| {
                    Error::InvalidArgument(format!("resources: cpuset_mems {mems:?}: {e}"))
                })?),
            ));
        }
    }
    if let Some(pids) = r.pids() {
        match pids.limit() {
            l if l > 0 => props.push(("TasksMax", PropValue::U64(l.unsigned_abs()))),
            -1 => props.push(("TasksMax", PropValue::U64(INFINITY))),
            _ => {}
        }
    }
    Ok(props)
}

/// The properties of a container's (or a pod infra's) transient scope: in `slice`,
/// holding `pid`, delegated (the cgroup below is runtime-core's to manage, as with
/// runc), with the accounting the limits need and `r`'s limits.
pub fn scope_properties(
    slice: &str,
    pid: u32,
    description: String,
    r: &LinuxResources,
) -> Result<Properties, Error> {
    let mut props: Properties = vec![
        ("Description", PropValue::Str(description)),
        ("Slice", PropValue::Str(slice.to_owned())),
        ("PIDs", PropValue::U32s(vec![pid])),
        ("Delegate", PropValue::Bool(true)),
        // Not ordered after basic.target nor stopped by shutdown.target's conflicts:
        // a container lives as long as its processes (runc does the same).
        ("DefaultDependencies", PropValue::Bool(false)),
        ("MemoryAccounting", PropValue::Bool(true)),
        ("CPUAccounting", PropValue::Bool(true)),
        ("TasksAccounting", PropValue::Bool(true)),
    ];
    props.extend(resource_properties(r)?);
    Ok(props)
}

/// A cpuset list (`0-3,8`) as systemd's bitmask: bit `n % 8` of byte `n / 8` for CPU
/// (or node) `n`.
pub fn cpuset_mask(list: &str) -> Result<Vec<u8>, String> {
    let mut mask = Vec::<u8>::new();
    for part in list.trim().split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| format!("{part:?} is not a number or a range"))
        };
        let (lo, hi) = (parse(lo)?, parse(hi)?);
        if lo > hi {
            return Err(format!("{part:?} is a descending range"));
        }
        if hi > MAX_CPUSET_INDEX {
            return Err(format!("{hi} is above {MAX_CPUSET_INDEX}"));
        }
        for n in lo..=hi {
            let byte = usize::try_from(n / 8).map_err(|e| e.to_string())?;
            if mask.len() <= byte {
                mask.resize(byte + 1, 0);
            }
            mask[byte] |= 1 << (n % 8);
        }
    }
    Ok(mask)
}

/// How long berthd waits for a systemd job (start or stop of a scope): minutes would
/// mean systemd is wedged; the slowest emulated guest takes well under a second.
const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// What went wrong talking to systemd.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// No connection to the system bus.
    #[error(
        "cannot reach systemd over D-Bus (the system bus, /run/dbus/system_bus_socket), which the systemd cgroup driver needs: {0}"
    )]
    Connect(#[source] zbus::Error),
    /// systemd refused a call.
    #[error("systemd {method} of {unit}: {source}")]
    Call {
        /// The manager method.
        method: &'static str,
        /// The unit it was about.
        unit: String,
        /// systemd's (or the bus's) error.
        #[source]
        source: zbus::Error,
    },
    /// A job finished other than `done`.
    #[error(
        "systemd's job for {unit} finished as {result:?}, not \"done\" (see journalctl -u {unit})"
    )]
    Job {
        /// The unit.
        unit: String,
        /// `failed`, `timeout`, `canceled`, `dependency`, ...
        result: String,
    },
    /// A job did not finish in time.
    #[error("systemd's job for {0} did not finish within {JOB_TIMEOUT:?}")]
    Timeout(String),
}

impl SystemdError {
    /// Whether systemd said the unit does not exist (or is not loaded).
    pub(crate) fn is_no_such_unit(&self) -> bool {
        matches!(self, Self::Call { source: zbus::Error::MethodError(name, _, _), .. }
            if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit"
                || name.as_str() == "org.freedesktop.systemd1.UnitNotLoaded")
    }
}

impl HasKind for SystemdError {
    fn kind(&self) -> Kind {
        match self {
            SystemdError::Connect(_) => Kind::FailedPrecondition,
            SystemdError::Timeout(_) => Kind::Unavailable,
            SystemdError::Call { .. } | SystemdError::Job { .. } => Kind::Internal,
        }
    }
}

impl From<SystemdError> for Error {
    fn from(e: SystemdError) -> Self {
        Error::classified(e)
    }
}

impl PropValue {
    fn to_value(&self) -> zbus::zvariant::Value<'_> {
        use zbus::zvariant::Value;
        match self {
            Self::U64(v) => Value::U64(*v),
            Self::Bool(v) => Value::Bool(*v),
            Self::Str(v) => Value::from(v.as_str()),
            Self::U32s(v) => Value::from(v.clone()),
            Self::Bytes(v) => Value::from(v.clone()),
        }
    }
}

/// berthd's client of systemd's manager (`org.freedesktop.systemd1.Manager` on the
/// system bus): one connection, made on first use and made again after it broke.
#[derive(Debug, Default)]
pub struct Systemd {
    conn: tokio::sync::Mutex<Option<zbus::Connection>>,
}

/// The one client berthd uses (containers, pod infra processes, pod slices).
pub fn client() -> &'static Systemd {
    static CLIENT: std::sync::LazyLock<Systemd> = std::sync::LazyLock::new(Systemd::default);
    &CLIENT
}

type Wire<'a> = Vec<(&'a str, zbus::zvariant::Value<'a>)>;

fn wire(props: &Properties) -> Wire<'_> {
    props.iter().map(|(k, v)| (*k, v.to_value())).collect()
}

impl Systemd {
    async fn manager(&self) -> Result<zbus::Proxy<'static>, SystemdError> {
        let mut conn = self.conn.lock().await;
        let c = match &*conn {
            Some(c) => c.clone(),
            None => {
                // Every call is bounded: a wedged bus or manager must not hold a
                // container's operation lock (and this mutex) forever.
                let c = zbus::connection::Builder::system()
                    .map_err(SystemdError::Connect)?
                    .method_timeout(JOB_TIMEOUT)
                    .build()
                    .await
                    .map_err(SystemdError::Connect)?;
                *conn = Some(c.clone());
                c
            }
        };
        zbus::proxy::Builder::new(&c)
            .destination("org.freedesktop.systemd1")
            .and_then(|b| b.path("/org/freedesktop/systemd1"))
            .and_then(|b| b.interface("org.freedesktop.systemd1.Manager"))
            .map(|b| b.cache_properties(zbus::proxy::CacheProperties::No))
            .map_err(SystemdError::Connect)?
            .build()
            .await
            .map_err(SystemdError::Connect)
    }

    /// Forgets a connection that failed other than by systemd's answer, so that the
    /// next call reconnects (the bus restarted, or the socket broke).
    async fn forget_broken(&self, e: &SystemdError) {
        let broken = match e {
            SystemdError::Connect(_) => true,
            SystemdError::Call { source, .. } => !matches!(source, zbus::Error::MethodError(..)),
            _ => false,
        };
        if broken {
            *self.conn.lock().await = None;
        }
    }

    /// Calls a manager method that queues a job and waits for the job's end. The
    /// `JobRemoved` match is in place before the call, so the signal cannot be missed.
    async fn run_job<B>(
        &self,
        method: &'static str,
        unit: &str,
        body: &B,
    ) -> Result<(), SystemdError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        use futures_util::StreamExt;
        let call_err = |source| SystemdError::Call {
            method,
            unit: unit.to_owned(),
            source,
        };
        let manager = self.manager().await?;
        let mut removed = manager
            .receive_signal("JobRemoved")
            .await
            .map_err(call_err)?;
        let job: zbus::zvariant::OwnedObjectPath =
            manager.call(method, body).await.map_err(call_err)?;
        let wait = async {
            while let Some(msg) = removed.next().await {
                let body = msg.body();
                let Ok((_id, path, _unit, result)) =
                    body.deserialize::<(u32, zbus::zvariant::ObjectPath<'_>, &str, &str)>()
                else {
                    continue;
                };
                if path.as_str() == job.as_str() {
                    return Some(result.to_owned());
                }
            }
            None
        };
        match tokio::time::timeout(JOB_TIMEOUT, wait).await {
            Ok(Some(result)) if result == "done" => Ok(()),
            Ok(Some(result)) => Err(SystemdError::Job {
                unit: unit.to_owned(),
                result,
            }),
            Ok(None) => Err(call_err(zbus::Error::InputOutput(std::sync::Arc::new(
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the bus connection closed while waiting for the job",
                ),
            )))),
            Err(_) => Err(SystemdError::Timeout(unit.to_owned())),
        }
    }

    /// Calls the manager's `method` about `unit` (with `body`), for methods that answer
    /// nothing and start no job.
    async fn call<B>(&self, method: &'static str, unit: &str, body: &B) -> Result<(), SystemdError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.manager()
            .await?
            .call::<_, _, ()>(method, body)
            .await
            .map_err(|source| SystemdError::Call {
                method,
                unit: unit.to_owned(),
                source,
            })
    }

    async fn checked<T>(&self, r: Result<T, SystemdError>) -> Result<T, SystemdError> {
        if let Err(e) = &r {
            self.forget_broken(e).await;
        }
        r
    }

    /// Starts transient scope `unit` with `props` (from [`scope_properties`]) and
    /// waits until systemd has it running with the pid inside.
    pub async fn start_scope(&self, unit: &str, props: &Properties) -> Result<(), SystemdError> {
        let aux: Vec<(&str, Wire<'_>)> = Vec::new();
        let r = self
            .run_job(
                "StartTransientUnit",
                unit,
                &(unit, "fail", wire(props), aux),
            )
            .await;
        self.checked(r).await
    }

    /// Changes the live unit's properties (`runtime`: until reboot, like systemd-run's
    /// units), which systemd writes to the cgroup and keeps over a daemon-reload.
    pub async fn set_properties(&self, unit: &str, props: &Properties) -> Result<(), SystemdError> {
        if props.is_empty() {
            return Ok(());
        }
        let r = self
            .call("SetUnitProperties", unit, &(unit, true, wire(props)))
            .await;
        self.checked(r).await
    }

    /// UpdatePodSandboxResources under the systemd driver: the pod slice's properties,
    /// or, for a slice nobody created (kubelet creates its pod slices itself; crictl
    /// does not), a transient slice started with them.
    pub async fn update_slice(&self, slice: &str, props: &Properties) -> Result<(), SystemdError> {
        match self.set_properties(slice, props).await {
            Err(e) if e.is_no_such_unit() => {
                let mut all: Properties = vec![
                    (
                        "Description",
                        PropValue::Str(format!("berth pod slice {slice}")),
                    ),
                    ("DefaultDependencies", PropValue::Bool(false)),
                ];
                all.extend(props.iter().cloned());
                let aux: Vec<(&str, Wire<'_>)> = Vec::new();
                let r = self
                    .run_job(
                        "StartTransientUnit",
                        slice,
                        &(slice, "fail", wire(&all), aux),
                    )
                    .await;
                self.checked(r).await
            }
            r => r,
        }
    }

    /// Stops `unit` and clears a failed state, so that systemd forgets it. A unit
    /// that is already gone (a scope stops by itself once its processes have exited)
    /// is not an error.
    pub async fn stop_unit(&self, unit: &str) -> Result<(), SystemdError> {
        let r = self.run_job("StopUnit", unit, &(unit, "replace")).await;
        match r {
            Ok(()) => {}
            Err(e) if e.is_no_such_unit() => {}
            Err(e) => return self.checked(Err(e)).await,
        }
        let r = self.call("ResetFailedUnit", unit, &(unit,)).await;
        match r {
            Err(e) if !e.is_no_such_unit() => self.checked(Err(e)).await,
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(json: serde_json::Value) -> LinuxResources {
        serde_json::from_value(json).expect("resources")
    }

    fn prop<'a>(props: &'a Properties, name: &str) -> Option<&'a PropValue> {
        props.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    #[test]
    fn the_seeds_limits_become_unit_properties() {
        // 80 MiB without swap and 5 % of a CPU, as the seed's pod asks for them.
        let r = resources(serde_json::json!({
            "memory": { "limit": 80 * 1024 * 1024, "swap": 80 * 1024 * 1024 },
            "cpu": { "quota": 5000, "period": 100_000, "shares": 1024 },
        }));
        let p = resource_properties(&r).expect("valid");
        assert_eq!(prop(&p, "MemoryMax"), Some(&PropValue::U64(83_886_080)));
        // No swap beyond the memory limit.
        assert_eq!(prop(&p, "MemorySwapMax"), Some(&PropValue::U64(0)));
        // 5 % = 50 ms per second; systemd then writes cpu.max "5000 100000".
        assert_eq!(
            prop(&p, "CPUQuotaPerSecUSec"),
            Some(&PropValue::U64(50_000))
        );
        assert_eq!(
            prop(&p, "CPUQuotaPeriodUSec"),
            Some(&PropValue::U64(100_000))
        );
        assert_eq!(prop(&p, "CPUWeight"), Some(&PropValue::U64(39)));
        assert_eq!(prop(&p, "TasksMax"), None);
        assert_eq!(prop(&p, "AllowedCPUs"), None);
    }

    #[test]
    fn quotas_in_other_periods_and_fractions_round_up() {
        // 1.5 CPUs in a 50 ms period.
        let p = resource_properties(&resources(
            serde_json::json!({ "cpu": { "quota": 75_000, "period": 50_000 } }),
        ))
        .expect("valid");
        assert_eq!(
            prop(&p, "CPUQuotaPerSecUSec"),
            Some(&PropValue::U64(1_500_000))
        );
        assert_eq!(
            prop(&p, "CPUQuotaPeriodUSec"),
            Some(&PropValue::U64(50_000))
        );
        // 0.5 % (500 µs per 100 ms) is kept as 1 %, not rounded to no quota at all.
        let p = resource_properties(&resources(serde_json::json!({ "cpu": { "quota": 500 } })))
            .expect("valid");
        assert_eq!(
            prop(&p, "CPUQuotaPerSecUSec"),
            Some(&PropValue::U64(10_000))
        );
        assert_eq!(
            prop(&p, "CPUQuotaPeriodUSec"),
            Some(&PropValue::U64(100_000))
        );
    }

    #[test]
    fn unlimited_is_infinity_and_absent_is_not_sent() {
        let p = resource_properties(&resources(serde_json::json!({
            "memory": { "limit": -1, "swap": -1 },
            "cpu": { "quota": -1 },
            "pids": { "limit": -1 },
        })))
        .expect("valid");
        for name in [
            "MemoryMax",
            "MemorySwapMax",
            "CPUQuotaPerSecUSec",
            "TasksMax",
        ] {
            assert_eq!(prop(&p, name), Some(&PropValue::U64(u64::MAX)), "{name}");
        }
        assert!(
            resource_properties(&resources(serde_json::json!({})))
                .expect("valid")
                .is_empty()
        );
    }

    #[test]
    fn swap_is_memory_plus_swap_in_oci_and_swap_alone_in_systemd() {
        let p = resource_properties(&resources(serde_json::json!({
            "memory": { "limit": 100, "swap": 300 },
            "pids": { "limit": 42 },
        })))
        .expect("valid");
        assert_eq!(prop(&p, "MemorySwapMax"), Some(&PropValue::U64(200)));
        assert_eq!(prop(&p, "TasksMax"), Some(&PropValue::U64(42)));
        let e = resource_properties(&resources(
            serde_json::json!({ "memory": { "limit": 300, "swap": 100 } }),
        ))
        .expect_err("swap below limit");
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }

    #[test]
    fn cpusets_become_systemd_bitmasks() {
        assert_eq!(cpuset_mask("0").expect("valid"), vec![0b1]);
        assert_eq!(cpuset_mask("0-1,3").expect("valid"), vec![0b1011]);
        assert_eq!(cpuset_mask("9").expect("valid"), vec![0, 0b10]);
        assert_eq!(cpuset_mask(" 0 - 2 , 8 ").expect("valid"), vec![0b111, 1]);
        for bad in ["a", "3-1", "1-", "99999", "0-4294967295"] {
            assert!(cpuset_mask(bad).is_err(), "{bad}");
        }
        let p = resource_properties(&resources(
            serde_json::json!({ "cpu": { "cpus": "1-2", "mems": "0" } }),
        ))
        .expect("valid");
        assert_eq!(
            prop(&p, "AllowedCPUs"),
            Some(&PropValue::Bytes(vec![0b110]))
        );
        assert_eq!(
            prop(&p, "AllowedMemoryNodes"),
            Some(&PropValue::Bytes(vec![0b1]))
        );
        let e = resource_properties(&resources(serde_json::json!({ "cpu": { "cpus": "x" } })))
            .expect_err("bad cpuset");
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("cpuset_cpus")),
            "{e}"
        );
    }

    #[test]
    fn scopes_hold_the_pid_in_the_slice_delegated() {
        let r = resources(serde_json::json!({ "memory": { "limit": 1 << 20 } }));
        let p = scope_properties(pod_slice("kubepods-podu1.slice"), 4242, "d".into(), &r)
            .expect("valid");
        assert_eq!(
            prop(&p, "Slice"),
            Some(&PropValue::Str("kubepods-podu1.slice".into()))
        );
        assert_eq!(prop(&p, "PIDs"), Some(&PropValue::U32s(vec![4242])));
        assert_eq!(prop(&p, "Delegate"), Some(&PropValue::Bool(true)));
        assert_eq!(prop(&p, "MemoryMax"), Some(&PropValue::U64(1 << 20)));
        assert_eq!(pod_slice(""), "system.slice");
    }

    #[test]
    fn properties_go_on_the_wire_with_systemds_types() {
        let p: Properties = vec![
            ("MemoryMax", PropValue::U64(5)),
            ("Delegate", PropValue::Bool(true)),
            ("Slice", PropValue::Str("a.slice".into())),
            ("PIDs", PropValue::U32s(vec![1])),
            ("AllowedCPUs", PropValue::Bytes(vec![3])),
        ];
        let sigs: Vec<String> = wire(&p)
            .iter()
            .map(|(_, v)| v.value_signature().to_string())
            .collect();
        assert_eq!(sigs, ["t", "b", "s", "au", "ay"]);
    }

    /// A fake cgroup v2 tree with `slice` (a pod slice) populated or not.
    fn v2_tree_with(slice_path: &str, populated: bool) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("cgroup.controllers"), "cpu memory\n").expect("write");
        let dir = tmp.path().join(slice_path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let events = format!("populated {}\nfrozen 0\n", u8::from(populated));
        std::fs::write(dir.join("cgroup.events"), events).expect("write");
        tmp
    }

    /// RemovePodSandbox stops the pod's own slice once nothing runs in it — and only
    /// then: never systemd's own slices, one another sandbox names, one with processes
    /// in it (stopping a slice stops everything inside), a parent of other slices, or
    /// anything on a host that is not pure cgroup v2.
    #[test]
    fn only_a_pods_own_empty_slice_is_stopped() {
        let own = "vmlane-pod1.slice";
        let empty = v2_tree_with("/vmlane.slice/vmlane-pod1.slice", false);
        assert!(pod_slice_to_stop(own, false, empty.path()));
        assert!(
            !pod_slice_to_stop(own, true, empty.path()),
            "shared with another pod"
        );
        assert!(
            !pod_slice_to_stop("", false, empty.path()),
            "no parent: system.slice"
        );
        for sys in SYSTEM_SLICES {
            assert!(!pod_slice_to_stop(sys, false, empty.path()), "{sys}");
        }
        assert!(!pod_slice_to_stop("/not/a/slice", false, empty.path()));

        let busy = v2_tree_with("/vmlane.slice/vmlane-pod1.slice", true);
        assert!(
            !pod_slice_to_stop(own, false, busy.path()),
            "processes in it"
        );

        // Already gone (kubelet stopped it first): stopping is a harmless no-op.
        let gone = v2_tree_with("/other.slice", false);
        assert!(pod_slice_to_stop(own, false, gone.path()));

        let parent = v2_tree_with("/kubepods.slice/kubepods-besteffort.slice", false);
        std::fs::write(
            parent.path().join("kubepods.slice/cgroup.events"),
            "populated 0\n",
        )
        .expect("write");
        assert!(
            !pod_slice_to_stop("kubepods.slice", false, parent.path()),
            "holds slices"
        );

        // kubelet's QoS slice, empty of pod slices: still not a pod's own.
        let qos = v2_tree_with("/kubepods.slice/kubepods-besteffort.slice", false);
        assert!(!pod_slice_to_stop(
            "kubepods-besteffort.slice",
            false,
            qos.path()
        ));
        let kpod = v2_tree_with(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12ab.slice",
            false,
        );
        assert!(pod_slice_to_stop(
            "kubepods-besteffort-pod12ab.slice",
            false,
            kpod.path()
        ));

        std::fs::remove_file(empty.path().join("cgroup.controllers")).expect("rm");
        assert!(
            !pod_slice_to_stop(own, false, empty.path()),
            "not cgroup v2"
        );
    }

    #[test]
    fn kubelet_pod_slices_expand_to_nested_paths() {
        assert_eq!(
            expand_slice("kubepods-burstable-pod1234_5678.slice").expect("valid"),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice"
        );
        assert_eq!(
            expand_slice("kubepods-podabc.slice").expect("valid"),
            "/kubepods.slice/kubepods-podabc.slice"
        );
        assert_eq!(
            expand_slice("kubepods.slice").expect("valid"),
            "/kubepods.slice"
        );
        assert_eq!(expand_slice("-.slice").expect("root"), "/");
    }

    #[test]
    fn invalid_slice_names_are_refused() {
        for (bad, kind) in [
            ("-kubepods.slice", "dash"),
            ("kubepods-.slice", "dash"),
            ("kubepods--pod1.slice", "dash"),
            ("kubepods-pod1", "suffix"),
            ("kubepods-pod1.scope", "suffix"),
            (".slice", "suffix"),
            ("", "suffix"),
            ("/kubepods.slice/kubepods-pod1.slice", "path"),
            ("kube pods.slice", "char"),
        ] {
            let e = expand_slice(bad).expect_err(bad);
            let ok = match kind {
                "dash" => matches!(e, SliceError::BadDash(_)),
                "suffix" => matches!(e, SliceError::NotASlice(_)),
                "path" => matches!(e, SliceError::Path(_)),
                _ => matches!(e, SliceError::BadChar(_)),
            };
            assert!(ok, "{bad:?}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn containers_are_scopes_in_the_pod_slice() {
        assert_eq!(
            container_cgroup_path("kubepods-besteffort-podu1.slice", "abc").expect("valid"),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podu1.slice/berth-abc.scope"
        );
        assert_eq!(
            container_cgroup_path("", "abc").expect("valid"),
            "/system.slice/berth-abc.scope"
        );
        assert_eq!(
            container_cgroup_path("-.slice", "abc").expect("valid"),
            "/berth-abc.scope"
        );
        assert!(container_cgroup_path("a--b.slice", "abc").is_err());
    }

    #[test]
    fn pods_need_systemd_then_a_valid_slice() {
        let e = pod_slice_unit("kubepods-pod1.slice", false).expect_err("no systemd");
        assert!(
            matches!(&e, Error::FailedPrecondition(m) if m.contains("needs systemd")),
            "{e}"
        );
        let e = pod_slice_unit("", false).expect_err("no systemd, no parent");
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
        assert_eq!(
            pod_slice_unit("kubepods-pod1.slice", true).expect("valid"),
            "kubepods-pod1.slice"
        );
        assert_eq!(pod_slice_unit("", true).expect("no parent"), "");
        let e = pod_slice_unit("/kubepods/pod1", true).expect_err("a path");
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("linux.cgroup_parent")),
            "{e}"
        );
        let e = pod_slice_unit("kubepods--pod1.slice", true).expect_err("--");
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }

    /// A slice name's cgroup path repeats every parent's name: `a-a-…` within gRPC's
    /// 16 MiB would expand to terabytes. Names past systemd's limit are refused first,
    /// and the message names the field and the length without echoing the value.
    #[test]
    fn overlong_slice_names_are_refused_unexpanded() {
        let at_limit = format!("{}.slice", "a-".repeat(124) + "a");
        assert_eq!(at_limit.len(), UNIT_NAME_MAX);
        expand_slice(&at_limit).expect("a name at the limit");
        let over = format!("{}.slice", "a-".repeat(150) + "a");
        let e = expand_slice(&over).expect_err("over the limit");
        assert!(
            matches!(&e, SliceError::TooLong { len, .. } if *len == over.len()),
            "{e}"
        );
        // Megabytes, as a unit name and as the last part of a path.
        let huge = format!("{}a.slice", "a-".repeat(1 << 19));
        for parent in [huge.clone(), format!("/kubepods.slice/{huge}")] {
            let e = pod_slice_unit(&parent, true).expect_err("huge");
            let Error::InvalidArgument(m) = &e else {
                panic!("{e}");
            };
            assert!(m.starts_with("linux.cgroup_parent: "), "{m}");
            assert!(m.contains(&huge.len().to_string()), "{m}");
            assert!(
                m.len() < 300,
                "the value was echoed back: {} bytes",
                m.len()
            );
        }
        // A long path that is not a slice's is refused without echoing it either.
        let path = format!("/{}/kubepods.slice", "x".repeat(1 << 20));
        let e = pod_slice_unit(&path, true).expect_err("a path");
        assert!(e.to_string().len() < 600, "{} bytes", e.to_string().len());
    }

    /// kubelet 1.37 with `cgroupDriver: systemd` sends the pod slice's cgroup path (seen
    /// in the VM lane: every RunPodSandbox was refused until this was accepted).
    #[test]
    fn kubelets_slice_paths_name_their_slice() {
        for (parent, unit) in [
            (
                "/kubepods.slice/kubepods-pod976209b0.slice",
                "kubepods-pod976209b0.slice",
            ),
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podu1.slice",
                "kubepods-burstable-podu1.slice",
            ),
            ("/kubepods.slice/", "kubepods.slice"),
            (
                "kubepods-besteffort-podu2.slice",
                "kubepods-besteffort-podu2.slice",
            ),
        ] {
            assert_eq!(slice_unit(parent).expect(parent), unit);
        }
        // A path that is not the slice's own place in the tree, or names no slice.
        for bad in [
            "/kubepods-pod1.slice",
            "/other.slice/kubepods-pod1.slice",
            "/kubepods.slice/../kubepods-pod1.slice",
            "/kubepods/pod1",
            "/",
            "/kubepods.slice/kubepods-pod1.slice/berth-x.scope",
        ] {
            let e = slice_unit(bad).expect_err(bad);
            assert!(matches!(e, SliceError::Path(_)), "{bad:?}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn the_message_names_the_fix() {
        let m = needs_systemd_message();
        assert!(m.contains("needs systemd"), "{m}");
        assert!(m.contains(SYSTEMD_RUNTIME_DIR), "{m}");
        assert!(m.contains("cgroup_driver = \"cgroupfs\""), "{m}");
    }
}
