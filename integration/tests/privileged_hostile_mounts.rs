//! Hostile mount destinations through CRI, on the real kernel (docs/security.md,
//! "Mount destinations (CVE-2021-30465 class)").
//!
//! Issue 22: a container of a pod swaps a directory and a symlink to a host directory
//! in a volume shared with the pod's other containers (renameat2 RENAME_EXCHANGE in a
//! tight loop, `berth-swapper`), while containers of the same pod are created whose
//! mounts run through that name. Whatever the timing, nothing may be created,
//! truncated or mounted in the host directory, and berthd keeps serving. Run in a plain
//! pod and in a pod with its own user namespace (where mount points are also created
//! on the host, before the init joins the namespace).
//!
//! Issue 16: mounts whose destination is in /proc are refused with InvalidArgument.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_integration::client::CriClient;
use berth_integration::daemon::{DaemonOptions, TestDaemon};
use berth_integration::fixtures::{
    self, BUSYBOX, create, pull, remove_container, remove_pod, run_pod,
};
use berth_integration::forge::{
    ImageBuilder, LayerBuilder, Published, busybox_layer, critest_images,
};
use berth_integration::registry::{CRITEST_HOSTS, TestRegistry};
use berth_proto::v1 as cri;

const SWAPPER_IMAGE: &str = "registry.k8s.io/e2e-test-images/berth-swapper:1";

/// Victim containers created per run. On the code before the fix, 150 creates put
/// entries in the host directory 8 times (issue 22); the loop stops at the first.
const CREATES: usize = 150;
/// Wall-clock bound of one run's create loop: a create and remove take ~0.25 s, a
/// create refused because it lost the race ~10 s (the init's error path). Before the
/// fix the first escape came at the 6th create.
const RACE_BUDGET: Duration = Duration::from_secs(15);

/// A berthd whose mirrors serve busybox and the swapper image (not the critest server
/// images `setup::Node` builds: they cost start-up time this test does not need).
/// Fields drop in order: the daemon stops before the registry.
struct Env {
    daemon: TestDaemon,
    _registry: TestRegistry,
    _certs: tempfile::TempDir,
}

async fn start() -> Env {
    let registry = TestRegistry::start().expect("registry");
    let mut images = critest_images().expect("images");
    images.push(swapper_image());
    registry.push_all(&images).await.expect("push images");
    let certs = tempfile::tempdir().expect("certs dir");
    registry
        .write_mirror_hosts(certs.path(), CRITEST_HOSTS)
        .expect("mirror hosts");
    let mut options = DaemonOptions::default();
    options.extra_config.push_str(&format!(
        "\n[registry]\nconfig_path = {:?}\nstall_timeout_secs = 20\n",
        certs.path().display().to_string()
    ));
    let daemon = TestDaemon::start_with(options).await.expect("berthd");
    Env {
        daemon,
        _registry: registry,
        _certs: certs,
    }
}

/// The `berth-swapper` program built by cargo next to the running test binary.
fn swapper_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_SWAPPER_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("berth-swapper"))
        .find(|p| p.is_file())
        .expect("berth-swapper not built: cargo build -p berth-integration --bins")
}

/// Busybox plus `berth-swapper` (dynamically linked: its loader and libraries come along).
fn swapper_image() -> Published {
    let image = ImageBuilder::new()
        .layer(busybox_layer(&[], &[]).expect("busybox layer"))
        .layer(
            LayerBuilder::new()
                .host_binary_at("usr/local/bin/berth-swapper", &swapper_binary())
                .expect("swapper layer"),
        )
        .cmd(["sh"])
        .build()
        .expect("swapper image");
    let (upstream, tag) = SWAPPER_IMAGE.rsplit_once(':').expect("tag");
    Published {
        upstream: upstream.to_owned(),
        tags: vec![tag.to_owned()],
        image,
    }
}

/// Removes what the test made on the host, whatever happened.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        }
    }
}

fn pod_config(name: &str, logs: &Path, userns: bool) -> cri::PodSandboxConfig {
    let pod = fixtures::pod_config(name, logs);
    if userns {
        fixtures::in_own_user_namespace(pod, 100_000)
    } else {
        pod
    }
}

fn bind(container_path: &str, host_path: &Path) -> cri::Mount {
    cri::Mount {
        container_path: container_path.to_owned(),
        host_path: host_path.display().to_string(),
        ..Default::default()
    }
}

fn container_config(
    name: &str,
    image: &str,
    command: &[&str],
    mounts: Vec<cri::Mount>,
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        mounts,
        ..fixtures::container_config(name, image, command)
    }
}

/// What the host directory holds: name -> content (directories as "<dir>").
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .expect("read host dir")
        .filter_map(Result::ok)
        .map(|e| {
            let content = if e.path().is_dir() {
                "<dir>".to_owned()
            } else {
                std::fs::read_to_string(e.path()).unwrap_or_else(|e| format!("<{e}>"))
            };
            (e.file_name().to_string_lossy().into_owned(), content)
        })
        .collect()
}

async fn swap_race(client: &mut CriClient, userns: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    // The volume the pod's containers share (an emptyDir), and the host directory
    // the attacker's symlink names, with files that must keep their content.
    let shared = dir.path().join("shared");
    let host = dir.path().join("host");
    std::fs::create_dir(&shared).expect("shared dir");
    std::fs::create_dir(&host).expect("host dir");
    let _cleanup = Cleanup(vec![host.clone(), shared.clone()]);
    std::fs::write(host.join("keep"), "host data").expect("keep");
    for n in (0..CREATES).step_by(10) {
        std::fs::write(host.join(format!("f-{n}")), format!("host file {n}")).expect("f-n");
    }
    let before = snapshot(&host);
    // Mount sources of the victims.
    let src_file = dir.path().join("src-file");
    let src_dir = dir.path().join("src-dir");
    std::fs::write(&src_file, "volume file").expect("src file");
    std::fs::create_dir(&src_dir).expect("src dir");

    pull(client, BUSYBOX).await;
    pull(client, SWAPPER_IMAGE).await;
    let name = if userns { "race-userns" } else { "race" };
    let pod = pod_config(name, &logs, userns);
    let pod_id = run_pod(client, &pod).await;

    let host_str = host.display().to_string();
    let attacker = create(
        client,
        &pod_id,
        &pod,
        container_config(
            "attacker",
            SWAPPER_IMAGE,
            &["berth-swapper", "/shared/d", "/shared/l", &host_str, "120"],
            vec![bind("/shared", &shared)],
        ),
    )
    .await
    .expect("create attacker");
    fixtures::start(client, &attacker)
        .await
        .expect("start attacker");
    let log = logs.join("attacker.log");
    let started = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("swapping")
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the swapper did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (mut created, mut refused) = (0usize, 0usize);
    let mut took = Vec::new();
    let mut escaped = None;
    let race = Instant::now();
    for n in 0..CREATES {
        if race.elapsed() > RACE_BUDGET {
            break;
        }
        let victim = container_config(
            &format!("victim-{n}"),
            BUSYBOX,
            &["sleep", "3600"],
            vec![
                bind("/shared", &shared),
                bind(&format!("/shared/d/f-{n}"), &src_file),
                bind(&format!("/shared/d/dir-{n}"), &src_dir),
            ],
        );
        let t = Instant::now();
        let result = create(client, &pod_id, &pod, victim).await;
        took.push(t.elapsed());
        match result {
            Ok(id) => {
                created += 1;
                remove_container(client, &id).await;
            }
            Err(status) => {
                // Losing the race may refuse the container; it must say why.
                assert_ne!(status.code(), tonic::Code::Unknown, "{status:?}");
                eprintln!(
                    "victim-{n} refused: {:?} {}",
                    status.code(),
                    status.message()
                );
                refused += 1;
            }
        }
        if snapshot(&host) != before {
            escaped = Some(n + 1);
            break;
        }
    }
    let after = snapshot(&host);
    let attempts = created + refused;
    took.sort();
    eprintln!(
        "{name}: {attempts} creates in {:?} ({created} created, {refused} refused), \
         CreateContainer median {:?}",
        race.elapsed(),
        took.get(took.len() / 2)
    );
    assert_eq!(
        after, before,
        "after {attempts} creates (escape at create {escaped:?}) the host directory changed"
    );
    assert!(
        attempts >= 10,
        "only {attempts} creates ran: the race proves nothing"
    );
    // Mounts may have landed inside the victims' rootfs, never on the host.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mountinfo.contains(&host_str),
        "a mount on the host directory: {mountinfo}"
    );
    // berthd still serves.
    client
        .runtime
        .version(cri::VersionRequest::default())
        .await
        .expect("Version after the race");
    let listed = client
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("ListContainers after the race")
        .into_inner()
        .containers;
    assert!(listed.iter().any(|c| c.id == attacker), "attacker gone");
    remove_container(client, &attacker).await;
    // On failure the test daemon's drop removes every pod it still has.
    remove_pod(client, &pod_id).await;
}

/// One daemon for the three cases: starting one is most of this test's time.
#[tokio::test]
async fn hostile_mount_destinations() {
    let env = start().await;
    let mut client = env.daemon.client().await.expect("client");
    mounts_into_proc_are_refused_with_invalid_argument(&mut client).await;
    swap_race(&mut client, false).await;
    swap_race(&mut client, true).await;
}

async fn mounts_into_proc_are_refused_with_invalid_argument(client: &mut CriClient) {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    let src = dir.path().join("src");
    std::fs::create_dir(&src).expect("src");
    let src_file = dir.path().join("file");
    std::fs::write(&src_file, "1 1\n").expect("file");
    pull(client, BUSYBOX).await;
    let pod = pod_config("procmount", &logs, false);
    let pod_id = run_pod(client, &pod).await;
    for (i, dest) in [
        "/proc",
        "/proc/sys",
        "/proc/self/attr",
        "/tmp/../proc/sysrq-trigger",
    ]
    .into_iter()
    .enumerate()
    {
        let source = if dest.ends_with("trigger") {
            &src_file
        } else {
            &src
        };
        let status = create(
            client,
            &pod_id,
            &pod,
            container_config(
                &format!("proc-{i}"),
                BUSYBOX,
                &["true"],
                vec![bind(dest, source)],
            ),
        )
        .await
        .expect_err(&format!("a mount at {dest} was accepted"));
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{dest}: {status:?}"
        );
        assert!(
            status.message().contains("/proc"),
            "{dest}: {}",
            status.message()
        );
    }
    // lxcfs' files stay allowed (runc's list).
    let id = create(
        client,
        &pod_id,
        &pod,
        container_config(
            "uptime",
            BUSYBOX,
            &["cat", "/proc/uptime"],
            vec![bind("/proc/uptime", &src_file)],
        ),
    )
    .await
    .expect("a bind mount on /proc/uptime");
    fixtures::start(client, &id).await.expect("start");
    let log = logs.join("uptime.log");
    let started = Instant::now();
    let mut text = String::new();
    while started.elapsed() < Duration::from_secs(10) {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("1 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("1 1"),
        "/proc/uptime not the bound file: {text}"
    );
    remove_container(client, &id).await;
    remove_pod(client, &pod_id).await;
}
