//! The running monitor: it pumps the container's output into the CRI log and to
//! attach clients, feeds their input to the container, answers the control socket
//! and reaps orphans until the init exits.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_runtime_core::monitor_protocol::{
    self as protocol, ControlReply, ControlRequest, attach,
};
use berth_runtime_core::pid::Pid;

use crate::Res;
use crate::crilog::{CriLog, Stream};

pub(crate) fn pipe_cloexec() -> Res<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

pub(crate) fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd we own; only the O_NONBLOCK status flag changes.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// One attached client.
#[derive(Debug)]
pub(crate) struct Client {
    sock: UnixStream,
    buf: Vec<u8>,
}

pub(crate) struct Monitor {
    pub(crate) log: CriLog,
    /// Output sources: fd → stream.
    pub(crate) outputs: Vec<(OwnedFd, Stream)>,
    pub(crate) stdin: Option<OwnedFd>,
    pub(crate) pty: Option<RawFd>,
    pub(crate) clients: HashMap<RawFd, Client>,
}

impl Monitor {
    /// Read what is available on one output; false at end-of-file.
    fn pump(&mut self, idx: usize) -> bool {
        let mut buf = [0u8; 32 * 1024];
        let (fd, stream) = (&self.outputs[idx].0, self.outputs[idx].1);
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => false,
            Ok(n) => {
                let chunk = &buf[..n];
                let _ = self.log.write_chunk(stream, chunk);
                let kind = match stream {
                    Stream::Stdout => attach::STDOUT,
                    Stream::Stderr => attach::STDERR,
                };
                let f = attach::encode(kind, chunk);
                self.clients.retain(|_, c| c.sock.write_all(&f).is_ok());
                true
            }
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => true,
            // EIO: the pty's last slave fd closed.
            Err(_) => false,
        }
    }

    /// Handle bytes from an attach client; false when it is gone.
    fn client_input(&mut self, fd: RawFd) -> bool {
        let Some(c) = self.clients.get_mut(&fd) else {
            return false;
        };
        let mut tmp = [0u8; 16 * 1024];
        match c.sock.read(&mut tmp) {
            Ok(0) | Err(_) => return false,
            Ok(n) => c.buf.extend_from_slice(&tmp[..n]),
        }
        // A frame over the limit: a broken client, dropped rather than buffered.
        let Ok(frames) = attach::split_frames(&mut c.buf) else {
            return false;
        };
        for frame in frames
            .into_iter()
            .filter_map(|(kind, payload)| attach::ClientFrame::from_parts(kind, payload))
        {
            match frame {
                attach::ClientFrame::Stdin(payload) => {
                    let target = self.pty.or(self.stdin.as_ref().map(AsRawFd::as_raw_fd));
                    if let Some(t) = target {
                        // SAFETY: writing a buffer we own to an fd held by this monitor.
                        unsafe { libc::write(t, payload.as_ptr().cast(), payload.len()) };
                    }
                }
                attach::ClientFrame::Resize { rows, cols } => {
                    if let Some(p) = self.pty {
                        let ws = libc::winsize {
                            ws_row: rows,
                            ws_col: cols,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        // SAFETY: TIOCSWINSZ with a valid winsize on the pty master.
                        unsafe { libc::ioctl(p, libc::TIOCSWINSZ, &ws) };
                    }
                }
                attach::ClientFrame::CloseStdin => self.stdin = None,
            }
        }
        true
    }

    /// Serves until the init (`pidfd`) exits: output, attach clients, control
    /// requests and orphans of the container's subtree.
    pub(crate) fn serve(
        &mut self,
        pidfd: &OwnedFd,
        sockets: &Sockets,
        sigchld: &nix::sys::signalfd::SignalFd,
        init: i32,
    ) -> Res<rustix::process::WaitIdStatus> {
        loop {
            let mut fds: Vec<libc::pollfd> = Vec::new();
            let pfd = |fd: RawFd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            fds.push(pfd(pidfd.as_raw_fd()));
            fds.push(pfd(sockets.attach.as_raw_fd()));
            fds.push(pfd(sockets.ctl.as_raw_fd()));
            fds.push(pfd(sigchld.as_fd().as_raw_fd()));
            for (fd, _) in &self.outputs {
                fds.push(pfd(fd.as_raw_fd()));
            }
            let client_fds: Vec<RawFd> = self.clients.keys().copied().collect();
            for fd in &client_fds {
                fds.push(pfd(*fd));
            }
            // SAFETY: `fds` is a valid array of pollfd of the given length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                continue; // EINTR
            }
            let ready = |i: usize| fds[i].revents != 0;
            let n_out = self.outputs.len();
            let mut closed = Vec::new();
            for i in 0..n_out {
                if ready(4 + i) && !self.pump(i) {
                    closed.push(i);
                }
            }
            for i in closed.into_iter().rev() {
                self.outputs.remove(i);
            }
            for (k, fd) in client_fds.iter().enumerate() {
                if ready(4 + n_out + k) && !self.client_input(*fd) {
                    self.clients.remove(fd);
                }
            }
            if ready(1) {
                self.accept_attach(&sockets.attach);
            }
            if ready(2) {
                self.answer_control(&sockets.ctl);
            }
            if ready(3) {
                while let Ok(Some(_)) = sigchld.read_signal() {}
                reap_orphans(init);
            }
            if ready(0) {
                match rustix::process::waitid(
                    rustix::process::WaitId::PidFd(pidfd.as_fd()),
                    rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
                ) {
                    Ok(Some(st)) => return Ok(st),
                    Ok(None) => {}
                    Err(e) => return Err(format!("waitid on the init's pidfd: {e}").into()),
                }
            }
        }
    }

    /// A new attach client.
    fn accept_attach(&mut self, attach: &UnixListener) {
        if let Ok((sock, _)) = attach.accept() {
            let _ = sock.set_nonblocking(false);
            let _ = sock.set_write_timeout(Some(Duration::from_secs(5)));
            self.clients.insert(
                sock.as_raw_fd(),
                Client {
                    sock,
                    buf: Vec::new(),
                },
            );
        }
    }

    /// One request on the control socket (log reopen), answered on the same socket.
    fn answer_control(&mut self, ctl: &UnixListener) {
        if let Ok((mut sock, _)) = ctl.accept() {
            let _ = sock.set_nonblocking(false);
            let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
            let mut line = [0u8; protocol::CONTROL_REQUEST_MAX];
            let n = sock.read(&mut line).unwrap_or(0);
            let reply = match ControlRequest::decode(&line[..n]) {
                Some(ControlRequest::ReopenLog) => match self.log.reopen() {
                    Ok(()) => ControlReply::Ok,
                    Err(e) => ControlReply::Error(e.to_string()),
                },
                None => ControlReply::Error("unknown command".into()),
            };
            let _ = sock.write_all(reply.encode().as_bytes());
        }
    }

    /// Drains what the container wrote before it died (non-blocking: a process that
    /// escaped the container could hold the pipe open forever).
    pub(crate) fn drain(&mut self) {
        for i in 0..self.outputs.len() {
            loop {
                let fd = self.outputs[i].0.as_raw_fd();
                let mut p = [libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                }];
                // SAFETY: one valid pollfd, zero timeout.
                let r = unsafe { libc::poll(p.as_mut_ptr(), 1, 0) };
                if r <= 0 || p[0].revents == 0 || !self.pump(i) {
                    break;
                }
            }
        }
    }
}

pub(crate) fn detach_stdio() {
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: replacing our own standard fds with /dev/null.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// As subreaper we inherit orphans of the container's processes (when it has no pid
/// namespace of its own). Reap exactly those children, never the init (its pidfd
/// reports its exit) — no blanket waitpid(-1).
fn reap_orphans(init: i32) {
    let me = std::process::id();
    let Ok(text) = fs::read_to_string(format!("/proc/{me}/task/{me}/children")) else {
        return;
    };
    for child in text
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter_map(Pid::new)
    {
        if child.get() != init {
            let _ = child.wait(Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        }
    }
}

/// The attach and control sockets in the container's directory.
pub(crate) struct Sockets {
    attach: UnixListener,
    ctl: UnixListener,
    attach_path: PathBuf,
    ctl_path: PathBuf,
}

impl Sockets {
    /// Binds both, mode 0600, non-blocking.
    pub(crate) fn bind(dir: &Path) -> Res<Self> {
        let attach_path = dir.join(protocol::ATTACH_SOCKET);
        let ctl_path = dir.join(protocol::CONTROL_SOCKET);
        // Only berthd (root) talks to these: whoever can connect to attach.sock types into
        // the container's stdin. Made 0600 whatever umask berthd was started with (bind
        // takes the socket's mode from the umask; a chmod after it would leave a window).
        let old_umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound =
            UnixListener::bind(&attach_path).and_then(|a| Ok((a, UnixListener::bind(&ctl_path)?)));
        nix::sys::stat::umask(old_umask);
        let (attach, ctl) = bound?;
        attach.set_nonblocking(true)?;
        ctl.set_nonblocking(true)?;
        Ok(Self {
            attach,
            ctl,
            attach_path,
            ctl_path,
        })
    }

    /// Removes the socket files (the init has exited).
    pub(crate) fn remove(self) {
        let _ = fs::remove_file(&self.attach_path);
        let _ = fs::remove_file(&self.ctl_path);
    }
}
