//! Parent ↔ child messages over a SOCK_SEQPACKET socketpair: one JSON message per
//! packet, so a child's failure reaches the parent as a typed error, and a dead child
//! shows up as end-of-file instead of a hang.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

/// A failure inside a child process, reported to the parent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("container init failed at {step}: {message} ({})", errno_name(*.errno))]
pub struct ChildError {
    /// The set-up step that failed ("mount", "pivot_root", "exec", ...).
    pub step: String,
    /// The raw errno.
    pub errno: i32,
    /// Details (paths, values).
    pub message: String,
}

impl ChildError {
    /// The failure comes from what the pod spec or the image asked for (a working
    /// directory or an executable that cannot be used, a mount or device the rootfs
    /// set-up refuses), not from Berth or the host.
    pub fn is_caused_by_spec(&self) -> bool {
        matches!(
            self.step.as_str(),
            "working directory" | "find executable" | ROOTFS_SPEC_STEP
        )
    }
}

/// The step of a rootfs failure caused by the spec or the image (a mount destination
/// in /proc, directly or through the image's symlinks; a symlink loop), as opposed to
/// "rootfs", a kernel or I/O failure.
pub const ROOTFS_SPEC_STEP: &str = "rootfs (refused by the spec checks)";

/// The symbolic name of an errno ("ENOENT"), which says more to a reader than "2".
pub fn errno_name(errno: i32) -> String {
    match Errno::from_raw(errno) {
        Errno::UnknownErrno => format!("errno {errno}"),
        e => format!("{e:?}"),
    }
}

/// What travels over the channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Message {
    /// Parent → child: go on (cgroup joined, id maps written).
    Proceed,
    /// Child → parent: a new user namespace exists, please write uid/gid maps.
    WriteIdMappings,
    /// Child → parent: the container init's pid (in the parent's pid namespace).
    InitPid(i32),
    /// Child → parent: set-up is complete; init waits for start (or execs now).
    Ready,
    /// Child → parent: mounts are done, run the createRuntime/prestart hooks now
    /// (before pivot_root).
    RunHooks,
    /// Parent → child: hooks ran; the OCI state (JSON) for the container's own hooks.
    HooksDone(String),
    /// Child → parent: set-up failed.
    Failed(ChildError),
}

/// Channel failures.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("socketpair: {0}")]
    Socketpair(#[source] Errno),
    #[error("send on channel: {0}")]
    Send(#[source] Errno),
    #[error("receive on channel: {0}")]
    Recv(#[source] Errno),
    #[error("decode channel message: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("no message from child within {0:?}")]
    Timeout(Duration),
}

/// One end of the socketpair.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

const MAX_MESSAGE: usize = 64 * 1024;

/// A connected pair (parent end, child end), both close-on-exec.
pub fn pair() -> Result<(Channel, Channel), ChannelError> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(ChannelError::Socketpair)?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl Channel {
    /// Send one message.
    pub fn send(&self, msg: &Message) -> Result<(), ChannelError> {
        // Serialising these plain enums cannot fail; fall back to an empty packet.
        let bytes = serde_json::to_vec(msg).unwrap_or_default();
        // SAFETY: the pointer/length describe `bytes`, alive for the call.
        let rc = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        Errno::result(rc).map(drop).map_err(ChannelError::Send)
    }

    /// Receive one message; `None` when the other side is gone (every copy closed).
    pub fn recv(&self, timeout: Duration) -> Result<Option<Message>, ChannelError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
            let mut pfd = [nix::poll::PollFd::new(
                self.fd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(
                &mut pfd,
                nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX),
            ) {
                Ok(0) => return Err(ChannelError::Timeout(timeout)),
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(ChannelError::Recv(e)),
            }
        }
        let mut buf = vec![0u8; MAX_MESSAGE];
        let n = loop {
            // SAFETY: the pointer/length describe `buf`, alive for the call.
            let rc =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            match Errno::result(rc) {
                Ok(n) => break usize::try_from(n).unwrap_or(0),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(ChannelError::Recv(e)),
            }
        };
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_slice(&buf[..n])
            .map(Some)
            .map_err(ChannelError::Decode)
    }

    /// The raw descriptor (to keep it across a fork).
    pub fn as_raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_eof_is_none() {
        let (a, b) = pair().unwrap();
        let err = ChildError {
            step: "pivot_root".into(),
            errno: libc::EINVAL,
            message: "/x".into(),
        };
        b.send(&Message::Failed(err.clone())).unwrap();
        b.send(&Message::InitPid(42)).unwrap();
        assert_eq!(
            a.recv(Duration::from_secs(1)).unwrap(),
            Some(Message::Failed(err))
        );
        assert_eq!(
            a.recv(Duration::from_secs(1)).unwrap(),
            Some(Message::InitPid(42))
        );
        drop(b);
        assert_eq!(a.recv(Duration::from_secs(1)).unwrap(), None);
    }

    #[test]
    fn child_errors_name_the_errno_and_know_the_spec_steps() {
        let err = ChildError {
            step: "working directory".into(),
            errno: libc::ENOTDIR,
            message: "/proc/self/fd/7".into(),
        };
        assert_eq!(
            err.to_string(),
            "container init failed at working directory: /proc/self/fd/7 (ENOTDIR)"
        );
        assert!(err.is_caused_by_spec());
        assert_eq!(errno_name(libc::ELOOP), "ELOOP");
        assert_eq!(errno_name(99_999), "errno 99999");
        let mount = ChildError {
            step: "rootfs".into(),
            ..err.clone()
        };
        assert!(!mount.is_caused_by_spec());
        let refused = ChildError {
            step: ROOTFS_SPEC_STEP.into(),
            ..err
        };
        assert!(refused.is_caused_by_spec());
    }

    #[test]
    fn silent_peer_times_out_instead_of_hanging() {
        let (a, _b) = pair().unwrap();
        assert!(matches!(
            a.recv(Duration::from_millis(50)),
            Err(ChannelError::Timeout(_))
        ));
    }
}
