//! Test-owned cgroups: find them in every mounted hierarchy, and remove them (killing
//! what still runs in them) when a test or a daemon it started is done. One way of
//! cleaning up for every fixture: the reliability tests' cgroup parents, kubelet's
//! cgroup root, the leftovers of a killed berthd or containerd.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The mounted hierarchies: each v1 controller's root (and the v2 tree), as the
/// directories below /sys/fs/cgroup (a v1 alias like `cpu` -> `cpu,cpuacct` too).
pub fn hierarchies() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|e| {
            e.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// Cgroup directories below `parent` (a path relative to each controller's root), in
/// every mounted controller.
pub fn cgroups_under(parent: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for ctl in hierarchies() {
        let base = ctl.join(parent.trim_start_matches('/'));
        collect_dirs(&base, &mut out);
    }
    out
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// SIGKILLs every process in the cgroups `dirs`, then removes them, deepest first
/// (rmdir of a cgroup fails while a process or a child cgroup is left in it; such a
/// failure is ignored: a cgroup another runtime still uses stays).
pub fn kill_and_remove(mut dirs: Vec<PathBuf>) {
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in &dirs {
        for pid in std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|p| p.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    for d in &dirs {
        let _ = std::fs::remove_dir(d);
    }
}

/// Removes `parent` in every controller (deepest first), killing what still runs in
/// it: the Drop guard of a test's cgroup parent.
#[derive(Debug)]
pub struct CgroupParent(pub String);

impl Drop for CgroupParent {
    fn drop(&mut self) {
        let mut dirs = cgroups_under(&self.0);
        for ctl in hierarchies() {
            let base = ctl.join(self.0.trim_start_matches('/'));
            if base.is_dir() {
                dirs.push(base);
            }
        }
        kill_and_remove(dirs);
    }
}
