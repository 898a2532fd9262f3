//! The container's root filesystem: the spec's mounts, /dev, pivot_root, masked and
//! read-only paths. Every kernel call goes through [`Syscall`], so the sequence is
//! unit-tested with the recording fake.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::sys::{Errno, MntFlags, MsFlags, Syscall};

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
                let target = fs::read_link(&candidate).map_err(io_err("readlink", &candidate))?;
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
                readonly_path(sys, &join_abs(root, p))?;
            }
        }
        if let Some(masked) = linux.masked_paths() {
            for p in masked {
                mask_path(sys, &join_abs(root, p))?;
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

fn mask_path(sys: &dyn Syscall, path: &Path) -> Result<(), RootfsError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat masked path", path)(e)),
    };
    if meta.is_dir() {
        sys.mount(
            Some(Path::new("tmpfs")),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None,
        )
        .map_err(sys_err("mask directory", path))
    } else {
        sys.mount(
            Some(Path::new("/dev/null")),
            path,
            None,
            MsFlags::MS_BIND,
            None,
        )
        .map_err(sys_err("mask file", path))
    }
}

fn readonly_path(sys: &dyn Syscall, path: &Path) -> Result<(), RootfsError> {
    if !path.exists() {
        return Ok(());
    }
    sys.mount(
        Some(path),
        path,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(sys_err("bind read-only path", path))?;
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_REC
        | statfs_flags(path);
    sys.mount(None, path, None, flags, None)
        .map_err(sys_err("remount read-only path", path))
}

/// Create the mount point: a file for bind mounts of files, a directory otherwise.
pub(crate) fn create_mount_point(dest: &Path, source_is_file: bool) -> Result<(), RootfsError> {
    if source_is_file {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err("create mount point parent", parent))?;
        }
        if fs::symlink_metadata(dest).is_err() {
            fs::File::create(dest).map_err(io_err("create mount point file", dest))?;
        }
        Ok(())
    } else {
        fs::create_dir_all(dest).map_err(io_err("create mount point", dest))
    }
}

fn mount_entry(sys: &dyn Syscall, plan: &RootfsPlan<'_>, m: &Mount) -> Result<(), RootfsError> {
    let opts = parse_mount_options(m.options().as_deref().unwrap_or(&[]));
    let typ = m.typ().as_deref().unwrap_or("");
    let dest = resolve_in_root(plan.rootfs, m.destination())?;
    let is_bind = opts.flags.contains(MsFlags::MS_BIND) || typ == "bind";

    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroups(sys, plan, &dest, &opts);
    }

    if is_bind {
        let source = m.source().as_deref().ok_or_else(|| {
            RootfsError::InvalidSpec(format!("bind mount {dest:?} has no source"))
        })?;
        let src_meta = fs::metadata(source).map_err(io_err("stat bind source", source))?;
        create_mount_point(&dest, !src_meta.is_dir())?;
        let bind = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
        let target = sys
            .open_in_root(plan.rootfs, &dest)
            .map_err(sys_err("open mount target inside rootfs", &dest))?;
        sys.mount(Some(source), target.path(), None, bind, None)
            .map_err(sys_err("bind mount", &dest))?;
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra | statfs_flags(source);
            sys.mount(None, &dest, None, flags, None)
                .map_err(sys_err("remount bind mount with flags", &dest))?;
        }
    } else {
        create_mount_point(&dest, false)?;
        let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
        let source = m.source().as_deref().unwrap_or(Path::new(typ));
        let fstype = (!typ.is_empty()).then_some(typ);
        let target = sys
            .open_in_root(plan.rootfs, &dest)
            .map_err(sys_err("open mount target inside rootfs", &dest))?;
        match sys.mount(Some(source), target.path(), fstype, opts.flags, data) {
            Ok(()) => {}
            // Without its own network namespace a container may not mount sysfs (the
            // kernel ties sysfs to the netns owner): bind the host's read-only, as runc does.
            Err(Errno::EPERM) if typ == "sysfs" => {
                sys.mount(
                    Some(Path::new("/sys")),
                    target.path(),
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                )
                .map_err(sys_err("bind host sysfs", &dest))?;
                sys.mount(
                    None,
                    &dest,
                    None,
                    MsFlags::MS_BIND
                        | MsFlags::MS_REMOUNT
                        | MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC,
                    None,
                )
                .map_err(sys_err("remount host sysfs read-only", &dest))?;
            }
            Err(errno) => return Err(sys_err("mount", &dest)(errno)),
        }
    }
    if opts.recursive_readonly {
        sys.make_readonly_recursive(&dest)
            .map_err(sys_err("make mount read-only recursively", &dest))?;
    }
    if !opts.propagation.is_empty() {
        sys.mount(None, &dest, None, opts.propagation, None)
            .map_err(sys_err("set mount propagation", &dest))?;
    }
    Ok(())
}

/// Creates the bind mounts' mount points in the rootfs while still privileged on the
/// host: inside a joined user namespace the rootfs (not idmapped) belongs to an
/// unmapped owner, so e.g. /etc/resolv.conf could not be created there. Best effort:
/// a failure here shows up, named, when the init mounts.
pub fn precreate_bind_mount_points(spec: &Spec, rootfs: &Path) {
    for m in spec.mounts().as_deref().unwrap_or(&[]) {
        let opts = parse_mount_options(m.options().as_deref().unwrap_or(&[]));
        let is_bind = opts.flags.contains(MsFlags::MS_BIND) || m.typ().as_deref() == Some("bind");
        let (Some(source), true) = (m.source().as_deref(), is_bind) else {
            continue;
        };
        let Ok(dest) = resolve_in_root(rootfs, m.destination()) else {
            continue;
        };
        if let Ok(meta) = fs::metadata(source) {
            let _ = create_mount_point(&dest, !meta.is_dir());
        }
    }
}

/// Attaches a prepared idmapped tree at the mount's destination, then applies the
/// entry's read-only flag and propagation.
fn attach_idmapped(
    sys: &dyn Syscall,
    plan: &RootfsPlan<'_>,
    m: &Mount,
    tree: &std::os::fd::OwnedFd,
) -> Result<(), RootfsError> {
    use std::os::fd::AsFd;
    let opts = parse_mount_options(m.options().as_deref().unwrap_or(&[]));
    let dest = resolve_in_root(plan.rootfs, m.destination())?;
    let source = m.source().as_deref().unwrap_or(Path::new(""));
    let src_meta = fs::metadata(source).map_err(io_err("stat bind source", source))?;
    create_mount_point(&dest, !src_meta.is_dir())?;
    crate::idmap::attach(tree.as_fd(), &dest).map_err(io_err("attach idmapped mount", &dest))?;
    let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
    if !extra.is_empty() {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra | statfs_flags(&dest);
        sys.mount(None, &dest, None, flags, None)
            .map_err(sys_err("remount idmapped mount with flags", &dest))?;
    }
    if opts.recursive_readonly {
        sys.make_readonly_recursive(&dest)
            .map_err(sys_err("make mount read-only recursively", &dest))?;
    }
    if !opts.propagation.is_empty() {
        sys.mount(None, &dest, None, opts.propagation, None)
            .map_err(sys_err("set mount propagation", &dest))?;
    }
    Ok(())
}

/// A `cgroup` mount: a tmpfs with one cgroup v1 mount per hierarchy (plus symlinks for
/// co-mounted controllers), or a single cgroup2 mount on a pure v2 host.
fn mount_cgroups(
    sys: &dyn Syscall,
    plan: &RootfsPlan<'_>,
    dest: &Path,
    opts: &MountOptions,
) -> Result<(), RootfsError> {
    create_mount_point(dest, false)?;
    let flags = opts.flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let v1: Vec<&CgroupHierarchy> = plan
        .cgroups
        .iter()
        .filter(|h| !h.controllers.is_empty())
        .collect();
    if v1.is_empty() {
        let target = sys
            .open_in_root(plan.rootfs, dest)
            .map_err(sys_err("open mount target inside rootfs", dest))?;
        if plan.in_user_ns {
            // cgroup2 can only be mounted by the owner of the cgroup namespace.
            return bind_host_cgroup(sys, Path::new("/sys/fs/cgroup"), target.path(), dest);
        }
        return sys
            .mount(
                Some(Path::new("cgroup2")),
                target.path(),
                Some("cgroup2"),
                flags,
                None,
            )
            .map_err(sys_err("mount cgroup2", dest));
    }
    let target = sys
        .open_in_root(plan.rootfs, dest)
        .map_err(sys_err("open mount target inside rootfs", dest))?;
    sys.mount(
        Some(Path::new("tmpfs")),
        target.path(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .map_err(sys_err("mount tmpfs for cgroups", dest))?;
    for h in v1 {
        let dir_name = h.controllers.trim_start_matches("name=");
        let dir = dest.join(dir_name);
        create_mount_point(&dir, false)?;
        let data = if h.controllers.starts_with("name=") {
            format!("none,{}", h.controllers)
        } else {
            h.controllers.clone()
        };
        if plan.in_user_ns {
            // A user namespace may not mount cgroup v1 at all: bind the host's
            // hierarchy instead (as runc does), made read-only with the rest below.
            let host = Path::new("/sys/fs/cgroup").join(dir_name);
            bind_host_cgroup(sys, &host, &dir, &dir)?;
        } else {
            sys.mount(
                Some(Path::new("cgroup")),
                &dir,
                Some("cgroup"),
                flags,
                Some(&data),
            )
            .map_err(sys_err("mount cgroup v1 hierarchy", &dir))?;
        }
        if h.controllers.contains(',') {
            for single in h.controllers.split(',') {
                let link = dest.join(single);
                sys.symlink(Path::new(dir_name), &link)
                    .map_err(sys_err("symlink co-mounted cgroup controller", &link))?;
            }
        }
    }
    if opts.flags.contains(MsFlags::MS_RDONLY) {
        sys.mount(
            None,
            dest,
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
    target: &Path,
    dest: &Path,
) -> Result<(), RootfsError> {
    sys.mount(Some(host), target, None, MsFlags::MS_BIND, None)
        .map_err(sys_err("bind host cgroup hierarchy", dest))?;
    sys.mount(
        None,
        dest,
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

fn create_device(
    sys: &dyn Syscall,
    plan: &RootfsPlan<'_>,
    d: &LinuxDevice,
) -> Result<(), RootfsError> {
    if !d.path().starts_with("/dev") {
        return Err(RootfsError::InvalidSpec(format!(
            "device {:?} is not under /dev",
            d.path()
        )));
    }
    let dest = resolve_in_root(plan.rootfs, d.path())?;
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io_err("create device parent", parent))?;
    }
    if plan.in_user_ns {
        // mknod is not allowed in a user namespace: bind the host's node instead.
        create_mount_point(&dest, true)?;
        return sys
            .mount(Some(d.path()), &dest, None, MsFlags::MS_BIND, None)
            .map_err(sys_err("bind device", &dest));
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
    // Replace whatever the image has there (often a plain file or a stale node).
    if let Ok(meta) = fs::symlink_metadata(&dest) {
        let ft = meta.file_type();
        if !(ft.is_char_device() || ft.is_block_device() || ft.is_fifo()) || !meta.is_dir() {
            let _ = fs::remove_file(&dest);
        }
    }
    let perm = d.file_mode().unwrap_or(0o666) & 0o7777;
    sys.mknod(&dest, kind, perm, major, minor)
        .map_err(sys_err("mknod", &dest))?;
    // mknod honours the umask; the spec's mode is exact.
    if let Err(e) = fs::set_permissions(&dest, fs::Permissions::from_mode(perm)) {
        // Under the fake nothing exists on disk.
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(io_err("chmod device", &dest)(e));
        }
    }
    sys.lchown(&dest, d.uid().unwrap_or(0), d.gid().unwrap_or(0))
        .map_err(sys_err("chown device", &dest))
}

fn create_dev_symlinks(
    sys: &dyn Syscall,
    rootfs: &Path,
    pts_is_mounted: bool,
) -> Result<(), RootfsError> {
    let mut links = vec![
        ("/proc/self/fd", "dev/fd"),
        ("/proc/self/fd/0", "dev/stdin"),
        ("/proc/self/fd/1", "dev/stdout"),
        ("/proc/self/fd/2", "dev/stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "dev/core"));
    }
    if pts_is_mounted {
        links.push(("pts/ptmx", "dev/ptmx"));
    }
    for (target, link) in links {
        let link = rootfs.join(link);
        if let Ok(meta) = fs::symlink_metadata(&link) {
            if meta.is_dir() {
                continue;
            }
            let _ = fs::remove_file(&link);
        }
        match sys.symlink(Path::new(target), &link) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(sys_err("symlink in /dev", &link)(e)),
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
}
