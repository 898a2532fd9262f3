//! The init's identity and limits: user and groups, capabilities, AppArmor, time
//! offsets, personality, I/O priority, OOM score, `$HOME` and the executable's path.

use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use super::child_err;
use crate::channel::ChildError;
use crate::security;
use crate::sys::{Errno, Syscall};

/// Switch to the spec's user with the spec's capabilities: bounding set first (needs
/// CAP_SETPCAP), groups, uid/gid with keepcaps so permitted survives, umask, the other
/// four sets, then no_new_privs.
pub(super) fn apply_identity(
    sys: &dyn Syscall,
    process: &oci_spec::runtime::Process,
    set_groups: bool,
) -> Result<(), ChildError> {
    let caps = process.capabilities().as_ref();
    if let Some(c) = caps {
        security::apply_bounding(sys, c)
            .map_err(|e| child_err("capabilities", e.errno(), e.to_string()))?;
    }
    let user = process.user();
    let mut groups: Vec<u32> = user.additional_gids().clone().unwrap_or_default();
    groups.retain(|g| *g != user.gid());
    groups.insert(0, user.gid());
    if set_groups {
        sys.setgroups(&groups)
            .map_err(|e| child_err("setgroups", e as i32, format!("{groups:?}")))?;
    }
    sys.set_keep_caps(true)
        .map_err(|e| child_err("keep capabilities", e as i32, ""))?;
    sys.set_id(user.uid(), user.gid()).map_err(|e| {
        child_err(
            "set uid/gid",
            e as i32,
            format!("{}:{}", user.uid(), user.gid()),
        )
    })?;
    sys.set_keep_caps(false)
        .map_err(|e| child_err("keep capabilities", e as i32, ""))?;
    if let Some(mask) = user.umask() {
        sys.umask(mask);
    }
    if let Some(c) = caps {
        security::apply_capabilities(sys, c)
            .map_err(|e| child_err("capabilities", e.errno(), e.to_string()))?;
    }
    if process.no_new_privileges() == Some(true) {
        sys.set_no_new_privs()
            .map_err(|e| child_err("no_new_privs", e as i32, ""))?;
    }
    Ok(())
}

/// Ask AppArmor to confine the process from its next execve on. A host without
/// AppArmor skips this cleanly (the profile cannot be honoured there anyway).
pub(super) fn apply_apparmor(enabled: bool, profile: &str) -> Result<(), ChildError> {
    use std::os::unix::fs::OpenOptionsExt;
    if !enabled {
        return Ok(());
    }
    let data = format!("exec {profile}");
    let fail =
        |errno: i32, what: &str| child_err("apparmor profile", errno, format!("{profile}: {what}"));
    for attr in ["/proc/self/attr/apparmor/exec", "/proc/self/attr/exec"] {
        // The container's /proc is what the spec mounted there: write only to a file
        // the kernel's procfs serves (a bind mount or symlink over it would take the
        // label for a file of the attacker's choosing), opened without following links.
        let file = match fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(attr)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(fail(e.raw_os_error().unwrap_or(libc::EIO), attr)),
        };
        let fs_type = nix::sys::statfs::fstatfs(&file)
            .map_err(|e| fail(e as i32, attr))?
            .filesystem_type();
        if fs_type != nix::sys::statfs::PROC_SUPER_MAGIC {
            return Err(fail(libc::EXDEV, &format!("{attr} is not on procfs")));
        }
        return std::io::Write::write_all(&mut &file, data.as_bytes())
            .map_err(|e| fail(e.raw_os_error().unwrap_or(libc::EIO), attr));
    }
    Err(child_err(
        "apparmor profile",
        libc::ENOENT,
        "no /proc/self/attr/apparmor/exec in the container",
    ))
}

/// Clock offsets of a new time namespace: writable only before its first process
/// exists, i.e. between unshare(CLONE_NEWTIME) and the clone of the init.
pub(super) fn write_time_offsets(spec: &Spec) -> Result<(), ChildError> {
    let Some(offsets) = spec.linux().as_ref().and_then(|l| l.time_offsets().clone()) else {
        return Ok(());
    };
    let mut text = String::new();
    let mut clocks: Vec<_> = offsets.iter().collect();
    clocks.sort_by_key(|(k, _)| k.as_str());
    for (clock, off) in clocks {
        if clock != "monotonic" && clock != "boottime" {
            return Err(child_err(
                "time offsets",
                libc::EINVAL,
                format!("unknown clock {clock:?}"),
            ));
        }
        text.push_str(&format!(
            "{clock} {} {}\n",
            off.secs().unwrap_or(0),
            off.nanosecs().unwrap_or(0)
        ));
    }
    fs::write("/proc/self/timens_offsets", text).map_err(|e| {
        child_err(
            "time offsets",
            e.raw_os_error().unwrap_or(libc::EIO),
            "/proc/self/timens_offsets",
        )
    })
}

/// Execution domain (`linux.personality`), e.g. LINUX32 so `uname -m` says i686.
pub(super) fn set_personality(spec: &Spec) -> Result<(), ChildError> {
    use oci_spec::runtime::LinuxPersonalityDomain;
    let Some(p) = spec.linux().as_ref().and_then(|l| l.personality().clone()) else {
        return Ok(());
    };
    let persona: libc::c_ulong = match p.domain() {
        LinuxPersonalityDomain::PerLinux => 0x0000,
        LinuxPersonalityDomain::PerLinux32 => 0x0008,
    };
    // SAFETY: personality(2) takes a plain integer and only changes this process.
    let rc = unsafe { libc::personality(persona) };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| child_err("personality", e as i32, format!("{:?}", p.domain())))
}

/// I/O scheduling class and level (`process.ioPriority`).
pub(super) fn set_io_priority(process: &oci_spec::runtime::Process) -> Result<(), ChildError> {
    use oci_spec::runtime::IOPriorityClass;
    let Some(io) = process.io_priority() else {
        return Ok(());
    };
    let class: i64 = match io.class() {
        IOPriorityClass::IoprioClassRt => 1,
        IOPriorityClass::IoprioClassBe => 2,
        IOPriorityClass::IoprioClassIdle => 3,
    };
    let value = (class << 13) | io.priority().clamp(0, 7);
    // SAFETY: ioprio_set(IOPRIO_WHO_PROCESS, 0 = this process, value) takes integers only.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, value) };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| child_err("ioprio_set", e as i32, format!("{:?}", io.class())))
}

/// The container's /etc/passwd, which the image controls: a FIFO or a device there
/// must not block the init, nor a huge file fill its memory. Not a regular file, or
/// unreadable: empty. At most 1 MiB is read.
pub(super) fn read_passwd_bounded() -> String {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/etc/passwd")
    else {
        return String::new();
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return String::new();
    }
    let mut text = String::new();
    let _ = f.take(1 << 20).read_to_string(&mut text);
    text
}

/// The home directory of `uid` in a passwd(5) text, or "/".
pub(super) fn home_of(passwd: &str, uid: u32) -> String {
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 6 && f[2].parse() == Ok(uid)).then(|| f[5].to_string())
        })
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

/// Resolve the executable like execvp would, but inside the container, so "not found"
/// is reported at create time.
pub(super) fn find_executable(arg0: &str, env: &[String]) -> Result<PathBuf, ChildError> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if arg0.contains('/') {
        return if is_exec(Path::new(arg0)) {
            Ok(PathBuf::from(arg0))
        } else {
            Err(child_err(
                "find executable",
                libc::ENOENT,
                format!("{arg0}: no such executable file"),
            ))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|d| Path::new(d).join(arg0))
        .find(|p| is_exec(p))
        .ok_or_else(|| {
            child_err(
                "find executable",
                libc::ENOENT,
                format!("{arg0}: executable file not found in $PATH"),
            )
        })
}

pub(super) fn rlimit_resource(t: oci_spec::runtime::PosixRlimitType) -> Option<u32> {
    use oci_spec::runtime::PosixRlimitType as T;
    let r = match t {
        T::RlimitCpu => libc::RLIMIT_CPU,
        T::RlimitFsize => libc::RLIMIT_FSIZE,
        T::RlimitData => libc::RLIMIT_DATA,
        T::RlimitStack => libc::RLIMIT_STACK,
        T::RlimitCore => libc::RLIMIT_CORE,
        T::RlimitRss => libc::RLIMIT_RSS,
        T::RlimitNproc => libc::RLIMIT_NPROC,
        T::RlimitNofile => libc::RLIMIT_NOFILE,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        T::RlimitAs => libc::RLIMIT_AS,
        T::RlimitLocks => libc::RLIMIT_LOCKS,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        T::RlimitNice => libc::RLIMIT_NICE,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO,
        T::RlimitRttime => libc::RLIMIT_RTTIME,
    };
    Some(r)
}

/// Raise oom_score_adj to the spec's value, never below our own (lowering needs
/// CAP_SYS_RESOURCE, which hosts like ours do not grant even to root).
pub(super) fn set_oom_score_adj(wanted: i32) -> Result<(), ChildError> {
    let current: i32 = fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let value = wanted.max(current);
    if value == current {
        return Ok(());
    }
    fs::write("/proc/self/oom_score_adj", value.to_string()).map_err(|e| {
        child_err(
            "set oom_score_adj",
            e.raw_os_error().unwrap_or(libc::EIO),
            value.to_string(),
        )
    })
}
