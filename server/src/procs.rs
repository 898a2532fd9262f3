//! Finding berthd's own helper processes on the host by what /proc says of them, for
//! recovery: berthd may die after starting a berth-monitor and before recording its
//! pid, so the pid has to be found again by the process's arguments or environment.

use std::path::Path;

/// Pids of the berth-monitor processes (argv\[0\]'s file name starts with
/// `berth-monitor`) for which `keep(proc_dir, argv)` is true. Processes that exit
/// while being read are skipped.
pub fn berth_monitors(keep: impl Fn(&Path, &[&[u8]]) -> bool) -> Vec<i32> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for p in procs.filter_map(std::result::Result::ok) {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_monitor = args.first().is_some_and(|a| {
            Path::new(std::ffi::OsStr::from_bytes(a))
                .file_name()
                .is_some_and(|n| n.as_bytes().starts_with(b"berth-monitor"))
        });
        if is_monitor && keep(&p.path(), &args) {
            pids.push(pid);
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary is no berth-monitor: whatever `keep` says, it is not returned.
    #[test]
    fn only_berth_monitors_are_considered() {
        let me = i32::try_from(std::process::id()).expect("pid");
        assert!(!berth_monitors(|_, _| true).contains(&me));
    }
}
