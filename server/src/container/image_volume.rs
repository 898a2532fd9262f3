//! Image volumes (KEP-4639, CRI `Mount.image`): the content of a pulled OCI image
//! mounted read-only into a container.
//!
//! For each such mount berthd leases the image's snapshots (holder
//! `<container id>.vol<mount index>`, so removing the image cannot delete layers the
//! container still uses), mounts them under the container's state dir at
//! `image-volumes/<mount index>` (a read-only overlay of the lower dirs, or a
//! read-only bind of the only layer), and hands the container runtime a read-only
//! bind of that directory (or of `image_sub_path` inside it). Removing the container,
//! a failed create and recovery unmount those and drop the leases.

use std::path::{Path, PathBuf};

use berth_image::{Image, ImageStore};
use berth_proto::v1::ContainerConfig;

use super::error::{Error, Result};
use crate::error::Plain;
use crate::host::mounts::sys_mount;

/// Where the container's image volumes are mounted, below its state dir.
const VOLUMES_DIR: &str = "image-volumes";

/// An image a mount of the container config asked for, resolved in the store.
#[derive(Debug)]
pub struct Resolved {
    /// Index of the mount in `ContainerConfig.mounts`.
    pub index: usize,
    /// The image.
    pub image: Image,
}

/// The lease holder of mount `index` of container `id`.
fn holder(id: &str, index: usize) -> String {
    format!("{id}.vol{index}")
}

/// Checks every image mount of `config` and finds its image in the store; records
/// the image id in the mount's `image.image_ref` (echoed by `ContainerStatus`).
/// The image must have been pulled: kubelet pulls image volumes before creating.
pub fn resolve(images: &ImageStore, config: &mut ContainerConfig) -> Result<Vec<Resolved>> {
    let mut out = Vec::new();
    for (index, m) in config.mounts.iter_mut().enumerate() {
        let Some(spec) = m.image.as_mut() else {
            continue;
        };
        check_mount(m.container_path.as_str(), &m.host_path, m.readonly)?;
        let wanted = if spec.image.is_empty() {
            spec.user_specified_image.clone()
        } else {
            spec.image.clone()
        };
        if wanted.is_empty() {
            return Err(Error::invalid_argument(format!(
                "image volume at {:?}: mount.image.image is required",
                m.container_path
            )));
        }
        let image = images
            .status(&wanted)
            .map_err(Error::from)?
            .ok_or_else(|| {
                Error::not_found(format!(
                    "image volume at {:?}: image {wanted:?} is not present; pull it first",
                    m.container_path
                ))
            })?;
        if image.layers.is_empty() {
            return Err(Error::invalid_argument(format!(
                "image volume at {:?}: image {wanted:?} has no layers to mount",
                m.container_path
            )));
        }
        spec.image_ref = image.id.to_string();
        out.push(Resolved { index, image });
    }
    Ok(out)
}

/// Image volumes are read-only and take their content from the image only.
fn check_mount(container_path: &str, host_path: &str, readonly: bool) -> Result<()> {
    if !host_path.is_empty() {
        return Err(Error::invalid_argument(format!(
            "image volume at {container_path:?}: host_path must be empty (got {host_path:?})"
        )));
    }
    if !readonly {
        return Err(Error::invalid_argument(format!(
            "image volume at {container_path:?}: image volumes are read-only; set readonly"
        )));
    }
    Ok(())
}

/// Leases and mounts every resolved image volume of container `id` under `dir`, and
/// returns the config the OCI spec is built from: `config` with each image mount's
/// `host_path` set to what the container must see.
///
/// On error, what was mounted or leased so far stays recorded under `dir`, and
/// [`unmount_all`] (run by the container's clean-up) removes it.
pub async fn mount_all(
    images: &ImageStore,
    id: &str,
    dir: &Path,
    config: &ContainerConfig,
    volumes: &[Resolved],
    userns: Option<&super::spec::PodUserNamespace>,
) -> Result<ContainerConfig> {
    let mut out = config.clone();
    if volumes.is_empty() {
        return Ok(out);
    }
    let base = dir.join(VOLUMES_DIR);
    for v in volumes {
        let mount = config
            .mounts
            .get(v.index)
            .ok_or_else(|| Error::internal(format!("image volume {} has no mount", v.index)))?;
        let target = base.join(v.index.to_string());
        // The directory first: unmount_all finds leases by their directories.
        std::fs::create_dir_all(&target)
            .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
        let lowers = images
            .lease(&holder(id, v.index), &v.image)
            .await
            .map_err(Error::from)?;
        let what = format!(
            "the image volume at {:?} (image {}) on {}",
            mount.container_path,
            v.image.id,
            target.display()
        );
        match userns {
            // In a pod user namespace the image's owners show through its idmapped
            // layers (the spec then binds it as it is, not idmapped again).
            Some(u) => u.mount_idmapped_layers(&lowers, None, &target, &what)?,
            None => mount_readonly(&lowers, &target)
                .map_err(|e| Error::io(format!("mounting {what}"), e))?,
        }
        let source = if mount.image_sub_path.is_empty() {
            target
        } else {
            resolve_sub_path(&target, &mount.image_sub_path).map_err(|e| {
                Error::invalid_argument(format!(
                    "image volume at {:?}: image_sub_path {:?} in image {}: {e}",
                    mount.container_path, mount.image_sub_path, v.image.id
                ))
            })?
        };
        if let Some(m) = out.mounts.get_mut(v.index) {
            m.host_path = source.display().to_string();
        }
    }
    Ok(out)
}

/// Unmounts every image volume recorded under the container dir `dir` and releases
/// its lease. Returns false if a mount could not be removed (then `dir` must not be
/// deleted: it would reach into the mount).
pub async fn unmount_all(images: &ImageStore, id: &str, dir: &Path) -> bool {
    let base = dir.join(VOLUMES_DIR);
    let entries = match std::fs::read_dir(&base) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
        Err(e) => {
            tracing::warn!(container = %id, error = %e, "listing image volumes");
            return false;
        }
    };
    let mut clean = true;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(index) = name.parse::<usize>() else {
            continue;
        };
        let target = entry.path();
        if let Err(e) = crate::host::mounts::unmount(&target) {
            tracing::warn!(container = %id, path = %target.display(), error = %e, "unmounting image volume");
            clean = false;
            continue;
        }
        if let Err(e) = std::fs::remove_dir(&target) {
            tracing::warn!(container = %id, path = %target.display(), error = %e, "removing image volume dir");
            clean = false;
            continue;
        }
        if let Err(e) = images.release(&holder(id, index)).await {
            tracing::warn!(container = %id, error = %e, "releasing image volume lease");
        }
    }
    clean
}

/// Mounts the layers `lowers` (top first) read-only on `target`: an overlay of lower
/// dirs only when there are several, a read-only bind when there is one (overlayfs
/// needs two lower dirs when it has no upper dir).
fn mount_readonly(lowers: &[PathBuf], target: &Path) -> std::io::Result<()> {
    match lowers {
        [] => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the image has no layers",
        )),
        [only] => {
            sys_mount(Some(only.as_os_str()), target, None, libc::MS_BIND, None)?;
            let ro = sys_mount(
                None,
                target,
                None,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                None,
            );
            if let Err(e) = ro {
                // Never leave a writable view of a shared snapshot behind.
                let _ = crate::host::mounts::unmount(target);
                return Err(e);
            }
            Ok(())
        }
        many => {
            let lower = many
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":");
            sys_mount(
                Some(std::ffi::OsStr::new("overlay")),
                target,
                Some(c"overlay"),
                libc::MS_RDONLY,
                Some(&format!("lowerdir={lower}")),
            )
        }
    }
}

/// The directory `sub` names inside the mounted image at `root`, resolved as if
/// `root` were `/` (symlinks and `..` cannot leave it). It must exist and be a
/// directory, as containerd and the KEP require.
fn resolve_sub_path(root: &Path, sub: &str) -> std::io::Result<PathBuf> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let rel = sub.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let fd = rustix::fs::openat2(
        &root_fd,
        rel,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a directory (only directories can be mounted)",
        ));
    }
    let path = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))?;
    if !path.starts_with(root) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("resolves to {} outside the image", path.display()),
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_volumes_must_be_read_only_without_host_path() {
        assert!(check_mount("/v", "", true).is_ok());
        let rw = check_mount("/v", "", false).unwrap_err();
        assert!(
            matches!(rw, Error::Host(crate::error::Error::InvalidArgument(_))),
            "{rw}"
        );
        assert!(rw.to_string().contains("read-only"), "{rw}");
        let host = check_mount("/v", "/tmp", true).unwrap_err();
        assert!(host.to_string().contains("host_path"), "{host}");
    }

    #[test]
    fn holders_are_distinct_per_mount_and_valid_file_names() {
        let id = "a".repeat(64);
        assert_ne!(holder(&id, 0), holder(&id, 1));
        assert!(holder(&id, 12).len() <= 128);
        assert!(!holder(&id, 3).contains('/'));
    }

    #[test]
    fn sub_paths_resolve_inside_the_root_only() {
        let root = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(root.path()).unwrap();
        std::fs::create_dir_all(root.join("etc/ssl")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs-link")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("etc/up")).unwrap();

        assert_eq!(resolve_sub_path(&root, "etc").unwrap(), root.join("etc"));
        assert_eq!(
            resolve_sub_path(&root, "/etc/ssl/").unwrap(),
            root.join("etc/ssl")
        );
        // An absolute symlink means the image's /etc, not the host's.
        assert_eq!(
            resolve_sub_path(&root, "abs-link").unwrap(),
            root.join("etc")
        );
        // `..` stops at the image's root.
        assert_eq!(resolve_sub_path(&root, "etc/up").unwrap(), root);
        assert_eq!(resolve_sub_path(&root, "../..").unwrap(), root);
        let missing = resolve_sub_path(&root, "not-existing").unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        let file = resolve_sub_path(&root, "etc/passwd").unwrap_err();
        assert!(file.to_string().contains("not a directory"), "{file}");
    }
}
