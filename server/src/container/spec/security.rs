//! The spec's security sections: capabilities, masked and read-only paths, seccomp.

use std::path::Path;

use berth_proto::v1::security_profile::ProfileType;
use berth_proto::v1::{LinuxContainerSecurityContext, SecurityProfile};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, LinuxSeccomp};

use crate::container::seccomp;
use crate::error::{Error, Result};

/// The capabilities a non-privileged container gets by default (Docker's and
/// containerd's set: no NET_ADMIN, no SYS_ADMIN).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability the kernel knows, for privileged containers and `ALL`.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Paths masked in non-privileged containers (they leak host information).
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Paths read-only in non-privileged containers.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The capabilities this host lets processes have: `ALL_CAPABILITIES` filtered by
/// berthd's own bounding set (a runtime cannot grant what it lacks; on some hosts even
/// root has no CAP_SYS_RESOURCE). containerd computes "all" the same way.
pub fn host_capabilities() -> &'static [String] {
    static CAPS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    CAPS.get_or_init(|| {
        let bounding = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapBnd:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .unwrap_or(u64::MAX);
        ALL_CAPABILITIES
            .iter()
            .enumerate()
            .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
            .map(|(_, c)| (*c).to_owned())
            .collect()
    })
}

fn normalize_cap(c: &str) -> String {
    let upper = c.trim().to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

/// The container's capability set: the default set (or all, when privileged) with
/// the CRI's drops and adds applied; `ALL` in either list means every capability.
pub fn capabilities(sc: &LinuxContainerSecurityContext) -> Result<Vec<String>> {
    if sc.privileged {
        return Ok(host_capabilities().to_vec());
    }
    let mut set: Vec<String> = DEFAULT_CAPABILITIES
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    let caps = sc.capabilities.clone().unwrap_or_default();
    let known = |c: &String| ALL_CAPABILITIES.contains(&c.as_str());
    for d in &caps.drop_capabilities {
        if d.eq_ignore_ascii_case("ALL") {
            set.clear();
            continue;
        }
        let d = normalize_cap(d);
        set.retain(|c| c != &d);
    }
    for a in &caps.add_capabilities {
        if a.eq_ignore_ascii_case("ALL") {
            set = host_capabilities().to_vec();
            continue;
        }
        let a = normalize_cap(a);
        if !known(&a) {
            return Err(Error::InvalidArgument(format!(
                "capabilities.add_capabilities: unknown capability {a:?}"
            )));
        }
        if !set.contains(&a) && host_capabilities().contains(&a) {
            set.push(a);
        }
    }
    Ok(set)
}

/// The process's capability sets: bounding, effective and permitted hold `caps`;
/// inheritable and ambient are left out (empty), as containerd leaves them.
pub(super) fn process_capabilities(caps: &[String]) -> Result<LinuxCapabilities> {
    let set = caps
        .iter()
        .map(|c| {
            c.strip_prefix("CAP_")
                .unwrap_or(c)
                .parse::<Capability>()
                .map_err(|_| Error::Internal(format!("capability {c:?} has no OCI name")))
        })
        .collect::<Result<Capabilities>>()?;
    // Built field by field: `LinuxCapabilities::default()` (what its builder starts
    // from) grants a few capabilities in every set.
    let mut out = LinuxCapabilities::default();
    out.set_bounding(Some(set.clone()));
    out.set_effective(Some(set.clone()));
    out.set_permitted(Some(set));
    out.set_inheritable(None);
    out.set_ambient(None);
    Ok(out)
}

/// The seccomp section, or `None` for unconfined. The deprecated
/// `seccomp_profile_path` is honoured for older kubelets.
#[allow(deprecated, reason = "older kubelets still send seccomp_profile_path")]
pub(super) fn seccomp_profile(
    sc: &LinuxContainerSecurityContext,
    privileged: bool,
    caps: &[String],
) -> Result<Option<LinuxSeccomp>> {
    if privileged {
        return Ok(None);
    }
    let profile: Option<SecurityProfile> = match (&sc.seccomp, sc.seccomp_profile_path.as_str()) {
        (Some(p), _) => Some(p.clone()),
        (None, "") | (None, "unconfined") => None,
        (None, "runtime/default" | "docker/default") => Some(SecurityProfile {
            profile_type: ProfileType::RuntimeDefault.into(),
            localhost_ref: String::new(),
        }),
        (None, path) => match path.strip_prefix("localhost/") {
            Some(p) => Some(SecurityProfile {
                profile_type: ProfileType::Localhost.into(),
                localhost_ref: p.to_owned(),
            }),
            None => {
                return Err(Error::InvalidArgument(format!(
                    "seccomp_profile_path {path:?}: expected runtime/default, unconfined or localhost/<path>"
                )));
            }
        },
    };
    let Some(profile) = profile else {
        return Ok(None);
    };
    match ProfileType::try_from(profile.profile_type) {
        Ok(ProfileType::Unconfined) => Ok(None),
        Ok(ProfileType::RuntimeDefault) => Ok(Some(seccomp::runtime_default(caps))),
        Ok(ProfileType::Localhost) => {
            let path = Path::new(&profile.localhost_ref);
            if !path.is_absolute() {
                return Err(Error::InvalidArgument(format!(
                    "seccomp localhost_ref {:?} must be an absolute path",
                    profile.localhost_ref
                )));
            }
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::InvalidArgument(format!("seccomp profile {}: {e}", path.display()))
            })?;
            seccomp::from_profile_json(&text, caps)
                .map(Some)
                .map_err(|e| {
                    Error::InvalidArgument(format!("seccomp profile {}: {e}", path.display()))
                })
        }
        Err(_) => Err(Error::InvalidArgument(format!(
            "seccomp profile type {} is unknown",
            profile.profile_type
        ))),
    }
}
