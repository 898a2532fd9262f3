//! Every raw system call runtime-core makes while building a container goes through the
//! [`Syscall`] trait, so the mount / pivot_root / capability sequence can be unit-tested
//! with [`fake::RecordingSyscall`] without root, and the real work lives in [`linux`].

pub mod fake;
#[allow(unsafe_code)] // the real system calls behind the Syscall trait
pub mod linux;

use std::os::fd::BorrowedFd;
use std::path::Path;

pub use nix::errno::Errno;
pub use nix::mount::{MntFlags, MsFlags};
pub use nix::sched::CloneFlags;

/// Which capability set a call applies to (mirrors the five OCI sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum CapSet {
    Bounding,
    Effective,
    Inheritable,
    Permitted,
    Ambient,
}

/// A resource limit to set with `setrlimit` (raw `RLIMIT_*` number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// A path inside the rootfs that is safe to mount on: for the real kernel an `O_PATH`
/// fd opened with `openat2(RESOLVE_IN_ROOT)` reached through `/proc/self/fd/N`, so a
/// symlink swapped in after resolution cannot redirect the mount out of the rootfs.
#[derive(Debug)]
pub struct InRootPath {
    /// Keeps the `/proc/self/fd/N` path valid.
    _fd: Option<std::os::fd::OwnedFd>,
    path: std::path::PathBuf,
}

impl InRootPath {
    /// A plain path (used by the fake, and for paths below a handle's
    /// `/proc/self/fd/N` that a caller keeps alive).
    pub fn plain(path: &Path) -> Self {
        InRootPath {
            _fd: None,
            path: path.to_path_buf(),
        }
    }

    /// A handle on `fd`, reached through `/proc/self/fd/N`.
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> Self {
        let path = std::path::PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ));
        InRootPath {
            _fd: Some(fd),
            path,
        }
    }

    /// The fd behind the handle (`None` for a plain path).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self._fd.as_ref().map(std::os::fd::AsFd::as_fd)
    }

    /// The path to hand to mount(2).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What to create at a mount destination that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountPointKind {
    /// A directory (the source is a directory, or the mount is a file system).
    Dir,
    /// An empty regular file (the source of a bind mount is a file or a device).
    File,
}

/// The arguments of mount(2).
#[derive(Debug, Clone, Copy)]
pub struct MountArgs<'a> {
    /// What to mount: a device, a directory to bind, or a name for a new file system.
    pub source: Option<&'a Path>,
    /// Where to mount it, or the mount to change.
    pub target: &'a Path,
    /// The type of a new file system.
    pub fstype: Option<&'a str>,
    /// `MS_*` flags.
    pub flags: MsFlags,
    /// File-system-specific options.
    pub data: Option<&'a str>,
}

impl<'a> MountArgs<'a> {
    /// A change of the mount at `target` alone (a remount, or a propagation change):
    /// no source, type or options.
    pub fn change(target: &'a Path, flags: MsFlags) -> Self {
        MountArgs {
            source: None,
            target,
            fstype: None,
            flags,
            data: None,
        }
    }
}

/// A new file system for [`Syscall::mount_fs_at`].
#[derive(Debug, Clone, Copy)]
pub struct NewFs<'a> {
    /// Its type.
    pub fstype: &'a str,
    /// Its source (a device, or a name for a pseudo file system).
    pub source: &'a Path,
    /// `MS_*` flags, as mount(2) takes them.
    pub flags: MsFlags,
    /// Comma-separated options (empty: none).
    pub data: &'a str,
}

/// What [`Syscall::mknod`] makes: the node's type (`S_IFCHR`, `S_IFBLK` or `S_IFIFO`),
/// its permission bits (before the umask) and its device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevNode {
    /// `S_IFCHR`, `S_IFBLK` or `S_IFIFO`.
    pub kind: u32,
    /// Permission bits.
    pub perm: u32,
    /// Major device number.
    pub major: u64,
    /// Minor device number.
    pub minor: u64,
}

/// The system calls used to set up a container process.
///
/// Every method returns the raw errno on failure; callers attach the step name.
pub trait Syscall {
    /// mount(2).
    fn mount(&self, args: MountArgs<'_>) -> Result<(), Errno>;
    /// umount2(2).
    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<(), Errno>;
    /// pivot_root(2).
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), Errno>;
    /// chdir(2).
    fn chdir(&self, path: &Path) -> Result<(), Errno>;
    /// sethostname(2).
    fn sethostname(&self, name: &str) -> Result<(), Errno>;
    /// setdomainname(2).
    fn setdomainname(&self, name: &str) -> Result<(), Errno>;
    /// setns(2) with an open namespace file.
    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> Result<(), Errno>;
    /// unshare(2).
    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno>;
    /// setresgid + setresuid (all three ids) in that order.
    fn set_id(&self, uid: u32, gid: u32) -> Result<(), Errno>;
    /// setgroups(2).
    fn setgroups(&self, gids: &[u32]) -> Result<(), Errno>;
    /// Replace one capability set (for `Bounding`, drop every capability not listed).
    fn set_capability(&self, set: CapSet, caps: &caps::CapsHashSet) -> Result<(), Errno>;
    /// prctl(PR_SET_KEEPCAPS).
    fn set_keep_caps(&self, keep: bool) -> Result<(), Errno>;
    /// prctl(PR_SET_NO_NEW_PRIVS, 1).
    fn set_no_new_privs(&self) -> Result<(), Errno>;
    /// prctl(PR_SET_PDEATHSIG).
    fn set_pdeathsig(&self, signal: i32) -> Result<(), Errno>;
    /// setrlimit(2).
    fn set_rlimit(&self, rlimit: Rlimit) -> Result<(), Errno>;
    /// mknod(2) of a device node.
    fn mknod(&self, path: &Path, node: DevNode) -> Result<(), Errno>;
    /// chown(2) without following symlinks.
    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> Result<(), Errno>;
    /// symlink(2).
    fn symlink(&self, original: &Path, link: &Path) -> Result<(), Errno>;
    /// Write `value` to `/proc/sys/<key with dots as slashes>`.
    fn set_sysctl(&self, key: &str, value: &str) -> Result<(), Errno>;
    /// umask(2); returns nothing since umask cannot fail.
    fn umask(&self, mask: u32);
    /// Open `target` (a path under `root`) without letting any symlink leave `root`.
    fn open_in_root(&self, root: &Path, target: &Path) -> Result<InRootPath, Errno>;
    /// mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY): make a mount tree read-only.
    fn make_readonly_recursive(&self, target: &Path) -> Result<(), Errno>;
    /// Open the mount point `rel` (relative to `root`, already resolved inside it),
    /// creating what is missing without ever leaving `root`: each component is opened
    /// with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) from `root`, a missing
    /// directory is made with mkdirat on its parent's fd, a missing file with
    /// O_CREAT|O_EXCL|O_NOFOLLOW (an existing file is never truncated).
    fn prepare_mount_point(
        &self,
        root: &Path,
        rel: &Path,
        kind: MountPointKind,
    ) -> Result<InRootPath, Errno>;
    /// Bind `source` (recursively with `recursive`) onto the handle `target`:
    /// open_tree(OPEN_TREE_CLONE) then move_mount onto the fd. The returned handle
    /// is the new mount itself, for remounts and propagation changes.
    fn bind_mount_at(
        &self,
        source: &Path,
        target: &InRootPath,
        recursive: bool,
    ) -> Result<InRootPath, Errno>;
    /// Mount a new `fstype` file system onto the handle `target` (fsopen, fsconfig,
    /// fsmount, move_mount); the returned handle is the new mount.
    fn mount_fs_at(&self, fs: NewFs<'_>, target: &InRootPath) -> Result<InRootPath, Errno>;
    /// Attach a detached mount tree (an idmapped copy) onto the handle `target`.
    fn attach_tree(&self, tree: BorrowedFd<'_>, target: &InRootPath) -> Result<(), Errno>;
    /// Whether what the handle names is on procfs (fstatfs of its fd).
    fn is_procfs(&self, target: &InRootPath) -> Result<bool, Errno>;
}
