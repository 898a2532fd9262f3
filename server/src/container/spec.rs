//! CRI `ContainerConfig` + image config + pod → OCI runtime spec (`config.json`).
//!
//! Follows what containerd's CRI plugin produces, so workloads behave the same:
//! ENTRYPOINT/CMD merging, environment precedence, user resolution through the image's
//! /etc/passwd and /etc/group, the default capability set, masked and read-only
//! paths, mounts with propagation, devices, resources and seccomp.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use berth_proto::v1::security_profile::ProfileType;
use berth_proto::v1::{
    ContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext, MountPropagation,
    NamespaceMode, SecurityProfile,
};
use serde_json::{Value, json};

use super::seccomp;
use crate::config::CgroupDriver;
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

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

/// Builds the OCI runtime spec (`config.json` contents) of a container.
pub fn build(input: &SpecInput<'_>) -> Result<Value> {
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
    let cap_list: Vec<Value> = caps.iter().map(|c| Value::from(c.as_str())).collect();

    let mut process = json!({
        "terminal": config.tty,
        "user": {
            "uid": user.uid,
            "gid": user.gid,
            "additionalGids": user.additional_gids,
        },
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": cap_list,
            "effective": cap_list,
            "permitted": cap_list,
        },
        "noNewPrivileges": sc.no_new_privs,
    });
    if resources.oom_score_adj != 0 {
        process["oomScoreAdj"] = Value::from(resources.oom_score_adj);
    }

    let mounts = mounts(input, privileged, sc.readonly_rootfs)?;
    let rootfs_propagation = rootfs_propagation(config);

    let mut namespaces = vec![json!({ "type": "mount" })];
    let ns_options = sc.namespace_options.clone().unwrap_or_default();
    for (kind, path) in [
        ("network", &input.pod.netns),
        ("ipc", &input.pod.ipcns),
        ("uts", &input.pod.utsns),
    ] {
        if let Some(p) = path {
            namespaces.push(json!({ "type": kind, "path": p }));
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
        namespaces.push(json!({ "type": "user", "path": u.path }));
    }
    let pid_mode = NamespaceMode::try_from(ns_options.pid).unwrap_or(NamespaceMode::Pod);
    match (pid_mode, &input.pod.pidns) {
        (NamespaceMode::Node, _) => {}
        _ if input.pod.host_pid => {}
        (NamespaceMode::Pod, Some(p)) => namespaces.push(json!({ "type": "pid", "path": p })),
        (NamespaceMode::Target, _) => {
            return Err(Error::InvalidArgument(
                "namespace_options.pid TARGET is not supported by berthd yet".into(),
            ));
        }
        _ => namespaces.push(json!({ "type": "pid" })),
    }

    let mut linux_spec = json!({
        "namespaces": namespaces,
        "cgroupsPath": cgroups_path(input.cgroup_driver, &input.pod.cgroup_parent, input.id),
        "resources": linux_resources(&resources, config, privileged)?,
        "devices": devices(config, privileged)?,
        "rootfsPropagation": rootfs_propagation,
    });
    if let Some(u) = &input.pod.userns {
        let oci = |maps: &[crate::host::idmap::IdMapping]| -> Vec<Value> {
            maps.iter()
                .map(|m| json!({ "containerID": m.container_id, "hostID": m.host_id, "size": m.length }))
                .collect()
        };
        linux_spec["uidMappings"] = json!(oci(&u.uids));
        linux_spec["gidMappings"] = json!(oci(&u.gids));
    }
    if !privileged {
        linux_spec["maskedPaths"] = json!(if sc.masked_paths.is_empty() {
            DEFAULT_MASKED_PATHS
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        } else {
            sc.masked_paths.clone()
        });
        linux_spec["readonlyPaths"] = json!(if sc.readonly_paths.is_empty() {
            DEFAULT_READONLY_PATHS
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        } else {
            sc.readonly_paths.clone()
        });
    }
    if let Some(profile) = seccomp {
        linux_spec["seccomp"] = profile;
    }

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

    Ok(json!({
        "ociVersion": "1.1.0",
        "process": process,
        "root": { "path": input.rootfs, "readonly": sc.readonly_rootfs },
        "mounts": mounts,
        "linux": linux_spec,
        "annotations": annotations,
    }))
}

/// ENTRYPOINT/CMD merge as containerd does it: a CRI `command` replaces the
/// entrypoint (and drops CMD); CRI `args` replace CMD.
pub fn merge_args(config: &ContainerConfig, image: &ImageConfig) -> Result<Vec<String>> {
    let mut args = Vec::new();
    if !config.command.is_empty() {
        args.extend(config.command.iter().cloned());
        args.extend(config.args.iter().cloned());
    } else {
        args.extend(image.entrypoint.iter().cloned());
        if config.args.is_empty() {
            args.extend(image.cmd.iter().cloned());
        } else {
            args.extend(config.args.iter().cloned());
        }
    }
    if args.is_empty() {
        return Err(Error::InvalidArgument(
            "no command: the container config has no command/args and the image no ENTRYPOINT/CMD"
                .into(),
        ));
    }
    Ok(args)
}

/// Image ENV, then CRI envs (a CRI variable replaces the image's of the same name);
/// PATH and HOME get defaults when neither sets them, and HOSTNAME is the pod's
/// hostname unless the image or the CRI config sets it (containerd sets it first and
/// lets both replace it; CRI-O likewise). Programs read it instead of calling uname.
pub fn merge_env(
    config: &ContainerConfig,
    image: &ImageConfig,
    user: &ResolvedUser,
    hostname: &str,
) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    fn set(order: &mut Vec<String>, values: &mut HashMap<String, String>, k: String, v: String) {
        if !values.contains_key(&k) {
            order.push(k.clone());
        }
        values.insert(k, v);
    }
    for e in &image.env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        set(&mut order, &mut values, k.to_owned(), v.to_owned());
    }
    for kv in &config.envs {
        let v = String::from_utf8_lossy(&kv.value).into_owned();
        set(&mut order, &mut values, kv.key.clone(), v);
    }
    if !values.contains_key("PATH") {
        set(&mut order, &mut values, "PATH".into(), DEFAULT_PATH.into());
    }
    if !hostname.is_empty() && !values.contains_key("HOSTNAME") {
        set(&mut order, &mut values, "HOSTNAME".into(), hostname.into());
    }
    if !values.contains_key("HOME") {
        let home = user.home.clone().unwrap_or_else(|| "/".into());
        set(&mut order, &mut values, "HOME".into(), home);
    }
    order
        .into_iter()
        .map(|k| {
            let v = values.get(&k).cloned().unwrap_or_default();
            format!("{k}={v}")
        })
        .collect()
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Largest `/etc/passwd` or `/etc/group` berthd reads from an image. Real ones are a
/// few KiB; the cap keeps a sparse multi-GiB file from being read into berthd's memory.
pub const IMAGE_FILE_MAX: u64 = 4 * 1024 * 1024;

/// Reads `path` (absolute, as the container sees it) from the image's root filesystem
/// at `rootfs`. The image's author controls every byte of it, so: the path is resolved
/// by the kernel as if `rootfs` were `/` (openat2 RESOLVE_IN_ROOT: symlinks and `..`
/// cannot leave it, magic /proc links are refused), opened O_PATH and checked before
/// it is opened for reading (a FIFO cannot hang the open), and read only when it is a regular file of at most
/// [`IMAGE_FILE_MAX`] bytes. A missing file is `Ok(None)`; a FIFO, device, socket,
/// directory, symlink loop, dangling symlink or oversized file is InvalidArgument
/// naming the file, at once.
pub fn read_image_file(rootfs: &Path, path: &str) -> Result<Option<String>> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    use std::io::Read;
    let bad = |why: String| Error::InvalidArgument(format!("image file {path}: {why}"));
    let root = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(format!("opening the rootfs {}", rootfs.display()), e.into()))?;
    let rel = path.trim_start_matches('/');
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    // O_PATH first: opening a FIFO or a device for reading has effects (a FIFO
    // blocks until a writer comes); an O_PATH fd has none and pins the inode.
    let opened = rustix::fs::openat2(
        &root,
        rel,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        resolve,
    );
    let fd = match opened {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => {
            // Absent is fine (scratch images have no /etc/passwd). A link that exists
            // but leads nowhere inside the image is the author pointing at the host
            // (`/proc/self/...`, `../../etc/shadow`): said, not silently ignored.
            let link = rustix::fs::openat2(
                &root,
                rel,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                resolve,
            );
            return match link {
                Ok(_) => Err(bad(
                    "is a symbolic link that leads nowhere inside the image".into(),
                )),
                Err(_) => Ok(None),
            };
        }
        Err(rustix::io::Errno::LOOP) => return Err(bad("symbolic link loop".into())),
        Err(rustix::io::Errno::XDEV) => {
            return Err(bad("resolves through a /proc magic link".into()));
        }
        Err(rustix::io::Errno::NOTDIR) => return Ok(None),
        Err(e) => return Err(bad(format!("cannot be opened: {e}"))),
    };
    let st = rustix::fs::fstat(&fd)
        .map_err(|e| Error::io(format!("stat of image file {path}"), e.into()))?;
    let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
    if kind != rustix::fs::FileType::RegularFile {
        return Err(bad(format!("is a {kind:?}, not a regular file")));
    }
    let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
    if size > IMAGE_FILE_MAX {
        return Err(bad(format!(
            "is {size} bytes, more than the {IMAGE_FILE_MAX} berthd reads"
        )));
    }
    // The same inode, now for reading (non-blocking all the same).
    let file = rustix::fs::open(
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| bad(format!("cannot be opened: {e}")))?;
    let mut text = Vec::new();
    std::fs::File::from(file)
        .take(IMAGE_FILE_MAX + 1)
        .read_to_end(&mut text)
        .map_err(|e| bad(format!("cannot be read: {e}")))?;
    if text.len() as u64 > IMAGE_FILE_MAX {
        return Err(bad(format!(
            "is more than the {IMAGE_FILE_MAX} bytes berthd reads"
        )));
    }
    Ok(Some(String::from_utf8_lossy(&text).into_owned()))
}

fn read_in_rootfs(rootfs: &Path, path: &str) -> Result<String> {
    Ok(read_image_file(rootfs, path)?.unwrap_or_default())
}

fn passwd(rootfs: &Path) -> Result<Vec<PasswdEntry>> {
    Ok(read_in_rootfs(rootfs, "/etc/passwd")?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: (*f.first()?).to_owned(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).map(|s| (*s).to_owned()).unwrap_or_default(),
            })
        })
        .collect())
}

fn groups(rootfs: &Path) -> Result<Vec<GroupEntry>> {
    Ok(read_in_rootfs(rootfs, "/etc/group")?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: (*f.first()?).to_owned(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect())
}

/// Resolves the process user: CRI run_as_user / run_as_username / run_as_group, else
/// the image's USER, through the image's /etc/passwd and /etc/group.
pub fn resolve_user(
    rootfs: &Path,
    sc: &LinuxContainerSecurityContext,
    image_user: &str,
) -> Result<ResolvedUser> {
    let users = passwd(rootfs)?;
    let grps = groups(rootfs)?;
    let (user_part, group_part): (String, Option<String>) = if let Some(uid) = &sc.run_as_user {
        (uid.value.to_string(), None)
    } else if !sc.run_as_username.is_empty() {
        (sc.run_as_username.clone(), None)
    } else {
        match image_user.split_once(':') {
            Some((u, g)) => (u.to_owned(), Some(g.to_owned())),
            None => (image_user.to_owned(), None),
        }
    };
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(Error::InvalidArgument(
            "security_context.run_as_group needs run_as_user or run_as_username".into(),
        ));
    }

    let (uid, mut gid, name, home) = if user_part.is_empty() {
        (
            0,
            0,
            Some("root".to_owned()),
            users.iter().find(|u| u.uid == 0).map(|u| u.home.clone()),
        )
    } else if let Ok(uid) = user_part.parse::<u32>() {
        let entry = users.iter().find(|u| u.uid == uid);
        (
            uid,
            entry.map(|e| e.gid).unwrap_or(0),
            entry.map(|e| e.name.clone()),
            entry.map(|e| e.home.clone()),
        )
    } else {
        let entry = users.iter().find(|u| u.name == user_part).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "user {user_part:?} is not in the image's /etc/passwd"
            ))
        })?;
        (
            entry.uid,
            entry.gid,
            Some(entry.name.clone()),
            Some(entry.home.clone()),
        )
    };

    if let Some(g) = &sc.run_as_group {
        gid = u32::try_from(g.value).map_err(|_| {
            Error::InvalidArgument(format!("run_as_group {} is out of range", g.value))
        })?;
    } else if let Some(g) = group_part.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => grps
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("group {g:?} is not in the image's /etc/group"))
                })?,
        };
    }

    // The primary group is listed too (as `id -G` shows it and containerd reports it).
    let mut additional: BTreeSet<u32> = BTreeSet::from([gid]);
    let strict = sc.supplemental_groups_policy
        == i32::from(berth_proto::v1::SupplementalGroupsPolicy::Strict);
    if let Some(name) = name.as_ref().filter(|_| !strict) {
        for g in &grps {
            if g.members.iter().any(|m| m == name) {
                additional.insert(g.gid);
            }
        }
    }
    for g in &sc.supplemental_groups {
        additional.insert(u32::try_from(*g).map_err(|_| {
            Error::InvalidArgument(format!("supplemental group {g} is out of range"))
        })?);
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional.into_iter().collect(),
        home: home.filter(|h| !h.is_empty()),
    })
}

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

/// The seccomp section, or `None` for unconfined. The deprecated
/// `seccomp_profile_path` is honoured for older kubelets.
#[allow(deprecated, reason = "older kubelets still send seccomp_profile_path")]
fn seccomp_profile(
    sc: &LinuxContainerSecurityContext,
    privileged: bool,
    caps: &[String],
) -> Result<Option<Value>> {
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

fn mounts(input: &SpecInput<'_>, privileged: bool, readonly_rootfs: bool) -> Result<Vec<Value>> {
    let config = input.config;
    let user_targets: BTreeSet<String> = config
        .mounts
        .iter()
        .map(|m| clean_container_path(&m.container_path))
        .collect();
    let sys_opts = if privileged {
        vec!["nosuid", "noexec", "nodev"]
    } else {
        vec!["nosuid", "noexec", "nodev", "ro"]
    };
    let mut out = vec![
        json!({ "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] }),
        json!({ "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }),
        json!({ "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] }),
        json!({ "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] }),
        json!({ "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts }),
        json!({ "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if privileged { "rw" } else { "ro" }] }),
    ];
    let shm_source = input
        .pod
        .shm
        .clone()
        .unwrap_or_else(|| PathBuf::from("/dev/shm"));
    let pod_files = [
        ("/dev/shm", shm_source, false),
        (
            "/etc/resolv.conf",
            input.pod.resolv_conf.clone(),
            readonly_rootfs,
        ),
        ("/etc/hosts", input.pod.hosts.clone(), readonly_rootfs),
        ("/etc/hostname", input.pod.hostname.clone(), readonly_rootfs),
    ];
    for (dest, source, ro) in pod_files {
        if user_targets.contains(dest) {
            continue; // kubelet's own /etc/hosts etc. win
        }
        let mut options = vec!["rbind", "rprivate", "nosuid", "nodev"];
        if dest == "/dev/shm" {
            options.push("noexec");
        }
        options.push(if ro { "ro" } else { "rw" });
        let mut mount =
            json!({ "destination": dest, "type": "bind", "source": source, "options": options });
        // In a pod user namespace the pod's files are idmapped like its volumes (they
        // are root's on the host), so the container's root may edit them as in any
        // pod. /dev/shm is a tmpfs of mode 1777: files made there are the mapped ids'.
        if let Some(u) = &input.pod.userns
            && dest != "/dev/shm"
        {
            idmap_mount(&mut mount, &berth_proto::v1::Mount::default(), u);
        }
        out.push(mount);
    }
    for m in &config.mounts {
        // Image volumes arrive here as binds: the container manager mounted the image
        // and set host_path (see container/image_volume.rs).
        if m.image.is_some() && (m.host_path.is_empty() || !m.readonly) {
            return Err(Error::InvalidArgument(format!(
                "mount {:?}: image volume was not prepared as a read-only mount",
                m.container_path
            )));
        }
        if !m.container_path.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "mounts: container_path {:?} must be absolute",
                m.container_path
            )));
        }
        if m.host_path.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "mounts: {:?} has no host_path",
                m.container_path
            )));
        }
        // Nothing may be mounted over the kernel's files in /proc (runc's
        // checkProcMount); runtime-core checks again after resolving symlinks.
        berth_runtime_core::rootfs::check_proc_mount(
            Path::new(&m.container_path),
            "bind",
            Some(Path::new(&m.host_path)),
        )
        .map_err(|e| Error::InvalidArgument(format!("mounts: {e}")))?;
        // Symlinks in the host path are resolved here, on the host, where they belong;
        // the target inside the container is resolved in the rootfs by runtime-core.
        let source = std::fs::canonicalize(&m.host_path).map_err(|e| {
            Error::InvalidArgument(format!("mounts: host_path {:?}: {e}", m.host_path))
        })?;
        let propagation = match MountPropagation::try_from(m.propagation) {
            Ok(MountPropagation::PropagationHostToContainer) => "rslave",
            Ok(MountPropagation::PropagationBidirectional) => "rshared",
            _ => "rprivate",
        };
        if m.recursive_read_only {
            if !m.readonly {
                return Err(Error::InvalidArgument(format!(
                    "mount {:?}: recursive_read_only needs readonly",
                    m.container_path
                )));
            }
            if propagation != "rprivate" {
                return Err(Error::InvalidArgument(format!(
                    "mount {:?}: recursive_read_only needs private propagation",
                    m.container_path
                )));
            }
        }
        let mut options = vec!["rbind", propagation];
        options.push(if m.readonly { "ro" } else { "rw" });
        if m.recursive_read_only {
            options.push("rro");
        }
        // cri-api v0.37 `mount_options` (kubelet's VolumeBindMountOptions): only the
        // three flags that narrow a bind; anything else could widen it or is a typo
        // that would otherwise be dropped silently.
        for opt in &m.mount_options {
            match opt.as_str() {
                "noexec" | "nodev" | "nosuid" => {
                    if !options.contains(&opt.as_str()) {
                        options.push(opt.as_str());
                    }
                }
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "mount {:?}: mount_options: {opt:?} is not one of noexec, nodev, nosuid",
                        m.container_path
                    )));
                }
            }
        }
        let mut mount = json!({
            "destination": clean_container_path(&m.container_path),
            "type": "bind",
            "source": source,
            "options": options,
        });
        if let Some(u) = &input.pod.userns
            && m.image.is_none()
        {
            // In a pod user namespace volumes are idmapped (runtime-core), with the
            // mount's own mappings when kubelet gives them, else the pod's. Image
            // volumes were mounted idmapped by berthd already (image_volume.rs): an
            // overlay cannot be idmapped again.
            idmap_mount(&mut mount, m, u);
        }
        out.push(mount);
    }
    Ok(out)
}

fn idmap_mount(mount: &mut Value, m: &berth_proto::v1::Mount, pod: &PodUserNamespace) {
    let own = |maps: &[berth_proto::v1::IdMapping]| -> Vec<Value> {
        maps.iter()
            .map(
                |x| json!({ "containerID": x.container_id, "hostID": x.host_id, "size": x.length }),
            )
            .collect()
    };
    let pods = |maps: &[crate::host::idmap::IdMapping]| -> Vec<Value> {
        maps.iter()
            .map(
                |x| json!({ "containerID": x.container_id, "hostID": x.host_id, "size": x.length }),
            )
            .collect()
    };
    let (uids, gids) = if m.uid_mappings.is_empty() || m.gid_mappings.is_empty() {
        (pods(&pod.uids), pods(&pod.gids))
    } else {
        (own(&m.uid_mappings), own(&m.gid_mappings))
    };
    mount["uidMappings"] = json!(uids);
    mount["gidMappings"] = json!(gids);
    if let Some(opts) = mount["options"].as_array_mut() {
        opts.push(json!("ridmap"));
    }
}

fn clean_container_path(p: &str) -> String {
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.to_owned()
    }
}

/// The rootfs propagation the container's mounts need: shared if any mount is
/// bidirectional, slave if any receives host mounts, private otherwise.
fn rootfs_propagation(config: &ContainerConfig) -> &'static str {
    let props: Vec<_> = config
        .mounts
        .iter()
        .map(|m| {
            MountPropagation::try_from(m.propagation)
                .unwrap_or(MountPropagation::PropagationPrivate)
        })
        .collect();
    if props.contains(&MountPropagation::PropagationBidirectional) {
        "rshared"
    } else if props.contains(&MountPropagation::PropagationHostToContainer) {
        "rslave"
    } else {
        "rprivate"
    }
}

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

fn linux_resources(
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

fn devices(config: &ContainerConfig, privileged: bool) -> Result<Vec<Value>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::v1::{
        Capability, ContainerMetadata, Int64Value, KeyValue, LinuxContainerConfig, Mount,
    };

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
        })
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

        c.mounts[0].host_path = "/nonexistent/berth".into();
        let e = build_with(&c, &ImageConfig::default(), r.path()).expect_err("missing host path");
        assert!(e.to_string().contains("/nonexistent/berth"), "{e}");
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
