//! A recording [`Syscall`] for unit tests: every call is appended to a log (and can be
//! told to fail), so tests assert the exact sequence of mounts, pivot_root and caps.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use super::{
    CapSet, CloneFlags, DevNode, Errno, InRootPath, MntFlags, MountArgs, MountPointKind, MsFlags,
    NewFs, Rlimit, Syscall,
};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount2 {
        target: PathBuf,
        flags: MntFlags,
    },
    PivotRoot {
        new_root: PathBuf,
        put_old: PathBuf,
    },
    Chdir(PathBuf),
    Sethostname(String),
    Setdomainname(String),
    Setns {
        fd: i32,
        nstype: CloneFlags,
    },
    Unshare(CloneFlags),
    SetId {
        uid: u32,
        gid: u32,
    },
    Setgroups(Vec<u32>),
    SetCapability {
        set: CapSet,
        caps: Vec<String>,
    },
    SetKeepCaps(bool),
    SetNoNewPrivs,
    SetPdeathsig(i32),
    SetRlimit(Rlimit),
    Mknod {
        path: PathBuf,
        node: DevNode,
    },
    Lchown {
        path: PathBuf,
        uid: u32,
        gid: u32,
    },
    Symlink {
        original: PathBuf,
        link: PathBuf,
    },
    SetSysctl {
        key: String,
        value: String,
    },
    Umask(u32),
    ReadonlyRecursive(PathBuf),
    /// A mount point prepared (opened or created) at `path` inside the root.
    MountPoint {
        path: PathBuf,
        kind: MountPointKind,
    },
    /// A detached tree attached at `target`.
    AttachTree {
        target: PathBuf,
    },
}

/// Which calls fail, and with what errno.
type FailRule = (fn(&Call) -> bool, Errno);

/// Records calls instead of making them. Not thread-safe (containers are set up in
/// single-threaded processes).
#[derive(Debug, Default)]
pub struct RecordingSyscall {
    calls: RefCell<Vec<Call>>,
    /// If set, a call for which the predicate returns true fails with this errno.
    fail: RefCell<Option<FailRule>>,
}

impl RecordingSyscall {
    /// A fake that accepts every call.
    pub fn new() -> Self {
        Self::default()
    }

    /// Make every call matching `pred` fail with `errno` (after being recorded).
    pub fn fail_when(&self, pred: fn(&Call) -> bool, errno: Errno) {
        *self.fail.borrow_mut() = Some((pred, errno));
    }

    /// The calls made so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// Only the mount calls, as (target, fstype, flags).
    pub fn mounts(&self) -> Vec<(PathBuf, Option<String>, MsFlags)> {
        self.calls
            .borrow()
            .iter()
            .filter_map(|c| match c {
                Call::Mount {
                    target,
                    fstype,
                    flags,
                    ..
                } => Some((target.clone(), fstype.clone(), *flags)),
                _ => None,
            })
            .collect()
    }

    fn record(&self, call: Call) -> Result<(), Errno> {
        let fail = *self.fail.borrow();
        let res = match fail {
            Some((pred, errno)) if pred(&call) => Err(errno),
            _ => Ok(()),
        };
        self.calls.borrow_mut().push(call);
        res
    }
}

impl Syscall for RecordingSyscall {
    fn mount(&self, args: MountArgs<'_>) -> Result<(), Errno> {
        self.record(Call::Mount {
            source: args.source.map(Path::to_path_buf),
            target: args.target.to_path_buf(),
            fstype: args.fstype.map(str::to_string),
            flags: args.flags,
            data: args.data.map(str::to_string),
        })
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<(), Errno> {
        self.record(Call::Umount2 {
            target: target.to_path_buf(),
            flags,
        })
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), Errno> {
        self.record(Call::PivotRoot {
            new_root: new_root.to_path_buf(),
            put_old: put_old.to_path_buf(),
        })
    }

    fn chdir(&self, path: &Path) -> Result<(), Errno> {
        self.record(Call::Chdir(path.to_path_buf()))
    }

    fn sethostname(&self, name: &str) -> Result<(), Errno> {
        self.record(Call::Sethostname(name.to_string()))
    }

    fn setdomainname(&self, name: &str) -> Result<(), Errno> {
        self.record(Call::Setdomainname(name.to_string()))
    }

    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> Result<(), Errno> {
        self.record(Call::Setns {
            fd: fd.as_raw_fd(),
            nstype,
        })
    }

    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno> {
        self.record(Call::Unshare(flags))
    }

    fn set_id(&self, uid: u32, gid: u32) -> Result<(), Errno> {
        self.record(Call::SetId { uid, gid })
    }

    fn setgroups(&self, gids: &[u32]) -> Result<(), Errno> {
        self.record(Call::Setgroups(gids.to_vec()))
    }

    fn set_capability(&self, set: CapSet, caps: &caps::CapsHashSet) -> Result<(), Errno> {
        let mut names: Vec<String> = caps.iter().map(ToString::to_string).collect();
        names.sort();
        self.record(Call::SetCapability { set, caps: names })
    }

    fn set_keep_caps(&self, keep: bool) -> Result<(), Errno> {
        self.record(Call::SetKeepCaps(keep))
    }

    fn set_no_new_privs(&self) -> Result<(), Errno> {
        self.record(Call::SetNoNewPrivs)
    }

    fn set_pdeathsig(&self, signal: i32) -> Result<(), Errno> {
        self.record(Call::SetPdeathsig(signal))
    }

    fn set_rlimit(&self, rlimit: Rlimit) -> Result<(), Errno> {
        self.record(Call::SetRlimit(rlimit))
    }

    fn mknod(&self, path: &Path, node: DevNode) -> Result<(), Errno> {
        self.record(Call::Mknod {
            path: path.to_path_buf(),
            node,
        })
    }

    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> Result<(), Errno> {
        self.record(Call::Lchown {
            path: path.to_path_buf(),
            uid,
            gid,
        })
    }

    fn symlink(&self, original: &Path, link: &Path) -> Result<(), Errno> {
        self.record(Call::Symlink {
            original: original.to_path_buf(),
            link: link.to_path_buf(),
        })
    }

    fn set_sysctl(&self, key: &str, value: &str) -> Result<(), Errno> {
        self.record(Call::SetSysctl {
            key: key.to_string(),
            value: value.to_string(),
        })
    }

    fn umask(&self, mask: u32) {
        let _ = self.record(Call::Umask(mask));
    }

    fn make_readonly_recursive(&self, target: &Path) -> Result<(), Errno> {
        self.record(Call::ReadonlyRecursive(target.to_path_buf()))
    }

    fn open_in_root(&self, root: &Path, target: &Path) -> Result<InRootPath, Errno> {
        if !target.starts_with(root) {
            return Err(Errno::EXDEV);
        }
        Ok(InRootPath::plain(target))
    }

    fn prepare_mount_point(
        &self,
        root: &Path,
        rel: &Path,
        kind: MountPointKind,
    ) -> Result<InRootPath, Errno> {
        let path = root.join(rel);
        self.record(Call::MountPoint {
            path: path.clone(),
            kind,
        })?;
        Ok(InRootPath::plain(&path))
    }

    fn bind_mount_at(
        &self,
        source: &Path,
        target: &InRootPath,
        recursive: bool,
    ) -> Result<InRootPath, Errno> {
        let mut flags = MsFlags::MS_BIND;
        if recursive {
            flags |= MsFlags::MS_REC;
        }
        self.mount(MountArgs {
            source: Some(source),
            target: target.path(),
            fstype: None,
            flags,
            data: None,
        })?;
        Ok(InRootPath::plain(target.path()))
    }

    fn mount_fs_at(&self, fs: NewFs<'_>, target: &InRootPath) -> Result<InRootPath, Errno> {
        self.mount(MountArgs {
            source: Some(fs.source),
            target: target.path(),
            fstype: Some(fs.fstype),
            flags: fs.flags,
            data: (!fs.data.is_empty()).then_some(fs.data),
        })?;
        Ok(InRootPath::plain(target.path()))
    }

    fn attach_tree(&self, _tree: BorrowedFd<'_>, target: &InRootPath) -> Result<(), Errno> {
        self.record(Call::AttachTree {
            target: target.path().to_path_buf(),
        })
    }

    fn is_procfs(&self, target: &InRootPath) -> Result<bool, Errno> {
        // The fake mounts nothing: report what is really on disk (a missing path is not).
        Ok(nix::sys::statfs::statfs(target.path())
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC))
    }
}
