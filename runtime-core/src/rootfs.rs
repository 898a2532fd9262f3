//! The container's root filesystem: the spec's mounts, /dev, pivot_root, masked and
//! read-only paths. Every kernel call goes through [`Syscall`], so the sequence is
//! unit-tested with the recording fake.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::sys::{Errno, InRootPath, MntFlags, MountPointKind, MsFlags, Syscall};

/// A failure while building the root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A kernel call failed.
    #[error("{step} {path}: {errno}")]
    Sys {
        step: &'static str,
        path: PathBuf,
        errno: Errno,
    },
    /// Creating a directory or file failed.
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The spec asks for something invalid.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// A path resolves through too many symlinks.
    #[error("too many levels of symbolic links resolving {0}")]
    SymlinkLoop(PathBuf),
}

impl RootfsError {
    /// The errno behind this failure, if any.
    pub fn errno(&self) -> i32 {
        match self {
            RootfsError::Sys { errno, .. } => *errno as i32,
            RootfsError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            RootfsError::InvalidSpec(_) => libc::EINVAL,
            RootfsError::SymlinkLoop(_) => libc::ELOOP,
        }
    }
}

fn sys_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> RootfsError + 'a {
    move |errno| RootfsError::Sys {
        step,
        path: path.to_path_buf(),
        errno,
    }
}

fn io_err<'a>(
    step: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

/// Resolve `unsafe_path` inside `root` as if `root` were `/`: `..` never climbs above
/// `root`, and symlinks (absolute or relative) are followed *inside* `root`. Components
/// that do not exist yet are appended as they are. The result always starts with `root`.
pub fn resolve_in_root(root: &Path, unsafe_path: &Path) -> Result<PathBuf, RootfsError> {
    let mut pending: Vec<std::ffi::OsString> = Vec::new();
    push_components(&mut pending, unsafe_path);
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0u32;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&part);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(RootfsError::SymlinkLoop(unsafe_path.to_path_buf()));
                }
                let target = match fs::read_link(&candidate) {
                    Ok(t) => t,
                    // Swapped for something else since the lstat (a container renaming
                    // in a shared volume): look at the component again. Only a path is
                    // computed here; what is done with it goes through fds in the root.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        pending.push(part);
                        continue;
                    }
                    Err(e) => return Err(io_err("readlink", &candidate)(e)),
                };
                if target.is_absolute() {
                    resolved.clear();
                }
                push_components(&mut pending, &target);
            }
            _ => resolved.push(part),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Ok(out)
}

/// Push the normal components of `path` onto the stack so the first is popped first.
fn push_components(stack: &mut Vec<std::ffi::OsString>, path: &Path) {
    let parts: Vec<std::ffi::OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    stack.extend(parts.into_iter().rev());
}

/// Mount options of one spec mount, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount(2) call itself.
    pub flags: MsFlags,
    /// Propagation flags applied with a second mount(2) call.
    pub propagation: MsFlags,
    /// Filesystem-specific data (`size=65536k,mode=755`).
    pub data: String,
    /// `rro`: make the mount tree read-only recursively with mount_setattr.
    pub recursive_readonly: bool,
}

/// Parse OCI/fstab mount options into flags, propagation and data.
pub fn parse_mount_options(options: &[String]) -> MountOptions {
    let mut out = MountOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: String::new(),
        recursive_readonly: false,
    };
    let mut data = Vec::new();
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "defaults" | "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "rro" => {
                out.recursive_readonly = true;
                continue;
            }
            "private" => {
                out.propagation |= MsFlags::MS_PRIVATE;
                continue;
            }
            "rprivate" => {
                out.propagation |= MsFlags::MS_PRIVATE | MsFlags::MS_REC;
                continue;
            }
            "shared" => {
                out.propagation |= MsFlags::MS_SHARED;
                continue;
            }
            "rshared" => {
                out.propagation |= MsFlags::MS_SHARED | MsFlags::MS_REC;
                continue;
            }
            "slave" => {
                out.propagation |= MsFlags::MS_SLAVE;
                continue;
            }
            "rslave" => {
                out.propagation |= MsFlags::MS_SLAVE | MsFlags::MS_REC;
                continue;
            }
            "unbindable" => {
                out.propagation |= MsFlags::MS_UNBINDABLE;
                continue;
            }
            "runbindable" => {
                out.propagation |= MsFlags::MS_UNBINDABLE | MsFlags::MS_REC;
                continue;
            }
            // Options runc understands that are not kernel flags for us.
            "tmpcopyup" | "idmap" | "ridmap" => continue,
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        out.flags = (out.flags | set) & !clear;
    }
    out.data = data.join(",");
    out
}

/// Map `rootfsPropagation` to flags for the first mount of `/` and the flags applied
/// to the new `/` after pivot_root. Shared propagation keeps `/` shared from the
/// start: a slave copy of a shared host mount, bound into the container and made
/// shared again, would join a new peer group and never propagate back to the host
/// (bidirectional mounts). The rootfs' parent mount is then made private before
/// anything is mounted under it (see [`prepare_rootfs`]).
fn root_propagation(spec: &Spec) -> Result<(MsFlags, Option<MsFlags>), RootfsError> {
    let prop = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().clone());
    let rec_slave = MsFlags::MS_SLAVE | MsFlags::MS_REC;
    Ok(match prop.as_deref() {
        None | Some("") | Some("rslave") => (rec_slave, None),
        Some("slave") => (MsFlags::MS_SLAVE, None),
        Some("private") => (MsFlags::MS_PRIVATE, None),
        Some("rprivate") => (MsFlags::MS_PRIVATE | MsFlags::MS_REC, None),
        Some("shared") => (MsFlags::MS_SHARED, Some(MsFlags::MS_SHARED)),
        Some("rshared") => (
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            Some(MsFlags::MS_SHARED | MsFlags::MS_REC),
        ),
        Some("unbindable") => (rec_slave, Some(MsFlags::MS_UNBINDABLE)),
        Some("runbindable") => (rec_slave, Some(MsFlags::MS_UNBINDABLE | MsFlags::MS_REC)),
        Some(other) => {
            return Err(RootfsError::InvalidSpec(format!(
                "unknown rootfsPropagation {other:?}"
            )));
        }
    })
}

/// The mount point, among those listed in `mountinfo` (the text of
/// /proc/self/mountinfo), that contains `path`: the longest one that is `path` or one
/// of its ancestors.
fn containing_mount(mountinfo: &str, path: &Path) -> Option<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|mp| path.starts_with(mp))
        .max_by_key(|mp| mp.components().count())
}

/// Undo mountinfo's octal escapes (`\040` for a space, `\134` for a backslash, ...).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A v1 or v2 cgroup hierarchy to show inside the container at a `cgroup` mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupHierarchy {
    /// `cpu,cpuacct`, `memory`, `name=systemd`; empty for the v2 unified hierarchy.
    pub controllers: String,
}

/// Read the hierarchies this process belongs to from `/proc/self/cgroup`.
pub fn host_cgroup_hierarchies() -> Vec<CgroupHierarchy> {
    let text = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    parse_proc_cgroup(&text)
}

fn parse_proc_cgroup(text: &str) -> Vec<CgroupHierarchy> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?.to_string();
            Some(CgroupHierarchy { controllers })
        })
        .collect()
}

/// What the init process needs to set up the root filesystem.
#[derive(Debug)]
pub struct RootfsPlan<'a> {
    /// The spec.
    pub spec: &'a Spec,
    /// Absolute path of the rootfs on the host.
    pub rootfs: &'a Path,
    /// Cgroup hierarchies to mount at `cgroup` mounts.
    pub cgroups: Vec<CgroupHierarchy>,
    /// Whether a new user namespace is in use (device nodes are then bind-mounted).
    pub in_user_ns: bool,
    /// Detached idmapped trees (see [`crate::idmap`]) to attach instead of binding,
    /// by index in the spec's mounts.
    pub idmapped: &'a [(usize, std::os::fd::OwnedFd)],
}

/// Prepare the rootfs before pivot_root: propagation, the rootfs bind mount, the spec's
/// mounts, /dev. Runs inside the container's new mount namespace.
pub fn prepare_rootfs(sys: &dyn Syscall, plan: &RootfsPlan<'_>) -> Result<(), RootfsError> {
    let (first, _) = root_propagation(plan.spec)?;
    let slash = Path::new("/");
    sys.mount(None, slash, None, first, None)
        .map_err(sys_err("set propagation of /", slash))?;
    let rootfs = plan.rootfs;
    if first.contains(MsFlags::MS_SHARED) {
        // With / shared, mounts under the rootfs would propagate to the host, and
        // pivot_root refuses a new root whose parent mount is shared.
        let info = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err("read mountinfo", Path::new("/proc/self/mountinfo")))?;
        let parent = containing_mount(&info, rootfs).unwrap_or_else(|| PathBuf::from("/"));
        sys.mount(None, &parent, None, MsFlags::MS_PRIVATE, None)
            .map_err(sys_err("make rootfs parent mount private", &parent))?;
    }
    sys.mount(
        Some(rootfs),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(sys_err("bind rootfs onto itself", rootfs))?;

    let mut dev_is_mounted = false;
    let mut pts_is_mounted = false;
    if let Some(mounts) = plan.spec.mounts() {
        for (i, m) in mounts.iter().enumerate() {
            let dest = m.destination();
            if dest == Path::new("/dev") {
                dev_is_mounted = true;
            }
            if dest == Path::new("/dev/pts") {
                pts_is_mounted = true;
            }
            match plan.idmapped.iter().find(|(idx, _)| *idx == i) {
                Some((_, tree)) => attach_idmapped(sys, plan, m, tree)?,
                None => mount_entry(sys, plan, m)?,
            }
        }
    }
    create_devices(sys, plan, dev_is_mounted)?;
    create_dev_symlinks(sys, rootfs, pts_is_mounted)?;
    Ok(())
}

/// pivot_root into the rootfs, detach the old root, then apply rootfs propagation.
pub fn pivot_into(sys: &dyn Syscall, spec: &Spec, rootfs: &Path) -> Result<(), RootfsError> {
    let dot = Path::new(".");
    let slash = Path::new("/");
    sys.chdir(rootfs)
        .map_err(sys_err("chdir to rootfs", rootfs))?;
    // pivot_root(".", ".") stacks the old root on top of the new one; unmounting "."
    // then removes the old root without needing a put_old directory in the image.
    sys.pivot_root(dot, dot)
        .map_err(sys_err("pivot_root", rootfs))?;
    // The old root is made slave so that detaching it does not propagate unmounts to
    // the host. mount(2) resolves "." to the cwd itself, the new root underneath
    // (making the container's bidirectional volumes slaves of the host, so their
    // mounts never reach it); ".." crosses onto the old root stacked on top.
    let dotdot = Path::new("..");
    sys.mount(
        None,
        dotdot,
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
    )
    .map_err(sys_err("make old root slave", dotdot))?;
    sys.umount2(dot, MntFlags::MNT_DETACH)
        .map_err(sys_err("detach old root", dot))?;
    sys.chdir(slash)
        .map_err(sys_err("chdir to new root", slash))?;
    if let (_, Some(prop)) = root_propagation(spec)? {
        sys.mount(None, slash, None, prop, None)
            .map_err(sys_err("set rootfs propagation", slash))?;
    }
    Ok(())
}

/// After pivot_root: masked paths, read-only paths, read-only root, sysctls, hostname.
pub fn finish_rootfs(sys: &dyn Syscall, spec: &Spec, root: &Path) -> Result<(), RootfsError> {
    if let Some(linux) = spec.linux() {
        // Sysctls first: /proc/sys is usually one of the read-only paths.
        if let Some(sysctls) = linux.sysctl() {
            let mut keys: Vec<_> = sysctls.iter().collect();
            keys.sort();
            for (k, v) in keys {
                sys.set_sysctl(k, v)
                    .map_err(sys_err("sysctl", Path::new(k)))?;
            }
        }
        if let Some(ro) = linux.readonly_paths() {
            for p in ro {
                readonly_path(sys, root, p)?;
            }
        }
        if let Some(masked) = linux.masked_paths() {
            for p in masked {
                mask_path(sys, root, p)?;
            }
        }
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        let flags =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | statfs_flags(root);
        sys.mount(None, root, None, flags, None)
            .map_err(sys_err("remount root read-only", root))?;
    }
    Ok(())
}

/// Set hostname and domainname (needs a new UTS namespace, checked by the caller).
pub fn set_names(sys: &dyn Syscall, spec: &Spec) -> Result<(), RootfsError> {
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        sys.sethostname(h)
            .map_err(sys_err("sethostname", Path::new(h)))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        sys.setdomainname(d)
            .map_err(sys_err("setdomainname", Path::new(d)))?;
    }
    Ok(())
}

fn join_abs(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

/// Mount flags a bind remount must keep (the kernel refuses to drop locked flags).
fn statfs_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::FsFlags;
    let Ok(st) = nix::sys::statvfs::statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (from, to) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(from) {
            out |= to;
        }
    }
    out
}

/// Open `p` (a path in the container, after pivot_root) inside `root` through a
/// handle; `None` if it does not exist.
fn open_existing(
    sys: &dyn Syscall,
    root: &Path,
    p: &str,
) -> Result<Option<InRootPath>, RootfsError> {
    let path = join_abs(root, p);
    match sys.open_in_root(root, &path) {
        Ok(h) => Ok(Some(h)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(sys_err("open path inside the container", &path)(e)),
    }
}

fn mask_path(sys: &dyn Syscall, root: &Path, p: &str) -> Result<(), RootfsError> {
    let path = join_abs(root, p);
    let Some(handle) = open_existing(sys, root, p)? else {
        return Ok(());
    };
    // The type of what the handle names, not of whatever the path names by now.
    let meta = match fs::metadata(handle.path()) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat masked path", &path)(e)),
    };
    if meta.is_dir() {
        sys.mount(
            Some(Path::new("tmpfs")),
            handle.path(),
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None,
        )
        .map_err(sys_err("mask directory", &path))
    } else {
        sys.mount(
            Some(Path::new("/dev/null")),
            handle.path(),
            None,
            MsFlags::MS_BIND,
            None,
        )
        .map_err(sys_err("mask file", &path))
    }
}

fn readonly_path(sys: &dyn Syscall, root: &Path, p: &str) -> Result<(), RootfsError> {
    let path = join_abs(root, p);
    let Some(handle) = open_existing(sys, root, p)? else {
        return Ok(());
    };
    // Bind the handle onto itself; the remount then acts on that new mount's fd.
    let mount = sys
        .bind_mount_at(handle.path(), &handle, true)
        .map_err(sys_err("bind read-only path", &path))?;
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_REC
        | statfs_flags(mount.path());
    sys.mount(None, mount.path(), None, flags, None)
        .map_err(sys_err("remount read-only path", &path))
}

/// Files under /proc a container may have something mounted on: the ones lxcfs
/// emulates (the same list as runc's checkProcMount).
const PROC_MOUNT_ALLOWED: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/net/dev",
    "/proc/sys/kernel/ns_last_pid",
];

/// `dest` with `.` and `..` applied lexically from `/` (symlinks are not looked at).
fn lexical_clean(dest: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in dest.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Refuses a mount at or under /proc, as runc's checkProcMount does: on /proc itself
/// only procfs (a `proc` mount, or a bind of a procfs source), under it only the
/// files in [`PROC_MOUNT_ALLOWED`]. Anything else could hide or replace the kernel
/// files that the masked and read-only paths protect (/proc/sys, /proc/self/attr,
/// /proc/sysrq-trigger...). `dest` is the container path (cleaned lexically here);
/// callers check the path resolved in the rootfs too.
pub fn check_proc_mount(dest: &Path, typ: &str, source: Option<&Path>) -> Result<(), String> {
    let dest = lexical_clean(dest);
    let Ok(under) = dest.strip_prefix("/proc") else {
        return Ok(());
    };
    if under.as_os_str().is_empty() {
        let procfs_source = || {
            source
                .and_then(|s| nix::sys::statfs::statfs(s).ok())
                .is_some_and(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
        };
        if typ == "proc" || procfs_source() {
            return Ok(());
        }
        return Err(format!(
            "mount destination {} must be a proc file system",
            dest.display()
        ));
    }
    if PROC_MOUNT_ALLOWED.iter().any(|a| dest == Path::new(a)) {
        return Ok(());
    }
    Err(format!(
        "mount destination {} is inside /proc, which only allows {}",
        dest.display(),
        PROC_MOUNT_ALLOWED.join(", ")
    ))
}

/// The destination of a spec mount, resolved inside the rootfs, as a path relative
/// to it. Refuses destinations in /proc (see [`check_proc_mount`]), before and after
/// following the image's symlinks.
fn mount_destination(
    rootfs: &Path,
    m: &Mount,
    typ: &str,
) -> Result<(PathBuf, PathBuf), RootfsError> {
    let dest = lexical_clean(m.destination());
    if dest == Path::new("/") {
        return Err(RootfsError::InvalidSpec(
            "a mount cannot replace the container's root directory".into(),
        ));
    }
    let source = m.source().as_deref();
    check_proc_mount(&dest, typ, source).map_err(RootfsError::InvalidSpec)?;
    let resolved = resolve_in_root(rootfs, &dest)?;
    let rel = resolved
        .strip_prefix(rootfs)
        .map_err(|_| RootfsError::SymlinkLoop(dest.clone()))?
        .to_path_buf();
    // An image symlink (/etc/x -> /proc/sys) must not reach /proc either.
    check_proc_mount(&Path::new("/").join(&rel), typ, source).map_err(|e| {
        RootfsError::InvalidSpec(format!(
            "{} (through the image's symlinks): {e}",
            dest.display()
        ))
    })?;
    Ok((dest, rel))
}

/// Opens (creating if needed) the mount point of `dest` inside the rootfs, and checks
/// the handle is not on procfs (unless /proc allows it): the path check in
/// [`mount_destination`] sees the path, this one sees what the kernel found.
fn open_mount_point(
    sys: &dyn Syscall,
    rootfs: &Path,
    dest: &Path,
    rel: &Path,
    kind: MountPointKind,
) -> Result<InRootPath, RootfsError> {
    let target = sys
        .prepare_mount_point(rootfs, rel, kind)
        .map_err(sys_err("create mount point inside the rootfs", dest))?;
    let on_proc = sys
        .is_procfs(&target)
        .map_err(sys_err("statfs mount point", dest))?;
    if on_proc && !PROC_MOUNT_ALLOWED.iter().any(|a| dest == Path::new(a)) {
        return Err(RootfsError::InvalidSpec(format!(
            "mount destination {} is on the proc file system",
            dest.display()
        )));
    }
    Ok(target)
}

/// Whether a detached mount tree (an `open_tree` fd) is a directory or a file.
fn tree_kind(tree: &std::os::fd::OwnedFd) -> Result<MountPointKind, nix::errno::Errno> {
    let st = nix::sys::stat::fstat(tree)?;
    Ok(
        if nix::sys::stat::SFlag::from_bits_truncate(st.st_mode) & nix::sys::stat::SFlag::S_IFMT
            == nix::sys::stat::SFlag::S_IFDIR
        {
            MountPointKind::Dir
        } else {
            MountPointKind::File
        },
    )
}

fn source_kind(source: &Path) -> Result<MountPointKind, RootfsError> {
    let meta = fs::metadata(source).map_err(io_err("stat bind source", source))?;
    Ok(if meta.is_dir() {
        MountPointKind::Dir
    } else {
        MountPointKind::File
    })
}

/// Remount flags, recursive read-only and propagation of one spec mount, applied to
/// `mount`, the handle on the mount just made (never to a path the container can
/// change).
fn finish_mount(
    sys: &dyn Syscall,
    dest: &Path,
    mount: &InRootPath,
    opts: &MountOptions,
    locked: MsFlags,
    is_bind: bool,
) -> Result<(), RootfsError> {
    let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
    if is_bind && !extra.is_empty() {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra | locked;
        sys.mount(None, mount.path(), None, flags, None)
            .map_err(sys_err("remount bind mount with flags", dest))?;
    }
    if opts.recursive_readonly {
        sys.make_readonly_recursive(mount.path())
            .map_err(sys_err("make mount read-only recursively", dest))?;
    }
    if !opts.propagation.is_empty() {
        sys.mount(None, mount.path(), None, opts.propagation, None)
            .map_err(sys_err("set mount propagation", dest))?;
    }
    Ok(())
}

fn mount_entry(sys: &dyn Syscall, plan: &RootfsPlan<'_>, m: &Mount) -> Result<(), RootfsError> {
    let opts = parse_mount_options(m.options().as_deref().unwrap_or(&[]));
    let typ = m.typ().as_deref().unwrap_or("");
    let is_bind = opts.flags.contains(MsFlags::MS_BIND) || typ == "bind";
    let (dest, rel) = mount_destination(plan.rootfs, m, typ)?;
    let dest = dest.as_path();

    if typ == "cgroup" || typ == "cgroup2" {
        let target = open_mount_point(sys, plan.rootfs, dest, &rel, MountPointKind::Dir)?;
        return mount_cgroups(sys, plan, dest, &target, &opts);
    }

    if is_bind {
        let source = m.source().as_deref().ok_or_else(|| {
            RootfsError::InvalidSpec(format!("bind mount {} has no source", dest.display()))
        })?;
        let target = open_mount_point(sys, plan.rootfs, dest, &rel, source_kind(source)?)?;
        let recursive = opts.flags.contains(MsFlags::MS_REC);
        let mount = sys
            .bind_mount_at(source, &target, recursive)
            .map_err(sys_err("bind mount", dest))?;
        return finish_mount(sys, dest, &mount, &opts, statfs_flags(source), true);
    }
    let target = open_mount_point(sys, plan.rootfs, dest, &rel, MountPointKind::Dir)?;
    let source = m.source().as_deref().unwrap_or(Path::new(typ));
    let flags = opts.flags & !MsFlags::MS_REMOUNT;
    let mount = match sys.mount_fs_at(typ, source, flags, &opts.data, &target) {
        Ok(mount) => mount,
        // Without its own network namespace a container may not mount sysfs (the
        // kernel ties sysfs to the netns owner): bind the host's read-only, as runc does.
        Err(Errno::EPERM) if typ == "sysfs" => {
            let mount = sys
                .bind_mount_at(Path::new("/sys"), &target, true)
                .map_err(sys_err("bind host sysfs", dest))?;
            sys.mount(
                None,
                mount.path(),
                None,
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC,
                None,
            )
            .map_err(sys_err("remount host sysfs read-only", dest))?;
            mount
        }
        Err(errno) => return Err(sys_err("mount", dest)(errno)),
    };
    finish_mount(sys, dest, &mount, &opts, MsFlags::empty(), false)
}

/// Creates the bind mounts' mount points in the rootfs while still privileged on the
/// host: inside a joined user namespace a rootfs that is not idmapped belongs to an
/// unmapped owner, so e.g. /etc/resolv.conf could not be created there. Best effort:
/// a failure here shows up, named, when the init mounts. This runs with the host as
/// root, so it creates through fds inside the rootfs exactly as the init does.
///
/// Skipped when the rootfs's `/` already belongs to the namespace's root (berthd's
/// idmapped rootfs, whose upper layer is owned by the mapped root): the init then
/// makes its mount points itself, as that root, so they are the container's files
/// (mapped ids on the host) and never host root's in its writable layer.
pub fn precreate_bind_mount_points(spec: &Spec, rootfs: &Path) {
    if owned_by_namespace_root(spec, rootfs) {
        return;
    }
    for m in spec.mounts().as_deref().unwrap_or(&[]) {
        let opts = parse_mount_options(m.options().as_deref().unwrap_or(&[]));
        let is_bind = opts.flags.contains(MsFlags::MS_BIND) || m.typ().as_deref() == Some("bind");
        let (Some(source), true) = (m.source().as_deref(), is_bind) else {
            continue;
        };
        let Ok((_, rel)) = mount_destination(rootfs, m, "bind") else {
            continue;
        };
        if let Ok(kind) = source_kind(source) {
            let _ = crate::sys::linux::prepare_mount_point(rootfs, &rel, kind);
        }
    }
}

/// Whether the directory `rootfs` is owned by the host uid that `linux.uidMappings`
/// maps the container's root to.
fn owned_by_namespace_root(spec: &Spec, rootfs: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let root = spec
        .linux()
        .as_ref()
        .and_then(|l| l.uid_mappings().as_ref())
        .and_then(|maps| {
            maps.iter()
                .find(|m| m.container_id() == 0 && m.size() > 0)
                .map(|m| m.host_id())
        });
    match (root, std::fs::metadata(rootfs)) {
        (Some(uid), Ok(md)) => md.uid() == uid,
        _ => false,
    }
}

/// Attaches a prepared idmapped tree at the mount's destination, then applies the
/// entry's read-only flag and propagation to the attached tree's fd.
fn attach_idmapped(
    sys: &dyn Syscall,
    plan: &RootfsPlan<'_>,
    m: &Mount,
    tree: &std::os::fd::OwnedFd,
) -> Result<(), RootfsError> {
    use std::os::fd::{AsFd, AsRawFd};
    let opts = parse_mount_options(m.options().as_deref().unwrap_or(&[]));
    let (dest, rel) = mount_destination(plan.rootfs, m, "bind")?;
    let dest = dest.as_path();
    // The kind comes from the tree itself, prepared on the host: the init runs as the
    // namespace's root, which may not be able to reach the source's path (kubelet's
    // `<root-dir>/pods/<uid>/etc-hosts` under a 0700 /var/lib/kubelet).
    let kind = tree_kind(tree).map_err(sys_err("stat idmapped mount", dest))?;
    let target = open_mount_point(sys, plan.rootfs, dest, &rel, kind)?;
    sys.attach_tree(tree.as_fd(), &target)
        .map_err(sys_err("attach idmapped mount", dest))?;
    // The tree's fd names the attached mount; `plan.idmapped` keeps it open.
    let mount = InRootPath::plain(Path::new(&format!("/proc/self/fd/{}", tree.as_raw_fd())));
    let locked = statfs_flags(mount.path());
    finish_mount(sys, dest, &mount, &opts, locked, true)
}

/// A `cgroup` mount: a tmpfs with one cgroup v1 mount per hierarchy (plus symlinks for
/// co-mounted controllers), or a single cgroup2 mount on a pure v2 host. `target` is
/// the handle on the mount point; everything below it is on the fresh tmpfs, which
/// only this mount namespace can reach.
fn mount_cgroups(
    sys: &dyn Syscall,
    plan: &RootfsPlan<'_>,
    dest: &Path,
    target: &InRootPath,
    opts: &MountOptions,
) -> Result<(), RootfsError> {
    let flags = opts.flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let v1: Vec<&CgroupHierarchy> = plan
        .cgroups
        .iter()
        .filter(|h| !h.controllers.is_empty())
        .collect();
    if v1.is_empty() {
        if plan.in_user_ns {
            // cgroup2 can only be mounted by the owner of the cgroup namespace.
            return bind_host_cgroup(sys, Path::new("/sys/fs/cgroup"), target, dest);
        }
        sys.mount_fs_at("cgroup2", Path::new("cgroup2"), flags, "", target)
            .map_err(sys_err("mount cgroup2", dest))?;
        return Ok(());
    }
    let tmpfs = sys
        .mount_fs_at(
            "tmpfs",
            Path::new("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            "mode=755",
            target,
        )
        .map_err(sys_err("mount tmpfs for cgroups", dest))?;
    for h in v1 {
        let dir_name = h.controllers.trim_start_matches("name=");
        let dir = dest.join(dir_name);
        let point = sys
            .prepare_mount_point(tmpfs.path(), Path::new(dir_name), MountPointKind::Dir)
            .map_err(sys_err("create cgroup hierarchy mount point", &dir))?;
        let data = if h.controllers.starts_with("name=") {
            format!("none,{}", h.controllers)
        } else {
            h.controllers.clone()
        };
        if plan.in_user_ns {
            // A user namespace may not mount cgroup v1 at all: bind the host's
            // hierarchy instead (as runc does), made read-only with the rest below.
            let host = Path::new("/sys/fs/cgroup").join(dir_name);
            bind_host_cgroup(sys, &host, &point, &dir)?;
        } else {
            sys.mount_fs_at("cgroup", Path::new("cgroup"), flags, &data, &point)
                .map_err(sys_err("mount cgroup v1 hierarchy", &dir))?;
        }
        if h.controllers.contains(',') {
            for single in h.controllers.split(',') {
                let link = tmpfs.path().join(single);
                sys.symlink(Path::new(dir_name), &link).map_err(sys_err(
                    "symlink co-mounted cgroup controller",
                    &dest.join(single),
                ))?;
            }
        }
    }
    if opts.flags.contains(MsFlags::MS_RDONLY) {
        sys.mount(
            None,
            tmpfs.path(),
            None,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None,
        )
        .map_err(sys_err("remount cgroup tmpfs read-only", dest))?;
    }
    Ok(())
}

/// Binds a host cgroup hierarchy at `target` (inside a user namespace, where cgroup
/// file systems cannot be mounted), read-only.
fn bind_host_cgroup(
    sys: &dyn Syscall,
    host: &Path,
    target: &InRootPath,
    dest: &Path,
) -> Result<(), RootfsError> {
    let mount = sys
        .bind_mount_at(host, target, false)
        .map_err(sys_err("bind host cgroup hierarchy", dest))?;
    sys.mount(
        None,
        mount.path(),
        None,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None,
    )
    .map_err(sys_err("remount host cgroup hierarchy read-only", dest))
}

/// The devices every container gets (runc's list), in addition to the spec's.
fn default_devices() -> Vec<(&'static str, u64, u64)> {
    vec![
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
}

fn create_devices(
    sys: &dyn Syscall,
    plan: &RootfsPlan<'_>,
    dev_is_mounted: bool,
) -> Result<(), RootfsError> {
    let mut devices: Vec<LinuxDevice> = Vec::new();
    if let Some(spec_devs) = plan.spec.linux().as_ref().and_then(|l| l.devices().clone()) {
        devices.extend(spec_devs);
    }
    if dev_is_mounted {
        for (path, major, minor) in default_devices() {
            if !devices.iter().any(|d| d.path() == Path::new(path)) {
                let mut d = LinuxDevice::default();
                d.set_path(PathBuf::from(path));
                d.set_typ(LinuxDeviceType::C);
                d.set_major(i64::try_from(major).unwrap_or_default());
                d.set_minor(i64::try_from(minor).unwrap_or_default());
                d.set_file_mode(Some(0o666));
                d.set_uid(Some(0));
                d.set_gid(Some(0));
                devices.push(d);
            }
        }
    }
    for d in &devices {
        create_device(sys, plan, d)?;
    }
    Ok(())
}

/// The directory that will hold `dest` (a path in the container), opened (created if
/// missing) through a handle inside the rootfs, and the last component's name: what
/// is made there goes through `/proc/self/fd/N/<name>`, never through a path the
/// container can redirect.
fn parent_handle(
    sys: &dyn Syscall,
    rootfs: &Path,
    dest: &Path,
) -> Result<(InRootPath, std::ffi::OsString), RootfsError> {
    let clean = lexical_clean(dest);
    let resolved_parent = resolve_in_root(rootfs, clean.parent().unwrap_or(Path::new("/")))?;
    let name = clean
        .file_name()
        .ok_or_else(|| RootfsError::InvalidSpec(format!("{} has no file name", dest.display())))?
        .to_os_string();
    let rel = resolved_parent
        .strip_prefix(rootfs)
        .map_err(|_| RootfsError::SymlinkLoop(dest.to_path_buf()))?;
    let parent = sys
        .prepare_mount_point(rootfs, rel, MountPointKind::Dir)
        .map_err(sys_err("create parent directory inside the rootfs", dest))?;
    Ok((parent, name))
}

fn create_device(
    sys: &dyn Syscall,
    plan: &RootfsPlan<'_>,
    d: &LinuxDevice,
) -> Result<(), RootfsError> {
    let dev_path = lexical_clean(d.path());
    if !dev_path.starts_with("/dev") || dev_path == Path::new("/dev") {
        return Err(RootfsError::InvalidSpec(format!(
            "device {:?} is not under /dev",
            d.path()
        )));
    }
    let dest = dev_path.as_path();
    if plan.in_user_ns {
        // mknod is not allowed in a user namespace: bind the host's node instead.
        let resolved = resolve_in_root(plan.rootfs, dest)?;
        let rel = resolved
            .strip_prefix(plan.rootfs)
            .map_err(|_| RootfsError::SymlinkLoop(dest.to_path_buf()))?;
        let target = sys
            .prepare_mount_point(plan.rootfs, rel, MountPointKind::File)
            .map_err(sys_err("create device mount point", dest))?;
        return sys
            .bind_mount_at(d.path(), &target, false)
            .map(drop)
            .map_err(sys_err("bind device", dest));
    }
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
        LinuxDeviceType::B => libc::S_IFBLK,
        LinuxDeviceType::P => libc::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(RootfsError::InvalidSpec(format!(
                "device {:?} has type 'a'",
                d.path()
            )));
        }
    };
    let major = u64::try_from(d.major()).map_err(|_| {
        RootfsError::InvalidSpec(format!("device {:?} has a negative major", d.path()))
    })?;
    let minor = u64::try_from(d.minor()).map_err(|_| {
        RootfsError::InvalidSpec(format!("device {:?} has a negative minor", d.path()))
    })?;
    let (parent, name) = parent_handle(sys, plan.rootfs, dest)?;
    // Every call below names the node as <parent fd>/<name>: the last component is
    // never followed as a symlink (unlink, mknod, lchown do not follow it).
    let node = parent.path().join(&name);
    // Replace whatever the image has there (often a plain file or a stale node).
    if let Ok(meta) = fs::symlink_metadata(&node)
        && !meta.is_dir()
    {
        let _ = fs::remove_file(&node);
    }
    let perm = d.file_mode().unwrap_or(0o666) & 0o7777;
    sys.mknod(&node, kind, perm, major, minor)
        .map_err(sys_err("mknod", dest))?;
    // mknod honours the umask; the spec's mode is exact. Opened O_NOFOLLOW and checked
    // to be the node, so a symlink swapped in cannot pass the chmod elsewhere.
    match nix::fcntl::open(
        &node,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(fd) => {
            let st = nix::sys::stat::fstat(&fd).map_err(sys_err("stat device", dest))?;
            if st.st_mode & libc::S_IFMT != kind {
                return Err(sys_err("device replaced while created", dest)(
                    Errno::EEXIST,
                ));
            }
            let via = PathBuf::from(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&fd)
            ));
            fs::set_permissions(&via, fs::Permissions::from_mode(perm))
                .map_err(io_err("chmod device", dest))?;
        }
        // Under the fake nothing exists on disk.
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(sys_err("open device", dest)(e)),
    }
    sys.lchown(&node, d.uid().unwrap_or(0), d.gid().unwrap_or(0))
        .map_err(sys_err("chown device", dest))
}

fn create_dev_symlinks(
    sys: &dyn Syscall,
    rootfs: &Path,
    pts_is_mounted: bool,
) -> Result<(), RootfsError> {
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    if pts_is_mounted {
        links.push(("pts/ptmx", "ptmx"));
    }
    let resolved = resolve_in_root(rootfs, Path::new("/dev"))?;
    let rel = resolved
        .strip_prefix(rootfs)
        .map_err(|_| RootfsError::SymlinkLoop("/dev".into()))?;
    let dev = sys
        .prepare_mount_point(rootfs, rel, MountPointKind::Dir)
        .map_err(sys_err("open /dev inside the rootfs", Path::new("/dev")))?;
    for (target, name) in links {
        let link = dev.path().join(name);
        if let Ok(meta) = fs::symlink_metadata(&link) {
            if meta.is_dir() {
                continue;
            }
            let _ = fs::remove_file(&link);
        }
        match sys.symlink(Path::new(target), &link) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(sys_err("symlink in /dev", &Path::new("/dev").join(name))(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, RecordingSyscall};
    use std::os::unix::fs::symlink;

    #[test]
    fn resolve_in_root_keeps_symlinks_and_dotdot_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/", root.join("escape_abs")).unwrap();
        symlink("../../../../", root.join("etc/escape_rel")).unwrap();
        symlink("/etc", root.join("etclink")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/escape_abs/etc/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/etc/escape_rel/tmp")).unwrap(),
            root.join("tmp")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("../../etclink/hosts")).unwrap(),
            root.join("etc/hosts")
        );
    }

    #[test]
    fn resolve_in_root_reports_symlink_loops() {
        let tmp = tempfile::tempdir().unwrap();
        symlink("b", tmp.path().join("a")).unwrap();
        symlink("a", tmp.path().join("b")).unwrap();
        assert!(matches!(
            resolve_in_root(tmp.path(), Path::new("/a/x")),
            Err(RootfsError::SymlinkLoop(_))
        ));
    }

    #[test]
    fn mount_options_split_flags_propagation_and_data() {
        let o: Vec<String> = [
            "rbind", "ro", "nosuid", "rslave", "size=64k", "mode=755", "rw",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = parse_mount_options(&o);
        // "rw" after "ro" wins, as in mount(8).
        assert_eq!(
            p.flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_NOSUID
        );
        assert_eq!(p.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(p.data, "size=64k,mode=755");
    }

    fn spec_with_mounts(rootfs: &Path) -> Spec {
        let mut spec = Spec::default();
        let mut root = oci_spec::runtime::Root::default();
        root.set_path(rootfs.to_path_buf());
        root.set_readonly(Some(true));
        spec.set_root(Some(root));
        spec
    }

    #[test]
    fn containing_mount_is_the_longest_ancestor_mount_point() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /var/lib rw shared:5 - tmpfs tmpfs rw
31 30 0:41 / /var/lib/berth/ov\\040l rw shared:6 - overlay overlay rw
32 22 0:42 / /var/libx rw - tmpfs tmpfs rw
";
        let cases = [
            ("/var/lib/berth/ov l/rootfs", "/var/lib/berth/ov l"),
            ("/var/lib/berth/ov l", "/var/lib/berth/ov l"),
            ("/var/lib/berth/ovl", "/var/lib"),
            ("/var/libx/a", "/var/libx"),
            ("/tmp/x", "/"),
        ];
        for (path, want) in cases {
            assert_eq!(
                containing_mount(info, Path::new(path)),
                Some(PathBuf::from(want)),
                "{path}"
            );
        }
        assert_eq!(unescape_mountinfo(r"a\134b\011c\9"), "a\\b\tc\\9");
    }

    #[test]
    fn rshared_keeps_root_shared_and_makes_the_rootfs_parent_private_first() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        let volume = tmp.path().join("volume");
        fs::create_dir_all(&rootfs).unwrap();
        fs::create_dir_all(&volume).unwrap();
        let mut spec = spec_with_mounts(&rootfs);
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        let mut bind = Mount::default();
        bind.set_destination("/data".into());
        bind.set_typ(Some("bind".into()));
        bind.set_source(Some(volume.clone()));
        bind.set_options(Some(vec!["rbind".into(), "rshared".into(), "rw".into()]));
        mounts.push(bind);
        spec.set_mounts(Some(mounts));
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_rootfs_propagation(Some("rshared".into()));
        spec.set_linux(Some(linux));
        let sys = RecordingSyscall::new();
        let plan = RootfsPlan {
            spec: &spec,
            rootfs: &rootfs,
            cgroups: vec![],
            in_user_ns: false,
            idmapped: &[],
        };
        prepare_rootfs(&sys, &plan).unwrap();
        pivot_into(&sys, &spec, &rootfs).unwrap();
        let mounts = sys.mounts();
        let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
        // / stays in its host peer groups (never slave) so the volume's bind is a
        // peer of the host mount and mounts made in the container reach the host.
        assert_eq!(mounts[0], (PathBuf::from("/"), None, shared));
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let parent = containing_mount(&info, &rootfs).unwrap();
        assert!(rootfs.starts_with(&parent));
        assert_eq!(mounts[1], (parent, None, MsFlags::MS_PRIVATE));
        assert_eq!(
            mounts[2],
            (rootfs.clone(), None, MsFlags::MS_BIND | MsFlags::MS_REC)
        );
        let data = rootfs.join("data");
        let at_data: Vec<_> = mounts.iter().filter(|m| m.0 == data).collect();
        assert_eq!(at_data.last().unwrap().2, shared, "{at_data:?}");
        assert!(
            !mounts
                .iter()
                .any(|m| m.0 == Path::new("/") && m.2.contains(MsFlags::MS_SLAVE)),
            "/ made slave: {mounts:?}"
        );
        // After the pivot only the old root (reached through "..") is made slave,
        // never the new root ("."), and then the new root is made shared too.
        let n = mounts.len();
        assert_eq!(
            mounts[n - 2],
            (
                PathBuf::from(".."),
                None,
                MsFlags::MS_SLAVE | MsFlags::MS_REC
            )
        );
        assert_eq!(mounts[n - 1], (PathBuf::from("/"), None, shared));
    }

    #[test]
    fn default_spec_mount_sequence_binds_root_mounts_then_pivots() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        fs::create_dir_all(&rootfs).unwrap();
        let spec = spec_with_mounts(&rootfs);
        let sys = RecordingSyscall::new();
        let plan = RootfsPlan {
            spec: &spec,
            rootfs: &rootfs,
            cgroups: vec![
                CgroupHierarchy {
                    controllers: "cpu,cpuacct".into(),
                },
                CgroupHierarchy {
                    controllers: "memory".into(),
                },
            ],
            in_user_ns: false,
            idmapped: &[],
        };
        prepare_rootfs(&sys, &plan).unwrap();
        pivot_into(&sys, &spec, &rootfs).unwrap();
        let mounts = sys.mounts();
        assert_eq!(
            mounts[0],
            (
                PathBuf::from("/"),
                None,
                MsFlags::MS_SLAVE | MsFlags::MS_REC
            )
        );
        assert_eq!(
            mounts[1],
            (rootfs.clone(), None, MsFlags::MS_BIND | MsFlags::MS_REC)
        );
        let targets: Vec<_> = mounts.iter().map(|m| m.0.clone()).collect();
        for d in ["proc", "dev", "dev/pts", "dev/shm", "dev/mqueue", "sys"] {
            assert!(
                targets.contains(&rootfs.join(d)),
                "no mount at /{d}: {targets:?}"
            );
        }
        // /proc comes before /dev, in spec order.
        let pos = |p: &str| targets.iter().position(|t| t == &rootfs.join(p)).unwrap();
        assert!(pos("proc") < pos("dev") && pos("dev") < pos("dev/pts"));
        let calls = sys.calls();
        assert!(calls.contains(&Call::Mknod {
            path: rootfs.join("dev/null"),
            kind: libc::S_IFCHR,
            perm: 0o666,
            major: 1,
            minor: 3
        }));
        assert!(calls.contains(&Call::Symlink {
            original: "pts/ptmx".into(),
            link: rootfs.join("dev/ptmx")
        }));
        // The pivot: chdir, pivot_root(".", "."), detach old root, chdir /.
        let tail: Vec<_> = calls[calls.len() - 5..].to_vec();
        assert_eq!(tail[0], Call::Chdir(rootfs.clone()));
        assert_eq!(
            tail[1],
            Call::PivotRoot {
                new_root: ".".into(),
                put_old: ".".into()
            }
        );
        assert_eq!(
            tail[3],
            Call::Umount2 {
                target: ".".into(),
                flags: MntFlags::MNT_DETACH
            }
        );
        assert_eq!(tail[4], Call::Chdir("/".into()));
    }

    #[test]
    fn cgroup_mount_gets_one_v1_mount_per_hierarchy_and_controller_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        fs::create_dir_all(&rootfs).unwrap();
        let mut spec = spec_with_mounts(&rootfs);
        let mut m = Mount::default();
        m.set_destination("/sys/fs/cgroup".into());
        m.set_typ(Some("cgroup".into()));
        m.set_source(Some("cgroup".into()));
        m.set_options(Some(vec!["ro".into(), "nosuid".into()]));
        spec.set_mounts(Some(vec![m]));
        let sys = RecordingSyscall::new();
        let plan = RootfsPlan {
            spec: &spec,
            rootfs: &rootfs,
            cgroups: parse_proc_cgroup("12:cpu,cpuacct:/a\n3:memory:/a\n1:name=systemd:/\n0::/\n"),
            in_user_ns: false,
            idmapped: &[],
        };
        prepare_rootfs(&sys, &plan).unwrap();
        let calls = sys.calls();
        let cg = rootfs.join("sys/fs/cgroup");
        assert!(calls.iter().any(
            |c| matches!(c, Call::Mount { target, data: Some(d), fstype: Some(t), .. }
            if target == &cg.join("cpu,cpuacct") && d == "cpu,cpuacct" && t == "cgroup")
        ));
        assert!(
            calls
                .iter()
                .any(|c| matches!(c, Call::Mount { target, data: Some(d), .. }
            if target == &cg.join("systemd") && d == "none,name=systemd"))
        );
        assert!(calls.contains(&Call::Symlink {
            original: "cpu,cpuacct".into(),
            link: cg.join("cpuacct")
        }));
        // read-only cgroup mount: the tmpfs is remounted read-only at the end.
        let last_mount = calls.iter().rev().find(|c| matches!(c, Call::Mount { .. }));
        assert!(matches!(last_mount, Some(Call::Mount { target, flags, .. })
            if target == &cg && flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT)));
    }

    #[test]
    fn bind_mount_target_symlink_cannot_escape_the_rootfs() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&rootfs).unwrap();
        fs::create_dir_all(&outside).unwrap();
        symlink(&outside, rootfs.join("data")).unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(&src).unwrap();
        let mut spec = spec_with_mounts(&rootfs);
        let mut m = Mount::default();
        m.set_destination("/data/vol".into());
        m.set_source(Some(src.clone()));
        m.set_typ(Some("bind".into()));
        m.set_options(Some(vec!["rbind".into(), "ro".into()]));
        spec.set_mounts(Some(vec![m]));
        let sys = RecordingSyscall::new();
        let plan = RootfsPlan {
            spec: &spec,
            rootfs: &rootfs,
            cgroups: vec![],
            in_user_ns: false,
            idmapped: &[],
        };
        prepare_rootfs(&sys, &plan).unwrap();
        // The absolute symlink to the host dir is resolved inside the rootfs.
        let expected = rootfs.join(outside.strip_prefix("/").unwrap()).join("vol");
        let mounts = sys.mounts();
        assert_eq!(mounts[2].0, expected);
        assert_eq!(mounts[2].2, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert!(
            mounts[3]
                .2
                .contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT)
        );
        assert!(!outside.join("vol").exists());
    }

    #[test]
    fn failing_mount_names_the_step_and_errno() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        fs::create_dir_all(&rootfs).unwrap();
        let spec = spec_with_mounts(&rootfs);
        let sys = RecordingSyscall::new();
        sys.fail_when(
            |c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "proc"),
            Errno::EPERM,
        );
        let plan = RootfsPlan {
            spec: &spec,
            rootfs: &rootfs,
            cgroups: vec![],
            in_user_ns: false,
            idmapped: &[],
        };
        let err = prepare_rootfs(&sys, &plan).unwrap_err();
        assert_eq!(err.errno(), libc::EPERM);
        assert!(err.to_string().contains("mount"), "{err}");
        assert!(err.to_string().contains("proc"), "{err}");
    }

    #[test]
    fn finish_masks_and_makes_root_read_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("proc/acpi")).unwrap();
        fs::write(root.join("proc/kcore"), b"").unwrap();
        fs::create_dir_all(root.join("proc/sys")).unwrap();
        let spec = spec_with_mounts(root);
        let sys = RecordingSyscall::new();
        finish_rootfs(&sys, &spec, root).unwrap();
        let calls = sys.calls();
        assert!(calls.contains(&Call::Mount {
            source: Some("/dev/null".into()),
            target: root.join("proc/kcore"),
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None
        }));
        assert!(
            calls
                .iter()
                .any(|c| matches!(c, Call::Mount { target, fstype: Some(t), .. }
            if target == &root.join("proc/acpi") && t == "tmpfs"))
        );
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { target, flags, .. }
            if target == &root.join("proc/sys") && flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT))));
        assert!(
            matches!(calls.last(), Some(Call::Mount { target, flags, .. })
            if target == root && flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT | MsFlags::MS_BIND))
        );
    }

    /// The mount point `dest` resolved and prepared by the real kernel calls, as
    /// mount_entry does it (no root needed: openat2, mkdirat, open).
    fn prepare_real(root: &Path, dest: &str, kind: MountPointKind) -> Result<(), RootfsError> {
        let resolved = resolve_in_root(root, Path::new(dest))?;
        let rel = resolved.strip_prefix(root).unwrap();
        crate::sys::linux::LinuxSyscall
            .prepare_mount_point(root, rel, kind)
            .map(drop)
            .map_err(sys_err("prepare", Path::new(dest)))
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn mount_points_through_a_symlink_to_the_host_are_made_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        symlink(&outside, root.join("data")).unwrap();
        symlink("../../../../..", root.join("etc/up")).unwrap();
        prepare_real(&root, "/data/a/b/file", MountPointKind::File).unwrap();
        prepare_real(&root, "/data/dir", MountPointKind::Dir).unwrap();
        prepare_real(&root, "/etc/up/escaped", MountPointKind::Dir).unwrap();
        assert!(entries(&outside).is_empty(), "{:?}", entries(&outside));
        let inside = root.join(outside.strip_prefix("/").unwrap());
        assert!(inside.join("a/b/file").is_file());
        assert!(inside.join("dir").is_dir());
        assert!(root.join("escaped").is_dir());
        assert!(!tmp.path().join("escaped").exists());
    }

    #[test]
    fn an_existing_file_mount_point_is_never_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        prepare_real(root, "/etc/hosts", MountPointKind::File).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("etc/hosts")).unwrap(),
            "127.0.0.1 localhost\n"
        );
        // A dangling symlink is followed inside the root: the file is made there.
        symlink("/run/resolv.conf", root.join("etc/resolv.conf")).unwrap();
        prepare_real(root, "/etc/resolv.conf", MountPointKind::File).unwrap();
        assert!(root.join("run/resolv.conf").is_file());
    }

    /// Issue 22 without a container: a thread swaps a directory and a symlink to a
    /// host directory (renameat2 RENAME_EXCHANGE) while mount points are prepared
    /// through that name. Bounded by count and time.
    #[test]
    fn swapping_a_directory_and_a_symlink_never_creates_outside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(root.join("shared/d")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("f-0"), "host").unwrap();
        symlink(&outside, root.join("shared/l")).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let stop = stop.clone();
            let a =
                std::ffi::CString::new(root.join("shared/d").into_os_string().into_encoded_bytes())
                    .unwrap();
            let b =
                std::ffi::CString::new(root.join("shared/l").into_os_string().into_encoded_bytes())
                    .unwrap();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // SAFETY: two NUL-terminated paths that outlive the call.
                    unsafe {
                        libc::renameat2(
                            libc::AT_FDCWD,
                            a.as_ptr(),
                            libc::AT_FDCWD,
                            b.as_ptr(),
                            libc::RENAME_EXCHANGE,
                        )
                    };
                }
            })
        };
        let start = std::time::Instant::now();
        let mut n = 0;
        while n < 3000 && start.elapsed() < std::time::Duration::from_secs(3) {
            // Losing the race may fail a mount point (ELOOP...); it may never escape.
            let _ = prepare_real(&root, &format!("/shared/d/f-{n}"), MountPointKind::File);
            let _ = prepare_real(&root, &format!("/shared/d/dir-{n}"), MountPointKind::Dir);
            let _ = prepare_real(&root, "/shared/d/f-0", MountPointKind::File);
            n += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        assert_eq!(entries(&outside), ["f-0"], "after {n} rounds");
        assert_eq!(fs::read_to_string(outside.join("f-0")).unwrap(), "host");
    }

    #[test]
    fn proc_mount_destinations_follow_runcs_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let plain = Some(tmp.path());
        let proc_src = Some(Path::new("/proc"));
        let ok = [
            ("/proc", "proc", None),
            ("/proc", "bind", proc_src),
            ("/proc/uptime", "bind", plain),
            ("/proc/sys/kernel/ns_last_pid", "bind", plain),
            ("/proc/../etc/x", "bind", plain),
            ("/procfs", "bind", plain),
            ("/sys/proc", "bind", plain),
        ];
        for (dest, typ, src) in ok {
            assert!(
                check_proc_mount(Path::new(dest), typ, src).is_ok(),
                "{dest}"
            );
        }
        let refused = [
            ("/proc", "bind", plain),
            ("/proc", "tmpfs", None),
            ("/proc/", "bind", plain),
            ("/proc/sys", "bind", plain),
            ("/proc/self/attr/exec", "bind", plain),
            ("/tmp/../proc/sysrq-trigger", "bind", plain),
            ("//proc/./kcore", "bind", plain),
        ];
        for (dest, typ, src) in refused {
            let err = check_proc_mount(Path::new(dest), typ, src).unwrap_err();
            assert!(err.contains("/proc"), "{dest}: {err}");
        }
    }

    fn spec_with_bind(rootfs: &Path, dest: &str, source: &Path) -> Spec {
        let mut spec = spec_with_mounts(rootfs);
        let mut m = Mount::default();
        m.set_destination(dest.into());
        m.set_source(Some(source.to_path_buf()));
        m.set_typ(Some("bind".into()));
        m.set_options(Some(vec!["rbind".into()]));
        spec.set_mounts(Some(vec![m]));
        spec
    }

    #[test]
    fn binds_into_proc_are_refused_even_through_an_image_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        fs::create_dir_all(rootfs.join("etc")).unwrap();
        symlink("/proc/sys", rootfs.join("etc/evil")).unwrap();
        for dest in ["/proc/sys/kernel", "/etc/evil/kernel"] {
            let spec = spec_with_bind(&rootfs, dest, tmp.path());
            let sys = RecordingSyscall::new();
            let plan = RootfsPlan {
                spec: &spec,
                rootfs: &rootfs,
                cgroups: vec![],
                in_user_ns: false,
                idmapped: &[],
            };
            let err = prepare_rootfs(&sys, &plan).unwrap_err();
            assert_eq!(err.errno(), libc::EINVAL, "{dest}: {err}");
            assert!(err.to_string().contains("/proc"), "{dest}: {err}");
            assert!(
                !sys.calls()
                    .iter()
                    .any(|c| matches!(c, Call::MountPoint { .. })),
                "{dest}: a mount point was made"
            );
        }
    }

    #[test]
    fn a_mount_point_the_kernel_finds_on_procfs_is_refused() {
        // The real host /proc: the handle is on procfs whatever the path said.
        let sys = crate::sys::linux::LinuxSyscall;
        let err = open_mount_point(
            &sys,
            Path::new("/"),
            Path::new("/run/x"),
            Path::new("proc/sys/kernel"),
            MountPointKind::Dir,
        )
        .unwrap_err();
        assert!(err.to_string().contains("proc file system"), "{err}");
        assert!(
            open_mount_point(
                &sys,
                Path::new("/"),
                Path::new("/proc/uptime"),
                Path::new("proc/uptime"),
                MountPointKind::File,
            )
            .is_ok()
        );
    }

    #[test]
    fn bind_mount_flags_and_propagation_act_on_the_new_mount_not_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        fs::create_dir_all(&rootfs).unwrap();
        let mut spec = spec_with_bind(&rootfs, "/vol", tmp.path());
        let mut m = spec.mounts().clone().unwrap()[0].clone();
        m.set_options(Some(vec![
            "rbind".into(),
            "ro".into(),
            "rro".into(),
            "rprivate".into(),
        ]));
        spec.set_mounts(Some(vec![m]));
        let sys = RecordingSyscall::new();
        let plan = RootfsPlan {
            spec: &spec,
            rootfs: &rootfs,
            cgroups: vec![],
            in_user_ns: false,
            idmapped: &[],
        };
        prepare_rootfs(&sys, &plan).unwrap();
        let calls = sys.calls();
        let vol = rootfs.join("vol");
        let at = |pred: &dyn Fn(&Call) -> bool| calls.iter().position(pred).unwrap();
        let point = at(&|c| {
            *c == Call::MountPoint {
                path: vol.clone(),
                kind: MountPointKind::Dir,
            }
        });
        let bind = at(
            &|c| matches!(c, Call::Mount { target, flags, .. } if *target == vol && *flags == MsFlags::MS_BIND | MsFlags::MS_REC),
        );
        let remount = at(
            &|c| matches!(c, Call::Mount { target, flags, .. } if *target == vol && flags.contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY)),
        );
        let rro = at(&|c| *c == Call::ReadonlyRecursive(vol.clone()));
        let prop = at(
            &|c| matches!(c, Call::Mount { target, flags, .. } if *target == vol && *flags == MsFlags::MS_PRIVATE | MsFlags::MS_REC),
        );
        assert!(
            point < bind && bind < remount && remount < rro && rro < prop,
            "{calls:?}"
        );
    }

    #[test]
    fn mount_points_are_precreated_only_where_the_namespace_root_cannot_make_them() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        fs::create_dir_all(&rootfs).unwrap();
        let owner = fs::metadata(&rootfs).unwrap().uid();
        let spec_mapping_root_to = |host_id: u32| {
            let mut spec = spec_with_bind(&rootfs, "/data", tmp.path());
            let mut linux = spec.linux().clone().unwrap_or_default();
            linux.set_uid_mappings(Some(vec![
                oci_spec::runtime::LinuxIdMappingBuilder::default()
                    .container_id(0u32)
                    .host_id(host_id)
                    .size(65536u32)
                    .build()
                    .unwrap(),
            ]));
            spec.set_linux(Some(linux));
            spec
        };
        // An idmapped rootfs (its `/` is the namespace root's): the init makes them.
        precreate_bind_mount_points(&spec_mapping_root_to(owner), &rootfs);
        assert!(!rootfs.join("data").exists());
        // A rootfs of an owner the namespace does not map as root: made on the host.
        precreate_bind_mount_points(&spec_mapping_root_to(owner.wrapping_add(1)), &rootfs);
        assert!(rootfs.join("data").is_dir());
    }
}
