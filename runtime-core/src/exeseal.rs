//! Keeping Berth's own binaries out of the containers' reach (CVE-2019-5736 class).
//!
//! A process of ours that a container can see — the container's init before its
//! execve (a fork of berth-monitor or berth-runtime), an exec helper joining a running
//! container, the pod's `berth-monitor pause` as pid 1 of a shared pid namespace —
//! exposes its binary as `/proc/<pid>/exe`. A container process allowed to open it
//! (same uid, plus CAP_SYS_PTRACE, which some pods are given) holds a descriptor of the
//! host's file and can reopen it for writing once nothing runs it any more: the next
//! container start then runs the attacker's code as root on the host.
//!
//! So these processes first re-execute themselves from a copy that cannot be written:
//! a private, detached, read-only overlayfs mount of the binary's own directory (zero
//! copy, the page cache stays shared; the approach runc 1.2 takes), or, where overlayfs
//! cannot be mounted, a sealed memfd copy. `/proc/<pid>/exe` then names a file whose
//! every write is refused (EROFS, or EPERM from the seals), forever.

use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// Set in the environment of the re-executed process to stop a loop; removed again
/// right away, so nothing started by it inherits the marker.
const GUARD: &str = "_BERTH_EXE_SEALED";

/// An empty directory used as the second, lower layer of the overlay (overlayfs needs
/// two lower layers to mount read-only without an upper one).
const EMPTY_LOWER: &str = "/run/berth/exe-seal";

/// Why the binary could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: rustix::io::Errno,
    },
    #[error("copy the binary into a memfd: {0}")]
    Copy(#[source] std::io::Error),
    #[error("re-executed from a sealed copy, but /proc/self/exe is still writable")]
    StillWritable,
    #[error("no way to seal the binary (overlayfs: {overlay}; memfd: {memfd})")]
    NoWay { overlay: String, memfd: String },
}

fn sys(what: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> SealError {
    let what = what.into();
    move |source| SealError::Sys { what, source }
}

/// How the running binary is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    /// It lives on a read-only mount (the private overlay, or a read-only host mount).
    ReadOnlyMount,
    /// It is a memfd sealed against writes.
    SealedMemfd,
}

/// How the file behind `/proc/self/exe` is protected from writes, if it is.
pub fn current_seal() -> Result<Option<Seal>, SealError> {
    let exe = rustix::fs::open(
        "/proc/self/exe",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open /proc/self/exe"))?;
    seal_of(&exe)
}

fn seal_of(file: &OwnedFd) -> Result<Option<Seal>, SealError> {
    let vfs = rustix::fs::fstatvfs(file).map_err(sys("fstatvfs /proc/self/exe"))?;
    if vfs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
        return Ok(Some(Seal::ReadOnlyMount));
    }
    let wanted = rustix::fs::SealFlags::WRITE
        | rustix::fs::SealFlags::GROW
        | rustix::fs::SealFlags::SHRINK
        | rustix::fs::SealFlags::SEAL;
    match rustix::fs::fcntl_get_seals(file) {
        Ok(seals) if seals.contains(wanted) => Ok(Some(Seal::SealedMemfd)),
        _ => Ok(None),
    }
}

/// Make sure this process runs from a copy of its binary that cannot be written:
/// returns when it does, otherwise re-executes itself (same pid, arguments and
/// environment) from such a copy and never returns. Call first thing in `main`, while
/// the process is single-threaded.
pub fn ensure_sealed() -> Result<Seal, SealError> {
    if let Some(seal) = current_seal()? {
        if std::env::var_os(GUARD).is_some() {
            // SAFETY: called first thing in main, before any thread exists, so nobody
            // reads the environment concurrently.
            unsafe { std::env::remove_var(GUARD) };
            name_after_argv0();
        }
        return Ok(seal);
    }
    if std::env::var_os(GUARD).is_some() {
        return Err(SealError::StillWritable);
    }
    // Non-dumpable while we are the host's binary: /proc/self/* is root's alone.
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) only changes a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let real = std::fs::read_link("/proc/self/exe").map_err(|e| SealError::Sys {
        what: "readlink /proc/self/exe".into(),
        source: rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
    })?;
    let copy = match overlay_copy(&real) {
        Ok(fd) => fd,
        Err(overlay) => memfd_copy().map_err(|memfd| SealError::NoWay {
            overlay: overlay.to_string(),
            memfd: memfd.to_string(),
        })?,
    };
    exec_self(&copy)
}

/// The binary, opened through a private, detached, read-only overlayfs mount whose
/// top layer is the binary's directory.
fn overlay_copy(real: &Path) -> Result<OwnedFd, SealError> {
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};
    let dir = real.parent().unwrap_or(Path::new("/"));
    let name = real
        .file_name()
        .ok_or_else(|| sys("binary name")(rustix::io::Errno::INVAL))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(EMPTY_LOWER)
        .map_err(|e| SealError::Sys {
            what: format!("mkdir {EMPTY_LOWER}"),
            source: rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
        })?;
    let ctx = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(sys("fsopen overlay"))?;
    let mut lower = escape_lowerdir(dir.as_os_str().as_bytes());
    lower.push(b':');
    lower.extend(escape_lowerdir(EMPTY_LOWER.as_bytes()));
    let lower = CString::new(lower).map_err(|_| sys("lowerdir")(rustix::io::Errno::INVAL))?;
    rustix::mount::fsconfig_set_string(&ctx, "lowerdir", lower.as_c_str())
        .map_err(sys(format!("overlay lowerdir={}", lower.to_string_lossy())))?;
    // Not needed, and left on it logs a warning when the layers are on two filesystems.
    let _ = rustix::mount::fsconfig_set_string(&ctx, "xino", "off");
    rustix::mount::fsconfig_create(&ctx).map_err(sys("create overlay"))?;
    let mnt = rustix::mount::fsmount(
        &ctx,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOSUID,
    )
    .map_err(sys("fsmount overlay"))?;
    rustix::fs::openat(
        &mnt,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys(format!(
        "open {} in the overlay",
        name.to_string_lossy()
    )))
}

/// overlayfs separates layers with ':' and escapes with '\'.
fn escape_lowerdir(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for &b in path {
        if b == b'\\' || b == b':' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// The name of the sealed memfd copy.
const MEMFD_NAME: &str = "berth-exe";
/// How `/proc/<pid>/exe` of a process running from the memfd copy begins (what
/// berthd's recovery recognises a sealed monitor by).
pub const MEMFD_LINK_PREFIX: &[u8] = b"/memfd:berth-exe";

/// A sealed in-memory copy of the binary (costs its size in memory per process).
fn memfd_copy() -> Result<OwnedFd, SealError> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    // MFD_EXEC (Linux 6.3) says so explicitly where vm.memfd_noexec asks for it.
    let memfd = rustix::fs::memfd_create(MEMFD_NAME, flags | MemfdFlags::EXEC)
        .or_else(|_| rustix::fs::memfd_create(MEMFD_NAME, flags))
        .map_err(sys("memfd_create"))?;
    let mut src = std::fs::File::open("/proc/self/exe").map_err(SealError::Copy)?;
    let mut dst = std::fs::File::from(memfd);
    std::io::copy(&mut src, &mut dst).map_err(SealError::Copy)?;
    let memfd = OwnedFd::from(dst);
    rustix::fs::fcntl_add_seals(
        &memfd,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )
    .map_err(sys("seal the memfd"))?;
    Ok(memfd)
}

/// execveat(fd, "", argv, envp, AT_EMPTY_PATH) with our own arguments and environment
/// plus the loop guard.
fn exec_self(fd: &OwnedFd) -> Result<Seal, SealError> {
    let cstr = |s: OsString| CString::new(s.into_vec()).ok();
    let args: Vec<CString> = std::env::args_os().filter_map(cstr).collect();
    let mut env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            cstr(kv)
        })
        .collect();
    env.extend(cstr(OsString::from(format!("{GUARD}=1"))));
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: argv and envp are NUL-terminated arrays of pointers to NUL-terminated
    // strings that outlive the call; the path is the empty C string with AT_EMPTY_PATH.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd.as_fd().as_raw_fd(),
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Err(sys("execveat the sealed copy")(
        rustix::io::Errno::from_raw_os_error(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        ),
    ))
}

/// execveat(AT_EMPTY_PATH) names the process after the fd number: give it back its
/// name (ps, pgrep and the zombie checks read it).
fn name_after_argv0() {
    let Some(arg0) = std::env::args_os().next() else {
        return;
    };
    let base = PathBuf::from(arg0);
    let Some(name) = base.file_name() else {
        return;
    };
    let mut bytes = name.as_bytes().to_vec();
    bytes.truncate(15);
    if let Ok(c) = CString::new(bytes) {
        // SAFETY: PR_SET_NAME reads at most 16 bytes of a NUL-terminated string we own.
        unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr(), 0, 0, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowerdir_separators_are_escaped() {
        assert_eq!(escape_lowerdir(b"/a:b\\c"), b"/a\\:b\\\\c".to_vec());
        assert_eq!(escape_lowerdir(b"/usr/bin"), b"/usr/bin".to_vec());
    }

    /// The memfd copy is what a host without usable overlayfs gets: it must refuse
    /// every write, whatever the opener's rights.
    #[test]
    fn the_memfd_copy_refuses_writes_and_is_recognised_as_sealed() {
        let fd = memfd_copy().expect("memfd copy");
        assert_eq!(seal_of(&fd).unwrap(), Some(Seal::SealedMemfd));
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"))
            .expect_err("a sealed memfd took a write");
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, std::fs::metadata("/proc/self/exe").unwrap().len());
    }
}
