//! The spec's mounts: option parsing, the proc-mount and destination checks, binds
//! (plain and idmapped), and bind-mount points created ahead of user-namespace set-up.

use std::fs;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};

use super::cgroupfs::mount_cgroups;
use super::{RootfsError, RootfsPlan, io_err, resolve_in_root, statfs_flags, sys_err};
use crate::sys::{Errno, InRootPath, MountArgs, MountPointKind, MsFlags, NewFs, Syscall};

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

/// Files under /proc a container may have something mounted on: the ones lxcfs
/// emulates (the same list as runc's checkProcMount).
pub(super) const PROC_MOUNT_ALLOWED: &[&str] = &[
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
pub(super) fn lexical_clean(dest: &Path) -> PathBuf {
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
pub(super) fn mount_destination(
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
pub(super) fn open_mount_point(
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
pub(super) fn tree_kind(tree: &std::os::fd::OwnedFd) -> Result<MountPointKind, nix::errno::Errno> {
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

pub(super) fn source_kind(source: &Path) -> Result<MountPointKind, RootfsError> {
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
pub(super) fn finish_mount(
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
        sys.mount(MountArgs::change(mount.path(), flags))
            .map_err(sys_err("remount bind mount with flags", dest))?;
    }
    if opts.recursive_readonly {
        sys.make_readonly_recursive(mount.path())
            .map_err(sys_err("make mount read-only recursively", dest))?;
    }
    if !opts.propagation.is_empty() {
        sys.mount(MountArgs::change(mount.path(), opts.propagation))
            .map_err(sys_err("set mount propagation", dest))?;
    }
    Ok(())
}

pub(super) fn mount_entry(
    sys: &dyn Syscall,
    plan: &RootfsPlan<'_>,
    m: &Mount,
) -> Result<(), RootfsError> {
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
    let mount = match sys.mount_fs_at(
        NewFs {
            fstype: typ,
            source,
            flags,
            data: &opts.data,
        },
        &target,
    ) {
        Ok(mount) => mount,
        // Without its own network namespace a container may not mount sysfs (the
        // kernel ties sysfs to the netns owner): bind the host's read-only, as runc does.
        Err(Errno::EPERM) if typ == "sysfs" => {
            bind_host_read_only(sys, Path::new("/sys"), &target, true, dest)?
        }
        Err(errno) => return Err(sys_err("mount", dest)(errno)),
    };
    finish_mount(sys, dest, &mount, &opts, MsFlags::empty(), false)
}

/// Remounts the mount at `path` read-only, nosuid, nodev and noexec: how what a
/// container is shown but must neither change nor run from (its cgroup tmpfs, a host
/// file system bound in for it) is locked.
pub(super) fn remount_locked_read_only(sys: &dyn Syscall, path: &Path) -> Result<(), Errno> {
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    sys.mount(MountArgs::change(path, flags))
}

/// Binds the host's `host` at `target` (`dest` in the container) and locks the bind
/// read-only: what a container is given, as runc does, where the kernel will not let
/// it mount the file system itself (sysfs without its own network namespace, cgroup
/// hierarchies inside a user namespace).
pub(super) fn bind_host_read_only(
    sys: &dyn Syscall,
    host: &Path,
    target: &InRootPath,
    recursive: bool,
    dest: &Path,
) -> Result<InRootPath, RootfsError> {
    let mount = sys
        .bind_mount_at(host, target, recursive)
        .map_err(sys_err("bind host file system", dest))?;
    remount_locked_read_only(sys, mount.path())
        .map_err(sys_err("remount host file system read-only", dest))?;
    Ok(mount)
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
pub(super) fn owned_by_namespace_root(spec: &Spec, rootfs: &Path) -> bool {
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
pub(super) fn attach_idmapped(
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
