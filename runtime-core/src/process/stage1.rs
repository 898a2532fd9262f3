//! Stage 1: the forked child that joins and creates namespaces, has the caller write
//! the id mappings, and clones the init.

use std::os::fd::AsFd;

use super::identity::{set_oom_score_adj, write_time_offsets};
use super::init::{READY_SENT, init, set_dumpable};
use super::namespaces::NsAction;
use super::{SpawnConfig, child_err, expect_proceed};
use crate::channel::{Channel, ChildError, Message};
use crate::rootfs;
use crate::sys::{CloneFlags, Errno, Syscall, linux::LinuxSyscall};

pub(super) fn stage1(
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
