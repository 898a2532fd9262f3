//! Checking and reading a `RunPodSandbox` request: metadata, namespace modes, the
//! cgroup parent, the pod's user namespace mappings and its name.

use super::*;

impl PodManager {
    pub(super) fn validate_cgroup_parent(&self, config: &PodSandboxConfig) -> Result<String> {
        let parent = config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default();
        if matches!(self.config.cgroup_driver, CgroupDriver::Systemd) {
            return systemd::pod_slice_unit(&parent, systemd::systemd_running())
                .map_err(Error::from);
        }
        if parent.is_empty() {
            return Ok(parent);
        }
        if parent.contains("..") || parent.contains('\0') {
            return Err(Error::invalid_argument(format!(
                "linux.cgroup_parent {parent:?} must not contain \"..\""
            )));
        }
        match self.config.cgroup_driver {
            CgroupDriver::Cgroupfs if parent.ends_with(".slice") => {
                Err(Error::invalid_argument(format!(
                    "linux.cgroup_parent {parent:?} is a systemd slice, but berthd uses the cgroupfs driver (set cgroup_driver = \"systemd\" or give a path like /kubepods/pod<uid>)"
                )))
            }
            _ => Ok(parent),
        }
    }
}

/// The validated uid and gid mappings of a pod with its own user namespace
/// (`userns_options` mode POD), `None` for mode NODE (the host's user namespace).
/// Errors are InvalidArgument naming the offending field.
pub fn pod_user_mappings(
    opts: &NamespaceOption,
) -> Result<
    Option<(
        Vec<crate::host::idmap::IdMapping>,
        Vec<crate::host::idmap::IdMapping>,
    )>,
> {
    let Some(userns) = &opts.userns_options else {
        return Ok(None);
    };
    match NamespaceMode::try_from(userns.mode) {
        Ok(NamespaceMode::Node) => return Ok(None),
        Ok(NamespaceMode::Pod) => {}
        _ => {
            return Err(Error::invalid_argument(format!(
                "namespace_options.userns_options.mode: mode {} is not valid, only POD and NODE are",
                userns.mode
            )));
        }
    }
    for (field, mode) in [
        ("network", opts.network),
        ("pid", opts.pid),
        ("ipc", opts.ipc),
    ] {
        if mode == i32::from(NamespaceMode::Node) {
            return Err(Error::invalid_argument(format!(
                "namespace_options.{field}: the host's {field} namespace cannot be used with userns_options mode POD"
            )));
        }
    }
    let convert = |maps: &[berth_proto::v1::IdMapping]| -> Vec<crate::host::idmap::IdMapping> {
        maps.iter()
            .map(|m| crate::host::idmap::IdMapping {
                container_id: m.container_id,
                host_id: m.host_id,
                length: m.length,
            })
            .collect()
    };
    let uids = convert(&userns.uids);
    let gids = convert(&userns.gids);
    for (field, maps) in [
        ("namespace_options.userns_options.uids", &uids),
        ("namespace_options.userns_options.gids", &gids),
    ] {
        namespaces::validate_mappings(field, maps).map_err(Error::invalid_argument)?;
    }
    Ok(Some((uids, gids)))
}

/// The unique name kubelet's metadata gives a sandbox (as containerd forms it).
pub fn sandbox_name(meta: &PodSandboxMetadata) -> String {
    format!(
        "{}_{}_{}_{}",
        meta.name, meta.namespace, meta.uid, meta.attempt
    )
}

pub(super) fn validate(config: &PodSandboxConfig) -> Result<PodSandboxMetadata> {
    let meta = config
        .metadata
        .clone()
        .ok_or_else(|| Error::invalid_argument("config.metadata is required".into()))?;
    for (field, value) in [
        ("name", &meta.name),
        ("namespace", &meta.namespace),
        ("uid", &meta.uid),
    ] {
        if value.is_empty() {
            return Err(Error::invalid_argument(format!(
                "config.metadata.{field} is required"
            )));
        }
        if value.contains('/') || value.contains('\0') {
            return Err(Error::invalid_argument(format!(
                "config.metadata.{field} {value:?} must not contain '/'"
            )));
        }
    }
    let opts = namespace_options(config);
    for (field, mode) in [
        ("network", opts.network),
        ("pid", opts.pid),
        ("ipc", opts.ipc),
    ] {
        match NamespaceMode::try_from(mode) {
            Ok(NamespaceMode::Pod | NamespaceMode::Node) => {}
            Ok(NamespaceMode::Container) if field == "pid" => {}
            _ => {
                return Err(Error::invalid_argument(format!(
                    "namespace_options.{field}: mode {mode} is not valid for a pod sandbox"
                )));
            }
        }
    }
    pod_user_mappings(&opts)?;
    if !config.log_directory.is_empty() && !Path::new(&config.log_directory).is_absolute() {
        return Err(Error::invalid_argument(format!(
            "config.log_directory {:?} must be an absolute path",
            config.log_directory
        )));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::v1::{LinuxPodSandboxConfig, LinuxSandboxSecurityContext};

    fn config(name: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn metadata_is_required_and_named() {
        let mut c = config("a");
        c.metadata.as_mut().expect("meta").uid.clear();
        let e = validate(&c).expect_err("uid missing");
        assert!(e.to_string().contains("metadata.uid"), "{e}");
        let e = validate(&PodSandboxConfig::default()).expect_err("no metadata");
        assert!(e.to_string().contains("metadata"), "{e}");
    }

    #[test]
    fn target_namespace_mode_is_invalid_for_pods() {
        let mut c = config("a");
        c.linux = Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: NamespaceMode::Target.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let e = validate(&c).expect_err("target");
        assert!(e.to_string().contains("namespace_options.pid"), "{e}");
    }

    #[test]
    fn cgroup_parent_must_match_the_driver() {
        let m = PodManager::new(Config::default(), Arc::default());
        let mut c = config("a");
        c.linux = Some(LinuxPodSandboxConfig {
            cgroup_parent: "/test.slice".into(),
            ..Default::default()
        });
        let e = m
            .validate_cgroup_parent(&c)
            .expect_err("slice with cgroupfs");
        assert!(e.to_string().contains("systemd slice"), "{e}");
        c.linux.as_mut().expect("linux").cgroup_parent = "/kubepods/burstable/podu1".into();
        assert_eq!(
            m.validate_cgroup_parent(&c).expect("path"),
            "/kubepods/burstable/podu1"
        );
    }

    #[test]
    fn names_follow_containerds_form() {
        let meta = config("web").metadata.expect("meta");
        assert_eq!(sandbox_name(&meta), "web_default_u1_0");
    }
}
