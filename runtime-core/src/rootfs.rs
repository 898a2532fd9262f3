//! The container's root filesystem: the spec's mounts, /dev, pivot_root, masked and
//! read-only paths. Every kernel call goes through [`Syscall`], so the sequence is
//! unit-tested with the recording fake.

use std::fs;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::sys::{Errno, MntFlags, MountArgs, MsFlags, Syscall};

mod cgroupfs;
mod devices;
mod masked;
mod mounts;

pub use cgroupfs::{CgroupHierarchy, host_cgroup_hierarchies};
use devices::{create_dev_symlinks, create_devices};
use masked::{mask_path, readonly_path};
pub use mounts::{
    MountOptions, check_proc_mount, parse_mount_options, precreate_bind_mount_points,
};
use mounts::{attach_idmapped, mount_entry};

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
pub fn containing_mount(mountinfo: &str, path: &Path) -> Option<PathBuf> {
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
    sys.mount(MountArgs::change(slash, first))
        .map_err(sys_err("set propagation of /", slash))?;
    let rootfs = plan.rootfs;
    if first.contains(MsFlags::MS_SHARED) {
        // With / shared, mounts under the rootfs would propagate to the host, and
        // pivot_root refuses a new root whose parent mount is shared.
        let info = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err("read mountinfo", Path::new("/proc/self/mountinfo")))?;
        let parent = containing_mount(&info, rootfs).unwrap_or_else(|| PathBuf::from("/"));
        sys.mount(MountArgs::change(&parent, MsFlags::MS_PRIVATE))
            .map_err(sys_err("make rootfs parent mount private", &parent))?;
    }
    sys.mount(MountArgs {
        source: Some(rootfs),
        target: rootfs,
        fstype: None,
        flags: MsFlags::MS_BIND | MsFlags::MS_REC,
        data: None,
    })
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
    sys.mount(MountArgs::change(
        dotdot,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
    ))
    .map_err(sys_err("make old root slave", dotdot))?;
    sys.umount2(dot, MntFlags::MNT_DETACH)
        .map_err(sys_err("detach old root", dot))?;
    sys.chdir(slash)
        .map_err(sys_err("chdir to new root", slash))?;
    if let (_, Some(prop)) = root_propagation(spec)? {
        sys.mount(MountArgs::change(slash, prop))
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
        sys.mount(MountArgs::change(root, flags))
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

#[cfg(test)]
mod tests {
    use super::cgroupfs::parse_proc_cgroup;
    use super::mounts::open_mount_point;
    use super::*;
    use crate::sys::fake::{Call, RecordingSyscall};
    use crate::sys::{DevNode, MountPointKind};
    use oci_spec::runtime::Mount;
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
            node: DevNode {
                kind: libc::S_IFCHR,
                perm: 0o666,
                major: 1,
                minor: 3
            }
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
    #[allow(unsafe_code)] // renameat2(RENAME_EXCHANGE) has no safe wrapper: the race under test
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
