//! Masked and read-only paths, applied after pivot_root.

use std::fs;
use std::path::Path;

use super::{RootfsError, io_err, join_abs, statfs_flags, sys_err};
use crate::sys::{Errno, InRootPath, MountArgs, MsFlags, Syscall};

/// Open `p` (a path in the container, after pivot_root) inside `root` through a
/// handle; `None` if it does not exist.
pub(super) fn open_existing(
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

pub(super) fn mask_path(sys: &dyn Syscall, root: &Path, p: &str) -> Result<(), RootfsError> {
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
        sys.mount(MountArgs {
            source: Some(Path::new("tmpfs")),
            target: handle.path(),
            fstype: Some("tmpfs"),
            flags: MsFlags::MS_RDONLY,
            data: None,
        })
        .map_err(sys_err("mask directory", &path))
    } else {
        sys.mount(MountArgs {
            source: Some(Path::new("/dev/null")),
            target: handle.path(),
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None,
        })
        .map_err(sys_err("mask file", &path))
    }
}

pub(super) fn readonly_path(sys: &dyn Syscall, root: &Path, p: &str) -> Result<(), RootfsError> {
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
    sys.mount(MountArgs::change(mount.path(), flags))
        .map_err(sys_err("remount read-only path", &path))
}
