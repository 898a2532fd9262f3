//! Cgroups v1 and v2 by plain file writes (no cgroups-rs: it drags in zbus and fails on
//! v2 device rules). A [`Cgroup`] is one container's cgroup: create it at
//! `linux.cgroupsPath`, put processes in, apply and update resources, read stats,
//! freeze/thaw, kill everything, remove.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxResources};

pub mod stats;
pub use stats::{CgroupStats, Detail, UNLIMITED, weight_to_shares};

/// Cgroup failures; each names the file or directory involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("create {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("remove {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid cgroups path {0:?}")]
    InvalidPath(String),
    #[error("{0} is not supported by this host's cgroups")]
    Unsupported(String),
    /// On cgroup v2 the device rules are an eBPF program; without it the container
    /// could open any device node it can create (and it has CAP_MKNOD by default).
    #[error(
        "the device rules could not be enforced ({0}); set allow_degraded_device_filter = true in berthd's config to run containers without them"
    )]
    Devices(#[source] crate::devices_bpf::BpfError),
}

/// The OCI annotation with which berthd lets a container run when its cgroup v2
/// device program cannot be loaded (`allow_degraded_device_filter`); any other value
/// than `"true"`, or none, fails the container instead.
pub const DEGRADED_DEVICES_ANNOTATION: &str = "io.berth.devices.allow-degraded";

/// What to do when the device rules cannot be enforced (cgroup v2: the eBPF program
/// does not load or attach, e.g. no CONFIG_CGROUP_BPF or no CAP_BPF when nested).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevicePolicy {
    /// Fail (the default).
    #[default]
    Enforce,
    /// Go on without them, logging loudly: the container can then open every
    /// device node in its /dev, and create more with CAP_MKNOD.
    AllowDegraded,
}

impl DevicePolicy {
    /// The policy a spec's annotations ask for ([`DEGRADED_DEVICES_ANNOTATION`]).
    pub fn from_annotations(a: Option<&std::collections::HashMap<String, String>>) -> Self {
        match a.and_then(|a| a.get(DEGRADED_DEVICES_ANNOTATION)) {
            Some(v) if v == "true" => Self::AllowDegraded,
            _ => Self::Enforce,
        }
    }
}

/// Which cgroup hierarchy layout the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Version {
    /// One hierarchy per controller under `<root>/<controller>`.
    V1,
    /// The unified hierarchy at `<root>`.
    V2,
}

/// v1 controllers we create directories in (those missing on the host are skipped).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "pids",
    "blkio",
    "devices",
    "hugetlb",
    "freezer",
    "net_cls",
    "net_prio",
    "perf_event",
];

/// Named v1 hierarchies we create directories in too, after the controllers'.
const V1_NAMED: &[&str] = &["systemd"];

/// v1 controllers the kernel may mount that we do not use.
const V1_UNUSED: &[&str] = &["rdma", "misc"];

/// Whether a cgroup v1 mount option names a controller (others are options such as
/// `rw`, `xattr` or `name=systemd`).
pub fn is_v1_controller(option: &str) -> bool {
    V1_CONTROLLERS.contains(&option) || V1_UNUSED.contains(&option)
}

/// Turn `linux.cgroupsPath` into a path relative to the hierarchy root. Cgroupfs paths
/// are used as given (relative ones under `/`); systemd-style `slice:prefix:name` is
/// expanded the way systemd names units (`a-b.slice` → `/a.slice/a-b.slice`).
pub fn resolve_cgroups_path(cgroups_path: &str, id: &str) -> Result<PathBuf, CgroupError> {
    if cgroups_path.is_empty() {
        return Ok(PathBuf::from("/berth").join(id));
    }
    if !cgroups_path.starts_with('/') && cgroups_path.matches(':').count() == 2 {
        let mut parts = cgroups_path.splitn(3, ':');
        let slice = parts.next().unwrap_or_default();
        let prefix = parts.next().unwrap_or_default();
        let name = parts.next().unwrap_or_default();
        if name.is_empty() || name.contains('/') || prefix.contains('/') {
            return Err(CgroupError::InvalidPath(cgroups_path.to_string()));
        }
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        let mut path = PathBuf::from("/");
        let stem = slice
            .strip_suffix(".slice")
            .ok_or_else(|| CgroupError::InvalidPath(cgroups_path.to_string()))?;
        if stem != "-" {
            let mut acc = String::new();
            for (i, part) in stem.split('-').enumerate() {
                if part.is_empty() {
                    return Err(CgroupError::InvalidPath(cgroups_path.to_string()));
                }
                if i > 0 {
                    acc.push('-');
                }
                acc.push_str(part);
                path.push(format!("{acc}.slice"));
            }
        }
        let unit = if name.ends_with(".slice") {
            name.to_string()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        path.push(unit);
        return Ok(path);
    }
    let p = Path::new(cgroups_path);
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(CgroupError::InvalidPath(cgroups_path.to_string()));
    }
    Ok(Path::new("/").join(p))
}

/// The summary of a cgroup's usage that container stats, the monitor's OOM check and
/// `berth-runtime events --stats` use: derived from the one reading,
/// [`Cgroup::read_stats`], with what is absent as 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Total CPU time in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory in use, bytes (page cache included).
    pub memory_usage: u64,
    /// Usage minus inactive file cache, as kubelet computes it.
    pub memory_working_set: u64,
    /// Number of tasks.
    pub pids: u64,
    /// Times the OOM killer killed a process of this cgroup.
    pub oom_kills: u64,
}

impl From<&CgroupStats> for Stats {
    fn from(s: &CgroupStats) -> Self {
        Stats {
            cpu_usage_ns: s.cpu.usage_ns.unwrap_or(0),
            memory_usage: s.memory.usage.unwrap_or(0),
            memory_working_set: s.memory.working_set().unwrap_or(0),
            pids: s.pids.current.unwrap_or(0),
            oom_kills: s.memory.oom_kills.unwrap_or(0),
        }
    }
}

/// One container's cgroup.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cgroup {
    /// Hierarchy layout.
    pub version: Version,
    /// Where the hierarchies are mounted (`/sys/fs/cgroup`).
    pub root: PathBuf,
    /// The cgroup's path relative to each hierarchy's root, starting with `/`.
    pub path: PathBuf,
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let res = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    res.map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

fn read_file(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let s = read_file(path)?;
    let s = s.trim();
    if s == "max" {
        return Ok(u64::MAX);
    }
    s.parse().map_err(|_| CgroupError::Read {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a number: {s:?}"),
        ),
    })
}

/// cgroup v1 `cpu.shares` → v2 `cpu.weight` (the mapping runc and crun use).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

fn device_rule(d: &LinuxDeviceCgroup) -> String {
    let typ = d
        .typ()
        .map_or_else(|| "a".to_string(), |t| t.as_str().to_string());
    let num = |n: Option<i64>| n.map_or("*".to_string(), |n| n.to_string());
    if typ == "a" && d.major().is_none() && d.minor().is_none() {
        return format!("a *:* {}", d.access().as_deref().unwrap_or("rwm"));
    }
    format!(
        "{typ} {}:{} {}",
        num(d.major()),
        num(d.minor()),
        d.access().as_deref().unwrap_or("rwm")
    )
}

impl Cgroup {
    /// The host's layout, detected at `root` (normally `/sys/fs/cgroup`).
    pub fn detect_version(root: &Path) -> Version {
        if root.join("cgroup.controllers").exists() {
            Version::V2
        } else {
            Version::V1
        }
    }

    /// The cgroup for `cgroups_path` (see [`resolve_cgroups_path`]) under `root`.
    pub fn new(root: &Path, cgroups_path: &str, id: &str) -> Result<Self, CgroupError> {
        Ok(Cgroup {
            version: Self::detect_version(root),
            root: root.to_path_buf(),
            path: resolve_cgroups_path(cgroups_path, id)?,
        })
    }

    fn rel(&self) -> &Path {
        self.path.strip_prefix("/").unwrap_or(&self.path)
    }

    /// Directories of this cgroup that exist (v1: one per mounted controller).
    fn dirs(&self) -> Vec<PathBuf> {
        match self.version {
            Version::V2 => vec![self.root.join(self.rel())],
            Version::V1 => V1_CONTROLLERS
                .iter()
                .chain(V1_NAMED)
                .map(|c| self.root.join(c))
                .filter(|d| d.is_dir() && !d.is_symlink())
                .map(|d| d.join(self.rel()))
                .collect(),
        }
    }

    /// Directory of one v1 controller, or the v2 directory.
    fn dir(&self, controller: &str) -> PathBuf {
        match self.version {
            Version::V2 => self.root.join(self.rel()),
            Version::V1 => self.root.join(controller).join(self.rel()),
        }
    }

    /// Create the cgroup (all v1 controller directories, or the v2 directory with the
    /// controllers enabled along the path).
    pub fn create(&self) -> Result<(), CgroupError> {
        match self.version {
            Version::V1 => {
                for dir in self.dirs() {
                    if dir.starts_with(self.root.join("cpuset")) {
                        self.create_cpuset_v1(&dir)?;
                    } else {
                        fs::create_dir_all(&dir).map_err(|source| CgroupError::Create {
                            path: dir.clone(),
                            source,
                        })?;
                    }
                }
            }
            Version::V2 => {
                let controllers =
                    read_file(&self.root.join("cgroup.controllers")).unwrap_or_default();
                let enable: String = controllers
                    .split_whitespace()
                    .map(|c| format!("+{c} "))
                    .collect();
                let mut cur = self.root.clone();
                for comp in self.rel().components() {
                    // Enabling fails for controllers a parent does not delegate; best effort.
                    let _ = write_file(&cur.join("cgroup.subtree_control"), enable.trim());
                    cur.push(comp);
                    if !cur.exists() {
                        fs::create_dir(&cur).map_err(|source| CgroupError::Create {
                            path: cur.clone(),
                            source,
                        })?;
                    }
                }
            }
        }
        Ok(())
    }

    /// cpuset directories start with empty cpus/mems: copy the parent's down the path.
    fn create_cpuset_v1(&self, leaf: &Path) -> Result<(), CgroupError> {
        let mut cur = self.root.join("cpuset");
        for comp in self.rel().components() {
            let parent = cur.clone();
            cur.push(comp);
            if !cur.exists() {
                fs::create_dir(&cur).map_err(|source| CgroupError::Create {
                    path: cur.clone(),
                    source,
                })?;
            }
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let mine = read_file(&cur.join(f)).unwrap_or_default();
                if mine.trim().is_empty() {
                    let theirs = read_file(&parent.join(f))?;
                    write_file(&cur.join(f), theirs.trim())?;
                }
            }
        }
        debug_assert_eq!(&cur, leaf);
        Ok(())
    }

    /// Move a process into the cgroup.
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            write_file(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Pids in the cgroup.
    pub fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        let dir = match self.version {
            Version::V2 => self.dir(""),
            Version::V1 => self
                .dirs()
                .into_iter()
                .find(|d| d.join("cgroup.procs").exists())
                .unwrap_or_else(|| self.dir("pids")),
        };
        Ok(read_file(&dir.join("cgroup.procs"))?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Apply (or update) the spec's resources; device rules that cannot be enforced
    /// are an error ([`DevicePolicy::Enforce`]).
    pub fn apply(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        self.apply_with(r, DevicePolicy::Enforce)
    }

    /// Apply (or update) the spec's resources, with `devices` saying what to do when
    /// the device rules cannot be enforced.
    pub fn apply_with(&self, r: &LinuxResources, devices: DevicePolicy) -> Result<(), CgroupError> {
        match self.version {
            Version::V1 => self.apply_v1(r),
            Version::V2 => self.apply_v2(r, devices),
        }
    }

    fn apply_v1(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        if let Some(cpu) = r.cpu() {
            let d = self.dir("cpu");
            if let Some(s) = cpu.shares().filter(|s| *s > 0) {
                write_file(&d.join("cpu.shares"), &s.to_string())?;
            }
            if let Some(p) = cpu.period().filter(|p| *p > 0) {
                write_file(&d.join("cpu.cfs_period_us"), &p.to_string())?;
            }
            if let Some(q) = cpu.quota().filter(|q| *q != 0) {
                write_file(&d.join("cpu.cfs_quota_us"), &q.max(-1).to_string())?;
            }
            if let Some(p) = cpu.realtime_period().filter(|p| *p > 0) {
                write_file(&d.join("cpu.rt_period_us"), &p.to_string())?;
            }
            if let Some(rt) = cpu.realtime_runtime().filter(|p| *p != 0) {
                write_file(&d.join("cpu.rt_runtime_us"), &rt.to_string())?;
            }
            let cs = self.dir("cpuset");
            if let Some(c) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
                write_file(&cs.join("cpuset.cpus"), c)?;
            }
            if let Some(m) = cpu.mems().as_deref().filter(|c| !c.is_empty()) {
                write_file(&cs.join("cpuset.mems"), m)?;
            }
        }
        if let Some(mem) = r.memory() {
            let d = self.dir("memory");
            let limit = mem.limit().filter(|l| *l != 0);
            let swap = mem.swap().filter(|s| *s != 0);
            let memsw = d.join("memory.memsw.limit_in_bytes");
            if let Some(l) = limit {
                let l = l.max(-1).to_string();
                match (swap, memsw.exists()) {
                    (Some(s), true) => {
                        // memsw must stay ≥ limit: raise it first if the new limit needs it.
                        let s = s.max(-1).to_string();
                        if write_file(&d.join("memory.limit_in_bytes"), &l).is_err() {
                            write_file(&memsw, &s)?;
                            write_file(&d.join("memory.limit_in_bytes"), &l)?;
                        } else {
                            write_file(&memsw, &s)?;
                        }
                    }
                    _ => write_file(&d.join("memory.limit_in_bytes"), &l)?,
                }
            } else if let (Some(s), true) = (swap, memsw.exists()) {
                write_file(&memsw, &s.max(-1).to_string())?;
            }
            if let Some(res) = mem.reservation().filter(|r| *r != 0) {
                write_file(
                    &d.join("memory.soft_limit_in_bytes"),
                    &res.max(-1).to_string(),
                )?;
            }
            if let Some(sw) = mem.swappiness().filter(|s| *s <= 100) {
                write_file(&d.join("memory.swappiness"), &sw.to_string())?;
            }
            if mem.disable_oom_killer() == Some(true) {
                write_file(&d.join("memory.oom_control"), "1")?;
            }
        }
        if let Some(p) = r.pids() {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            };
            write_file(&self.dir("pids").join("pids.max"), &v)?;
        }
        if let Some(b) = r.block_io()
            && let Some(w) = b.weight()
        {
            let d = self.dir("blkio");
            let file = ["blkio.weight", "blkio.bfq.weight"]
                .iter()
                .map(|f| d.join(f))
                .find(|f| f.exists())
                .ok_or_else(|| CgroupError::Unsupported("blkio weight".into()))?;
            write_file(&file, &w.to_string())?;
        }
        // kubelet sends a limit for every huge page size the machine has. Where the v1
        // hugetlb controller is not mounted (hybrid hosts keep it on the v2 tree only)
        // nothing can enforce them and there is no directory to write to: skipped, as
        // runc does.
        let hugetlb_mounted = self.root.join("hugetlb").is_dir();
        for h in r
            .hugepage_limits()
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .filter(|_| hugetlb_mounted)
        {
            let f = self
                .dir("hugetlb")
                .join(format!("hugetlb.{}.limit_in_bytes", h.page_size()));
            write_file(&f, &h.limit().to_string())?;
        }
        if let Some(devs) = r.devices() {
            let d = self.dir("devices");
            for rule in devs {
                let file = if rule.allow() {
                    "devices.allow"
                } else {
                    "devices.deny"
                };
                write_file(&d.join(file), &device_rule(rule))?;
            }
        }
        if let Some(id) = r.network().as_ref().and_then(|n| n.class_id()) {
            write_file(
                &self.dir("net_cls").join("net_cls.classid"),
                &id.to_string(),
            )?;
        }
        Ok(())
    }

    fn apply_v2(&self, r: &LinuxResources, policy: DevicePolicy) -> Result<(), CgroupError> {
        let d = self.dir("");
        if let Some(cpu) = r.cpu() {
            if let Some(s) = cpu.shares().filter(|s| *s > 0) {
                write_file(&d.join("cpu.weight"), &shares_to_weight(s).to_string())?;
            }
            let quota = cpu.quota().filter(|q| *q != 0);
            let period = cpu.period().filter(|p| *p > 0);
            if quota.is_some() || period.is_some() {
                let q = match quota {
                    Some(q) if q > 0 => q.to_string(),
                    _ => "max".to_string(),
                };
                let p = period.unwrap_or(100_000);
                write_file(&d.join("cpu.max"), &format!("{q} {p}"))?;
            }
            if let Some(c) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
                write_file(&d.join("cpuset.cpus"), c)?;
            }
            if let Some(m) = cpu.mems().as_deref().filter(|c| !c.is_empty()) {
                write_file(&d.join("cpuset.mems"), m)?;
            }
        }
        if let Some(mem) = r.memory() {
            let limit = mem.limit().filter(|l| *l != 0);
            if let Some(l) = limit {
                let v = if l < 0 {
                    "max".to_string()
                } else {
                    l.to_string()
                };
                write_file(&d.join("memory.max"), &v)?;
            }
            if let Some(s) = mem.swap().filter(|s| *s != 0) {
                // OCI swap is memory+swap; v2 limits swap alone.
                let v = match (s, limit) {
                    (s, _) if s < 0 => "max".to_string(),
                    (s, Some(l)) if l > 0 => (s - l).max(0).to_string(),
                    (s, _) => s.to_string(),
                };
                let f = d.join("memory.swap.max");
                if f.exists() {
                    write_file(&f, &v)?;
                }
            }
            if let Some(res) = mem.reservation().filter(|r| *r > 0) {
                write_file(&d.join("memory.low"), &res.to_string())?;
            }
        }
        if let Some(p) = r.pids() {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            };
            write_file(&d.join("pids.max"), &v)?;
        }
        if let Some(b) = r.block_io()
            && let Some(w) = b.weight()
        {
            if d.join("io.bfq.weight").exists() {
                write_file(&d.join("io.bfq.weight"), &w.to_string())?;
            } else {
                // blkio weight 10..1000 → io.weight 1..10000.
                let w = 1 + (u64::from(w).clamp(10, 1000) - 10) * 9999 / 990;
                write_file(&d.join("io.weight"), &format!("default {w}"))?;
            }
        }
        for h in r.hugepage_limits().as_deref().unwrap_or(&[]) {
            write_file(
                &d.join(format!("hugetlb.{}.max", h.page_size())),
                &h.limit().to_string(),
            )?;
        }
        // Device rules become an eBPF program on v2. Where it cannot be loaded (no
        // CONFIG_CGROUP_BPF, no CAP_BPF in a nested container) the container would
        // otherwise open any device node in its /dev or that it mknods (CAP_MKNOD is
        // in the default set): that fails the container unless the operator chose the
        // degraded mode, which is logged loudly.
        if let Some(devs) = r.devices().as_deref().filter(|d| !d.is_empty())
            && let Err(e) = self.apply_devices_v2(devs)
        {
            match policy {
                DevicePolicy::Enforce => return Err(CgroupError::Devices(e)),
                // berthd also warns at start-up that the mode is on.
                DevicePolicy::AllowDegraded => eprintln!(
                    "berth: WARNING: device rules NOT enforced for cgroup {}: {e}; the container can open any device node it can reach (allow_degraded_device_filter)",
                    self.path.display()
                ),
            }
        }
        for (k, v) in r.unified().clone().unwrap_or_default() {
            if k.contains('/') || k.contains("..") {
                return Err(CgroupError::InvalidPath(k));
            }
            write_file(&d.join(k), &v)?;
        }
        Ok(())
    }

    /// Attach the device rules as a cgroup v2 eBPF program (replacing an earlier one).
    pub fn apply_devices_v2(
        &self,
        rules: &[LinuxDeviceCgroup],
    ) -> Result<(), crate::devices_bpf::BpfError> {
        crate::devices_bpf::attach(&self.dir(""), &crate::devices_bpf::compile(rules))
    }

    /// What this cgroup's files say (all of them, or only those of [`Stats`]), each
    /// field `None` where its file is absent or unread: the one reading every stat and
    /// metric derives from.
    pub fn read_stats(&self, detail: Detail) -> CgroupStats {
        stats::Files {
            detail,
            version: self.version,
            root: &self.root,
            rel: self.rel(),
        }
        .read()
    }

    /// Current usage (see [`Stats`]). On v1 a cgroup without a memory usage file is
    /// an error naming it.
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        let s = self.read_stats(Detail::Usage);
        if self.version == Version::V1 && s.memory.usage.is_none() {
            // Say why, as reading it did.
            read_u64(&self.dir("memory").join("memory.usage_in_bytes"))?;
        }
        Ok(Stats::from(&s))
    }

    /// Freeze (`true`) or thaw (`false`) every process.
    pub fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        match self.version {
            Version::V1 => write_file(
                &self.dir("freezer").join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
            ),
            Version::V2 => write_file(
                &self.dir("").join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
            ),
        }
    }

    /// Send `signal` to every process in the cgroup (frozen meanwhile, so none escapes
    /// by forking).
    pub fn kill_all(&self, signal: i32) -> Result<(), CgroupError> {
        if self.version == Version::V2
            && signal == libc::SIGKILL
            && self.dir("").join("cgroup.kill").exists()
        {
            return write_file(&self.dir("").join("cgroup.kill"), "1");
        }
        let frozen = self.set_frozen(true).is_ok();
        for pid in self.procs()? {
            // SAFETY: kill(2) with a pid read from cgroup.procs; a stale pid gets ESRCH.
            unsafe { libc::kill(pid, signal) };
        }
        if frozen {
            self.set_frozen(false)?;
        }
        Ok(())
    }

    /// Remove the cgroup's directories (waits briefly for exiting tasks).
    pub fn remove(&self) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            if !dir.exists() {
                continue;
            }
            let mut attempt = 0;
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if attempt < 50 && e.raw_os_error() == Some(libc::EBUSY) => {
                        attempt += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(source) => return Err(CgroupError::Remove { path: dir, source }),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn systemd_paths_expand_like_systemd_units() {
        assert_eq!(
            resolve_cgroups_path("kubepods-besteffort.slice:cri-berth:abc", "x").unwrap(),
            PathBuf::from("/kubepods.slice/kubepods-besteffort.slice/cri-berth-abc.scope")
        );
        assert_eq!(
            resolve_cgroups_path(":berth:abc", "x").unwrap(),
            PathBuf::from("/system.slice/berth-abc.scope")
        );
        assert_eq!(
            resolve_cgroups_path("/kubepods/pod1/c1", "x").unwrap(),
            PathBuf::from("/kubepods/pod1/c1")
        );
        assert_eq!(
            resolve_cgroups_path("", "id1").unwrap(),
            PathBuf::from("/berth/id1")
        );
        assert!(resolve_cgroups_path("/a/../../etc", "x").is_err());
        assert!(resolve_cgroups_path("bad-.slice:p:n", "x").is_err());
    }

    /// A fake v2 tree: the files a real cgroup2 directory would have.
    fn fake_v2(root: &Path, rel: &str) {
        fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids",
        )
        .unwrap();
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        let d = root.join(rel);
        fs::create_dir_all(&d).unwrap();
        for f in [
            "cgroup.procs",
            "cgroup.subtree_control",
            "cpu.weight",
            "cpu.max",
            "cpuset.cpus",
            "cpuset.mems",
            "memory.max",
            "memory.swap.max",
            "memory.low",
            "pids.max",
            "io.weight",
            "hugetlb.2MB.max",
            "cgroup.freeze",
        ] {
            fs::write(d.join(f), "").unwrap();
        }
        fs::write(d.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        fs::write(d.join("memory.current"), "1000000\n").unwrap();
        fs::write(d.join("memory.stat"), "anon 10\ninactive_file 250000\n").unwrap();
        fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        fs::write(d.join("pids.current"), "7\n").unwrap();
    }

    /// On the fake v2 tree (a plain directory, where no device program can be
    /// attached, as on a host without CONFIG_CGROUP_BPF) device rules that cannot be
    /// enforced fail the container, unless the degraded mode was chosen. The error
    /// used to be discarded while CAP_MKNOD stayed granted.
    #[test]
    fn v2_device_rules_that_cannot_be_enforced_fail_the_container() {
        let tmp = tempfile::tempdir().unwrap();
        fake_v2(tmp.path(), "berth/c2");
        let cg = Cgroup::new(tmp.path(), "/berth/c2", "c2").unwrap();
        cg.create().unwrap();
        let rules = res(
            r#"{"devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]}"#,
        );
        let err = cg.apply(&rules).unwrap_err();
        assert!(matches!(err, CgroupError::Devices(_)), "{err:?}");
        assert!(
            err.to_string().contains("allow_degraded_device_filter"),
            "{err}"
        );
        cg.apply_with(&rules, DevicePolicy::AllowDegraded)
            .expect("the operator chose to run without device rules");
        // No device rules, nothing to enforce.
        cg.apply(&res(r#"{"pids": {"limit": 3}}"#)).unwrap();
        let mut annotations = std::collections::HashMap::new();
        assert_eq!(
            DevicePolicy::from_annotations(Some(&annotations)),
            DevicePolicy::Enforce
        );
        annotations.insert(DEGRADED_DEVICES_ANNOTATION.to_owned(), "true".to_owned());
        assert_eq!(
            DevicePolicy::from_annotations(Some(&annotations)),
            DevicePolicy::AllowDegraded
        );
    }

    #[test]
    fn v2_resources_are_written_in_v2_units() {
        let tmp = tempfile::tempdir().unwrap();
        fake_v2(tmp.path(), "berth/c1");
        let cg = Cgroup::new(tmp.path(), "/berth/c1", "c1").unwrap();
        assert_eq!(cg.version, Version::V2);
        cg.create().unwrap();
        cg.apply_with(&res(r#"{
            "cpu": {"shares": 1024, "quota": 5000, "period": 100000, "cpus": "0-1"},
            "memory": {"limit": 104857600, "swap": 209715200, "reservation": 1048576},
            "pids": {"limit": 20},
            "blockIO": {"weight": 500},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
            "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]
        }"#), DevicePolicy::AllowDegraded).unwrap();
        let d = tmp.path().join("berth/c1");
        let rd = |f: &str| fs::read_to_string(d.join(f)).unwrap();
        assert_eq!(rd("cpu.weight"), "39");
        assert_eq!(rd("cpu.max"), "5000 100000");
        assert_eq!(rd("cpuset.cpus"), "0-1");
        assert_eq!(rd("memory.max"), "104857600");
        assert_eq!(rd("memory.swap.max"), "104857600");
        assert_eq!(rd("memory.low"), "1048576");
        assert_eq!(rd("pids.max"), "20");
        assert_eq!(rd("io.weight"), "default 4950");
        assert_eq!(rd("hugetlb.2MB.max"), "4194304");
        // Controllers were enabled for the children of the root.
        assert_eq!(
            fs::read_to_string(tmp.path().join("cgroup.subtree_control")).unwrap(),
            "+cpuset +cpu +io +memory +hugetlb +pids"
        );
        let st = cg.stats().unwrap();
        assert_eq!(
            st,
            Stats {
                cpu_usage_ns: 1_500_000,
                memory_usage: 1_000_000,
                memory_working_set: 750_000,
                pids: 7,
                oom_kills: 1
            }
        );
        cg.set_frozen(true).unwrap();
        assert_eq!(rd("cgroup.freeze"), "1");
        // Live update: unlimited quota.
        cg.apply(&res(
            r#"{"cpu": {"quota": -1, "period": 100000}, "pids": {"limit": 0}}"#,
        ))
        .unwrap();
        assert_eq!(rd("cpu.max"), "max 100000");
        assert_eq!(rd("pids.max"), "max");
    }

    #[test]
    fn v2_missing_interface_file_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        fake_v2(tmp.path(), "c2");
        fs::remove_file(tmp.path().join("c2/pids.max")).unwrap();
        let cg = Cgroup::new(tmp.path(), "c2", "c2").unwrap();
        let err = cg.apply(&res(r#"{"pids": {"limit": 5}}"#)).unwrap_err();
        assert!(err.to_string().contains("pids.max"), "{err}");
    }

    #[test]
    fn v1_hugepage_limits_are_skipped_only_where_hugetlb_is_not_mounted() {
        let limits = r#"{"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]}"#;
        // A hybrid host: no v1 hugetlb hierarchy, as kubelet meets it on this machine.
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("memory/x")).unwrap();
        let cg = Cgroup::new(tmp.path(), "/x", "x").unwrap();
        assert_eq!(cg.version, Version::V1);
        cg.apply(&res(limits)).unwrap();
        assert!(!tmp.path().join("hugetlb").exists());
        // Mounted: the limit is written, and a missing file is still an error.
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("hugetlb/x");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("hugetlb.2MB.limit_in_bytes"), "").unwrap();
        let cg = Cgroup::new(tmp.path(), "/x", "x").unwrap();
        cg.apply(&res(limits)).unwrap();
        assert_eq!(
            fs::read_to_string(d.join("hugetlb.2MB.limit_in_bytes")).unwrap(),
            "0"
        );
        fs::remove_file(d.join("hugetlb.2MB.limit_in_bytes")).unwrap();
        assert!(cg.apply(&res(limits)).is_err());
    }

    #[test]
    fn v1_device_rules_and_memory_go_to_their_controllers() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for c in ["memory", "devices", "cpu", "pids"] {
            let d = root.join(c).join("x");
            fs::create_dir_all(&d).unwrap();
            for f in [
                "memory.limit_in_bytes",
                "memory.memsw.limit_in_bytes",
                "devices.allow",
                "devices.deny",
                "cpu.shares",
                "cpu.cfs_quota_us",
                "cpu.cfs_period_us",
                "pids.max",
            ] {
                fs::write(d.join(f), "").unwrap();
            }
        }
        let cg = Cgroup::new(root, "/x", "x").unwrap();
        assert_eq!(cg.version, Version::V1);
        cg.apply(&res(r#"{
            "memory": {"limit": 1000, "swap": 2000},
            "cpu": {"shares": 512, "quota": 5000, "period": 100000},
            "pids": {"limit": 10},
            "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 5, "access": "rw"}]
        }"#)).unwrap();
        let rd = |c: &str, f: &str| fs::read_to_string(root.join(c).join("x").join(f)).unwrap();
        assert_eq!(rd("memory", "memory.limit_in_bytes"), "1000");
        assert_eq!(rd("memory", "memory.memsw.limit_in_bytes"), "2000");
        assert_eq!(rd("cpu", "cpu.cfs_quota_us"), "5000");
        assert_eq!(rd("cpu", "cpu.shares"), "512");
        assert_eq!(rd("pids", "pids.max"), "10");
        assert_eq!(rd("devices", "devices.deny"), "a *:* rwm");
        assert_eq!(rd("devices", "devices.allow"), "c 5:* rw");
    }

    #[test]
    fn weight_mapping_matches_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
    }
}
