//! The spec's `mounts`: the defaults, the CRI's mounts with propagation and
//! idmapping, and the rootfs propagation they need.

use std::collections::BTreeSet;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use berth_proto::v1::{ContainerConfig, MountPropagation};
use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder, Mount};

use super::{PodUserNamespace, SpecInput};
use crate::error::{Error, Result};

pub(super) fn mounts(
    input: &SpecInput<'_>,
    privileged: bool,
    readonly_rootfs: bool,
) -> Result<Vec<Mount>> {
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
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount("/sys", "sysfs", "sysfs", &sys_opts),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &[
                "nosuid",
                "noexec",
                "nodev",
                "relatime",
                if privileged { "rw" } else { "ro" },
            ],
        ),
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
        let mut bind = mount(dest, "bind", source, &options);
        // In a pod user namespace the pod's files are idmapped like its volumes (they
        // are root's on the host), so the container's root may edit them as in any
        // pod. /dev/shm is a tmpfs of mode 1777: files made there are the mapped ids'.
        if let Some(u) = &input.pod.userns
            && dest != "/dev/shm"
        {
            idmap_mount(&mut bind, &berth_proto::v1::Mount::default(), u);
        }
        out.push(bind);
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
        // Relative to what? berthd's working directory is no answer a pod should get
        // (and a missing path would be created there).
        if !m.host_path.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "mounts: host_path {:?} of {:?} must be absolute",
                m.host_path, m.container_path
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
        // Symlinks in the host path are resolved here, on the host, where they belong;
        // the target inside the container is resolved in the rootfs by runtime-core.
        // A missing host path is made a directory (mode 0755 less the umask), as
        // containerd and CRI-O do: kubelet sends a hostPath volume of type "" as is,
        // and pods rely on it. Done after this mount's own checks, so a mount refused
        // for its options creates nothing on the host.
        let named = format!("mounts: host_path {:?}", m.host_path);
        if let Err(e) = std::fs::symlink_metadata(&m.host_path)
            && e.kind() == std::io::ErrorKind::NotFound
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&m.host_path)
                .map_err(|e| {
                    Error::refused_io(format!("{named}: is missing and cannot be created"), e)
                })?;
        }
        let source =
            std::fs::canonicalize(&m.host_path).map_err(|e| Error::refused_io(named, e))?;
        let mut bind = mount(
            &clean_container_path(&m.container_path),
            "bind",
            source,
            &options,
        );
        if let Some(u) = &input.pod.userns
            && m.image.is_none()
        {
            // In a pod user namespace volumes are idmapped (runtime-core), with the
            // mount's own mappings when kubelet gives them, else the pod's. Image
            // volumes were mounted idmapped by berthd already (image_volume.rs): an
            // overlay cannot be idmapped again.
            idmap_mount(&mut bind, m, u);
        }
        out.push(bind);
    }
    Ok(out)
}

/// A mount of `source` at `destination`.
fn mount(destination: &str, kind: &str, source: impl Into<PathBuf>, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination));
    m.set_typ(Some(kind.to_owned()));
    m.set_source(Some(source.into()));
    m.set_options(Some(options.iter().map(|o| (*o).to_owned()).collect()));
    m
}

/// An OCI id mapping.
pub(super) fn id_mapping(container_id: u32, host_id: u32, size: u32) -> LinuxIdMapping {
    // The type has no setters; its builder fails only on a field left unset.
    LinuxIdMappingBuilder::default()
        .container_id(container_id)
        .host_id(host_id)
        .size(size)
        .build()
        .expect("every field of the id mapping is set")
}

fn idmap_mount(mount: &mut Mount, m: &berth_proto::v1::Mount, pod: &PodUserNamespace) {
    let (uids, gids): (Vec<_>, Vec<_>) = if m.uid_mappings.is_empty() || m.gid_mappings.is_empty() {
        let pods = |maps: &[crate::host::idmap::IdMapping]| {
            maps.iter()
                .map(|x| id_mapping(x.container_id, x.host_id, x.length))
                .collect()
        };
        (pods(&pod.uids), pods(&pod.gids))
    } else {
        let own = |maps: &[berth_proto::v1::IdMapping]| {
            maps.iter()
                .map(|x| id_mapping(x.container_id, x.host_id, x.length))
                .collect()
        };
        (own(&m.uid_mappings), own(&m.gid_mappings))
    };
    mount.set_uid_mappings(Some(uids));
    mount.set_gid_mappings(Some(gids));
    if let Some(opts) = mount.options_mut() {
        opts.push("ridmap".into());
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
pub(super) fn rootfs_propagation(config: &ContainerConfig) -> &'static str {
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
