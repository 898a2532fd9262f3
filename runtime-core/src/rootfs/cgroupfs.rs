//! `cgroup` mounts: the host's hierarchies shown inside the container, v1 and v2.

use std::fs;
use std::path::Path;

use super::mounts::{MountOptions, bind_host_read_only, remount_locked_read_only};
use super::{RootfsError, RootfsPlan, sys_err};
use crate::sys::{InRootPath, MountPointKind, MsFlags, NewFs, Syscall};

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

pub(super) fn parse_proc_cgroup(text: &str) -> Vec<CgroupHierarchy> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?.to_string();
            Some(CgroupHierarchy { controllers })
        })
        .collect()
}

/// A `cgroup` mount: a tmpfs with one cgroup v1 mount per hierarchy (plus symlinks for
/// co-mounted controllers), or a single cgroup2 mount on a pure v2 host. `target` is
/// the handle on the mount point; everything below it is on the fresh tmpfs, which
/// only this mount namespace can reach.
pub(super) fn mount_cgroups(
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
            return bind_host_read_only(sys, Path::new("/sys/fs/cgroup"), target, false, dest)
                .map(drop);
        }
        sys.mount_fs_at(
            NewFs {
                fstype: "cgroup2",
                source: Path::new("cgroup2"),
                flags,
                data: "",
            },
            target,
        )
        .map_err(sys_err("mount cgroup2", dest))?;
        return Ok(());
    }
    let tmpfs = sys
        .mount_fs_at(
            NewFs {
                fstype: "tmpfs",
                source: Path::new("tmpfs"),
                flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                data: "mode=755",
            },
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
            bind_host_read_only(sys, &host, &point, false, &dir)?;
        } else {
            sys.mount_fs_at(
                NewFs {
                    fstype: "cgroup",
                    source: Path::new("cgroup"),
                    flags,
                    data: &data,
                },
                &point,
            )
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
        remount_locked_read_only(sys, tmpfs.path())
            .map_err(sys_err("remount cgroup tmpfs read-only", dest))?;
    }
    Ok(())
}
