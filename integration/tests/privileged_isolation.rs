//! Isolation as a workload sees it: from inside a default busybox container (no
//! privileges, no extra capabilities), the host's processes, mounts, modules, clock
//! and files are out of reach, no host fd or cwd leaks in (the CVE-2024-21626 class),
//! the host binaries a container can name through /proc are not writable
//! (CVE-2019-5736), a symlink planted in a shared volume does not redirect another
//! container's mount onto the host (CVE-2021-30465), and the RuntimeDefault seccomp
//! profile refuses user namespaces and keyrings. Plus the daemon's own surfaces:
//! streaming URLs are single-use, expire and listen on loopback, and the CRI socket
//! is not world-accessible.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_integration::fixtures::{
    self, BUSYBOX, exec_output, pod_config, pull, remove_pod, run_pod, try_create_started,
    with_seccomp,
};
use berth_integration::setup::Node;
use berth_proto::v1 as cri;

/// A small static program run inside the container for the checks busybox has no
/// applet for: it makes the named syscall and prints `ok` or the errno.
const PROBE_SRC: &str = r#"
unsafe extern "C" {
    fn syscall(n: i64, ...) -> i64;
    fn __errno_location() -> *mut i32;
}
fn main() {
    let what = std::env::args().nth(1).unwrap_or_default();
    // SAFETY: raw syscalls with integer arguments only.
    let rc = unsafe {
        match what.as_str() {
            // unshare(CLONE_NEWUSER)
            "userns" => syscall(272, 0x1000_0000i64),
            // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 1)
            "keyctl" => syscall(250, 0i64, -3i64, 1i64),
            // add_key("user", "berth", "x", 1, KEY_SPEC_PROCESS_KEYRING)
            "add_key" => syscall(248, c"user".as_ptr(), c"berth".as_ptr(), c"x".as_ptr(), 1i64, -2i64),
            // clock_settime(CLOCK_REALTIME, {0, 0})
            "settime" => { let ts = [0i64, 0i64]; syscall(227, 0i64, ts.as_ptr()) }
            _ => { println!("unknown probe"); std::process::exit(2) }
        }
    };
    if rc < 0 {
        // SAFETY: errno is thread-local and valid after a failed call.
        println!("errno {}", unsafe { *__errno_location() });
        std::process::exit(1);
    }
    println!("ok");
}
"#;

/// Removes a host path on drop (files the test plants, and anything an escape made).
struct RemoveOnDrop(Vec<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        }
    }
}

/// A busybox container running `command` with `mounts`, under `seccomp` when given.
fn container_config(
    name: &str,
    command: &[&str],
    mounts: Vec<cri::Mount>,
    seccomp: Option<cri::security_profile::ProfileType>,
) -> cri::ContainerConfig {
    let config = cri::ContainerConfig {
        mounts,
        ..fixtures::container_config(name, BUSYBOX, command)
    };
    match seccomp {
        Some(profile) => with_seccomp(config, profile),
        None => config,
    }
}

fn host_mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_default_container_cannot_reach_the_host() {
    let node = Node::start().await.expect("node");
    let mut client = node.daemon.client().await.expect("client");
    let dir = tempfile::tempdir().expect("tempdir");
    let probe_dir = dir.path().join("probe");
    std::fs::create_dir(&probe_dir).expect("probe dir");
    fixtures::build_static_program(&probe_dir, "probe", PROBE_SRC);
    // A host file no container should be able to read, at a path only the host has.
    let marker_name = format!("berth-isolation-{}", std::process::id());
    let marker = std::env::temp_dir().join(&marker_name);
    std::fs::write(&marker, "host secret").expect("marker");
    let _cleanup = RemoveOnDrop(vec![marker.clone()]);

    pull(&mut client, BUSYBOX).await;
    let pod = pod_config("iso", &dir.path().join("logs"));
    let pod_id = run_pod(&mut client, &pod).await;
    // The init records its own fds and cwd before it becomes `sleep`.
    let probe_mount = cri::Mount {
        container_path: "/probe".to_owned(),
        host_path: probe_dir.display().to_string(),
        readonly: true,
        ..Default::default()
    };
    let id = try_create_started(
        &mut client,
        &pod_id,
        &pod,
        container_config(
            "main",
            &[
                "sh",
                "-c",
                "ls -l /proc/self/fd/ > /tmp/init-fds; readlink /proc/self/cwd > /tmp/init-cwd; exec sleep 3600",
            ],
            vec![probe_mount.clone()],
            None,
        ),
    )
    .await
    .expect("default container starts");
    // A URL taken now is checked for expiry at the end (the token lives 60 s).
    let stream_url = client
        .runtime
        .exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .expect("Exec")
        .into_inner()
        .url;
    let url_taken = Instant::now();

    // Host processes: the pod's pid namespace holds only its own few processes.
    let r = exec_output(&mut client, &id, &["sh", "-c", "ls -d /proc/[0-9]*"]).await;
    let pids: Vec<&str> = r.stdout.split_whitespace().collect();
    assert!(
        !pids.is_empty() && pids.len() < 10,
        "the container sees {} processes: {pids:?}",
        pids.len()
    );
    let r = exec_output(
        &mut client,
        &id,
        &["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"],
    )
    .await;
    assert!(
        !r.stdout.contains("berthd") && !r.stdout.contains("cargo"),
        "host processes are visible: {}",
        r.stdout
    );
    let r = exec_output(&mut client, &id, &["ps", "-o", "pid,args"]).await;
    assert!(!r.stdout.contains("berthd"), "{}", r.stdout);

    // Mounts: no CAP_SYS_ADMIN, so no new mounts of any kind.
    for cmd in [
        "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m",
        "mkdir -p /tmp/p && mount -t proc proc /tmp/p",
        "mount -o remount,rw /probe",
        "mount --bind /tmp /probe",
        "umount /proc",
    ] {
        let r = exec_output(&mut client, &id, &["sh", "-c", cmd]).await;
        assert_ne!(r.code, 0, "{cmd} succeeded: {}{}", r.stdout, r.stderr);
    }
    let r = exec_output(&mut client, &id, &["sh", "-c", "echo x > /probe/written"]).await;
    assert_ne!(r.code, 0, "a read-only volume was writable");

    // Modules: init_module/finit_module need CAP_SYS_MODULE. A kernel built without
    // module support (no /proc/modules, as on some VMs) answers ENOSYS to everyone.
    let r = exec_output(&mut client, &id, &["insmod", "/bin/busybox"]).await;
    assert_ne!(r.code, 0);
    let host_has_modules = Path::new("/proc/modules").exists();
    assert!(
        r.stderr.contains("not permitted")
            || !host_has_modules && r.stderr.contains("does not support"),
        "insmod failed for another reason than a missing privilege: {}",
        r.stderr
    );
    let r = exec_output(
        &mut client,
        &id,
        &["sh", "-c", "echo /tmp/x > /proc/sys/kernel/modprobe"],
    )
    .await;
    assert_ne!(r.code, 0, "the module helper path is writable");

    // Clock: setting the time needs CAP_SYS_TIME.
    // (busybox date reports the failure on stderr but exits 0.)
    let r = exec_output(&mut client, &id, &["date", "-s", "2001-01-01 00:00:00"]).await;
    assert!(r.stderr.contains("can't set date"), "date -s: {}", r.stderr);
    assert!(r.stderr.contains("not permitted"), "{}", r.stderr);
    let r = exec_output(&mut client, &id, &["/probe/probe", "settime"]).await;
    assert_eq!(r.stdout.trim(), "errno 1", "clock_settime: {}", r.stdout);
    let r = exec_output(&mut client, &id, &["hwclock", "-w"]).await;
    assert_ne!(r.code, 0, "hwclock -w succeeded");
    let year: u32 = std::process::Command::new("date")
        .arg("+%Y")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    assert!(year > 2001, "the host clock changed: {year}");

    // Host files through /proc/<pid>/root of every process the container can see.
    let r = exec_output(
        &mut client,
        &id,
        &[
            "sh",
            "-c",
            &format!("for p in /proc/[0-9]*; do cat $p/root/tmp/{marker_name} 2>/dev/null; cat $p/root{} 2>/dev/null; done; true", marker.display()),
        ],
    )
    .await;
    assert!(
        !r.stdout.contains("host secret"),
        "a host file is readable through /proc/*/root"
    );
    // CVE-2019-5736: the binaries behind the processes the container can see (the
    // pod's infra process is berth-monitor) cannot be opened for writing.
    let r = exec_output(
        &mut client,
        &id,
        &[
            "sh",
            "-c",
            "for p in /proc/[0-9]*; do if (: >> $p/exe) 2>/dev/null; then echo WRITABLE $p $(readlink $p/exe); fi; done; true",
        ],
    )
    .await;
    assert!(!r.stdout.contains("WRITABLE"), "{}", r.stdout);
    let monitor = berth_integration::daemon::TestDaemon::binary()
        .expect("berthd")
        .with_file_name("berth-monitor");
    let monitor_before = std::fs::read(&monitor).expect("read berth-monitor");

    // CVE-2024-21626: no host fd and no host cwd, in the init or in exec'd processes.
    let init_fds = exec_output(&mut client, &id, &["cat", "/tmp/init-fds"])
        .await
        .stdout;
    let exec_fds = exec_output(&mut client, &id, &["ls", "-l", "/proc/self/fd/"])
        .await
        .stdout;
    for (who, listing) in [("init", &init_fds), ("exec", &exec_fds)] {
        for line in listing.lines().filter(|l| l.contains("->")) {
            let (fd, target) = line
                .rsplit_once(" -> ")
                .map(|(l, t)| (l.split_whitespace().last().unwrap_or(""), t))
                .expect("ls -l line");
            let fd: u32 = fd.parse().expect("fd number");
            let expected = fd <= 2
                && (target.starts_with("pipe:")
                    || target == "/dev/null"
                    || target.starts_with("/dev/pts/")
                    || target.starts_with("socket:"))
                || target.starts_with("/proc/") && target.ends_with("/fd")
                // The init's listing is written through its own redirection.
                || who == "init" && fd == 1 && target == "/tmp/init-fds";
            assert!(
                expected,
                "{who} holds an unexpected fd {fd} -> {target}:\n{listing}"
            );
        }
    }
    let init_cwd = exec_output(&mut client, &id, &["cat", "/tmp/init-cwd"])
        .await
        .stdout;
    assert_eq!(init_cwd.trim(), "/", "the init's cwd");
    let r = exec_output(&mut client, &id, &["readlink", "/proc/self/cwd"]).await;
    assert_eq!(r.stdout.trim(), "/", "an exec'd process's cwd");
    let r = exec_output(
        &mut client,
        &id,
        &["sh", "-c", "cd /proc/self/cwd/../../../../ && ls"],
    )
    .await;
    assert!(
        r.stdout.contains("probe") && !r.stdout.contains(&marker_name),
        "walking up from the cwd leaves the rootfs: {}",
        r.stdout
    );

    // Seccomp: an unset profile means Unconfined in CRI (as in containerd), so these
    // run with RuntimeDefault, as kubelet asks for with seccompDefault or the pod spec.
    let confined = try_create_started(
        &mut client,
        &pod_id,
        &pod,
        container_config(
            "confined",
            &["sleep", "3600"],
            vec![probe_mount.clone()],
            Some(cri::security_profile::ProfileType::RuntimeDefault),
        ),
    )
    .await
    .expect("RuntimeDefault container starts");
    for probe in ["userns", "keyctl", "add_key"] {
        let r = exec_output(&mut client, &confined, &["/probe/probe", probe]).await;
        assert_eq!(
            r.stdout.trim(),
            "errno 1",
            "{probe} under RuntimeDefault: {}",
            r.stdout
        );
    }
    let r = exec_output(&mut client, &confined, &["unshare", "-U", "true"]).await;
    assert_ne!(r.code, 0, "unshare -U succeeded under RuntimeDefault");
    let r = exec_output(&mut client, &confined, &["/probe/probe", "settime"]).await;
    assert_eq!(r.stdout.trim(), "errno 1", "{}", r.stdout);

    // CVE-2021-30465: a container plants a symlink in a shared volume, pointing at
    // `/`; another container's volume whose destination runs through that symlink
    // must land inside its own rootfs (or be refused), never on the host.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("shared dir");
    std::os::unix::fs::symlink("/", shared.join("evil")).expect("plant symlink");
    let escape_name = format!("berth-escape-{}", std::process::id());
    let host_escape = Path::new("/").join(&escape_name);
    let _cleanup_escape = RemoveOnDrop(vec![host_escape.clone()]);
    let victim_src = dir.path().join("victim");
    std::fs::create_dir(&victim_src).expect("victim dir");
    std::fs::write(victim_src.join("payload"), "payload").expect("payload");
    let mounts_before = host_mount_points();
    let escaping = try_create_started(
        &mut client,
        &pod_id,
        &pod,
        container_config(
            "escaping",
            &["sleep", "3600"],
            vec![
                cri::Mount {
                    container_path: "/shared".to_owned(),
                    host_path: shared.display().to_string(),
                    ..Default::default()
                },
                cri::Mount {
                    container_path: format!("/shared/evil/{escape_name}"),
                    host_path: victim_src.display().to_string(),
                    readonly: true,
                    ..Default::default()
                },
            ],
            None,
        ),
    )
    .await;
    assert!(
        !host_escape.exists(),
        "a mount destination through a planted symlink created {} on the host",
        host_escape.display()
    );
    let mounts_after = host_mount_points();
    assert!(
        !mounts_after.iter().any(|m| m.contains(&escape_name)),
        "a mount landed on the host: {:?}",
        mounts_after
            .iter()
            .filter(|m| !mounts_before.contains(m))
            .collect::<Vec<_>>()
    );
    if let Ok(escaping) = &escaping {
        // Accepted: the symlink was resolved inside the container's rootfs.
        let r = exec_output(
            &mut client,
            escaping,
            &["cat", &format!("/{escape_name}/payload")],
        )
        .await;
        assert_eq!(
            r.stdout, "payload",
            "the volume is inside the rootfs: {}",
            r.stderr
        );
    }

    // The berth-monitor binary on the host is unchanged.
    assert_eq!(
        std::fs::read(&monitor).expect("read berth-monitor"),
        monitor_before
    );

    // Streaming: loopback only, single-use, expiring tokens.
    let url = client
        .runtime
        .exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .expect("Exec")
        .into_inner()
        .url;
    let (addr, path) = split_url(&url);
    assert!(addr.starts_with("127.0.0.1:"), "streaming URL {url}");
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let listeners = tcp_listeners(port);
    assert!(
        !listeners.is_empty() && listeners.iter().all(|a| a == "0100007F"),
        "the streaming port {port} listens on {listeners:?} (hex addresses)"
    );
    let first = http_get_status(addr, path);
    assert_ne!(first, 404, "a fresh streaming URL is known");
    let second = http_get_status(addr, path);
    assert_eq!(second, 404, "a streaming URL works once");
    let (addr, path) = split_url(&stream_url);
    let left = Duration::from_secs(62).saturating_sub(url_taken.elapsed());
    tokio::time::sleep(left).await;
    assert_eq!(http_get_status(addr, path), 404, "a streaming URL expires");

    // The CRI socket: owner and group only.
    let mode = std::fs::metadata(&node.daemon.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o007,
        0,
        "the CRI socket is world-accessible: {mode:o}"
    );

    remove_pod(&mut client, &pod_id).await;
}

fn split_url(url: &str) -> (&str, &str) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let slash = rest.find('/').expect("path");
    (&rest[..slash], &rest[slash..])
}

/// Local addresses (hex, as /proc/net/tcp writes them) listening on `port`.
fn tcp_listeners(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 3
                && f[3] == "0A"
                && let Some((a, p)) = f[1].split_once(':')
                && u16::from_str_radix(p, 16).ok() == Some(port)
            {
                out.push(a.to_owned());
            }
        }
    }
    out
}

/// A plain GET (no upgrade): the status code the streaming server answers.
fn http_get_status(addr: &str, path: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to streaming server");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).expect("response");
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"))
}
