//! Running a sandbox (`RunPodSandbox`): reserving its name, then creating it step by step
//! (record, namespaces, files, infra, network), each step undone if a later one fails.

use super::*;

impl PodManager {
    /// `RunPodSandbox`: returns the new sandbox's id once it is ready.
    pub async fn run(&self, config: PodSandboxConfig, runtime_handler: String) -> Result<String> {
        // Unknown handlers are refused before anything is created.
        crate::container::handler::resolve(&self.config, &runtime_handler)?;
        let meta = validate(&config)?;
        let cgroup_parent = self.validate_cgroup_parent(&config)?;
        let name = sandbox_name(&meta);
        let id = store::new_id().map_err(|e| Error::io("generating a sandbox id", e))?;
        self.pods.reserve_name(&name, &id).map_err(|holder| {
            Error::already_exists(format!(
                "pod sandbox name {name:?} is already reserved by sandbox {holder}"
            ))
        })?;
        let sandbox = Arc::new(Sandbox {
            id: id.clone(),
            config,
            created_at: now_nanos(),
            runtime_handler,
            cgroup_parent,
            state: StateCell::new(SandboxState {
                phase: Phase::Creating,
                ips: Vec::new(),
                pins: PinnedNamespaces::default(),
                shm: None,
                network: None,
                infra_pid: None,
                infra_start: 0,
            }),
            op: tokio::sync::Mutex::new(()),
        });
        match self.create(&sandbox).await {
            Ok(()) => {
                self.pods.write().insert(id.clone(), sandbox);
                tracing::info!(pod = %id, name = %name, "pod sandbox ready");
                Ok(id)
            }
            Err(e) => {
                let state = sandbox.state();
                self.teardown(&sandbox, &state).await;
                self.remove_files(&id);
                self.pods.names().remove(&name);
                tracing::info!(name = %name, error = %e, "pod sandbox creation failed; rolled back");
                Err(e)
            }
        }
    }

    pub(super) async fn create(&self, sb: &Arc<Sandbox>) -> Result<()> {
        let dir = self.pod_dir(&sb.id);
        // Root's alone (CVE-2021-41091 class): the records hold the pod's config;
        // with a user namespace, its root's group may pass through to resolv.conf,
        // hosts and hostname, which its containers' set-up bind-mounts.
        let userns_root_gid = pod_user_mappings(&sb.namespace_options())
            .ok()
            .flatten()
            .and_then(|(_, gids)| {
                gids.iter()
                    .find(|m| m.container_id == 0 && m.length > 0)
                    .map(|m| m.host_id)
            });
        // Likewise its volatile files (its /dev/shm, a tmpfs others could otherwise
        // read and write) and its pinned namespaces.
        for d in [dir.clone(), self.volatile_dir(&sb.id), self.pin_dir(&sb.id)] {
            store::ensure_owned_dir(&d, userns_root_gid)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        store::write_atomic(&dir.join("config.pb"), &sb.config.encode_to_vec())
            .map_err(|e| Error::io("persisting the sandbox config", e))?;
        self.persist(sb)?;

        let opts = sb.namespace_options();
        let host_net = opts.network == i32::from(NamespaceMode::Node);
        let host_ipc = opts.ipc == i32::from(NamespaceMode::Node);
        let set = NamespaceSet {
            net: !host_net,
            ipc: !host_ipc,
            uts: !host_net,
        };
        let hostname = sb.config.hostname.clone();
        let mut sysctls: Vec<(String, String)> = sb
            .config
            .linux
            .as_ref()
            .map(|l| {
                l.sysctls
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        sysctls.sort();
        let pin_dir = self.pin_dir(&sb.id);
        let userns = match pod_user_mappings(&opts)? {
            Some((uids, gids)) => Some(namespaces::UserNamespaceRequest {
                uids,
                gids,
                holder: monitor_path()?,
            }),
            None => None,
        };
        let pins = tokio::task::spawn_blocking(move || {
            namespaces::create_and_pin(&pin_dir, set, &hostname, &sysctls, userns.as_ref())
        })
        .await
        .map_err(Error::task("namespace"))?
        .map_err(namespace_error)?;
        self.update_state(sb, |s| s.pins = pins.clone());

        if !host_ipc {
            let shm = self.volatile_dir(&sb.id).join("shm");
            files::mount_shm(&shm)
                .map_err(|e| Error::io(format!("mounting /dev/shm at {}", shm.display()), e))?;
            self.update_state(sb, |s| s.shm = Some(shm.clone()));
        }
        let resolv = files::resolv_conf(sb.config.dns_config.as_ref())
            .map_err(|e| Error::io("reading the host's /etc/resolv.conf", e))?;
        // resolv.conf, hostname and hosts are derived files, complete before any
        // container can see them and useless after a reboot (the pod is gone then): no
        // fsync (write_atomic's two per file were a good part of RunPodSandbox).
        std::fs::write(dir.join("resolv.conf"), resolv.as_bytes())
            .map_err(|e| Error::io("writing resolv.conf", e))?;
        let hostname = pod_hostname(sb);
        std::fs::write(dir.join("hostname"), format!("{hostname}\n").as_bytes())
            .map_err(|e| Error::io("writing hostname", e))?;

        if opts.pid == i32::from(NamespaceMode::Pod) {
            let (pid, mut unshare) = start_infra(pins.user.as_deref(), &sb.id).await?;
            // Pinned now, while `unshare` is unreaped: the infra is then known as its
            // child, and containers join the pin, never a /proc/<pid> path that a
            // reused pid would make name another process's namespace.
            let parent = unshare.id().unwrap_or(0);
            let dir = self.pin_dir(&sb.id);
            let pinned = tokio::task::spawn_blocking(move || {
                namespaces::pin_pid_namespace(&dir, pid, parent)
            })
            .await
            .map_err(Error::task("namespace"))
            .and_then(|r| r.map_err(namespace_error));
            if pinned.is_err() {
                // SIGKILL to unshare; --kill-child takes the infra with it.
                let _ = unshare.start_kill();
            }
            // Reap `unshare` whenever it ends (it lives as long as the infra).
            tokio::spawn(async move {
                let _ = unshare.wait().await;
            });
            let (pin, start) = pinned?;
            self.update_state(sb, |s| {
                s.infra_pid = Some(pid);
                s.infra_start = start;
                s.pins.pid = Some(pin);
            });
            self.persist(sb)?;
            if matches!(self.config.cgroup_driver, CgroupDriver::Systemd) {
                // The infra's own scope in the pod slice, as containers get theirs:
                // not left in berthd's cgroup, where a restart of berthd's service
                // would take it along.
                let unit = systemd::scope_name(&sb.id);
                let pid = u32::try_from(pid)
                    .map_err(|_| Error::internal(format!("infra pid {pid} out of range")))?;
                let props = systemd::scope_properties(
                    systemd::pod_slice(&sb.cgroup_parent),
                    pid,
                    format!("berth pod {} infra", sb.id),
                    &oci_spec::runtime::LinuxResources::default(),
                )?;
                systemd::client().start_scope(&unit, &props).await?;
            }
        }

        let mut ips = Vec::new();
        if let Some(netns) = &pins.net {
            let net = self.network()?;
            self.update_state(sb, |s| s.network = Some(net.name.clone()));
            if net.source == cni::ConfigSource::BuiltinNative {
                ips = self.native_add(sb, netns).await?;
            } else {
                let att = self.attachment(sb, netns);
                let result =
                    self.cni_runner()
                        .add(&net, &att)
                        .await
                        .map_err(|source| Error::Network {
                            id: sb.id.clone(),
                            source,
                        })?;
                ips = result_ips(&result);
            }
        }
        std::fs::write(dir.join("hosts"), files::hosts(&hostname, &ips).as_bytes())
            .map_err(|e| Error::io("writing hosts", e))?;
        self.update_state(sb, |s| {
            s.ips = ips.clone();
            s.phase = Phase::Ready;
        });
        self.persist(sb)
    }
}

/// Starts the pod's infra process: pid 1 of a new pid namespace that the pod's
/// containers join, reaping orphans. `unshare --pid --fork` does the namespace
/// creation in its own single-threaded process (berthd never forks containers);
/// the infra is `berth-monitor pause`, found next to berthd.
///
/// With `userns` (the pod's pinned user namespace) `unshare` runs inside it as its root,
/// so the pid namespace is owned by it and the pod's containers may mount /proc.
/// Returns the infra's pid and the `unshare` child, unreaped: the caller pins the
/// infra's pid namespace while the infra is still known as that child's child, then
/// reaps it.
pub(super) async fn start_infra(
    userns: Option<&Path>,
    sandbox_id: &str,
) -> Result<(i32, tokio::process::Child)> {
    let monitor = monitor_path()?;
    let mut cmd = tokio::process::Command::new(unshare_path());
    if let Some(pin) = userns {
        let fd = std::fs::File::open(pin).map_err(|e| {
            Error::io(
                format!("opening the pod's user namespace {}", pin.display()),
                e,
            )
        })?;
        // SAFETY: runs in the forked child before exec; setns(2), setresgid(2),
        // setresuid(2) and setgroups(2) are async-signal-safe. `fd` is moved into the
        // closure and stays open (it is close-on-exec) until the child execs.
        unsafe {
            cmd.pre_exec(move || {
                use std::os::fd::AsRawFd;
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWUSER) != 0
                    || libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(0, 0, 0) != 0
                    || libc::setresuid(0, 0, 0) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd
        .arg("--pid")
        .arg("--fork")
        .arg("--kill-child=SIGKILL")
        .arg("--")
        .arg(&monitor)
        .arg("pause")
        // Names the sandbox, so that recovery finds an infra started by a berthd
        // that died before recording its pid.
        .env(INFRA_ID_ENV, sandbox_id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            Error::io(
                "starting the pod infra process (unshare from util-linux)",
                e,
            )
        })?;
    let parent = child.id().unwrap_or(0);
    // The forked child of `unshare` is the infra; it is pid 1 inside. It appears within
    // a millisecond or two: poll at the timer's finest step rather than make every pod
    // wait a coarse one.
    for _ in 0..1000 {
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<i32>().ok())
        {
            return Ok((pid, child));
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let mut child = child;
    let _ = child.start_kill();
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Err(Error::internal(format!(
        "pod sandbox {sandbox_id}: the pod infra process did not start within 1s (is the node overloaded?); retry"
    )))
}

/// util-linux `unshare`, looked up in PATH once (every pod runs it; exec'ing a bare
/// name walks PATH with a failing execve per directory).
pub(super) fn unshare_path() -> &'static Path {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join("unshare"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("unshare"))
    })
}

/// `berth-monitor`, next to berthd: the pod infra and user namespace holder.
pub(super) fn monitor_path() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| Error::io("locating berthd", e))?;
    let monitor = exe.with_file_name("berth-monitor");
    if !monitor.exists() {
        return Err(Error::failed_precondition(format!(
            "berth-monitor not found next to berthd ({})",
            monitor.display()
        )));
    }
    Ok(monitor)
}
