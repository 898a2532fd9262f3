//! The container's init: createContainer hooks, the root filesystem, identity and
//! limits, stdio, then Ready, the wait for start, seccomp and execve.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::identity::{
    apply_apparmor, apply_identity, find_executable, home_of, read_passwd_bounded, rlimit_resource,
    set_io_priority, set_personality,
};
use super::stdio::{cloexec_from, close_fds_except, dup_stdio, setup_console};
use super::{CHILD_TIMEOUT, SpawnConfig, StartMode, child_err, rootfs_child_err};
use crate::channel::{Channel, ChildError, Message};
use crate::rootfs::{self, RootfsPlan};
use crate::security;
use crate::sys::{CloneFlags, Errno, Rlimit, Syscall, linux::LinuxSyscall};

/// Before pivot_root: have the caller run createRuntime/prestart hooks (runtime
/// namespace), then run createContainer hooks here (container namespaces, paths still
/// resolved on the host). Returns the state for startContainer hooks.
pub(super) fn container_hooks(
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

pub(super) enum Never {}

/// Set in the init once Ready is sent (the parent stops listening after that).
pub(super) static READY_SENT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub(super) fn init(
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
pub(super) fn set_dumpable(on: bool) -> Result<(), ChildError> {
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
pub(super) fn enter_working_dir(cwd: &Path, create: bool) -> Result<(), ChildError> {
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
pub(super) fn make_working_dir(
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
