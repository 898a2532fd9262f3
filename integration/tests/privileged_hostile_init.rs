//! The container's init against a hostile pod spec or image, end to end through berthd:
//! a working directory of `/proc/self/fd/N` (from the CRI config or the image's
//! WORKDIR) never puts the container's process in a host directory (CVE-2024-21626)
//! and is refused at once with InvalidArgument naming the errno; a missing working
//! directory is made inside the container root, even through a symlink the image
//! planted; and the runtime's binaries behind the processes a container can see
//! (`berth-monitor pause`, an init waiting to be started) cannot be reached for
//! writing through /proc/<pid>/exe (CVE-2019-5736).
//!
//! Every test gathers its findings, cleans up (pods, host paths), then asserts.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_integration::client::CriClient;
use berth_integration::daemon::{DaemonOptions, TestDaemon};
use berth_integration::fixtures::{
    self, BUSYBOX, create, exec, pod_config, pull, remove_pod, run_pod, start,
};
use berth_integration::forge::{ImageBuilder, LayerBuilder, critest_images};
use berth_integration::registry::{CRITEST_HOSTS, TestRegistry};
use berth_proto::v1 as cri;

/// A failed create must come back well before the 10 s it used to take.
const FAST: Duration = Duration::from_secs(5);

/// A berthd whose registry mirrors serve busybox (and what a test pushes) from a local
/// registry: `setup::Node` without the server images these tests do not need. Fields
/// drop in order: the daemon stops before the registry.
struct Node {
    daemon: TestDaemon,
    registry: TestRegistry,
    _certs: tempfile::TempDir,
}

impl Node {
    async fn start() -> anyhow::Result<Self> {
        let registry = TestRegistry::start()?;
        let busybox: Vec<_> = critest_images()?
            .into_iter()
            .filter(|p| p.upstream.ends_with("e2e-test-images/busybox"))
            .collect();
        registry.push_all(&busybox).await?;
        let certs = tempfile::tempdir()?;
        registry.write_mirror_hosts(certs.path(), CRITEST_HOSTS)?;
        let mut options = DaemonOptions::default();
        options.extra_config.push_str(&format!(
            "\n[registry]\nconfig_path = {:?}\nstall_timeout_secs = 20\n",
            certs.path().display().to_string()
        ));
        let daemon = TestDaemon::start_with(options).await?;
        Ok(Self {
            daemon,
            registry,
            _certs: certs,
        })
    }
}

/// Removes host paths on drop: what the test planted and anything an escape made.
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        }
    }
}

fn container_config(
    name: &str,
    image: &str,
    command: &[&str],
    working_dir: &str,
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        working_dir: working_dir.to_owned(),
        ..fixtures::container_config(name, image, command)
    }
}

/// Whether `message` names an errno symbolically (ELOOP, ENOTDIR...).
fn names_an_errno(message: &str) -> bool {
    message
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| {
            w.len() > 2 && w.starts_with('E') && w[1..].chars().all(|c| c.is_ascii_uppercase())
        })
}

/// Creates a container that must be refused; on the old code it was created, so it is
/// started to see what the escape does, and the finding recorded.
#[allow(clippy::too_many_arguments)]
async fn expect_refused(
    client: &mut CriClient,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
    what: &str,
    escape_marker: &Path,
    findings: &mut Vec<String>,
) {
    let began = Instant::now();
    let res = create(client, pod_id, pod, config).await;
    let took = began.elapsed();
    match res {
        Ok(id) => {
            let _ = start(client, &id).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            findings.push(format!(
                "{what}: created and started (host marker written: {})",
                escape_marker.exists()
            ));
        }
        Err(status) => {
            let msg = status.message();
            if status.code() != tonic::Code::InvalidArgument {
                findings.push(format!(
                    "{what}: code {:?}, not InvalidArgument: {msg}",
                    status.code()
                ));
            }
            if !msg.contains("working directory") || !names_an_errno(msg) {
                findings.push(format!(
                    "{what}: the error names neither the step nor the errno: {msg}"
                ));
            }
            if took > FAST {
                findings.push(format!("{what}: refused only after {took:?}"));
            }
        }
    }
}

/// `working_dir` (CRI) and WORKDIR (image) of `/proc/self/fd/N`, for every N an init
/// could hold: none is created, each is refused at once naming the step and errno, and
/// nothing lands on the host. The old init held the state directory open as fd 6 and
/// chdir'd through the container's /proc: its process started in the host's
/// `<state>/rt/<id>` and could walk up to the host's `/`. The CRI working directories
/// are tried again from a pod in its own user namespace.
#[tokio::test]
async fn working_dirs_through_proc_self_fd_never_reach_the_host() {
    let node = Node::start().await.expect("node");
    let fds = 3..=9;
    for n in fds.clone() {
        let image = ImageBuilder::busybox()
            .expect("busybox layer")
            .workdir(&format!("/proc/self/fd/{n}"))
            .build()
            .expect("image");
        node.registry
            .push("berth-test/hostile-workdir", &n.to_string(), &image)
            .await
            .expect("push");
    }
    let mut client = node.daemon.client().await.expect("client");
    let logs = tempfile::tempdir().expect("logs");
    pull(&mut client, BUSYBOX).await;
    let marker_name = format!("berth-hostile-init-{}", std::process::id());
    let marker = Path::new("/tmp").join(&marker_name);
    let _cleanup = RemoveOnDrop(vec![marker.clone()]);
    // From a cwd in the host's state dir, enough `..` reach the host's `/`.
    let escape = format!(
        "echo escaped > {}tmp/{marker_name}; exec sleep 3600",
        "../".repeat(16)
    );
    let pod = pod_config("hostile-wd", logs.path());
    let pod_id = run_pod(&mut client, &pod).await;
    let mut findings = Vec::new();
    for n in 3..=12 {
        expect_refused(
            &mut client,
            &pod_id,
            &pod,
            container_config(
                &format!("cri-fd-{n}"),
                BUSYBOX,
                &["sh", "-c", &escape],
                &format!("/proc/self/fd/{n}"),
            ),
            &format!("working_dir /proc/self/fd/{n}"),
            &marker,
            &mut findings,
        )
        .await;
    }
    for n in fds {
        let image = format!("registry.k8s.io/berth-test/hostile-workdir:{n}");
        pull(&mut client, &image).await;
        expect_refused(
            &mut client,
            &pod_id,
            &pod,
            container_config(&format!("image-fd-{n}"), &image, &["sh", "-c", &escape], ""),
            &format!("image WORKDIR /proc/self/fd/{n}"),
            &marker,
            &mut findings,
        )
        .await;
    }
    // The same working directories from a pod in its own user namespace
    // (`hostUsers: false`): its root is host uid 300000, which could still write the
    // host's world-writable /tmp had the init kept a host directory open.
    let userns_pod =
        fixtures::in_own_user_namespace(pod_config("hostile-wd-userns", logs.path()), 300_000);
    let userns_pod_id = run_pod(&mut client, &userns_pod).await;
    for n in 3..=12 {
        expect_refused(
            &mut client,
            &userns_pod_id,
            &userns_pod,
            container_config(
                &format!("userns-fd-{n}"),
                BUSYBOX,
                &["sh", "-c", &escape],
                &format!("/proc/self/fd/{n}"),
            ),
            &format!("user-namespaced pod: working_dir /proc/self/fd/{n}"),
            &marker,
            &mut findings,
        )
        .await;
    }
    // Refused creates leave no container behind.
    let left = client
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
        .len();
    let escaped = marker.exists();
    remove_pod(&mut client, &pod_id).await;
    remove_pod(&mut client, &userns_pod_id).await;
    assert!(
        !escaped,
        "a container wrote {} on the host",
        marker.display()
    );
    assert!(findings.is_empty(), "{}", findings.join("\n"));
    assert_eq!(left, 0, "refused creates left containers behind");
}

/// A working directory missing from the image is made (mode 0755) inside the
/// container root and the container runs, whether it comes from the CRI config or the
/// image, and also when the image routes it through a symlink pointing out of the root
/// (`/up -> ../../../..`); a symlink to a magic link (`/fd -> /proc/self/fd/6`) is
/// refused. The old init failed every missing working directory (ENOENT, after 10 s).
#[tokio::test]
async fn missing_working_dirs_are_made_inside_the_container_root() {
    let node = Node::start().await.expect("node");
    let made = format!("made-by-berth-{}", std::process::id());
    let host_made = Path::new("/").join(&made);
    let _cleanup = RemoveOnDrop(vec![host_made.clone()]);
    let images = [
        (
            "missing",
            ImageBuilder::busybox()
                .expect("busybox")
                .workdir("/srv/app/data"),
        ),
        (
            "symlink-up",
            ImageBuilder::busybox()
                .expect("busybox")
                .layer(LayerBuilder::new().symlink("/up", "../../../.."))
                .workdir(&format!("/up/{made}")),
        ),
        (
            "symlink-fd",
            ImageBuilder::busybox()
                .expect("busybox")
                .layer(LayerBuilder::new().symlink("/fd", "/proc/self/fd/6"))
                .workdir("/fd"),
        ),
    ];
    for (tag, image) in &images {
        node.registry
            .push("berth-test/workdir", tag, &image.build().expect("image"))
            .await
            .expect("push");
    }
    let mut client = node.daemon.client().await.expect("client");
    let logs = tempfile::tempdir().expect("logs");
    pull(&mut client, BUSYBOX).await;
    for (tag, _) in &images {
        pull(
            &mut client,
            &format!("registry.k8s.io/berth-test/workdir:{tag}"),
        )
        .await;
    }
    let pod = pod_config("made-wd", logs.path());
    let pod_id = run_pod(&mut client, &pod).await;
    let mut findings = Vec::new();
    // The init records where it started (pid 1 is the pod's infra process).
    let record_cwd = ["sh", "-c", "pwd -P > /tmp/cwd; exec sleep 3600"];
    let cases = [
        (
            "cri",
            BUSYBOX.to_owned(),
            "/var/missing/deeper",
            "/var/missing/deeper".to_owned(),
        ),
        (
            "image",
            "registry.k8s.io/berth-test/workdir:missing".to_owned(),
            "",
            "/srv/app/data".to_owned(),
        ),
        (
            "symlink-up",
            "registry.k8s.io/berth-test/workdir:symlink-up".to_owned(),
            "",
            format!("/{made}"),
        ),
    ];
    for (name, image, wd, expected) in cases {
        let res = match create(
            &mut client,
            &pod_id,
            &pod,
            container_config(name, &image, &record_cwd, wd),
        )
        .await
        {
            Ok(id) => start(&mut client, &id).await.map(|()| id),
            Err(e) => Err(e),
        };
        let id = match res {
            Ok(id) => id,
            Err(e) => {
                findings.push(format!("{name}: {:?} {}", e.code(), e.message()));
                continue;
            }
        };
        let mut cwd = String::new();
        for _ in 0..50 {
            cwd = exec(&mut client, &id, &["cat", "/tmp/cwd"]).await.1;
            if !cwd.trim().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if cwd.trim() != expected {
            findings.push(format!(
                "{name}: cwd {:?}, expected {expected:?}",
                cwd.trim()
            ));
        }
        let (_, st, err) = exec(&mut client, &id, &["stat", "-c", "%a %u", &expected]).await;
        if st.trim() != "755 0" {
            findings.push(format!("{name}: {expected} is {:?} {err}", st.trim()));
        }
    }
    let began = Instant::now();
    match create(
        &mut client,
        &pod_id,
        &pod,
        container_config(
            "symlink-fd",
            "registry.k8s.io/berth-test/workdir:symlink-fd",
            &record_cwd,
            "",
        ),
    )
    .await
    {
        Ok(_) => findings.push("WORKDIR through /fd -> /proc/self/fd/6 was created".into()),
        Err(e) => {
            if e.code() != tonic::Code::InvalidArgument || !e.message().contains("ELOOP") {
                findings.push(format!("symlink-fd: {:?} {}", e.code(), e.message()));
            }
            if began.elapsed() > FAST {
                findings.push(format!("symlink-fd: refused after {:?}", began.elapsed()));
            }
        }
    }
    let on_host = host_made.exists();
    remove_pod(&mut client, &pod_id).await;
    assert!(!on_host, "{} was made on the host", host_made.display());
    assert!(findings.is_empty(), "{}", findings.join("\n"));
}

/// Identity of a file as `stat -c %d:%i` prints it.
fn dev_ino(path: &Path) -> String {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{}:{}", m.dev(), m.ino())
}

/// In a pod sharing its pid namespace, a container given CAP_SYS_PTRACE (which lets it
/// open other processes' /proc/<pid>/exe) looks at `berth-monitor pause` (pid 1) and at
/// the init of a second container created but not started (a fork of berth-monitor
/// until its execve). It must reach neither host binary: what it opens is another file
/// (the sealed copy), and opening it for writing fails for good (EROFS), not merely
/// while the binary runs (ETXTBSY, the old behaviour: the host file, writable again
/// once nothing runs it). The host binaries are unchanged afterwards.
#[tokio::test]
async fn runtime_binaries_seen_from_a_container_are_sealed() {
    let node = Node::start().await.expect("node");
    let mut client = node.daemon.client().await.expect("client");
    let logs = tempfile::tempdir().expect("logs");
    pull(&mut client, BUSYBOX).await;
    let bin_dir = berth_integration::daemon::TestDaemon::binary()
        .expect("berthd")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let monitor = bin_dir.join("berth-monitor");
    let runtime = bin_dir.join("berth-runtime");
    let host_ids = [dev_ino(&monitor), dev_ino(&runtime)];
    let before = [
        std::fs::read(&monitor).expect("read"),
        std::fs::read(&runtime).expect("read"),
    ];

    let pod = pod_config("sealed-bins", logs.path());
    let pod_id = run_pod(&mut client, &pod).await;
    let mut attacker = container_config("attacker", BUSYBOX, &["sleep", "3600"], "");
    attacker.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["SYS_PTRACE".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let attacker = create(&mut client, &pod_id, &pod, attacker)
        .await
        .expect("create attacker");
    start(&mut client, &attacker).await.expect("start attacker");
    let waiting = create(
        &mut client,
        &pod_id,
        &pod,
        container_config("waiting", BUSYBOX, &["sleep", "3600"], ""),
    )
    .await
    .expect("create the waiting container");

    let script = "for p in /proc/[0-9]*; do \
        e=$(readlink $p/exe 2>/dev/null) || continue; \
        i=$(stat -L -c %d:%i $p/exe 2>/dev/null) || continue; \
        w=$( (: >> $p/exe) 2>&1 && echo WRITABLE); \
        echo \"${p#/proc/}|$e|$i|$w\"; done";
    let (_, seen, err) = exec(&mut client, &attacker, &["sh", "-c", script]).await;
    // The waiting init still starts and runs (it reopens its exec fifo itself).
    let started = start(&mut client, &waiting).await;
    let after = [
        std::fs::read(&monitor).expect("read"),
        std::fs::read(&runtime).expect("read"),
    ];
    remove_pod(&mut client, &pod_id).await;

    let ours: Vec<&str> = seen
        .lines()
        .filter(|l| l.split('|').nth(1).is_some_and(|e| e.contains("berth-")))
        .collect();
    assert!(
        ours.len() >= 2,
        "the attacker should see pause and the waiting init, saw:\n{seen}\n{err}"
    );
    for line in &ours {
        let f: Vec<&str> = line.split('|').collect();
        assert!(
            !host_ids.contains(&f[2].to_owned()),
            "pid {} runs the host's binary itself ({}), the container holds it: {line}",
            f[0],
            f[1]
        );
        assert!(
            f[3].contains("Read-only file system") || f[3].contains("not permitted"),
            "pid {}'s exe is not sealed against writes: {line}",
            f[0]
        );
    }
    assert!(before == after, "a host binary changed");
    started.expect("the waiting container starts");
}
