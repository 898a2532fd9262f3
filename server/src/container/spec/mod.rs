//! CRI `ContainerConfig` + image config + pod → OCI runtime spec (`config.json`).
//!
//! Follows what containerd's CRI plugin produces, so workloads behave the same:
//! ENTRYPOINT/CMD merging, environment precedence, user resolution through the image's
//! /etc/passwd and /etc/group, the default capability set, masked and read-only
//! paths, mounts with propagation, devices, resources and seccomp.
//!
//! This file holds the inputs ([`SpecInput`], [`PodContext`], [`ImageConfig`]) and
//! [`build`], which assembles the spec from one submodule per OCI section:
//! `process` (args, environment, user), `security` (capabilities, masked and
//! read-only paths, seccomp), `mounts`, `resources` (cgroups path, limits, devices).

#[cfg(test)]
mod golden;
mod mounts;
mod process;
mod resources;
mod security;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_proto::v1::{ContainerConfig, NamespaceMode};
use oci_spec::runtime::{
    Linux, LinuxIdMapping, LinuxNamespace, LinuxNamespaceType, Process, Root, Spec, User,
};

use self::mounts::{id_mapping, mounts, rootfs_propagation};
pub use self::process::{IMAGE_FILE_MAX, merge_args, merge_env, read_image_file, resolve_user};
pub use self::resources::{cgroups_path, resources_update};
use self::resources::{devices, linux_resources};
pub use self::security::{
    ALL_CAPABILITIES, DEFAULT_CAPABILITIES, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS,
    capabilities, host_capabilities,
};
use self::security::{process_capabilities, seccomp_profile};
use crate::config::CgroupDriver;
use crate::error::{Error, Result};

/// What the image says about how to run it (its OCI config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// ENTRYPOINT.
    pub entrypoint: Vec<String>,
    /// CMD.
    pub cmd: Vec<String>,
    /// ENV, `KEY=value`.
    pub env: Vec<String>,
    /// USER: `name`, `uid`, `uid:gid`, `name:group`.
    pub user: String,
    /// WORKDIR.
    pub working_dir: String,
}

/// What the pod contributes to each of its containers.
#[derive(Debug, Clone, Default)]
pub struct PodContext {
    /// Pod id (for annotations).
    pub sandbox_id: String,
    /// Pod name, namespace, uid (annotations).
    pub sandbox_name: String,
    /// Pinned network namespace; `None` = host network.
    pub netns: Option<PathBuf>,
    /// Pinned IPC namespace; `None` = host IPC.
    pub ipcns: Option<PathBuf>,
    /// Pinned UTS namespace; `None` = host UTS.
    pub utsns: Option<PathBuf>,
    /// The pod's own user namespace; `None` = the host's.
    pub userns: Option<PodUserNamespace>,
    /// PID namespace of the pod's infra process when the pod shares one.
    pub pidns: Option<PathBuf>,
    /// The pod uses the host PID namespace.
    pub host_pid: bool,
    /// The pod's /dev/shm tmpfs; `None` = the host's /dev/shm (host IPC).
    pub shm: Option<PathBuf>,
    /// resolv.conf, hosts, hostname files of the pod.
    pub resolv_conf: PathBuf,
    /// `/etc/hosts` of the pod.
    pub hosts: PathBuf,
    /// `/etc/hostname` of the pod.
    pub hostname: PathBuf,
    /// The pod's hostname (its config's, else the node's): the containers' `HOSTNAME`.
    pub hostname_value: String,
    /// Cgroup parent of the pod (already validated against the driver).
    pub cgroup_parent: String,
    /// The pod's name, namespace and uid (its metadata): with the container's name
    /// and attempt, the container's unique name.
    pub pod_name: String,
    /// See [`Self::pod_name`].
    pub pod_namespace: String,
    /// See [`Self::pod_name`].
    pub pod_uid: String,
    /// The pod's annotations (CDI devices can be requested there).
    pub annotations: HashMap<String, String>,
    /// The pod's `log_directory`: container log paths are relative to it and must
    /// stay inside it (`""` = no logs).
    pub log_directory: String,
    /// The pod's runtime handler (`""` = native): its containers run under it.
    pub runtime_handler: String,
}

/// A pod's pinned user namespace and the mappings it was created with.
#[derive(Debug, Clone, Default)]
pub struct PodUserNamespace {
    /// The pin file.
    pub path: PathBuf,
    /// uid mappings.
    pub uids: Vec<crate::host::idmap::IdMapping>,
    /// gid mappings.
    pub gids: Vec<crate::host::idmap::IdMapping>,
}

impl PodUserNamespace {
    /// The host uid and gid of the namespace's root.
    pub fn root_host_ids(&self) -> Result<(u32, u32)> {
        let root = |maps: &[crate::host::idmap::IdMapping]| {
            maps.iter()
                .find(|m| m.container_id == 0 && m.length > 0)
                .map(|m| m.host_id)
        };
        root(&self.uids)
            .zip(root(&self.gids))
            .ok_or_else(|| Error::Internal("the pod's user namespace maps no root".into()))
    }

    /// Mounts image layers at `target` idmapped with this namespace (see
    /// `berth_runtime_core::idmap::mount_idmapped_layers`); `what` names the mount in
    /// errors. A kernel or filesystem that cannot do it is FailedPrecondition, saying
    /// why: better than a container that sees its image as 65534's and cannot write.
    pub fn mount_idmapped_layers(
        &self,
        lowers: &[PathBuf],
        upper_work: Option<(&Path, &Path)>,
        target: &Path,
        what: &str,
    ) -> Result<()> {
        let ns = std::fs::File::open(&self.path).map_err(|e| {
            Error::io(
                format!("opening the pod's user namespace {}", self.path.display()),
                e,
            )
        })?;
        berth_runtime_core::idmap::mount_idmapped_layers(
            lowers,
            upper_work,
            target,
            std::os::fd::AsFd::as_fd(&ns),
        )
        .map_err(|e| {
            if berth_runtime_core::idmap::is_unsupported(&e) {
                Error::FailedPrecondition(format!(
                    "the pod has its own user namespace, so {what} must be an idmapped view \
                     of the image, which this node cannot give ({e}); it needs Linux 6.15 or \
                     newer and berthd's root_dir on a filesystem that supports idmapped \
                     mounts (ext4, xfs, btrfs, tmpfs); `berthd check` reports the kernel"
                ))
            } else {
                Error::io(format!("mounting {what}: {}: {}", e.step, e.path), e.source)
            }
        })
    }
}

/// Everything needed to build one container's spec.
#[derive(Debug)]
pub struct SpecInput<'a> {
    /// Container id.
    pub id: &'a str,
    /// The CRI config.
    pub config: &'a ContainerConfig,
    /// The image's config.
    pub image: &'a ImageConfig,
    /// The image reference the container runs (annotation).
    pub image_name: &'a str,
    /// The container's root filesystem (mounted), to read /etc/passwd and /etc/group.
    pub rootfs: &'a Path,
    /// The pod.
    pub pod: &'a PodContext,
    /// Cgroup driver in use.
    pub cgroup_driver: CgroupDriver,
    /// The AppArmor profile the process runs under (`None`: none asked, or no
    /// AppArmor on the node).
    pub apparmor_profile: Option<&'a str>,
    /// berthd's config lets the runtime fall back to a weaker device filter
    /// (`allow_degraded_device_filter`): said to runtime-core by an annotation.
    pub degraded_device_filter: bool,
}

/// The user a container process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Additional gids (from /etc/group membership and the CRI's supplemental groups).
    pub additional_gids: Vec<u32>,
    /// Home directory from /etc/passwd (for HOME).
    pub home: Option<String>,
}

/// The lowest oom_score_adj a container is given: berthd's own where berthd lacks
/// CAP_SYS_RESOURCE, which lowering needs and not every host grants even to root (this
/// CI host does not);
/// runtime-core's init raises to the spec's value the same way, and an OCI runtime
/// handler (runc) would fail the whole create with EACCES instead — containerd's
/// `restrict_oom_score_adj` makes the same choice.
/// With CAP_SYS_RESOURCE (a normal root host) any value can be set: no floor.
fn oom_score_adj_floor() -> i32 {
    if has_sys_resource() {
        return i32::MIN;
    }
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether berthd's effective capabilities hold CAP_SYS_RESOURCE (bit 24 of CapEff).
fn has_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// Builds the OCI runtime spec (`config.json` contents) of a container.
///
/// Every section is set field by field from an empty value: the `Default` of
/// `Spec`, `Process`, `Linux`, `Root` and `LinuxCapabilities` (which their builders
/// start from) is a sample container (hostname "youki", an rlimit, default mounts,
/// capabilities, namespaces), none of which may leak into a real one. The golden test
/// (`golden.rs`) holds the result against the fixtures.
pub fn build(input: &SpecInput<'_>) -> Result<Spec> {
    let config = input.config;
    let linux = config.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let resources = linux.resources.clone().unwrap_or_default();
    let privileged = sc.privileged;

    let args = merge_args(config, input.image)?;
    let user = resolve_user(input.rootfs, &sc, &input.image.user)?;
    let env = merge_env(config, input.image, &user, &input.pod.hostname_value);
    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else if !input.image.working_dir.is_empty() {
        input.image.working_dir.clone()
    } else {
        "/".to_owned()
    };
    if !cwd.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "working_dir {cwd:?} must be an absolute path"
        )));
    }

    let caps = capabilities(&sc)?;
    let seccomp = seccomp_profile(&sc, privileged, &caps)?;

    let mut oci_user = User::default();
    oci_user.set_uid(user.uid);
    oci_user.set_gid(user.gid);
    oci_user.set_additional_gids(Some(user.additional_gids.clone()));
    let mut process = Process::default();
    process.set_terminal(Some(config.tty));
    process.set_user(oci_user);
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(PathBuf::from(cwd));
    process.set_capabilities(Some(process_capabilities(&caps)?));
    process.set_rlimits(None);
    process.set_no_new_privileges(Some(sc.no_new_privs));
    process.set_apparmor_profile(input.apparmor_profile.map(str::to_owned));
    process.set_oom_score_adj(match resources.oom_score_adj {
        0 => None,
        adj => Some(
            i32::try_from(adj)
                .map_err(|_| {
                    Error::InvalidArgument(format!(
                        "resources: oom_score_adj {adj} is out of range"
                    ))
                })?
                .max(oom_score_adj_floor()),
        ),
    });

    let mounts = mounts(input, privileged, sc.readonly_rootfs)?;
    let rootfs_propagation = rootfs_propagation(config);

    let namespace = |kind: LinuxNamespaceType, path: Option<&Path>| {
        let mut ns = LinuxNamespace::default();
        ns.set_typ(kind);
        ns.set_path(path.map(Path::to_path_buf));
        ns
    };
    let mut namespaces = vec![namespace(LinuxNamespaceType::Mount, None)];
    let ns_options = sc.namespace_options.clone().unwrap_or_default();
    for (kind, path) in [
        (LinuxNamespaceType::Network, &input.pod.netns),
        (LinuxNamespaceType::Ipc, &input.pod.ipcns),
        (LinuxNamespaceType::Uts, &input.pod.utsns),
    ] {
        if let Some(p) = path {
            namespaces.push(namespace(kind, Some(p.as_path())));
        }
    }
    if let Some(u) = &input.pod.userns {
        for (what, id, maps) in [("uid", user.uid, &u.uids), ("gid", user.gid, &u.gids)] {
            if !maps
                .iter()
                .any(|m| id >= m.container_id && id - m.container_id < m.length)
            {
                return Err(Error::InvalidArgument(format!(
                    "the container's {what} {id} is not mapped by the pod's user namespace (namespace_options.userns_options.{what}s)"
                )));
            }
        }
        namespaces.push(namespace(LinuxNamespaceType::User, Some(u.path.as_path())));
    }
    let pid_mode = NamespaceMode::try_from(ns_options.pid).unwrap_or(NamespaceMode::Pod);
    match (pid_mode, &input.pod.pidns) {
        (NamespaceMode::Node, _) => {}
        _ if input.pod.host_pid => {}
        (NamespaceMode::Pod, Some(p)) => {
            namespaces.push(namespace(LinuxNamespaceType::Pid, Some(p.as_path())));
        }
        (NamespaceMode::Target, _) => {
            return Err(Error::InvalidArgument(
                "namespace_options.pid TARGET is not supported by berthd yet".into(),
            ));
        }
        _ => namespaces.push(namespace(LinuxNamespaceType::Pid, None)),
    }

    let mut linux_spec = Linux::default();
    linux_spec.set_namespaces(Some(namespaces));
    linux_spec.set_cgroups_path(Some(PathBuf::from(cgroups_path(
        input.cgroup_driver,
        &input.pod.cgroup_parent,
        input.id,
    ))));
    linux_spec.set_resources(Some(linux_resources(&resources, config, privileged)?));
    linux_spec.set_devices(Some(devices(config, privileged)?));
    linux_spec.set_rootfs_propagation(Some(rootfs_propagation.to_owned()));
    let (uid_mappings, gid_mappings) = match &input.pod.userns {
        Some(u) => {
            let oci = |maps: &[crate::host::idmap::IdMapping]| -> Vec<LinuxIdMapping> {
                maps.iter()
                    .map(|m| id_mapping(m.container_id, m.host_id, m.length))
                    .collect()
            };
            (Some(oci(&u.uids)), Some(oci(&u.gids)))
        }
        None => (None, None),
    };
    linux_spec.set_uid_mappings(uid_mappings);
    linux_spec.set_gid_mappings(gid_mappings);
    let paths = |asked: &[String], default: &[&str]| {
        if asked.is_empty() {
            default.iter().map(|s| (*s).to_owned()).collect()
        } else {
            asked.to_vec()
        }
    };
    if privileged {
        linux_spec.set_masked_paths(None);
        linux_spec.set_readonly_paths(None);
    } else {
        linux_spec.set_masked_paths(Some(paths(&sc.masked_paths, DEFAULT_MASKED_PATHS)));
        linux_spec.set_readonly_paths(Some(paths(&sc.readonly_paths, DEFAULT_READONLY_PATHS)));
    }
    linux_spec.set_seccomp(seccomp);

    let mut annotations: HashMap<String, String> = config.annotations.clone();
    // Berth's own annotations are berthd's to set (the device-rule policy comes from
    // its config), never a pod spec's.
    annotations.retain(|k, _| !k.starts_with("io.berth."));
    annotations.insert(
        "io.kubernetes.cri.container-type".into(),
        "container".into(),
    );
    annotations.insert(
        "io.kubernetes.cri.container-name".into(),
        config.metadata.clone().unwrap_or_default().name,
    );
    annotations.insert(
        "io.kubernetes.cri.sandbox-id".into(),
        input.pod.sandbox_id.clone(),
    );
    annotations.insert(
        "io.kubernetes.cri.sandbox-name".into(),
        input.pod.sandbox_name.clone(),
    );
    annotations.insert(
        "io.kubernetes.cri.image-name".into(),
        input.image_name.to_owned(),
    );
    if input.degraded_device_filter {
        annotations.insert(
            berth_runtime_core::cgroups::DEGRADED_DEVICES_ANNOTATION.into(),
            "true".into(),
        );
    }

    let mut root = Root::default();
    root.set_path(input.rootfs.to_path_buf());
    root.set_readonly(Some(sc.readonly_rootfs));

    let mut spec = Spec::default();
    spec.set_version("1.1.0".into());
    spec.set_process(Some(process));
    spec.set_root(Some(root));
    spec.set_hostname(None);
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux_spec));
    spec.set_annotations(Some(annotations));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::v1::{
        Capability, ContainerMetadata, Int64Value, KeyValue, LinuxContainerConfig,
        LinuxContainerResources, LinuxContainerSecurityContext, Mount, MountPropagation,
        SecurityProfile,
    };
    use serde_json::Value;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("etc")).expect("etc");
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nwww-data:x:33:33:www:/var/www:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nwww-data:x:33:\nextra:x:50000:www-data\n",
        )
        .expect("group");
        d
    }

    fn ctr(command: &[&str]) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "c".into(),
                attempt: 0,
            }),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    /// The spec as the JSON a runtime reads from config.json.
    fn build_with(config: &ContainerConfig, image: &ImageConfig, root: &Path) -> Result<Value> {
        let pod = PodContext {
            sandbox_id: "pod1".into(),
            netns: Some("/run/berth/ns/pod1/net".into()),
            resolv_conf: "/var/lib/berth/pods/pod1/resolv.conf".into(),
            hosts: "/var/lib/berth/pods/pod1/hosts".into(),
            hostname: "/var/lib/berth/pods/pod1/hostname".into(),
            hostname_value: "web-0".into(),
            cgroup_parent: "/kubepods/podu1".into(),
            ..Default::default()
        };
        build(&SpecInput {
            id: "ctr1",
            config,
            image,
            image_name: "busybox",
            rootfs: root,
            pod: &pod,
            cgroup_driver: CgroupDriver::Cgroupfs,
            apparmor_profile: None,
            degraded_device_filter: false,
        })
        .map(|spec| serde_json::to_value(spec).expect("serialises"))
    }

    /// A pod spec cannot switch off device-rule enforcement by setting berthd's own
    /// annotation: only berthd's config can.
    #[test]
    fn pod_annotations_cannot_set_berths_own() {
        let r = rootfs();
        let mut c = ctr(&["sh"]);
        c.annotations.insert(
            berth_runtime_core::cgroups::DEGRADED_DEVICES_ANNOTATION.into(),
            "true".into(),
        );
        c.annotations.insert("team".into(), "a".into());
        let spec = build_with(&c, &ImageConfig::default(), r.path()).expect("spec");
        let a = &spec["annotations"];
        assert!(
            a.get(berth_runtime_core::cgroups::DEGRADED_DEVICES_ANNOTATION)
                .is_none(),
            "{a}"
        );
        assert_eq!(a["team"], "a");
    }

    #[test]
    fn entrypoint_and_cmd_merge_like_containerd() {
        let image = ImageConfig {
            entrypoint: vec!["/ep".into()],
            cmd: vec!["default".into()],
            ..Default::default()
        };
        let mut c = ctr(&[]);
        assert_eq!(merge_args(&c, &image).expect("args"), ["/ep", "default"]);
        c.args = vec!["x".into()];
        assert_eq!(merge_args(&c, &image).expect("args"), ["/ep", "x"]);
        c.command = vec!["/cmd".into()];
        assert_eq!(merge_args(&c, &image).expect("args"), ["/cmd", "x"]);
        let e = merge_args(&ctr(&[]), &ImageConfig::default()).expect_err("nothing to run");
        assert!(matches!(e, Error::InvalidArgument(_)));
    }

    #[test]
    fn cri_env_overrides_image_env_and_defaults_fill_in() {
        let image = ImageConfig {
            env: vec!["A=1".into(), "B=2".into()],
            ..Default::default()
        };
        let mut c = ctr(&["sh"]);
        c.envs = vec![KeyValue {
            key: "B".into(),
            value: b"3".to_vec(),
        }];
        let user = ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            home: Some("/root".into()),
        };
        let env = merge_env(&c, &image, &user, "");
        assert_eq!(env[0], "A=1");
        assert_eq!(env[1], "B=3");
        assert!(env.iter().any(|e| e.starts_with("PATH=/usr/local/sbin")));
        assert!(env.contains(&"HOME=/root".to_owned()));
    }

    /// The image's /etc/passwd is each hostile shape in turn; resolving the user must
    /// answer InvalidArgument naming the file, at once (the FIFO used to block
    /// CreateContainer forever in open(2)).
    #[test]
    fn hostile_passwd_files_are_refused_at_once() {
        use std::os::unix::fs::symlink;
        let sc = LinuxContainerSecurityContext::default();
        let check = |make: &dyn Fn(&Path), what: &str| {
            let r = rootfs();
            let passwd = r.path().join("etc/passwd");
            std::fs::remove_file(&passwd).expect("rm passwd");
            make(&passwd);
            let started = std::time::Instant::now();
            let err = resolve_user(r.path(), &sc, "").expect_err(what);
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{what}"
            );
            assert!(matches!(err, Error::InvalidArgument(_)), "{what}: {err:?}");
            assert!(err.to_string().contains("/etc/passwd"), "{what}: {err}");
        };
        check(
            &|p| {
                rustix::fs::mkfifoat(rustix::fs::CWD, p, rustix::fs::Mode::from(0o644))
                    .expect("mkfifo")
            },
            "fifo",
        );
        check(
            &|p| symlink("../../../../../../../etc/shadow", p).expect("link"),
            "link out of the root",
        );
        check(
            &|p| symlink("/proc/self/environ", p).expect("link"),
            "proc link",
        );
        check(&|p| symlink("passwd", p).expect("link"), "loop");
        check(&|p| std::fs::create_dir(p).expect("dir"), "directory");
        check(
            &|p| {
                std::fs::File::create(p)
                    .and_then(|f| f.set_len(1 << 30))
                    .expect("sparse file");
            },
            "1 GiB sparse file",
        );
    }

    /// A symlink that stays inside the image is followed inside it, even when it is
    /// absolute or climbs with `..` (it is read as if the rootfs were `/`); a missing
    /// file is no error.
    #[test]
    fn image_files_resolve_inside_the_root() {
        let r = rootfs();
        std::fs::create_dir_all(r.path().join("usr/share")).expect("dir");
        std::fs::rename(r.path().join("etc/passwd"), r.path().join("usr/share/pw")).expect("mv");
        std::os::unix::fs::symlink("../../../../usr/share/pw", r.path().join("etc/passwd"))
            .expect("link");
        let u = resolve_user(
            r.path(),
            &LinuxContainerSecurityContext::default(),
            "www-data",
        )
        .expect("in-root link");
        assert_eq!(u.uid, 33);
        std::fs::remove_file(r.path().join("etc/group")).expect("rm group");
        assert!(
            read_image_file(r.path(), "/etc/group")
                .expect("missing")
                .is_none()
        );
    }

    #[test]
    fn hostname_env_is_the_pods_unless_the_image_or_cri_config_sets_it() {
        let root = rootfs();
        let image = ImageConfig {
            cmd: vec!["sh".into()],
            ..Default::default()
        };
        let env_of = |spec: &Value| -> Vec<String> {
            spec["process"]["env"]
                .as_array()
                .expect("env")
                .iter()
                .map(|v| v.as_str().expect("string").to_owned())
                .collect()
        };
        let hostnames = |env: &[String]| -> Vec<String> {
            env.iter()
                .filter(|e| e.starts_with("HOSTNAME="))
                .cloned()
                .collect()
        };
        // The pod's hostname reaches the process (build_with's pod is "web-0").
        let spec = build_with(&ctr(&[]), &image, root.path()).expect("spec");
        assert_eq!(hostnames(&env_of(&spec)), ["HOSTNAME=web-0"]);

        // The image's ENV HOSTNAME wins over the pod's, as with containerd.
        let with_image_env = ImageConfig {
            env: vec!["HOSTNAME=from-image".into()],
            ..image.clone()
        };
        let spec = build_with(&ctr(&[]), &with_image_env, root.path()).expect("spec");
        assert_eq!(hostnames(&env_of(&spec)), ["HOSTNAME=from-image"]);

        // And the container config's envs win over both.
        let mut c = ctr(&[]);
        c.envs = vec![KeyValue {
            key: "HOSTNAME".into(),
            value: b"from-cri".to_vec(),
        }];
        let spec = build_with(&c, &with_image_env, root.path()).expect("spec");
        assert_eq!(hostnames(&env_of(&spec)), ["HOSTNAME=from-cri"]);
    }

    #[test]
    fn users_resolve_through_the_images_files() {
        let r = rootfs();
        let mut sc = LinuxContainerSecurityContext::default();
        let u = resolve_user(r.path(), &sc, "www-data").expect("by name");
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone()),
            (33, 33, vec![33, 50000])
        );
        let strict = LinuxContainerSecurityContext {
            supplemental_groups_policy: berth_proto::v1::SupplementalGroupsPolicy::Strict.into(),
            ..Default::default()
        };
        let u = resolve_user(r.path(), &strict, "www-data").expect("strict");
        assert_eq!(
            u.additional_gids,
            vec![33],
            "Strict ignores the image's /etc/group"
        );
        let u = resolve_user(r.path(), &sc, "1003:1004").expect("numeric");
        assert_eq!((u.uid, u.gid), (1003, 1004));
        let u = resolve_user(r.path(), &sc, "www-data:extra").expect("name:group");
        assert_eq!((u.uid, u.gid), (33, 50000));
        sc.run_as_username = "nobody".into();
        let u = resolve_user(r.path(), &sc, "").expect("cri username");
        assert_eq!(u.uid, 65534);
        sc.run_as_username.clear();
        sc.run_as_user = Some(Int64Value { value: 1001 });
        sc.run_as_group = Some(Int64Value { value: 1002 });
        sc.supplemental_groups = vec![1234, 5678];
        let u = resolve_user(r.path(), &sc, "www-data").expect("cri ids");
        assert_eq!(
            (u.uid, u.gid, u.additional_gids),
            (1001, 1002, vec![1002, 1234, 5678])
        );
        let e = resolve_user(r.path(), &LinuxContainerSecurityContext::default(), "ghost")
            .expect_err("unknown");
        assert!(e.to_string().contains("ghost"), "{e}");
        let only_group = LinuxContainerSecurityContext {
            run_as_group: Some(Int64Value { value: 5 }),
            ..Default::default()
        };
        assert!(
            resolve_user(r.path(), &only_group, "").is_err(),
            "group without user"
        );
    }

    #[test]
    fn capability_adds_and_drops() {
        let sc = |add: &[&str], drop: &[&str]| LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                add_capabilities: add.iter().map(|s| (*s).to_owned()).collect(),
                drop_capabilities: drop.iter().map(|s| (*s).to_owned()).collect(),
                add_ambient_capabilities: vec![],
            }),
            ..Default::default()
        };
        let d = capabilities(&sc(&[], &[])).expect("default");
        assert!(!d.contains(&"CAP_NET_ADMIN".to_owned()));
        assert!(d.contains(&"CAP_NET_RAW".to_owned()));
        let c = capabilities(&sc(&["NET_ADMIN"], &["NET_RAW"])).expect("caps");
        assert!(c.contains(&"CAP_NET_ADMIN".to_owned()));
        assert!(!c.contains(&"CAP_NET_RAW".to_owned()));
        assert!(capabilities(&sc(&[], &["ALL"])).expect("none").is_empty());
        assert_eq!(
            capabilities(&sc(&["ALL"], &[])).expect("all"),
            host_capabilities()
        );
        assert!(
            host_capabilities().contains(&"CAP_SYS_ADMIN".to_owned()),
            "tests run as root"
        );
        assert!(capabilities(&sc(&["NOT_A_CAP"], &[])).is_err());
    }

    /// Every capability berthd knows has an OCI name: none is refused, none dropped,
    /// on its way into the typed spec.
    #[test]
    fn every_known_capability_has_an_oci_name() {
        let all: Vec<String> = ALL_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
        let oci = security::process_capabilities(&all).expect("every capability converts");
        let json = serde_json::to_value(oci.bounding()).expect("serialises");
        let mut names: Vec<&str> = json
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        names.sort_unstable();
        let mut want = ALL_CAPABILITIES.to_vec();
        want.sort_unstable();
        assert_eq!(names, want);
        assert!(oci.inheritable().is_none() && oci.ambient().is_none());
    }

    #[test]
    fn spec_is_a_valid_oci_spec_with_pod_namespaces_and_defaults() {
        let r = rootfs();
        let v = build_with(&ctr(&["top"]), &ImageConfig::default(), r.path()).expect("spec");
        let spec: oci_spec::runtime::Spec =
            serde_json::from_value(v.clone()).expect("valid OCI spec");
        let ns = &v["linux"]["namespaces"];
        assert!(
            ns.as_array()
                .expect("ns")
                .iter()
                .any(|n| n["type"] == "network" && n["path"] == "/run/berth/ns/pod1/net")
        );
        assert!(
            ns.as_array()
                .expect("ns")
                .iter()
                .any(|n| n["type"] == "pid" && n.get("path").is_none())
        );
        assert_eq!(v["linux"]["cgroupsPath"], "/kubepods/podu1/ctr1");
        assert!(
            v["linux"]["maskedPaths"]
                .as_array()
                .expect("masked")
                .iter()
                .any(|p| p == "/proc/kcore")
        );
        assert_eq!(
            v["linux"]["seccomp"],
            Value::Null,
            "no profile asked: unconfined (CRI nil)"
        );
        assert!(
            v["mounts"]
                .as_array()
                .expect("mounts")
                .iter()
                .any(|m| m["destination"] == "/etc/resolv.conf")
        );
        assert_eq!(
            spec.process()
                .as_ref()
                .expect("process")
                .args()
                .as_ref()
                .expect("args")[0],
            "top"
        );
    }

    #[test]
    fn runtime_default_seccomp_and_privileged() {
        let r = rootfs();
        let mut c = ctr(&["sh"]);
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                seccomp: Some(SecurityProfile::default()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let v = build_with(&c, &ImageConfig::default(), r.path()).expect("spec");
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        c.linux
            .as_mut()
            .expect("linux")
            .security_context
            .as_mut()
            .expect("sc")
            .privileged = true;
        let v = build_with(&c, &ImageConfig::default(), r.path()).expect("spec");
        assert!(
            v["linux"].get("seccomp").is_none(),
            "privileged ignores the profile"
        );
        assert!(v["linux"].get("maskedPaths").is_none());
    }

    #[test]
    fn mount_options_narrow_binds_and_reject_anything_else() {
        let r = rootfs();
        let host = tempfile::tempdir().expect("tempdir");
        let mut c = ctr(&["sh"]);
        c.mounts = vec![Mount {
            container_path: "/data".into(),
            host_path: host.path().display().to_string(),
            mount_options: vec!["noexec".into(), "nodev".into(), "nosuid".into()],
            ..Default::default()
        }];
        let v = build_with(&c, &ImageConfig::default(), r.path()).expect("spec");
        let m = v["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["destination"] == "/data")
            .expect("mount")
            .clone();
        let opts: Vec<&str> = m["options"]
            .as_array()
            .expect("opts")
            .iter()
            .filter_map(|o| o.as_str())
            .collect();
        for o in ["noexec", "nodev", "nosuid", "rw"] {
            assert!(opts.contains(&o), "{o} missing from {opts:?}");
        }

        // "exec" or "suid" would undo what a runtime applies; "shared" is not a
        // bind flag: each is refused, naming the mount and the option.
        for bad in ["exec", "suid", "dev", "shared", ""] {
            c.mounts[0].mount_options = vec!["noexec".into(), bad.into()];
            let e = build_with(&c, &ImageConfig::default(), r.path()).expect_err(bad);
            assert!(
                matches!(e, Error::InvalidArgument(_))
                    && e.to_string().contains("/data")
                    && e.to_string().contains(&format!("{bad:?}")),
                "{e}"
            );
        }
    }

    #[test]
    fn mounts_resolve_host_symlinks_and_map_propagation() {
        let r = rootfs();
        let host = tempfile::tempdir().expect("tempdir");
        let real = host.path().join("real");
        std::fs::create_dir(&real).expect("mkdir");
        std::os::unix::fs::symlink(&real, host.path().join("link")).expect("symlink");
        let mut c = ctr(&["sh"]);
        c.mounts = vec![Mount {
            container_path: "/data/".into(),
            host_path: host.path().join("link").display().to_string(),
            propagation: MountPropagation::PropagationHostToContainer.into(),
            ..Default::default()
        }];
        let v = build_with(&c, &ImageConfig::default(), r.path()).expect("spec");
        let m = v["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["destination"] == "/data")
            .expect("mount")
            .clone();
        assert_eq!(
            m["source"],
            real.canonicalize().expect("canon").display().to_string()
        );
        assert!(
            m["options"]
                .as_array()
                .expect("opts")
                .iter()
                .any(|o| o == "rslave")
        );
        assert_eq!(v["linux"]["rootfsPropagation"], "rslave");

        // A missing host path is created as a directory (as containerd and CRI-O do).
        let missing = real.join("made/by/berthd");
        c.mounts[0].host_path = missing.display().to_string();
        build_with(&c, &ImageConfig::default(), r.path()).expect("a missing host path is made");
        let made = std::fs::metadata(&missing).expect("created");
        assert!(made.is_dir());
        let mode = std::os::unix::fs::PermissionsExt::mode(&made.permissions()) & 0o777;
        assert_eq!(mode & 0o700, 0o700, "{mode:o}");
        assert_eq!(mode & 0o022, 0, "0755 less the umask: {mode:o}");
        // A mount refused for its options creates nothing on the host.
        let refused = real.join("not/made");
        c.mounts[0].host_path = refused.display().to_string();
        c.mounts[0].mount_options = vec!["exec".into()];
        build_with(&c, &ImageConfig::default(), r.path()).expect_err("bad option");
        assert!(
            !real.join("not").exists(),
            "a refused mount created its host path"
        );
        c.mounts[0].mount_options.clear();
        // A relative host path is refused (it would be berthd's working directory's).
        c.mounts[0].host_path = "relative/dir".into();
        let e = build_with(&c, &ImageConfig::default(), r.path()).expect_err("relative");
        assert!(e.to_string().contains("must be absolute"), "{e}");
        // One that cannot be a directory (below a regular file) is refused, named.
        let file = real.join("a-file");
        std::fs::write(&file, b"x").expect("file");
        let below = file.join("below").display().to_string();
        c.mounts[0].host_path = below.clone();
        let e = build_with(&c, &ImageConfig::default(), r.path()).expect_err("cannot be made");
        assert!(e.to_string().contains(&below), "{e}");
        assert!(!file.join("below").exists());
    }

    #[test]
    fn oom_score_adj_is_never_below_berthds_own() {
        // kubelet asks -997 for a Guaranteed pod; lowering below berthd's own needs
        // CAP_SYS_RESOURCE, and runc (a runtime handler) fails the create without it.
        let r = rootfs();
        let floor = oom_score_adj_floor();
        let mut c = ctr(&["sh"]);
        c.linux = Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                oom_score_adj: -997,
                ..Default::default()
            }),
            ..Default::default()
        });
        let v = build_with(&c, &ImageConfig::default(), r.path()).expect("spec");
        assert_eq!(v["process"]["oomScoreAdj"], floor.max(-997));
        // Above berthd's own, the pod's value stands.
        c.linux
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .oom_score_adj = 1000;
        let v = build_with(&c, &ImageConfig::default(), r.path()).expect("spec");
        assert_eq!(v["process"]["oomScoreAdj"], 1000);
    }

    #[test]
    fn memory_limit_sets_swap_to_the_same_value() {
        let r = rootfs();
        let mut c = ctr(&["sh"]);
        c.linux = Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: 15 << 20,
                cpu_quota: 5000,
                cpu_period: 100_000,
                ..Default::default()
            }),
            ..Default::default()
        });
        let v = build_with(&c, &ImageConfig::default(), r.path()).expect("spec");
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 15 << 20);
        assert_eq!(v["linux"]["resources"]["memory"]["swap"], 15 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 5000);
    }

    #[test]
    fn systemd_cgroup_paths() {
        assert_eq!(
            cgroups_path(
                CgroupDriver::Systemd,
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podx.slice",
                "abc"
            ),
            "kubepods-burstable-podx.slice:berth:abc"
        );
        // runtime-core turns the OCI form into the same path berthd computes: the
        // container's `berth-<id>.scope` inside the pod slice's nested path.
        for (parent, id) in [
            ("kubepods-burstable-podx.slice", "abc"),
            ("kubepods.slice", "c1"),
            ("", "c2"),
        ] {
            let oci = cgroups_path(CgroupDriver::Systemd, parent, id);
            assert_eq!(
                berth_runtime_core::cgroups::resolve_cgroups_path(&oci, id)
                    .expect("resolves")
                    .display()
                    .to_string(),
                crate::systemd::container_cgroup_path(parent, id).expect("valid"),
                "{oci}"
            );
        }
        assert_eq!(
            cgroups_path(CgroupDriver::Cgroupfs, "", "abc"),
            "/berth/abc"
        );
    }
}
