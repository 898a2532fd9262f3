//! Real containers from a busybox rootfs, driven through the `berth-runtime` binary
//! (a single-threaded process, as the library requires). Needs root, cgroup v1 or v2,
//! and Debian's busybox-static at /bin/busybox.
//!
//! Every test cleans up with a Drop guard (`berth-runtime delete --force`, which kills
//! the processes and removes the cgroup) and temp dirs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const RUNTIME: &str = env!("CARGO_BIN_EXE_berth-runtime");

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A bundle with a busybox rootfs and a state root, all in one temp dir; deletes its
/// container (if any) on drop.
struct Bundle {
    tmp: tempfile::TempDir,
    id: String,
    cgroup: String,
}

impl Bundle {
    fn new() -> Bundle {
        let tmp = tempfile::tempdir().expect("tempdir");
        let rootfs = tmp.path().join("bundle/rootfs");
        let bin = rootfs.join("bin");
        fs::create_dir_all(&bin).unwrap();
        fs::copy("/bin/busybox", bin.join("busybox")).expect("copy /bin/busybox (busybox-static)");
        let list = // The host binary: executing the fresh copy can hit ETXTBSY while a parallel
        // test forks with its write fd open.
        Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" && !applet.contains('/') {
                // Hard links, not symlinks: masking an applet must not mask busybox.
                fs::hard_link(bin.join("busybox"), bin.join(applet)).unwrap();
            }
        }
        for d in ["proc", "sys", "dev", "etc", "tmp"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let b = Bundle {
            tmp,
            id: format!("t{pid}-{n}"),
            cgroup: format!("/berth-test-{pid}-{n}"),
        };
        let out = b.cli(&["spec", "--bundle", b.bundle().to_str().unwrap()]);
        assert!(out.status.success(), "spec: {out:?}");
        b.edit_spec(|s| {
            s["process"]["terminal"] = json!(false);
            s["hostname"] = json!("berth-test");
            s["linux"]["cgroupsPath"] = json!(b.cgroup.clone());
        });
        b
    }

    fn bundle(&self) -> PathBuf {
        self.tmp.path().join("bundle")
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    fn edit_spec(&self, f: impl FnOnce(&mut Value)) {
        let path = self.bundle().join("config.json");
        let mut v: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        f(&mut v);
        fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }

    fn args(&self, args: &[&str]) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.edit_spec(|s| s["process"]["args"] = json!(args));
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(RUNTIME)
            .arg("--root")
            .arg(self.root())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run berth-runtime")
    }

    /// `berth-runtime run` in the foreground: (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.args(args);
        let out = Command::new(RUNTIME)
            .arg("--root")
            .arg(self.root())
            .args(["run", "--bundle", self.bundle().to_str().unwrap(), &self.id])
            .stdin(Stdio::null())
            .output()
            .expect("run berth-runtime");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// create (stdout/stderr to files) + start.
    fn start_detached(&self, args: &[&str]) {
        self.args(args);
        let out_file = fs::File::create(self.tmp.path().join("out")).unwrap();
        let err_file = fs::File::create(self.tmp.path().join("err")).unwrap();
        let st = Command::new(RUNTIME)
            .arg("--root")
            .arg(self.root())
            .args([
                "create",
                "--bundle",
                self.bundle().to_str().unwrap(),
                &self.id,
            ])
            .stdin(Stdio::null())
            .stdout(out_file)
            .stderr(err_file)
            .status()
            .unwrap();
        assert!(st.success(), "create failed: {}", self.output().1);
        let out = self.cli(&["start", &self.id]);
        assert!(out.status.success(), "start: {out:?}");
    }

    /// What a detached container wrote: (stdout, stderr).
    fn output(&self) -> (String, String) {
        (
            fs::read_to_string(self.tmp.path().join("out")).unwrap_or_default(),
            fs::read_to_string(self.tmp.path().join("err")).unwrap_or_default(),
        )
    }

    fn state(&self) -> Value {
        let out = self.cli(&["state", &self.id]);
        assert!(out.status.success(), "state: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn wait_stopped(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.state()["status"] != "stopped" {
            assert!(
                Instant::now() < deadline,
                "container still {} after {timeout:?}",
                self.state()["status"]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cgroup_file(&self, controller: &str, file: &str) -> String {
        let p = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(self.cgroup.trim_start_matches('/'))
            .join(file);
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = self.cli(&["delete", "--force", &self.id]);
        // If delete could not run, still remove the cgroup directories we asked for.
        for c in [
            "cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "hugetlb", "freezer",
            "systemd",
        ] {
            let _ = fs::remove_dir(
                Path::new("/sys/fs/cgroup")
                    .join(c)
                    .join(self.cgroup.trim_start_matches('/')),
            );
        }
    }
}

#[test]
fn container_is_pid_1_and_sees_no_host_processes() {
    let b = Bundle::new();
    let (code, out, err) = b.run(&["sh", "-c", "echo pid=$$; ls /proc | grep -c '^[0-9]'"]);
    assert_eq!(code, 0, "stderr: {err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("pid=1"));
    // sh, ls and grep at most: no host process is visible.
    let n: u32 = lines.next().unwrap().trim().parse().unwrap();
    assert!(n <= 3, "container sees {n} processes");
    // The container and its state are gone after run.
    assert!(!b.root().join(&b.id).exists());
    assert!(
        !Path::new("/sys/fs/cgroup/memory")
            .join(b.cgroup.trim_start_matches('/'))
            .exists()
    );
}

#[test]
fn host_sees_the_container_and_can_kill_it() {
    let b = Bundle::new();
    b.start_detached(&["sleep", "1000"]);
    let st = b.state();
    assert_eq!(st["status"], "running");
    let pid = st["pid"].as_i64().unwrap();
    // `start` returns once the init took the start signal; its execve follows at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let cmdline = fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
        if cmdline.starts_with("sleep\0") {
            break;
        }
        assert!(Instant::now() < deadline, "{cmdline:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = b.cli(&["kill", &b.id, "KILL"]);
    assert!(out.status.success(), "{out:?}");
    b.wait_stopped(Duration::from_secs(10));
    assert_eq!(b.state()["pid"], 0);
    let out = b.cli(&["delete", &b.id]);
    assert!(out.status.success(), "{out:?}");
    assert!(!b.root().join(&b.id).exists());
}

#[test]
fn created_container_waits_for_start() {
    let b = Bundle::new();
    b.args(&["sh", "-c", "echo started"]);
    let out_file = fs::File::create(b.tmp.path().join("out")).unwrap();
    let st = Command::new(RUNTIME)
        .arg("--root")
        .arg(b.root())
        .args(["create", "--bundle", b.bundle().to_str().unwrap(), &b.id])
        .stdout(out_file)
        .status()
        .unwrap();
    assert!(st.success());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(b.state()["status"], "created");
    assert_eq!(b.output().0, "", "the process ran before start");
    assert!(b.cli(&["start", &b.id]).status.success());
    b.wait_stopped(Duration::from_secs(10));
    assert_eq!(b.output().0, "started\n");
}

#[test]
fn hostname_is_isolated() {
    let b = Bundle::new();
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let (code, out, err) = b.run(&["hostname"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "berth-test");
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host
    );
}

#[test]
fn new_network_namespace_has_only_loopback() {
    let b = Bundle::new();
    let (code, out, err) = b.run(&["ip", "-o", "link"]);
    assert_eq!(code, 0, "{err}");
    let names: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(str::trim)
        .collect();
    assert_eq!(names, ["lo"], "{out}");
}

#[test]
fn read_only_rootfs_refuses_writes() {
    let b = Bundle::new();
    let (code, _out, err) = b.run(&["touch", "/newfile"]);
    assert_ne!(code, 0);
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!b.bundle().join("rootfs/newfile").exists());
}

#[test]
fn masked_proc_files_read_empty() {
    let host_timer_list = fs::read("/proc/timer_list").unwrap();
    assert!(!host_timer_list.is_empty());
    let b = Bundle::new();
    let (code, out, err) = b.run(&[
        "sh",
        "-c",
        "for f in /proc/kcore /proc/keys /proc/timer_list; do [ -e $f ] && echo $f $(wc -c < $f); done",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("/proc/timer_list 0"), "{out}");
    for line in out.lines() {
        assert!(line.ends_with(" 0"), "not masked: {line}");
    }
}

#[test]
fn effective_capabilities_match_the_spec() {
    let b = Bundle::new();
    b.edit_spec(|s| {
        let caps = json!(["CAP_KILL", "CAP_NET_RAW"]);
        s["process"]["capabilities"] = json!({
            "bounding": caps, "effective": caps, "permitted": caps, "inheritable": [], "ambient": []
        });
    });
    let (code, out, err) = b.run(&["grep", "-E", "^Cap(Eff|Bnd|Prm)", "/proc/self/status"]);
    assert_eq!(code, 0, "{err}");
    let want = format!("{:016x}", (1u64 << 5) | (1u64 << 13));
    for set in ["CapEff", "CapBnd", "CapPrm"] {
        let line = out.lines().find(|l| l.starts_with(set)).unwrap();
        assert_eq!(line.split_whitespace().nth(1), Some(want.as_str()), "{out}");
    }
}

#[test]
fn seccomp_rule_blocks_a_syscall_with_eperm() {
    let b = Bundle::new();
    b.edit_spec(|s| {
        s["root"]["readonly"] = json!(false);
        s["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
    });
    let (code, _out, err) = b.run(&["mkdir", "/blocked"]);
    assert_ne!(code, 0);
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(!b.bundle().join("rootfs/blocked").exists());
    // Without the rule the same command works.
    b.edit_spec(|s| s["linux"]["seccomp"] = Value::Null);
    let (code, _out, err) = b.run(&["mkdir", "/allowed"]);
    assert_eq!(code, 0, "{err}");
    assert!(b.bundle().join("rootfs/allowed").is_dir());
}

#[test]
fn memory_limit_oom_kills_and_the_oom_is_reported() {
    let b = Bundle::new();
    b.edit_spec(|s| {
        s["linux"]["resources"] = json!({"memory": {"limit": 83886080, "swap": 83886080}});
    });
    b.start_detached(&[
        "sh",
        "-c",
        "yes | tr \\\\n x | head -c 200m | grep n; echo rc=$?",
    ]);
    b.wait_stopped(Duration::from_secs(60));
    let (out, err) = b.output();
    assert!(out.contains("rc=137"), "stdout {out:?} stderr {err:?}");
    let oom = b.cgroup_file("memory", "memory.oom_control");
    let kills: u64 = oom
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(kills >= 1, "{oom}");
    // The library reports it too.
    let c = berth_runtime_core::Container::load(&b.root(), &b.id).unwrap();
    assert!(c.stats().unwrap().oom_kills >= 1);
    assert_eq!(
        b.cgroup_file("memory", "memory.limit_in_bytes").trim(),
        "83886080"
    );
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let b = Bundle::new();
    b.edit_spec(|s| s["linux"]["resources"] = json!({"pids": {"limit": 10}}));
    b.start_detached(&[
        "sh",
        "-c",
        "for i in $(seq 1 40); do sleep 2 & done; wait; echo done",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let current: u64 = b
        .cgroup_file("pids", "pids.current")
        .trim()
        .parse()
        .unwrap();
    assert!(current <= 10, "pids.current = {current}");
    b.wait_stopped(Duration::from_secs(30));
    let (out, err) = b.output();
    assert!(
        err.contains("fork"),
        "no fork failure reported: stdout {out:?} stderr {err:?}"
    );
    let events = b.cgroup_file("pids", "pids.events");
    let max: u64 = events
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(max > 0, "{events}");
}

#[test]
fn user_group_and_umask_apply() {
    let b = Bundle::new();
    b.edit_spec(|s| {
        s["process"]["user"] =
            json!({"uid": 1000, "gid": 1001, "additionalGids": [10, 20], "umask": 63});
    });
    let (code, out, err) = b.run(&["sh", "-c", "id; umask"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("uid=1000 gid=1001 groups="), "{out}");
    let groups = out.lines().next().unwrap().split("groups=").nth(1).unwrap();
    let mut g: Vec<&str> = groups.split(',').collect();
    g.sort();
    assert_eq!(g, ["10", "1001", "20"], "{out}");
    assert_eq!(out.lines().nth(1), Some("0077"));
}

#[test]
fn exec_joins_the_running_container() {
    let b = Bundle::new();
    b.start_detached(&["sleep", "1000"]);
    let pid = b.state()["pid"].as_i64().unwrap();
    let init_ns = |ns: &str| fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
    let out = b.cli(&[
        "exec",
        &b.id,
        "sh",
        "-c",
        "for n in pid net mnt; do readlink /proc/self/ns/$n; done; hostname; echo $$; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], init_ns("pid").to_str().unwrap());
    assert_eq!(lines[1], init_ns("net").to_str().unwrap());
    assert_eq!(lines[2], init_ns("mnt").to_str().unwrap());
    assert_eq!(lines[3], "berth-test");
    assert_ne!(lines[4], "1");
    // The exec'd process is in the container's cgroup: inside the container's cgroup
    // namespace that cgroup is "/" (anything else would show as a relative "/..").
    let out = b.cli(&["exec", &b.id, "cat", "/proc/self/cgroup"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.ends_with(":memory:/")), "{text}");
    // And the host sees it there while it runs.
    let pid_file = b.tmp.path().join("exec.pid");
    let st = Command::new(RUNTIME)
        .arg("--root")
        .arg(b.root())
        .args([
            "exec",
            "--detach",
            "--pid-file",
            pid_file.to_str().unwrap(),
            &b.id,
            "sleep",
            "5",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let exec_pid = fs::read_to_string(&pid_file).unwrap();
    let procs = b.cgroup_file("memory", "cgroup.procs");
    let procs: Vec<&str> = procs.lines().collect();
    assert!(
        procs.contains(&exec_pid.trim()),
        "exec'd {exec_pid} not in {procs:?}"
    );
    assert!(
        procs.contains(&pid.to_string().as_str()),
        "init {pid} not in {procs:?}"
    );
}

#[test]
fn failed_create_reports_the_step_and_leaves_nothing_behind() {
    let b = Bundle::new();
    b.args(&["/no/such/binary"]);
    let out = b.cli(&["create", "--bundle", b.bundle().to_str().unwrap(), &b.id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("find executable") && err.contains("ENOENT"),
        "{err}"
    );
    assert!(!b.root().join(&b.id).exists(), "state dir left behind");
    assert!(
        !Path::new("/sys/fs/cgroup/memory")
            .join(b.cgroup.trim_start_matches('/'))
            .exists(),
        "cgroup left behind"
    );
}

#[test]
fn user_namespace_maps_container_root_to_an_unprivileged_host_uid() {
    let b = Bundle::new();
    b.edit_spec(|s| {
        s["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        s["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
        s["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    });
    b.start_detached(&["sleep", "1000"]);
    let pid = b.state()["pid"].as_i64().unwrap();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some("200000"),
        "{uid_line}"
    );
    let out = b.cli(&["exec", &b.id, "sh", "-c", "id -u; cat /proc/self/uid_map"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("0"));
    let map: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(map, ["0", "200000", "65536"]);
}

#[test]
fn joining_another_containers_network_namespace_by_path() {
    let a = Bundle::new();
    a.start_detached(&["sleep", "1000"]);
    let a_pid = a.state()["pid"].as_i64().unwrap();
    let a_net = fs::read_link(format!("/proc/{a_pid}/ns/net")).unwrap();
    let b = Bundle::new();
    b.edit_spec(|s| {
        for ns in s["linux"]["namespaces"].as_array_mut().unwrap() {
            if ns["type"] == "network" {
                ns["path"] = json!(format!("/proc/{a_pid}/ns/net"));
            }
        }
    });
    let (code, out, err) = b.run(&["readlink", "/proc/self/ns/net"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), a_net.to_str().unwrap());
}

#[test]
fn cpu_quota_holds_a_busy_loop_near_five_percent() {
    let b = Bundle::new();
    b.edit_spec(|s| s["linux"]["resources"] = json!({"cpu": {"quota": 5000, "period": 100000}}));
    b.start_detached(&["sh", "-c", "yes > /dev/null"]);
    let usage = || -> u64 {
        b.cgroup_file("cpuacct", "cpuacct.usage")
            .trim()
            .parse()
            .unwrap()
    };
    std::thread::sleep(Duration::from_millis(300));
    let (u0, t0) = (usage(), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (u1, t1) = (usage(), Instant::now());
    let share = (u1 - u0) as f64 / (t1 - t0).as_nanos() as f64;
    // Unlimited, `yes` takes a whole core; the quota allows 5 % (generous bound for noise).
    assert!(share > 0.01 && share < 0.15, "cpu share {share:.3}");
    assert_eq!(b.cgroup_file("cpu", "cpu.cfs_quota_us").trim(), "5000");
}

#[test]
fn console_socket_receives_the_pty_master() {
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    let b = Bundle::new();
    b.edit_spec(|s| s["process"]["terminal"] = json!(true));
    b.args(&["sh", "-c", "tty; echo on-a-terminal"]);
    let sock = b.tmp.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let out = b.cli(&[
        "create",
        "--bundle",
        b.bundle().to_str().unwrap(),
        "--console-socket",
        sock.to_str().unwrap(),
        &b.id,
    ]);
    assert!(out.status.success(), "{out:?}");
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 64];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = nix::sys::socket::recvmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(&conn),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    let fd = msg
        .cmsgs()
        .unwrap()
        .find_map(|c| match c {
            nix::sys::socket::ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .expect("no fd received");
    // SAFETY: the fd was just received and is owned by nobody else.
    let mut master = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    assert!(b.cli(&["start", &b.id]).status.success());
    let mut text = Vec::new();
    let mut chunk = [0u8; 256];
    // Reading the master ends with EIO once the container closed the slave.
    while let Ok(n) = master.read(&mut chunk) {
        if n == 0 {
            break;
        }
        text.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("on-a-terminal\r\n"), "{text}");
}

#[test]
fn pause_resume_update_ps_and_stats_of_a_running_container() {
    let b = Bundle::new();
    b.start_detached(&["sleep", "1000"]);
    let pid = b.state()["pid"].as_i64().unwrap();
    let out = b.cli(&["ps", &b.id]);
    assert!(out.status.success(), "{out:?}");
    let pids: Vec<i64> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pids, [pid]);

    assert!(b.cli(&["pause", &b.id]).status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.cgroup_file("freezer", "freezer.state").trim() != "FROZEN" {
        assert!(Instant::now() < deadline, "not frozen");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(b.cli(&["resume", &b.id]).status.success());
    assert_eq!(b.cgroup_file("freezer", "freezer.state").trim(), "THAWED");

    let res = b.tmp.path().join("res.json");
    fs::write(
        &res,
        r#"{"pids": {"limit": 7}, "memory": {"limit": 33554432}}"#,
    )
    .unwrap();
    let out = b.cli(&["update", "--resources", res.to_str().unwrap(), &b.id]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(b.cgroup_file("pids", "pids.max").trim(), "7");
    assert_eq!(
        b.cgroup_file("memory", "memory.limit_in_bytes").trim(),
        "33554432"
    );

    let out = b.cli(&["events", "--stats", &b.id]);
    let ev: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ev["data"]["pids"], 1, "{ev}");
    assert_eq!(ev["data"]["oom_kills"], 0, "{ev}");
}

#[test]
fn mount_targets_behind_symlinks_stay_inside_the_rootfs() {
    let b = Bundle::new();
    let rootfs = b.bundle().join("rootfs");
    // An image whose /data points at the host's root, and a relative escape attempt.
    std::os::unix::fs::symlink("/", rootfs.join("data")).unwrap();
    std::os::unix::fs::symlink("../../../../../../tmp", rootfs.join("up")).unwrap();
    let src = b.tmp.path().join("vol");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("marker"), "inside\n").unwrap();
    let host_target = format!("/berth-escape-{}", b.id);
    let src_s = src.to_str().unwrap().to_string();
    let t1 = format!("/data{host_target}");
    b.edit_spec(|s| {
        let mounts = s["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": t1, "type": "bind", "source": src_s, "options": ["rbind", "ro"]}));
        mounts.push(json!({"destination": "/up/vol", "type": "bind", "source": src_s, "options": ["rbind", "ro"]}));
    });
    let (code, out, err) = b.run(&[
        "sh",
        "-c",
        &format!("cat {host_target}/marker /tmp/vol/marker"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "inside\ninside\n");
    assert!(
        !Path::new(&host_target).exists(),
        "mount point created on the host"
    );
    assert!(rootfs.join(host_target.trim_start_matches('/')).is_dir());
    assert!(rootfs.join("tmp/vol").is_dir());
    assert!(!Path::new("/tmp/vol/marker").exists());
}

#[test]
fn sysctl_domainname_oom_score_rlimits_env_and_cwd_apply() {
    let host_forward = fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let own_adj: i32 = fs::read_to_string("/proc/self/oom_score_adj")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let b = Bundle::new();
    b.edit_spec(|s| {
        s["domainname"] = json!("example.test");
        s["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
        s["process"]["oomScoreAdj"] = json!(own_adj + 100);
        s["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}]);
        s["process"]["env"] = json!(["PATH=/bin", "FOO=bar baz"]);
        s["process"]["cwd"] = json!("/tmp");
    });
    let (code, out, err) = b.run(&[
        "sh",
        "-c",
        "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/domainname /proc/self/oom_score_adj; \
         ulimit -n; ulimit -Hn; echo \"$FOO\"; pwd; echo \"$HOME\"",
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let adj = (own_adj + 100).to_string();
    assert_eq!(
        lines,
        [
            "1",
            "example.test",
            adj.as_str(),
            "123",
            "456",
            "bar baz",
            "/tmp",
            "/" // HOME added: no /etc/passwd in this image
        ]
    );
    assert_eq!(
        fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_forward
    );
}

#[test]
fn oom_score_adj_is_never_lowered_below_the_callers() {
    let own_adj: i32 = fs::read_to_string("/proc/self/oom_score_adj")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let b = Bundle::new();
    b.edit_spec(|s| s["process"]["oomScoreAdj"] = json!(-998));
    let (code, out, err) = b.run(&["cat", "/proc/self/oom_score_adj"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim().parse::<i32>().unwrap(), own_adj.max(-998));
}

#[test]
fn recursive_read_only_bind_and_read_only_paths_refuse_writes() {
    let b = Bundle::new();
    let src = b.tmp.path().join("vol");
    fs::create_dir_all(&src).unwrap();
    let src_s = src.to_str().unwrap().to_string();
    b.edit_spec(|s| {
        s["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/vol", "type": "bind", "source": src_s, "options": ["rbind", "rro"]}),
        );
    });
    let (code, out, err) = b.run(&[
        "sh",
        "-c",
        "{ touch /vol/x; echo x > /proc/sys/kernel/domainname; } 2>&1; echo done",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("Read-only file system").count(), 2, "{out}");
    assert!(!src.join("x").exists());
}

#[test]
fn a_failing_mount_reports_the_step_and_errno() {
    let b = Bundle::new();
    b.edit_spec(|s| {
        s["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/bad", "type": "no-such-fs", "source": "none"}));
    });
    b.args(&["true"]);
    let out = b.cli(&["create", "--bundle", b.bundle().to_str().unwrap(), &b.id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rootfs") && err.contains("/bad") && err.contains("ENODEV"),
        "{err}"
    );
    assert!(!b.root().join(&b.id).exists());
}

#[test]
fn file_bind_mounts_like_etc_hosts_work_on_a_read_only_rootfs() {
    let b = Bundle::new();
    let hosts = b.tmp.path().join("hosts");
    fs::write(&hosts, "127.0.0.1 localhost berth-pod\n").unwrap();
    let hosts_s = hosts.to_str().unwrap().to_string();
    b.edit_spec(|s| {
        s["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/etc/hosts", "type": "bind", "source": hosts_s, "options": ["rbind", "rprivate", "rw"]}),
        );
    });
    let (code, out, err) = b.run(&[
        "sh",
        "-c",
        "cat /etc/hosts; echo '10.0.0.1 extra' >> /etc/hosts && echo appended",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "127.0.0.1 localhost berth-pod\nappended\n");
    // The write went to the bound host file, not to the (read-only) image.
    assert!(
        fs::read_to_string(&hosts)
            .unwrap()
            .contains("10.0.0.1 extra")
    );
}

#[test]
fn oci_hooks_run_at_their_lifecycle_points() {
    let b = Bundle::new();
    let t = b.tmp.path().to_str().unwrap().to_string();
    let sh = |script: String| json!({"path": "/bin/sh", "args": ["sh", "-c", script]});
    b.edit_spec(|s| {
        s["root"]["readonly"] = json!(false);
        s["hooks"] = json!({
            "createRuntime": [sh(format!("cat > {t}/createRuntime.json"))],
            "createContainer": [sh(format!("readlink /proc/self/ns/mnt > {t}/createContainer"))],
            "startContainer": [sh("echo started > /tmp/startContainer".to_string())],
            "poststart": [sh(format!("cat > {t}/poststart.json"))],
            "poststop": [sh(format!("cat > {t}/poststop.json"))]
        });
    });
    let (code, out, err) = b.run(&["cat", "/tmp/startContainer"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "started\n");
    let read =
        |f: &str| fs::read_to_string(b.tmp.path().join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    let cr: Value = serde_json::from_str(&read("createRuntime.json")).unwrap();
    assert_eq!(cr["status"], "creating");
    assert_eq!(cr["id"], json!(b.id));
    assert!(cr["pid"].as_i64().unwrap() > 0, "{cr}");
    // createContainer ran inside the container's mount namespace.
    let host_mnt = fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(read("createContainer").trim(), host_mnt.to_str().unwrap());
    let ps: Value = serde_json::from_str(&read("poststart.json")).unwrap();
    assert_eq!(ps["status"], "running");
    let pst: Value = serde_json::from_str(&read("poststop.json")).unwrap();
    assert_eq!(pst["status"], "stopped");
}

#[test]
fn a_failing_create_runtime_hook_fails_create_and_leaves_nothing() {
    let b = Bundle::new();
    b.edit_spec(|s| s["hooks"] = json!({"createRuntime": [{"path": "/bin/false"}]}));
    b.args(&["true"]);
    let out = b.cli(&["create", "--bundle", b.bundle().to_str().unwrap(), &b.id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hook") && err.contains("/bin/false"), "{err}");
    assert!(!b.root().join(&b.id).exists());
    assert!(
        !Path::new("/sys/fs/cgroup/memory")
            .join(b.cgroup.trim_start_matches('/'))
            .exists()
    );
}

#[test]
fn personality_io_priority_and_time_namespace_offsets_apply() {
    let b = Bundle::new();
    b.edit_spec(|s| {
        s["linux"]["personality"] = json!({"domain": "LINUX32"});
        s["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_IDLE", "priority": 0});
        s["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "time"}));
        s["linux"]["timeOffsets"] = json!({"boottime": {"secs": 1000000, "nanosecs": 0}});
    });
    let (code, out, err) = b.run(&[
        "sh",
        "-c",
        "uname -m; ionice -p $$; cut -d. -f1 /proc/uptime",
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "i686");
    assert_eq!(lines[1], "idle");
    let uptime: u64 = lines[2].parse().unwrap();
    let host: u64 = fs::read_to_string("/proc/uptime")
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        uptime >= 1_000_000 && uptime < host + 1_000_100,
        "container uptime {uptime}, host {host}"
    );
}

#[test]
fn spec_then_run_is_the_whole_walkthrough() {
    use std::io::Write as _;
    let b = Bundle::new();
    // Back to the untouched default spec (interactive `sh`, terminal: true), except the
    // cgroup path, which keeps the test's cgroup unique.
    fs::remove_file(b.bundle().join("config.json")).unwrap();
    assert!(
        b.cli(&["spec", "--bundle", b.bundle().to_str().unwrap()])
            .status
            .success()
    );
    b.edit_spec(|s| s["linux"]["cgroupsPath"] = json!(b.cgroup.clone()));
    let mut child = Command::new(RUNTIME)
        .arg("--root")
        .arg(b.root())
        .args(["run", "--bundle", b.bundle().to_str().unwrap(), &b.id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // No terminal here: the shell reads its commands from the piped stdin.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo hello from $(hostname) as pid $$\nexit 3\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from berth as pid 1\n"
    );
    assert!(!b.root().join(&b.id).exists());
}

#[test]
fn run_on_a_terminal_relays_a_real_pty_like_runc() {
    use std::io::{Read as _, Write as _};
    let b = Bundle::new();
    b.edit_spec(|s| s["process"]["terminal"] = json!(true));
    b.args(&["sh"]);
    // Our "user terminal": a pty whose slave is berth-runtime's stdio.
    let pty = nix::pty::openpty(
        Some(&nix::pty::Winsize {
            ws_row: 40,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }),
        None,
    )
    .unwrap();
    let slave = fs::File::from(pty.slave);
    let mut child = Command::new(RUNTIME)
        .arg("--root")
        .arg(b.root())
        .args(["run", "--bundle", b.bundle().to_str().unwrap(), &b.id])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut master = fs::File::from(pty.master);
    master.write_all(b"tty; stty size; sleep 30\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // ^C reaches the container's foreground job through its own pty.
    master
        .write_all(b"\x03echo after-interrupt; exit 4\n")
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut reader = master.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once berth-runtime (the last slave holder) has exited.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&all).contains("after-interrupt\r\n") {
                break;
            }
        }
        let _ = tx.send(all);
    });
    let out =
        String::from_utf8_lossy(&rx.recv_timeout(Duration::from_secs(20)).expect("no output"))
            .into_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "run did not exit: {out}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(4), "{out}");
    assert!(out.contains("/dev/pts/0"), "{out}");
    assert!(out.contains("40 100"), "{out}");
    assert!(out.contains("after-interrupt"), "{out}");
}
