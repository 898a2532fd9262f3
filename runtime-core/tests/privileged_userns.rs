//! Containers joining an existing user namespace by path (as a pod's containers do)
//! and idmapped bind mounts, driven through the `berth-runtime` binary. Needs root,
//! Debian's busybox-static at /bin/busybox and a kernel with idmapped mounts (5.12+)
//! on the temp dir's file system.
//!
//! Every test cleans up with Drop guards: the container (`delete --force`), the
//! process holding the user namespace (killed and reaped) and temp dirs.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{Value, json};

const RUNTIME: &str = env!("CARGO_BIN_EXE_berth-runtime");
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A process in a new user namespace with `0 <host> 65536` mappings; killed on drop.
struct UserNs {
    child: Child,
    host: u32,
}

impl UserNs {
    fn new(host: u32) -> UserNs {
        let mut cmd = Command::new("/bin/busybox");
        cmd.args(["sleep", "1000"]).stdin(Stdio::null());
        // SAFETY: runs in the forked child before exec; unshare(2) is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn the user namespace holder");
        let ns = UserNs { child, host };
        let map = format!("0 {host} 65536\n");
        fs::write(format!("/proc/{}/gid_map", ns.pid()), &map).expect("gid_map");
        fs::write(format!("/proc/{}/uid_map", ns.pid()), &map).expect("uid_map");
        ns
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn path(&self) -> String {
        format!("/proc/{}/ns/user", self.pid())
    }

    fn mappings(&self) -> Value {
        json!([{"containerID": 0, "hostID": self.host, "size": 65536}])
    }
}

impl Drop for UserNs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A busybox bundle in a temp dir readable by the mapped ids; deleted on drop.
struct Bundle {
    tmp: tempfile::TempDir,
    id: String,
}

impl Bundle {
    fn new() -> Bundle {
        let tmp = tempfile::tempdir().expect("tempdir");
        // The container's root (an unprivileged uid outside) must reach its rootfs.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let rootfs = tmp.path().join("bundle/rootfs");
        let bin = rootfs.join("bin");
        fs::create_dir_all(&bin).unwrap();
        fs::copy("/bin/busybox", bin.join("busybox")).expect("copy /bin/busybox");
        for applet in ["sh", "id", "cat", "touch", "ls", "sleep", "stat", "echo"] {
            fs::hard_link(bin.join("busybox"), bin.join(applet)).unwrap();
        }
        for d in ["proc", "sys", "dev", "etc", "tmp", "data"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let b = Bundle {
            tmp,
            id: format!("u{}-{n}", std::process::id()),
        };
        let out = b.cli(&["spec", "--bundle", b.bundle().to_str().unwrap()]);
        assert!(out.status.success(), "spec: {out:?}");
        b.edit_spec(|s| {
            s["process"]["terminal"] = json!(false);
            s["linux"]["cgroupsPath"] = json!(format!("/berth-test-{}", b.id));
        });
        b
    }

    fn bundle(&self) -> PathBuf {
        self.tmp.path().join("bundle")
    }

    /// A host directory owned by host root, mode 0755 (only root may write).
    fn volume(&self) -> PathBuf {
        let v = self.tmp.path().join("volume");
        fs::create_dir_all(&v).unwrap();
        fs::write(v.join("from-host"), "hello\n").unwrap();
        v
    }

    fn join_userns(&self, ns: &UserNs) {
        let (path, maps) = (ns.path(), ns.mappings());
        self.edit_spec(|s| {
            s["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "user", "path": path}));
            s["linux"]["uidMappings"] = maps.clone();
            s["linux"]["gidMappings"] = maps;
        });
    }

    fn add_volume(&self, idmap: Option<&UserNs>) {
        let mut m = json!({
            "destination": "/data",
            "type": "bind",
            "source": self.volume(),
            "options": ["rbind", "rw"],
        });
        if let Some(ns) = idmap {
            m["uidMappings"] = ns.mappings();
            m["gidMappings"] = ns.mappings();
            m["options"] = json!(["rbind", "rw", "ridmap"]);
        }
        self.edit_spec(|s| s["mounts"].as_array_mut().unwrap().push(m));
    }

    fn edit_spec(&self, f: impl FnOnce(&mut Value)) {
        let path = self.bundle().join("config.json");
        let mut v: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        f(&mut v);
        fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(RUNTIME)
            .arg("--root")
            .arg(self.tmp.path().join("state"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run berth-runtime")
    }

    /// `run` in the foreground: (exit code, stdout, stderr).
    fn run(&self, script: &str) -> (i32, String, String) {
        self.edit_spec(|s| s["process"]["args"] = json!(["sh", "-c", script]));
        let out = self.cli(&["run", "--bundle", self.bundle().to_str().unwrap(), &self.id]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = self.cli(&["delete", "--force", &self.id]);
        for c in [
            "cpu", "cpuacct", "memory", "pids", "blkio", "devices", "freezer",
        ] {
            let _ = fs::remove_dir(format!("/sys/fs/cgroup/{c}/berth-test-{}", self.id));
        }
    }
}

#[test]
fn container_joins_a_user_namespace_by_path_and_is_root_only_inside() {
    let ns = UserNs::new(300_000);
    let b = Bundle::new();
    b.join_userns(&ns);
    b.edit_spec(|s| s["process"]["args"] = json!(["sleep", "1000"]));
    // The container inherits create's stdio: files, so nothing waits for its end.
    let log = fs::File::create(b.tmp.path().join("log")).unwrap();
    let st = Command::new(RUNTIME)
        .arg("--root")
        .arg(b.tmp.path().join("state"))
        .args(["create", "--bundle", b.bundle().to_str().unwrap(), &b.id])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .unwrap();
    let log = fs::read_to_string(b.tmp.path().join("log")).unwrap_or_default();
    assert!(st.success(), "create: {log}");
    let out = b.cli(&["start", &b.id]);
    assert!(out.status.success(), "start: {out:?}");
    let state: Value = serde_json::from_slice(&b.cli(&["state", &b.id]).stdout).unwrap();
    let pid = state["pid"].as_i64().expect("pid");
    // The same user namespace as the holder's, not a new one.
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/ns/user")).unwrap(),
        fs::read_link(ns.path()).unwrap()
    );
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some("300000"),
        "{uid_line}"
    );
    let out = b.cli(&["exec", &b.id, "sh", "-c", "id -u; cat /proc/self/uid_map"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("0"));
    let map: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(map, ["0", "300000", "65536"]);
}

#[test]
fn idmapped_volume_is_writable_by_container_root_and_files_land_as_host_root() {
    let ns = UserNs::new(310_000);
    let b = Bundle::new();
    b.join_userns(&ns);
    b.add_volume(Some(&ns));
    let (code, out, err) = b.run("stat -c '%u:%g' /data/from-host && echo made > /data/made");
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    // Host root's file shows as the container's root through the idmapped mount.
    assert_eq!(out.trim(), "0:0");
    // And the container's root writes files that are host root's on disk.
    let made = b.tmp.path().join("volume/made");
    assert_eq!(fs::read_to_string(&made).unwrap(), "made\n");
    let meta = fs::metadata(&made).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
}

#[test]
fn without_idmap_the_same_volume_is_read_only_to_container_root() {
    let ns = UserNs::new(320_000);
    let b = Bundle::new();
    b.join_userns(&ns);
    b.add_volume(None);
    let (code, out, err) = b.run("stat -c '%u' /data/from-host; echo made > /data/made");
    assert_ne!(code, 0, "writing must fail: {out} {err}");
    // Host root is not mapped inside: the overflow uid.
    assert_eq!(out.lines().next(), Some("65534"), "{out} {err}");
    assert!(!b.tmp.path().join("volume/made").exists());
}

#[test]
fn a_missing_idmap_source_fails_create_naming_the_mount() {
    let ns = UserNs::new(330_000);
    let b = Bundle::new();
    b.join_userns(&ns);
    b.add_volume(Some(&ns));
    fs::remove_dir_all(b.tmp.path().join("volume")).unwrap();
    let (code, _, err) = b.run("true");
    assert_ne!(code, 0);
    assert!(err.contains("volume"), "{err}");
}
