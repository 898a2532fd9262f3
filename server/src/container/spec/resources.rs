//! The spec's `linux.resources`, `linux.cgroupsPath` and `linux.devices`.

use std::path::Path;

use berth_proto::v1::{ContainerConfig, LinuxContainerResources};
use serde_json::{Value, json};

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
pub fn resources_update(r: &LinuxContainerResources) -> Result<Value> {
    let mut v = linux_resources(r, &ContainerConfig::default(), false)?;
    if let Some(obj) = v.as_object_mut() {
        obj.remove("devices");
    }
    Ok(v)
}

pub(super) fn linux_resources(
    r: &LinuxContainerResources,
    config: &ContainerConfig,
    privileged: bool,
) -> Result<Value> {
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota > 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    let mut memory = serde_json::Map::new();
    if r.memory_limit_in_bytes > 0 {
        memory.insert("limit".into(), json!(r.memory_limit_in_bytes));
        // Without an explicit swap limit, no swap beyond the memory limit (containerd).
        let swap = if r.memory_swap_limit_in_bytes > 0 {
            r.memory_swap_limit_in_bytes
        } else {
            r.memory_limit_in_bytes
        };
        memory.insert("swap".into(), json!(swap));
    }
    if r.memory_limit_in_bytes < 0 || r.cpu_quota < -1 || r.cpu_shares < 0 {
        return Err(Error::InvalidArgument(
            "resources: negative memory limit, cpu quota or cpu shares".into(),
        ));
    }
    let hugepages: Vec<Value> = r
        .hugepage_limits
        .iter()
        .map(|h| json!({ "pageSize": h.page_size, "limit": h.limit }))
        .collect();
    let mut devices = vec![json!({ "allow": privileged, "access": "rwm" })];
    if !privileged {
        // What every container may use (and mknod), as Docker and containerd allow.
        devices.push(json!({ "allow": true, "type": "c", "access": "m" }));
        devices.push(json!({ "allow": true, "type": "b", "access": "m" }));
        for (major, minor) in DEFAULT_DEVICES {
            devices.push(json!({ "allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm" }));
        }
        devices.push(json!({ "allow": true, "type": "c", "major": 136, "access": "rwm" }));
        for d in &config.devices {
            let (kind, major, minor) = device_numbers(&d.host_path)?;
            devices.push(json!({
                "allow": true, "type": kind, "major": major, "minor": minor,
                "access": if d.permissions.is_empty() { "rwm".to_owned() } else { d.permissions.clone() },
            }));
        }
    }
    let mut out = json!({ "devices": devices });
    if !cpu.is_empty() {
        out["cpu"] = Value::Object(cpu);
    }
    if !memory.is_empty() {
        out["memory"] = Value::Object(memory);
    }
    if !hugepages.is_empty() {
        out["hugepageLimits"] = Value::Array(hugepages);
    }
    if !r.unified.is_empty() {
        out["unified"] = json!(r.unified);
    }
    Ok(out)
}

fn device_numbers(path: &str) -> Result<(&'static str, u64, u64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::InvalidArgument(format!("devices: host_path {path:?}: {e}")))?;
    let kind = if meta.file_type().is_char_device() {
        "c"
    } else if meta.file_type().is_block_device() {
        "b"
    } else {
        return Err(Error::InvalidArgument(format!(
            "devices: {path:?} is not a device"
        )));
    };
    let rdev = meta.rdev();
    Ok((
        kind,
        u64::from(libc::major(rdev)),
        u64::from(libc::minor(rdev)),
    ))
}

pub(super) fn devices(config: &ContainerConfig, privileged: bool) -> Result<Vec<Value>> {
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
        out.push(json!({
            "path": container_path, "type": kind, "major": major, "minor": minor,
            "fileMode": 0o666, "uid": 0, "gid": 0,
        }));
    }
    Ok(out)
}
