//! The container lifecycle, runc-style: create → start → kill → state → delete, plus
//! exec into a running container. State is a JSON file under `<root>/<id>/`.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use oci_spec::runtime::{Process, Spec};

use crate::cgroups::{Cgroup, CgroupError, Stats};
use crate::pid::Pid;
use crate::process::{self, ProcessError, SpawnConfig, Spawned, StartMode, Stdio};

/// Where cgroup hierarchies are mounted on the host.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Lifecycle failures.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid container id {0:?}: use letters, digits, '_', '-' and '.'")]
    InvalidId(String),
    #[error("container {0} already exists")]
    AlreadyExists(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {id} is {status}; {action} needs it {wanted}")]
    WrongState {
        id: String,
        status: Status,
        action: &'static str,
        wanted: &'static str,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path}: {source}")]
    StateFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("start: container init did not take the start signal within {0:?}")]
    StartTimeout(Duration),
    #[error("{what}: {errno}")]
    Sys {
        what: &'static str,
        #[source]
        errno: Errno,
    },
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ContainerError + 'a {
    move |source| ContainerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// OCI status of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

/// What is persisted in `<root>/<id>/state.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct State {
    pub id: String,
    pub status: Status,
    /// Init pid in the host pid namespace (0 before creation finished).
    pub pid: i32,
    /// Start time of the init (field 22 of /proc/pid/stat), to detect pid reuse.
    pub pid_start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// Seconds since the epoch when created.
    pub created: u64,
    pub cgroup: Option<Cgroup>,
    /// Exit code when known (the caller waited for the init and recorded it).
    pub exit_code: Option<i32>,
    pub annotations: std::collections::HashMap<String, String>,
    /// The spec's hooks (poststart and poststop run from `start` and `delete`).
    #[serde(default)]
    pub hooks: Option<oci_spec::runtime::Hooks>,
}

/// Options for [`Container::create`].
#[derive(Debug)]
pub struct CreateOptions {
    /// Container id.
    pub id: String,
    /// State root (like runc's `--root`).
    pub root: PathBuf,
    /// Bundle directory (relative `root.path` is resolved against it).
    pub bundle: PathBuf,
    /// The spec.
    pub spec: Spec,
    /// Standard streams / console socket.
    pub stdio: Stdio,
    /// Extra fds passed through (3..3+n).
    pub preserve_fds: u32,
    /// Cgroup hierarchy root (normally [`CGROUP_ROOT`]).
    pub cgroup_root: PathBuf,
}

/// A container known to the state root.
#[derive(Debug)]
pub struct Container {
    dir: PathBuf,
    state: State,
}

/// Ids become directory names: keep them boring.
pub fn validate_id(id: &str) -> Result<(), ContainerError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(ContainerError::InvalidId(id.to_string()))
    }
}

/// Start time (clock ticks since boot) of `pid`, and whether it is a zombie.
fn proc_start_time(pid: i32) -> Option<(u64, bool)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = fields.first() == Some(&"Z") || fields.first() == Some(&"X");
    let start = fields.get(19)?.parse().ok()?;
    Some((start, zombie))
}

fn write_state(dir: &Path, state: &State) -> Result<(), ContainerError> {
    let path = dir.join("state.json");
    let data = serde_json::to_vec_pretty(state).map_err(|source| ContainerError::StateFile {
        path: path.clone(),
        source,
    })?;
    // Unique temp per writer (a monitor recording the exit may race with `start`), 0600
    // (the state dir must stay traversable: the init opens exec.fifo after switching
    // user), no temp file left when the write fails. No fsync: the state root is
    // volatile (like runc's /run/runc); atomicity is what matters, and rename gives it.
    berth_durable::replace_atomic(&path, &data).map_err(io_err("write state", &path))
}

impl Container {
    /// Create the container: state dir, cgroup, namespaces, rootfs; the init waits for
    /// [`Container::start`]. Must be called from a single-threaded process. On failure
    /// nothing is left behind (processes, cgroup, state dir).
    pub fn create(opts: CreateOptions) -> Result<Container, ContainerError> {
        validate_id(&opts.id)?;
        let dir = opts.root.join(&opts.id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&opts.root)
            .map_err(io_err("create state root", &opts.root))?;
        match fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ContainerError::AlreadyExists(opts.id));
            }
            Err(e) => return Err(io_err("create state dir", &dir)(e)),
        }
        let res = Self::create_in(&dir, opts);
        if res.is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        res
    }

    fn create_in(dir: &Path, opts: CreateOptions) -> Result<Container, ContainerError> {
        let spec = &opts.spec;
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| ContainerError::InvalidSpec("no root".into()))?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            opts.bundle.join(root.path())
        };
        let rootfs = fs::canonicalize(&rootfs).map_err(io_err("rootfs", &rootfs))?;
        let mut state = State {
            id: opts.id.clone(),
            status: Status::Creating,
            pid: 0,
            pid_start_time: 0,
            bundle: opts.bundle.clone(),
            rootfs: rootfs.clone(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            cgroup: None,
            exit_code: None,
            annotations: spec.annotations().clone().unwrap_or_default(),
            hooks: spec.hooks().clone(),
        };
        let linux = spec.linux().as_ref();
        let cg_path = linux
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cgroup = Cgroup::new(&opts.cgroup_root, &cg_path, &opts.id)?;
        state.cgroup = Some(cgroup.clone());
        write_state(dir, &state)?;

        let fifo = dir.join("exec.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(
            |errno| ContainerError::Sys {
                what: "mkfifo exec.fifo",
                errno,
            },
        )?;
        // Writable by all (like runc's 0622): the init may have switched to an
        // unprivileged user by the time it opens the fifo. Only `start` reads it.
        fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
            .map_err(io_err("chmod exec.fifo", &fifo))?;
        // The init holds the fifo itself (O_PATH), never the state directory: a
        // directory fd of the host in the init is a way out of the container.
        let fifo_fd: OwnedFd = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(&fifo)
            .map_err(io_err("open exec fifo", &fifo))?
            .into();

        let spawned = (|| {
            cgroup.create()?;
            if let Some(r) = linux.and_then(|l| l.resources().as_ref()) {
                let devices =
                    crate::cgroups::DevicePolicy::from_annotations(spec.annotations().as_ref());
                cgroup.apply_with(r, devices)?;
            }
            let cfg = SpawnConfig {
                spec,
                rootfs,
                exec_in: None,
                start: StartMode::WaitFifo(fifo_fd),
                stdio: opts.stdio,
                preserve_fds: opts.preserve_fds,
                hook_state: spec.hooks().as_ref().map(|_| {
                    serde_json::json!({
                        "ociVersion": spec.version(),
                        "id": opts.id,
                        "status": "creating",
                        "bundle": opts.bundle,
                        "annotations": spec.annotations().clone().unwrap_or_default(),
                    })
                }),
            };
            let mut join = |pid: i32| cgroup.add_pid(pid).map_err(|e| e.to_string());
            Ok::<Spawned, ContainerError>(process::spawn(cfg, &mut join)?)
        })();
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                let _ = cgroup.remove();
                return Err(e);
            }
        };
        state.pid = spawned.pid;
        state.pid_start_time = proc_start_time(spawned.pid).map_or(0, |(t, _)| t);
        state.status = Status::Created;
        write_state(dir, &state)?;
        Ok(Container {
            dir: dir.to_path_buf(),
            state,
        })
    }

    /// Load a container from the state root.
    pub fn load(root: &Path, id: &str) -> Result<Container, ContainerError> {
        validate_id(id)?;
        let dir = root.join(id);
        let path = dir.join("state.json");
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ContainerError::NotFound(id.to_string()));
            }
            Err(e) => return Err(io_err("read state", &path)(e)),
        };
        let state: State = serde_json::from_slice(&data)
            .map_err(|source| ContainerError::StateFile { path, source })?;
        let mut c = Container { dir, state };
        c.refresh();
        Ok(c)
    }

    /// Ids of every container under `root`.
    pub fn list(root: &Path) -> Result<Vec<String>, ContainerError> {
        let mut ids = Vec::new();
        let rd = match fs::read_dir(root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(io_err("list state root", root)(e)),
        };
        for e in rd.flatten() {
            if e.path().join("state.json").exists() {
                ids.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The init is this process's child (same start time as recorded, parent is us).
    fn is_our_child(&self) -> bool {
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.state.pid)) else {
            return false;
        };
        let Some(close) = stat.rfind(')') else {
            return false;
        };
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ppid: Option<u32> = fields.get(1).and_then(|p| p.parse().ok());
        let start: Option<u64> = fields.get(19).and_then(|p| p.parse().ok());
        ppid == Some(std::process::id()) && start == Some(self.state.pid_start_time)
    }

    /// Recompute the status from the kernel (the init may have died meanwhile).
    fn refresh(&mut self) {
        if self.state.status == Status::Creating || self.state.pid <= 0 {
            return;
        }
        let alive = match proc_start_time(self.state.pid) {
            Some((start, zombie)) => start == self.state.pid_start_time && !zombie,
            None => false,
        };
        self.state.status = if !alive {
            Status::Stopped
        } else if self.dir.join("exec.fifo").exists() {
            Status::Created
        } else {
            Status::Running
        };
    }

    /// The persisted state, refreshed.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Current status.
    pub fn status(&self) -> Status {
        self.state.status
    }

    /// Init pid.
    pub fn pid(&self) -> i32 {
        self.state.pid
    }

    /// The container's cgroup.
    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.state.cgroup.as_ref()
    }

    /// The OCI runtime state document (what `runc state` prints).
    pub fn oci_state(&self) -> serde_json::Value {
        let pid = if self.state.status == Status::Stopped {
            0
        } else {
            self.state.pid
        };
        serde_json::json!({
            "ociVersion": "1.2.0",
            "id": self.state.id,
            "status": self.state.status,
            "pid": pid,
            "bundle": self.state.bundle,
            "rootfs": self.state.rootfs,
            "created": self.state.created,
            "annotations": self.state.annotations,
        })
    }

    /// Let the init exec the user process.
    pub fn start(&mut self) -> Result<(), ContainerError> {
        self.require(Status::Created, "start", "created")?;
        let fifo_path = self.dir.join("exec.fifo");
        let fifo = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&fifo_path)
            .map_err(io_err("open exec fifo", &fifo_path))?;
        let timeout = Duration::from_secs(10);
        let deadline = Instant::now() + timeout;
        loop {
            let mut pfd = [nix::poll::PollFd::new(
                fifo.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(100u16));
            let mut b = [0u8; 1];
            match nix::unistd::read(&fifo, &mut b) {
                Ok(1) => break,
                Ok(_) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                Err(errno) => {
                    return Err(ContainerError::Sys {
                        what: "read exec fifo",
                        errno,
                    });
                }
            }
            self.refresh();
            if self.state.status == Status::Stopped {
                return Err(self.wrong_state("start", "created"));
            }
            if Instant::now() > deadline {
                return Err(ContainerError::StartTimeout(timeout));
            }
        }
        // The status is derived from the fifo and the pid: nothing to persist (and a
        // monitor may be recording the exit of a short-lived init right now).
        let _ = fs::remove_file(&fifo_path);
        self.state.status = Status::Running;
        // OCI: a failing poststart hook must not fail start (the runtime only warns).
        if let Some(list) = self
            .state
            .hooks
            .as_ref()
            .and_then(|h| h.poststart().clone())
        {
            let _ = crate::hooks::run_hooks(&list, &self.oci_state());
        }
        Ok(())
    }

    /// The error for `action` refused in the container's current state.
    fn wrong_state(&self, action: &'static str, wanted: &'static str) -> ContainerError {
        ContainerError::WrongState {
            id: self.state.id.clone(),
            status: self.state.status,
            action,
            wanted,
        }
    }

    fn require(
        &self,
        status: Status,
        action: &'static str,
        wanted: &'static str,
    ) -> Result<(), ContainerError> {
        if self.state.status == status {
            Ok(())
        } else {
            Err(self.wrong_state(action, wanted))
        }
    }

    /// Send `signal` to the init, or with `all` to every process of the container.
    pub fn kill(&self, signal: i32, all: bool) -> Result<(), ContainerError> {
        if all && let Some(cg) = &self.state.cgroup {
            return Ok(cg.kill_all(signal)?);
        }
        if self.state.status == Status::Stopped {
            return Err(self.wrong_state("kill", "created or running"));
        }
        let sig = Signal::try_from(signal).map_err(|errno| ContainerError::Sys {
            what: "signal number",
            errno,
        })?;
        // A container whose creation was cut short has no init pid (0) recorded:
        // kill(2) with 0 or -1 would signal the caller's process group or every process.
        let Some(init) = self.init_pid() else {
            return Err(self.wrong_state(
                "kill",
                "an init process (its creation did not get that far)",
            ));
        };
        init.kill(sig).map_err(|errno| ContainerError::Sys {
            what: "kill",
            errno,
        })
    }

    /// The init's pid, if one was recorded (a container whose creation was cut short
    /// has 0). Never 0 or negative: kill(2) and waitpid(2) read those as groups.
    fn init_pid(&self) -> Option<Pid> {
        Pid::new(self.state.pid)
    }

    /// Record the init's exit code (for callers that waited for it).
    pub fn record_exit(&mut self, code: i32) -> Result<(), ContainerError> {
        self.state.exit_code = Some(code);
        self.state.status = Status::Stopped;
        write_state(&self.dir, &self.state)
    }

    /// Cgroup stats.
    pub fn stats(&self) -> Result<Stats, ContainerError> {
        match &self.state.cgroup {
            Some(cg) => Ok(cg.stats()?),
            None => Ok(Stats::default()),
        }
    }

    /// Update resources of the live container.
    pub fn update(&self, r: &oci_spec::runtime::LinuxResources) -> Result<(), ContainerError> {
        match &self.state.cgroup {
            Some(cg) => Ok(cg.apply(r)?),
            None => Ok(()),
        }
    }

    /// Freeze or thaw all processes.
    pub fn set_paused(&self, paused: bool) -> Result<(), ContainerError> {
        match &self.state.cgroup {
            Some(cg) => Ok(cg.set_frozen(paused)?),
            None => Ok(()),
        }
    }

    /// Remove the container. A running/created one needs `force` (everything is then
    /// SIGKILLed and waited for).
    pub fn delete(mut self, force: bool) -> Result<(), ContainerError> {
        self.refresh();
        if self.state.status != Status::Stopped {
            if !force {
                return Err(self.wrong_state("delete", "stopped (or --force)"));
            }
            // A pidfd tells us exactly when the init is gone, child of ours or not.
            let pidfd = rustix::process::Pid::from_raw(self.state.pid).and_then(|p| {
                rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
            });
            let _ = self.kill(libc::SIGKILL, true);
            if let Some(init) = self.init_pid() {
                let _ = init.kill(Signal::SIGKILL);
            }
            if let Some(fd) = &pidfd {
                let mut pfd = [nix::poll::PollFd::new(
                    fd.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(10_000u16));
            }
        }
        // Wait for the processes to be gone (reaping the init if it is our child).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Reap the init only if it is really our child: a blind waitpid on a reused
            // pid could steal the exit status of a caller's unrelated child.
            if let Some(init) = self.init_pid()
                && self.is_our_child()
            {
                let _ = init.wait(Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            }
            self.refresh();
            let procs_left = self
                .state
                .cgroup
                .as_ref()
                .and_then(|c| c.procs().ok())
                .is_some_and(|p| !p.is_empty());
            // Without an init pid there is nothing to wait for but the cgroup's processes.
            let init_gone = self.state.status == Status::Stopped || self.init_pid().is_none();
            if (init_gone && !procs_left) || Instant::now() > deadline {
                break;
            }
            if procs_left && force {
                let _ = self.kill(libc::SIGKILL, true);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Some(cg) = &self.state.cgroup {
            cg.remove()?;
        }
        // OCI: poststop failures are warnings only; the container is deleted regardless.
        if let Some(list) = self.state.hooks.as_ref().and_then(|h| h.poststop().clone()) {
            let _ = crate::hooks::run_hooks(&list, &self.oci_state());
        }
        fs::remove_dir_all(&self.dir).map_err(io_err("remove state dir", &self.dir))
    }

    /// Run `process` inside the running container: join its namespaces and cgroup,
    /// apply the process's user, capabilities, no_new_privs and seccomp, then exec.
    /// Returns the pid (a child of the caller, which should wait for it). Must be
    /// called from a single-threaded process.
    pub fn exec(
        &self,
        spec: &Spec,
        process: Process,
        stdio: Stdio,
    ) -> Result<Spawned, ContainerError> {
        if self.state.status != Status::Running && self.state.status != Status::Created {
            return Err(self.wrong_state("exec", "running"));
        }
        let mut spec = spec.clone();
        spec.set_process(Some(process));
        let cfg = SpawnConfig {
            spec: &spec,
            rootfs: self.state.rootfs.clone(),
            exec_in: Some(self.state.pid),
            start: StartMode::Immediately,
            stdio,
            preserve_fds: 0,
            hook_state: None,
        };
        let cg = self.state.cgroup.clone();
        let mut join = |pid: i32| match &cg {
            Some(cg) => cg.add_pid(pid).map_err(|e| e.to_string()),
            None => Ok(()),
        };
        Ok(process::spawn(cfg, &mut join)?)
    }
}

/// Wait for a child process and turn its status into a shell-style exit code
/// (128 + signal for a killed process).
pub fn wait_exit_code(pid: i32) -> Result<i32, ContainerError> {
    use nix::sys::wait::WaitStatus;
    // waitpid(0) or waitpid(-1) would reap any child: never someone else's status.
    let Some(pid) = Pid::new(pid) else {
        return Err(ContainerError::Sys {
            what: "waitpid",
            errno: Errno::ECHILD,
        });
    };
    loop {
        match pid.wait(None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(errno) => {
                return Err(ContainerError::Sys {
                    what: "waitpid",
                    errno,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed kernel call keeps its errno as the cause, for the chain walkers (the
    /// monitor's report reads errnos from it); its text already names it.
    #[test]
    fn a_failed_kernel_call_has_its_errno_as_source() {
        let e = ContainerError::Sys {
            what: "mkfifo exec.fifo",
            errno: Errno::ENOSPC,
        };
        let source = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<Errno>());
        assert_eq!(source, Some(&Errno::ENOSPC));
        assert!(e.to_string().starts_with("mkfifo exec.fifo: ENOSPC"), "{e}");
    }

    #[test]
    fn ids_that_could_escape_the_state_root_are_rejected() {
        for bad in ["", ".", "..", "a/b", "../x", "a b"] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["abc", "a-b_c.1", "0123456789abcdef"] {
            validate_id(good).unwrap();
        }
    }

    #[test]
    fn proc_stat_parsing_survives_odd_command_names() {
        let me = std::process::id();
        let (start, zombie) = proc_start_time(i32::try_from(me).unwrap()).unwrap();
        assert!(start > 0);
        assert!(!zombie);
        assert!(proc_start_time(i32::MAX).is_none());
    }

    #[test]
    fn state_round_trips_and_missing_container_is_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c1");
        fs::create_dir_all(&dir).unwrap();
        let st = State {
            id: "c1".into(),
            status: Status::Created,
            pid: i32::MAX,
            pid_start_time: 1,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: 1,
            cgroup: None,
            exit_code: None,
            annotations: Default::default(),
            hooks: None,
        };
        write_state(&dir, &st).unwrap();
        // The pid does not exist: the loaded status is refreshed to stopped.
        let c = Container::load(tmp.path(), "c1").unwrap();
        assert_eq!(c.status(), Status::Stopped);
        assert_eq!(c.oci_state()["pid"], 0);
        assert!(matches!(
            Container::load(tmp.path(), "nope"),
            Err(ContainerError::NotFound(_))
        ));
        assert_eq!(Container::list(tmp.path()).unwrap(), vec!["c1".to_string()]);
        c.delete(false).unwrap();
        assert!(!dir.exists());
    }

    /// A container whose creation was cut short has no init pid (0) in its state.
    /// Deleting it (what berthd's recovery does) once sent SIGKILL to pid 0, that is
    /// to the caller's whole process group: berthd and whoever started it. Run in a
    /// child of this test binary, in a process group of its own, so the bug kills
    /// only that child.
    #[test]
    fn a_container_without_an_init_pid_is_deleted_without_signalling_anyone() {
        if std::env::var_os("BERTH_TEST_DELETE_WITHOUT_PID").is_some() {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("c0");
            fs::create_dir_all(&dir).unwrap();
            let st = State {
                id: "c0".into(),
                status: Status::Creating,
                pid: 0,
                pid_start_time: 0,
                bundle: "/b".into(),
                rootfs: "/b/rootfs".into(),
                created: 1,
                cgroup: None,
                exit_code: None,
                annotations: Default::default(),
                hooks: None,
            };
            write_state(&dir, &st).unwrap();
            let c = Container::load(tmp.path(), "c0").unwrap();
            assert!(matches!(
                c.kill(libc::SIGTERM, false),
                Err(ContainerError::WrongState { .. })
            ));
            let started = Instant::now();
            c.delete(true).unwrap();
            assert!(!dir.exists());
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "delete waited {:?} for an init that never existed",
                started.elapsed()
            );
            return;
        }
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().expect("current_exe");
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "container::tests::a_container_without_an_init_pid_is_deleted_without_signalling_anyone",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("BERTH_TEST_DELETE_WITHOUT_PID", "1")
            .process_group(0)
            .output()
            .expect("running the test in a child");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "child run failed ({:?}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
