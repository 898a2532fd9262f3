//! The init's stdio: pipes or a console (pty) whose master goes back over a socket,
//! and closing every other descriptor.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use super::{ProcessError, Stdio, child_err};
use crate::channel::ChildError;
use crate::sys::Errno;

pub(super) fn dup_stdio(stdio: &Stdio) -> Result<(), ChildError> {
    let Some(fds) = &stdio.fds else {
        return Ok(());
    };
    // First copy every source above 2: a source numbered 0..2 would otherwise be
    // overwritten before its turn, and dup2 onto itself would keep FD_CLOEXEC.
    let mut high = [0; 3];
    for (slot, fd) in high.iter_mut().zip(fds.iter()) {
        // SAFETY: F_DUPFD_CLOEXEC duplicates an open fd to a free number ≥ 3.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
        *slot = Errno::result(rc).map_err(|e| child_err("set up stdio", e as i32, "dup"))?;
    }
    for (target, src) in (0..3).zip(high) {
        // SAFETY: dup2 of an fd we just created onto 0..2 of this (child) process; the
        // new descriptor does not inherit FD_CLOEXEC.
        let rc = unsafe { libc::dup2(src, target) };
        Errno::result(rc)
            .map_err(|e| child_err("set up stdio", e as i32, format!("fd {target}")))?;
        // SAFETY: closing the temporary copy, owned by nobody else.
        unsafe { libc::close(src) };
    }
    Ok(())
}

/// Open a pty inside the container, make it our controlling terminal and stdio, and
/// send the master to the console socket.
pub(super) fn setup_console(socket: BorrowedFd<'_>) -> Result<(), ChildError> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| child_err("open pty master", e as i32, ""))?;
    nix::pty::grantpt(&master).map_err(|e| child_err("grantpt", e as i32, ""))?;
    nix::pty::unlockpt(&master).map_err(|e| child_err("unlockpt", e as i32, ""))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| child_err("ptsname", e as i32, ""))?;
    let slave = nix::fcntl::open(
        Path::new(&name),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| child_err("open pty slave", e as i32, name.clone()))?;
    nix::unistd::setsid().map_err(|e| child_err("setsid", e as i32, ""))?;
    // SAFETY: TIOCSCTTY on an open terminal fd with argument 0.
    let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
    Errno::result(rc).map_err(|e| child_err("set controlling terminal", e as i32, ""))?;
    for target in 0..3 {
        // SAFETY: dup2 of an open fd onto 0..2 of this child.
        let rc = unsafe { libc::dup2(slave.as_raw_fd(), target) };
        Errno::result(rc).map_err(|e| child_err("dup pty slave", e as i32, ""))?;
    }
    let fds = [master.as_raw_fd()];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(b"console")];
    nix::sys::socket::sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(|e| child_err("send pty master to console socket", e as i32, ""))?;
    Ok(())
}

/// Close every fd from `from` on except those in `keep`: the init must not hold the
/// caller's descriptors (a caller's sync pipe would otherwise stay open until exec).
pub(super) fn close_fds_except(from: u32, keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|k| u32::try_from(*k).ok())
        .filter(|k| *k >= from)
        .collect();
    keep.sort_unstable();
    let mut start = from;
    for k in keep.into_iter().chain(std::iter::once(u32::MAX)) {
        if k > start {
            // SAFETY: closes descriptors this process does not use (everything it still
            // needs is in `keep`); the owners of those numbers never run again here.
            let _ = unsafe { libc::syscall(libc::SYS_close_range, start, k - 1, 0u32) };
        }
        start = k.saturating_add(1);
    }
}

/// A connected pair of close-on-exec stream sockets for a console: keep the first end
/// (the pty master arrives on it, see [`recv_pty_master`]) and pass the second as
/// [`Stdio::console_socket`].
pub fn console_socketpair() -> Result<(OwnedFd, OwnedFd), Errno> {
    nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
}

/// Receive the pty master a container's init sends over a console socket (the other
/// end of the socket passed as [`Stdio::console_socket`]).
pub fn recv_pty_master(sock: &OwnedFd, timeout: Duration) -> Result<OwnedFd, ProcessError> {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut pfd = [nix::poll::PollFd::new(
        sock.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms)) {
        Ok(0) => {
            return Err(ProcessError::Console(format!(
                "no pty master within {timeout:?}"
            )));
        }
        Ok(_) => {}
        Err(e) => return Err(ProcessError::Console(format!("poll: {e}"))),
    }
    let mut buf = [0u8; 64];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = nix::sys::socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| ProcessError::Console(format!("recvmsg: {e}")))?;
    let cmsgs = msg
        .cmsgs()
        .map_err(|e| ProcessError::Console(format!("control message: {e}")))?;
    for c in cmsgs {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c
            && let Some(fd) = fds.first()
        {
            // SAFETY: the fd was just received via SCM_RIGHTS and belongs to us alone.
            return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    Err(ProcessError::Console("message carried no fd".into()))
}

/// Mark every fd from `from` on close-on-exec.
pub(super) fn cloexec_from(from: u32) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags; it cannot
    // invalidate a descriptor this process is still using.
    let _ = unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 4u32) };
}
