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

use std::fs;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use crate::channel::{self, Channel, ChildError, Message, ROOTFS_SPEC_STEP};
use crate::pid;
use crate::rootfs;
use crate::sys::Errno;

mod identity;
mod init;
mod namespaces;
mod stage1;
mod stdio;

use namespaces::plan_namespaces;
use stage1::stage1;
pub use stdio::{console_socketpair, recv_pty_master};

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
                    let status = match init_pid.and_then(pid::Pid::new) {
                        Some(pid) => pid.wait(None),
                        None => waitpid(stage1, None),
                    };
                    return Err(ProcessError::ChildVanished(format!("{status:?}")));
                }
            }
        }
    })();
    if result.is_err() {
        // Leave nothing behind: kill and reap whatever was created.
        // A pid of 0 or less (a confused InitPid) names a group: never signalled.
        for pid in [Some(stage1.as_raw()), init_pid]
            .into_iter()
            .flatten()
            .filter_map(pid::Pid::new)
        {
            let _ = pid.kill(nix::sys::signal::Signal::SIGKILL);
            let _ = pid.wait(None);
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
    use super::identity::{apply_identity, find_executable, home_of};
    use super::namespaces::NsAction;
    use super::*;
    use crate::rootfs::RootfsPlan;
    use oci_spec::runtime::LinuxNamespaceType;

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
