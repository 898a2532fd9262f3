//! What the `Status`, `RuntimeConfig` and `UpdateRuntimeConfig` RPCs compute from the
//! configuration: runtime conditions, the state directories' health, the verbose
//! config and kubelet's pod CIDRs.

use std::net::IpAddr;

use berth_proto::v1::RuntimeCondition;
use serde_json::json;

use crate::config::Config;
use crate::error::Error;

pub(super) fn condition(
    kind: &str,
    status: bool,
    reason: &str,
    message: String,
) -> RuntimeCondition {
    RuntimeCondition {
        r#type: kind.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
    }
}

/// Why the runtime cannot keep state, or `None` when both state dirs are usable.
pub(super) fn state_dirs_problem(config: &Config) -> Option<String> {
    for (what, dir) in [
        ("root_dir", &config.root_dir),
        ("state_dir", &config.state_dir),
    ] {
        match std::fs::metadata(dir) {
            Ok(m) if !m.is_dir() => {
                return Some(format!("{what} {} is not a directory", dir.display()));
            }
            Ok(_) => {
                if let Err(e) = rustix::fs::access(dir, rustix::fs::Access::WRITE_OK) {
                    return Some(format!("{what} {} is not writable: {e}", dir.display()));
                }
            }
            Err(e) => return Some(format!("{what} {} is unusable: {e}", dir.display())),
        }
    }
    None
}

/// The config as `Status(verbose).info["config"]`, with the camelCase keys clients
/// know from containerd (critest reads `stateDir`).
pub(super) fn verbose_config(config: &Config) -> serde_json::Value {
    json!({
        "rootDir": config.root_dir,
        "stateDir": config.state_dir,
        "socket": config.grpc.socket,
        "cgroupDriver": config.cgroup_driver,
        "cni": {
            "confDir": config.cni.conf_dir,
            "pluginDirs": config.cni.plugin_dirs,
            "builtinDefault": config.cni.builtin_default,
        },
    })
}

/// Parses kubelet's pod CIDR: empty, or one or more comma-separated `ip/prefix`.
pub(super) fn parse_pod_cidrs(s: &str) -> Result<Vec<String>, Error> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            let invalid = || {
                Error::InvalidArgument(format!(
                    "runtime_config.network_config.pod_cidr: {c:?} is not a CIDR like 10.244.0.0/24"
                ))
            };
            let (ip, prefix) = c.split_once('/').ok_or_else(invalid)?;
            let ip: IpAddr = ip.parse().map_err(|_| invalid())?;
            let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            if prefix > max {
                return Err(invalid());
            }
            Ok(c.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidrs_parse() {
        assert!(parse_pod_cidrs("").expect("empty is fine").is_empty());
        assert_eq!(
            parse_pod_cidrs("10.244.1.0/24, fd00::/64").expect("dual stack"),
            ["10.244.1.0/24", "fd00::/64"]
        );
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/24", "fd00::/129"] {
            let e = parse_pod_cidrs(bad).expect_err(bad);
            assert!(e.to_string().contains("pod_cidr"), "{e}");
        }
    }

    #[test]
    fn unusable_state_dir_is_named() {
        let mut c = Config::default();
        let d = tempfile::tempdir().expect("tempdir");
        c.root_dir = d.path().to_path_buf();
        c.state_dir = d.path().join("missing");
        let why = state_dirs_problem(&c).expect("missing dir is a problem");
        assert!(
            why.contains("state_dir") && why.contains("missing"),
            "{why}"
        );
        c.state_dir = d.path().to_path_buf();
        assert_eq!(state_dirs_problem(&c), None);
    }
}
