//! Shared by the reliability tests (crash storm, leaks, load): a seeded random
//! source, CRI configs for the pods and containers they churn, a reaper for the
//! processes berthd orphans when it is killed, and probes of host state (mounts,
//! cgroups, veths, IPAM leases, monitor processes, files) to find leaks.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_integration::daemon::{TEST_BRIDGE, TEST_NETWORK};
use berth_proto::v1::{
    ContainerConfig, ContainerMetadata, ImageSpec, LinuxPodSandboxConfig, PodSandboxConfig,
    PodSandboxMetadata,
};

/// The image every churned container runs.
#[allow(unused_imports)] // each test binary uses a different part
pub use berth_integration::fixtures::BUSYBOX;

#[allow(unused_imports)]
pub use berth_integration::cgroup::{CgroupParent, cgroups_under};

/// Serialises the tests of one binary: `cargo test` runs them on parallel threads of
/// one process, and each checks host-wide state (monitor processes, the test bridge)
/// and owns a cgroup parent. nextest runs them in separate processes anyway.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// splitmix64: small, seedable, and the same sequence on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `pct`%.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    /// A random element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        let i = usize::try_from(self.below(items.len() as u64)).unwrap_or(0);
        items.get(i)
    }
}

/// The seed from `var`, else one from the clock; printed so a failure can be rerun.
pub fn seed_from_env(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs().wrapping_mul(1_000_000_007) ^ u64::from(d.subsec_nanos()))
                .unwrap_or(1)
        });
    eprintln!("seed = {seed} (rerun with {var}={seed})");
    seed
}

/// A number from the environment, else `default`.
pub fn env_number(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// A pod config like kubelet's, under `cgroup_parent`.
pub fn pod_config(name: &str, cgroup_parent: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_owned(),
            namespace: "reliability".to_owned(),
            uid: format!("{name}-uid"),
            attempt: 0,
        }),
        hostname: name.to_owned(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container that sleeps until stopped.
pub fn sleeper(name: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.to_owned(),
            ..Default::default()
        }),
        command: vec!["sleep".to_owned(), "3600".to_owned()],
        ..Default::default()
    }
}

/// Makes this test process the subreaper of everything berthd leaves behind when it
/// is killed (its monitors, the `unshare` of pod infra processes), and reaps those
/// that exit: host PID 1 here never reaps, and a zombie would look like a leak.
///
/// Only adopted processes are reaped, never a child the test forked itself (a
/// `busybox --list-full`, `ip`, the registry, berthd): its owner waits for it, and a
/// wait that lost the race to the reaper failed with ECHILD ("No child processes").
/// A zombie child is adopted when it is not in this process's process group (the
/// test forks with plain `Command`s, which stay in it; berth-monitor calls setsid),
/// or when it was seen alive as a child of one of this test's berthd processes (pid
/// and start time: `unshare` and other helpers berthd forks stay in the group).
pub fn become_reaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    std::thread::spawn(|| {
        let mut adopted = std::collections::HashSet::new();
        loop {
            reap_adopted(&mut adopted);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

/// Process group (field 5) and start time (field 22) of `pid`, a zombie too, and
/// whether it is a zombie.
fn stat_of(pid: i32) -> Option<(i32, u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid pgrp ...": fields are counted after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    Some((
        fields.get(2)?.parse().ok()?,
        fields.get(19)?.parse().ok()?,
        *fields.first()? == "Z",
    ))
}

fn children_of(pid: u32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .flat_map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// One pass: records berthd's children (pid, start time) as ours to reap should
/// they be orphaned, then reaps the zombie children that are adopted (see
/// [`become_reaper`]). `waitpid` names each pid: an adopted zombie is waited for by
/// no one else, so its pid cannot be reused before this reaps it.
fn reap_adopted(adopted: &mut std::collections::HashSet<(i32, u64)>) {
    let me = std::process::id();
    // SAFETY: getpgrp(2) has no arguments and cannot fail.
    let my_group = unsafe { libc::getpgrp() };
    let mine = children_of(me);
    for &child in &mine {
        let is_berthd = std::fs::read_link(format!("/proc/{child}/exe"))
            .is_ok_and(|e| e.file_name().is_some_and(|n| n == "berthd"));
        if is_berthd && let Ok(child) = u32::try_from(child) {
            for helper in children_of(child) {
                if let Some((_, start, _)) = stat_of(helper) {
                    adopted.insert((helper, start));
                }
            }
        }
    }
    for pid in mine {
        let Some((group, start, zombie)) = stat_of(pid) else {
            continue;
        };
        if zombie && (group != my_group || adopted.contains(&(pid, start))) {
            let mut status = 0;
            // SAFETY: waitpid on our own adopted zombie child; `status` is a valid
            // out-pointer.
            unsafe { libc::waitpid(pid, &raw mut status, libc::WNOHANG) };
            adopted.remove(&(pid, start));
        }
    }
    // Forget helpers that are gone (reaped by berthd while it lived, or above).
    adopted.retain(|&(pid, start)| stat_of(pid).is_some_and(|(_, s, _)| s == start));
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_owned)
        .collect()
}

/// Whether `path` is a mount point of an nsfs (a pinned namespace).
pub fn is_pinned_ns(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(4) == Some(&path)
                && f.iter()
                    .skip_while(|x| **x != "-")
                    .nth(1)
                    .is_some_and(|t| *t == "nsfs")
        })
}

/// Host-side interfaces enslaved to the test bridge.
pub fn bridge_ports() -> BTreeSet<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show", "master", TEST_BRIDGE])
        .output();
    let Ok(out) = out else {
        return BTreeSet::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        .collect()
}

/// host-local IPAM lease files of the test network that name one of `ids`.
pub fn leases_of(ids: &BTreeSet<String>) -> Vec<String> {
    let dir = Path::new("/var/lib/cni/networks").join(TEST_NETWORK);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let owner = text.lines().next().unwrap_or("").trim();
            ids.contains(owner)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Pids of live (not zombie) berth-monitor processes of the binaries under test,
/// whichever of the tests' daemons started them.
pub fn monitor_pids() -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    // Only the monitors of the binaries under test (next to the berthd these tests
    // start): another checkout's berthd running on the same machine (a developer's
    // cluster, a second worktree's tests) has monitors too, and they are not ours.
    // Canonical, as /proc/<pid>/exe is: a relative or symlinked BERTHD_BIN would
    // otherwise match nothing, and every leak check would pass unchecked.
    let ours = berth_integration::daemon::TestDaemon::binary()
        .ok()
        .and_then(|b| std::fs::canonicalize(b).ok())
        .and_then(|b| b.parent().map(Path::to_path_buf));
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.filter_map(Result::ok) {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let exe = std::fs::read_link(p.path().join("exe")).unwrap_or_default();
        if exe
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("berth-monitor"))
            && (ours.is_none() || exe.parent() == ours.as_deref())
        {
            out.insert(pid);
        }
    }
    out
}

/// Paths below `root` that have one of `ids` as a component: files and directories
/// that belong to an object (pod or container) by name.
pub fn paths_naming(root: &Path, ids: &BTreeSet<String>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(root, &mut |p| {
        if p.components()
            .any(|c| ids.contains(c.as_os_str().to_string_lossy().as_ref()))
        {
            out.push(p.to_path_buf());
        }
    });
    out
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            f(&p);
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&p, f);
            }
        }
    }
}

/// Entries of `dir` (names), empty when it does not exist.
pub fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|e| {
            e.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Open fds, threads and RSS (KiB) of a process.
pub fn process_figures(pid: u32) -> (usize, usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        fds,
        usize::try_from(field("Threads:")).unwrap_or(0),
        field("VmRSS:"),
    )
}
