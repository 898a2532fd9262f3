//! The cgroup API against the host's real hierarchies (v1 on the CI host): create,
//! add a process, apply and update resources, stats, freeze/thaw, kill-all, remove.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_runtime_core::cgroups::{Cgroup, Version};

/// Removes the cgroup (after killing what is left) even when the test fails.
struct Guard(Cgroup);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.set_frozen(false);
        let _ = self.0.kill_all(libc::SIGKILL);
        let _ = self.0.remove();
    }
}

fn unique_path() -> String {
    format!("/berth-test-cg-{}", std::process::id())
}

fn read(cg: &Cgroup, controller: &str, file: &str) -> String {
    let dir = match cg.version {
        Version::V1 => Path::new("/sys/fs/cgroup").join(controller),
        Version::V2 => Path::new("/sys/fs/cgroup").to_path_buf(),
    };
    std::fs::read_to_string(dir.join(cg.path.strip_prefix("/").unwrap()).join(file)).unwrap()
}

fn proc_state(pid: u32) -> char {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    s[s.rfind(')').unwrap() + 2..].chars().next().unwrap()
}

#[test]
fn cgroup_lifecycle_on_the_host() {
    let cg = Cgroup::new(Path::new("/sys/fs/cgroup"), &unique_path(), "x").unwrap();
    let guard = Guard(cg.clone());
    cg.create().unwrap();
    let resources = serde_json::from_str(
        r#"{"memory": {"limit": 67108864}, "pids": {"limit": 5}, "cpu": {"shares": 256}}"#,
    )
    .unwrap();
    cg.apply(&resources).unwrap();
    assert_eq!(read(&cg, "pids", "pids.max").trim(), "5");

    // A fork-free busy loop, then an exec that allocates pages charged to our cgroup.
    let mut child = Command::new("/bin/sh")
        .args([
            "-c",
            "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; exec sleep 100",
        ])
        .spawn()
        .unwrap();
    let pid = child.id();
    cg.add_pid(i32::try_from(pid).unwrap()).unwrap();
    assert_eq!(cg.procs().unwrap(), vec![i32::try_from(pid).unwrap()]);

    // Live update.
    let update =
        serde_json::from_str(r#"{"memory": {"limit": 134217728}, "pids": {"limit": 0}}"#).unwrap();
    cg.apply(&update).unwrap();
    assert_eq!(
        read(&cg, "memory", "memory.limit_in_bytes").trim(),
        "134217728"
    );
    assert_eq!(read(&cg, "pids", "pids.max").trim(), "max");

    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let s = cg.stats().unwrap();
        if s.memory_usage > 0 && s.cpu_usage_ns > 0 {
            break s;
        }
        assert!(Instant::now() < deadline, "no usage accounted: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(stats.pids, 1);
    assert!(stats.memory_working_set <= stats.memory_usage);

    // Freeze: the task stops being schedulable; thaw: it is back to sleeping.
    cg.set_frozen(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while read(&cg, "freezer", "freezer.state").trim() != "FROZEN" {
        assert!(Instant::now() < deadline, "never froze");
        std::thread::sleep(Duration::from_millis(10));
    }
    cg.set_frozen(false).unwrap();
    assert_eq!(read(&cg, "freezer", "freezer.state").trim(), "THAWED");
    assert!(
        matches!(proc_state(pid), 'R' | 'S'),
        "not running after thaw"
    );

    // Kill-all reaches the task; the cgroup can then be removed.
    cg.kill_all(libc::SIGKILL).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    cg.remove().unwrap();
    assert!(
        !Path::new("/sys/fs/cgroup/memory")
            .join(unique_path().trim_start_matches('/'))
            .exists()
    );
    drop(guard);
}

/// The host's cgroup2 mount (hybrid hosts have one at /sys/fs/cgroup/unified).
fn v2_root() -> Option<&'static Path> {
    [
        Path::new("/sys/fs/cgroup/unified"),
        Path::new("/sys/fs/cgroup"),
    ]
    .into_iter()
    .find(|p| p.join("cgroup.controllers").exists())
}

/// Removes the test's parent cgroup and gives the root back the subtree_control it had.
struct V2Parent {
    dir: std::path::PathBuf,
    root: std::path::PathBuf,
    root_subtree: String,
}

impl Drop for V2Parent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
        let before: Vec<&str> = self.root_subtree.split_whitespace().collect();
        let now =
            std::fs::read_to_string(self.root.join("cgroup.subtree_control")).unwrap_or_default();
        for c in now.split_whitespace().filter(|c| !before.contains(c)) {
            let _ = std::fs::write(self.root.join("cgroup.subtree_control"), format!("-{c}"));
        }
    }
}

#[test]
fn cgroup_v2_lifecycle_on_the_hosts_unified_hierarchy() {
    let Some(root) = v2_root() else {
        eprintln!("no cgroup2 hierarchy on this host; nothing to test");
        return;
    };
    let parent = format!("berth-test-v2-{}", std::process::id());
    let _parent_guard = V2Parent {
        dir: root.join(&parent),
        root: root.to_path_buf(),
        root_subtree: std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
    };
    let cg = Cgroup::new(root, &format!("/{parent}/ctr"), "x").unwrap();
    assert_eq!(cg.version, Version::V2);
    let guard = Guard(cg.clone());
    cg.create().unwrap();
    let dir = root.join(&parent).join("ctr");
    assert!(dir.is_dir());
    // Device rules on v2 become an eBPF program (and never fail creation).
    let resources = serde_json::from_str(
        r#"{"devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]}"#,
    )
    .unwrap();
    cg.apply(&resources).unwrap();
    // Controllers the root offers were delegated down the path.
    let offered = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap();
    let got = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap();
    for c in offered.split_whitespace() {
        assert!(
            got.split_whitespace().any(|g| g == c),
            "{c} not enabled for the container: {got:?}"
        );
    }
    if dir.join("hugetlb.2MB.max").exists() {
        let r =
            serde_json::from_str(r#"{"hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}]}"#)
                .unwrap();
        cg.apply(&r).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("hugetlb.2MB.max"))
                .unwrap()
                .trim(),
            "4194304"
        );
    }

    // The rules applied above are enforced by the eBPF program: with "deny all, allow
    // /dev/null" a process in the cgroup can write /dev/null but not read /dev/zero.
    let mut probe = Command::new("/bin/sh")
        .args([
            "-c",
            "read go; head -c 1 /dev/zero > /dev/null && echo zero-ok; echo x > /dev/null && echo null-ok",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    cg.add_pid(i32::try_from(probe.id()).unwrap()).unwrap();
    std::io::Write::write_all(probe.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let out = probe.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "null-ok\n");
    // Live update to allow everything: /dev/zero opens again.
    cg.apply(&serde_json::from_str(r#"{"devices": [{"allow": true, "access": "rwm"}]}"#).unwrap())
        .unwrap();
    let mut probe = Command::new("/bin/sh")
        .args([
            "-c",
            "read go; head -c 1 /dev/zero > /dev/null && echo zero-ok",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    cg.add_pid(i32::try_from(probe.id()).unwrap()).unwrap();
    std::io::Write::write_all(probe.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let out = probe.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "zero-ok\n");

    let mut child = Command::new("/bin/sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    cg.add_pid(pid).unwrap();
    assert_eq!(cg.procs().unwrap(), vec![pid]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while cg.stats().unwrap().cpu_usage_ns == 0 {
        assert!(Instant::now() < deadline, "no cpu usage accounted");
        std::thread::sleep(Duration::from_millis(20));
    }

    cg.set_frozen(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(dir.join("cgroup.events"))
        .unwrap()
        .contains("frozen 1")
    {
        assert!(Instant::now() < deadline, "never froze");
        std::thread::sleep(Duration::from_millis(10));
    }
    cg.set_frozen(false).unwrap();

    cg.kill_all(libc::SIGKILL).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    cg.remove().unwrap();
    assert!(!dir.exists());
    drop(guard);
}
