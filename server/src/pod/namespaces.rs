//! A pod's network, IPC and UTS namespaces, created and pinned by bind mounts so they
//! outlive any process (and berthd itself), plus the sysctls and hostname set inside.
//!
//! Creation happens on a short-lived dedicated OS thread: `unshare(2)` of the net, IPC
//! and UTS namespaces is per-thread and allowed in a multi-threaded process, the thread
//! writes the namespaced sysctls and the hostname from inside, bind-mounts its
//! `/proc/thread-self/ns/*` files onto the pin files, and exits. No process is forked
//! from berthd's runtime, and no tokio worker ever changes namespace.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Which namespaces a pod gets of its own (the others are the host's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NamespaceSet {
    /// A private network namespace (not hostNetwork).
    pub net: bool,
    /// A private IPC namespace (not hostIPC).
    pub ipc: bool,
    /// A private UTS namespace (always, except with hostNetwork as kubelet expects).
    pub uts: bool,
}

/// Pin files of the namespaces that were created.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinnedNamespaces {
    /// Network namespace pin.
    pub net: Option<PathBuf>,
    /// IPC namespace pin.
    pub ipc: Option<PathBuf>,
    /// UTS namespace pin.
    pub uts: Option<PathBuf>,
}

impl PinnedNamespaces {
    /// All pins, for cleanup.
    pub fn all(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.net, &self.ipc, &self.uts].into_iter().flatten()
    }
}

/// Why namespaces could not be set up; names the step.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// A syscall or file operation failed.
    #[error("{step}: {source}")]
    Io {
        /// What was being done.
        step: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A sysctl is not allowed for this pod.
    #[error("{0}")]
    Sysctl(String),
}

fn io_err(step: impl Into<String>) -> impl FnOnce(io::Error) -> NamespaceError {
    let step = step.into();
    move |source| NamespaceError::Io { step, source }
}

/// The namespace a sysctl lives in, or an error for sysctls a pod may not set.
pub fn sysctl_namespace(name: &str) -> Result<&'static str, NamespaceError> {
    let ipc = [
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shmall",
        "kernel.shm_rmid_forced",
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
    ];
    if ipc.contains(&name) || name.starts_with("fs.mqueue.") {
        Ok("ipc")
    } else if name.starts_with("net.") {
        Ok("net")
    } else if name == "kernel.hostname" || name == "kernel.domainname" {
        Ok("uts")
    } else {
        Err(NamespaceError::Sysctl(format!(
            "sysctl {name:?} is not namespaced: a pod may only set net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.*"
        )))
    }
}

/// Creates the namespaces of `set` in `dir` (files `net`, `ipc`, `uts`), sets
/// `hostname` in the UTS namespace and `sysctls` in the namespaces they belong to.
/// On failure nothing stays pinned.
pub fn create_and_pin(
    dir: &Path,
    set: NamespaceSet,
    hostname: &str,
    sysctls: &[(String, String)],
) -> Result<PinnedNamespaces, NamespaceError> {
    for (name, _) in sysctls {
        let ns = sysctl_namespace(name)?;
        let private = match ns {
            "net" => set.net,
            "ipc" => set.ipc,
            _ => set.uts,
        };
        if !private {
            return Err(NamespaceError::Sysctl(format!(
                "sysctl {name:?} needs the pod's own {ns} namespace, but the pod uses the host's"
            )));
        }
    }
    if !(set.net || set.ipc || set.uts) {
        return Ok(PinnedNamespaces::default());
    }
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    ensure_shared_mount(dir.parent().unwrap_or(dir))?;

    let dir = dir.to_path_buf();
    let hostname = hostname.to_owned();
    let sysctls = sysctls.to_vec();
    std::thread::Builder::new()
        .name("berth-netns".into())
        .spawn(move || pin_on_this_thread(&dir, set, &hostname, &sysctls))
        .map_err(io_err("starting the namespace thread"))?
        .join()
        .map_err(|_| NamespaceError::Io {
            step: "namespace thread".into(),
            source: io::Error::other("panicked"),
        })?
}

fn pin_on_this_thread(
    dir: &Path,
    set: NamespaceSet,
    hostname: &str,
    sysctls: &[(String, String)],
) -> Result<PinnedNamespaces, NamespaceError> {
    let mut flags = 0;
    if set.net {
        flags |= libc::CLONE_NEWNET;
    }
    if set.ipc {
        flags |= libc::CLONE_NEWIPC;
    }
    if set.uts {
        flags |= libc::CLONE_NEWUTS;
    }
    // SAFETY: unshare(2) with only NEWNET/NEWIPC/NEWUTS affects this thread alone
    // (it exits right after); no memory is involved.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(io_err("unshare(net, ipc, uts)")(io::Error::last_os_error()));
    }
    let mut pinned = PinnedNamespaces::default();
    let result = (|| {
        if set.uts && !hostname.is_empty() {
            // SAFETY: the pointer and length describe `hostname`'s bytes, alive for the call.
            let rc = unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
            if rc != 0 {
                return Err(io_err(format!("sethostname({hostname:?})"))(
                    io::Error::last_os_error(),
                ));
            }
        }
        if set.net {
            bring_up_loopback()?;
        }
        for (name, value) in sysctls {
            let path = PathBuf::from("/proc/sys").join(name.replace('.', "/"));
            std::fs::write(&path, value)
                .map_err(io_err(format!("setting sysctl {name}={value}")))?;
        }
        for (kind, wanted, slot) in [
            ("net", set.net, &mut pinned.net),
            ("ipc", set.ipc, &mut pinned.ipc),
            ("uts", set.uts, &mut pinned.uts),
        ] {
            if !wanted {
                continue;
            }
            let target = dir.join(kind);
            std::fs::File::create(&target)
                .map_err(io_err(format!("creating {}", target.display())))?;
            bind_mount(Path::new(&format!("/proc/thread-self/ns/{kind}")), &target).map_err(
                io_err(format!(
                    "pinning the {kind} namespace at {}",
                    target.display()
                )),
            )?;
            *slot = Some(target);
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(pinned),
        Err(e) => {
            unpin(&pinned);
            Err(e)
        }
    }
}

/// Brings `lo` up inside the thread's network namespace (CNI's loopback plugin is not
/// always in the chain, and pods expect 127.0.0.1 to work).
fn bring_up_loopback() -> Result<(), NamespaceError> {
    // SAFETY: socket(2) has no memory preconditions; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io_err("socket for loopback")(io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = libc::c_char::try_from(*src).unwrap_or(0);
    }
    // SAFETY: `req` is a valid ifreq naming "lo" and outlives both ioctls; `fd` is open.
    let rc = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 {
            req.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req)
        } else {
            -1
        }
    };
    let err = io::Error::last_os_error();
    // SAFETY: `fd` was opened above and is not used afterwards.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(io_err("bringing up lo")(err));
    }
    Ok(())
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn bind_mount(src: &Path, dst: &Path) -> io::Result<()> {
    let (src, dst) = (cstr(src)?, cstr(dst)?);
    // SAFETY: both arguments are valid NUL-terminated paths alive for the call; the
    // other pointers are null as mount(2) allows for MS_BIND.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches a mount; a path that is not mounted (or gone) is fine.
pub fn unmount(path: &Path) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: `c` is a valid NUL-terminated path alive for the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) {
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts and removes every pin; errors are logged, the rest still proceeds.
pub fn unpin(pinned: &PinnedNamespaces) {
    for p in pinned.all() {
        if let Err(e) = unmount(p) {
            tracing::warn!(pin = %p.display(), error = %e, "could not unpin namespace");
        }
        let _ = std::fs::remove_file(p);
    }
}

/// Makes `dir` a shared mount point (bind on itself, as `ip netns` does), so that
/// unpinning propagates to mount namespaces copied from the host while a pin existed
/// and a namespace is never kept alive by a stale copy of its pin.
fn ensure_shared_mount(dir: &Path) -> Result<(), NamespaceError> {
    let canonical =
        std::fs::canonicalize(dir).map_err(io_err(format!("resolving {}", dir.display())))?;
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(io_err("reading mountinfo"))?;
    let is_shared_mountpoint = mountinfo.lines().any(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        fields
            .get(4)
            .map(|m| Path::new(m) == canonical)
            .unwrap_or(false)
            && fields
                .iter()
                .skip(6)
                .take_while(|f| **f != "-")
                .any(|f| f.starts_with("shared:"))
    });
    if is_shared_mountpoint {
        return Ok(());
    }
    let c = cstr(&canonical).map_err(io_err("pin dir path"))?;
    bind_mount(&canonical, &canonical).map_err(io_err(format!(
        "bind-mounting {} on itself",
        canonical.display()
    )))?;
    // SAFETY: `c` is a valid path; MS_SHARED changes propagation only.
    if unsafe {
        libc::mount(
            std::ptr::null(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(io_err(format!("making {} shared", canonical.display()))(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_map_to_their_namespace() {
        assert_eq!(sysctl_namespace("net.ipv4.ip_forward").expect("net"), "net");
        assert_eq!(
            sysctl_namespace("kernel.shm_rmid_forced").expect("ipc"),
            "ipc"
        );
        assert_eq!(sysctl_namespace("fs.mqueue.msg_max").expect("ipc"), "ipc");
        let e = sysctl_namespace("kernel.panic").expect_err("host-wide");
        assert!(e.to_string().contains("kernel.panic"), "{e}");
    }

    #[test]
    fn host_network_pods_cannot_set_net_sysctls() {
        let d = tempfile::tempdir().expect("tempdir");
        let err = create_and_pin(
            &d.path().join("ns"),
            NamespaceSet {
                net: false,
                ipc: true,
                uts: true,
            },
            "h",
            &[("net.ipv4.ip_forward".into(), "1".into())],
        )
        .expect_err("must be refused");
        assert!(err.to_string().contains("host's"), "{err}");
    }
}
