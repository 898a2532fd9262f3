//! berth-monitor: one small synchronous process per container.
//!
//! `berth-monitor run` creates the container through runtime-core (it is single-threaded,
//! so that is safe), becomes the parent and subreaper of the container's init, holds its
//! stdio (pipes, or the pty master), writes the CRI log, serves attach and a control
//! socket, waits for the init with a pidfd, records the exit in a file and exits. Started
//! by berthd with a plain fork+exec, it calls setsid() so it survives berthd's death.
//!
//! With `--oci-runtime R` the container is created by an OCI runtime binary instead
//! (`R --root <oci-root> create --bundle B --pid-file F ID`, stdio being pipes this
//! monitor owns, or a pty whose master the runtime sends to a console socket); the
//! monitor then adopts the init as subreaper (the runtime exits after create) and
//! does everything else the same way. Start, kill and delete go through the runtime.
//!
//! Helpers for the pod layer: `pin-ns` / `unpin-ns` (keep a pod's namespaces alive as bind
//! mounts) and `pause` (an infra process that reaps zombies as pid 1 of a shared pid ns).
//!
//! What it says to berthd (the create report, the exit record, attach frames and
//! control lines) is typed once, for both sides, in
//! `berth_runtime_core::monitor_protocol`.

mod crilog;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use berth_runtime_core::container::CGROUP_ROOT;
use berth_runtime_core::monitor_protocol::{
    self as protocol, ControlReply, ControlRequest, CreateReport, ErrorKind, ExitRecord,
    MonitorError, attach,
};
use berth_runtime_core::{Container, CreateOptions, Stdio};
use clap::{Parser, Subcommand};
use crilog::{CriLog, Stream};
use oci_spec::runtime::Spec;

#[derive(Debug, Parser)]
#[command(
    name = "berth-monitor",
    version,
    about = "Per-container monitor for berthd"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create the container and monitor it until it exits.
    Run {
        /// runtime-core state root (shared with berth-runtime).
        #[arg(long, default_value = "/run/berth/containers")]
        root: PathBuf,
        /// Bundle with config.json.
        #[arg(long)]
        bundle: PathBuf,
        /// CRI log file.
        #[arg(long = "log-path")]
        log_path: PathBuf,
        /// Where the exit record (JSON) is written.
        #[arg(long = "exit-file")]
        exit_file: PathBuf,
        /// Keep the container's stdin open (attach can write to it).
        #[arg(long)]
        stdin: bool,
        /// Create the container with this OCI runtime binary (runc, crun, ...)
        /// instead of runtime-core; the attach and control sockets stay under --root.
        #[arg(long = "oci-runtime")]
        oci_runtime: Option<PathBuf>,
        /// The OCI runtime's own `--root`.
        #[arg(long = "oci-root", requires = "oci_runtime")]
        oci_root: Option<PathBuf>,
        id: String,
    },
    /// Create new namespaces and pin them as bind mounts under DIR (net, ipc, uts).
    PinNs {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        net: bool,
        #[arg(long)]
        ipc: bool,
        #[arg(long)]
        uts: bool,
    },
    /// Unmount and remove namespaces pinned under DIR.
    UnpinNs {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Infra process: sleep, reap children, exit on SIGTERM/SIGINT.
    Pause,
}

/// `println!` that never panics: a closed stdout (e.g. `| head`) is not an error of ours.
macro_rules! outln {
    ($($arg:tt)*) => {{
        let _ = std::io::Write::write_fmt(&mut std::io::stdout(), format_args!("{}\n", format_args!($($arg)*)));
    }};
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` forks the container's init (a copy of this process until its execve) and
    // `pause` is pid 1 of a pod's shared pid namespace: both are seen by containers, so
    // both run from a copy of the binary nobody can write (CVE-2019-5736).
    // `pause` also serves as the holder of a pod's user namespace, started in that
    // namespace before it has any mapping, where neither an overlay nor a memfd can be
    // executed: that one (seen by no container) carries on unsealed.
    if matches!(cli.cmd, Cmd::Run { .. } | Cmd::Pause)
        && let Err(e) = berth_runtime_core::exeseal::ensure_sealed()
    {
        eprintln!("berth-monitor: protecting the monitor binary: {e}");
        if !matches!(cli.cmd, Cmd::Pause) {
            return ExitCode::FAILURE;
        }
    }
    let res = match cli.cmd {
        Cmd::Run {
            root,
            bundle,
            log_path,
            exit_file,
            stdin,
            oci_runtime,
            oci_root,
            id,
        } => {
            let oci = oci_runtime.map(|path| OciRuntime {
                root: oci_root.unwrap_or_else(|| root.join("oci")),
                path,
            });
            run(
                &root,
                &bundle,
                &log_path,
                &exit_file,
                stdin,
                oci.as_ref(),
                &id,
            )
        }
        Cmd::PinNs { dir, net, ipc, uts } => pin_ns(&dir, net, ipc, uts),
        Cmd::UnpinNs { dir } => unpin_ns(&dir),
        Cmd::Pause => pause(),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-monitor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn pipe_cloexec() -> Res<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd we own; only the O_NONBLOCK status flag changes.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// One attached client.
#[derive(Debug)]
struct Client {
    sock: UnixStream,
    buf: Vec<u8>,
}

struct Monitor {
    log: CriLog,
    /// Output sources: fd → stream.
    outputs: Vec<(OwnedFd, Stream)>,
    stdin: Option<OwnedFd>,
    pty: Option<RawFd>,
    clients: HashMap<RawFd, Client>,
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
}

fn report(sync: &mut Option<fs::File>, report: &CreateReport) {
    if let Some(f) = sync.as_mut() {
        let _ = writeln!(f, "{}", report.encode());
        let _ = f.flush();
    }
    *sync = None;
}

/// An OCI runtime command line that creates the container instead of runtime-core.
#[derive(Debug)]
struct OciRuntime {
    path: PathBuf,
    root: PathBuf,
}

/// How long `<runtime> create` may take.
const OCI_CREATE_TIMEOUT: Duration = Duration::from_secs(60);

impl OciRuntime {
    /// Runs `create`; the container's stdio are `stdio` (pipes) or, with a terminal,
    /// the pty whose master arrives on `console`. Returns the init's pid.
    fn create(
        &self,
        bundle: &Path,
        dir: &Path,
        id: &str,
        stdio: Option<[OwnedFd; 3]>,
        console: Option<&Path>,
    ) -> Res<i32> {
        let pid_file = dir.join("oci-init.pid");
        let log_file = dir.join("oci-create.log");
        let mut cmd = std::process::Command::new(&self.path);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&log_file)
            .arg("--log-format")
            .arg("json")
            .arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file);
        if let Some(c) = console {
            cmd.arg("--console-socket").arg(c);
        }
        cmd.arg(id);
        match stdio {
            Some([i, o, e]) => {
                cmd.stdin(i).stdout(o).stderr(e);
            }
            None => {
                cmd.stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("running {} create: {e}", self.path.display()))?;
        // The command holds the pipes' container ends now; ours must be closed so
        // that end-of-file comes when the container's last writer goes.
        drop(cmd);
        let deadline = std::time::Instant::now() + OCI_CREATE_TIMEOUT;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} create did not finish within {OCI_CREATE_TIMEOUT:?}",
                    self.path.display()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let log = fs::read_to_string(&log_file).unwrap_or_default();
        let _ = fs::remove_file(&log_file);
        if !status.success() {
            return Err(OciCreateError(format!(
                "{} create failed ({status}): {}",
                self.path.display(),
                runtime_log_errors(&log)
            ))
            .into());
        }
        let pid = fs::read_to_string(&pid_file)
            .map_err(|e| format!("reading {}: {e}", pid_file.display()))?;
        let _ = fs::remove_file(&pid_file);
        pid.trim()
            .parse::<i32>()
            .map_err(|_| format!("{} holds no pid: {pid:?}", pid_file.display()).into())
    }
}

/// `<runtime> create` failed; the message holds the runtime's own error messages.
#[derive(Debug)]
struct OciCreateError(String);

impl std::fmt::Display for OciCreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OciCreateError {}

impl OciCreateError {
    /// Whether the runtime refused the spec rather than failed: its log text is the
    /// only account of that (runc and crun word it as Go's and libc's errors do).
    fn is_caused_by_spec(&self) -> bool {
        self.0.contains("executable file not found") || self.0.contains("no such file")
    }
}

/// The error messages in a runtime's `--log-format json` log (runc, crun), one line.
fn runtime_log_errors(log: &str) -> String {
    let msgs: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .filter_map(|v| v["msg"].as_str().map(str::to_owned))
        .collect();
    if msgs.is_empty() {
        let text = log.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() {
            "no error message".to_owned()
        } else {
            text
        }
    } else {
        msgs.join("; ")
    }
}

fn run(
    root: &Path,
    bundle: &Path,
    log_path: &Path,
    exit_file: &Path,
    keep_stdin: bool,
    oci: Option<&OciRuntime>,
    id: &str,
) -> Res<()> {
    // Our stdout is how berthd learns the result; afterwards it is closed.
    // SAFETY: fd 1 is ours; dup gives an independent copy we own.
    // CLOEXEC: the container must not inherit it, or berthd would wait for its EOF forever.
    let mut sync = Some(unsafe { fs::File::from_raw_fd(libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3)) });
    let res = run_inner(
        root, bundle, log_path, exit_file, keep_stdin, oci, id, &mut sync,
    );
    if let Err(e) = &res {
        report(&mut sync, &CreateReport::Failed(error_report(e.as_ref())));
    }
    res
}

/// The failure as berthd reads it: the message, its kind (the pod spec's fault, such
/// as a working directory or executable that cannot be used; the node out of fds or
/// memory; or anything else), and for a failure of the container's init the step and
/// errno name.
fn error_report(e: &(dyn std::error::Error + 'static)) -> MonitorError {
    use berth_runtime_core::ContainerError;
    use berth_runtime_core::process::ProcessError;
    let mut report = MonitorError {
        kind: ErrorKind::Internal,
        message: e.to_string(),
        step: None,
        errno: None,
    };
    let child = match e.downcast_ref::<ContainerError>() {
        Some(ContainerError::Process(ProcessError::Child(child))) => Some(child),
        _ => None,
    };
    if let Some(child) = child {
        report.step = Some(child.step.clone());
        report.errno = Some(berth_runtime_core::channel::errno_name(child.errno));
    }
    let spec_fault = child.is_some_and(|c| c.is_caused_by_spec())
        || e.downcast_ref::<OciCreateError>()
            .is_some_and(OciCreateError::is_caused_by_spec);
    let exhausted = child
        .map(|c| c.errno)
        .into_iter()
        .chain(errnos(e))
        .any(|n| {
            matches!(
                n,
                libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOSPC | libc::EDQUOT
            )
        });
    if spec_fault {
        report.kind = ErrorKind::SpecFault;
    } else if exhausted {
        report.kind = ErrorKind::ResourceExhausted;
    }
    report
}

/// The errnos in an error's chain of causes.
fn errnos<'a>(e: &'a (dyn std::error::Error + 'static)) -> impl Iterator<Item = i32> + 'a {
    std::iter::successors(Some(e), |e| e.source()).filter_map(|e| {
        e.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .or_else(|| e.downcast_ref::<nix::errno::Errno>().map(|n| *n as i32))
            .or_else(|| {
                e.downcast_ref::<rustix::io::Errno>()
                    .map(|n| n.raw_os_error())
            })
    })
}

fn detach_stdio() {
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

#[allow(clippy::too_many_arguments)]
fn run_inner(
    root: &Path,
    bundle: &Path,
    log_path: &Path,
    exit_file: &Path,
    keep_stdin: bool,
    oci: Option<&OciRuntime>,
    id: &str,
    sync: &mut Option<fs::File>,
) -> Res<()> {
    // Survive berthd: own session, and adopt orphans of our subtree.
    let _ = nix::unistd::setsid();
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };

    let bundle = fs::canonicalize(bundle)?;
    let spec = Spec::load(bundle.join("config.json"))?;
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
    let log =
        CriLog::open(log_path).map_err(|e| format!("open log {}: {e}", log_path.display()))?;

    let mut outputs = Vec::new();
    let mut stdin_w = None;
    let mut console_mine = None;
    let stdio = if terminal {
        let (mine, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )?;
        console_mine = Some(mine);
        Stdio {
            fds: None,
            console_socket: Some(theirs),
        }
    } else {
        let (in_r, in_w) = pipe_cloexec()?;
        let (out_r, out_w) = pipe_cloexec()?;
        let (err_r, err_w) = pipe_cloexec()?;
        outputs.push((out_r, Stream::Stdout));
        outputs.push((err_r, Stream::Stderr));
        if keep_stdin {
            stdin_w = Some(in_w);
        }
        Stdio {
            fds: Some([in_r, out_w, err_w]),
            console_socket: None,
        }
    };

    let dir = root.join(id);
    let (pid, cgroup, container) = match oci {
        None => {
            let container = Container::create(CreateOptions {
                id: id.to_string(),
                root: root.to_path_buf(),
                bundle,
                spec,
                stdio,
                preserve_fds: 0,
                cgroup_root: PathBuf::from(CGROUP_ROOT),
            })?;
            if let Some(sock) = console_mine.take() {
                let master =
                    berth_runtime_core::process::recv_pty_master(&sock, Duration::from_secs(10))?;
                outputs.push((master, Stream::Stdout));
            }
            let cgroup = container.cgroup().cloned();
            (container.pid(), cgroup, Some(container))
        }
        Some(rt) => {
            // Our own directory for the sockets; the runtime keeps its state under its root.
            fs::create_dir_all(&dir)?;
            let cg_path = spec
                .linux()
                .as_ref()
                .and_then(|l| l.cgroups_path().as_ref())
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let cgroup =
                berth_runtime_core::cgroups::Cgroup::new(Path::new(CGROUP_ROOT), &cg_path, id).ok();
            let console = dir.join(protocol::CONSOLE_SOCKET);
            let listener = if terminal {
                let _ = fs::remove_file(&console);
                Some(UnixListener::bind(&console)?)
            } else {
                None
            };
            let pid = rt.create(&bundle, &dir, id, stdio.fds, terminal.then_some(&*console));
            let _ = fs::remove_file(&console);
            let pid = pid?;
            if let Some(l) = listener {
                // The runtime sent the master before create returned; it waits queued.
                l.set_nonblocking(true)?;
                let (sock, _) = l
                    .accept()
                    .map_err(|e| format!("the runtime sent no pty master: {e}"))?;
                let master = berth_runtime_core::process::recv_pty_master(
                    &OwnedFd::from(sock),
                    Duration::from_secs(10),
                )?;
                outputs.push((master, Stream::Stdout));
            }
            (pid, cgroup, None)
        }
    };
    let pty = terminal
        .then(|| outputs.last().map(|(fd, _)| fd.as_raw_fd()))
        .flatten();
    let oom_kills = || {
        cgroup
            .as_ref()
            .and_then(|c| c.stats().ok())
            .map(|s| s.oom_kills)
            .unwrap_or(0)
    };
    let oom_before = oom_kills();
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).ok_or("bad init pid")?,
        rustix::process::PidfdFlags::empty(),
    )?;

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
    for (fd, _) in &outputs {
        set_nonblocking(fd.as_raw_fd());
    }

    // SIGCHLD only after the container exists: a blocked mask would be inherited by
    // the init and survive its execve.
    let mut chld = nix::sys::signal::SigSet::empty();
    chld.add(nix::sys::signal::Signal::SIGCHLD);
    chld.thread_block()?;
    let sigchld = nix::sys::signalfd::SignalFd::with_flags(
        &chld,
        nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
    )?;

    report(sync, &CreateReport::Created { pid });
    detach_stdio();

    let mut m = Monitor {
        log,
        outputs,
        stdin: stdin_w,
        pty,
        clients: HashMap::new(),
    };
    let status = loop {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let pfd = |fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        fds.push(pfd(pidfd.as_raw_fd()));
        fds.push(pfd(attach.as_raw_fd()));
        fds.push(pfd(ctl.as_raw_fd()));
        fds.push(pfd(sigchld.as_fd().as_raw_fd()));
        for (fd, _) in &m.outputs {
            fds.push(pfd(fd.as_raw_fd()));
        }
        let client_fds: Vec<RawFd> = m.clients.keys().copied().collect();
        for fd in &client_fds {
            fds.push(pfd(*fd));
        }
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue; // EINTR
        }
        let ready = |i: usize| fds[i].revents != 0;
        let n_out = m.outputs.len();
        let mut closed = Vec::new();
        for i in 0..n_out {
            if ready(4 + i) && !m.pump(i) {
                closed.push(i);
            }
        }
        for i in closed.into_iter().rev() {
            m.outputs.remove(i);
        }
        for (k, fd) in client_fds.iter().enumerate() {
            if ready(4 + n_out + k) && !m.client_input(*fd) {
                m.clients.remove(fd);
            }
        }
        if ready(1)
            && let Ok((sock, _)) = attach.accept()
        {
            let _ = sock.set_nonblocking(false);
            let _ = sock.set_write_timeout(Some(Duration::from_secs(5)));
            m.clients.insert(
                sock.as_raw_fd(),
                Client {
                    sock,
                    buf: Vec::new(),
                },
            );
        }
        if ready(2)
            && let Ok((mut sock, _)) = ctl.accept()
        {
            let _ = sock.set_nonblocking(false);
            let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
            let mut line = [0u8; protocol::CONTROL_REQUEST_MAX];
            let n = sock.read(&mut line).unwrap_or(0);
            let reply = match ControlRequest::decode(&line[..n]) {
                Some(ControlRequest::ReopenLog) => match m.log.reopen() {
                    Ok(()) => ControlReply::Ok,
                    Err(e) => ControlReply::Error(e.to_string()),
                },
                None => ControlReply::Error("unknown command".into()),
            };
            let _ = sock.write_all(reply.encode().as_bytes());
        }
        if ready(3) {
            while let Ok(Some(_)) = sigchld.read_signal() {}
            reap_orphans(pid);
        }
        if ready(0) {
            match rustix::process::waitid(
                rustix::process::WaitId::PidFd(pidfd.as_fd()),
                rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
            ) {
                Ok(Some(st)) => break st,
                Ok(None) => {}
                Err(e) => return Err(format!("waitid on the init's pidfd: {e}").into()),
            }
        }
    };
    // Drain what the container wrote before it died (non-blocking: a process that
    // escaped the container could hold the pipe open forever).
    for i in 0..m.outputs.len() {
        loop {
            let fd = m.outputs[i].0.as_raw_fd();
            let mut p = [libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: one valid pollfd, zero timeout.
            let r = unsafe { libc::poll(p.as_mut_ptr(), 1, 0) };
            if r <= 0 || p[0].revents == 0 || !m.pump(i) {
                break;
            }
        }
    }
    let (exit_code, signal) = match (status.exit_status(), status.terminating_signal()) {
        (Some(c), _) => (c, None),
        (None, Some(s)) => (128 + s, Some(s)),
        _ => (255, None),
    };
    let oom_after = oom_kills();
    let exited_at = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let record = ExitRecord {
        exit_code,
        signal,
        exited_at_ns: i64::try_from(exited_at.as_nanos()).unwrap_or(i64::MAX),
        oom_killed: oom_after > oom_before,
    };
    // Durable (fsync, rename, fsync of the directory): berthd reads it after a crash
    // of the node, and a record lost there reports a clean exit as a dead monitor.
    record
        .write(exit_file)
        .map_err(|e| format!("writing {}: {e}", exit_file.display()))?;
    if container.is_some()
        && let Ok(mut c) = Container::load(root, id)
    {
        let _ = c.record_exit(exit_code);
    }
    let _ = fs::remove_file(&attach_path);
    let _ = fs::remove_file(&ctl_path);
    if oci.is_some() {
        // Only ours lives there (the runtime's state is under its own root).
        let _ = fs::remove_dir(&dir);
    }
    Ok(())
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
    {
        if child != init {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(child),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
    }
}

const PIN_KINDS: [(&str, libc::c_int); 3] = [
    ("net", libc::CLONE_NEWNET),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
];

fn pin_ns(dir: &Path, net: bool, ipc: bool, uts: bool) -> Res<()> {
    let wanted: Vec<(&str, libc::c_int)> = PIN_KINDS
        .iter()
        .copied()
        .filter(|(k, _)| match *k {
            "net" => net,
            "ipc" => ipc,
            _ => uts,
        })
        .collect();
    if wanted.is_empty() {
        return Err("choose at least one of --net, --ipc, --uts".into());
    }
    fs::create_dir_all(dir)?;
    for (k, _) in &wanted {
        fs::File::create(dir.join(k))?;
    }
    let flags = wanted.iter().fold(0, |a, (_, f)| a | f);
    // SAFETY: this program is single-threaded; the child only makes syscalls and _exits.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            let mut code = 0;
            // SAFETY: unshare with namespace flags only.
            if unsafe { libc::unshare(flags) } != 0 {
                code = 10;
            } else {
                for (k, _) in &wanted {
                    let src = PathBuf::from(format!("/proc/self/ns/{k}"));
                    if nix::mount::mount(
                        Some(&src),
                        &dir.join(k),
                        None::<&str>,
                        nix::mount::MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .is_err()
                    {
                        code = 11;
                        break;
                    }
                }
            }
            // SAFETY: end the forked child without running destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let st = nix::sys::wait::waitpid(child, None)?;
            if st != nix::sys::wait::WaitStatus::Exited(child, 0) {
                let _ = unpin_ns(dir);
                return Err(format!("pinning namespaces failed: {st:?}").into());
            }
        }
    }
    let paths: HashMap<&str, PathBuf> = wanted.iter().map(|(k, _)| (*k, dir.join(k))).collect();
    outln!("{}", serde_json::to_string(&paths)?);
    Ok(())
}

fn unpin_ns(dir: &Path) -> Res<()> {
    for (k, _) in PIN_KINDS {
        let p = dir.join(k);
        if p.exists() {
            match nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
                Err(e) => return Err(format!("unmount {}: {e}", p.display()).into()),
            }
            fs::remove_file(&p)?;
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove {}: {e}", dir.display()).into()),
    }
}

fn pause() -> Res<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        set.add(s);
    }
    set.thread_block()?;
    loop {
        match set.wait()? {
            // As pid 1 of a pod's pid namespace, reaping every orphan is our job.
            Signal::SIGCHLD => {
                while let Ok(st) =
                    nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
                {
                    if st == nix::sys::wait::WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::runtime_log_errors;

    #[test]
    fn runtime_log_errors_keep_only_error_messages() {
        let log = concat!(
            r#"{"level":"warning","msg":"ignored","time":"t"}"#,
            "\n",
            r#"{"level":"error","msg":"runc create failed: unable to start container process: exec: \"nope\": executable file not found in $PATH","time":"t"}"#,
            "\n"
        );
        assert_eq!(
            runtime_log_errors(log),
            "runc create failed: unable to start container process: exec: \"nope\": executable file not found in $PATH"
        );
        assert_eq!(runtime_log_errors("plain\ntext "), "plain text");
        assert_eq!(runtime_log_errors(""), "no error message");
    }
}
