//! berthd's backend for the streaming server (`berth-stream`): exec through
//! `berth-runtime exec` (pipes, or a pty whose master comes back over a console
//! socket), attach through the container monitor's attach socket, and port-forward
//! connections dialled from inside the pod's network namespace.
//!
//! berthd never forks into a container itself: it is multi-threaded, and joining a
//! container's namespaces is done by the single-threaded `berth-runtime`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use berth_runtime_core::monitor_protocol::{self as protocol, attach, attach::ClientFrame};
use berth_stream::{
    AttachRequest, BackendError, ClientOutput, Connection, ExecRequest, ResizeEvents,
    StreamBackend, StreamIo, TerminalSize,
};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::container::{ContainerManager, Phase};
use crate::pod::PodManager;

/// How long berth-runtime gets to hand over the pty master.
const CONSOLE_WAIT: Duration = Duration::from_secs(10);
/// After the exec'd process exits, how long its output may still drain (a daemon it
/// left behind could hold the pipe or terminal open forever).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// Connecting to a port inside a pod.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The [`StreamBackend`] of berthd: what streaming needs of the daemon (the
/// container manager, the pod manager for port-forward's netns, the state directory),
/// held weakly: the daemon's state owns the streaming server, which owns this backend.
#[derive(Debug)]
pub struct Backend {
    containers: Weak<ContainerManager>,
    pods: Weak<PodManager>,
    state_dir: PathBuf,
}

impl Backend {
    /// A backend over the daemon's container and pod managers.
    pub fn new(
        containers: Weak<ContainerManager>,
        pods: Weak<PodManager>,
        state_dir: PathBuf,
    ) -> Self {
        Self {
            containers,
            pods,
            state_dir,
        }
    }

    fn containers(&self) -> Result<Arc<ContainerManager>, BackendError> {
        self.containers
            .upgrade()
            .ok_or_else(|| BackendError::new("berthd is shutting down"))
    }

    fn pods(&self) -> Result<Arc<PodManager>, BackendError> {
        self.pods
            .upgrade()
            .ok_or_else(|| BackendError::new("berthd is shutting down"))
    }

    /// The running container `id`: the container manager, its full id and whether its
    /// stdin closes when the first attach ends (`stdin_once`).
    fn running(&self, id: &str) -> Result<(Arc<ContainerManager>, String, bool), BackendError> {
        let containers = self.containers()?;
        let ctr = containers
            .get(id)
            .map_err(|e| BackendError::new(e.to_string()))?;
        if ctr.state().phase != Phase::Running {
            return Err(BackendError::new(format!(
                "container {} is not running",
                ctr.id
            )));
        }
        let id = ctr.id.clone();
        let stdin_once = ctr.config.stdin_once;
        Ok((containers, id, stdin_once))
    }
}

impl StreamBackend for Backend {
    async fn exec(&self, req: ExecRequest, io: StreamIo) -> Result<i32, BackendError> {
        let (containers, id, _) = self.running(&req.container_id)?;
        // Under an OCI runtime (runc, crun) its own `exec`, which takes the command
        // right after the id; berth-runtime wants `--` before it.
        let (runtime, rt_root, argv) = match containers.oci_runtime(&id) {
            Some(rt) => (rt.path, rt.root, req.cmd.clone()),
            None => {
                let mut argv = vec!["--".to_owned()];
                argv.extend(req.cmd.iter().cloned());
                (helper("berth-runtime")?, containers.runtime_root(), argv)
            }
        };
        let state_dir = self.state_dir.clone();
        drop(containers);
        let target = ExecTarget {
            runtime: &runtime,
            rt_root: &rt_root,
            state_dir: &state_dir,
            id: &id,
            argv: &argv,
        };
        if req.tty {
            exec_tty(&target, io).await
        } else {
            exec_pipes(&target, io).await
        }
    }

    async fn attach(&self, req: AttachRequest, io: StreamIo) -> Result<(), BackendError> {
        let (containers, id, stdin_once) = self.running(&req.container_id)?;
        let sock = containers
            .runtime_root()
            .join(&id)
            .join(protocol::ATTACH_SOCKET);
        drop(containers);
        attach(&sock, &id, stdin_once, io).await
    }

    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
    ) -> Result<Box<dyn Connection>, BackendError> {
        let pods = self.pods()?;
        let sb = pods
            .get(pod_sandbox_id)
            .map_err(|e| BackendError::new(e.to_string()))?;
        if !sb.is_ready() {
            return Err(BackendError::new(format!(
                "pod sandbox {} is not ready",
                sb.id
            )));
        }
        let netns = sb.state().pins.net;
        drop(pods);
        let stream = connect_in_netns(netns, port).await?;
        Ok(Box::new(stream))
    }
}

/// A helper binary installed next to berthd.
fn helper(name: &str) -> Result<PathBuf, BackendError> {
    let exe = std::env::current_exe()
        .map_err(|e| BackendError::with_source("cannot locate berthd's executable", e))?;
    match exe.parent().map(|d| d.join(name)) {
        Some(p) if p.exists() => Ok(p),
        _ => Err(BackendError::new(format!(
            "{name} not found next to berthd ({})",
            exe.display()
        ))),
    }
}

/// A unique file name in `dir`: `<prefix>-<12 hex>.<ext>`.
fn unique_path(dir: &Path, prefix: &str, ext: &str) -> Result<PathBuf, BackendError> {
    let id = crate::store::new_id()
        .map_err(|e| BackendError::with_source("cannot generate an exec id", e))?;
    Ok(dir.join(format!("{prefix}-{}.{ext}", id.get(..12).unwrap_or("x"))))
}

/// Kills the exec'd process tree when dropped while armed: the client vanished, or
/// the exec failed half-way. berth-runtime (the process's parent) then reaps it and
/// exits; if berth-runtime never wrote the pid file, it is killed itself.
struct ExecGuard {
    pid_file: PathBuf,
    runtime_pid: Option<u32>,
    armed: bool,
}

/// What an exec runs (`argv` in container `id`) and through which OCI runtime.
struct ExecTarget<'a> {
    runtime: &'a Path,
    rt_root: &'a Path,
    state_dir: &'a Path,
    id: &'a str,
    argv: &'a [String],
}

impl ExecTarget<'_> {
    /// Starts `<runtime> --root <rt_root> exec --pid-file <new file> <mode's options>
    /// <id> <argv>`, `mode` adding the options and setting up stdio, with a guard armed
    /// over what it runs.
    fn spawn(
        &self,
        mode: impl FnOnce(&mut tokio::process::Command),
    ) -> Result<(tokio::process::Child, ExecGuard), BackendError> {
        let pid_file = unique_path(self.state_dir, "exec", "pid")?;
        let mut cmd = runtime_command(self.runtime, self.rt_root, &pid_file);
        mode(&mut cmd);
        cmd.arg(self.id).args(self.argv);
        let child = cmd.spawn().map_err(|e| {
            BackendError::with_source(format!("cannot start {}", self.runtime.display()), e)
        })?;
        let guard = ExecGuard {
            pid_file,
            runtime_pid: child.id(),
            armed: true,
        };
        Ok((child, guard))
    }
}

/// Waits for the exec'd process to end, then disarms its guard, stops what fed it
/// (stdin is abandoned once the process is gone) and drains its output.
async fn finish_exec(
    mut child: tokio::process::Child,
    mut guard: ExecGuard,
    background: AbortOnDrop,
    outputs: Vec<JoinHandle<()>>,
) -> Result<i32, BackendError> {
    let status = child
        .wait()
        .await
        .map_err(|e| BackendError::with_source("waiting for the exec'd process", e))?;
    guard.armed = false;
    drop(guard);
    drop(background);
    finish_output(outputs).await;
    Ok(exit_code(status))
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        if self.armed {
            match std::fs::read_to_string(&self.pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                Some(pid) => crate::host::procs::kill_tree(pid),
                None => {
                    if let Some(pid) = self.runtime_pid.and_then(|p| i32::try_from(p).ok()) {
                        crate::host::procs::kill_tree(pid);
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

fn runtime_command(runtime: &Path, rt_root: &Path, pid_file: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(runtime);
    cmd.arg("--root").arg(rt_root).arg("exec");
    cmd.arg("--pid-file").arg(pid_file);
    // Not kill_on_drop: berth-runtime must live to reap the process it ran (the
    // guard kills that one); tokio reaps berth-runtime itself.
    cmd
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// Copies `from` to `to` until EOF; `to` may be absent (output nobody asked for is
/// read and dropped so the process never blocks on a full pipe).
async fn pump_output(mut from: impl AsyncRead + Unpin, mut to: Option<ClientOutput>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(out) = to.as_mut()
            && (out.write_all(&buf[..n]).await.is_err() || out.flush().await.is_err())
        {
            // The client stopped reading: keep draining so the process can finish.
            to = None;
        }
    }
}

/// Waits for output copies to finish, for at most [`OUTPUT_DRAIN`].
async fn finish_output(tasks: Vec<JoinHandle<()>>) {
    let deadline = tokio::time::Instant::now() + OUTPUT_DRAIN;
    for mut t in tasks {
        if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
            t.abort();
        }
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

async fn exec_pipes(target: &ExecTarget<'_>, io: StreamIo) -> Result<i32, BackendError> {
    use std::process::Stdio;
    let stdin = io.stdin.is_some();
    let (mut child, guard) = target.spawn(|cmd| {
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    })?;
    let mut background = AbortOnDrop(Vec::new());
    if let (Some(mut from), Some(mut to)) = (io.stdin, child.stdin.take()) {
        background.0.push(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from, &mut to).await;
            // EOF from the client closes the process's stdin.
            let _ = to.shutdown().await;
        }));
    }
    let mut outputs = Vec::new();
    if let Some(out) = child.stdout.take() {
        outputs.push(tokio::spawn(pump_output(out, io.stdout)));
    }
    if let Some(err) = child.stderr.take() {
        outputs.push(tokio::spawn(pump_output(err, io.stderr)));
    }
    finish_exec(child, guard, background, outputs).await
}

async fn exec_tty(target: &ExecTarget<'_>, io: StreamIo) -> Result<i32, BackendError> {
    use std::process::Stdio;
    let id = target.id;
    let sock_path = unique_path(target.state_dir, "console", "sock")?;
    let listener = tokio::net::UnixListener::bind(&sock_path).map_err(|e| {
        BackendError::with_source(
            format!("cannot create console socket {}", sock_path.display()),
            e,
        )
    })?;
    let _sock_file = RemoveOnDrop(sock_path.clone());
    let (mut child, mut guard) = target.spawn(|cmd| {
        cmd.arg("--tty")
            .arg("--console-socket")
            .arg(&sock_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
    })?;
    let mut runtime_err = child.stderr.take();

    // berth-runtime connects, then the pty master arrives with SCM_RIGHTS. If it
    // fails first, its stderr says why.
    let accepted = tokio::select! {
        a = tokio::time::timeout(CONSOLE_WAIT, listener.accept()) => a,
        status = child.wait() => {
            let mut msg = String::new();
            if let Some(e) = runtime_err.as_mut() {
                let _ = e.read_to_string(&mut msg).await;
            }
            guard.armed = false;
            let code = status.map(exit_code).unwrap_or(255);
            return Err(BackendError::new(format!(
                "exec in container {id} failed (exit {code}): {}",
                msg.trim()
            )));
        }
    };
    let conn = match accepted {
        Ok(Ok((conn, _))) => conn,
        Ok(Err(e)) => return Err(BackendError::with_source("accepting the console socket", e)),
        Err(_) => {
            return Err(BackendError::new(
                "berth-runtime did not connect to the console socket",
            ));
        }
    };
    drop(listener);
    let conn = conn
        .into_std()
        .map_err(|e| BackendError::with_source("console socket", e))?;
    let master = tokio::task::spawn_blocking(move || recv_fd(conn))
        .await
        .map_err(|e| BackendError::new(format!("console socket task: {e}")))??;
    let master =
        Arc::new(PtyMaster::new(master).map_err(|e| BackendError::with_source("pty master", e))?);

    let mut background = AbortOnDrop(Vec::new());
    if let Some(mut stdin) = io.stdin {
        let m = Arc::clone(&master);
        background.0.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = stdin.read(&mut buf).await {
                if n == 0 || m.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }));
    }
    if let Some(mut resize) = io.resize {
        let m = Arc::clone(&master);
        background.0.push(tokio::spawn(async move {
            while let Some(size) = resize.next().await {
                m.resize(size);
            }
        }));
    }
    if let Some(mut e) = runtime_err.take() {
        // berth-runtime's own messages (the process writes to the terminal).
        background.0.push(tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = e.read_to_end(&mut sink).await;
            if !sink.is_empty() {
                tracing::debug!(message = %String::from_utf8_lossy(&sink).trim(), "berth-runtime exec");
            }
        }));
    }
    let output = {
        let m = Arc::clone(&master);
        let mut out = io.stdout;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            // EIO once the last slave fd closed.
            while let Ok(n) = m.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if let Some(o) = out.as_mut()
                    && (o.write_all(&buf[..n]).await.is_err() || o.flush().await.is_err())
                {
                    out = None;
                }
            }
        })
    };
    finish_exec(child, guard, background, vec![output]).await
}

/// Removes a file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Receives one fd sent with SCM_RIGHTS on `conn` (blocking, with a timeout).
fn recv_fd(conn: std::os::unix::net::UnixStream) -> Result<OwnedFd, BackendError> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::mem::MaybeUninit;
    conn.set_nonblocking(false)
        .and_then(|()| conn.set_read_timeout(Some(CONSOLE_WAIT)))
        .map_err(|e| BackendError::with_source("console socket", e))?;
    let mut data = [0u8; 256];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [std::io::IoSliceMut::new(&mut data)];
    rustix::net::recvmsg(&conn, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC).map_err(|e| {
        BackendError::with_source("receiving the pty master", std::io::Error::from(e))
    })?;
    for msg in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    Err(BackendError::new(
        "the console socket message carried no pty master",
    ))
}

/// The pty master of an exec, non-blocking and driven by tokio.
struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    fn new(fd: OwnedFd) -> std::io::Result<Self> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
        // SAFETY: an OwnedFd keeps its descriptor open, and returns that same
        // descriptor from as_raw_fd, until it is dropped with the AsyncFd.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref().as_fd(), &mut *buf)?)) {
                Ok(r) => return r,
                Err(_would_block) => {}
            }
        }
    }

    async fn write_all(&self, mut buf: &[u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            let mut ready = self.fd.writable().await?;
            match ready.try_io(|fd| Ok(rustix::io::write(fd.get_ref().as_fd(), buf)?)) {
                Ok(Ok(n)) => buf = &buf[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    fn resize(&self, size: TerminalSize) {
        let ws = rustix::termios::Winsize {
            ws_row: size.height,
            ws_col: size.width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        if let Err(e) = rustix::termios::tcsetwinsize(self.fd.get_ref(), ws) {
            tracing::debug!(error = %e, "resizing an exec terminal");
        }
    }
}

/// Reads one monitor frame; `None` at a clean end of stream.
async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; attach::HEADER];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (kind, len) = attach::decode_header(head).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("attach frame over {} bytes", attach::MAX_FRAME),
        )
    })?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((kind, payload)))
}

/// Client input for the monitor: stdin bytes, resizes, and (for a `stdin_once`
/// container) closing the container's stdin when the client closes its stdin.
async fn attach_input(
    mut w: impl AsyncWrite + Unpin,
    stdin: Option<berth_stream::ClientInput>,
    stdin_once: bool,
    resize: Option<ResizeEvents>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let mut tasks = AbortOnDrop(Vec::new());
    if let Some(mut stdin) = stdin {
        let tx = tx.clone();
        tasks.0.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        if stdin_once {
                            let _ = tx.send(ClientFrame::CloseStdin.encode()).await;
                        }
                        break;
                    }
                    Ok(n) => {
                        let f = ClientFrame::Stdin(buf[..n].to_vec()).encode();
                        if tx.send(f).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    if let Some(mut resize) = resize {
        let tx = tx.clone();
        tasks.0.push(tokio::spawn(async move {
            while let Some(size) = resize.next().await {
                let f = ClientFrame::Resize {
                    rows: size.height,
                    cols: size.width,
                };
                if tx.send(f.encode()).await.is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    while let Some(f) = rx.recv().await {
        if w.write_all(&f).await.is_err() {
            break;
        }
    }
    // Keep the write half open until the attach ends: dropping it would shut the
    // socket down for writing, and the monitor takes that as the client leaving.
    std::future::pending::<()>().await;
    drop(w);
}

async fn attach(sock: &Path, id: &str, stdin_once: bool, io: StreamIo) -> Result<(), BackendError> {
    let conn = tokio::net::UnixStream::connect(sock).await.map_err(|e| {
        BackendError::with_source(
            format!("cannot attach to container {id}: its monitor is not reachable"),
            e,
        )
    })?;
    let (mut r, w) = conn.into_split();
    let _input = AbortOnDrop(vec![tokio::spawn(attach_input(
        w, io.stdin, stdin_once, io.resize,
    ))]);
    let (mut stdout, mut stderr) = (io.stdout, io.stderr);
    // The monitor closes the socket when the container exits.
    loop {
        let (kind, payload) = match read_frame(&mut r).await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            // The monitor closed the socket with our input unread (the container
            // exited while the client was typing): that is the end, not a failure.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => {
                return Err(BackendError::with_source(
                    format!("reading from container {id}'s monitor"),
                    e,
                ));
            }
        };
        let out = match kind {
            attach::STDOUT => &mut stdout,
            attach::STDERR => &mut stderr,
            _ => continue,
        };
        if let Some(o) = out.as_mut()
            && (o.write_all(&payload).await.is_err() || o.flush().await.is_err())
        {
            // The client is gone.
            return Ok(());
        }
    }
}

/// Connects to `localhost:port` inside `netns` (the host's network namespace when
/// the pod has none of its own). The socket is created on a dedicated thread that
/// joins the namespace and then ends, so no shared thread changes namespace.
async fn connect_in_netns(
    netns: Option<PathBuf>,
    port: u16,
) -> Result<tokio::net::TcpStream, BackendError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("berth-portfwd".into())
        .spawn(move || {
            let _ = tx.send(connect_blocking(netns.as_deref(), port));
        })
        .map_err(|e| BackendError::with_source("cannot start a port-forward thread", e))?;
    let stream = rx
        .await
        .map_err(|_| BackendError::new("the port-forward thread died"))??;
    stream
        .set_nonblocking(true)
        .map_err(|e| BackendError::with_source("port-forward socket", e))?;
    tokio::net::TcpStream::from_std(stream)
        .map_err(|e| BackendError::with_source("port-forward socket", e))
}

fn connect_blocking(netns: Option<&Path>, port: u16) -> Result<std::net::TcpStream, BackendError> {
    if let Some(ns) = netns {
        let file = std::fs::File::open(ns).map_err(|e| {
            BackendError::with_source(
                format!("cannot open the pod network namespace {}", ns.display()),
                e,
            )
        })?;
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| {
            BackendError::with_source(
                format!("cannot enter the pod network namespace {}", ns.display()),
                std::io::Error::from(e),
            )
        })?;
    }
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    match std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(s) => Ok(s),
        Err(e4) => std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| {
            BackendError::with_source(
                format!("failed to connect to localhost:{port} inside the pod"),
                e4,
            )
        }),
    }
}

/// Used by the CRI handlers: the containers a stream request may name.
pub fn check_running(containers: &ContainerManager, id: &str) -> crate::container::Result<String> {
    let ctr = containers.get(id)?;
    if ctr.state().phase != Phase::Running {
        return Err(crate::container::Error::NotRunning { id: ctr.id.clone() });
    }
    Ok(ctr.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_frames_carry_rows_then_columns() {
        let f = ClientFrame::Resize {
            rows: 43,
            cols: 132,
        }
        .encode();
        assert_eq!(f, vec![attach::RESIZE, 0, 0, 0, 4, 0, 43, 0, 132]);
    }

    #[tokio::test]
    async fn monitor_frames_are_parsed_and_oversized_ones_refused() {
        let mut data = attach::encode(attach::STDOUT, b"hello");
        data.extend(attach::encode(attach::STDERR, b""));
        let mut r = &data[..];
        assert_eq!(
            read_frame(&mut r).await.expect("frame"),
            Some((attach::STDOUT, b"hello".to_vec()))
        );
        assert_eq!(
            read_frame(&mut r).await.expect("frame"),
            Some((attach::STDERR, Vec::new()))
        );
        assert_eq!(read_frame(&mut r).await.expect("eof"), None);
        let huge = [attach::STDOUT, 0xff, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut &huge[..]).await.is_err());
    }

    #[test]
    fn exit_codes_of_signalled_processes_are_128_plus_the_signal() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(9)), 137);
    }
}
