//! `CreateContainer`: the request checked and resolved (image, CDI devices, AppArmor,
//! name, log path) before anything exists, then the container's dir, rootfs, spec
//! and monitor, rolled back as a whole on failure.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::v1::ContainerConfig;
use berth_runtime_core::monitor_protocol as protocol;
use prost::Message;
use tokio::io::AsyncBufReadExt;

use super::error::{Error, Result};
use super::handler::Handler;
use super::monitor::Monitor;
use super::spec::{self, ImageConfig, PodContext, SpecInput};
use super::{Container, ContainerManager, CtrState, KILL_WAIT, Phase};
use crate::config::CgroupDriver;
use crate::error::Plain;
use crate::host::clock::now_nanos;
use crate::host::mounts::mount_overlay;
use crate::store::{self, StateCell};
use crate::systemd;

/// How long the monitor may take to create a container.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);

impl ContainerManager {
    /// `CreateContainer`.
    pub async fn create(
        self: &Arc<Self>,
        pod_ctx: PodContext,
        config: ContainerConfig,
    ) -> Result<String> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::invalid_argument("config.metadata is required".into()))?;
        if meta.name.is_empty() || meta.name.contains('/') {
            return Err(Error::invalid_argument(format!(
                "config.metadata.name {:?} must be a non-empty name without '/'",
                meta.name
            )));
        }
        let image_spec = config.image.clone().unwrap_or_default();
        let wanted = if image_spec.image.is_empty() {
            image_spec.user_specified_image.clone()
        } else {
            image_spec.image.clone()
        };
        if wanted.is_empty() {
            return Err(Error::invalid_argument(
                "config.image.image is required".into(),
            ));
        }
        let image = self
            .images
            .status(&wanted)
            .map_err(Error::from)?
            .ok_or_else(|| {
                Error::not_found(format!("image {wanted:?} is not present; pull it first"))
            })?;
        // CDI devices are resolved before anything is created: an unknown one fails
        // the request with nothing to roll back.
        let cdi_names = super::cdi::requested_devices(&config, &pod_ctx.annotations)?;
        let cdi = if cdi_names.is_empty() {
            super::cdi::Injection::default()
        } else {
            let dirs = self
                .cdi_spec_dirs
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            tokio::task::spawn_blocking(move || super::cdi::resolve(&dirs, &cdi_names))
                .await
                .map_err(Error::task("resolving CDI devices"))??
        };
        // The AppArmor label too: a profile that is not loaded (or a node without
        // AppArmor) fails the request before anything exists.
        let apparmor_profile = {
            let sc = config
                .linux
                .as_ref()
                .and_then(|l| l.security_context.clone())
                .unwrap_or_default();
            #[allow(deprecated, reason = "older kubelets send only apparmor_profile")]
            let req = super::apparmor::Request::parse(
                "linux.security_context",
                sc.apparmor.as_ref(),
                &sc.apparmor_profile,
            )?;
            let apparmor = Arc::clone(&self.apparmor);
            let what = format!("container {:?}", meta.name);
            tokio::task::spawn_blocking(move || apparmor.resolve(&req, sc.privileged, &what))
                .await
                .map_err(Error::task("resolving the AppArmor profile"))??
        };
        if pod_ctx.userns.is_some()
            && let Some((path, host)) = cdi.remapped_device_node()
        {
            return Err(Error::invalid_argument(format!(
                "CDI device node {path} comes from host path {host}: a pod with its own user namespace can only get device nodes whose host path is their container path"
            )));
        }
        let mut config = config;
        let volumes = super::image_volume::resolve(&self.images, &mut config)?;
        let name = format!(
            "{}_{}_{}_{}_{}",
            meta.name, pod_ctx.pod_name, pod_ctx.pod_namespace, pod_ctx.pod_uid, meta.attempt
        );
        let id = store::new_id().map_err(|e| Error::io("generating a container id", e))?;
        self.containers.reserve_name(&name, &id).map_err(|holder| {
            Error::already_exists(format!(
                "container name {name:?} is already reserved by container {holder}"
            ))
        })?;

        let log_path = if config.log_path.is_empty() || pod_ctx.log_directory.is_empty() {
            PathBuf::new()
        } else {
            match container_log_path(&pod_ctx.log_directory, &config.log_path) {
                Ok(p) => p,
                Err(e) => {
                    self.containers.names().remove(&name);
                    return Err(e);
                }
            }
        };
        let image_name = if image_spec.user_specified_image.is_empty() {
            wanted.clone()
        } else {
            image_spec.user_specified_image.clone()
        };
        let image_ref = image
            .repo_digests
            .first()
            .cloned()
            .unwrap_or_else(|| image.id.to_string());
        let (tx, _) = tokio::sync::watch::channel(Phase::Creating);
        let ctr = Arc::new(Container {
            id: id.clone(),
            pod_id: pod_ctx.sandbox_id.clone(),
            config,
            created_at: now_nanos(),
            image_id: image.id.to_string(),
            image_name,
            image_ref,
            log_path,
            stop_signal: image.config.stop_signal.clone(),
            name_key: name.clone(),
            state: StateCell::new(CtrState {
                phase: Phase::Creating,
                pid: 0,
                monitor_pid: 0,
                monitor_start: 0,
                started_at: 0,
                finished_at: 0,
                exit_code: 0,
                reason: String::new(),
                message: String::new(),
                rootfs_mounted: false,
                user: None,
                runtime_handler: pod_ctx.runtime_handler.clone(),
            }),
            changed: tx,
            op: tokio::sync::Mutex::new(()),
            last_cpu: Mutex::new(None),
            persist_lock: Mutex::new(()),
        });
        let image_config = ImageConfig {
            entrypoint: image.config.entrypoint.clone().unwrap_or_default(),
            cmd: image.config.cmd.clone().unwrap_or_default(),
            env: image.config.env.clone().unwrap_or_default(),
            user: image.config.user.clone(),
            working_dir: image.config.working_dir.clone(),
        };
        match self
            .create_steps(
                &ctr,
                &image,
                &image_config,
                &pod_ctx,
                &volumes,
                &cdi,
                apparmor_profile.as_deref(),
            )
            .await
        {
            Ok(()) => {
                self.containers.write().insert(id.clone(), Arc::clone(&ctr));
                self.emit(&ctr, super::EventKind::Created);
                tracing::info!(container = %id, pod = %ctr.pod_id, name = %meta.name, "container created");
                Ok(id)
            }
            Err(e) => {
                self.cleanup(&ctr).await;
                self.containers.names().remove(&name);
                tracing::info!(name = %meta.name, error = %e, "container creation failed; rolled back");
                Err(e)
            }
        }
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "each is resolved before anything is created, then applied here"
    )]
    async fn create_steps(
        self: &Arc<Self>,
        ctr: &Arc<Container>,
        image: &berth_image::Image,
        image_config: &ImageConfig,
        pod_ctx: &PodContext,
        volumes: &[super::image_volume::Resolved],
        cdi: &super::cdi::Injection,
        apparmor_profile: Option<&str>,
    ) -> Result<()> {
        let dir = self.dir(&ctr.id);
        // The container's dir is root's alone: below it are the rootfs (the image's
        // setuid binaries and device nodes, the container's files) and config.json
        // (its environment, secrets included), CVE-2021-41091. `upper` keeps the
        // default mode: overlayfs shows its mode as the container's `/`.
        create_container_dir(&dir, pod_ctx.userns.as_ref())
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        for (sub, mode) in [
            ("upper", None),
            ("work", Some(store::PRIVATE_DIR)),
            ("rootfs", None),
            ("bundle", Some(store::PRIVATE_DIR)),
        ] {
            let path = dir.join(sub);
            match mode {
                Some(mode) => store::ensure_dir(&path, mode),
                None => std::fs::create_dir_all(&path),
            }
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        }
        store::write_atomic(&dir.join("config.pb"), &ctr.config.encode_to_vec())
            .map_err(|e| Error::io("persisting the container config", e))?;
        self.persist(ctr)?;

        let lowers = self
            .images
            .lease(&ctr.id, image)
            .await
            .map_err(Error::from)?;
        let rootfs = dir.join("rootfs");
        match &pod_ctx.userns {
            Some(userns) => mount_idmapped_rootfs(&lowers, &dir, &rootfs, userns)?,
            None => mount_overlay(&lowers, &dir.join("upper"), &dir.join("work"), &rootfs)
                .map_err(|e| {
                    Error::io(
                        format!("mounting the overlay rootfs at {}", rootfs.display()),
                        e,
                    )
                })?,
        }
        ctr.update(|s| s.rootfs_mounted = true);
        // The spec sees image volumes as read-only binds of their mounts.
        let spec_config = super::image_volume::mount_all(
            &self.images,
            &ctr.id,
            &dir,
            &ctr.config,
            volumes,
            pod_ctx.userns.as_ref(),
        )
        .await?;

        let mut spec = spec::build(&SpecInput {
            id: &ctr.id,
            config: &spec_config,
            image: image_config,
            image_name: &ctr.image_name,
            rootfs: &rootfs,
            pod: pod_ctx,
            cgroup_driver: self.config.cgroup_driver,
            apparmor_profile,
            degraded_device_filter: self.config.allow_degraded_device_filter,
        })?;
        cdi.apply(&mut spec);
        // kubelet sends a huge page limit for every page size the machine has. An OCI
        // runtime (runc) refuses the whole create when the host has no hugetlb
        // controller it can use (hybrid hosts keep hugetlb on the v2 tree only), so
        // the limits are dropped there — nothing could enforce them — as containerd
        // (tolerate_missing_hugetlb_controller) and runtime-core's own cgroup code do.
        if matches!(self.handler(ctr)?, Handler::Oci(_))
            && !hugetlb_usable()
            && let Some(r) = spec
                .linux_mut()
                .as_mut()
                .and_then(|l| l.resources_mut().as_mut())
        {
            r.set_hugepage_limits(None);
        }
        if let Some(process) = spec.process() {
            let user = process.user();
            let groups = user.additional_gids().clone().unwrap_or_default();
            ctr.update(|s| s.user = Some((user.uid(), user.gid(), groups)));
        }
        let bundle = dir.join("bundle");
        let config_json = serde_json::to_vec(&spec).map_err(|source| Error::Json {
            what: "serialising the OCI spec",
            source,
        })?;
        store::write_atomic(&bundle.join("config.json"), &config_json)
            .map_err(|e| Error::io("writing config.json", e))?;
        if let Some(parent) = ctr.log_path.parent()
            && !ctr.log_path.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating log dir {}", parent.display()), e))?;
        }

        let monitor = self.helper("berth-monitor")?;
        let log_path = if ctr.log_path.as_os_str().is_empty() {
            dir.join("console.log")
        } else {
            ctr.log_path.clone()
        };
        let mut cmd = tokio::process::Command::new(&monitor);
        cmd.arg("run")
            .arg("--root")
            .arg(self.runtime_root())
            .arg("--bundle")
            .arg(&bundle)
            .arg("--log-path")
            .arg(&log_path)
            .arg("--exit-file")
            .arg(dir.join(protocol::EXIT_FILE));
        if let Handler::Oci(rt) = self.handler(ctr)? {
            cmd.arg("--oci-runtime")
                .arg(&rt.path)
                .arg("--oci-root")
                .arg(&rt.root);
        }
        if ctr.config.stdin {
            cmd.arg("--stdin");
        }
        cmd.arg(&ctr.id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", monitor.display()), e))?;
        let monitor_pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        // Our unreaped child: its pid cannot be reused before we wait for it.
        let monitor_start = crate::host::procs::Pid::new(monitor_pid)
            .and_then(crate::host::procs::start_time)
            .unwrap_or(0);
        ctr.update(|s| {
            s.monitor_pid = monitor_pid;
            s.monitor_start = monitor_start;
        });
        #[cfg(feature = "test-hooks")]
        test_hook_die_after_monitor_spawn(monitor_pid);
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::internal("monitor stdout".into()))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(CREATE_TIMEOUT, lines.next_line()).await;
        let report = match first {
            Ok(Ok(Some(line))) => protocol::CreateReport::decode(&line).map_err(Error::Protocol)?,
            Ok(Ok(None)) => {
                let status = child.wait().await.ok();
                // Gone: the clean-up must not wait for an exit it will never see.
                ctr.update(|s| s.monitor_pid = 0);
                return Err(Error::MonitorExited {
                    id: ctr.id.clone(),
                    status: format!("{status:?}"),
                });
            }
            Ok(Err(e)) => return Err(Error::io("reading the monitor's report", e)),
            Err(_) => {
                let _ = child.kill().await;
                ctr.update(|s| s.monitor_pid = 0);
                return Err(Error::MonitorTimeout {
                    id: ctr.id.clone(),
                    timeout: CREATE_TIMEOUT,
                });
            }
        };
        let pid = match report {
            (_, protocol::CreateReport::Created { pid }) => pid,
            (version, protocol::CreateReport::Failed(e)) => {
                // The monitor exits right after a failed create, having removed what it
                // made. Reaped here, so the clean-up has no monitor exit to wait for (it
                // used to wait KILL_WAIT for one: every failed create took 10 s).
                let _ = child.wait().await;
                ctr.update(|s| s.monitor_pid = 0);
                tracing::debug!(container = %ctr.id, version, kind = ?e.kind, "create failed in the monitor");
                // The monitor classified it; `Error::Create` keeps its kind.
                return Err(Error::Create(e));
            }
        };
        ctr.update(|s| s.pid = pid);
        if matches!(self.config.cgroup_driver, CgroupDriver::Systemd)
            && let Err(e) = self
                .start_scope(ctr, &spec, pid, &pod_ctx.cgroup_parent)
                .await
        {
            // The init never ran the user's process; kill it, and reap the monitor
            // (it exits once its container has), so the clean-up has no exit to wait for.
            self.kill(ctr, libc::SIGKILL, true);
            if tokio::time::timeout(KILL_WAIT, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
            ctr.update(|s| s.monitor_pid = 0);
            return Err(e);
        }
        ctr.update(|s| s.phase = Phase::Created);
        self.persist(ctr)?;
        self.watch(Arc::clone(ctr), Monitor::Child(child));
        Ok(())
    }

    /// The systemd driver's step between create and start: the init exists (and waits
    /// for StartContainer), so its transient scope `berth-<id>.scope` is started in the
    /// pod's slice with the init inside and the container's limits as unit properties,
    /// and systemd, not berthd, owns those limits (a daemon-reload keeps them).
    async fn start_scope(
        &self,
        ctr: &Container,
        spec: &oci_spec::runtime::Spec,
        pid: i32,
        cgroup_parent: &str,
    ) -> Result<()> {
        let resources = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .ok_or_else(|| Error::internal("the spec has no linux.resources".into()))?;
        let pid = u32::try_from(pid)
            .map_err(|_| Error::internal(format!("init pid {pid} out of range")))?;
        let unit = systemd::scope_name(&ctr.id);
        let props = systemd::scope_properties(
            systemd::pod_slice(cgroup_parent),
            pid,
            format!("berth container {} ({})", ctr.id, ctr.name_key),
            resources,
        )?;
        systemd::client().start_scope(&unit, &props).await?;
        tracing::debug!(container = %ctr.id, %unit, "scope started");
        Ok(())
    }
}

/// The root filesystem of a container in a pod with its own user namespace: the
/// image's layers idmapped with the pod's mappings under the overlay (so its files
/// show their image owners inside), and the upper layer owned by the namespace's
/// root (so `/` is the container root's and what it writes is owned by the mapped
/// host ids, never by host root).
fn mount_idmapped_rootfs(
    lowers: &[PathBuf],
    dir: &Path,
    rootfs: &Path,
    userns: &spec::PodUserNamespace,
) -> Result<()> {
    let (uid, gid) = userns.root_host_ids()?;
    let upper = dir.join("upper");
    std::os::unix::fs::chown(&upper, Some(uid), Some(gid))
        .map_err(|e| Error::io(format!("chown {}", upper.display()), e))?;
    Ok(userns.mount_idmapped_layers(
        lowers,
        Some((&upper, &dir.join("work"))),
        rootfs,
        "the container's root filesystem",
    )?)
}

/// Creates a container's own directory (see `store::ensure_owned_dir`).
fn create_container_dir(
    dir: &Path,
    userns: Option<&spec::PodUserNamespace>,
) -> std::io::Result<()> {
    let root_gid = userns.and_then(|u| {
        u.gids
            .iter()
            .find(|m| m.container_id == 0 && m.length > 0)
            .map(|m| m.host_id)
    });
    store::ensure_owned_dir(dir, root_gid)
}

/// The host path of a container's log: `log_path` (relative, or absolute) must stay
/// inside the pod's `log_directory`; it names the file the monitor, root, creates
/// and appends to. Symlinks below the log directory are refused too (the monitor
/// opens the file itself with O_NOFOLLOW).
fn container_log_path(log_directory: &str, log_path: &str) -> Result<PathBuf> {
    let escape = || {
        Error::invalid_argument(format!(
            "log_path {log_path:?} must stay inside the pod's log_directory {log_directory:?}"
        ))
    };
    let dir = Path::new(log_directory);
    if !dir.is_absolute() || log_directory.split('/').any(|c| c == "..") {
        return Err(Error::invalid_argument(format!(
            "log_directory {log_directory:?} must be an absolute path without '..'"
        )));
    }
    if log_path.split('/').any(|c| c == "..") {
        return Err(escape());
    }
    let lp = Path::new(log_path);
    let rel = if lp.is_absolute() {
        lp.strip_prefix(dir).map_err(|_| escape())?
    } else {
        lp
    };
    if rel.as_os_str().is_empty() || rel.file_name().is_none() {
        return Err(escape());
    }
    let full = dir.join(rel);
    let mut at = dir.to_path_buf();
    for part in rel.components() {
        at.push(part);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(Error::invalid_argument(format!(
                "log_path {log_path:?}: {} is a symbolic link",
                at.display()
            )));
        }
    }
    Ok(full)
}

/// Test hook for the crash window between spawning a container's monitor and
/// recording its pid (`privileged_crash_storm`). When the environment variable
/// `BERTHD_TEST_HOOK_DIE_AFTER_MONITOR_SPAWN` names an existing file, the file is
/// removed (one shot) and berthd SIGKILLs itself right here; if the file says
/// `stop-monitor`, the monitor is SIGSTOPped first, so that it is certainly still
/// mid-create when berthd comes back. Without the variable this does nothing; without
/// the `test-hooks` cargo feature (release builds) it is not compiled at all.
#[cfg(feature = "test-hooks")]
fn test_hook_die_after_monitor_spawn(monitor_pid: i32) {
    let Some(trigger) = std::env::var_os("BERTHD_TEST_HOOK_DIE_AFTER_MONITOR_SPAWN") else {
        return;
    };
    let Ok(what) = std::fs::read_to_string(&trigger) else {
        return;
    };
    if std::fs::remove_file(&trigger).is_err() {
        return;
    }
    tracing::warn!(
        monitor = monitor_pid,
        "test hook: berthd dies right after spawning a monitor"
    );
    use rustix::process::{Pid, Signal, getpid, kill_process};
    if what.trim() == "stop-monitor"
        && let Some(monitor) = Pid::from_raw(monitor_pid)
    {
        // Our unreaped child: the pid cannot have been reused.
        let _ = kill_process(monitor, Signal::STOP);
    }
    // berthd kills itself, as a crash would.
    let _ = kill_process(getpid(), Signal::KILL);
}

/// Whether the host's hugetlb cgroup controller is where an OCI runtime can use it: in
/// the v2 tree on a pure v2 host, as its own v1 hierarchy otherwise.
fn hugetlb_usable() -> bool {
    let root = Path::new("/sys/fs/cgroup");
    match std::fs::read_to_string(root.join("cgroup.controllers")) {
        Ok(controllers) => controllers.split_whitespace().any(|c| c == "hugetlb"),
        Err(_) => root.join("hugetlb").is_dir(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_path_cannot_leave_the_log_directory() {
        let d = tempfile::tempdir().expect("tempdir");
        let logs = d.path().join("pod-logs");
        std::fs::create_dir(&logs).expect("mkdir");
        let dir = logs.display().to_string();
        assert_eq!(
            container_log_path(&dir, "app/0.log").expect("relative"),
            logs.join("app/0.log")
        );
        assert_eq!(
            container_log_path(&dir, &format!("{dir}/app/0.log")).expect("absolute inside"),
            logs.join("app/0.log")
        );
        for bad in ["/etc/cron.d/x", "../x.log", "app/../../x.log", "/", ""] {
            let e = container_log_path(&dir, bad).expect_err(bad);
            assert!(
                matches!(e, Error::Host(crate::error::Error::InvalidArgument(_))),
                "{bad}: {e:?}"
            );
        }
        let e = container_log_path(&dir, &format!("{dir}-evil/x.log")).expect_err("sibling");
        assert!(e.to_string().contains("log_directory"), "{e}");
        std::os::unix::fs::symlink("/etc", logs.join("app2")).expect("link");
        let e = container_log_path(&dir, "app2/passwd").expect_err("through a link");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::os::unix::fs::symlink("/etc/passwd", logs.join("1.log")).expect("link");
        assert!(
            container_log_path(&dir, "1.log").is_err(),
            "a link as the log"
        );
    }
}
