//! The spec's `linux.resources`, `linux.cgroupsPath` and `linux.devices`.

use std::path::{Path, PathBuf};

use berth_proto::v1::{ContainerConfig, LinuxContainerResources};
use oci_spec::runtime::{
    LinuxCpu, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxHugepageLimit, LinuxMemory,
    LinuxResources,
};

use crate::config::CgroupDriver;
use crate::error::{Error, Result};

/// Character devices every container may open: null, zero, full, random, urandom,
/// tty, console, ptmx (and /dev/pts/*, major 136, added separately).
const DEFAULT_DEVICES: [(i64, i64); 8] = [
    (1, 3),
    (1, 5),
    (1, 7),
    (1, 8),
    (1, 9),
    (5, 0),
    (5, 1),
    (5, 2),
];

/// `linux.cgroupsPath` for the driver: `<parent>/<id>` with cgroupfs,
/// `<slice>:berth:<id>` with systemd.
pub fn cgroups_path(driver: CgroupDriver, parent: &str, id: &str) -> String {
    match driver {
        CgroupDriver::Cgroupfs => {
            let parent = if parent.is_empty() {
                "/berth"
            } else {
                parent.trim_end_matches('/')
            };
            format!("{parent}/{id}")
        }
        CgroupDriver::Systemd => {
            let slice = Path::new(parent)
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "system.slice".into());
            format!("{slice}:berth:{id}")
        }
    }
}

/// `linux.resources` for a live update (UpdateContainerResources): cpu, memory,
/// hugepages and unified keys, no device rules.
pub fn resources_update(r: &LinuxContainerResources) -> Result<LinuxResources> {
    let mut out = linux_resources(r, &ContainerConfig::default(), false)?;
    out.set_devices(None);
    Ok(out)
}

/// A CRI number the OCI spec holds in another integer type; out of its range is the
/// caller's mistake, named.
fn fits<T: TryFrom<i64>>(what: &str, v: i64) -> Result<T> {
    T::try_from(v)
        .map_err(|_| Error::InvalidArgument(format!("resources: {what} {v} is out of range")))
}

pub(super) fn linux_resources(
    r: &LinuxContainerResources,
    config: &ContainerConfig,
    privileged: bool,
) -> Result<LinuxResources> {
    if r.memory_limit_in_bytes < 0 || r.cpu_quota < -1 || r.cpu_shares < 0 {
        return Err(Error::InvalidArgument(
            "resources: negative memory limit, cpu quota or cpu shares".into(),
        ));
    }
    let mut cpu = LinuxCpu::default();
    if r.cpu_shares > 0 {
        cpu.set_shares(Some(fits("cpu_shares", r.cpu_shares)?));
    }
    if r.cpu_quota > 0 {
        cpu.set_quota(Some(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.set_period(Some(fits("cpu_period", r.cpu_period)?));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }
    let mut memory = LinuxMemory::default();
    if r.memory_limit_in_bytes > 0 {
        memory.set_limit(Some(r.memory_limit_in_bytes));
        // Without an explicit swap limit, no swap beyond the memory limit (containerd).
        let swap = if r.memory_swap_limit_in_bytes > 0 {
            r.memory_swap_limit_in_bytes
        } else {
            r.memory_limit_in_bytes
        };
        memory.set_swap(Some(swap));
    }
    let hugepages = r
        .hugepage_limits
        .iter()
        .map(|h| {
            let limit = i64::try_from(h.limit).map_err(|_| {
                Error::InvalidArgument(format!(
                    "resources: hugepage limit {} for {} is out of range",
                    h.limit, h.page_size
                ))
            })?;
            let mut l = LinuxHugepageLimit::default();
            l.set_page_size(h.page_size.clone());
            l.set_limit(limit);
            Ok(l)
        })
        .collect::<Result<Vec<_>>>()?;
    let rule = |allow: bool,
                kind: Option<LinuxDeviceType>,
                numbers: Option<(i64, Option<i64>)>,
                access: &str| {
        let mut d = LinuxDeviceCgroup::default();
        d.set_allow(allow);
        d.set_typ(kind);
        d.set_major(numbers.map(|(major, _)| major));
        d.set_minor(numbers.and_then(|(_, minor)| minor));
        d.set_access(Some(access.to_owned()));
        d
    };
    let mut devices = vec![rule(privileged, None, None, "rwm")];
    if !privileged {
        use LinuxDeviceType::{B, C};
        // What every container may use (and mknod), as Docker and containerd allow.
        devices.push(rule(true, Some(C), None, "m"));
        devices.push(rule(true, Some(B), None, "m"));
        for (major, minor) in DEFAULT_DEVICES {
            devices.push(rule(true, Some(C), Some((major, Some(minor))), "rwm"));
        }
        devices.push(rule(true, Some(C), Some((136, None)), "rwm"));
        for d in &config.devices {
            let (kind, major, minor) = device_numbers(&d.host_path)?;
            let access = if d.permissions.is_empty() {
                "rwm"
            } else {
                d.permissions.as_str()
            };
            devices.push(rule(true, Some(kind), Some((major, Some(minor))), access));
        }
    }
    let mut out = LinuxResources::default();
    out.set_devices(Some(devices));
    if cpu != LinuxCpu::default() {
        out.set_cpu(Some(cpu));
    }
    if memory != LinuxMemory::default() {
        out.set_memory(Some(memory));
    }
    if !hugepages.is_empty() {
        out.set_hugepage_limits(Some(hugepages));
    }
    if !r.unified.is_empty() {
        out.set_unified(Some(r.unified.clone()));
    }
    Ok(out)
}

fn device_numbers(path: &str) -> Result<(LinuxDeviceType, i64, i64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::InvalidArgument(format!("devices: host_path {path:?}: {e}")))?;
    let kind = if meta.file_type().is_char_device() {
        LinuxDeviceType::C
    } else if meta.file_type().is_block_device() {
        LinuxDeviceType::B
    } else {
        return Err(Error::InvalidArgument(format!(
            "devices: {path:?} is not a device"
        )));
    };
    let rdev = meta.rdev();
    Ok((
        kind,
        i64::from(libc::major(rdev)),
        i64::from(libc::minor(rdev)),
    ))
}

pub(super) fn devices(config: &ContainerConfig, privileged: bool) -> Result<Vec<LinuxDevice>> {
    let mut out = Vec::new();
    if privileged {
        return Ok(out); // privileged containers get the host's /dev (runtime-core binds it)
    }
    for d in &config.devices {
        let (kind, major, minor) = device_numbers(&d.host_path)?;
        let container_path = if d.container_path.is_empty() {
            &d.host_path
        } else {
            &d.container_path
        };
        let mut node = LinuxDevice::default();
        node.set_path(PathBuf::from(container_path));
        node.set_typ(kind);
        node.set_major(major);
        node.set_minor(minor);
        node.set_file_mode(Some(0o666));
        node.set_uid(Some(0));
        node.set_gid(Some(0));
        out.push(node);
    }
    Ok(out)
}
