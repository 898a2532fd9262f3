//! The host around a container (issue 16): what berthd leaves on disk is closed to
//! the node's other users (CVE-2021-41091 class), the files berthd reads from an
//! image cannot hang, exhaust or redirect it, a container's log stays in its pod's
//! log directory, and a container process that dresses up as a berth-monitor is not
//! mistaken for one when berthd recovers after a restart.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_integration::daemon::{DIE_AFTER_MONITOR_SPAWN, TEST_HOOKS_NEEDED, TestDaemon};
use berth_integration::fixtures::{
    self, container_config, create, pod_config, pull, remove_pod, run_pod, start,
};
use berth_integration::forge::{ImageBuilder, LayerBuilder, busybox_layer};
use berth_integration::registry::TestRegistry;
use berth_proto::v1 as cri;

/// The uid/gid of `nobody`: a local user with no business in Berth's files.
const NOBODY: u32 = 65534;

fn mount_points_below(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&dir))
        .collect()
}

/// An image pushed to `reg` as `hostile/<name>:1`, whose reference it returns.
async fn push(reg: &TestRegistry, name: &str, image: &ImageBuilder) -> String {
    let built = image.build().expect("build image");
    reg.push(&format!("hostile/{name}"), "1", &built)
        .await
        .expect("push");
    format!("{}/hostile/{name}:1", reg.host())
}

/// Each hostile shape of /etc/passwd or /etc/group that berthd reads to resolve the
/// user fails CreateContainer with InvalidArgument naming the file, at once, with no
/// overlay mount left; afterwards berthd still serves and stops on SIGTERM. The FIFO
/// used to block CreateContainer for ever (a berthd thread stuck in open(2), the
/// rootfs mount leaked, and berthd never exited after SIGTERM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_image_files_fail_create_at_once_and_leave_nothing() {
    let reg = TestRegistry::start().expect("registry");
    let mut daemon = TestDaemon::start().await.expect("daemon");
    let mut client = daemon.client().await.expect("client");
    let logs = tempfile::tempdir().expect("logs");

    let etc = || LayerBuilder::new().dir("etc", 0o755).dir("bin", 0o755);
    let passwd = "root:x:0:0:root:/root:/bin/sh\n";
    // Just over berthd's cap (4 MiB); zeros compress to nothing. The unit tests in
    // server/src/container/spec.rs cover the 1 GiB sparse file.
    let big = vec![b'\n'; 4 * 1024 * 1024 + 1];
    let cases: Vec<(&str, LayerBuilder, &str)> = vec![
        ("fifo", etc().fifo("etc/passwd"), "/etc/passwd"),
        (
            "proc-link",
            etc().symlink("etc/passwd", "/proc/self/environ"),
            "/etc/passwd",
        ),
        (
            "host-link",
            etc().symlink("etc/passwd", "../../../../../../../../etc/shadow"),
            "/etc/passwd",
        ),
        (
            "loop",
            etc()
                .symlink("etc/passwd", "/etc/pw2")
                .symlink("etc/pw2", "/etc/passwd"),
            "/etc/passwd",
        ),
        (
            "device",
            etc().char_device("etc/passwd", 1, 3),
            "/etc/passwd",
        ),
        (
            "huge-group",
            etc()
                .file("etc/passwd", passwd, 0o644)
                .file("etc/group", &big, 0o644),
            "/etc/group",
        ),
    ];
    let pod = pod_config("hostile-files", logs.path());
    let pod_id = run_pod(&mut client, &pod).await;
    for (name, layer, file) in cases {
        let image = push(
            &reg,
            name,
            &ImageBuilder::new().layer(layer).cmd(["/bin/sh"]),
        )
        .await;
        pull(&mut client, &image).await;
        let started = Instant::now();
        let created = tokio::time::timeout(
            Duration::from_secs(20),
            create(
                &mut client,
                &pod_id,
                &pod,
                container_config(name, &image, &["/bin/sh"]),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: CreateContainer hung"));
        let err = created.expect_err(&format!("{name}: CreateContainer succeeded"));
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{name}: {}",
            err.message()
        );
        assert!(err.message().contains(file), "{name}: {}", err.message());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name}: took {:?}",
            started.elapsed()
        );
        let left = mount_points_below(&daemon.root_dir.join("containers"));
        assert!(left.is_empty(), "{name}: mounts left behind: {left:?}");
    }
    // Nothing half-created is listed, and berthd still answers.
    let listed = client
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert!(listed.is_empty(), "{listed:?}");
    remove_pod(&mut client, &pod_id).await;
    drop(client);
    let started = Instant::now();
    let status = daemon.stop().expect("berthd stops on SIGTERM");
    assert!(status.success(), "berthd exited with {status}");
    assert!(
        started.elapsed() < Duration::from_secs(14),
        "{:?}",
        started.elapsed()
    );
}

/// Runs `script` with `sh` as user nobody and returns its stdout (std drops the
/// supplementary groups when root sets a uid).
fn as_nobody(script: &str, args: &[PathBuf]) -> String {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("running sh as nobody");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every path below `dir` (not crossing into mounted rootfs or namespace files).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        out.push(p.clone());
        let name = e.file_name();
        if ["rootfs", "upper", "work", "shm", "images"]
            .iter()
            .any(|n| name == *n)
        {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&p, out);
        }
    }
}

/// As user nobody, nothing of a running container can be listed or read: not the
/// container and pod dirs, not its rootfs (the image's setuid binaries and device
/// nodes, the container's files), not config.json (its environment, secrets
/// included), not the runtime state. The daemon's own temp dir is 0711 like
/// /var/lib, so only berthd's modes stand in the way. They used to be 0755/0644.
/// Then the log_path escapes: an absolute log_path outside the pod's log directory
/// and a symlink planted at the log path are refused with InvalidArgument, and no
/// file is written outside the log directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_users_cannot_see_a_running_container_and_logs_stay_in_the_log_dir() {
    let reg = TestRegistry::start().expect("registry");
    let mut daemon = TestDaemon::start().await.expect("daemon");
    let mut client = daemon.client().await.expect("client");
    let logs = tempfile::tempdir().expect("logs");
    std::fs::set_permissions(logs.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let image = push(
        &reg,
        "busybox",
        &ImageBuilder::new()
            .layer(busybox_layer(&[], &[]).expect("busybox layer"))
            .cmd(["sh"]),
    )
    .await;
    pull(&mut client, &image).await;
    let pod = pod_config("closed", logs.path());
    let pod_id = run_pod(&mut client, &pod).await;
    let mut config = container_config("secretive", &image, &["sleep", "3600"]);
    config.envs = vec![cri::KeyValue {
        key: "API_TOKEN".into(),
        value: "hunter2-berth".into(),
    }];
    let id = create(&mut client, &pod_id, &pod, config)
        .await
        .expect("CreateContainer");
    start(&mut client, &id).await.expect("StartContainer");

    let ctr_dir = daemon.root_dir.join("containers").join(&id);
    let config_json = ctr_dir.join("bundle/config.json");
    let text = std::fs::read_to_string(&config_json).expect("config.json");
    assert!(
        text.contains("hunter2-berth"),
        "the secret is in config.json"
    );
    let mode = std::fs::metadata(&config_json)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "config.json mode {mode:o}");
    // Whoever can connect to the monitor's attach socket types into the container's
    // stdin: only root may, whatever umask berthd runs with (bind takes the umask).
    for sock in ["attach.sock", "ctl.sock"] {
        let path = daemon.state_dir.join("rt").join(&id).join(sock);
        let mode = std::fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{sock} mode {mode:o}");
    }

    // Listing: each of these dirs must refuse nobody.
    let dirs = [
        daemon.root_dir.clone(),
        daemon.root_dir.join("containers"),
        ctr_dir.clone(),
        ctr_dir.join("rootfs"),
        ctr_dir.join("rootfs/bin"),
        ctr_dir.join("bundle"),
        daemon.root_dir.join("pods"),
        daemon.root_dir.join("pods").join(&pod_id),
        daemon.state_dir.clone(),
        daemon.state_dir.join("rt"),
        daemon.state_dir.join("rt").join(&id),
        daemon.state_dir.join("pods").join(&pod_id),
        daemon.state_dir.join("pods").join(&pod_id).join("shm"),
    ];
    let listable = as_nobody(
        r#"for d in "$@"; do ls "$d/" >/dev/null 2>&1 && echo "$d"; done; true"#,
        &dirs,
    );
    assert!(listable.is_empty(), "nobody can list:\n{listable}");
    // Reading: every file below the container's and pod's dirs and the state dir.
    let mut files = vec![ctr_dir.join("rootfs/bin/busybox"), config_json.clone()];
    for d in [
        ctr_dir.clone(),
        daemon.root_dir.join("pods"),
        daemon.state_dir.clone(),
    ] {
        walk(&d, &mut files);
    }
    files.retain(|p| std::fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()));
    assert!(files.len() > 5, "{files:?}");
    let readable = as_nobody(
        r#"for f in "$@"; do timeout 2 head -c1 "$f" >/dev/null 2>&1 && echo "$f"; done; true"#,
        &files,
    );
    assert!(readable.is_empty(), "nobody can read:\n{readable}");

    // log_path: absolute outside the log directory, and a planted symlink.
    let outside = tempfile::tempdir().expect("outside");
    let escape = outside.path().join("escaped.log");
    let mut config = container_config("escape", &image, &["echo", "written"]);
    config.log_path = escape.display().to_string();
    let err = create(&mut client, &pod_id, &pod, config)
        .await
        .expect_err("an absolute log_path outside the log directory");
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    assert!(err.message().contains("log_path"), "{}", err.message());
    assert!(!escape.exists(), "a log was written outside the log dir");
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "untouched\n").expect("victim");
    std::os::unix::fs::symlink(&victim, logs.path().join("planted.log")).expect("symlink");
    let mut config = container_config("planted", &image, &["echo", "written"]);
    config.log_path = "planted.log".into();
    let err = create(&mut client, &pod_id, &pod, config)
        .await
        .expect_err("a symlink at the log path");
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "untouched\n"
    );
    // An absolute log_path inside the directory is fine.
    let mut config = container_config("inside", &image, &["echo", "written"]);
    config.log_path = logs.path().join("inside.log").display().to_string();
    let inside = create(&mut client, &pod_id, &pod, config)
        .await
        .expect("an absolute log_path inside the log directory");
    start(&mut client, &inside).await.expect("StartContainer");

    remove_pod(&mut client, &pod_id).await;
    drop(client);
    daemon.stop().expect("stop");
}

/// A tiny static program that re-executes itself as `/usr/local/bin/berth-monitor`
/// with the arguments it was given (argv[0] rewritten, as `exec -a` does; its comm
/// set too), then sleeps: a container process forging a berth-monitor's command
/// line. Its executable's own name is `forger`, so host-wide monitor counts that go
/// by /proc/<pid>/exe are not disturbed.
const FORGER_SRC: &str = r#"
use std::os::unix::process::CommandExt;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.first().map(String::as_str) != Some("/usr/local/bin/berth-monitor") {
        let e = std::process::Command::new("/proc/self/exe")
            .arg0("/usr/local/bin/berth-monitor")
            .args(&args[1..])
            .exec();
        eprintln!("re-exec: {e}");
        std::process::exit(1);
    }
    unsafe extern "C" { fn prctl(op: i32, ...) -> i32; }
    // SAFETY: PR_SET_NAME with a NUL-terminated string.
    unsafe { prctl(15, c"berth-monitor".as_ptr()) };
    loop { std::thread::sleep(std::time::Duration::from_secs(3600)); }
}
"#;

/// Host pids whose command line has `needle` among its arguments, with argv[0].
fn processes_with_arg(needle: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
    {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&needle.as_bytes()) {
            out.push((pid, String::from_utf8_lossy(args[0]).into_owned()));
        }
    }
    out
}

/// Alive and not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_owned()))
        .is_some_and(|r| !r.starts_with('Z'))
}

/// berthd dies right after spawning container B's monitor (the test hook; the
/// monitor is SIGSTOPped mid-create), so on restart recovery must find B's monitor by
/// what /proc says. Meanwhile a process in container A forges B's monitor's command
/// line exactly (argv[0] `/usr/local/bin/berth-monitor`, `--bundle <B's bundle>`,
/// B's id). Recovery must kill B's real monitor and leave the forger alone, and still
/// re-attach A's real monitor. The old recovery went by argv alone and SIGKILLed the
/// forger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_monitor_command_line_does_not_fool_recovery() {
    let reg = TestRegistry::start().expect("registry");
    let mut daemon = TestDaemon::start().await.expect("daemon");
    let logs = tempfile::tempdir().expect("logs");
    let shared = tempfile::tempdir().expect("shared");
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    fixtures::build_static_program(shared.path(), "forger", FORGER_SRC);
    let mut client = daemon.client().await.expect("client");
    let image = push(
        &reg,
        "busybox-forge",
        &ImageBuilder::new()
            .layer(busybox_layer(&[], &[]).expect("busybox layer"))
            .cmd(["sh"]),
    )
    .await;
    pull(&mut client, &image).await;
    let pod = pod_config("forge", logs.path());
    let pod_id = run_pod(&mut client, &pod).await;

    // Container A: waits for the arguments to forge, then becomes the forger.
    let mut a_config = container_config(
        "forger",
        &image,
        &[
            "sh",
            "-c",
            "while [ ! -s /shared/args ]; do sleep 0.1; done; exec /shared/forger $(cat /shared/args)",
        ],
    );
    a_config.mounts = vec![cri::Mount {
        container_path: "/shared".into(),
        host_path: shared.path().display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let a = create(&mut client, &pod_id, &pod, a_config)
        .await
        .expect("create A");
    start(&mut client, &a).await.expect("StartContainer");

    // berthd with the hook: it dies right after spawning B's monitor.
    let trigger = daemon.dir().join("die-after-monitor-spawn");
    daemon.set_env(DIE_AFTER_MONITOR_SPAWN, &trigger.display().to_string());
    drop(client);
    daemon.restart().await.expect("restart with the hook");
    let mut client = daemon.client().await.expect("client");
    std::fs::write(&trigger, "stop-monitor").expect("arm the hook");
    let containers = daemon.root_dir.join("containers");
    let before: Vec<_> = std::fs::read_dir(&containers)
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    let created = tokio::time::timeout(
        Duration::from_secs(30),
        create(
            &mut client,
            &pod_id,
            &pod,
            container_config("victim", &image, &["sleep", "3600"]),
        ),
    )
    .await
    .expect("CreateContainer hung");
    assert!(
        created.is_err(),
        "the hook did not fire; {TEST_HOOKS_NEEDED}"
    );
    drop(client);
    let b = std::fs::read_dir(&containers)
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .find(|n| !before.contains(n))
        .expect("B's record")
        .to_string_lossy()
        .into_owned();
    let bundle = containers.join(&b).join("bundle");
    let real: Vec<i32> = processes_with_arg(&b)
        .into_iter()
        .filter(|(_, argv0)| argv0.ends_with("/berth-monitor") && !argv0.starts_with("/usr/local"))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(real.len(), 1, "B's real monitor: {real:?}");

    // The forgery: B's monitor's arguments, as the real one has them.
    let args = format!(
        "run --root {} --bundle {} {b}",
        daemon.state_dir.join("rt").display(),
        bundle.display()
    );
    std::fs::write(shared.path().join("args.tmp"), &args).expect("args");
    std::fs::rename(shared.path().join("args.tmp"), shared.path().join("args")).expect("args");
    let deadline = Instant::now() + Duration::from_secs(10);
    let forger = loop {
        if let Some((pid, _)) = processes_with_arg(&b)
            .into_iter()
            .find(|(_, argv0)| argv0 == "/usr/local/bin/berth-monitor")
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the forger never showed up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let forged_cmdline = std::fs::read(format!("/proc/{forger}/cmdline")).expect("cmdline");
    assert!(
        forged_cmdline
            .split(|c| *c == 0)
            .any(|a| a == bundle.display().to_string().as_bytes()),
        "the forgery names B's bundle"
    );

    daemon.restart().await.expect("restart");
    let mut client = daemon.client().await.expect("client");
    // Recovery ran before the daemon answered: B's real monitor is gone (reaped or
    // a zombie of whoever inherited it), the forger is untouched.
    let deadline = Instant::now() + Duration::from_secs(5);
    while real.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!real.iter().any(|p| alive(*p)), "B's real monitor survived");
    assert!(
        alive(forger),
        "recovery killed the forger (a container process)"
    );
    // A's real monitor was found again: A is running, and stopping it is seen.
    let status = fixtures::container_status(&mut client, &a).await;
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    client
        .runtime
        .stop_container(cri::StopContainerRequest {
            container_id: a.clone(),
            timeout: 0,
        })
        .await
        .expect("StopContainer A");
    let status = fixtures::container_status(&mut client, &a).await;
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    assert!(!alive(forger), "the forger dies with its container");

    remove_pod(&mut client, &pod_id).await;
    drop(client);
    daemon.stop().expect("stop");
}

/// The `pid:[inode]` a container wrote to its log (`readlink /proc/self/ns/pid`),
/// waiting up to 10 s for it.
fn pid_ns_in_log(log: &Path) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(at) = text.find("pid:[")
            && let Some(end) = text[at..].find(']')
        {
            return Some(text[at..=at + end].to_owned());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn ns_of(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("pid:[{}]", std::fs::metadata(path).expect("stat ns").ino())
}

/// Makes the next process forked on the host get `pid`: sets ns_last_pid and forks
/// `sleep` until one lands on it (other processes on the host may take it first).
fn take_pid(pid: i32) -> Option<std::process::Child> {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", pid - 1)).ok()?;
        let mut child = std::process::Command::new("sleep")
            .arg("120")
            .spawn()
            .ok()?;
        if i32::try_from(child.id()) == Ok(pid) {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

/// A host process holding a pid, killed when dropped (even if the test fails).
struct Squatter(std::process::Child);

impl Drop for Squatter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pod sharing one pid namespace: its containers are in the namespace pinned under
/// the pod's pin dir (the infra's), and once the infra is dead and its pid taken by
/// a host process, a new container of the pod never lands in that process's
/// namespace (with a /proc/<pid>/ns/pid path it joined the host's pid namespace).
/// Removing the pod leaves nothing mounted under the state dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_pid_namespace_is_pinned_and_never_named_by_a_reused_pid() {
    let reg = TestRegistry::start().expect("registry");
    let mut daemon = TestDaemon::start().await.expect("daemon");
    let mut client = daemon.client().await.expect("client");
    let logs = tempfile::tempdir().expect("logs");
    let image = push(
        &reg,
        "busybox-pidns",
        &ImageBuilder::new()
            .layer(busybox_layer(&[], &[]).expect("busybox layer"))
            .cmd(["sh"]),
    )
    .await;
    pull(&mut client, &image).await;
    let mut pod = pod_config("pidns", logs.path());
    if let Some(linux) = pod.linux.as_mut() {
        linux.security_context = Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let pod_id = run_pod(&mut client, &pod).await;
    let pin = daemon.state_dir.join("ns").join(&pod_id).join("pid");
    assert!(pin.exists(), "no pid namespace pin at {}", pin.display());
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            daemon
                .root_dir
                .join("pods")
                .join(&pod_id)
                .join("record.json"),
        )
        .expect("record"),
    )
    .expect("record json");
    let infra =
        i32::try_from(record["state"]["infra_pid"].as_i64().expect("infra_pid")).expect("pid");
    let pinned = ns_of(&pin);
    assert_eq!(
        pinned,
        ns_of(Path::new(&format!("/proc/{infra}/ns/pid"))),
        "the pin is the infra's pid namespace"
    );
    assert_ne!(pinned, ns_of(Path::new("/proc/self/ns/pid")));

    for name in ["first", "second"] {
        let config = container_config(
            name,
            &image,
            &["sh", "-c", "readlink /proc/self/ns/pid; exec sleep 3600"],
        );
        let id = create(&mut client, &pod_id, &pod, config)
            .await
            .expect("CreateContainer");
        start(&mut client, &id).await.expect("StartContainer");
        let seen = pid_ns_in_log(&logs.path().join(format!("{name}.log")));
        assert_eq!(seen.as_deref(), Some(pinned.as_str()), "container {name}");
    }

    // The infra dies (its pid namespace with it: the containers are killed) and a
    // host process takes its pid.
    // SAFETY: kill(2) on the infra's pid, verified just above to be the pod's infra.
    unsafe { libc::kill(infra, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    let gone = || !Path::new(&format!("/proc/{infra}")).exists();
    while !gone() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(gone(), "the infra did not die and get reaped");
    let squatter = Squatter(take_pid(infra).expect("a host process on the infra's pid"));
    let config = container_config(
        "late",
        &image,
        &["sh", "-c", "readlink /proc/self/ns/pid; exec sleep 3600"],
    );
    // Refused as the precondition it is; with a /proc/<pid> path the container ran,
    // in the host's pid namespace.
    let err = create(&mut client, &pod_id, &pod, config)
        .await
        .expect_err("a container of a pod whose infra is dead");
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        err.message()
    );
    assert!(err.message().contains("infra"), "{}", err.message());
    let seen = std::fs::read_to_string(logs.path().join("late.log")).unwrap_or_default();
    assert!(seen.is_empty(), "the late container ran: {seen}");
    drop(squatter);

    remove_pod(&mut client, &pod_id).await;
    assert!(!pin.exists(), "the pid namespace pin outlived the pod");
    let mounts = mount_points_below(&daemon.state_dir)
        .into_iter()
        .filter(|m| m.contains(&pod_id))
        .collect::<Vec<_>>();
    assert!(mounts.is_empty(), "left mounted: {mounts:?}");
    drop(client);
    daemon.stop().expect("stop");
}
