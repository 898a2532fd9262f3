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
    start_time_checked(pid).ok().flatten()
}

/// [`start_time`], except that running out of file descriptors (or memory) is an
/// error rather than "gone": the caller must not mistake its own exhaustion for a
/// dead process.
fn start_time_checked(pid: Pid) -> std::io::Result<Option<u64>> {
    let stat = match std::fs::read(format!("/proc/{}/stat", pid.0)) {
        Ok(stat) => stat,
        Err(e) if is_exhaustion(&e) => return Err(e),
        Err(_) => return Ok(None),
    };
    Ok(parse_start_time(&stat))
}

fn is_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
    )
}

/// Field 22 of a `/proc/<pid>/stat` line.
fn parse_start_time(stat: &[u8]) -> Option<u64> {
    parse_parent_and_start(stat).map(|(_, start)| start)
}

/// Field 4 (ppid) and field 22 (start time) of a `/proc/<pid>/stat` text. The comm
/// field (2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_parent_and_start(stat: &[u8]) -> Option<(u32, u64)> {
    let after = stat.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(stat.get(after + 1..)?).ok()?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After `)`: field 3 (state) is index 0, field 4 index 1, field 22 index 19.
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
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
    pidfd_checked(pid).ok().flatten()
}

/// [`pidfd`], except that running out of file descriptors is an error, not "gone".
fn pidfd_checked(pid: Pid) -> std::io::Result<Option<OwnedFd>> {
    let Some(p) = rustix::process::Pid::from_raw(pid.0) else {
        return Ok(None);
    };
    match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) => {
            let e = std::io::Error::from(e);
            if is_exhaustion(&e) { Err(e) } else { Ok(None) }
        }
    }
}

/// The process berthd spawned as `pid` at `start` (its [`start_time`] then), if it
/// is still that process: same start time, in the host's mount namespace. `start`
/// 0 is a record from before start times were kept: then the process must look
/// like a berth-monitor by what a container cannot forge ([`is_host_monitor`]).
pub fn verify(pid: Pid, start: u64) -> Option<Verified> {
    verify_checked(pid, start).ok().flatten()
}

/// [`verify`] for a caller that must tell a gone process from its own exhaustion:
/// running out of file descriptors (or memory) while checking is an error.
pub fn verify_checked(pid: Pid, start: u64) -> std::io::Result<Option<Verified>> {
    let Some(fd) = pidfd_checked(pid)? else {
        return Ok(None);
    };
    let same = if start == 0 {
        is_host_monitor(pid)
    } else {
        start_time_checked(pid)? == Some(start) && in_host_mount_ns(pid)
    };
    // Still alive after the checks (the pidfd keeps the pid from being reused).
    Ok((same && start_time_checked(pid)?.is_some()).then_some(Verified { pid, fd }))
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

/// Whether `pid` runs with root's authority, as every berthd helper does: real and
/// effective uid 0, or (a pod's infra process, root of the pod's user namespace,
/// which maps it to an unprivileged host uid) a user namespace other than ours
/// created by root. A local user can run the berth-monitor binary in the host's
/// mount namespace with a container's arguments, but only as themself, and a user
/// namespace they create is theirs, not root's.
fn runs_for_root(pid: Pid) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", pid.0)) else {
        return false;
    };
    // "Uid:\t<real>\t<effective>\t<saved>\t<fs>", as seen from our user namespace.
    let uids: Vec<&str> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|l| l.split_ascii_whitespace().collect())
        .unwrap_or_default();
    if uids.len() >= 2 && uids[0] == "0" && uids[1] == "0" {
        return true;
    }
    let ns = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let theirs = format!("/proc/{}/ns/user", pid.0);
    if ns(&theirs).is_none() || ns(&theirs) == ns("/proc/self/ns/user") {
        return false;
    }
    let Ok(file) = std::fs::File::open(&theirs) else {
        return false;
    };
    userns_owner(&file) == Some(0)
}

/// The uid (in our user namespace) that created the user namespace `ns` names
/// (ioctl NS_GET_OWNER_UID).
fn userns_owner(ns: &std::fs::File) -> Option<u32> {
    use std::os::fd::AsRawFd;
    // _IO(0xb7, 0x4), from linux/nsfs.h.
    const NS_GET_OWNER_UID: libc::c_ulong = 0xb704;
    let mut uid: libc::uid_t = libc::uid_t::MAX;
    // SAFETY: `ns` is an open nsfs file for the call's duration; NS_GET_OWNER_UID
    // writes one uid_t to the pointer, which points at a live local of that type.
    let rc = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_OWNER_UID, &raw mut uid) };
    (rc == 0).then_some(uid)
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
    monitor_binary().is_some_and(|binary| is_monitor(pid, &binary))
}

/// Whether `pid` runs `binary` in the host's mount namespace (see [`is_host_monitor`]).
fn is_monitor(pid: Pid, binary: &Path) -> bool {
    if !in_host_mount_ns(pid) || !runs_for_root(pid) {
        return false;
    }
    let exe_dir = format!("/proc/{}/exe", pid.0);
    let same_file = match (std::fs::metadata(&exe_dir), std::fs::metadata(binary)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    // In our mount namespace the exe link names a path of ours: after an upgrade
    // replaced the binary, the old monitors' link reads "<path> (deleted)". A monitor
    // runs from a sealed copy of itself (runtime-core's exeseal, against
    // CVE-2019-5736): the binary seen through a private, detached overlay mount, whose
    // link reads "/<file name>", or a sealed memfd. Only root's processes in the host's
    // mount namespace get this far, so the sealed names are as good as the path.
    let name = binary
        .file_name()
        .map(|n| n.as_encoded_bytes())
        .unwrap_or_default();
    same_file
        || std::fs::read_link(&exe_dir).is_ok_and(|l| {
            let l = l.as_os_str().as_encoded_bytes();
            let want = binary.as_os_str().as_encoded_bytes();
            l == want
                || l.strip_suffix(b" (deleted)".as_slice()) == Some(want)
                || l.strip_prefix(b"/".as_slice()) == Some(name)
                || l.starts_with(berth_runtime_core::exeseal::MEMFD_LINK_PREFIX)
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

/// SIGKILLs `pid` and all its descendants (children first listed via /proc).
pub fn kill_tree(pid: i32) {
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
    // Pid::new again: a pid read from /proc is never 0, 1 or negative, but kill(2)
    // must not get one if it were.
    for p in all.into_iter().filter_map(Pid::new) {
        if let Some(p) = rustix::process::Pid::from_raw(p.raw()) {
            // An already exited process is not an error.
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}

/// Waits until the process behind `fd`, a pidfd (not our child), exits.
pub async fn wait_pidfd_exit(fd: std::os::fd::OwnedFd) {
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

    /// A local unprivileged user can run the berth-monitor binary (it is 0755, in
    /// the host's mount namespace like every login shell) with any arguments, e.g.
    /// a container's id: that process is still not one of berthd's monitors. The
    /// same binary run as root is (so the copy below is a fair stand-in).
    #[test]
    fn berth_monitor_run_by_another_user_is_not_one() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let binary = dir.path().join("berth-monitor");
        std::fs::copy("/bin/sleep", &binary).expect("copy sleep");
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let spawn = |uid: Option<u32>| {
            let mut cmd = std::process::Command::new(&binary);
            cmd.arg("30");
            if let Some(uid) = uid {
                cmd.uid(uid).gid(uid);
            }
            let child = cmd.spawn().expect("spawn");
            let pid = Pid::new(i32::try_from(child.id()).expect("pid")).expect("pid");
            // Wait until the exec happened (the exe link names the copy).
            for _ in 0..200 {
                if std::fs::read_link(format!("/proc/{}/exe", pid.raw())).is_ok_and(|l| l == binary)
                {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            (child, pid)
        };
        let (mut mine, my_pid) = spawn(None);
        let (mut theirs, their_pid) = spawn(Some(65534));
        let as_root = is_monitor(my_pid, &binary);
        let as_nobody = is_monitor(their_pid, &binary);
        for c in [&mut mine, &mut theirs] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(
            as_root,
            "the binary run by root (as berthd runs it) is a monitor"
        );
        assert!(
            !as_nobody,
            "the binary run by uid 65534 was taken for a monitor"
        );

        // Root of a user namespace of its own: nobody's (unshare --map-root-user) is
        // not a monitor; one root created, mapping it to host uid 100000 (as a pod's
        // infra process runs), is.
        let mut nobody_ns = std::process::Command::new("unshare")
            .args(["--user", "--map-root-user"])
            .arg(&binary)
            .arg("30")
            .uid(65534)
            .gid(65534)
            .spawn()
            .expect("unshare as nobody");
        let nobody_ns_pid = Pid::new(i32::try_from(nobody_ns.id()).expect("pid")).expect("pid");
        let (mut infra, infra_pid) = spawn_in_userns(&binary, 100_000);
        for pid in [nobody_ns_pid, infra_pid] {
            for _ in 0..200 {
                if std::fs::read_link(format!("/proc/{}/exe", pid.raw())).is_ok_and(|l| l == binary)
                {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let nobody_root = is_monitor(nobody_ns_pid, &binary);
        let infra_like = is_monitor(infra_pid, &binary);
        let infra_uid = std::fs::read_to_string(format!("/proc/{}/status", infra_pid.raw()))
            .unwrap_or_default();
        for c in [&mut nobody_ns, &mut infra] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(
            infra_uid.contains("Uid:\t100000\t100000"),
            "the stand-in infra runs as host uid 100000: {infra_uid}"
        );
        assert!(
            infra_like,
            "root of a user namespace root made is a monitor"
        );
        assert!(
            !nobody_root,
            "root of nobody's user namespace was taken for a monitor"
        );
    }

    /// `binary 30` as root of a new user namespace mapping 0-65535 to host
    /// `host_uid`.., set up as `start_infra` does (the child becomes that root).
    fn spawn_in_userns(binary: &Path, host_uid: u32) -> (std::process::Child, Pid) {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let (go_reader, mut go_writer) = std::io::pipe().expect("pipe");
        let (mut pid_reader, pid_writer) = std::io::pipe().expect("pipe");
        let mut cmd = std::process::Command::new(binary);
        cmd.arg("30");
        // SAFETY: runs in the forked child before exec; unshare(2), getpid(2),
        // write(2), read(2), setgroups(2), setresgid(2) and setresuid(2) are
        // async-signal-safe; both pipe ends stay open in the child until exec.
        unsafe {
            cmd.pre_exec(move || {
                let me = libc::getpid().to_ne_bytes();
                let mut b = [0u8; 1];
                if libc::unshare(libc::CLONE_NEWUSER) != 0
                    || libc::write(pid_writer.as_raw_fd(), me.as_ptr().cast(), me.len()) != 4
                    || libc::read(go_reader.as_raw_fd(), b.as_mut_ptr().cast(), 1) != 1
                    || libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(0, 0, 0) != 0
                    || libc::setresuid(0, 0, 0) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // spawn() returns only once the child has exec'd, i.e. after we map it.
        let spawner = std::thread::spawn(move || cmd.spawn().expect("spawn in a user ns"));
        let mut raw = [0u8; 4];
        pid_reader.read_exact(&mut raw).expect("the child's pid");
        let pid = Pid::new(i32::from_ne_bytes(raw)).expect("pid");
        let map = format!("0 {host_uid} 65536\n");
        std::fs::write(format!("/proc/{}/uid_map", pid.raw()), &map).expect("uid_map");
        std::fs::write(format!("/proc/{}/gid_map", pid.raw()), &map).expect("gid_map");
        go_writer.write_all(b"g").expect("release the child");
        let child = spawner.join().expect("spawner");
        (child, pid)
    }

    #[test]
    fn start_time_identifies_a_process() {
        let me = Pid::new(i32::try_from(std::process::id()).expect("pid")).expect("pid");
        let start = start_time(me).expect("own start time");
        assert!(verify(me, start).is_some());
        assert!(verify(me, start + 1).is_none(), "another start time");
    }
}
