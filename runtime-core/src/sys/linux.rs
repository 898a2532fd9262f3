//! The real implementation of [`Syscall`] over nix, caps and libc.

use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::sys::stat::{Mode, SFlag};

use super::{
    CapSet, CloneFlags, DevNode, Errno, InRootPath, MntFlags, MountArgs, MountPointKind, MsFlags,
    NewFs, Rlimit, Syscall,
};

/// Calls the Linux kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

fn caps_err(_e: &caps::errors::CapsError) -> Errno {
    // caps reports only a message; capset/prctl fail with EPERM when raising a
    // capability the process does not hold, which is the only failure we can cause.
    Errno::EPERM
}

/// `struct mount_attr` from linux/mount.h (size version 0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// mount_setattr(2): sets the `MOUNT_ATTR_*` flags `attr_set` on the mount at `path`
/// relative to `dirfd` (`""` with `AT_EMPTY_PATH` in `at_flags`: the mount fd
/// `dirfd` itself); `userns_fd` is the user namespace of `MOUNT_ATTR_IDMAP`.
pub(crate) fn mount_setattr(
    dirfd: std::os::fd::RawFd,
    path: &std::ffi::CStr,
    at_flags: libc::c_int,
    attr_set: u64,
    userns_fd: u64,
) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd,
    };
    // SAFETY: `path` is a NUL-terminated string and `attr` a correctly laid out
    // `struct mount_attr`; both outlive the call and its size is passed. `dirfd` is
    // only a number to the kernel (a bad one is EBADF).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            at_flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(rc).map(drop)
}

impl Syscall for LinuxSyscall {
    fn mount(&self, args: MountArgs<'_>) -> Result<(), Errno> {
        let MountArgs {
            source,
            target,
            fstype,
            flags,
            data,
        } = args;
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<(), Errno> {
        nix::mount::umount2(target, flags)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), Errno> {
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn chdir(&self, path: &Path) -> Result<(), Errno> {
        nix::unistd::chdir(path)
    }

    fn sethostname(&self, name: &str) -> Result<(), Errno> {
        nix::unistd::sethostname(name)
    }

    fn setdomainname(&self, name: &str) -> Result<(), Errno> {
        // SAFETY: the pointer and length describe `name`'s bytes, which outlive the call.
        let rc = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
        Errno::result(rc).map(drop)
    }

    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> Result<(), Errno> {
        nix::sched::setns(fd, nstype)
    }

    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno> {
        nix::sched::unshare(flags)
    }

    fn set_id(&self, uid: u32, gid: u32) -> Result<(), Errno> {
        let gid = nix::unistd::Gid::from_raw(gid);
        let uid = nix::unistd::Uid::from_raw(uid);
        nix::unistd::setresgid(gid, gid, gid)?;
        nix::unistd::setresuid(uid, uid, uid)
    }

    fn setgroups(&self, gids: &[u32]) -> Result<(), Errno> {
        // SAFETY: the pointer and length describe the `gids` slice; gid_t is u32.
        let rc = unsafe { libc::setgroups(gids.len(), gids.as_ptr()) };
        Errno::result(rc).map(drop)
    }

    fn set_capability(&self, set: CapSet, value: &caps::CapsHashSet) -> Result<(), Errno> {
        match set {
            CapSet::Bounding => {
                for cap in caps::all() {
                    if !value.contains(&cap) {
                        // Capabilities unknown to this kernel report EINVAL: nothing to drop.
                        match caps::drop(None, caps::CapSet::Bounding, cap) {
                            Ok(()) => {}
                            Err(e) => {
                                if caps::runtime::procfs_all_supported(None)
                                    .map(|s| s.contains(&cap))
                                    .unwrap_or(true)
                                {
                                    return Err(caps_err(&e));
                                }
                            }
                        }
                    }
                }
                Ok(())
            }
            CapSet::Ambient => {
                caps::clear(None, caps::CapSet::Ambient).map_err(|e| caps_err(&e))?;
                for cap in value {
                    caps::raise(None, caps::CapSet::Ambient, *cap).map_err(|e| caps_err(&e))?;
                }
                Ok(())
            }
            CapSet::Effective => {
                caps::set(None, caps::CapSet::Effective, value).map_err(|e| caps_err(&e))
            }
            CapSet::Inheritable => {
                caps::set(None, caps::CapSet::Inheritable, value).map_err(|e| caps_err(&e))
            }
            CapSet::Permitted => {
                caps::set(None, caps::CapSet::Permitted, value).map_err(|e| caps_err(&e))
            }
        }
    }

    fn set_keep_caps(&self, keep: bool) -> Result<(), Errno> {
        nix::sys::prctl::set_keepcaps(keep)
    }

    fn set_no_new_privs(&self) -> Result<(), Errno> {
        nix::sys::prctl::set_no_new_privs()
    }

    fn set_pdeathsig(&self, signal: i32) -> Result<(), Errno> {
        let sig = nix::sys::signal::Signal::try_from(signal)?;
        nix::sys::prctl::set_pdeathsig(sig)
    }

    fn set_rlimit(&self, rlimit: Rlimit) -> Result<(), Errno> {
        let lim = libc::rlimit {
            rlim_cur: rlimit.soft,
            rlim_max: rlimit.hard,
        };
        // SAFETY: `lim` is a valid rlimit living across the call; the resource number
        // comes from the spec and the kernel rejects unknown ones with EINVAL.
        let rc = unsafe { libc::setrlimit(rlimit.resource, &lim) };
        Errno::result(rc).map(drop)
    }

    fn mknod(&self, path: &Path, node: DevNode) -> Result<(), Errno> {
        let kind = SFlag::from_bits_truncate(node.kind);
        let perm = Mode::from_bits_truncate(node.perm);
        let dev = nix::sys::stat::makedev(node.major, node.minor);
        nix::sys::stat::mknod(path, kind, perm, dev)
    }

    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> Result<(), Errno> {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
    }

    fn symlink(&self, original: &Path, link: &Path) -> Result<(), Errno> {
        nix::unistd::symlinkat(original, nix::fcntl::AT_FDCWD, link)
    }

    fn set_sysctl(&self, key: &str, value: &str) -> Result<(), Errno> {
        if key.contains("..") || key.contains('/') && key.contains('.') {
            return Err(Errno::EINVAL);
        }
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value.as_bytes())
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    }

    fn umask(&self, mask: u32) {
        nix::sys::stat::umask(Mode::from_bits_truncate(mask));
    }

    fn open_in_root(&self, root: &Path, target: &Path) -> Result<InRootPath, Errno> {
        use rustix::fs::{Mode as RMode, OFlags, ResolveFlags};
        let rel = target.strip_prefix(root).map_err(|_| Errno::EXDEV)?;
        let to_errno = |e: rustix::io::Errno| Errno::from_raw(e.raw_os_error());
        let root_fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            RMode::empty(),
        )
        .map_err(to_errno)?;
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let fd = rustix::fs::openat2(
            &root_fd,
            rel,
            OFlags::PATH | OFlags::CLOEXEC,
            RMode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(to_errno)?;
        let path = std::path::PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ));
        Ok(InRootPath {
            _fd: Some(fd),
            path,
        })
    }

    fn make_readonly_recursive(&self, target: &Path) -> Result<(), Errno> {
        const MOUNT_ATTR_RDONLY: u64 = 0x1;
        let path = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
            .map_err(|_| Errno::EINVAL)?;
        mount_setattr(
            libc::AT_FDCWD,
            &path,
            libc::AT_RECURSIVE,
            MOUNT_ATTR_RDONLY,
            0,
        )
    }

    fn prepare_mount_point(
        &self,
        root: &Path,
        rel: &Path,
        kind: MountPointKind,
    ) -> Result<InRootPath, Errno> {
        prepare_mount_point(root, rel, kind)
            .map(InRootPath::from_fd)
            .map_err(to_errno)
    }

    fn bind_mount_at(
        &self,
        source: &Path,
        target: &InRootPath,
        recursive: bool,
    ) -> Result<InRootPath, Errno> {
        use rustix::mount::{MoveMountFlags, OpenTreeFlags};
        let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
        if recursive {
            flags |= OpenTreeFlags::AT_RECURSIVE;
        }
        let tree = rustix::mount::open_tree(rustix::fs::CWD, source, flags).map_err(to_errno)?;
        let to = target.fd().ok_or(Errno::EBADF)?;
        rustix::mount::move_mount(
            &tree,
            "",
            to,
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .map_err(to_errno)?;
        Ok(InRootPath::from_fd(tree))
    }

    fn mount_fs_at(&self, fs: NewFs<'_>, target: &InRootPath) -> Result<InRootPath, Errno> {
        let NewFs {
            fstype,
            source,
            flags,
            data,
        } = fs;
        use rustix::mount::{
            FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, fsconfig_create,
            fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
        };
        let fs = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).map_err(to_errno)?;
        fsconfig_set_string(&fs, "source", source).map_err(to_errno)?;
        for (flag, key) in [
            (MsFlags::MS_RDONLY, "ro"),
            (MsFlags::MS_SYNCHRONOUS, "sync"),
            (MsFlags::MS_DIRSYNC, "dirsync"),
            (MsFlags::MS_MANDLOCK, "mand"),
        ] {
            if flags.contains(flag) {
                fsconfig_set_flag(&fs, key).map_err(to_errno)?;
            }
        }
        for opt in data.split(',').filter(|o| !o.is_empty()) {
            match opt.split_once('=') {
                Some((k, v)) => fsconfig_set_string(&fs, k, v),
                None => fsconfig_set_flag(&fs, opt),
            }
            .map_err(to_errno)?;
        }
        fsconfig_create(&fs).map_err(to_errno)?;
        let mut attr = MountAttrFlags::empty();
        for (flag, a) in [
            (MsFlags::MS_RDONLY, MountAttrFlags::MOUNT_ATTR_RDONLY),
            (MsFlags::MS_NOSUID, MountAttrFlags::MOUNT_ATTR_NOSUID),
            (MsFlags::MS_NODEV, MountAttrFlags::MOUNT_ATTR_NODEV),
            (MsFlags::MS_NOEXEC, MountAttrFlags::MOUNT_ATTR_NOEXEC),
            (
                MsFlags::MS_NODIRATIME,
                MountAttrFlags::MOUNT_ATTR_NODIRATIME,
            ),
        ] {
            if flags.contains(flag) {
                attr |= a;
            }
        }
        // The atime mode is one value, relatime (0) unless asked otherwise.
        if flags.contains(MsFlags::MS_NOATIME) {
            attr |= MountAttrFlags::MOUNT_ATTR_NOATIME;
        } else if flags.contains(MsFlags::MS_STRICTATIME) {
            attr |= MountAttrFlags::MOUNT_ATTR_STRICTATIME;
        }
        let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attr).map_err(to_errno)?;
        let to = target.fd().ok_or(Errno::EBADF)?;
        move_mount(
            &mnt,
            "",
            to,
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .map_err(to_errno)?;
        Ok(InRootPath::from_fd(mnt))
    }

    fn attach_tree(&self, tree: BorrowedFd<'_>, target: &InRootPath) -> Result<(), Errno> {
        use rustix::mount::MoveMountFlags;
        let to = target.fd().ok_or(Errno::EBADF)?;
        rustix::mount::move_mount(
            tree,
            "",
            to,
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .map_err(to_errno)
    }

    fn is_procfs(&self, target: &InRootPath) -> Result<bool, Errno> {
        let st = match target.fd() {
            Some(fd) => rustix::fs::fstatfs(fd),
            None => rustix::fs::statfs(target.path()),
        }
        .map_err(to_errno)?;
        Ok(st.f_type == rustix::fs::PROC_SUPER_MAGIC)
    }
}

fn to_errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

/// How often a component is re-resolved when it vanishes or appears between the
/// lookup and the creation (another container renaming things in a shared volume).
const CREATE_RETRIES: usize = 8;

/// See [`Syscall::prepare_mount_point`]. Every step works on fds below `root`: a
/// component is looked up with openat2(RESOLVE_IN_ROOT) from the root's fd (so `..`
/// and symlinks, even swapped in mid-walk, stay inside), and created relative to the
/// fd of the parent that lookup returned.
pub(crate) fn prepare_mount_point(
    root: &Path,
    rel: &Path,
    kind: MountPointKind,
) -> Result<std::os::fd::OwnedFd, rustix::io::Errno> {
    use rustix::fs::{Mode as RMode, OFlags};
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        RMode::empty(),
    )?;
    let parts: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect();
    if rel
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        // Callers resolve `..` first; one here would mean a bug, not a lookup to do.
        return Err(rustix::io::Errno::INVAL);
    }
    let mut current = rustix::io::fcntl_dupfd_cloexec(&root_fd, 0)?;
    let mut prefix = std::path::PathBuf::new();
    for (i, name) in parts.iter().enumerate() {
        prefix.push(name);
        let last = i + 1 == parts.len();
        let file = last && kind == MountPointKind::File;
        current = open_or_create(&root_fd, &current, &prefix, name, file, last)?;
    }
    Ok(current)
}

fn open_or_create(
    root_fd: &std::os::fd::OwnedFd,
    parent: &std::os::fd::OwnedFd,
    prefix: &Path,
    name: &std::ffi::OsStr,
    file: bool,
    last: bool,
) -> Result<std::os::fd::OwnedFd, rustix::io::Errno> {
    use rustix::fs::{Mode as RMode, OFlags};
    use rustix::io::Errno as E;
    let mut flags = OFlags::PATH | OFlags::CLOEXEC;
    if !last {
        flags |= OFlags::DIRECTORY;
    }
    for _ in 0..CREATE_RETRIES {
        match open_beneath(root_fd, prefix, flags) {
            Ok(fd) => return Ok(fd),
            Err(E::NOENT) => {}
            Err(e) => return Err(e),
        }
        let created = if file {
            rustix::fs::openat(
                parent,
                name,
                OFlags::RDONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                RMode::from_raw_mode(0o644),
            )
            .map(drop)
        } else {
            rustix::fs::mkdirat(parent, name, RMode::from_raw_mode(0o755))
        };
        match created {
            Ok(()) | Err(E::EXIST) => {}
            Err(e) => return Err(e),
        }
    }
    Err(E::LOOP)
}

/// openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) from the root's fd; on kernels
/// without openat2, a component-wise openat(O_NOFOLLOW) that refuses any symlink (the
/// caller's path was resolved already, so a symlink there is one swapped in).
fn open_beneath(
    root_fd: &std::os::fd::OwnedFd,
    rel: &Path,
    flags: rustix::fs::OFlags,
) -> Result<std::os::fd::OwnedFd, rustix::io::Errno> {
    use rustix::fs::{Mode as RMode, OFlags, ResolveFlags};
    match rustix::fs::openat2(
        root_fd,
        rel,
        flags,
        RMode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Err(rustix::io::Errno::NOSYS) => {}
        other => return other,
    }
    let mut current = rustix::io::fcntl_dupfd_cloexec(root_fd, 0)?;
    let parts: Vec<_> = rel.components().collect();
    for (i, c) in parts.iter().enumerate() {
        let std::path::Component::Normal(name) = c else {
            return Err(rustix::io::Errno::INVAL);
        };
        let mut f = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if i + 1 < parts.len() {
            f |= OFlags::DIRECTORY;
        } else {
            f |= flags & OFlags::DIRECTORY;
        }
        let next = rustix::fs::openat(&current, *name, f, RMode::empty())?;
        if rustix::fs::fstat(&next)?.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(rustix::io::Errno::LOOP);
        }
        current = next;
    }
    Ok(current)
}
