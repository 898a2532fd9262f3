//! Idmapped bind mounts (`mount_setattr(MOUNT_ATTR_IDMAP)`): a bind mount whose OCI
//! entry carries `uidMappings`/`gidMappings` shows its files through those mappings,
//! so a container in a user namespace (root inside = an unprivileged uid outside)
//! sees a host directory owned by host root as its own and can write to it.
//!
//! The idmapped mount must be made by a process privileged in the initial user
//! namespace, i.e. before the container process joins its user namespace: stage-1
//! builds a detached, idmapped copy of each such source tree (`open_tree` +
//! `mount_setattr`) while still on the host; the init then attaches it with
//! `move_mount` onto an fd of its destination opened inside the rootfs (see
//! `rootfs::attach_idmapped`), never onto a path. The user namespace
//! that carries a mount's mappings is a throw-away one created by a forked child
//! (the caller is single-threaded), one per distinct mapping.
//!
//! Kernel support (6.18 here): ext4, xfs, btrfs, tmpfs bind mounts can be idmapped;
//! an overlayfs mount itself cannot (EINVAL), so a user-namespaced container's
//! rootfs is an overlay of idmapped layers ([`mount_idmapped_layers`], which berthd
//! calls on the host before the container exists; see docs/runtime-core.md).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxIdMapping, Mount, Spec};

/// `MOUNT_ATTR_IDMAP` from linux/mount.h.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// Why an idmapped mount could not be prepared; names the step and the path.
#[derive(Debug, thiserror::Error)]
#[error("idmapped mount of {path}: {step}: {source}")]
pub struct IdmapError {
    /// What was being done.
    pub step: &'static str,
    /// The mount source.
    pub path: String,
    /// The error.
    #[source]
    pub source: io::Error,
}

impl IdmapError {
    /// The errno, for reporting to the caller of the runtime.
    pub fn errno(&self) -> i32 {
        self.source.raw_os_error().unwrap_or(libc::EIO)
    }
}

fn map_text(maps: &[LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// A new user namespace with the given mappings, as an fd. Forks a child that
/// unshares it and waits; the child is killed and reaped before returning.
///
/// Must be called from a single-threaded process.
pub fn userns_with_mappings(
    uids: &[LinuxIdMapping],
    gids: &[LinuxIdMapping],
) -> io::Result<OwnedFd> {
    let (ready_r, ready_w) = nix::unistd::pipe().map_err(io::Error::from)?;
    let (hold_r, hold_w) = nix::unistd::pipe().map_err(io::Error::from)?;
    // SAFETY: the caller is single-threaded (documented contract); the child only
    // makes raw syscalls and then _exits.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            drop(ready_r);
            drop(hold_w);
            // SAFETY: plain syscalls on fds this child owns; _exit never returns.
            unsafe {
                let ok = libc::unshare(libc::CLONE_NEWUSER) == 0;
                let byte: u8 = if ok { 1 } else { 0 };
                libc::write(ready_w.as_raw_fd(), (&byte as *const u8).cast(), 1);
                let mut buf = 0u8;
                // Blocks until the parent closes its end (or dies).
                libc::read(hold_r.as_raw_fd(), (&mut buf as *mut u8).cast(), 1);
                libc::_exit(0)
            }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(ready_w);
            drop(hold_r);
            let result = (|| {
                let mut byte = [0u8; 1];
                let n = nix::unistd::read(&ready_r, &mut byte).map_err(io::Error::from)?;
                if n != 1 || byte[0] != 1 {
                    return Err(io::Error::other(
                        "the helper could not unshare a user namespace",
                    ));
                }
                let pid = child.as_raw();
                std::fs::write(format!("/proc/{pid}/gid_map"), map_text(gids))?;
                std::fs::write(format!("/proc/{pid}/uid_map"), map_text(uids))?;
                let f = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
                Ok(OwnedFd::from(f))
            })();
            drop(hold_w);
            let _ = nix::sys::wait::waitpid(child, None);
            result
        }
    }
}

/// A detached copy of the tree at `source` (recursively with `recursive`), idmapped
/// through `userns`. Attach it with [`attach`].
pub fn idmapped_tree(
    source: &Path,
    recursive: bool,
    userns: BorrowedFd<'_>,
) -> Result<OwnedFd, IdmapError> {
    idmapped_tree_with(source, recursive, userns, 0)
}

/// [`idmapped_tree`] with more `MOUNT_ATTR_*` flags set in the same call.
fn idmapped_tree_with(
    source: &Path,
    recursive: bool,
    userns: BorrowedFd<'_>,
    attr_set: u64,
) -> Result<OwnedFd, IdmapError> {
    let err = |step, e: io::Error| IdmapError {
        step,
        path: source.display().to_string(),
        source: e,
    };
    let mut flags = rustix::mount::OpenTreeFlags::OPEN_TREE_CLONE
        | rustix::mount::OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= rustix::mount::OpenTreeFlags::AT_RECURSIVE;
    }
    let tree = rustix::mount::open_tree(rustix::fs::CWD, source, flags)
        .map_err(|e| err("open_tree", e.into()))?;
    let mut at_flags = libc::AT_EMPTY_PATH;
    if recursive {
        at_flags |= libc::AT_RECURSIVE;
    }
    crate::sys::linux::mount_setattr(
        tree.as_raw_fd(),
        c"",
        at_flags,
        MOUNT_ATTR_IDMAP | attr_set,
        u64::try_from(userns.as_raw_fd()).unwrap_or(u64::MAX),
    )
    .map_err(|e| err("mount_setattr(MOUNT_ATTR_IDMAP)", e.into()))?;
    Ok(tree)
}

/// Whether a spec mount asks to be idmapped: a bind mount with uid and gid mappings.
pub fn wants_idmap(m: &Mount) -> bool {
    let is_bind = m.typ().as_deref() == Some("bind")
        || m.options()
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .any(|o| o == "bind" || o == "rbind");
    is_bind
        && m.uid_mappings().as_ref().is_some_and(|v| !v.is_empty())
        && m.gid_mappings().as_ref().is_some_and(|v| !v.is_empty())
}

/// Detached idmapped trees for the spec's mounts that ask for one, by mount index.
/// Runs on the host (before joining the container's user namespace).
pub fn prepare(spec: &Spec) -> Result<Vec<(usize, OwnedFd)>, IdmapError> {
    let mut out = Vec::new();
    let mut namespaces: Vec<(Vec<LinuxIdMapping>, Vec<LinuxIdMapping>, OwnedFd)> = Vec::new();
    for (i, m) in spec.mounts().as_deref().unwrap_or(&[]).iter().enumerate() {
        if !wants_idmap(m) {
            continue;
        }
        let source = m.source().as_deref().unwrap_or(Path::new(""));
        let uids = m.uid_mappings().clone().unwrap_or_default();
        let gids = m.gid_mappings().clone().unwrap_or_default();
        let idx = match namespaces
            .iter()
            .position(|(u, g, _)| *u == uids && *g == gids)
        {
            Some(idx) => idx,
            None => {
                let fd = userns_with_mappings(&uids, &gids).map_err(|e| IdmapError {
                    step: "creating a user namespace with the mount's mappings",
                    path: source.display().to_string(),
                    source: e,
                })?;
                namespaces.push((uids, gids, fd));
                namespaces.len() - 1
            }
        };
        let opts = m.options().as_deref().unwrap_or(&[]);
        let recursive = opts.iter().any(|o| o == "rbind" || o == "ridmap");
        let tree = idmapped_tree(source, recursive, namespaces[idx].2.as_fd())?;
        out.push((i, tree));
    }
    Ok(out)
}

/// `MOUNT_ATTR_RDONLY` from linux/mount.h.
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;

/// Mounts at `target` the image layers `lowers` (top first) as a user namespace
/// sees them: each layer a detached copy idmapped through `userns`, so the image's
/// files show their image owners inside the namespace (host root's file is the
/// namespace root's), with no copy or chown of the shared snapshots.
///
/// With `upper_work` (upper and work dirs) it is a container's writable root
/// filesystem: what the container writes lands in the upper dir as the namespace's
/// host ids (the upper dir, the container's `/`, should be owned by its root).
/// Without, it is read-only (an image volume): an overlay of the layers, or the
/// only layer itself (overlayfs needs two lower layers when it has no upper one).
///
/// Everything is by fd (overlayfs `lowerdir+`, `upperdir` and `workdir` given with
/// `FSCONFIG_SET_FD`): no idmapped layer is ever attached anywhere, so none can be
/// left behind, and `target` is reached through an `O_PATH` fd. Needs Linux 6.15
/// (layers by fd came in 6.13, detached mounts as layers in 6.15) and layers on a
/// filesystem that can be idmapped (ext4, xfs, btrfs, tmpfs...). An overlayfs mount
/// itself cannot be idmapped (EINVAL), which is why the layers are, one by one.
pub fn mount_idmapped_layers(
    lowers: &[std::path::PathBuf],
    upper_work: Option<(&Path, &Path)>,
    target: &Path,
    userns: BorrowedFd<'_>,
) -> Result<(), IdmapError> {
    use rustix::fs::{Mode, OFlags};
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};
    let err = |step, path: &Path, e: rustix::io::Errno| IdmapError {
        step,
        path: path.display().to_string(),
        source: e.into(),
    };
    let open = |path: &Path, flags: OFlags| {
        rustix::fs::open(
            path,
            flags | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err("open", path, e))
    };
    let mnt = match (lowers, upper_work) {
        ([], _) => {
            return Err(err("no layers to mount", target, rustix::io::Errno::INVAL));
        }
        ([only], None) => idmapped_tree_with(only, false, userns, MOUNT_ATTR_RDONLY)?,
        (lowers, upper_work) => {
            let layers = lowers
                .iter()
                .map(|l| idmapped_tree(l, false, userns))
                .collect::<Result<Vec<_>, _>>()?;
            let ctx = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
                .map_err(|e| err("fsopen(overlay)", target, e))?;
            for (layer, path) in layers.iter().zip(lowers) {
                rustix::mount::fsconfig_set_fd(&ctx, "lowerdir+", layer)
                    .map_err(|e| err("overlay lowerdir+ (a layer by fd)", path, e))?;
            }
            let mut attrs = MountAttrFlags::MOUNT_ATTR_RDONLY;
            if let Some((upper, work)) = upper_work {
                rustix::mount::fsconfig_set_fd(&ctx, "upperdir", open(upper, OFlags::RDONLY)?)
                    .map_err(|e| err("overlay upperdir (by fd)", upper, e))?;
                rustix::mount::fsconfig_set_fd(&ctx, "workdir", open(work, OFlags::RDONLY)?)
                    .map_err(|e| err("overlay workdir (by fd)", work, e))?;
                attrs = MountAttrFlags::empty();
            }
            rustix::mount::fsconfig_create(&ctx)
                .map_err(|e| err("creating the overlay on idmapped layers", target, e))?;
            rustix::mount::fsmount(&ctx, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
                .map_err(|e| err("fsmount(overlay)", target, e))?
        }
    };
    let at = open(target, OFlags::PATH)?;
    rustix::mount::move_mount(
        &mnt,
        "",
        &at,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| err("attaching the idmapped layers", target, e))
}

/// Whether a failure of [`mount_idmapped_layers`] means the kernel or the filesystem
/// cannot do it (as opposed to the host running out of something).
pub fn is_unsupported(e: &IdmapError) -> bool {
    matches!(
        e.source.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS | libc::EPERM)
    )
}
