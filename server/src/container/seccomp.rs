//! Seccomp profiles: Berth's `RuntimeDefault` and operator-supplied `Localhost` ones.
//!
//! `RuntimeDefault` allows every syscall except those that reach past the container
//! into the host (kernel modules, keyrings, clocks, reboot, kexec, BPF, perf,
//! namespace creation, mounting, ...). Calls that only make sense with a capability
//! the container lacks are denied unless that capability was granted, the way
//! Docker's profile conditions its rules, so `NET_ADMIN`/`SYS_ADMIN` pods still work.

use serde_json::{Value, json};

/// `CLONE_NEWUSER`: creating a user namespace is refused without CAP_SYS_ADMIN.
const CLONE_NEWUSER: u64 = 0x1000_0000;

/// The capability-free deny list of the default profile.
const ALWAYS_DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "io_pgetevents",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "move_pages",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "_sysctl",
    "sysfs",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// Syscalls allowed only when the container holds the named capability.
const NEEDS_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "pivot_root",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
            "vhangup",
        ],
    ),
    ("CAP_SYS_TIME", &["adjtimex"]),
    (
        "CAP_SYS_PTRACE",
        &["process_vm_readv", "process_vm_writev", "ptrace"],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
];

/// The default profile for a container with `capabilities` (bounding set names).
pub fn runtime_default(capabilities: &[String]) -> Value {
    let has = |cap: &str| capabilities.iter().any(|c| c == cap);
    let mut denied: Vec<&str> = ALWAYS_DENIED.to_vec();
    for (cap, calls) in NEEDS_CAPABILITY {
        if !has(cap) {
            denied.extend_from_slice(calls);
        }
    }
    denied.sort_unstable();
    let mut rules = vec![json!({
        "names": denied,
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": libc::EPERM,
    })];
    if !has("CAP_SYS_ADMIN") {
        // clone(2) may create threads and processes, but not user namespaces; clone3
        // passes its flags in memory seccomp cannot read, so it reports ENOSYS and
        // libc falls back to clone(2), where the flag rule applies.
        rules.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::EPERM,
            "args": [{ "index": 0, "value": CLONE_NEWUSER, "valueTwo": CLONE_NEWUSER, "op": "SCMP_CMP_MASKED_EQ" }],
        }));
        rules.push(json!({
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::ENOSYS,
        }));
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": native_architectures(),
        "syscalls": rules,
    })
}

/// The architectures a filter must cover on this host (native plus compat ABIs).
fn native_architectures() -> Vec<&'static str> {
    if cfg!(target_arch = "x86_64") {
        vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    } else if cfg!(target_arch = "aarch64") {
        vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        Vec::new()
    }
}

/// Converts a Localhost profile (Docker's format, or an OCI `linux.seccomp` object) to
/// the OCI form. Errors name what is wrong so the operator can fix the file.
pub fn from_profile_json(text: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let default_action = v["defaultAction"]
        .as_str()
        .ok_or("missing \"defaultAction\"")?
        .to_owned();
    let mut architectures: Vec<Value> = v["architectures"].as_array().cloned().unwrap_or_default();
    if architectures.is_empty()
        && let Some(arch_map) = v["archMap"].as_array()
    {
        let native = native_architectures();
        for entry in arch_map {
            if entry["architecture"]
                .as_str()
                .is_some_and(|a| native.first() == Some(&a))
            {
                architectures.push(entry["architecture"].clone());
                if let Some(subs) = entry["subArchitectures"].as_array() {
                    architectures.extend(subs.iter().cloned());
                }
            }
        }
    }
    let mut syscalls = Vec::new();
    for (i, rule) in v["syscalls"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let mut names: Vec<Value> = rule["names"].as_array().cloned().unwrap_or_default();
        if let Some(name) = rule["name"].as_str() {
            names.push(Value::from(name));
        }
        if names.is_empty() {
            return Err(format!("syscalls[{i}] names no syscall"));
        }
        let action = rule["action"]
            .as_str()
            .ok_or_else(|| format!("syscalls[{i}] has no \"action\""))?;
        let mut out = json!({ "names": names, "action": action });
        for key in ["errnoRet", "args"] {
            if !rule[key].is_null() {
                out[key] = rule[key].clone();
            }
        }
        syscalls.push(out);
    }
    let mut profile = json!({
        "defaultAction": default_action,
        "architectures": architectures,
        "syscalls": syscalls,
    });
    if !v["defaultErrnoRet"].is_null() {
        profile["defaultErrnoRet"] = v["defaultErrnoRet"].clone();
    }
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(profile: &Value) -> Vec<String> {
        profile["syscalls"][0]["names"]
            .as_array()
            .expect("names")
            .iter()
            .map(|n| n.as_str().expect("str").to_owned())
            .collect()
    }

    #[test]
    fn default_blocks_host_reaching_calls_and_user_namespaces() {
        let p = runtime_default(&["CAP_CHOWN".into()]);
        assert_eq!(p["defaultAction"], "SCMP_ACT_ALLOW");
        let names = denied(&p);
        for call in [
            "keyctl",
            "unshare",
            "mount",
            "kexec_load",
            "init_module",
            "bpf",
        ] {
            assert!(names.iter().any(|n| n == call), "{call} denied");
        }
        assert!(
            p["syscalls"]
                .as_array()
                .expect("rules")
                .iter()
                .any(|r| r["names"][0] == "clone")
        );
        // The profile deserialises as an OCI seccomp object.
        let _: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(p).expect("valid OCI");
    }

    #[test]
    fn sys_admin_allows_mount_and_unshare() {
        let p = runtime_default(&["CAP_SYS_ADMIN".into()]);
        let names = denied(&p);
        assert!(
            !names
                .iter()
                .any(|n| n == "mount" || n == "unshare" || n == "sethostname")
        );
        assert!(names.iter().any(|n| n == "keyctl"), "keyrings stay denied");
    }

    #[test]
    fn docker_format_localhost_profile_converts() {
        let docker = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod","fchmodat"],"action":"SCMP_ACT_ERRNO"},{"name":"sethostname","action":"SCMP_ACT_ERRNO"}]}"#;
        let p = from_profile_json(docker).expect("converts");
        assert_eq!(p["syscalls"][0]["names"][1], "fchmodat");
        assert_eq!(p["syscalls"][1]["names"][0], "sethostname");
        let _: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(p).expect("valid OCI");
        assert!(from_profile_json("{").is_err());
        let e = from_profile_json(r#"{"syscalls":[]}"#).expect_err("no default");
        assert!(e.contains("defaultAction"), "{e}");
    }
}
