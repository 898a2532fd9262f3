//! A pod's network, IPC and UTS namespaces, created and pinned by bind mounts so they
//! outlive any process (and berthd itself), plus the sysctls and hostname set inside;
//! and the pid namespace of a pod's infra process, pinned the same way
//! ([`pin_pid_namespace`]) so containers never join it by a pid.
//!
//! Creation happens on a short-lived dedicated OS thread: `unshare(2)` of the net, IPC
//! and UTS namespaces is per-thread and allowed in a multi-threaded process, the thread
//! writes the namespaced sysctls and the hostname from inside, bind-mounts its
//! `/proc/thread-self/ns/*` files onto the pin files, and exits. No process is forked
//! from berthd's runtime, and no tokio worker ever changes namespace.
//!
//! A pod with its own user namespace (`userns_options` mode POD) cannot be set up that
//! way: a multi-threaded process may neither create nor join a user namespace. A
//! short-lived holder process (`berth-monitor pause`) unshares the user namespace
//! together with the pod's net, IPC and UTS namespaces (so that they are owned by it
//! and containers inside may mount sysfs and mqueue), berthd writes its uid/gid maps
//! and pins all four; the thread then only *joins* the pinned net/IPC/UTS namespaces
//! (host root is privileged over every child user namespace) to set the hostname,
//! bring up `lo` and write sysctls. The holder is killed once everything is pinned.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Which namespaces a pod gets of its own (the others are the host's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NamespaceSet {
    /// A private network namespace (not hostNetwork).
    pub net: bool,
    /// A private IPC namespace (not hostIPC).
    pub ipc: bool,
    /// A private UTS namespace (always, except with hostNetwork as kubelet expects).
    pub uts: bool,
}

/// Pin files of the namespaces that were created.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinnedNamespaces {
    /// Network namespace pin.
    pub net: Option<PathBuf>,
    /// IPC namespace pin.
    pub ipc: Option<PathBuf>,
    /// UTS namespace pin.
    pub uts: Option<PathBuf>,
    /// User namespace pin (pods with `userns_options` mode POD).
    #[serde(default)]
    pub user: Option<PathBuf>,
    /// Pid namespace pin (pods sharing one pid namespace): the infra's, pinned right
    /// after it started (see [`pin_pid_namespace`]). Absent in records written
    /// before pid namespaces were pinned.
    #[serde(default)]
    pub pid: Option<PathBuf>,
}

impl PinnedNamespaces {
    /// All pins, for cleanup.
    pub fn all(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.net, &self.ipc, &self.uts, &self.user, &self.pid]
            .into_iter()
            .flatten()
    }
}

use crate::host::idmap::IdMapping;
use crate::host::mounts::unmount;

/// The user namespace a pod gets: its uid and gid mappings (validated by
/// [`validate_mappings`]) and the program that holds it while it is pinned.
#[derive(Debug, Clone)]
pub struct UserNamespaceRequest {
    /// uid mappings.
    pub uids: Vec<IdMapping>,
    /// gid mappings.
    pub gids: Vec<IdMapping>,
    /// `berth-monitor`, run as `berth-monitor pause` to hold the namespaces.
    pub holder: PathBuf,
}

/// Checks one list of mappings (`field` names it in the message): berthd supports
/// exactly one mapping (as containerd does), which must map container id 0, have a
/// non-zero length and not overflow 32-bit ids.
pub fn validate_mappings(field: &str, maps: &[IdMapping]) -> Result<(), String> {
    let m = match maps {
        [] => return Err(format!("{field}: mode POD needs a mapping, none given")),
        [m] => m,
        _ => {
            return Err(format!(
                "{field}: {} mappings given, berthd supports exactly one",
                maps.len()
            ));
        }
    };
    if m.length == 0 {
        return Err(format!("{field}[0]: length must not be 0"));
    }
    if m.container_id != 0 {
        return Err(format!(
            "{field}[0]: container id 0 must be mapped (the mapping starts at container id {})",
            m.container_id
        ));
    }
    if m.host_id.checked_add(m.length).is_none() || m.container_id.checked_add(m.length).is_none() {
        return Err(format!(
            "{field}[0]: host id {} + length {} overflows 32-bit ids",
            m.host_id, m.length
        ));
    }
    if m.host_id == 0 {
        return Err(format!(
            "{field}[0]: host id 0 would make the container's root the host's root"
        ));
    }
    Ok(())
}

/// The text of a uid_map/gid_map file for `maps`.
pub fn map_file_text(maps: &[IdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.length))
        .collect()
}

/// Why namespaces could not be set up; names the step.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// A syscall or file operation failed.
    #[error("{step}: {source}")]
    Io {
        /// What was being done.
        step: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A sysctl is not allowed for this pod.
    #[error("{0}")]
    Sysctl(String),
}

fn io_err(step: impl Into<String>) -> impl FnOnce(io::Error) -> NamespaceError {
    let step = step.into();
    move |source| NamespaceError::Io { step, source }
}

/// The namespace a sysctl lives in, or an error for sysctls a pod may not set.
pub fn sysctl_namespace(name: &str) -> Result<&'static str, NamespaceError> {
    let ipc = [
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shmall",
        "kernel.shm_rmid_forced",
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
    ];
    if ipc.contains(&name) || name.starts_with("fs.mqueue.") {
        Ok("ipc")
    } else if name.starts_with("net.") {
        Ok("net")
    } else if name == "kernel.hostname" || name == "kernel.domainname" {
        Ok("uts")
    } else {
        Err(NamespaceError::Sysctl(format!(
            "sysctl {name:?} is not namespaced: a pod may only set net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.*"
        )))
    }
}

/// Creates the namespaces of `set` in `dir` (files `net`, `ipc`, `uts`, and `user` when
/// `userns` is given), sets `hostname` in the UTS namespace and `sysctls` in the
/// namespaces they belong to. On failure nothing stays pinned.
pub fn create_and_pin(
    dir: &Path,
    set: NamespaceSet,
    hostname: &str,
    sysctls: &[(String, String)],
    userns: Option<&UserNamespaceRequest>,
) -> Result<PinnedNamespaces, NamespaceError> {
    for (name, _) in sysctls {
        let ns = sysctl_namespace(name)?;
        let private = match ns {
            "net" => set.net,
            "ipc" => set.ipc,
            _ => set.uts,
        };
        if !private {
            return Err(NamespaceError::Sysctl(format!(
                "sysctl {name:?} needs the pod's own {ns} namespace, but the pod uses the host's"
            )));
        }
    }
    if !(set.net || set.ipc || set.uts) && userns.is_none() {
        return Ok(PinnedNamespaces::default());
    }
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    ensure_shared_mount(dir.parent().unwrap_or(dir))?;

    let pre_pinned = match userns {
        Some(req) => Some(pin_with_user_namespace(dir, set, req)?),
        None => None,
    };
    let dir = dir.to_path_buf();
    let hostname = hostname.to_owned();
    let sysctls = sysctls.to_vec();
    let joined = pre_pinned
        .clone()
        .zip(userns.map(|r| (r.uids.clone(), r.gids.clone())));
    let result = std::thread::Builder::new()
        .name("berth-netns".into())
        .spawn(move || pin_on_this_thread(&dir, set, &hostname, &sysctls, joined))
        .map_err(io_err("starting the namespace thread"))
        .and_then(|t| {
            t.join().map_err(|_| NamespaceError::Io {
                step: "namespace thread".into(),
                source: io::Error::other("panicked"),
            })?
        });
    if result.is_err()
        && let Some(p) = &pre_pinned
    {
        unpin(p);
    }
    result
}

/// Has a holder process unshare a user namespace plus the net/IPC/UTS namespaces of
/// `set` (owned by it), writes the mappings and pins them all in `dir`.
fn pin_with_user_namespace(
    dir: &Path,
    set: NamespaceSet,
    req: &UserNamespaceRequest,
) -> Result<PinnedNamespaces, NamespaceError> {
    use std::os::unix::process::CommandExt;
    let mut flags = libc::CLONE_NEWUSER;
    for (wanted, flag) in [
        (set.net, libc::CLONE_NEWNET),
        (set.ipc, libc::CLONE_NEWIPC),
        (set.uts, libc::CLONE_NEWUTS),
    ] {
        if wanted {
            flags |= flag;
        }
    }
    let mut cmd = std::process::Command::new(&req.holder);
    cmd.arg("pause")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only calls
    // unshare(2) and prctl(2), which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::unshare(flags) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut holder = cmd.spawn().map_err(io_err(format!(
        "starting the user namespace holder {} (unshare user, net, ipc, uts)",
        req.holder.display()
    )))?;
    let pid = holder.id();
    let mut pinned = PinnedNamespaces::default();
    let result = (|| {
        for (file, maps) in [("gid_map", &req.gids), ("uid_map", &req.uids)] {
            let path = format!("/proc/{pid}/{file}");
            std::fs::write(&path, map_file_text(maps))
                .map_err(io_err(format!("writing {path}")))?;
        }
        for (kind, wanted, slot) in [
            ("user", true, &mut pinned.user),
            ("net", set.net, &mut pinned.net),
            ("ipc", set.ipc, &mut pinned.ipc),
            ("uts", set.uts, &mut pinned.uts),
        ] {
            if wanted {
                *slot = Some(pin(Path::new(&format!("/proc/{pid}/ns")), kind, dir)?);
            }
        }
        Ok(())
    })();
    let _ = holder.kill();
    let _ = holder.wait();
    match result {
        Ok(()) => Ok(pinned),
        Err(e) => {
            unpin(&pinned);
            Err(e)
        }
    }
}

fn join_pinned(kind: &str, pin: &Path, flag: libc::c_int) -> Result<(), NamespaceError> {
    let f = std::fs::File::open(pin).map_err(io_err(format!("opening {}", pin.display())))?;
    // SAFETY: setns(2) on an open namespace fd; it changes only this thread, which
    // exits right after.
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), flag) } != 0 {
        return Err(io_err(format!("joining the pod's {kind} namespace"))(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A user namespace's uid and gid mappings.
type UidGidMaps = (Vec<IdMapping>, Vec<IdMapping>);

fn pin_on_this_thread(
    dir: &Path,
    set: NamespaceSet,
    hostname: &str,
    sysctls: &[(String, String)],
    already_pinned: Option<(PinnedNamespaces, UidGidMaps)>,
) -> Result<PinnedNamespaces, NamespaceError> {
    if let Some((pinned, root_ids)) = already_pinned {
        for (kind, pin, flag) in [
            ("net", &pinned.net, libc::CLONE_NEWNET),
            ("ipc", &pinned.ipc, libc::CLONE_NEWIPC),
            ("uts", &pinned.uts, libc::CLONE_NEWUTS),
        ] {
            if let Some(p) = pin {
                join_pinned(kind, p, flag)?;
            }
        }
        // IPC sysctls of an IPC namespace owned by a child user namespace are writable
        // only by that namespace's root (no CAP_SYS_RESOURCE here): write them last, as
        // that uid (this thread only: raw setresuid, and the thread exits right after).
        let (ipc, rest): (Vec<_>, Vec<_>) = sysctls
            .iter()
            .cloned()
            .partition(|(n, _)| matches!(sysctl_namespace(n), Ok("ipc")));
        configure_on_this_thread(set, hostname, &rest)?;
        if !ipc.is_empty() {
            let root = |maps: &[IdMapping]| maps.first().map(|m| m.host_id).unwrap_or(0);
            let (uid, gid) = (root(&root_ids.0), root(&root_ids.1));
            // SAFETY: raw setresgid/setresuid syscalls change this thread's credentials
            // only (unlike the libc wrappers, which change every thread's).
            let rc = unsafe {
                if libc::syscall(libc::SYS_setresgid, -1i64, i64::from(gid), -1i64) == 0 {
                    libc::syscall(libc::SYS_setresuid, -1i64, i64::from(uid), -1i64)
                } else {
                    -1
                }
            };
            if rc != 0 {
                return Err(
                    io_err("becoming the user namespace's root for IPC sysctls")(
                        io::Error::last_os_error(),
                    ),
                );
            }
            configure_on_this_thread(
                NamespaceSet {
                    net: false,
                    ipc: true,
                    uts: false,
                },
                "",
                &ipc,
            )?;
        }
        return Ok(pinned);
    }
    let mut flags = 0;
    if set.net {
        flags |= libc::CLONE_NEWNET;
    }
    if set.ipc {
        flags |= libc::CLONE_NEWIPC;
    }
    if set.uts {
        flags |= libc::CLONE_NEWUTS;
    }
    // SAFETY: unshare(2) with only NEWNET/NEWIPC/NEWUTS affects this thread alone
    // (it exits right after); no memory is involved.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(io_err("unshare(net, ipc, uts)")(io::Error::last_os_error()));
    }
    let mut pinned = PinnedNamespaces::default();
    let result = (|| {
        configure_on_this_thread(set, hostname, sysctls)?;
        for (kind, wanted, slot) in [
            ("net", set.net, &mut pinned.net),
            ("ipc", set.ipc, &mut pinned.ipc),
            ("uts", set.uts, &mut pinned.uts),
        ] {
            if wanted {
                *slot = Some(pin(Path::new("/proc/thread-self/ns"), kind, dir)?);
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(pinned),
        Err(e) => {
            unpin(&pinned);
            Err(e)
        }
    }
}

/// Hostname, loopback and sysctls, in the namespaces this thread is in.
fn configure_on_this_thread(
    set: NamespaceSet,
    hostname: &str,
    sysctls: &[(String, String)],
) -> Result<(), NamespaceError> {
    if set.uts && !hostname.is_empty() {
        // SAFETY: the pointer and length describe `hostname`'s bytes, alive for the call.
        let rc = unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
        if rc != 0 {
            return Err(io_err(format!("sethostname({hostname:?})"))(
                io::Error::last_os_error(),
            ));
        }
    }
    if set.net {
        bring_up_loopback()?;
    }
    for (name, value) in sysctls {
        let path = PathBuf::from("/proc/sys").join(name.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| sysctl_write_error(name, value, e))?;
    }
    Ok(())
}

/// Why writing `value` to the sysctl `name` failed. The kernel refusing the value
/// (EINVAL, ERANGE, EOVERFLOW), a sysctl that does not exist (ENOENT) or is read-only
/// (EACCES) is the pod spec's fault and says so; anything else is the host's.
fn sysctl_write_error(name: &str, value: &str, e: io::Error) -> NamespaceError {
    let why = match e.raw_os_error() {
        Some(libc::EINVAL | libc::ERANGE | libc::EOVERFLOW) => "the kernel rejects this value",
        Some(libc::ENOENT) => "no such sysctl in this kernel",
        Some(libc::EACCES) => "the sysctl is read-only",
        _ => return io_err(format!("setting sysctl {name}={value:?}"))(e),
    };
    let errno = crate::error::errno_name(e.raw_os_error().unwrap_or(0));
    NamespaceError::Sysctl(format!("{name}={value:?}: {why} ({errno})"))
}

/// Brings `lo` up inside the thread's network namespace (CNI's loopback plugin is not
/// always in the chain, and pods expect 127.0.0.1 to work).
fn bring_up_loopback() -> Result<(), NamespaceError> {
    // SAFETY: socket(2) has no memory preconditions; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io_err("socket for loopback")(io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = libc::c_char::try_from(*src).unwrap_or(0);
    }
    // SAFETY: `req` is a valid ifreq naming "lo" and outlives both ioctls; `fd` is open.
    let rc = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 {
            req.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req)
        } else {
            -1
        }
    };
    let err = io::Error::last_os_error();
    // SAFETY: `fd` was opened above and is not used afterwards.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(io_err("bringing up lo")(err));
    }
    Ok(())
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Pins the `kind` namespace listed in `ns_dir` (a `/proc/<task>/ns` directory) at
/// `dir/<kind>`: a bind mount of it onto a new file there, which keeps the namespace
/// alive after its last process is gone.
fn pin(ns_dir: &Path, kind: &str, dir: &Path) -> Result<PathBuf, NamespaceError> {
    let target = dir.join(kind);
    std::fs::File::create(&target).map_err(io_err(format!("creating {}", target.display())))?;
    bind_mount(&ns_dir.join(kind), &target).map_err(io_err(format!(
        "pinning the {kind} namespace at {}",
        target.display()
    )))?;
    Ok(target)
}

fn bind_mount(src: &Path, dst: &Path) -> io::Result<()> {
    let (src, dst) = (cstr(src)?, cstr(dst)?);
    // SAFETY: both arguments are valid NUL-terminated paths alive for the call; the
    // other pointers are null as mount(2) allows for MS_BIND.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Pins the pid namespace of the pod's infra process at `dir/pid`, so that containers
/// join it by a path no other process can come to name: `/proc/<pid>/ns/pid` names
/// whatever process has that pid *when it is opened*, and a pid freed by the infra's
/// death may by then belong to another process (another pod's, or the host's).
///
/// The infra is identified as the child of `parent` (berthd's own, still unreaped
/// `unshare`, which forks exactly one child): `/proc/<pid>` is opened once and the
/// parent check, the start time and the namespace file are all read through that
/// directory fd, which keeps naming the process it was opened for (reads through it
/// fail once that process is gone, whatever later takes its pid). The namespace is
/// bind-mounted from the opened fd, not by path. Returns the pin and the infra's start
/// time (what identifies it in the record).
pub fn pin_pid_namespace(
    dir: &Path,
    pid: i32,
    parent: u32,
) -> Result<(PathBuf, u64), NamespaceError> {
    use std::os::fd::AsRawFd;
    let proc_dir = format!("/proc/{pid}");
    let step = || format!("identifying the pod infra process {pid}");
    let pdir = rustix::fs::open(
        proc_dir.as_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| io_err(step())(e.into()))?;
    let stat = rustix::fs::openat(
        &pdir,
        "stat",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| io_err(step())(e.into()))?;
    let mut text = Vec::new();
    io::Read::read_to_end(&mut std::fs::File::from(stat), &mut text).map_err(io_err(step()))?;
    let (ppid, start) = crate::host::procs::parse_parent_and_start(&text).ok_or_else(|| {
        io_err(step())(io::Error::new(
            io::ErrorKind::InvalidData,
            "unparsable /proc/<pid>/stat",
        ))
    })?;
    if ppid != parent {
        return Err(io_err(step())(io::Error::new(
            io::ErrorKind::NotFound,
            format!("its parent is {ppid}, not berthd's unshare {parent}: the infra died"),
        )));
    }
    let ns = rustix::fs::openat(
        &pdir,
        "ns/pid",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| io_err(format!("opening the pid namespace of the infra {pid}"))(e.into()))?;
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    ensure_shared_mount(dir.parent().unwrap_or(dir))?;
    let target = dir.join("pid");
    std::fs::File::create(&target).map_err(io_err(format!("creating {}", target.display())))?;
    let source = PathBuf::from(format!("/proc/thread-self/fd/{}", ns.as_raw_fd()));
    if let Err(e) = bind_mount(&source, &target) {
        let _ = std::fs::remove_file(&target);
        return Err(io_err(format!(
            "pinning the pid namespace at {}",
            target.display()
        ))(e));
    }
    Ok((target, start))
}

/// Unmounts and removes every pin; errors are logged, the rest still proceeds.
pub fn unpin(pinned: &PinnedNamespaces) {
    for p in pinned.all() {
        if let Err(e) = unmount(p) {
            tracing::warn!(pin = %p.display(), error = %e, "could not unpin namespace");
        }
        let _ = std::fs::remove_file(p);
    }
}

/// Makes `dir` a shared mount point (bind on itself, as `ip netns` does), so that
/// unpinning propagates to mount namespaces copied from the host while a pin existed
/// and a namespace is never kept alive by a stale copy of its pin.
fn ensure_shared_mount(dir: &Path) -> Result<(), NamespaceError> {
    let canonical =
        std::fs::canonicalize(dir).map_err(io_err(format!("resolving {}", dir.display())))?;
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(io_err("reading mountinfo"))?;
    let is_shared_mountpoint = mountinfo.lines().any(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        fields
            .get(4)
            .map(|m| Path::new(m) == canonical)
            .unwrap_or(false)
            && fields
                .iter()
                .skip(6)
                .take_while(|f| **f != "-")
                .any(|f| f.starts_with("shared:"))
    });
    if is_shared_mountpoint {
        return Ok(());
    }
    let c = cstr(&canonical).map_err(io_err("pin dir path"))?;
    bind_mount(&canonical, &canonical).map_err(io_err(format!(
        "bind-mounting {} on itself",
        canonical.display()
    )))?;
    // SAFETY: `c` is a valid path; MS_SHARED changes propagation only.
    if unsafe {
        libc::mount(
            std::ptr::null(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(io_err(format!("making {} shared", canonical.display()))(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_map_to_their_namespace() {
        assert_eq!(sysctl_namespace("net.ipv4.ip_forward").expect("net"), "net");
        assert_eq!(
            sysctl_namespace("kernel.shm_rmid_forced").expect("ipc"),
            "ipc"
        );
        assert_eq!(sysctl_namespace("fs.mqueue.msg_max").expect("ipc"), "ipc");
        let e = sysctl_namespace("kernel.panic").expect_err("host-wide");
        assert!(e.to_string().contains("kernel.panic"), "{e}");
    }

    fn map(container_id: u32, host_id: u32, length: u32) -> IdMapping {
        IdMapping {
            container_id,
            host_id,
            length,
        }
    }

    #[test]
    fn user_namespace_mappings_are_validated_naming_the_field() {
        assert!(validate_mappings("uids", &[map(0, 100_000, 65_536)]).is_ok());
        let e = validate_mappings("uids", &[]).expect_err("none");
        assert!(e.starts_with("uids:"), "{e}");
        let e = validate_mappings("gids", &[map(0, 1000, 10), map(10, 5000, 10)]).expect_err("two");
        assert!(e.starts_with("gids:") && e.contains("exactly one"), "{e}");
        let e = validate_mappings("uids", &[map(1, 1000, 100_000)]).expect_err("no root");
        assert!(e.contains("container id 0"), "{e}");
        let e = validate_mappings("uids", &[map(0, 1000, 0)]).expect_err("empty");
        assert!(e.contains("length"), "{e}");
        let e = validate_mappings("uids", &[map(0, u32::MAX - 5, 10)]).expect_err("overflow");
        assert!(e.contains("overflows"), "{e}");
        let e = validate_mappings("uids", &[map(0, 0, 65_536)]).expect_err("host root");
        assert!(e.contains("host id 0"), "{e}");
    }

    #[test]
    fn stat_parent_and_start_skip_a_hostile_comm() {
        let stat =
            b"42 (a) 7 ) (b) S 17 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(
            crate::host::procs::parse_parent_and_start(stat),
            Some((17, 98765))
        );
        assert_eq!(
            crate::host::procs::parse_parent_and_start(b"42 (x) S"),
            None
        );
    }

    #[test]
    fn map_files_have_one_line_per_mapping() {
        assert_eq!(
            map_file_text(&[map(0, 100_000, 65_536)]),
            "0 100000 65536\n"
        );
    }

    #[test]
    fn host_network_pods_cannot_set_net_sysctls() {
        let d = tempfile::tempdir().expect("tempdir");
        let err = create_and_pin(
            &d.path().join("ns"),
            NamespaceSet {
                net: false,
                ipc: true,
                uts: true,
            },
            "h",
            &[("net.ipv4.ip_forward".into(), "1".into())],
            None,
        )
        .expect_err("must be refused");
        assert!(err.to_string().contains("host's"), "{err}");
    }
}
