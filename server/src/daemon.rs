//! Daemon start-up and shutdown: state directories, the single-instance lock, the Unix
//! socket, the gRPC server with reflection, and graceful stop on SIGTERM/SIGINT.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_proto::v1::image_service_server::ImageServiceServer;
use berth_proto::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;

use crate::config::Config;
use crate::cri::CriService;
use crate::cri::trace::{InFlight, RpcTraceLayer};
use crate::store;

/// Largest request berthd decodes; kubelet's CRI client uses the same limit.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// How long in-flight RPCs may run after a stop signal before berthd exits anyway
/// (long-lived streams such as GetContainerEvents never finish on their own).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Once no handler runs, how long responses get to reach their clients before berthd
/// exits without waiting for clients to close idle connections.
const RESPONSE_FLUSH: Duration = Duration::from_millis(200);
/// After "berthd stopped", how long the runtime may take to wind down its threads
/// before the process exits regardless.
const EXIT_GRACE: Duration = Duration::from_secs(3);

/// A start-up failure, each naming the path or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A state directory cannot be created or written.
    #[error("{what} {path} is unusable: {source}")]
    StateDir {
        /// `root_dir`, `state_dir`, ...
        what: &'static str,
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another berthd holds the state dir.
    #[error("another berthd{pid} is already using state dir {state_dir}")]
    AlreadyRunning {
        /// The state dir.
        state_dir: PathBuf,
        /// " (pid N)" when known.
        pid: String,
    },
    /// A live process serves the socket path.
    #[error(
        "socket {0} is in use by another live server (is another berthd running?); refusing to replace it"
    )]
    SocketInUse(PathBuf),
    /// Something that is not a socket sits at the socket path.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The socket cannot be created.
    #[error("cannot listen on socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The state on disk could not be loaded.
    #[error("recovering state: {0}")]
    Recover(String),
    /// gRPC reflection could not be set up (a build defect).
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(String),
    /// The streaming server (exec, attach, port-forward) could not start.
    #[error("streaming server: {0}")]
    Stream(String),
    /// The Prometheus endpoint (`metrics.address`) could not start.
    #[error("metrics endpoint: {0}")]
    Metrics(String),
    /// The admin socket (`berthd image` commands) could not be created.
    #[error("admin socket {path}: {source}")]
    Admin {
        /// `<state_dir>/admin.sock`.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Held for the daemon's lifetime: proves this process owns the state dir.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

/// Creates the state directories and checks that they are writable.
pub fn prepare_dirs(config: &Config) -> Result<(), StartError> {
    for (what, dir) in [
        ("root_dir", config.root_dir.clone()),
        ("state_dir", config.state_dir.clone()),
        ("image store", config.image_store_dir()),
    ] {
        create_private_dir(&dir)
            .and_then(|()| probe_writable(&dir))
            .map_err(|source| StartError::StateDir {
                what,
                path: dir,
                source,
            })?;
    }
    // Closed to other users (CVE-2021-41091): listing them would show container and
    // pod ids, and their contents hold environments, rootfs and logs. They stay
    // traversable (0711) for containers in user namespaces, whose set-up runs as a
    // host uid other than 0 and must reach their rootfs, pod files and pinned
    // namespaces; each container's and pod's own dir is then 0700 (or 0710 for its
    // user namespace's root group). Modes are set on existing dirs too: older
    // berthds made them 0755.
    let dirs = [
        ("root_dir", &config.root_dir, &["containers", "pods"][..]),
        ("state_dir", &config.state_dir, &["rt", "ns", "pods"][..]),
    ];
    for (what, base, subdirs) in dirs {
        let all = std::iter::once(base.clone()).chain(subdirs.iter().map(|sub| base.join(sub)));
        for dir in all {
            store::ensure_dir(&dir, store::TRAVERSE_ONLY_DIR).map_err(|source| {
                StartError::StateDir {
                    what,
                    path: dir,
                    source,
                }
            })?;
        }
    }
    repair_record_modes(config);
    Ok(())
}

/// Start-up repair of what older berthds left open: each container's dir, bundle
/// and records, each pod's records. Best effort: a failure is logged and the
/// daemon starts (the container still works; it is only more visible).
fn repair_record_modes(config: &Config) {
    let warn = |path: &Path, e: io::Error| {
        tracing::warn!(path = %path.display(), error = %e, "could not restrict the mode");
    };
    // A dir more open than 0710 becomes 0700; a userns one's 0710 stays.
    let own_dir = |dir: &Path| {
        let open = fs::symlink_metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o067 != 0);
        if open && let Err(e) = store::restrict(dir, store::PRIVATE_DIR) {
            warn(dir, e);
        }
    };
    for dir in store::record_dirs(&config.root_dir.join("containers")).unwrap_or_default() {
        own_dir(&dir);
        for (sub, mode) in [
            ("bundle", store::PRIVATE_DIR),
            ("work", store::PRIVATE_DIR),
            ("bundle/config.json", 0o600),
            ("config.pb", 0o600),
            ("record.json", 0o600),
            ("exit.json", 0o600),
            ("console.log", 0o600),
        ] {
            let path = dir.join(sub);
            if let Err(e) = store::restrict(&path, mode) {
                warn(&path, e);
            }
        }
    }
    for dir in store::record_dirs(&config.root_dir.join("pods")).unwrap_or_default() {
        own_dir(&dir);
        for (path, mode) in [
            (dir.join("config.pb"), 0o600),
            (dir.join("record.json"), 0o600),
        ] {
            if let Err(e) = store::restrict(&path, mode) {
                warn(&path, e);
            }
        }
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    store::ensure_dir(dir, store::TRAVERSE_ONLY_DIR)
}

fn probe_writable(dir: &Path) -> io::Result<()> {
    // access(2) alone lies on read-only mounts for root; create and remove a file.
    let probe = dir.join(".berthd-write-probe");
    File::create(&probe)?;
    fs::remove_file(&probe)
}

/// Takes the single-instance lock in the state dir and records our pid in it.
pub fn lock_instance(config: &Config) -> Result<InstanceLock, StartError> {
    let path = config.state_dir.join("berthd.lock");
    let dir_error = |source| StartError::StateDir {
        what: "state_dir",
        path: config.state_dir.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(dir_error)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(StartError::AlreadyRunning {
                state_dir: config.state_dir.clone(),
                pid: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            });
        }
        Err(e) => return Err(dir_error(e.into())),
    }
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(dir_error)?;
    file.set_len(0).map_err(dir_error)?;
    file.rewind().map_err(dir_error)?;
    writeln!(file, "{}", std::process::id()).map_err(dir_error)?;
    Ok(InstanceLock { _file: file })
}

/// Binds the gRPC socket: creates its directory, replaces a stale socket file, refuses
/// to steal one a live server answers on, and applies the configured mode.
pub fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener, StartError> {
    let socket_error = |source| StartError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)
            .map_err(socket_error)?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if StdUnixStream::connect(path).is_ok() {
                return Err(StartError::SocketInUse(path.to_path_buf()));
            }
            tracing::info!(socket = %path.display(), "replacing stale socket");
            fs::remove_file(path).map_err(socket_error)?;
        }
        Ok(_) => return Err(StartError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(socket_error(e)),
    }
    let listener = UnixListener::bind(path).map_err(socket_error)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(socket_error)?;
    Ok(listener)
}

/// Runs berthd until SIGTERM or SIGINT, then stops accepting, lets in-flight RPCs
/// finish (up to a grace period) and removes the socket. `notify` (systemd's
/// NOTIFY_SOCKET) hears READY=1 once the CRI socket serves and STOPPING=1 at the stop
/// signal.
pub async fn run(
    config: Config,
    notify: Option<crate::notify::Notifier>,
) -> Result<(), StartError> {
    run_with_reload(config, notify, None).await
}

/// [`run`], and on SIGHUP reads the configuration again through `reload` and applies
/// what can change live (see `reload.rs`).
pub async fn run_with_reload(
    config: Config,
    notify: Option<crate::notify::Notifier>,
    reload: Option<crate::reload::Loader>,
) -> Result<(), StartError> {
    if matches!(config.cgroup_driver, crate::config::CgroupDriver::Systemd)
        && !crate::systemd::systemd_running()
    {
        tracing::warn!(
            "{}; every RunPodSandbox will fail",
            crate::systemd::needs_systemd_message()
        );
    }
    prepare_dirs(&config)?;
    let _lock = lock_instance(&config)?;
    if config.allow_degraded_device_filter {
        tracing::warn!(
            "allow_degraded_device_filter is on: on cgroup v2, containers whose device rules cannot be loaded run WITHOUT them and can open any device node they reach"
        );
    }
    let listener = bind_socket(&config.grpc.socket, config.grpc.socket_mode)?;
    let socket = config.grpc.socket.clone();

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(berth_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(berth_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StartError::Reflection(e.to_string()))?;

    let stream_addr = config
        .stream
        .socket_addr()
        .map_err(|e| StartError::Stream(e.to_string()))?;
    let metrics_addr = config
        .metrics
        .socket_addr()
        .map_err(|e| StartError::Metrics(e.to_string()))?;
    let running = config.clone();
    let config_state_dir = config.state_dir.clone();
    let cri =
        CriService::new(config).map_err(|e| StartError::Recover(format!("image store: {e}")))?;
    cri.recover()
        .await
        .map_err(|e| StartError::Recover(crate::cri::error::message(&e)))?;
    let stream_url = cri.start_streaming(stream_addr).await.map_err(|e| {
        let mut msg = e.to_string();
        if let Some(cause) = std::error::Error::source(&e) {
            msg = format!("{msg}: {cause}");
        }
        StartError::Stream(msg)
    })?;
    tracing::info!(url = %stream_url, "streaming server listening");
    // Dropped (and so stopped) when run() returns, or replaced by a reload.
    let metrics = match metrics_addr {
        Some(addr) => {
            let server =
                crate::prom::MetricsServer::start(addr, crate::prom::global(), cri.state_source())
                    .await
                    .map_err(|e| StartError::Metrics(e.to_string()))?;
            tracing::info!(address = %server.local_addr(), "metrics endpoint listening on /metrics");
            Some(server)
        }
        None => None,
    };
    // SIGHUP's default action would end berthd: it is handled even without a loader.
    let _reloader = tokio::spawn(reload_on_sighup(cri.clone(), running, reload, metrics));
    // `berthd image import|list|rm|export` while the daemon runs; aborted (and its
    // socket removed) when run() returns.
    let admin_socket = crate::admin::socket_path(&config_state_dir);
    let admin = crate::admin::serve(&config_state_dir, cri.image_store()).map_err(|source| {
        StartError::Admin {
            path: admin_socket.clone(),
            source,
        }
    })?;
    let _admin = AbortOnDrop(admin, admin_socket);
    let runtime =
        RuntimeServiceServer::new(cri.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let image = ImageServiceServer::new(cri).max_decoding_message_size(MAX_MESSAGE_BYTES);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let in_flight = std::sync::Arc::new(InFlight::default());
    let server = tonic::transport::Server::builder()
        .layer(RpcTraceLayer::new(std::sync::Arc::clone(&in_flight)))
        .add_service(runtime)
        .add_service(image)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(crate::listener::Incoming::new(listener), {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        });

    tracing::info!(socket = %socket.display(), version = env!("CARGO_PKG_VERSION"), "berthd serving");
    // The listener is bound and recovery done: a client connecting from now on is
    // answered as soon as the select! below polls the server (its first poll).
    let mut server = std::pin::pin!(server);
    if let Some(n) = &notify {
        let first_poll = std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(r) = server.as_mut().poll(cx) {
                return std::task::Poll::Ready(Some(r));
            }
            std::task::Poll::Ready(None)
        });
        if let Some(r) = first_poll.await {
            return finish(&socket, r.map_err(|e| StartError::Serve(e.to_string())));
        }
        n.ready(&format!("serving CRI on {}", socket.display()));
    }
    tokio::spawn(async move {
        let signal = wait_for_stop_signal().await;
        tracing::info!(%signal, "stopping: no new connections, finishing in-flight RPCs");
        if let Some(n) = &notify {
            n.stopping(&format!("stopping on {signal}"));
        }
        let _ = stop_tx.send(true);
    });

    // After the stop signal tonic stops accepting and drains connections; we exit as
    // soon as the handlers in flight are done, without waiting on clients that keep
    // idle connections open, and after the grace period in any case.
    let mut stopping = stop_rx;
    let result = tokio::select! {
        r = &mut server => r.map_err(|e| StartError::Serve(e.to_string())),
        () = async {
            let _ = stopping.wait_for(|stop| *stop).await;
            if tokio::time::timeout(SHUTDOWN_GRACE, in_flight.wait_idle()).await.is_err() {
                tracing::warn!(
                    grace_secs = SHUTDOWN_GRACE.as_secs(),
                    in_flight = in_flight.count(),
                    "in-flight RPCs did not finish in time; exiting"
                );
            }
            tokio::time::sleep(RESPONSE_FLUSH).await;
        } => Ok(()),
    };
    finish(&socket, result)
}

/// Stops the admin socket's accept task and removes the socket.
struct AbortOnDrop(tokio::task::JoinHandle<()>, PathBuf);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
        let _ = fs::remove_file(&self.1);
    }
}

/// Removes the socket after the server stopped.
fn finish(socket: &Path, result: Result<(), StartError>) -> Result<(), StartError> {
    if let Err(e) = fs::remove_file(socket)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(socket = %socket.display(), error = %e, "could not remove socket");
    }
    tracing::info!("berthd stopped");
    exit_within(EXIT_GRACE, i32::from(result.is_err()));
    result
}

/// Makes sure the process ends within `grace` of now, exiting with `code`. Dropping
/// the tokio runtime after run() waits for every worker and blocking thread; one
/// stuck in a syscall on something an image or a peer controls (issue 16: an open(2)
/// of a FIFO) would keep berthd alive forever after it said it stopped.
fn exit_within(grace: Duration, code: i32) {
    let spawned = std::thread::Builder::new()
        .name("berthd-exit".into())
        .spawn(move || {
            std::thread::sleep(grace);
            tracing::warn!(
                grace_ms = grace.as_millis(),
                "a handler thread is still busy after shutdown; exiting without it"
            );
            std::process::exit(code);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the exit watchdog");
    }
}

/// Each SIGHUP: read the configuration again and apply what can change live; log
/// which changed keys need a restart. A configuration that does not load, or whose
/// log filter or metrics address is unusable, leaves the running one in force.
async fn reload_on_sighup(
    cri: CriService,
    mut running: Config,
    loader: Option<crate::reload::Loader>,
    mut metrics: Option<crate::prom::MetricsServer>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot handle SIGHUP: configuration reload is off");
        return;
    };
    while hup.recv().await.is_some() {
        let Some(load) = &loader else {
            tracing::warn!("SIGHUP: this berthd has no configuration source to reload");
            continue;
        };
        let read = match load() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "configuration reload failed; the running configuration stays in force");
                continue;
            }
        };
        let mut plan = match crate::reload::plan(&running, &read) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "configuration reload failed; the running configuration stays in force");
                continue;
            }
        };
        if let Err(e) = crate::reload::apply_log_level(&plan) {
            tracing::error!(error = %e, "configuration reload failed; the running configuration stays in force");
            continue;
        }
        if plan.live.iter().any(|k| k == "metrics.address") {
            match restart_metrics(&cri, &plan.config, metrics.take()).await {
                Ok(server) => metrics = server,
                Err((e, old)) => {
                    // The old endpoint keeps serving; the rest of the reload applies.
                    tracing::error!(error = %e, "metrics.address not changed");
                    metrics = old;
                    plan.config.metrics = running.metrics.clone();
                    plan.live.retain(|k| k != "metrics.address");
                    plan.need_restart.push("metrics.address".into());
                }
            }
        }
        cri.apply_live_config(&plan);
        if plan.live.is_empty() && plan.need_restart.is_empty() {
            tracing::info!("SIGHUP: configuration reloaded, nothing changed");
        } else {
            tracing::info!(applied = ?plan.live, "SIGHUP: configuration reloaded");
        }
        if !plan.need_restart.is_empty() {
            tracing::warn!(
                keys = ?plan.need_restart,
                "these changed configuration keys take effect only after a restart of berthd; their running values stay"
            );
        }
        running = plan.config;
    }
}

/// Starts the metrics endpoint on `config`'s address in place of `old`. On failure
/// returns the error and `old`, still serving when it could be kept.
async fn restart_metrics(
    cri: &CriService,
    config: &Config,
    old: Option<crate::prom::MetricsServer>,
) -> Result<Option<crate::prom::MetricsServer>, (String, Option<crate::prom::MetricsServer>)> {
    let addr = match config.metrics.socket_addr() {
        Ok(a) => a,
        Err(e) => return Err((e.to_string(), old)),
    };
    let old_addr = old.as_ref().map(|s| s.local_addr());
    // The new address may be the old port on another IP, or the same: free it first.
    drop(old);
    let Some(addr) = addr else {
        tracing::info!("metrics endpoint turned off");
        return Ok(None);
    };
    match crate::prom::MetricsServer::start(addr, crate::prom::global(), cri.state_source()).await {
        Ok(server) => {
            tracing::info!(address = %server.local_addr(), "metrics endpoint listening on /metrics");
            Ok(Some(server))
        }
        Err(e) => {
            let back = match old_addr {
                Some(a) => {
                    crate::prom::MetricsServer::start(a, crate::prom::global(), cri.state_source())
                        .await
                        .ok()
                }
                None => None,
            };
            Err((format!("{addr}: {e}"), back))
        }
    }
}

async fn wait_for_stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default action (exit) still stops us.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_in(dir: &Path) -> Config {
        let mut c = Config {
            root_dir: dir.join("root"),
            state_dir: dir.join("state"),
            ..Config::default()
        };
        c.grpc.socket = dir.join("s/berth.sock");
        c
    }

    #[test]
    fn second_instance_on_the_same_state_dir_is_refused_with_the_pid() {
        let d = tempfile::tempdir().expect("tempdir");
        let c = config_in(d.path());
        prepare_dirs(&c).expect("dirs");
        let _first = lock_instance(&c).expect("first lock");
        let err = lock_instance(&c).expect_err("second lock must fail");
        let msg = err.to_string();
        assert!(msg.contains("already using state dir"), "{msg}");
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
    }

    #[test]
    fn state_dir_that_is_a_file_is_named() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut c = config_in(d.path());
        std::fs::write(d.path().join("file"), "x").expect("write");
        c.state_dir = d.path().join("file");
        let err = prepare_dirs(&c).expect_err("must fail");
        assert!(err.to_string().starts_with("state_dir "), "{err}");
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_and_live_one_is_not_stolen() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("x.sock");
        // A stale socket: bound, then the listener is gone.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let live = bind_socket(&path, 0o660).expect("stale socket is replaced");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let err = bind_socket(&path, 0o660).expect_err("live socket must not be stolen");
        assert!(matches!(err, StartError::SocketInUse(_)), "{err}");
        drop(live);
    }

    #[test]
    fn regular_file_at_socket_path_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("x.sock");
        std::fs::write(&path, "data").expect("write");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let err = rt
            .block_on(async { bind_socket(&path, 0o660) })
            .expect_err("must fail");
        assert!(matches!(err, StartError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&path).expect("untouched"), "data");
    }
}
