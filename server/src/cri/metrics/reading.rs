//! What the metrics are computed from, read once per container when asked: the typed
//! cgroup reading of runtime-core, the container's processes in /proc, its init
//! process's limits and its writable layer's filesystem. The pod's interfaces come from
//! the one /proc/net/dev parser of the pod stats ([`super::super::stats::pod_interfaces`]).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use berth_runtime_core::cgroups::CgroupStats;
use berth_runtime_core::cgroups::stats::Device;

pub(super) use crate::cri::stats::InterfaceCounters;

/// Everything measured for one created or running container.
#[derive(Debug, Default)]
pub(super) struct ContainerReading {
    /// When it was read (Unix seconds).
    pub now_secs: u64,
    /// When the container started, or was created if it has not (Unix seconds).
    pub started_secs: u64,
    /// Its cgroup; `None` when the runtime has no record of one.
    pub cgroup: Option<CgroupStats>,
    /// Its cgroup's processes; `None` when they could not be listed.
    pub procs: Option<ProcessCounts>,
    /// The soft limit on open files of its init process (`None` when unlimited).
    pub open_files_soft: Option<u64>,
    /// Its writable layer; `None` when the directory is gone.
    pub fs: Option<LayerFs>,
    /// Names of the block devices of the cgroup's I/O counters.
    pub devices: BTreeMap<Device, String>,
}

impl ContainerReading {
    /// A block device's name as /dev shows it, as read with the cgroup.
    pub fn device_name(&self, dev: Device) -> String {
        self.devices
            .get(&dev)
            .cloned()
            .unwrap_or_else(|| format!("{}:{}", dev.0, dev.1))
    }

    /// Names the block devices the cgroup's I/O counters mention.
    pub fn name_devices(&mut self) {
        if let Some(c) = &self.cgroup {
            for dev in c.blkio.bytes.keys().chain(c.blkio.ios.keys()) {
                self.devices
                    .entry(*dev)
                    .or_insert_with(|| device_name(*dev));
            }
        }
    }
}

/// Processes, open descriptors and sockets of the pids in the container's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ProcessCounts {
    pub processes: u64,
    pub fds: u64,
    pub sockets: u64,
}

/// The writable layer's usage and the filesystem it is on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct LayerFs {
    /// The filesystem's device, as [`device_name`] names it.
    pub device: String,
    pub used_bytes: Option<u64>,
    pub limit_bytes: Option<u64>,
    pub inodes_total: Option<u64>,
    pub inodes_free: Option<u64>,
}

/// A block device's name as /dev shows it (`/dev/vda`), else `major:minor`.
pub(super) fn device_name((major, minor): Device) -> String {
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|u| {
            u.lines()
                .find_map(|l| l.strip_prefix("DEVNAME="))
                .map(|n| format!("/dev/{n}"))
        })
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

/// Counts the open descriptors and sockets of `pids`.
pub(super) fn process_counts(pids: &[i32]) -> ProcessCounts {
    let mut fds = 0u64;
    let mut sockets = 0u64;
    for pid in pids {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in entries.flatten() {
            fds += 1;
            if std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
            {
                sockets += 1;
            }
        }
    }
    ProcessCounts {
        processes: pids.len() as u64,
        fds,
        sockets,
    }
}

/// The soft limit on open files of process `pid` (what cadvisor reports as
/// `max_open_files`); `None` when unlimited, which a `u64` cannot say.
pub(super) fn open_files_soft(pid: i32) -> Option<u64> {
    soft_open_files(&std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?)
}

/// The soft limit column of the `Max open files` line of /proc/<pid>/limits.
fn soft_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Usage of the writable layer, and the size and inodes of the filesystem it is on.
pub(super) fn layer_fs(upper: &Path) -> Option<LayerFs> {
    let meta = std::fs::metadata(upper).ok()?;
    let dev = meta.dev();
    let mut fs = LayerFs {
        device: device_name((libc::major(dev), libc::minor(dev))),
        used_bytes: crate::host::fsinfo::usage(upper).ok().map(|u| u.used_bytes),
        ..LayerFs::default()
    };
    if let Ok(st) = rustix::fs::statvfs(upper) {
        fs.limit_bytes = Some(st.f_blocks.saturating_mul(st.f_frsize));
        fs.inodes_total = Some(st.f_files);
        fs.inodes_free = Some(st.f_ffree);
    }
    Some(fs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_open_files_parse() {
        assert_eq!(
            soft_open_files(
                "Limit Soft Limit Hard Limit Units\nMax open files            1024                 524288               files\n"
            ),
            Some(1024)
        );
        assert_eq!(
            soft_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[test]
    fn process_counts_count_this_process() {
        let me = i32::try_from(std::process::id()).expect("pid");
        let p = process_counts(&[me]);
        assert_eq!(p.processes, 1);
        assert!(p.fds >= 3, "{p:?}");
        assert!(open_files_soft(me).is_some());
    }

    #[test]
    fn layer_fs_measures_a_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("f"), vec![1u8; 64 * 1024]).expect("write");
        let fs = layer_fs(tmp.path()).expect("exists");
        assert!(fs.used_bytes.is_some_and(|b| b >= 64 * 1024));
        assert!(fs.limit_bytes.is_some_and(|b| b > 0));
        assert!(fs.inodes_total.is_some_and(|b| b > 0));
        assert!(layer_fs(&tmp.path().join("missing")).is_none());
    }
}
