//! Identifying berthd's own helper processes (berth-monitor: container monitors and
//! pod infra processes) on the host, for recovery and signalling.
//!
//! A process's command line, name and environment are its own to write: a container
//! process can `exec -a berth-monitor`, rewrite its argv or set `prctl(PR_SET_NAME)`,
//! and its host pid is visible in the host's /proc. So none of those identifies a
//! monitor. What does:
//! - a pid **and its start time** (`/proc/<pid>/stat` field 22, clock ticks since
//!   boot), recorded when berthd spawned the process: a reused pid has a later start
//!   time;
//! - for a process berthd has no record of (it died between spawning and recording),
//!   what a container process cannot change: it runs in the host's mount namespace
//!   (every container has its own) and its executable is berth-monitor.
//!
//! The kill goes through a pidfd opened *before* the checks, so the process checked
//! is the process signalled even if it exits and its pid is reused in between.

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A pid berthd may signal: never 0 (kill(2) reads it as "my process group"), never
/// 1 (the host's init) and never negative ("a process group" or "every process").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pid(i32);

impl Pid {
    /// `raw` as a signallable pid, or `None` for 0, 1 and negatives.
    pub fn new(raw: i32) -> Option<Self> {
        (raw > 1).then_some(Self(raw))
    }

    /// The raw pid.
    pub fn raw(self) -> i32 {
        self.0
    }
}

/// Start time of `pid` in clock ticks since boot (`/proc/<pid>/stat` field 22), or
/// `None` when it is gone. The comm field (2) may hold spaces and parentheses, so
/// fields are counted after its last `)`.
pub fn start_time(pid: Pid) -> Option<u64> {
    let stat = std::fs::read(format!("/proc/{}/stat", pid.0)).ok()?;
    let after = stat.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(stat.get(after + 1..)?).ok()?;
    // After `)`: field 3 (state) is the first; field 22 is the 20th.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// A process that was verified to be what berthd started, held by a pidfd.
#[derive(Debug)]
pub struct Verified {
    /// Its pid.
    pub pid: Pid,
    /// A pidfd on it: signals through it cannot reach a later process with its pid.
    pub fd: OwnedFd,
}

impl Verified {
    /// Sends `signal` through the pidfd. An exited process is not an error.
    pub fn signal(&self, signal: i32) {
        let Some(sig) = rustix::process::Signal::from_named_raw(signal) else {
            return;
        };
        if let Err(e) = rustix::process::pidfd_send_signal(&self.fd, sig) {
            tracing::debug!(pid = self.pid.0, error = %e, "pidfd_send_signal");
        }
    }
}

fn pidfd(pid: Pid) -> Option<OwnedFd> {
    let p = rustix::process::Pid::from_raw(pid.0)?;
    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
}

/// The process berthd spawned as `pid` at `start` (its [`start_time`] then), if it
/// is still that process: same start time, in the host's mount namespace. `start`
/// 0 is a record from before start times were kept: then the process must look
/// like a berth-monitor by what a container cannot forge ([`is_host_monitor`]).
pub fn verify(pid: Pid, start: u64) -> Option<Verified> {
    let fd = pidfd(pid)?;
    let same = if start == 0 {
        is_host_monitor(pid)
    } else {
        start_time(pid) == Some(start) && in_host_mount_ns(pid)
    };
    // Still alive after the checks (the pidfd keeps the pid from being reused).
    (same && start_time(pid).is_some()).then_some(Verified { pid, fd })
}

/// The mount namespaces a berthd helper may run in: berthd's own, and that of this
/// pid namespace's init (berthd may have been restarted in another one).
fn host_mount_namespaces() -> Vec<(u64, u64)> {
    ["/proc/self/ns/mnt", "/proc/1/ns/mnt"]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

fn in_host_mount_ns(pid: Pid) -> bool {
    std::fs::metadata(format!("/proc/{}/ns/mnt", pid.0))
        .is_ok_and(|m| host_mount_namespaces().contains(&(m.dev(), m.ino())))
}

/// berth-monitor, installed next to berthd.
fn monitor_binary() -> Option<PathBuf> {
    Some(
        std::env::current_exe()
            .ok()?
            .with_file_name("berth-monitor"),
    )
}

/// Whether `pid` runs the berth-monitor installed next to berthd (the same file, or
/// one replaced at that path by an upgrade) in the host's mount namespace. A
/// container's processes are in a mount namespace of their own, so whatever they
/// name themselves or exec, this is false for them.
pub fn is_host_monitor(pid: Pid) -> bool {
    if !in_host_mount_ns(pid) {
        return false;
    }
    let Some(binary) = monitor_binary() else {
        return false;
    };
    let exe_dir = format!("/proc/{}/exe", pid.0);
    let same_file = match (std::fs::metadata(&exe_dir), std::fs::metadata(&binary)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    // In our mount namespace the exe link names a path of ours: after an upgrade
    // replaced the binary, the old monitors' link reads "<path> (deleted)".
    same_file
        || std::fs::read_link(&exe_dir).is_ok_and(|l| {
            let l = l.as_os_str().as_encoded_bytes();
            let want = binary.as_os_str().as_encoded_bytes();
            l == want || l.strip_suffix(b" (deleted)".as_slice()) == Some(want)
        })
}

/// The berth-monitor processes (see [`is_host_monitor`]) for which
/// `keep(proc_dir, argv)` is true, each held by a pidfd. `keep` may look at argv or
/// environ to tell one monitor from another: the process is already known to be a
/// monitor, and monitors do not lie. Processes that exit while being read are
/// skipped.
pub fn berth_monitors(keep: impl Fn(&Path, &[&[u8]]) -> bool) -> Vec<Verified> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for p in procs.filter_map(std::result::Result::ok) {
        let Some(pid) = p
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
            .and_then(Pid::new)
        else {
            continue;
        };
        // Cheap filter first: argv[0]'s file name.
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let named = args.first().is_some_and(|a| {
            Path::new(std::ffi::OsStr::from_bytes(a))
                .file_name()
                .is_some_and(|n| n.as_encoded_bytes().starts_with(b"berth-monitor"))
        });
        if !named {
            continue;
        }
        let Some(fd) = pidfd(pid) else { continue };
        if is_host_monitor(pid) && keep(&p.path(), &args) {
            found.push(Verified { pid, fd });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_zero_one_and_negative_are_never_signallable() {
        for raw in [i32::MIN, -1, 0, 1] {
            assert_eq!(Pid::new(raw), None, "{raw}");
        }
        assert_eq!(Pid::new(2).map(Pid::raw), Some(2));
    }

    /// The test binary is no berth-monitor: whatever `keep` says, it is not returned.
    #[test]
    fn only_berth_monitors_are_considered() {
        let me = i32::try_from(std::process::id()).expect("pid");
        assert!(
            !berth_monitors(|_, _| true)
                .iter()
                .any(|v| v.pid.raw() == me)
        );
    }

    /// A child renamed berth-monitor (argv[0], as `exec -a` does) in our own mount
    /// namespace is still not the berth-monitor binary.
    #[test]
    fn a_process_named_berth_monitor_is_not_one() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg0("/usr/local/bin/berth-monitor")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = Pid::new(i32::try_from(child.id()).expect("pid")).expect("pid");
        // Wait until the exec happened (argv[0] shows).
        for _ in 0..200 {
            if std::fs::read(format!("/proc/{}/cmdline", pid.raw()))
                .is_ok_and(|c| c.starts_with(b"/usr/local/bin/berth-monitor"))
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let found = berth_monitors(|_, _| true);
        let _ = child.kill();
        let _ = child.wait();
        assert!(!found.iter().any(|v| v.pid == pid));
        assert!(!is_host_monitor(pid));
    }

    #[test]
    fn start_time_identifies_a_process() {
        let me = Pid::new(i32::try_from(std::process::id()).expect("pid")).expect("pid");
        let start = start_time(me).expect("own start time");
        assert!(verify(me, start).is_some());
        assert!(verify(me, start + 1).is_none(), "another start time");
    }
}
