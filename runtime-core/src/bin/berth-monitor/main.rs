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

#![deny(unsafe_code)] // each use is allowed where it is needed, with its reason

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use berth_runtime_core::cgroups::Cgroup;
use berth_runtime_core::container::CGROUP_ROOT;
use berth_runtime_core::monitor_protocol::{self as protocol, CreateReport, ExitRecord};
use berth_runtime_core::process::console_socketpair;
use berth_runtime_core::{Container, CreateOptions, Stdio};
use clap::{Parser, Subcommand};
use oci_spec::runtime::Spec;

use crate::crilog::{CriLog, Stream};
use crate::monitor::{Monitor, Sockets, detach_stdio, pipe_cloexec, set_nonblocking};
use crate::oci::OciRuntime;
use crate::podns::{pause, pin_ns, unpin_ns};
use crate::report::{error_report, report};

/// Per-container monitor for berthd
#[derive(Debug, Parser)]
#[command(name = "berth-monitor", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create the container and monitor it until it exits.
    Run(RunArgs),
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

/// What `berth-monitor run` is told.
#[derive(Debug, clap::Args)]
struct RunArgs {
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
}

impl RunArgs {
    /// The OCI runtime to create the container with, if not runtime-core.
    fn oci(&self) -> Option<OciRuntime> {
        self.oci_runtime.clone().map(|path| OciRuntime {
            root: self
                .oci_root
                .clone()
                .unwrap_or_else(|| self.root.join("oci")),
            path,
        })
    }
}

/// `println!` that never panics: a closed stdout (e.g. `| head`) is not an error of ours.
macro_rules! outln {
    ($($arg:tt)*) => {{
        let _ = std::io::Write::write_fmt(&mut std::io::stdout(), format_args!("{}\n", format_args!($($arg)*)));
    }};
}

mod crilog;
#[allow(unsafe_code)] // poll(2), fcntl(2), TIOCSWINSZ and write(2) on the fds the monitor holds
mod monitor;
mod oci;
#[allow(unsafe_code)] // fork + unshare + _exit for pin-ns
mod podns;
mod report;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` forks the container's init (a copy of this process until its execve) and
    // `pause` is pid 1 of a pod's shared pid namespace: both are seen by containers, so
    // both run from a copy of the binary nobody can write (CVE-2019-5736).
    // `pause` also serves as the holder of a pod's user namespace, started in that
    // namespace before it has any mapping, where neither an overlay nor a memfd can be
    // executed: that one (seen by no container) carries on unsealed.
    if matches!(cli.cmd, Cmd::Run(_) | Cmd::Pause)
        && let Err(e) = berth_runtime_core::exeseal::ensure_sealed()
    {
        eprintln!("berth-monitor: protecting the monitor binary: {e}");
        if !matches!(cli.cmd, Cmd::Pause) {
            return ExitCode::FAILURE;
        }
    }
    let res = match cli.cmd {
        Cmd::Run(args) => run(&args),
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

#[allow(unsafe_code)] // takes ownership of a dup of fd 1, the create-report pipe
fn run(args: &RunArgs) -> Res<()> {
    // Our stdout is how berthd learns the result; afterwards it is closed.
    // SAFETY: fd 1 is ours; dup gives an independent copy we own.
    // CLOEXEC: the container must not inherit it, or berthd would wait for its EOF forever.
    let mut sync = Some(unsafe { fs::File::from_raw_fd(libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3)) });
    let res = run_inner(args, &mut sync);
    if let Err(e) = &res {
        report(&mut sync, &CreateReport::Failed(error_report(e.as_ref())));
    }
    res
}

fn run_inner(args: &RunArgs, sync: &mut Option<fs::File>) -> Res<()> {
    let RunArgs {
        root,
        log_path,
        exit_file,
        id,
        ..
    } = args;
    let keep_stdin = args.stdin;
    let oci = args.oci();
    let oci = oci.as_ref();
    become_subreaper();

    let bundle = fs::canonicalize(&args.bundle)?;
    let spec = Spec::load(bundle.join("config.json"))?;
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
    let log =
        CriLog::open(log_path).map_err(|e| format!("open log {}: {e}", log_path.display()))?;

    let io = container_io(terminal, keep_stdin)?;
    let mut outputs = io.outputs;
    let dir = root.join(id);
    let created = match oci {
        None => create_with_core(root, id, bundle, spec, io.stdio, io.console, &mut outputs)?,
        Some(rt) => create_with_oci_runtime(
            rt,
            &dir,
            id,
            &bundle,
            &spec,
            terminal,
            io.stdio,
            &mut outputs,
        )?,
    };
    let pid = created.pid;
    let pty = terminal
        .then(|| outputs.last().map(|(fd, _)| fd.as_raw_fd()))
        .flatten();
    let oom_before = oom_kills(created.cgroup.as_ref());
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).ok_or("bad init pid")?,
        rustix::process::PidfdFlags::empty(),
    )?;

    let sockets = Sockets::bind(&dir)?;
    for (fd, _) in &outputs {
        set_nonblocking(fd.as_raw_fd());
    }
    let sigchld = block_sigchld()?;

    report(sync, &CreateReport::Created { pid });
    detach_stdio();

    let mut m = Monitor {
        log,
        outputs,
        stdin: io.stdin,
        pty,
        clients: HashMap::new(),
    };
    let status = m.serve(&pidfd, &sockets, &sigchld, pid)?;
    m.drain();
    let record = exit_record(&status, oom_before, oom_kills(created.cgroup.as_ref()));
    // Durable (fsync, rename, fsync of the directory): berthd reads it after a crash
    // of the node, and a record lost there reports a clean exit as a dead monitor.
    record
        .write(exit_file)
        .map_err(|e| format!("writing {}: {e}", exit_file.display()))?;
    if created.container.is_some()
        && let Ok(mut c) = Container::load(root, id)
    {
        let _ = c.record_exit(record.exit_code);
    }
    sockets.remove();
    if oci.is_some() {
        // Only ours lives there (the runtime's state is under its own root).
        let _ = fs::remove_dir(&dir);
    }
    Ok(())
}

/// Survive berthd: own session, and adopt orphans of our subtree.
fn become_subreaper() {
    let _ = nix::unistd::setsid();
    let _ = nix::sys::prctl::set_child_subreaper(true);
}

/// The container's stdio as this monitor sets it up, before the container exists.
struct ContainerIo {
    /// What the container is given.
    stdio: Stdio,
    /// Output sources: fd → stream (a pty master joins once the container sends it).
    outputs: Vec<(OwnedFd, Stream)>,
    /// The write end of the container's stdin, when it is kept open.
    stdin: Option<OwnedFd>,
    /// Our end of the console socket runtime-core sends the pty master on.
    console: Option<OwnedFd>,
}

/// Pipes for stdin, stdout and stderr, or, with a terminal, a console socket.
fn container_io(terminal: bool, keep_stdin: bool) -> Res<ContainerIo> {
    let mut outputs = Vec::new();
    let mut stdin_w = None;
    let mut console_mine = None;
    let stdio = if terminal {
        let (mine, theirs) = console_socketpair()?;
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
    Ok(ContainerIo {
        stdio,
        outputs,
        stdin: stdin_w,
        console: console_mine,
    })
}

/// The created container: its init, its cgroup (for OOM kills) and, when
/// runtime-core created it, its state.
struct Created {
    pid: i32,
    cgroup: Option<Cgroup>,
    container: Option<Container>,
}

/// Creates the container through runtime-core; a pty master arrives on `console`.
fn create_with_core(
    root: &Path,
    id: &str,
    bundle: PathBuf,
    spec: Spec,
    stdio: Stdio,
    console: Option<OwnedFd>,
    outputs: &mut Vec<(OwnedFd, Stream)>,
) -> Res<Created> {
    let container = Container::create(CreateOptions {
        id: id.to_string(),
        root: root.to_path_buf(),
        bundle,
        spec,
        stdio,
        preserve_fds: 0,
        cgroup_root: PathBuf::from(CGROUP_ROOT),
    })?;
    if let Some(sock) = console {
        let master = berth_runtime_core::process::recv_pty_master(&sock, Duration::from_secs(10))?;
        outputs.push((master, Stream::Stdout));
    }
    let cgroup = container.cgroup().cloned();
    Ok(Created {
        pid: container.pid(),
        cgroup,
        container: Some(container),
    })
}

/// Creates the container with an OCI runtime binary; a pty master arrives on a
/// console socket under `dir`.
#[allow(clippy::too_many_arguments)]
fn create_with_oci_runtime(
    rt: &OciRuntime,
    dir: &Path,
    id: &str,
    bundle: &Path,
    spec: &Spec,
    terminal: bool,
    stdio: Stdio,
    outputs: &mut Vec<(OwnedFd, Stream)>,
) -> Res<Created> {
    // Our own directory for the sockets; the runtime keeps its state under its root.
    fs::create_dir_all(dir)?;
    let cg_path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cgroup = Cgroup::new(Path::new(CGROUP_ROOT), &cg_path, id).ok();
    let console = dir.join(protocol::CONSOLE_SOCKET);
    let listener = if terminal {
        let _ = fs::remove_file(&console);
        Some(UnixListener::bind(&console)?)
    } else {
        None
    };
    let pid = rt.create(bundle, dir, id, stdio.fds, terminal.then_some(&*console));
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
    Ok(Created {
        pid,
        cgroup,
        container: None,
    })
}

/// The cgroup's OOM-kill count so far (0 without a cgroup or its stats).
fn oom_kills(cgroup: Option<&Cgroup>) -> u64 {
    cgroup
        .and_then(|c| c.stats().ok())
        .map(|s| s.oom_kills)
        .unwrap_or(0)
}

/// SIGCHLD as a signalfd (orphans to reap). Only after the container exists: a
/// blocked mask would be inherited by the init and survive its execve.
fn block_sigchld() -> Res<nix::sys::signalfd::SignalFd> {
    let mut chld = nix::sys::signal::SigSet::empty();
    chld.add(nix::sys::signal::Signal::SIGCHLD);
    chld.thread_block()?;
    Ok(nix::sys::signalfd::SignalFd::with_flags(
        &chld,
        nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
    )?)
}

/// How the init ended, as berthd reads it.
fn exit_record(
    status: &rustix::process::WaitIdStatus,
    oom_before: u64,
    oom_after: u64,
) -> ExitRecord {
    let (exit_code, signal) = match (status.exit_status(), status.terminating_signal()) {
        (Some(c), _) => (c, None),
        (None, Some(s)) => (128 + s, Some(s)),
        _ => (255, None),
    };
    let exited_at = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    ExitRecord {
        exit_code,
        signal,
        exited_at_ns: i64::try_from(exited_at.as_nanos()).unwrap_or(i64::MAX),
        oom_killed: oom_after > oom_before,
    }
}
