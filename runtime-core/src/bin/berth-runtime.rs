//! berth-runtime: the OCI runtime command line (runc's verbs) over berth-runtime-core.
//!
//! ```text
//! mkdir -p bundle/rootfs && (cd bundle && berth-runtime spec)   # then fill rootfs
//! berth-runtime run --bundle bundle demo
//! ```

#![deny(unsafe_code)] // each use is allowed where it is needed, with its reason

use std::io::{IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use berth_runtime_core::container::{CGROUP_ROOT, wait_exit_code};
use berth_runtime_core::process::{console_socketpair, recv_pty_master};
use berth_runtime_core::{Container, CreateOptions, Stdio};
use clap::{Parser, Subcommand};
use oci_spec::runtime::{Process, Spec};

/// OCI runtime (runc-compatible verbs)
#[derive(Debug, Parser)]
#[command(name = "berth-runtime", version)]
struct Cli {
    /// Directory for container state.
    #[arg(long, global = true, default_value = "/run/berth-runtime")]
    root: PathBuf,
    /// Accepted for runc compatibility (log to stderr).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Accepted for runc compatibility.
    #[arg(long = "log-format", global = true)]
    log_format: Option<String>,
    /// Accepted for runc compatibility (cgroupfs is always used).
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// Bundle directory (with config.json).
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Write the init pid here.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Unix socket to receive the pty master (terminal containers).
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Pass this many extra fds (from 3) to the container.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for runc compatibility.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    id: String,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write a default config.json for a bundle with a rootfs/ directory.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Accepted for runc compatibility.
        #[arg(long)]
        rootless: bool,
    },
    /// Create a container; its process waits for `start`.
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Print the container's state as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to the container.
    Kill {
        id: String,
        signal: Option<String>,
        /// Signal every process of the container.
        #[arg(short, long)]
        all: bool,
    },
    /// Delete a container.
    Delete {
        id: String,
        /// Kill it first if it is still running.
        #[arg(short, long)]
        force: bool,
    },
    /// Create and start a container and wait for it (unless --detach).
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(short, long)]
        detach: bool,
    },
    /// Run a process in a running container.
    Exec {
        /// JSON file with an OCI `process`.
        #[arg(short, long)]
        process: Option<PathBuf>,
        #[arg(short, long)]
        tty: bool,
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        #[arg(short, long)]
        detach: bool,
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Extra environment variables (KEY=VALUE).
        #[arg(short, long)]
        env: Vec<String>,
        /// uid[:gid]
        #[arg(short, long)]
        user: Option<String>,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// List containers.
    List,
    /// Print what this runtime supports (JSON, like `runc features`).
    Features,
    /// Freeze every process of the container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Update resources of a live container from a JSON `linux.resources` file.
    Update {
        /// File with OCI LinuxResources JSON ("-" for stdin).
        #[arg(short, long)]
        resources: PathBuf,
        id: String,
    },
    /// Print the container's pids (from its cgroup).
    Ps {
        /// Accepted for runc compatibility; output is always JSON.
        #[arg(short, long)]
        format: Option<String>,
        id: String,
    },
    /// Print resource usage once (`--stats`): cpu, memory, pids, OOM kills.
    Events {
        #[arg(long)]
        stats: bool,
        id: String,
    },
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
    let _ = (cli.systemd_cgroup, cli.debug);
    // These put a copy of this process into a container (the init until it execs, an
    // exec'd process until it execs): run from a copy of the binary nobody can write.
    if matches!(cli.cmd, Cmd::Create(_) | Cmd::Run { .. } | Cmd::Exec { .. })
        && let Err(e) = berth_runtime_core::exeseal::ensure_sealed()
    {
        eprintln!("berth-runtime: protecting the runtime binary: {e}");
        return ExitCode::from(1);
    }
    let log = cli.log.clone();
    let json = cli.log_format.as_deref() == Some("json");
    match run(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            // Our error messages already include their causes.
            eprintln!("berth-runtime: {e}");
            if let Some(path) = log {
                log_error(&path, json, &e.to_string());
            }
            ExitCode::from(1)
        }
    }
}

/// Append the error to `--log` the way runc does, so a containerd shim that reads the
/// runtime's log (`--log-format json`: one `{"level","msg","time"}` object per line) can
/// report the real cause.
fn log_error(path: &Path, json: bool, msg: &str) {
    let time = berth_runtime_core::time::rfc3339_nano(std::time::SystemTime::now());
    let line = if json {
        serde_json::json!({ "level": "error", "msg": msg, "time": time }).to_string()
    } else {
        format!("time=\"{time}\" level=error msg={msg:?}")
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes());
    }
}

/// What this runtime supports, in the shape of `runc features`.
fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec",
            "mand", "noatime", "nodev", "nodiratime", "noexec", "nomand", "norelatime",
            "nostrictatime", "nosuid", "private", "rbind", "relatime", "remount", "ro",
            "rprivate", "rro", "rshared", "rslave", "runbindable", "rw", "shared", "slave",
            "strictatime", "suid", "sync", "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts", "time"],
            "capabilities": caps::all().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            "seccomp": {
                "enabled": true,
                "actions": [
                    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                    "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG",
                    "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"
                ],
                "operators": [
                    "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE",
                    "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"
                ]
            },
            "apparmor": { "enabled": true },
            "selinux": { "enabled": false }
        }
    })
}

fn parse_signal(s: Option<&str>) -> Res<i32> {
    let Some(s) = s else { return Ok(libc::SIGTERM) };
    if let Ok(n) = s.parse::<i32>() {
        return Ok(n);
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    let sig: nix::sys::signal::Signal =
        name.parse().map_err(|_| format!("unknown signal {s:?}"))?;
    Ok(sig as i32)
}

fn default_spec() -> Spec {
    let mut spec = Spec::default();
    spec.set_hostname(Some("berth".into()));
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(true));
        p.set_args(Some(vec!["sh".into()]));
    }
    if let Some(r) = spec.root_mut() {
        r.set_path("rootfs".into());
        r.set_readonly(Some(true));
    }
    spec
}

fn connect_console(path: Option<&Path>) -> Res<Option<OwnedFd>> {
    Ok(match path {
        Some(p) => Some(
            UnixStream::connect(p)
                .map_err(|e| format!("connect console socket {}: {e}", p.display()))?
                .into(),
        ),
        None => None,
    })
}

fn load_bundle(bundle: &Path) -> Res<(PathBuf, Spec)> {
    let bundle =
        std::fs::canonicalize(bundle).map_err(|e| format!("bundle {}: {e}", bundle.display()))?;
    let cfg = bundle.join("config.json");
    let spec = Spec::load(&cfg).map_err(|e| format!("load {}: {e}", cfg.display()))?;
    Ok((bundle, spec))
}

fn do_create(root: &Path, a: &CreateArgs, console: Option<OwnedFd>) -> Res<Container> {
    let (bundle, spec) = load_bundle(&a.bundle)?;
    let console = match console {
        Some(c) => Some(c),
        None => connect_console(a.console_socket.as_deref())?,
    };
    let stdio = Stdio {
        fds: None,
        console_socket: console,
    };
    let c = Container::create(CreateOptions {
        id: a.id.clone(),
        root: root.to_path_buf(),
        bundle,
        spec,
        stdio,
        preserve_fds: a.preserve_fds,
        cgroup_root: PathBuf::from(CGROUP_ROOT),
    })?;
    if let Some(p) = &a.pid_file {
        std::fs::write(p, c.pid().to_string())
            .map_err(|e| format!("write pid file {}: {e}", p.display()))?;
    }
    Ok(c)
}

/// With `terminal: true`, no `--console-socket` and a terminal on our stdin, we do
/// what runc does: take the container's pty master ourselves and relay it.
struct PtyPlan {
    mine: Option<OwnedFd>,
    theirs: Option<OwnedFd>,
}

impl PtyPlan {
    fn new(wanted: bool) -> Res<PtyPlan> {
        if !wanted || !std::io::stdin().is_terminal() {
            return Ok(PtyPlan {
                mine: None,
                theirs: None,
            });
        }
        let (mine, theirs) = console_socketpair()?;
        Ok(PtyPlan {
            mine: Some(mine),
            theirs: Some(theirs),
        })
    }
}

static WINCH: AtomicBool = AtomicBool::new(false);

extern "C" fn on_winch(_: libc::c_int) {
    WINCH.store(true, Ordering::Relaxed);
}

/// Puts our terminal back the way it was.
struct RawMode(nix::sys::termios::Termios);

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}

#[allow(unsafe_code)] // TIOCGWINSZ/TIOCSWINSZ ioctls: no safe wrapper for the winsize struct
fn copy_window_size(master: &OwnedFd) {
    // SAFETY: an all-zero winsize is a valid value to be filled by the ioctl.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ with a valid winsize on open terminal fds.
    unsafe {
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}

/// Relay our terminal (raw mode) and the container's pty until the container closes
/// it, then return the exit code.
#[allow(unsafe_code)] // a SIGWINCH handler and poll(2) on raw fds
fn proxy_terminal(master: OwnedFd, pid: i32) -> Res<i32> {
    use nix::sys::termios;
    let saved = termios::tcgetattr(std::io::stdin())?;
    let mut raw = saved.clone();
    termios::cfmakeraw(&mut raw);
    termios::tcsetattr(std::io::stdin(), termios::SetArg::TCSANOW, &raw)?;
    let _restore = RawMode(saved);
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGWINCH, on_winch as *const () as libc::sighandler_t) };
    copy_window_size(&master);
    let mut stdin_open = true;
    let mut buf = [0u8; 8192];
    loop {
        if WINCH.swap(false, Ordering::Relaxed) {
            copy_window_size(&master);
        }
        let mut fds = [
            libc::pollfd {
                fd: master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if stdin_open { 0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 200) };
        if n <= 0 {
            continue;
        }
        if fds[0].revents != 0 {
            match nix::unistd::read(&master, &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EIO) => break,
                Ok(k) => {
                    let mut out = std::io::stdout();
                    let _ = out.write_all(&buf[..k]);
                    let _ = out.flush();
                }
                Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if fds[1].revents != 0 {
            match nix::unistd::read(std::io::stdin(), &mut buf) {
                Ok(0) => stdin_open = false,
                Ok(k) => {
                    let _ = nix::unistd::write(&master, &buf[..k]);
                }
                Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
                Err(_) => stdin_open = false,
            }
        }
    }
    Ok(wait_exit_code(pid)?)
}

static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

#[allow(unsafe_code)] // kill(2) from a signal handler: only async-signal-safe calls
extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = FORWARD_TO.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// While we wait for the container, signals sent to us go to its init.
#[allow(unsafe_code)] // installing signal handlers (signal(2))
fn forward_signals_to(pid: i32) {
    FORWARD_TO.store(pid, Ordering::Relaxed);
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        // SAFETY: installing a handler that only calls the async-signal-safe kill(2).
        unsafe { libc::signal(sig, forward_signal as *const () as libc::sighandler_t) };
    }
}

fn run(cli: Cli) -> Res<i32> {
    let root = cli.root;
    match cli.cmd {
        Cmd::Spec { bundle, .. } => {
            let path = bundle.join("config.json");
            if path.exists() {
                return Err(format!("{} already exists", path.display()).into());
            }
            default_spec()
                .save(&path)
                .map_err(|e| format!("write {}: {e}", path.display()))?;
            Ok(0)
        }
        Cmd::Create(a) => {
            do_create(&root, &a, None)?;
            Ok(0)
        }
        Cmd::Start { id } => {
            Container::load(&root, &id)?.start()?;
            Ok(0)
        }
        Cmd::State { id } => {
            let c = Container::load(&root, &id)?;
            outln!("{}", serde_json::to_string_pretty(&c.oci_state())?);
            Ok(0)
        }
        Cmd::Kill { id, signal, all } => {
            Container::load(&root, &id)?.kill(parse_signal(signal.as_deref())?, all)?;
            Ok(0)
        }
        Cmd::Delete { id, force } => {
            match Container::load(&root, &id) {
                Ok(c) => c.delete(force)?,
                // runc: deleting a missing container with --force succeeds.
                Err(berth_runtime_core::ContainerError::NotFound(_)) if force => {}
                Err(e) => return Err(e.into()),
            }
            Ok(0)
        }
        Cmd::Run { create, detach } => {
            let terminal = load_bundle(&create.bundle)
                .map(|(_, s)| s.process().as_ref().and_then(|p| p.terminal()) == Some(true))
                .unwrap_or(false);
            let pty = PtyPlan::new(!detach && terminal && create.console_socket.is_none())?;
            let mut c = do_create(&root, &create, pty.theirs)?;
            let master = match pty
                .mine
                .map(|m| recv_pty_master(&m, Duration::from_secs(10)))
            {
                Some(Ok(m)) => Some(m),
                Some(Err(e)) => {
                    let _ = c.delete(true);
                    return Err(e.into());
                }
                None => None,
            };
            if detach {
                c.start()?;
                return Ok(0);
            }
            forward_signals_to(c.pid());
            if let Err(e) = c.start() {
                let _ = c.delete(true);
                return Err(e.into());
            }
            let code = match master {
                Some(m) => proxy_terminal(m, c.pid())?,
                None => wait_exit_code(c.pid())?,
            };
            let c = Container::load(&root, &create.id)?;
            c.delete(true)?;
            Ok(code)
        }
        Cmd::Exec {
            process,
            tty,
            console_socket,
            pid_file,
            detach,
            cwd,
            env,
            user,
            id,
            command,
        } => {
            let c = Container::load(&root, &id)?;
            let spec_path = c.state().bundle.join("config.json");
            let spec =
                Spec::load(&spec_path).map_err(|e| format!("load {}: {e}", spec_path.display()))?;
            let mut p: Process = match &process {
                Some(path) => {
                    let data =
                        std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
                    serde_json::from_slice(&data)
                        .map_err(|e| format!("parse {}: {e}", path.display()))?
                }
                None => {
                    if command.is_empty() {
                        return Err("exec needs a command or --process".into());
                    }
                    let mut p = spec.process().clone().unwrap_or_default();
                    p.set_args(Some(command));
                    p.set_terminal(Some(tty));
                    p
                }
            };
            if let Some(cwd) = cwd {
                p.set_cwd(cwd);
            }
            if !env.is_empty() {
                let mut e = p.env().clone().unwrap_or_default();
                e.extend(env);
                p.set_env(Some(e));
            }
            if let Some(u) = user {
                let mut parts = u.splitn(2, ':');
                let uid: u32 = parts
                    .next()
                    .unwrap_or("0")
                    .parse()
                    .map_err(|_| format!("bad --user {u:?}"))?;
                let gid: u32 = parts
                    .next()
                    .unwrap_or("0")
                    .parse()
                    .map_err(|_| format!("bad --user {u:?}"))?;
                let mut usr = p.user().clone();
                usr.set_uid(uid);
                usr.set_gid(gid);
                p.set_user(usr);
            }
            let pty =
                PtyPlan::new(!detach && p.terminal() == Some(true) && console_socket.is_none())?;
            let console = match pty.theirs {
                Some(t) => Some(t),
                None => connect_console(console_socket.as_deref())?,
            };
            let stdio = Stdio {
                fds: None,
                console_socket: console,
            };
            let spawned = c.exec(&spec, p, stdio)?;
            if let Some(mine) = pty.mine {
                let master = recv_pty_master(&mine, Duration::from_secs(10))?;
                forward_signals_to(spawned.pid);
                return proxy_terminal(master, spawned.pid);
            }
            if let Some(path) = pid_file {
                std::fs::write(&path, spawned.pid.to_string())
                    .map_err(|e| format!("write pid file {}: {e}", path.display()))?;
            }
            if detach {
                return Ok(0);
            }
            forward_signals_to(spawned.pid);
            Ok(wait_exit_code(spawned.pid)?)
        }
        Cmd::Features => {
            outln!("{}", serde_json::to_string_pretty(&features())?);
            Ok(0)
        }
        Cmd::Pause { id } => {
            Container::load(&root, &id)?.set_paused(true)?;
            Ok(0)
        }
        Cmd::Resume { id } => {
            Container::load(&root, &id)?.set_paused(false)?;
            Ok(0)
        }
        Cmd::Update { resources, id } => {
            let data = if resources == Path::new("-") {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)?;
                v
            } else {
                std::fs::read(&resources)
                    .map_err(|e| format!("read {}: {e}", resources.display()))?
            };
            let r: oci_spec::runtime::LinuxResources =
                serde_json::from_slice(&data).map_err(|e| format!("parse resources: {e}"))?;
            Container::load(&root, &id)?.update(&r)?;
            Ok(0)
        }
        Cmd::Ps { id, .. } => {
            let c = Container::load(&root, &id)?;
            let pids = match c.cgroup() {
                Some(cg) => cg.procs()?,
                None => vec![c.pid()],
            };
            outln!("{}", serde_json::to_string(&pids)?);
            Ok(0)
        }
        Cmd::Events { id, .. } => {
            let c = Container::load(&root, &id)?;
            let stats = c.stats()?;
            outln!(
                "{}",
                serde_json::json!({ "type": "stats", "id": id, "data": stats })
            );
            Ok(0)
        }
        Cmd::List => {
            outln!("{:<24} {:<8} {:<10} BUNDLE", "ID", "PID", "STATUS");
            for id in Container::list(&root)? {
                if let Ok(c) = Container::load(&root, &id) {
                    outln!(
                        "{:<24} {:<8} {:<10} {}",
                        id,
                        c.pid(),
                        c.status(),
                        c.state().bundle.display()
                    );
                }
            }
            Ok(0)
        }
    }
}
