//! Creating the container's processes.
//!
//! ```text
//! caller (single-threaded)          stage-1 (fork)                     init (clone, CLONE_PARENT)
//!  fork ───────────────────────────▶ wait Proceed
//!  join cgroup(stage-1), Proceed ──▶ setns(joined namespaces)
//!                                    unshare(USER) → WriteIdMappings
//!  write uid_map/gid_map, Proceed ─▶ unshare(other new namespaces)
//!                                    clone ─────────────────────────▶ mounts, pivot_root, /dev,
//!  ◀─────────────────────────────── InitPid(pid), exit                masked/ro paths, hostname,
//!                                                                      rlimits, user, caps, nnp,
//!  ◀──────────────────────────────────────────────────────────────── Ready (or Failed{step,errno})
//!                                                                      wait for start, seccomp, execve
//! ```
//!
//! Every message travels on a SOCK_SEQPACKET socketpair; a child that dies without a
//! word is seen as end-of-file, so the caller never hangs. The caller must be
//! single-threaded (berth-runtime, berth-monitor): forking a threaded process is unsafe.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::channel::{self, Channel, ChildError, Message, ROOTFS_SPEC_STEP};
use crate::rootfs::{self, RootfsPlan};
use crate::security;
use crate::sys::{CloneFlags, Errno, Rlimit, Syscall, linux::LinuxSyscall};

/// How long the caller waits for any single message from the children.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// Failures creating the container process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The child reported a failure.
    #[error(transparent)]
    Child(#[from] ChildError),
    /// Talking to the child failed.
    #[error(transparent)]
    Channel(#[from] channel::ChannelError),
    /// The child exited without reporting.
    #[error("container set-up process exited without reporting ({0})")]
    ChildVanished(String),
    /// A namespace file to join could not be opened.
    #[error("open {kind} namespace {path}: {source}")]
    OpenNamespace {
        kind: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// fork failed.
    #[error("fork: {0}")]
    Fork(#[source] Errno),
    /// Writing the uid/gid mappings failed.
    #[error("write {what} for pid {pid}: {source}")]
    IdMapping {
        what: &'static str,
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    /// Joining the cgroup failed.
    #[error("join cgroup: {0}")]
    Cgroup(String),
    /// The spec lacks something required.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// Unexpected message order.
    #[error("unexpected message from child: {0:?}")]
    Protocol(Message),
    /// The pty master did not arrive on the console socket.
    #[error("console socket: {0}")]
    Console(String),
    /// A createRuntime/prestart hook failed.
    #[error("createRuntime/prestart hook: {0}")]
    Hook(#[from] crate::hooks::HookError),
}

/// What to do once the init process is ready.
#[derive(Debug)]
pub enum StartMode {
    /// Block until a reader opens this fifo (create/start split). The fd is an `O_PATH`
    /// descriptor of the fifo itself, reopened for writing through `/proc/self/fd` once
    /// the init is ready: a descriptor of the state *directory* would be a way out of
    /// the container (a working directory of `/proc/self/fd/N` lands in it).
    WaitFifo(OwnedFd),
    /// Exec right after reporting Ready (exec into a container, `run`).
    Immediately,
}

/// The standard streams for the container process.
#[derive(Debug, Default)]
pub struct Stdio {
    /// Descriptors for 0, 1 and 2; `None` keeps the caller's.
    pub fds: Option<[OwnedFd; 3]>,
    /// A connected unix socket: a new pty's master is sent over it (`--console-socket`).
    pub console_socket: Option<OwnedFd>,
}

/// Everything needed to spawn an init (or an exec'd process).
#[derive(Debug)]
pub struct SpawnConfig<'a> {
    /// The spec (its `process` is what runs).
    pub spec: &'a Spec,
    /// Absolute rootfs path (unused when `exec_in` is set).
    pub rootfs: PathBuf,
    /// When set, this is an exec into the container whose init has this pid: join all
    /// its namespaces instead of creating any, and do no rootfs work.
    pub exec_in: Option<i32>,
    /// Start behaviour.
    pub start: StartMode,
    /// Streams.
    pub stdio: Stdio,
    /// Extra fds to pass through (3.. 3+n).
    pub preserve_fds: u32,
    /// OCI state document (without pid) handed to hooks; `None` runs no hooks.
    pub hook_state: Option<serde_json::Value>,
}

/// A namespace to enter: create a new one or join an existing one.
#[derive(Debug)]
enum NsAction {
    New(CloneFlags),
    Join(CloneFlags, OwnedFd),
}

fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// Order in which namespaces are joined: user first (it grants the rights to join the
/// others), mount last (it changes the filesystem view used to open nothing else).
fn join_rank(f: CloneFlags) -> u8 {
    match f {
        CloneFlags::CLONE_NEWUSER => 0,
        CloneFlags::CLONE_NEWNS => 9,
        _ => 5,
    }
}

fn open_ns(kind: &str, path: &Path) -> Result<OwnedFd, ProcessError> {
    fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(|source| ProcessError::OpenNamespace {
            kind: kind.to_string(),
            path: path.to_path_buf(),
            source,
        })
}

fn plan_namespaces(cfg: &SpawnConfig<'_>) -> Result<Vec<NsAction>, ProcessError> {
    let mut out = Vec::new();
    if let Some(pid) = cfg.exec_in {
        // Join every namespace of the running init that differs from ours.
        for (name, flag) in [
            ("user", CloneFlags::CLONE_NEWUSER),
            ("ipc", CloneFlags::CLONE_NEWIPC),
            ("uts", CloneFlags::CLONE_NEWUTS),
            ("net", CloneFlags::CLONE_NEWNET),
            ("pid", CloneFlags::CLONE_NEWPID),
            ("cgroup", CloneFlags::CLONE_NEWCGROUP),
            ("mnt", CloneFlags::CLONE_NEWNS),
        ] {
            let theirs = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
            let ours = PathBuf::from(format!("/proc/self/ns/{name}"));
            let same = match (fs::metadata(&theirs), fs::metadata(&ours)) {
                (Ok(a), Ok(b)) => {
                    use std::os::unix::fs::MetadataExt;
                    a.ino() == b.ino() && a.dev() == b.dev()
                }
                _ => false,
            };
            if !same {
                out.push(NsAction::Join(flag, open_ns(name, &theirs)?));
            }
        }
        return Ok(out);
    }
    let namespaces = cfg
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for ns in namespaces {
        let flag = ns_flag(ns.typ());
        match ns.path() {
            Some(p) if !p.as_os_str().is_empty() => {
                out.push(NsAction::Join(flag, open_ns(&ns.typ().to_string(), p)?));
            }
            _ => out.push(NsAction::New(flag)),
        }
    }
    out.sort_by_key(|a| match a {
        NsAction::Join(f, _) => join_rank(*f),
        NsAction::New(_) => 10,
    });
    Ok(out)
}

/// The process that was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    /// Pid of the container process in the caller's pid namespace. It is a child of
    /// the caller (CLONE_PARENT), so the caller can wait for it.
    pub pid: i32,
}

/// Spawn the container init (or an exec'd process) and wait until it is Ready.
/// `join_cgroup` is called with the stage-1 pid before any namespace is created, so
/// every process of the container is born inside its cgroup.
///
/// Must be called from a single-threaded process.
pub fn spawn(
    cfg: SpawnConfig<'_>,
    join_cgroup: &mut dyn FnMut(i32) -> Result<(), String>,
) -> Result<Spawned, ProcessError> {
    if cfg.spec.process().is_none() {
        return Err(ProcessError::InvalidSpec("no process".into()));
    }
    let namespaces = plan_namespaces(&cfg)?;
    let (parent, child) = channel::pair()?;
    // SAFETY: the caller is single-threaded (documented contract), so the child gets a
    // consistent copy of memory; it only runs set-up code and then exits or execs.
    let fork = unsafe { nix::unistd::fork() }.map_err(ProcessError::Fork)?;
    match fork {
        nix::unistd::ForkResult::Child => {
            drop(parent);
            let code = match stage1(&cfg, namespaces, &child) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = child.send(&Message::Failed(e));
                    1
                }
            };
            // SAFETY: _exit ends the forked child without running the parent's
            // destructors or atexit handlers twice.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child: stage1_pid } => {
            drop(child);
            drop(namespaces);
            parent_side(&cfg, &parent, stage1_pid, join_cgroup)
        }
    }
}

fn parent_side(
    cfg: &SpawnConfig<'_>,
    chan: &Channel,
    stage1: Pid,
    join_cgroup: &mut dyn FnMut(i32) -> Result<(), String>,
) -> Result<Spawned, ProcessError> {
    let mut init_pid: Option<i32> = None;
    let result = (|| {
        join_cgroup(stage1.as_raw()).map_err(ProcessError::Cgroup)?;
        chan.send(&Message::Proceed)?;
        // Stage-1 (InitPid) and the init (RunHooks, Ready) write to the channel from two
        // processes, so the init's messages can overtake InitPid: hold them until the
        // pid is known.
        let mut ready_early = false;
        let mut hooks_early = false;
        loop {
            match chan.recv(CHILD_TIMEOUT)? {
                Some(Message::WriteIdMappings) => {
                    write_id_mappings(cfg.spec, stage1.as_raw())?;
                    chan.send(&Message::Proceed)?;
                }
                Some(Message::InitPid(pid)) => {
                    init_pid = Some(pid);
                    let _ = waitpid(stage1, None);
                    if hooks_early {
                        hooks_early = false;
                        run_create_hooks(cfg, chan, pid)?;
                    }
                    if ready_early {
                        return Ok(Spawned { pid });
                    }
                }
                Some(Message::RunHooks) if init_pid.is_none() => hooks_early = true,
                Some(Message::Ready) if init_pid.is_none() => ready_early = true,
                Some(Message::RunHooks) => {
                    run_create_hooks(cfg, chan, init_pid.unwrap_or(0))?;
                }
                Some(Message::Ready) => {
                    return init_pid
                        .map(|pid| Spawned { pid })
                        .ok_or(ProcessError::Protocol(Message::Ready));
                }
                Some(Message::Failed(e)) => return Err(ProcessError::Child(e)),
                Some(other) => return Err(ProcessError::Protocol(other)),
                None => {
                    let status = match init_pid {
                        Some(pid) => waitpid(Pid::from_raw(pid), None),
                        None => waitpid(stage1, None),
                    };
                    return Err(ProcessError::ChildVanished(format!("{status:?}")));
                }
            }
        }
    })();
    if result.is_err() {
        // Leave nothing behind: kill and reap whatever was created.
        for pid in [Some(stage1.as_raw()), init_pid].into_iter().flatten() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
        }
    }
    result
}

/// Runs the prestart/createRuntime hooks for init `pid` and tells the init they ran.
fn run_create_hooks(cfg: &SpawnConfig<'_>, chan: &Channel, pid: i32) -> Result<(), ProcessError> {
    let mut state = cfg.hook_state.clone().unwrap_or_default();
    state["pid"] = serde_json::json!(pid);
    if let Some(h) = cfg.spec.hooks() {
        // prestart is the deprecated name for the same moment.
        for list in [h.prestart(), h.create_runtime()].into_iter().flatten() {
            crate::hooks::run_hooks(list, &state)?;
        }
    }
    chan.send(&Message::HooksDone(state.to_string()))?;
    Ok(())
}

fn write_id_mappings(spec: &Spec, pid: i32) -> Result<(), ProcessError> {
    let linux = spec.linux().as_ref();
    let fmt = |maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.map(|m| {
            m.iter()
                .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
                .collect::<String>()
        })
        .unwrap_or_default()
    };
    let uid = fmt(linux.and_then(|l| l.uid_mappings().as_ref()));
    let gid = fmt(linux.and_then(|l| l.gid_mappings().as_ref()));
    for (what, text) in [("gid_map", gid), ("uid_map", uid)] {
        if text.is_empty() {
            continue;
        }
        fs::write(format!("/proc/{pid}/{what}"), text)
            .map_err(|source| ProcessError::IdMapping { what, pid, source })?;
    }
    Ok(())
}

/// A rootfs failure as the parent reads it. A spec the rootfs code refuses (a mount
/// into /proc, also one that reaches it only through the image's symlinks; a device
/// outside /dev) or an image's symlink loop is the pod spec's or the image's fault:
/// its own step, so berthd answers InvalidArgument. Kernel and I/O failures stay
/// "rootfs" (berthd's or the host's).
fn rootfs_child_err(e: rootfs::RootfsError) -> ChildError {
    let step = match e {
        rootfs::RootfsError::InvalidSpec(_) | rootfs::RootfsError::SymlinkLoop(_) => {
            ROOTFS_SPEC_STEP
        }
        rootfs::RootfsError::Sys { .. } | rootfs::RootfsError::Io { .. } => "rootfs",
    };
    child_err(step, e.errno(), e.to_string())
}

fn child_err(step: &str, errno: i32, message: impl Into<String>) -> ChildError {
    ChildError {
        step: step.to_string(),
        errno,
        message: message.into(),
    }
}

fn expect_proceed(chan: &Channel) -> Result<(), ChildError> {
    match chan.recv(CHILD_TIMEOUT) {
        Ok(Some(Message::Proceed)) => Ok(()),
        other => Err(child_err(
            "wait for parent",
            libc::EPROTO,
            format!("{other:?}"),
        )),
    }
}

fn stage1(
    cfg: &SpawnConfig<'_>,
    namespaces: Vec<NsAction>,
    chan: &Channel,
) -> Result<(), ChildError> {
    let sys = LinuxSyscall;
    // If the caller dies mid-way, so does set-up.
    let _ = sys.set_pdeathsig(libc::SIGKILL);
    expect_proceed(chan)?;
    // Inherited by the init. Written here, as the host's root in the host's namespaces:
    // the non-dumpable init in a user namespace could no longer write its own /proc files.
    if let Some(adj) = cfg.spec.process().as_ref().and_then(|p| p.oom_score_adj()) {
        set_oom_score_adj(adj)?;
    }
    // Idmapped mounts need the host's privileges: made now, attached by the init.
    let idmapped = if cfg.exec_in.is_none() {
        crate::idmap::prepare(cfg.spec)
            .map_err(|e| child_err("prepare idmapped mounts", e.errno(), e.to_string()))?
    } else {
        Vec::new()
    };
    if cfg.exec_in.is_none()
        && namespaces
            .iter()
            .any(|n| matches!(n, NsAction::Join(CloneFlags::CLONE_NEWUSER, _)))
    {
        rootfs::precreate_bind_mount_points(cfg.spec, &cfg.rootfs);
    }
    let mut new_flags = CloneFlags::empty();
    let mut new_user = false;
    let mut joined_user = false;
    for ns in &namespaces {
        match ns {
            NsAction::Join(flag, fd) => {
                sys.setns(fd.as_fd(), *flag)
                    .map_err(|e| child_err("setns", e as i32, format!("{flag:?}")))?;
                if *flag == CloneFlags::CLONE_NEWUSER {
                    // Joined first (join_rank): become the namespace's root so that the
                    // files created while setting up the rootfs have a mapped owner.
                    joined_user = true;
                    sys.set_id(0, 0).map_err(|e| {
                        child_err("become root in the joined user namespace", e as i32, "")
                    })?;
                }
            }
            NsAction::New(CloneFlags::CLONE_NEWUSER) => new_user = true,
            NsAction::New(flag) => new_flags |= *flag,
        }
    }
    drop(namespaces);
    if new_user {
        sys.unshare(CloneFlags::CLONE_NEWUSER)
            .map_err(|e| child_err("unshare user namespace", e as i32, ""))?;
        chan.send(&Message::WriteIdMappings)
            .map_err(|e| child_err("request id mappings", libc::EPIPE, e.to_string()))?;
        expect_proceed(chan)?;
        sys.set_id(0, 0)
            .map_err(|e| child_err("become root in user namespace", e as i32, ""))?;
    }
    if !new_flags.is_empty() {
        sys.unshare(new_flags)
            .map_err(|e| child_err("unshare", e as i32, format!("{new_flags:?}")))?;
    }
    if new_flags.contains(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)) {
        write_time_offsets(cfg.spec)?;
    }
    // The init is born non-dumpable and stays so until its execve: until then it is a
    // copy of a host binary with host descriptors, and the container's processes (same
    // pid namespace) must not reach its /proc/<pid>/{exe,fd,cwd,mem} (CVE-2019-5736,
    // CVE-2024-21626). execve makes the container's own program dumpable again.
    set_dumpable(false)?;
    // SAFETY: a raw fork-like clone (no new stack): the child continues on a copy of
    // this single-threaded process. CLONE_PARENT makes the init a child of the caller
    // so the caller can wait for it; SIGCHLD is its exit signal.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::c_ulong::try_from(libc::CLONE_PARENT | libc::SIGCHLD).unwrap_or(0),
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match rc {
        -1 => Err(child_err("clone init", Errno::last_raw(), "")),
        0 => {
            let res = init(cfg, chan, new_user || joined_user, new_flags, &idmapped);
            let err = match res {
                Ok(never) => match never {},
                Err(e) => e,
            };
            let sent = chan.send(&Message::Failed(err.clone())).is_ok();
            // Past Ready nobody reads the channel any more: say it on stderr instead.
            if !sent || READY_SENT.load(std::sync::atomic::Ordering::Relaxed) {
                eprintln!("berth init: {err}");
            }
            // SAFETY: ends this child without unwinding into the caller's frames.
            unsafe { libc::_exit(127) }
        }
        pid => {
            let pid = i32::try_from(pid).unwrap_or(-1);
            chan.send(&Message::InitPid(pid))
                .map_err(|e| child_err("report init pid", libc::EPIPE, e.to_string()))
        }
    }
}

/// Before pivot_root: have the caller run createRuntime/prestart hooks (runtime
/// namespace), then run createContainer hooks here (container namespaces, paths still
/// resolved on the host). Returns the state for startContainer hooks.
fn container_hooks(
    cfg: &SpawnConfig<'_>,
    chan: &Channel,
) -> Result<Option<serde_json::Value>, ChildError> {
    let (Some(_), Some(h)) = (&cfg.hook_state, cfg.spec.hooks()) else {
        return Ok(None);
    };
    chan.send(&Message::RunHooks)
        .map_err(|e| child_err("request hooks", libc::EPIPE, e.to_string()))?;
    let state: serde_json::Value = match chan.recv(CHILD_TIMEOUT) {
        Ok(Some(Message::HooksDone(s))) => serde_json::from_str(&s).unwrap_or_default(),
        other => {
            return Err(child_err(
                "wait for createRuntime hooks",
                libc::EPROTO,
                format!("{other:?}"),
            ));
        }
    };
    if let Some(list) = h.create_container() {
        crate::hooks::run_hooks(list, &state)
            .map_err(|e| child_err("createContainer hook", libc::EIO, e.to_string()))?;
    }
    Ok(Some(state))
}

/// Switch to the spec's user with the spec's capabilities: bounding set first (needs
/// CAP_SETPCAP), groups, uid/gid with keepcaps so permitted survives, umask, the other
/// four sets, then no_new_privs.
fn apply_identity(
    sys: &dyn Syscall,
    process: &oci_spec::runtime::Process,
    set_groups: bool,
) -> Result<(), ChildError> {
    let caps = process.capabilities().as_ref();
    if let Some(c) = caps {
        security::apply_bounding(sys, c)
            .map_err(|e| child_err("capabilities", e.errno(), e.to_string()))?;
    }
    let user = process.user();
    let mut groups: Vec<u32> = user.additional_gids().clone().unwrap_or_default();
    groups.retain(|g| *g != user.gid());
    groups.insert(0, user.gid());
    if set_groups {
        sys.setgroups(&groups)
            .map_err(|e| child_err("setgroups", e as i32, format!("{groups:?}")))?;
    }
    sys.set_keep_caps(true)
        .map_err(|e| child_err("keep capabilities", e as i32, ""))?;
    sys.set_id(user.uid(), user.gid()).map_err(|e| {
        child_err(
            "set uid/gid",
            e as i32,
            format!("{}:{}", user.uid(), user.gid()),
        )
    })?;
    sys.set_keep_caps(false)
        .map_err(|e| child_err("keep capabilities", e as i32, ""))?;
    if let Some(mask) = user.umask() {
        sys.umask(mask);
    }
    if let Some(c) = caps {
        security::apply_capabilities(sys, c)
            .map_err(|e| child_err("capabilities", e.errno(), e.to_string()))?;
    }
    if process.no_new_privileges() == Some(true) {
        sys.set_no_new_privs()
            .map_err(|e| child_err("no_new_privs", e as i32, ""))?;
    }
    Ok(())
}

/// Ask AppArmor to confine the process from its next execve on. A host without
/// AppArmor skips this cleanly (the profile cannot be honoured there anyway).
fn apply_apparmor(enabled: bool, profile: &str) -> Result<(), ChildError> {
    use std::os::unix::fs::OpenOptionsExt;
    if !enabled {
        return Ok(());
    }
    let data = format!("exec {profile}");
    let fail =
        |errno: i32, what: &str| child_err("apparmor profile", errno, format!("{profile}: {what}"));
    for attr in ["/proc/self/attr/apparmor/exec", "/proc/self/attr/exec"] {
        // The container's /proc is what the spec mounted there: write only to a file
        // the kernel's procfs serves (a bind mount or symlink over it would take the
        // label for a file of the attacker's choosing), opened without following links.
        let file = match fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(attr)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(fail(e.raw_os_error().unwrap_or(libc::EIO), attr)),
        };
        let fs_type = nix::sys::statfs::fstatfs(&file)
            .map_err(|e| fail(e as i32, attr))?
            .filesystem_type();
        if fs_type != nix::sys::statfs::PROC_SUPER_MAGIC {
            return Err(fail(libc::EXDEV, &format!("{attr} is not on procfs")));
        }
        return std::io::Write::write_all(&mut &file, data.as_bytes())
            .map_err(|e| fail(e.raw_os_error().unwrap_or(libc::EIO), attr));
    }
    Err(child_err(
        "apparmor profile",
        libc::ENOENT,
        "no /proc/self/attr/apparmor/exec in the container",
    ))
}

/// Clock offsets of a new time namespace: writable only before its first process
/// exists, i.e. between unshare(CLONE_NEWTIME) and the clone of the init.
fn write_time_offsets(spec: &Spec) -> Result<(), ChildError> {
    let Some(offsets) = spec.linux().as_ref().and_then(|l| l.time_offsets().clone()) else {
        return Ok(());
    };
    let mut text = String::new();
    let mut clocks: Vec<_> = offsets.iter().collect();
    clocks.sort_by_key(|(k, _)| k.as_str());
    for (clock, off) in clocks {
        if clock != "monotonic" && clock != "boottime" {
            return Err(child_err(
                "time offsets",
                libc::EINVAL,
                format!("unknown clock {clock:?}"),
            ));
        }
        text.push_str(&format!(
            "{clock} {} {}\n",
            off.secs().unwrap_or(0),
            off.nanosecs().unwrap_or(0)
        ));
    }
    fs::write("/proc/self/timens_offsets", text).map_err(|e| {
        child_err(
            "time offsets",
            e.raw_os_error().unwrap_or(libc::EIO),
            "/proc/self/timens_offsets",
        )
    })
}

/// Execution domain (`linux.personality`), e.g. LINUX32 so `uname -m` says i686.
fn set_personality(spec: &Spec) -> Result<(), ChildError> {
    use oci_spec::runtime::LinuxPersonalityDomain;
    let Some(p) = spec.linux().as_ref().and_then(|l| l.personality().clone()) else {
        return Ok(());
    };
    let persona: libc::c_ulong = match p.domain() {
        LinuxPersonalityDomain::PerLinux => 0x0000,
        LinuxPersonalityDomain::PerLinux32 => 0x0008,
    };
    // SAFETY: personality(2) takes a plain integer and only changes this process.
    let rc = unsafe { libc::personality(persona) };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| child_err("personality", e as i32, format!("{:?}", p.domain())))
}

/// I/O scheduling class and level (`process.ioPriority`).
fn set_io_priority(process: &oci_spec::runtime::Process) -> Result<(), ChildError> {
    use oci_spec::runtime::IOPriorityClass;
    let Some(io) = process.io_priority() else {
        return Ok(());
    };
    let class: i64 = match io.class() {
        IOPriorityClass::IoprioClassRt => 1,
        IOPriorityClass::IoprioClassBe => 2,
        IOPriorityClass::IoprioClassIdle => 3,
    };
    let value = (class << 13) | io.priority().clamp(0, 7);
    // SAFETY: ioprio_set(IOPRIO_WHO_PROCESS, 0 = this process, value) takes integers only.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, value) };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| child_err("ioprio_set", e as i32, format!("{:?}", io.class())))
}

/// The container's /etc/passwd, which the image controls: a FIFO or a device there
/// must not block the init, nor a huge file fill its memory. Not a regular file, or
/// unreadable: empty. At most 1 MiB is read.
fn read_passwd_bounded() -> String {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/etc/passwd")
    else {
        return String::new();
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return String::new();
    }
    let mut text = String::new();
    let _ = f.take(1 << 20).read_to_string(&mut text);
    text
}

/// The home directory of `uid` in a passwd(5) text, or "/".
fn home_of(passwd: &str, uid: u32) -> String {
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 6 && f[2].parse() == Ok(uid)).then(|| f[5].to_string())
        })
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

/// Resolve the executable like execvp would, but inside the container, so "not found"
/// is reported at create time.
fn find_executable(arg0: &str, env: &[String]) -> Result<PathBuf, ChildError> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if arg0.contains('/') {
        return if is_exec(Path::new(arg0)) {
            Ok(PathBuf::from(arg0))
        } else {
            Err(child_err(
                "find executable",
                libc::ENOENT,
                format!("{arg0}: no such executable file"),
            ))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|d| Path::new(d).join(arg0))
        .find(|p| is_exec(p))
        .ok_or_else(|| {
            child_err(
                "find executable",
                libc::ENOENT,
                format!("{arg0}: executable file not found in $PATH"),
            )
        })
}

fn rlimit_resource(t: oci_spec::runtime::PosixRlimitType) -> Option<u32> {
    use oci_spec::runtime::PosixRlimitType as T;
    let r = match t {
        T::RlimitCpu => libc::RLIMIT_CPU,
        T::RlimitFsize => libc::RLIMIT_FSIZE,
        T::RlimitData => libc::RLIMIT_DATA,
        T::RlimitStack => libc::RLIMIT_STACK,
        T::RlimitCore => libc::RLIMIT_CORE,
        T::RlimitRss => libc::RLIMIT_RSS,
        T::RlimitNproc => libc::RLIMIT_NPROC,
        T::RlimitNofile => libc::RLIMIT_NOFILE,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        T::RlimitAs => libc::RLIMIT_AS,
        T::RlimitLocks => libc::RLIMIT_LOCKS,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        T::RlimitNice => libc::RLIMIT_NICE,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO,
        T::RlimitRttime => libc::RLIMIT_RTTIME,
    };
    Some(r)
}

/// Raise oom_score_adj to the spec's value, never below our own (lowering needs
/// CAP_SYS_RESOURCE, which hosts like ours do not grant even to root).
fn set_oom_score_adj(wanted: i32) -> Result<(), ChildError> {
    let current: i32 = fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let value = wanted.max(current);
    if value == current {
        return Ok(());
    }
    fs::write("/proc/self/oom_score_adj", value.to_string()).map_err(|e| {
        child_err(
            "set oom_score_adj",
            e.raw_os_error().unwrap_or(libc::EIO),
            value.to_string(),
        )
    })
}

fn dup_stdio(stdio: &Stdio) -> Result<(), ChildError> {
    let Some(fds) = &stdio.fds else {
        return Ok(());
    };
    // First copy every source above 2: a source numbered 0..2 would otherwise be
    // overwritten before its turn, and dup2 onto itself would keep FD_CLOEXEC.
    let mut high = [0; 3];
    for (slot, fd) in high.iter_mut().zip(fds.iter()) {
        // SAFETY: F_DUPFD_CLOEXEC duplicates an open fd to a free number ≥ 3.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
        *slot = Errno::result(rc).map_err(|e| child_err("set up stdio", e as i32, "dup"))?;
    }
    for (target, src) in (0..3).zip(high) {
        // SAFETY: dup2 of an fd we just created onto 0..2 of this (child) process; the
        // new descriptor does not inherit FD_CLOEXEC.
        let rc = unsafe { libc::dup2(src, target) };
        Errno::result(rc)
            .map_err(|e| child_err("set up stdio", e as i32, format!("fd {target}")))?;
        // SAFETY: closing the temporary copy, owned by nobody else.
        unsafe { libc::close(src) };
    }
    Ok(())
}

/// Open a pty inside the container, make it our controlling terminal and stdio, and
/// send the master to the console socket.
fn setup_console(socket: BorrowedFd<'_>) -> Result<(), ChildError> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| child_err("open pty master", e as i32, ""))?;
    nix::pty::grantpt(&master).map_err(|e| child_err("grantpt", e as i32, ""))?;
    nix::pty::unlockpt(&master).map_err(|e| child_err("unlockpt", e as i32, ""))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| child_err("ptsname", e as i32, ""))?;
    let slave = nix::fcntl::open(
        Path::new(&name),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| child_err("open pty slave", e as i32, name.clone()))?;
    nix::unistd::setsid().map_err(|e| child_err("setsid", e as i32, ""))?;
    // SAFETY: TIOCSCTTY on an open terminal fd with argument 0.
    let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
    Errno::result(rc).map_err(|e| child_err("set controlling terminal", e as i32, ""))?;
    for target in 0..3 {
        // SAFETY: dup2 of an open fd onto 0..2 of this child.
        let rc = unsafe { libc::dup2(slave.as_raw_fd(), target) };
        Errno::result(rc).map_err(|e| child_err("dup pty slave", e as i32, ""))?;
    }
    let fds = [master.as_raw_fd()];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(b"console")];
    nix::sys::socket::sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(|e| child_err("send pty master to console socket", e as i32, ""))?;
    Ok(())
}

/// Close every fd from `from` on except those in `keep`: the init must not hold the
/// caller's descriptors (a caller's sync pipe would otherwise stay open until exec).
fn close_fds_except(from: u32, keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|k| u32::try_from(*k).ok())
        .filter(|k| *k >= from)
        .collect();
    keep.sort_unstable();
    let mut start = from;
    for k in keep.into_iter().chain(std::iter::once(u32::MAX)) {
        if k > start {
            // SAFETY: closes descriptors this process does not use (everything it still
            // needs is in `keep`); the owners of those numbers never run again here.
            let _ = unsafe { libc::syscall(libc::SYS_close_range, start, k - 1, 0u32) };
        }
        start = k.saturating_add(1);
    }
}

/// Receive the pty master a container's init sends over a console socket (the other
/// end of the socket passed as [`Stdio::console_socket`]).
pub fn recv_pty_master(sock: &OwnedFd, timeout: Duration) -> Result<OwnedFd, ProcessError> {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut pfd = [nix::poll::PollFd::new(
        sock.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms)) {
        Ok(0) => {
            return Err(ProcessError::Console(format!(
                "no pty master within {timeout:?}"
            )));
        }
        Ok(_) => {}
        Err(e) => return Err(ProcessError::Console(format!("poll: {e}"))),
    }
    let mut buf = [0u8; 64];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = nix::sys::socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| ProcessError::Console(format!("recvmsg: {e}")))?;
    let cmsgs = msg
        .cmsgs()
        .map_err(|e| ProcessError::Console(format!("control message: {e}")))?;
    for c in cmsgs {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c
            && let Some(fd) = fds.first()
        {
            // SAFETY: the fd was just received via SCM_RIGHTS and belongs to us alone.
            return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    Err(ProcessError::Console("message carried no fd".into()))
}

/// Mark every fd from `from` on close-on-exec.
fn cloexec_from(from: u32) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags; it cannot
    // invalidate a descriptor this process is still using.
    let _ = unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 4u32) };
}

enum Never {}

/// Set in the init once Ready is sent (the parent stops listening after that).
static READY_SENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn init(
    cfg: &SpawnConfig<'_>,
    chan: &Channel,
    new_user: bool,
    new_flags: CloneFlags,
    idmapped: &[(usize, OwnedFd)],
) -> Result<Never, ChildError> {
    let sys = LinuxSyscall;
    let spec = cfg.spec;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| child_err("spec", libc::EINVAL, "no process"))?;
    let args = process.args().clone().unwrap_or_default();
    let arg0 = args
        .first()
        .ok_or_else(|| child_err("spec", libc::EINVAL, "process.args is empty"))?
        .clone();
    let mut env = process.env().clone().unwrap_or_default();

    dup_stdio(&cfg.stdio)?;
    // What the init keeps: the channel and console socket (sockets cannot be entered as
    // directories) and the O_PATH fd of the exec fifo itself (not of its directory).
    let mut keep = vec![chan.as_raw_fd()];
    keep.extend(cfg.stdio.console_socket.as_ref().map(|s| s.as_raw_fd()));
    if let StartMode::WaitFifo(fifo) = &cfg.start {
        keep.push(fifo.as_raw_fd());
    }
    let keep_for_rootfs: Vec<RawFd> = keep
        .iter()
        .copied()
        .chain(idmapped.iter().map(|(_, fd)| fd.as_raw_fd()))
        .collect();
    close_fds_except(3 + cfg.preserve_fds, &keep_for_rootfs);

    // Looked up before pivot_root, on the host's /sys.
    let apparmor = fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .map(|s| s.trim() == "Y")
        .unwrap_or(false);

    let mut hook_state: Option<serde_json::Value> = None;
    if cfg.exec_in.is_none() {
        if !new_flags.contains(CloneFlags::CLONE_NEWNS) {
            return Err(child_err(
                "rootfs",
                libc::EINVAL,
                "the spec needs a new mount namespace",
            ));
        }
        let plan = RootfsPlan {
            spec,
            rootfs: &cfg.rootfs,
            cgroups: rootfs::host_cgroup_hierarchies(),
            in_user_ns: new_user,
            idmapped,
        };
        let to_child = rootfs_child_err;
        rootfs::prepare_rootfs(&sys, &plan).map_err(to_child)?;
        hook_state = container_hooks(cfg, chan)?;
        rootfs::pivot_into(&sys, spec, &cfg.rootfs).map_err(to_child)?;
        if new_flags.contains(CloneFlags::CLONE_NEWUTS) {
            rootfs::set_names(&sys, spec).map_err(to_child)?;
        }
        rootfs::finish_rootfs(&sys, spec, Path::new("/")).map_err(to_child)?;
    }
    // The idmapped mounts' fds are detached host directories: gone before any chdir.
    close_fds_except(3 + cfg.preserve_fds, &keep);

    if let Some(sock) = &cfg.stdio.console_socket {
        setup_console(sock.as_fd())?;
    } else if process.terminal() == Some(true)
        && std::io::IsTerminal::is_terminal(&std::io::stdin())
    {
        // No console socket: use the terminal we were given (interactive `run`).
        let _ = nix::unistd::setsid();
        // SAFETY: TIOCSCTTY on fd 0, which is a terminal; failure is harmless.
        let _ = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    }

    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        apply_apparmor(apparmor, profile)?;
    }

    set_io_priority(process)?;
    set_personality(spec)?;

    for rl in process.rlimits().as_deref().unwrap_or(&[]) {
        if let Some(resource) = rlimit_resource(rl.typ()) {
            sys.set_rlimit(Rlimit {
                resource,
                soft: rl.soft(),
                hard: rl.hard(),
            })
            .map_err(|e| child_err("setrlimit", e as i32, format!("{:?}", rl.typ())))?;
        }
    }

    // Nothing the init holds may survive execve but stdio and the preserved fds, and
    // that is settled before the working directory is entered.
    cloexec_from(3 + cfg.preserve_fds);
    // An exec joins a running container: its working directory must exist already.
    enter_working_dir(process.cwd(), cfg.exec_in.is_none())?;
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        // Like runc: HOME from the container's /etc/passwd, else "/".
        let passwd = read_passwd_bounded();
        env.push(format!("HOME={}", home_of(&passwd, process.user().uid())));
    }
    let exe = find_executable(&arg0, &env)?;

    let seccomp = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .map(security::build_seccomp)
        .transpose()
        .map_err(|e| child_err("build seccomp filter", e.errno(), e.to_string()))?;
    let nnp = process.no_new_privileges() == Some(true);

    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it while we have it.
    if !nnp && let Some(f) = &seccomp {
        f.load()
            .map_err(|e| child_err("load seccomp filter", libc::EPERM, e.to_string()))?;
    }
    let set_groups = !(new_user
        && spec
            .linux()
            .as_ref()
            .and_then(|l| l.gid_mappings().as_ref())
            .is_none());
    apply_identity(&sys, process, set_groups)?;

    let c_exe = CString::new(exe.as_os_str().as_encoded_bytes())
        .map_err(|_| child_err("exec", libc::EINVAL, "NUL in path"))?;
    let c_args: Vec<CString> = args
        .iter()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let c_env: Vec<CString> = env
        .iter()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();

    cloexec_from(3 + cfg.preserve_fds);
    chan.send(&Message::Ready)
        .map_err(|e| child_err("report ready", libc::EPIPE, e.to_string()))?;
    READY_SENT.store(true, std::sync::atomic::Ordering::Relaxed);

    if let StartMode::WaitFifo(fifo) = &cfg.start {
        // Blocks until `start` opens the fifo for reading. Reopening our own O_PATH fd
        // through the container's /proc reaches the fifo itself and nothing else.
        let path = format!("/proc/self/fd/{}", fifo.as_raw_fd());
        let fifo = nix::fcntl::open(
            path.as_str(),
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| child_err("open exec fifo", e as i32, path))?;
        nix::unistd::write(&fifo, b"0").map_err(|e| child_err("write exec fifo", e as i32, ""))?;
    }
    if let (Some(state), Some(h)) = (&hook_state, spec.hooks())
        && let Some(list) = h.start_container()
    {
        let mut state = state.clone();
        state["status"] = serde_json::json!("running");
        crate::hooks::run_hooks(list, &state)
            .map_err(|e| child_err("startContainer hook", libc::EIO, e.to_string()))?;
    }
    if nnp && let Some(f) = &seccomp {
        f.load()
            .map_err(|e| child_err("load seccomp filter", libc::EPERM, e.to_string()))?;
    }
    let err = nix::unistd::execve(&c_exe, &c_args, &c_env).unwrap_err();
    Err(child_err("exec", err as i32, exe.display().to_string()))
}

/// PR_SET_DUMPABLE: a non-dumpable process's /proc/<pid> files belong to the host's
/// root and only a CAP_SYS_PTRACE holder of the host may open its exe, fds or memory.
fn set_dumpable(on: bool) -> Result<(), ChildError> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0|1) only changes a flag of this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, libc::c_ulong::from(on), 0, 0, 0) };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| child_err("set dumpable", e as i32, on.to_string()))
}

/// Enter the process's working directory, resolved inside the container root, never
/// through a magic link (`/proc/self/fd/N`, `/proc/<pid>/cwd`...), and check that the
/// kernel agrees the result is inside the root. With `create`, missing directories are
/// made like runc does (mode 0755, owned by the init's root), one component at a time,
/// each inside the root.
fn enter_working_dir(cwd: &Path, create: bool) -> Result<(), ChildError> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let shown = cwd.display().to_string();
    let fail = |errno: rustix::io::Errno, why: &str| {
        let message = if why.is_empty() {
            shown.clone()
        } else {
            format!("{shown}: {why}")
        };
        child_err("working directory", errno.raw_os_error(), message)
    };
    if !cwd.is_absolute() {
        return Err(fail(rustix::io::Errno::INVAL, "not an absolute path"));
    }
    let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let root = rustix::fs::open("/", dir_flags, Mode::empty())
        .map_err(|e| fail(e, "opening the container root"))?;
    let open_in_root = |p: &Path| rustix::fs::openat2(&root, p, dir_flags, Mode::empty(), how);
    let explain = |e: rustix::io::Errno| match e {
        rustix::io::Errno::LOOP => {
            "a magic link (/proc/.../fd/N, /proc/.../cwd) or a symlink loop on the way"
        }
        rustix::io::Errno::NOTDIR => "not a directory",
        rustix::io::Errno::NOENT => "does not exist",
        _ => "",
    };
    let dir = match open_in_root(cwd) {
        Ok(d) => d,
        Err(rustix::io::Errno::NOENT) if create => {
            make_working_dir(&root, cwd, &open_in_root).map_err(|(e, why)| fail(e, &why))?
        }
        Err(e) => return Err(fail(e, explain(e))),
    };
    rustix::process::fchdir(&dir).map_err(|e| fail(e, "fchdir"))?;
    // The getcwd syscall answers "(unreachable)/..." for a directory outside our root.
    match rustix::process::getcwd(Vec::new()) {
        Ok(now) if now.as_bytes().starts_with(b"/") => Ok(()),
        Ok(now) => Err(fail(
            rustix::io::Errno::XDEV,
            &format!("outside the container root ({})", now.to_string_lossy()),
        )),
        Err(e) => Err(fail(e, "getcwd after entering it")),
    }
}

/// `mkdir -p` of `cwd` inside `root`: each prefix is resolved from the root (symlinks
/// the image planted stay inside it, magic links are refused) and a missing component
/// is made with mkdirat in the directory that resolution returned, by its plain name.
fn make_working_dir(
    root: &OwnedFd,
    cwd: &Path,
    open_in_root: &dyn Fn(&Path) -> rustix::io::Result<OwnedFd>,
) -> Result<OwnedFd, (rustix::io::Errno, String)> {
    use std::path::Component;
    let mut prefix = PathBuf::from("/");
    let mut parent = rustix::io::dup(root).map_err(|e| (e, "dup".to_string()))?;
    let old_mask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let res = (|| {
        for comp in cwd.components() {
            let name = match comp {
                Component::RootDir | Component::CurDir => continue,
                Component::Normal(n) => n,
                Component::ParentDir | Component::Prefix(_) => {
                    return Err((
                        rustix::io::Errno::INVAL,
                        "a missing working directory with '..' in it is not created".into(),
                    ));
                }
            };
            prefix.push(name);
            let here = match open_in_root(&prefix) {
                Ok(d) => d,
                Err(rustix::io::Errno::NOENT) => {
                    match rustix::fs::mkdirat(&parent, name, rustix::fs::Mode::from_raw_mode(0o755))
                    {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err((e, format!("mkdir {}", prefix.display()))),
                    }
                    open_in_root(&prefix).map_err(|e| (e, format!("open {}", prefix.display())))?
                }
                Err(e) => return Err((e, format!("open {}", prefix.display()))),
            };
            parent = here;
        }
        Ok(parent)
    })();
    rustix::process::umask(old_mask);
    res
}

/// Wrap a raw fd number owned by the caller (for the CLI's inherited descriptors).
///
/// # Safety
/// `fd` must be open and owned by nobody else.
pub unsafe fn owned_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: guaranteed by the caller.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bind whose destination reaches /proc only through an image symlink is refused
    /// by the rootfs checks; the parent must read that as the spec's fault (berthd:
    /// InvalidArgument), while a kernel failure stays "rootfs" (Internal).
    #[test]
    fn a_mount_into_proc_through_an_image_symlink_is_the_specs_fault() {
        use crate::sys::fake::RecordingSyscall;
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::os::unix::fs::symlink("/proc/sys", rootfs.join("etc/evil")).unwrap();
        let mut spec = Spec::default();
        let mut m = oci_spec::runtime::Mount::default();
        m.set_destination("/etc/evil/kernel".into());
        m.set_source(Some(tmp.path().to_path_buf()));
        m.set_typ(Some("bind".into()));
        m.set_options(Some(vec!["rbind".into()]));
        spec.set_mounts(Some(vec![m]));
        let plan = RootfsPlan {
            spec: &spec,
            rootfs: &rootfs,
            cgroups: vec![],
            in_user_ns: false,
            idmapped: &[],
        };
        let err = rootfs::prepare_rootfs(&RecordingSyscall::new(), &plan).unwrap_err();
        let child = rootfs_child_err(err);
        assert!(child.is_caused_by_spec(), "{child}");
        assert_eq!(child.errno, libc::EINVAL, "{child}");
        assert!(child.message.contains("/etc/evil/kernel"), "{child}");
        assert!(child.message.contains("symlinks"), "{child}");

        let kernel = rootfs_child_err(rootfs::RootfsError::Sys {
            step: "mount",
            path: "/etc".into(),
            errno: Errno::EPERM,
        });
        assert!(!kernel.is_caused_by_spec(), "{kernel}");
        assert_eq!(kernel.step, "rootfs");
    }

    fn process_json(json: &str) -> oci_spec::runtime::Process {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn identity_sequence_drops_bounding_first_and_sets_nnp_last() {
        use crate::sys::CapSet;
        use crate::sys::fake::{Call, RecordingSyscall};
        let p = process_json(
            r#"{"cwd": "/", "noNewPrivileges": true,
                "user": {"uid": 1000, "gid": 1001, "additionalGids": [10, 1001], "umask": 18},
                "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                                 "permitted": ["CAP_KILL"], "inheritable": [], "ambient": []}}"#,
        );
        let sys = RecordingSyscall::new();
        apply_identity(&sys, &p, true).unwrap();
        let cap = |set, caps: &[&str]| Call::SetCapability {
            set,
            caps: caps.iter().map(|c| c.to_string()).collect(),
        };
        assert_eq!(
            sys.calls(),
            vec![
                cap(CapSet::Bounding, &["CAP_KILL"]),
                Call::Setgroups(vec![1001, 10]),
                Call::SetKeepCaps(true),
                Call::SetId {
                    uid: 1000,
                    gid: 1001
                },
                Call::SetKeepCaps(false),
                Call::Umask(18),
                cap(CapSet::Inheritable, &[]),
                cap(CapSet::Effective, &["CAP_KILL"]),
                cap(CapSet::Permitted, &["CAP_KILL"]),
                cap(CapSet::Ambient, &[]),
                Call::SetNoNewPrivs,
            ]
        );
    }

    #[test]
    fn identity_failure_names_the_step_and_stops_there() {
        use crate::sys::fake::{Call, RecordingSyscall};
        let p = process_json(r#"{"cwd": "/", "user": {"uid": 5, "gid": 5}}"#);
        let sys = RecordingSyscall::new();
        sys.fail_when(|c| matches!(c, Call::SetId { .. }), Errno::EPERM);
        let err = apply_identity(&sys, &p, false).unwrap_err();
        assert_eq!((err.step.as_str(), err.errno), ("set uid/gid", libc::EPERM));
        assert!(!sys.calls().contains(&Call::SetKeepCaps(false)));
        assert!(!sys.calls().iter().any(|c| matches!(c, Call::Setgroups(_))));
    }

    #[test]
    fn home_comes_from_passwd_or_defaults_to_root_dir() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\nodd:x:7:7\n";
        assert_eq!(home_of(passwd, 0), "/root");
        assert_eq!(home_of(passwd, 33), "/var/www");
        assert_eq!(home_of(passwd, 7), "/");
        assert_eq!(home_of(passwd, 1000), "/");
    }

    #[test]
    fn executable_lookup_uses_the_spec_path_and_reports_enoent() {
        let err = find_executable(
            "definitely-not-a-command-xyz",
            &["PATH=/bin:/usr/bin".into()],
        )
        .unwrap_err();
        assert_eq!(err.errno, libc::ENOENT);
        assert_eq!(err.step, "find executable");
        assert_eq!(
            find_executable("sh", &["PATH=/nonexistent:/bin".into()]).unwrap(),
            PathBuf::from("/bin/sh")
        );
    }

    #[test]
    fn namespaces_with_paths_are_joined_user_first_mount_last() {
        let mut spec = Spec::default();
        let mut linux = spec.linux().clone().unwrap();
        let mk = |t, p: Option<&str>| {
            let mut n = oci_spec::runtime::LinuxNamespace::default();
            n.set_typ(t);
            n.set_path(p.map(PathBuf::from));
            n
        };
        linux.set_namespaces(Some(vec![
            mk(LinuxNamespaceType::Mount, Some("/proc/self/ns/mnt")),
            mk(LinuxNamespaceType::Network, Some("/proc/self/ns/net")),
            mk(LinuxNamespaceType::Pid, None),
            mk(LinuxNamespaceType::User, Some("/proc/self/ns/user")),
        ]));
        spec.set_linux(Some(linux));
        let cfg = SpawnConfig {
            spec: &spec,
            rootfs: PathBuf::from("/"),
            exec_in: None,
            start: StartMode::Immediately,
            stdio: Stdio::default(),
            preserve_fds: 0,
            hook_state: None,
        };
        let plan = plan_namespaces(&cfg).unwrap();
        let kinds: Vec<String> = plan
            .iter()
            .map(|a| match a {
                NsAction::Join(f, _) => format!("join {f:?}"),
                NsAction::New(f) => format!("new {f:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "join CloneFlags(CLONE_NEWUSER)",
                "join CloneFlags(CLONE_NEWNET)",
                "join CloneFlags(CLONE_NEWNS)",
                "new CloneFlags(CLONE_NEWPID)"
            ]
        );
    }

    #[test]
    fn missing_namespace_path_is_a_typed_error() {
        let mut spec = Spec::default();
        let mut linux = spec.linux().clone().unwrap();
        let mut n = oci_spec::runtime::LinuxNamespace::default();
        n.set_typ(LinuxNamespaceType::Network);
        n.set_path(Some("/nonexistent/ns/net".into()));
        linux.set_namespaces(Some(vec![n]));
        spec.set_linux(Some(linux));
        let cfg = SpawnConfig {
            spec: &spec,
            rootfs: PathBuf::from("/"),
            exec_in: None,
            start: StartMode::Immediately,
            stdio: Stdio::default(),
            preserve_fds: 0,
            hook_state: None,
        };
        let err = plan_namespaces(&cfg).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ns/net"), "{err}");
    }
}
