//! berth-monitor with real busybox containers: CRI logs, exit records, OOM, attach, log
//! reopen, surviving its parent's SIGKILL, pinned namespaces and the pause helper.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const RUNTIME: &str = env!("CARGO_BIN_EXE_berth-runtime");
const MONITOR: &str = env!("CARGO_BIN_EXE_berth-monitor");

static COUNTER: AtomicU32 = AtomicU32::new(0);

struct Setup {
    tmp: tempfile::TempDir,
    id: String,
    cgroup: String,
    monitor: std::cell::RefCell<Option<std::process::Child>>,
}

impl Setup {
    fn new(args: &[&str]) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bundle/rootfs/bin");
        fs::create_dir_all(&bin).unwrap();
        fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        let list = // The host binary: executing the fresh copy can hit ETXTBSY while a parallel
        // test forks with its write fd open.
        Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                fs::hard_link(bin.join("busybox"), bin.join(applet)).unwrap();
            }
        }
        for d in ["proc", "sys", "dev", "tmp"] {
            fs::create_dir_all(tmp.path().join("bundle/rootfs").join(d)).unwrap();
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let s = Setup {
            tmp,
            id: format!("m{pid}-{n}"),
            cgroup: format!("/berth-test-mon-{pid}-{n}"),
            monitor: std::cell::RefCell::new(None),
        };
        let st = Command::new(RUNTIME)
            .args(["spec", "--bundle"])
            .arg(s.bundle())
            .status()
            .unwrap();
        assert!(st.success());
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        s.edit_spec(|v| {
            v["process"]["terminal"] = json!(false);
            v["process"]["args"] = json!(args);
            v["linux"]["cgroupsPath"] = json!(s.cgroup.clone());
        });
        s
    }

    fn bundle(&self) -> PathBuf {
        self.tmp.path().join("bundle")
    }
    fn root(&self) -> PathBuf {
        self.tmp.path().join("state")
    }
    fn log(&self) -> PathBuf {
        self.tmp.path().join("ctr.log")
    }
    fn exit_file(&self) -> PathBuf {
        self.tmp.path().join("exit.json")
    }

    fn edit_spec(&self, f: impl FnOnce(&mut Value)) {
        let p = self.bundle().join("config.json");
        let mut v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        f(&mut v);
        fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    }

    fn monitor_cmd(&self, extra: &[&str]) -> Command {
        let mut c = Command::new(MONITOR);
        c.arg("run")
            .arg("--root")
            .arg(self.root())
            .arg("--bundle")
            .arg(self.bundle())
            .arg("--log-path")
            .arg(self.log())
            .arg("--exit-file")
            .arg(self.exit_file())
            .args(extra)
            .arg(&self.id);
        c
    }

    /// Start the monitor (as berthd would), return the init pid from its sync line.
    fn spawn_monitor(&self, extra: &[&str]) -> i64 {
        let mut child = self
            .monitor_cmd(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // The monitor closes its stdout after the sync line; never wait for it forever.
        let mut stdout = child.stdout.take().unwrap();
        *self.monitor.borrow_mut() = Some(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            let _ = tx.send(text);
        });
        let text = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("monitor kept its stdout open");
        let v: Value =
            serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("sync line {text:?}: {e}"));
        v["pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("monitor failed: {v}"))
    }

    fn start(&self) {
        let out = Command::new(RUNTIME)
            .arg("--root")
            .arg(self.root())
            .args(["start", &self.id])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    fn wait_exit(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.exit_file().exists() {
            assert!(Instant::now() < deadline, "no exit record");
            std::thread::sleep(Duration::from_millis(20));
        }
        serde_json::from_slice(&fs::read(self.exit_file()).unwrap()).unwrap()
    }

    fn log_lines(path: &Path) -> Vec<(String, String, String, String)> {
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let mut p = l.splitn(4, ' ');
                let f = |x: Option<&str>| x.unwrap_or_default().to_string();
                (f(p.next()), f(p.next()), f(p.next()), f(p.next()))
            })
            .collect()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = Command::new(RUNTIME)
            .arg("--root")
            .arg(self.root())
            .args(["delete", "--force", &self.id])
            .output();
        // The monitor exits once its container is gone; reap it (kill it if it lingers).
        if let Some(mut m) = self.monitor.borrow_mut().take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while m.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = m.kill();
                    let _ = m.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
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
fn logs_are_cri_formatted_and_the_exit_is_recorded() {
    let s = Setup::new(&["sh", "-c", "echo out; echo err >&2; printf partial; exit 3"]);
    s.spawn_monitor(&[]);
    s.start();
    let exit = s.wait_exit();
    assert_eq!(exit["exit_code"], 3);
    assert_eq!(exit["oom_killed"], false);
    assert!(exit["exited_at"].as_str().unwrap().ends_with('Z'));
    // What berthd reads: the typed record, its time in nanoseconds, recent.
    let record =
        berth_runtime_core::monitor_protocol::ExitRecord::decode(&fs::read(s.exit_file()).unwrap())
            .expect("the exit record decodes");
    assert_eq!(record.status_code(), 3);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let age = now - u128::try_from(record.exited_at_ns).unwrap();
    assert!(age < 60_000_000_000, "exited {age} ns ago");
    let lines = Setup::log_lines(&s.log());
    let body: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| (l.1.as_str(), l.2.as_str(), l.3.as_str()))
        .collect();
    assert!(body.contains(&("stdout", "F", "out")), "{lines:?}");
    assert!(body.contains(&("stderr", "F", "err")), "{lines:?}");
    assert!(body.contains(&("stdout", "P", "partial")), "{lines:?}");
    for l in &lines {
        // 2026-11-29T07:13:54.574418864Z
        assert_eq!(l.0.len(), 30, "{l:?}");
        assert!(l.0.as_bytes()[10] == b'T' && l.0.ends_with('Z'), "{l:?}");
    }
}

#[test]
fn long_lines_are_split_into_partial_records() {
    let s = Setup::new(&["sh", "-c", "head -c 100000 /dev/zero | tr '\\\\0' a; echo"]);
    s.spawn_monitor(&[]);
    s.start();
    assert_eq!(s.wait_exit()["exit_code"], 0);
    let lines = Setup::log_lines(&s.log());
    let total: usize = lines.iter().map(|l| l.3.len()).sum();
    assert_eq!(total, 100_000);
    assert!(lines.len() >= 2, "{} records", lines.len());
    assert!(lines[..lines.len() - 1].iter().all(|l| l.2 == "P"));
    assert_eq!(lines.last().unwrap().2, "F");
}

#[test]
fn container_survives_the_monitors_parent_being_killed() {
    let s = Setup::new(&["sh", "-c", "sleep 1; echo bye"]);
    let sync = s.tmp.path().join("sync");
    // A stand-in for berthd: a shell that starts the monitor and is then SIGKILLed.
    let cmd = s.monitor_cmd(&[]);
    let mut line = format!("{:?}", cmd.get_program());
    for a in cmd.get_args() {
        line.push(' ');
        line.push_str(&format!("{a:?}"));
    }
    let mut parent = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{line} > {:?} & wait", sync))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(&sync)
        .unwrap_or_default()
        .contains("pid")
    {
        assert!(Instant::now() < deadline, "monitor never reported");
        std::thread::sleep(Duration::from_millis(20));
    }
    parent.kill().unwrap();
    parent.wait().unwrap();
    s.start();
    let exit = s.wait_exit();
    assert_eq!(exit["exit_code"], 0);
    assert!(Setup::log_lines(&s.log()).iter().any(|l| l.3 == "bye"));
}

#[test]
fn oom_kill_is_recorded_in_the_exit_file() {
    let s = Setup::new(&["sh", "-c", "yes | tr \\\\n x | head -c 200m | grep n"]);
    s.edit_spec(|v| {
        v["linux"]["resources"] = json!({"memory": {"limit": 83886080, "swap": 83886080}})
    });
    s.spawn_monitor(&[]);
    s.start();
    let exit = s.wait_exit();
    assert_eq!(exit["exit_code"], 137, "{exit}");
    assert_eq!(exit["oom_killed"], true, "{exit}");
}

fn frame(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    f.extend_from_slice(data);
    f
}

#[test]
fn attach_writes_stdin_and_reads_output() {
    let s = Setup::new(&["cat"]);
    s.spawn_monitor(&["--stdin"]);
    s.start();
    let mut sock = UnixStream::connect(s.root().join(&s.id).join("attach.sock")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(&frame(0, b"hello attach\n")).unwrap();
    let mut hdr = [0u8; 5];
    sock.read_exact(&mut hdr).unwrap();
    assert_eq!(hdr[0], 1, "not a stdout frame");
    let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
    let mut body = vec![0u8; len];
    sock.read_exact(&mut body).unwrap();
    assert_eq!(body, b"hello attach\n");
    // Closing stdin ends `cat`.
    sock.write_all(&frame(2, b"")).unwrap();
    assert_eq!(s.wait_exit()["exit_code"], 0);
    assert!(
        Setup::log_lines(&s.log())
            .iter()
            .any(|l| l.3 == "hello attach")
    );
}

#[test]
fn log_is_reopened_on_request() {
    let s = Setup::new(&["sh", "-c", "echo one; sleep 1; echo two"]);
    s.spawn_monitor(&[]);
    s.start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(s.log())
        .unwrap_or_default()
        .contains("one")
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let rotated = s.tmp.path().join("ctr.log.1");
    fs::rename(s.log(), &rotated).unwrap();
    let mut ctl = UnixStream::connect(s.root().join(&s.id).join("ctl.sock")).unwrap();
    ctl.write_all(b"reopen\n").unwrap();
    let mut reply = String::new();
    ctl.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "ok\n");
    s.wait_exit();
    let old: Vec<String> = Setup::log_lines(&rotated)
        .into_iter()
        .map(|l| l.3)
        .collect();
    let new: Vec<String> = Setup::log_lines(&s.log())
        .into_iter()
        .map(|l| l.3)
        .collect();
    assert_eq!(old, ["one"]);
    assert_eq!(new, ["two"]);
}

#[test]
fn pinned_network_namespace_can_be_joined_and_unpinned() {
    let s = Setup::new(&["readlink", "/proc/self/ns/net"]);
    let dir = s.tmp.path().join("ns");
    let out = Command::new(MONITOR)
        .args(["pin-ns", "--net", "--uts", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ino = fs::metadata(dir.join("net")).unwrap().ino();
    assert_ne!(ino, fs::metadata("/proc/self/ns/net").unwrap().ino());
    let net = dir.join("net");
    s.edit_spec(|v| {
        for ns in v["linux"]["namespaces"].as_array_mut().unwrap() {
            if ns["type"] == "network" {
                ns["path"] = json!(net);
            }
        }
    });
    s.spawn_monitor(&[]);
    s.start();
    assert_eq!(s.wait_exit()["exit_code"], 0);
    let seen = Setup::log_lines(&s.log())
        .into_iter()
        .map(|l| l.3)
        .collect::<Vec<_>>();
    assert_eq!(seen, [format!("net:[{ino}]")]);
    let out = Command::new(MONITOR)
        .args(["unpin-ns", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!dir.exists());
}

#[test]
fn pause_exits_on_sigterm() {
    let mut child = Command::new(MONITOR).arg("pause").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "{st:?}");
            break;
        }
        assert!(Instant::now() < deadline, "pause did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn orphans_adopted_by_the_monitor_are_reaped() {
    // No pid namespace: the orphaned `sleep` is re-parented to the monitor (subreaper).
    let s = Setup::new(&["sh", "-c", "(sleep 0.2 &); sleep 1.5"]);
    s.edit_spec(|v| {
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "pid");
    });
    let init = s.spawn_monitor(&[]);
    let monitor = s.monitor.borrow().as_ref().unwrap().id();
    s.start();
    let children = || -> Vec<i64> {
        fs::read_to_string(format!("/proc/{monitor}/task/{monitor}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    // The orphan shows up as the monitor's child, then disappears once reaped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while children().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "orphan never adopted: {:?}",
            children()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(children(), [init], "orphan left as a zombie");
    assert_eq!(s.wait_exit()["exit_code"], 0);
}

#[test]
fn terminal_containers_get_a_pty_with_resize_through_attach() {
    let s = Setup::new(&["sh", "-c", "read x; stty size; tty"]);
    s.edit_spec(|v| v["process"]["terminal"] = json!(true));
    s.spawn_monitor(&["--stdin"]);
    s.start();
    let mut sock = UnixStream::connect(s.root().join(&s.id).join("attach.sock")).unwrap();
    let mut size = Vec::new();
    size.extend_from_slice(&33u16.to_be_bytes());
    size.extend_from_slice(&77u16.to_be_bytes());
    sock.write_all(&frame(1, &size)).unwrap();
    sock.write_all(&frame(0, b"go\n")).unwrap();
    assert_eq!(s.wait_exit()["exit_code"], 0);
    // A terminal has one stream: everything is logged as stdout, with the pty's \r\n.
    let lines = Setup::log_lines(&s.log());
    let msgs: Vec<&str> = lines.iter().map(|l| l.3.trim_end_matches('\r')).collect();
    assert!(lines.iter().all(|l| l.1 == "stdout"), "{lines:?}");
    assert!(msgs.contains(&"33 77"), "{msgs:?}");
    assert!(msgs.iter().any(|m| m.starts_with("/dev/pts/")), "{msgs:?}");
}
