//! /dev: the default device nodes (created, or bind-mounted from the host in a user
//! namespace), the spec's devices, and the standard symlinks.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::mounts::lexical_clean;
use super::{RootfsError, RootfsPlan, io_err, resolve_in_root, sys_err};
use crate::sys::{DevNode, Errno, InRootPath, MountPointKind, Syscall};

/// The devices every container gets (runc's list), in addition to the spec's.
pub(super) fn default_devices() -> Vec<(&'static str, u64, u64)> {
    vec![
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
}

pub(super) fn create_devices(
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
pub(super) fn parent_handle(
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

pub(super) fn create_device(
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
    let dev = DevNode {
        kind,
        perm,
        major,
        minor,
    };
    sys.mknod(&node, dev).map_err(sys_err("mknod", dest))?;
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

pub(super) fn create_dev_symlinks(
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
