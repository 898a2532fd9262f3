//! `berthd check`: a preflight that tells an operator, one line per item, whether this
//! host can run Berth with the given configuration, and what to do about each problem.
//!
//! Every check yields a [`Finding`]: `ok`, `warn` (Berth runs, but something will not
//! work or needs attention) or `FAIL` (berthd cannot start or cannot run pods). The
//! decisions are made by small pure functions over the text the kernel exposes
//! (`/proc/self/mountinfo`, `/proc/filesystems`, `uname -r`), so they are unit-tested
//! with fixed inputs; only the gathering touches the host.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use berth_runtime_core::cgroups::is_v1_controller;

use crate::config::{CgroupDriver, Config};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Fine.
    Ok,
    /// Berth runs, but something will not work or deserves attention.
    Warn,
    /// Something essential is missing: berthd cannot start or cannot run pods.
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        })
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked (`kernel`, `cgroups`, `cni`, ...).
    pub name: &'static str,
    /// The outcome.
    pub level: Level,
    /// What was found.
    pub message: String,
    /// What to do about it (empty when nothing needs doing).
    pub fix: String,
}

impl Finding {
    fn ok(name: &'static str, message: impl Into<String>) -> Self {
        Self {
            name,
            level: Level::Ok,
            message: message.into(),
            fix: String::new(),
        }
    }

    fn warn(name: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            level: Level::Warn,
            message: message.into(),
            fix: fix.into(),
        }
    }

    fn fail(name: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            level: Level::Fail,
            message: message.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<4}  {:<16} {}", self.level, self.name, self.message)?;
        if !self.fix.is_empty() {
            write!(f, " -> {}", self.fix)?;
        }
        Ok(())
    }
}

/// Runs every check against this host and `config`.
pub fn run(config: &Config) -> Vec<Finding> {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let version = kernel_version(&release);
    let mut findings = vec![kernel(&release), root(rustix::process::geteuid().is_root())];
    findings.extend(namespaces(|ns| {
        Path::new("/proc/self/ns").join(ns).exists()
    }));
    findings.push(user_namespaces(
        fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .ok()
            .and_then(|s| s.trim().parse().ok()),
    ));
    findings.push(overlayfs(
        &fs::read_to_string("/proc/filesystems").unwrap_or_default(),
    ));
    findings.push(idmapped_mounts(version, mount_setattr_exists()));
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let layout = cgroup_layout(&mountinfo, |p| fs::read_to_string(p).ok());
    findings.push(cgroups(&layout));
    findings.push(cgroup_driver(
        config.cgroup_driver,
        Path::new("/run/systemd/system").is_dir(),
    ));
    findings.push(seccomp(
        &fs::read_to_string("/proc/self/status").unwrap_or_default(),
    ));
    findings.push(apparmor(&crate::container::apparmor::Host::detect()));
    findings.push(cni(config));
    findings.push(helpers(std::env::current_exe().ok().as_deref()));
    findings.push(dir_writable("root_dir", &config.root_dir));
    findings.push(dir_writable("state_dir", &config.state_dir));
    findings.push(socket(&config.grpc.socket));
    findings.push(instance_lock(&config.state_dir));
    findings
}

/// Whether any finding is a failure (`berthd check` then exits non-zero).
pub fn failed(findings: &[Finding]) -> usize {
    findings.iter().filter(|f| f.level == Level::Fail).count()
}

/// `major.minor` of a kernel release string such as `6.1.0-18-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor_digits: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor_digits.parse().ok()?))
}

/// Oldest kernel Berth supports (overlayfs in user namespaces aside: pidfds, clone3,
/// cgroup and namespace features it relies on).
const MIN_KERNEL: (u32, u32) = (5, 4);
/// Kernel with `mount_setattr(2)` (idmapped mounts).
const IDMAP_KERNEL: (u32, u32) = (5, 12);
/// Kernel whose overlayfs takes idmapped lower layers the way berthd gives them to a
/// user-namespaced pod's rootfs: as detached mounts, by fd (layers by fd came in
/// 6.13, detached mounts as layers in 6.15; idmapped layers as such in 5.19).
const IDMAP_OVERLAY_KERNEL: (u32, u32) = (6, 15);

fn kernel(release: &str) -> Finding {
    match kernel_version(release) {
        None => Finding::warn(
            "kernel",
            format!("cannot parse the kernel release {release:?}"),
            format!(
                "make sure the kernel is at least {}.{}",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        ),
        Some(v) if v < MIN_KERNEL => Finding::fail(
            "kernel",
            format!(
                "Linux {release} is older than {}.{}",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
            format!(
                "upgrade the kernel to {}.{} or newer",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        ),
        Some(_) => Finding::ok("kernel", format!("Linux {release}")),
    }
}

fn root(is_root: bool) -> Finding {
    if is_root {
        Finding::ok("root", "running as root")
    } else {
        Finding::fail(
            "root",
            "not running as root",
            "run berthd as root: it creates namespaces, mounts and cgroups",
        )
    }
}

/// Namespace kinds by their `/proc/self/ns` name, and whether pods cannot run without.
const NAMESPACES: &[(&str, bool)] = &[
    ("mnt", true),
    ("pid", true),
    ("net", true),
    ("ipc", true),
    ("uts", true),
    ("user", false),
    ("cgroup", false),
];

fn namespaces(exists: impl Fn(&str) -> bool) -> Vec<Finding> {
    let missing: Vec<(&str, bool)> = NAMESPACES
        .iter()
        .copied()
        .filter(|(ns, _)| !exists(ns))
        .collect();
    let names = |essential: bool| {
        missing
            .iter()
            .filter(|(_, e)| *e == essential)
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
    };
    let (hard, soft) = (names(true), names(false));
    if !hard.is_empty() {
        return vec![Finding::fail(
            "namespaces",
            format!("the kernel lacks {} namespaces", hard.join(", ")),
            "use a kernel built with CONFIG_NAMESPACES and the UTS/IPC/PID/NET namespaces",
        )];
    }
    if !soft.is_empty() {
        return vec![Finding::warn(
            "namespaces",
            format!(
                "the kernel lacks {} namespaces; pods that ask for them fail",
                soft.join(", ")
            ),
            "enable CONFIG_USER_NS / CONFIG_CGROUPS namespaces in the kernel",
        )];
    }
    let all: Vec<&str> = NAMESPACES.iter().map(|(n, _)| *n).collect();
    vec![Finding::ok("namespaces", all.join(", "))]
}

fn user_namespaces(max: Option<u64>) -> Finding {
    match max {
        Some(0) => Finding::warn(
            "user namespaces",
            "user.max_user_namespaces is 0: pods with user namespaces (hostUsers: false) fail",
            "sysctl -w user.max_user_namespaces=15000",
        ),
        Some(n) => Finding::ok("user namespaces", format!("up to {n} allowed")),
        None => Finding::warn(
            "user namespaces",
            "/proc/sys/user/max_user_namespaces is unreadable",
            "check that the kernel has CONFIG_USER_NS",
        ),
    }
}

/// Whether `/proc/filesystems` lists `fs`.
pub fn has_filesystem(filesystems: &str, fs: &str) -> bool {
    filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some(fs))
}

fn overlayfs(filesystems: &str) -> Finding {
    if has_filesystem(filesystems, "overlay") {
        Finding::ok("overlayfs", "supported")
    } else {
        Finding::fail(
            "overlayfs",
            "the kernel does not list overlay in /proc/filesystems; containers cannot get a root filesystem",
            "modprobe overlay (and add it to /etc/modules)",
        )
    }
}

/// Whether `mount_setattr(2)` exists: called with an invalid fd it fails with EBADF
/// (or EINVAL), and only a kernel without it answers ENOSYS.
fn mount_setattr_exists() -> bool {
    // SAFETY: the syscall gets an invalid fd, a null path and a null attribute struct
    // of size 0; the kernel validates them and returns an error without touching
    // memory of this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            std::ptr::null::<libc::c_char>(),
            0,
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    !(r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
}

fn idmapped_mounts(version: Option<(u32, u32)>, syscall: bool) -> Finding {
    if !syscall || version.is_some_and(|v| v < IDMAP_KERNEL) {
        return Finding::warn(
            "idmapped mounts",
            "mount_setattr(2) is missing: containers of pods with user namespaces are refused (no idmapped rootfs or volumes)",
            format!(
                "upgrade the kernel to {}.{} or newer ({}.{} for overlayfs)",
                IDMAP_KERNEL.0, IDMAP_KERNEL.1, IDMAP_OVERLAY_KERNEL.0, IDMAP_OVERLAY_KERNEL.1
            ),
        );
    }
    if version.is_some_and(|v| v < IDMAP_OVERLAY_KERNEL) {
        return Finding::warn(
            "idmapped mounts",
            "supported, but user-namespaced pods need overlayfs on idmapped layers by fd (a newer kernel): their containers are refused",
            format!(
                "upgrade the kernel to {}.{} for user-namespaced pods",
                IDMAP_OVERLAY_KERNEL.0, IDMAP_OVERLAY_KERNEL.1
            ),
        );
    }
    Finding::ok("idmapped mounts", "supported (mount_setattr)")
}

/// The host's cgroup hierarchies, as far as Berth cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// cgroup v2 mounted at `/sys/fs/cgroup` with these controllers available.
    V2(BTreeSet<String>),
    /// v1 hierarchies under `/sys/fs/cgroup` carrying these controllers (a cgroup2
    /// mount elsewhere, as in hybrid setups, is noted but not used for limits).
    V1 {
        /// Controllers mounted as v1 hierarchies.
        controllers: BTreeSet<String>,
        /// Whether a cgroup2 hierarchy is mounted too (hybrid).
        hybrid: bool,
    },
    /// No cgroup filesystem under `/sys/fs/cgroup`.
    None,
}

/// Reads the layout from `/proc/self/mountinfo` text; `read` reads a file (the v2
/// `cgroup.controllers`).
pub fn cgroup_layout(mountinfo: &str, read: impl Fn(&Path) -> Option<String>) -> CgroupLayout {
    let mut v1 = BTreeSet::new();
    let mut hybrid = false;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mountpoint), Some(fstype), Some(options)) =
            (fields.get(4), fields.get(sep + 1), fields.get(sep + 3))
        else {
            continue;
        };
        if !mountpoint.starts_with("/sys/fs/cgroup") {
            continue;
        }
        match *fstype {
            "cgroup2" if *mountpoint == "/sys/fs/cgroup" => {
                let controllers = read(&Path::new(mountpoint).join("cgroup.controllers"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                return CgroupLayout::V2(controllers);
            }
            "cgroup2" => hybrid = true,
            "cgroup" => v1.extend(
                options
                    .split(',')
                    .filter(|o| is_v1_controller(o))
                    .map(str::to_owned),
            ),
            _ => {}
        }
    }
    if v1.is_empty() {
        CgroupLayout::None
    } else {
        CgroupLayout::V1 {
            controllers: v1,
            hybrid,
        }
    }
}

/// Controllers without which resource limits or stats break, per version.
const V1_REQUIRED: &[&str] = &["cpu", "cpuacct", "memory", "pids"];
const V1_WANTED: &[&str] = &["cpuset", "devices", "blkio", "freezer", "hugetlb"];
const V2_REQUIRED: &[&str] = &["cpu", "memory", "pids"];
const V2_WANTED: &[&str] = &["cpuset", "io", "hugetlb"];

fn cgroups(layout: &CgroupLayout) -> Finding {
    let (version, controllers, required, wanted, note) = match layout {
        CgroupLayout::None => {
            return Finding::fail(
                "cgroups",
                "no cgroup filesystem is mounted under /sys/fs/cgroup",
                "mount cgroup2 on /sys/fs/cgroup (or the v1 hierarchies below it)",
            );
        }
        CgroupLayout::V2(c) => ("v2", c, V2_REQUIRED, V2_WANTED, ""),
        CgroupLayout::V1 {
            controllers,
            hybrid,
        } => (
            "v1",
            controllers,
            V1_REQUIRED,
            V1_WANTED,
            if *hybrid {
                " (hybrid: a cgroup2 tree is mounted too, unused for limits)"
            } else {
                ""
            },
        ),
    };
    let missing = |list: &[&str]| -> Vec<String> {
        list.iter()
            .filter(|c| !controllers.contains(**c))
            .map(|c| (*c).to_owned())
            .collect()
    };
    let have = controllers.iter().cloned().collect::<Vec<_>>().join(",");
    let fix = if version == "v2" {
        "enable them in /sys/fs/cgroup/cgroup.subtree_control (or boot with cgroup_enable=...)"
    } else {
        "mount the missing v1 hierarchies under /sys/fs/cgroup (or boot with cgroup_enable=...)"
    };
    let hard = missing(required);
    if !hard.is_empty() {
        return Finding::fail(
            "cgroups",
            format!(
                "cgroup {version}{note}: controllers {} are missing (have {have})",
                hard.join(", ")
            ),
            fix,
        );
    }
    let soft = missing(wanted);
    if !soft.is_empty() {
        return Finding::warn(
            "cgroups",
            format!(
                "cgroup {version}{note}: {have}; without {} the matching limits are ignored",
                soft.join(", ")
            ),
            fix,
        );
    }
    Finding::ok("cgroups", format!("cgroup {version}{note}: {have}"))
}

fn cgroup_driver(driver: CgroupDriver, systemd_running: bool) -> Finding {
    match (driver, systemd_running) {
        (CgroupDriver::Cgroupfs, _) => Finding::ok(
            "cgroup driver",
            "cgroupfs (kubelet must run with --cgroup-driver=cgroupfs)",
        ),
        (CgroupDriver::Systemd, true) => Finding::ok(
            "cgroup driver",
            "systemd (kubelet must run with --cgroup-driver=systemd)",
        ),
        (CgroupDriver::Systemd, false) => Finding::fail(
            "cgroup driver",
            "cgroup_driver = \"systemd\" but systemd is not running on this host",
            "set cgroup_driver = \"cgroupfs\" in the config and --cgroup-driver=cgroupfs for kubelet",
        ),
    }
}

fn seccomp(proc_status: &str) -> Finding {
    if proc_status.lines().any(|l| l.starts_with("Seccomp:")) {
        Finding::ok("seccomp", "supported")
    } else {
        Finding::warn(
            "seccomp",
            "the kernel has no seccomp: pods asking for a seccomp profile (RuntimeDefault, Localhost) fail",
            "use a kernel built with CONFIG_SECCOMP_FILTER",
        )
    }
}

fn apparmor(host: &crate::container::apparmor::Host) -> Finding {
    use crate::container::apparmor::{DEFAULT_PROFILE, Host};
    match host {
        Host::Disabled(why) => Finding::ok(
            "apparmor",
            format!(
                "not enabled ({why}): containers run without AppArmor; pods asking for a RuntimeDefault or Localhost AppArmor profile are refused (FailedPrecondition), as containerd does"
            ),
        ),
        Host::Enabled { parser: Some(p) } => Finding::ok(
            "apparmor",
            format!(
                "enabled: containers get {DEFAULT_PROFILE} by default, loaded with {}",
                p.display()
            ),
        ),
        Host::Enabled { parser: None } => Finding::warn(
            "apparmor",
            format!(
                "enabled, but apparmor_parser is not installed: {DEFAULT_PROFILE} cannot be loaded, so containers wanting the default profile fail"
            ),
            "install the apparmor package (apt-get install apparmor)",
        ),
    }
}

fn cni(config: &Config) -> Finding {
    match crate::cni::check_ready(&config.cni, &[]) {
        Ok(net) if net.plugin_types.is_empty() => Finding::ok(
            "cni",
            format!(
                "network {:?} from {}, no plugins needed",
                net.name, net.source
            ),
        ),
        Ok(net) => Finding::ok(
            "cni",
            format!(
                "network {:?} from {}, plugins {} found",
                net.name,
                net.source,
                net.plugin_types.join(", ")
            ),
        ),
        Err(e @ crate::cni::NotReady::NoConfig { .. }) => Finding::fail(
            "cni",
            e.to_string(),
            format!(
                "put a .conflist in {} or set cni.builtin_default = true",
                config.cni.conf_dir.display()
            ),
        ),
        Err(e @ crate::cni::NotReady::MissingPlugin { .. }) => Finding::fail(
            "cni",
            e.to_string(),
            "apt-get install containernetworking-plugins, or point cni.plugin_dirs at the plugins",
        ),
    }
}

fn helpers(berthd: Option<&Path>) -> Finding {
    let Some(dir) = berthd.and_then(Path::parent) else {
        return Finding::fail(
            "helpers",
            "cannot locate the berthd binary",
            "run berthd from its installed path",
        );
    };
    let missing: Vec<&str> = ["berth-monitor", "berth-runtime"]
        .into_iter()
        .filter(|n| !dir.join(n).is_file())
        .collect();
    if missing.is_empty() {
        Finding::ok(
            "helpers",
            format!("berth-monitor and berth-runtime in {}", dir.display()),
        )
    } else {
        Finding::fail(
            "helpers",
            format!("{} not found in {}", missing.join(" and "), dir.display()),
            "install them in the same directory as berthd",
        )
    }
}

/// Whether `dir` is (or can be created as) a writable directory. An existing one gets
/// a file created and removed in it; otherwise its nearest existing ancestor must be
/// a writable directory.
fn dir_writable(name: &'static str, dir: &Path) -> Finding {
    match fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Finding::fail(
            name,
            format!("{} exists and is not a directory", dir.display()),
            format!("remove it or point {name} elsewhere"),
        ),
        Ok(_) => {
            let probe = dir.join(".berthd-check-probe");
            match fs::File::create(&probe).and_then(|_| fs::remove_file(&probe)) {
                Ok(()) => Finding::ok(name, format!("{} is writable", dir.display())),
                Err(e) => Finding::fail(
                    name,
                    format!("{} is not writable: {e}", dir.display()),
                    format!("make it writable by root or point {name} elsewhere"),
                ),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let ancestor = nearest_existing(dir);
            match rustix::fs::access(&ancestor, rustix::fs::Access::WRITE_OK) {
                Ok(()) if ancestor.is_dir() => Finding::ok(
                    name,
                    format!(
                        "{} will be created (in {})",
                        dir.display(),
                        ancestor.display()
                    ),
                ),
                Ok(()) => Finding::fail(
                    name,
                    format!("{} is not a directory", ancestor.display()),
                    format!("point {name} elsewhere"),
                ),
                Err(e) => Finding::fail(
                    name,
                    format!(
                        "{} cannot be created: {} is not writable ({e})",
                        dir.display(),
                        ancestor.display()
                    ),
                    format!("create it as root or point {name} elsewhere"),
                ),
            }
        }
        Err(e) => Finding::fail(
            name,
            format!("cannot inspect {}: {e}", dir.display()),
            format!("fix the permissions or point {name} elsewhere"),
        ),
    }
}

fn nearest_existing(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

fn socket(path: &Path) -> Finding {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                Finding::warn(
                    "socket",
                    format!(
                        "a server is listening on {} (berthd already running?)",
                        path.display()
                    ),
                    "stop it before starting another berthd on this socket",
                )
            } else {
                Finding::ok(
                    "socket",
                    format!("{} is stale and will be replaced", path.display()),
                )
            }
        }
        Ok(_) => Finding::fail(
            "socket",
            format!("{} exists and is not a socket", path.display()),
            "remove it or set grpc.socket elsewhere",
        ),
        Err(_) => {
            let Some(parent) = path.parent() else {
                return Finding::fail(
                    "socket",
                    format!("{} has no directory", path.display()),
                    "set grpc.socket to an absolute path",
                );
            };
            let found = dir_writable("socket", parent);
            match found.level {
                Level::Ok => Finding::ok(
                    "socket",
                    format!("{} can be created; {}", path.display(), found.message),
                ),
                _ => Finding {
                    fix: "make the directory writable or set grpc.socket elsewhere".into(),
                    ..found
                },
            }
        }
    }
}

/// Whether a running berthd holds the single-instance lock of `state_dir`.
fn instance_lock(state_dir: &Path) -> Finding {
    let path = state_dir.join("berthd.lock");
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Finding::ok("lock", "no berthd is running on this state_dir");
        }
        Err(e) => {
            return Finding::warn(
                "lock",
                format!("cannot open {}: {e}", path.display()),
                "run berthd check as root",
            );
        }
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
        // Released when `file` closes at the end of this function.
        Ok(()) => Finding::ok("lock", "no berthd is running on this state_dir"),
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let pid = fs::read_to_string(&path).unwrap_or_default();
            let pid = pid.trim();
            Finding::warn(
                "lock",
                format!(
                    "berthd{} is running on state_dir {}; a second one will not start",
                    if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                    state_dir.display()
                ),
                "stop it first, or give the new one another state_dir",
            )
        }
        Err(e) => Finding::warn(
            "lock",
            format!("cannot test the lock {}: {e}", path.display()),
            "check the state_dir's filesystem supports flock",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse_and_old_ones_fail() {
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(kernel_version("5.15.0+"), Some((5, 15)));
        assert_eq!(kernel_version("4.19rc1"), Some((4, 19)));
        assert_eq!(kernel_version("garbage"), None);
        assert_eq!(kernel("6.1.0").level, Level::Ok);
        let old = kernel("3.10.0-1160.el7.x86_64");
        assert_eq!(old.level, Level::Fail);
        assert!(old.fix.contains("upgrade"), "{old}");
        assert_eq!(kernel("weird").level, Level::Warn);
    }

    #[test]
    fn missing_namespaces_are_named_and_graded() {
        assert_eq!(namespaces(|_| true)[0].level, Level::Ok);
        let no_user = &namespaces(|ns| ns != "user")[0];
        assert_eq!(no_user.level, Level::Warn);
        assert!(no_user.message.contains("user"), "{no_user}");
        let no_net = &namespaces(|ns| ns != "net" && ns != "user")[0];
        assert_eq!(no_net.level, Level::Fail);
        assert!(no_net.message.contains("net"), "{no_net}");
        assert!(
            !no_net.message.contains("user"),
            "only essentials: {no_net}"
        );
    }

    #[test]
    fn overlay_is_found_in_proc_filesystems() {
        let text = "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\toverlay\n";
        assert!(has_filesystem(text, "overlay"));
        assert!(has_filesystem(text, "ext4"));
        assert!(!has_filesystem("nodev\toverlayx\n", "overlay"));
        assert_eq!(overlayfs("nodev\tsysfs\n").level, Level::Fail);
    }

    #[test]
    fn idmapped_mounts_depend_on_syscall_and_kernel() {
        assert_eq!(idmapped_mounts(Some((6, 15)), true).level, Level::Ok);
        assert_eq!(idmapped_mounts(Some((6, 18)), true).level, Level::Ok);
        assert_eq!(idmapped_mounts(Some((6, 14)), true).level, Level::Warn);
        assert_eq!(idmapped_mounts(Some((5, 15)), true).level, Level::Warn);
        assert_eq!(idmapped_mounts(Some((6, 1)), false).level, Level::Warn);
        assert_eq!(idmapped_mounts(Some((5, 4)), true).level, Level::Warn);
    }

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_hierarchies_and_hybrid_are_recognised() {
        let layout = cgroup_layout(HYBRID, |_| None);
        let CgroupLayout::V1 {
            controllers,
            hybrid,
        } = &layout
        else {
            panic!("{layout:?}");
        };
        assert!(*hybrid);
        assert_eq!(
            controllers.iter().map(String::as_str).collect::<Vec<_>>(),
            ["cpu", "cpuacct", "memory", "pids"]
        );
        let f = cgroups(&layout);
        assert_eq!(f.level, Level::Warn, "{f}");
        assert!(f.message.contains("cpuset"), "{f}");
        let no_memory = HYBRID.replace("rw,memory", "rw,nothing_here");
        let f = cgroups(&cgroup_layout(&no_memory, |_| None));
        assert_eq!(f.level, Level::Fail, "{f}");
        assert!(f.message.contains("memory"), "{f}");
    }

    #[test]
    fn v2_controllers_come_from_the_root_cgroup() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let read = |p: &Path| {
            assert_eq!(p, Path::new("/sys/fs/cgroup/cgroup.controllers"));
            Some("cpuset cpu io memory hugetlb pids rdma misc\n".to_owned())
        };
        let layout = cgroup_layout(mountinfo, read);
        assert!(matches!(&layout, CgroupLayout::V2(c) if c.contains("memory")));
        assert_eq!(cgroups(&layout).level, Level::Ok);
        let f = cgroups(&cgroup_layout(mountinfo, |_| Some("cpu io".into())));
        assert_eq!(f.level, Level::Fail);
        assert!(
            f.message.contains("memory") && f.message.contains("pids"),
            "{f}"
        );
        assert_eq!(cgroups(&cgroup_layout("", |_| None)).level, Level::Fail);
    }

    #[test]
    fn systemd_driver_without_systemd_fails() {
        assert_eq!(
            cgroup_driver(CgroupDriver::Systemd, false).level,
            Level::Fail
        );
        assert_eq!(cgroup_driver(CgroupDriver::Systemd, true).level, Level::Ok);
        assert_eq!(
            cgroup_driver(CgroupDriver::Cgroupfs, false).level,
            Level::Ok
        );
    }

    #[test]
    fn dirs_are_probed_and_files_in_the_way_fail() {
        let d = tempfile::tempdir().expect("tempdir");
        assert_eq!(dir_writable("root_dir", d.path()).level, Level::Ok);
        let later = dir_writable("root_dir", &d.path().join("a/b"));
        assert_eq!(later.level, Level::Ok);
        assert!(later.message.contains("will be created"), "{later}");
        let file = d.path().join("f");
        fs::write(&file, "x").expect("write");
        assert_eq!(dir_writable("root_dir", &file).level, Level::Fail);
        assert_eq!(
            dir_writable("root_dir", &file.join("sub")).level,
            Level::Fail
        );
        assert_eq!(socket(&file).level, Level::Fail);
        assert_eq!(socket(&d.path().join("s.sock")).level, Level::Ok);
    }

    #[test]
    fn a_held_lock_is_reported_with_its_pid() {
        let d = tempfile::tempdir().expect("tempdir");
        assert_eq!(instance_lock(d.path()).level, Level::Ok);
        let path = d.path().join("berthd.lock");
        fs::write(&path, "4242\n").expect("write");
        assert_eq!(instance_lock(d.path()).level, Level::Ok);
        let holder = fs::File::open(&path).expect("open");
        rustix::fs::flock(
            &holder,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .expect("lock");
        let f = instance_lock(d.path());
        assert_eq!(f.level, Level::Warn);
        assert!(f.message.contains("pid 4242"), "{f}");
    }

    #[test]
    fn apparmor_is_reported_for_each_host_state() {
        use crate::container::apparmor::Host;
        let off = apparmor(&Host::Disabled("the kernel has no AppArmor module".into()));
        assert_eq!(off.level, Level::Ok);
        assert!(off.message.contains("not enabled") && off.message.contains("refused"));
        let on = apparmor(&Host::Enabled {
            parser: Some("/usr/sbin/apparmor_parser".into()),
        });
        assert_eq!(on.level, Level::Ok);
        assert!(on.message.contains("berth-default"), "{}", on.message);
        let no_parser = apparmor(&Host::Enabled { parser: None });
        assert_eq!(no_parser.level, Level::Warn);
        assert!(no_parser.fix.contains("apparmor"));
    }

    #[test]
    fn cni_without_config_or_plugins_fails() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.cni.conf_dir = d.path().join("net.d");
        config.cni.plugin_dirs = vec![d.path().join("bin")];
        config.cni.builtin_default = false;
        let f = cni(&config);
        assert_eq!(f.level, Level::Fail);
        assert!(f.message.contains("no network config"), "{f}");
        config.cni.builtin_default = true;
        config.cni.builtin_mode = crate::config::BuiltinMode::Plugins;
        let f = cni(&config);
        assert_eq!(f.level, Level::Fail);
        assert!(f.message.contains("bridge"), "{f}");
        assert!(f.fix.contains("containernetworking-plugins"), "{f}");
    }

    #[test]
    fn lines_show_level_name_message_and_fix() {
        let line = Finding::fail("overlayfs", "missing", "modprobe overlay").to_string();
        assert!(line.starts_with("FAIL  overlayfs "), "{line}");
        assert!(line.ends_with("missing -> modprobe overlay"), "{line}");
        assert_eq!(
            Finding::ok("kernel", "Linux 6.1").to_string(),
            "ok    kernel           Linux 6.1"
        );
    }
}
