//! Seccomp profiles: Berth's `RuntimeDefault` and operator-supplied `Localhost` ones.
//!
//! `RuntimeDefault` is an allowlist kept as data in `seccomp_default.json` (the
//! Docker/OCI profile shape): every syscall it does not name fails with EPERM. It
//! follows containerd's default profile, so what runs under containerd runs here
//! (`ptrace` included), and what it keeps away from containers (io_uring, kernel
//! modules, keyrings, BPF, perf, mounting, new namespaces, AF_VSOCK and AF_ALG
//! sockets, odd `personality` flags) stays away. Rules carry `includes`/`excludes`
//! conditions on the container's capabilities and the host's architecture, resolved
//! here, so a pod granted `SYS_ADMIN` or `SYS_PTRACE` gets the calls that go with it.
//!
//! A profile is read as JSON (Docker's format has fields the OCI one lacks), resolved,
//! and handed out as the typed [`LinuxSeccomp`] the spec carries: an action,
//! architecture or operator the OCI spec does not know is refused here, naming it.

use oci_spec::runtime::LinuxSeccomp;
use serde_json::{Value, json};

/// Berth's RuntimeDefault profile; `runtime_default` resolves it per container.
const RUNTIME_DEFAULT: &str = include_str!("seccomp_default.json");

/// The default profile for a container with `capabilities` (bounding set names).
pub fn runtime_default(capabilities: &[String]) -> LinuxSeccomp {
    let mut profile = resolve(RUNTIME_DEFAULT, capabilities, &host())
        .expect("the embedded RuntimeDefault profile is valid (checked by unit tests)");
    profile["architectures"] = json!(native_architectures());
    typed(profile)
        .expect("the embedded RuntimeDefault profile is valid OCI (checked by unit tests)")
}

/// Converts a Localhost profile (Docker's format, or an OCI `linux.seccomp` object) to
/// the OCI form for a container with `capabilities`. Docker's `includes`/`excludes`
/// conditions are honoured, so a rule meant only for `CAP_SYS_ADMIN` containers does
/// not open the call to every container. Errors name what is wrong so the operator can
/// fix the file.
pub fn from_profile_json(text: &str, capabilities: &[String]) -> Result<LinuxSeccomp, String> {
    typed(resolve(text, capabilities, &host())?)
}

/// The resolved profile as the OCI type.
fn typed(profile: Value) -> Result<LinuxSeccomp, String> {
    serde_json::from_value(profile).map_err(|e| format!("not an OCI seccomp profile: {e}"))
}

/// What rule conditions are evaluated against, besides the capabilities.
#[derive(Debug, Clone)]
struct Host {
    /// The architecture as Docker's profiles spell it (Go's `GOARCH`).
    arch: &'static str,
    /// The running kernel's major.minor, if `uname` could be read.
    kernel: Option<(u32, u32)>,
}

fn host() -> Host {
    let release = rustix::system::uname();
    Host {
        arch: go_arch(),
        kernel: parse_kernel(&release.release().to_string_lossy()),
    }
}

fn go_arch() -> &'static str {
    if cfg!(target_arch = "x86_64") {
        "amd64"
    } else if cfg!(target_arch = "aarch64") {
        "arm64"
    } else if cfg!(target_arch = "arm") {
        "arm"
    } else if cfg!(target_arch = "s390x") {
        "s390x"
    } else if cfg!(target_arch = "riscv64") {
        "riscv64"
    } else if cfg!(all(target_arch = "powerpc64", target_endian = "little")) {
        "ppc64le"
    } else {
        std::env::consts::ARCH
    }
}

/// `"6.18.44-fc"` -> `(6, 18)`.
fn parse_kernel(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether a rule's `includes` (all must hold) and `excludes` (none may hold) let it
/// apply to this container on this host.
fn rule_applies(
    rule: &Value,
    i: usize,
    capabilities: &[String],
    host: &Host,
) -> Result<bool, String> {
    let has = |cap: &Value| {
        cap.as_str()
            .is_some_and(|c| capabilities.iter().any(|h| h == c))
    };
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let kernel_at_least = |which: &str, v: &Value| -> Result<Option<bool>, String> {
        let Some(text) = v.as_str() else {
            return Ok(None);
        };
        let min = parse_kernel(text).ok_or_else(|| {
            format!("syscalls[{i}].{which}.minKernel {text:?} is not a kernel version")
        })?;
        // An unreadable kernel version is treated as too old: the rule stays off.
        Ok(Some(host.kernel.is_some_and(|k| k >= min)))
    };
    let inc = &rule["includes"];
    if !list(&inc["caps"]).iter().all(has) {
        return Ok(false);
    }
    let arches = list(&inc["arches"]);
    if !arches.is_empty() && !arches.iter().any(|a| a == host.arch) {
        return Ok(false);
    }
    if kernel_at_least("includes", &inc["minKernel"])? == Some(false) {
        return Ok(false);
    }
    let exc = &rule["excludes"];
    if list(&exc["caps"]).iter().any(has) || list(&exc["arches"]).iter().any(|a| a == host.arch) {
        return Ok(false);
    }
    if kernel_at_least("excludes", &exc["minKernel"])? == Some(true) {
        return Ok(false);
    }
    Ok(true)
}

/// Parses a profile and keeps the rules whose conditions hold, in the OCI form.
fn resolve(text: &str, capabilities: &[String], host: &Host) -> Result<Value, String> {
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
        if !rule_applies(&rule, i, capabilities, host)? {
            continue;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use berth_runtime_core::security::build_seccomp;

    use crate::container::spec::{ALL_CAPABILITIES, DEFAULT_CAPABILITIES};

    const CLONE_NEWNS: u64 = 0x0002_0000;
    const CLONE_NEWCGROUP: u64 = 0x0200_0000;
    const CLONE_NEWUTS: u64 = 0x0400_0000;
    const CLONE_NEWIPC: u64 = 0x0800_0000;
    const CLONE_NEWUSER: u64 = 0x1000_0000;
    const CLONE_NEWPID: u64 = 0x2000_0000;
    const CLONE_NEWNET: u64 = 0x4000_0000;

    fn caps(extra: &[&str]) -> Vec<String> {
        DEFAULT_CAPABILITIES
            .iter()
            .chain(extra)
            .map(|c| (*c).to_owned())
            .collect()
    }

    /// The RuntimeDefault profile for `capabilities`, as the JSON written to config.json.
    fn default_json(capabilities: &[String]) -> Value {
        serde_json::to_value(runtime_default(capabilities)).expect("serialises")
    }

    fn rules_for<'a>(p: &'a Value, name: &str) -> Vec<&'a Value> {
        p["syscalls"]
            .as_array()
            .expect("syscalls")
            .iter()
            .filter(|r| {
                r["names"]
                    .as_array()
                    .expect("names")
                    .iter()
                    .any(|n| n == name)
            })
            .collect()
    }

    fn arg_matches(c: &Value, args: &[u64; 6]) -> bool {
        let idx = usize::try_from(c["index"].as_u64().expect("index")).expect("small");
        let (a, v) = (args[idx], c["value"].as_u64().expect("value"));
        match c["op"].as_str().expect("op") {
            "SCMP_CMP_EQ" => a == v,
            "SCMP_CMP_NE" => a != v,
            "SCMP_CMP_LT" => a < v,
            "SCMP_CMP_LE" => a <= v,
            "SCMP_CMP_GT" => a > v,
            "SCMP_CMP_GE" => a >= v,
            "SCMP_CMP_MASKED_EQ" => a & v == c["valueTwo"].as_u64().unwrap_or(0),
            op => panic!("unknown op {op}"),
        }
    }

    /// Whether the profile lets `name(args)` through, as the filter would decide it.
    fn allowed(p: &Value, name: &str, args: [u64; 6]) -> bool {
        rules_for(p, name).iter().any(|r| {
            r["action"] == "SCMP_ACT_ALLOW"
                && r["args"]
                    .as_array()
                    .is_none_or(|conds| conds.iter().all(|c| arg_matches(c, &args)))
        })
    }

    fn allowed_unconditionally(p: &Value, name: &str) -> bool {
        rules_for(p, name)
            .iter()
            .any(|r| r["action"] == "SCMP_ACT_ALLOW" && r["args"].is_null())
    }

    #[test]
    fn runtime_default_is_an_eperm_allowlist_libseccomp_accepts() {
        for extra in [&[][..], &["CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_BPF"][..]] {
            let p = default_json(&caps(extra));
            assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
            assert_eq!(p["defaultErrnoRet"], libc::EPERM);
            let oci = runtime_default(&caps(extra));
            let filter = build_seccomp(&oci).expect("libseccomp builds it");
            let default = filter.get_act_default().expect("default");
            assert_eq!(format!("{default:?}"), format!("Errno({})", libc::EPERM));
            for call in [
                "read",
                "write",
                "execve",
                "futex",
                "openat",
                "exit_group",
                "wait4",
            ] {
                assert!(allowed_unconditionally(&p, call), "{call} allowed");
            }
        }
    }

    #[test]
    fn capability_gated_calls_appear_only_with_their_capability() {
        let gated: &[(&str, &[&str])] = &[
            (
                "CAP_SYS_ADMIN",
                &[
                    "mount",
                    "umount2",
                    "unshare",
                    "setns",
                    "sethostname",
                    "bpf",
                    "perf_event_open",
                    "fsopen",
                    "open_tree",
                    "move_mount",
                    "syslog",
                    "quotactl",
                ],
            ),
            ("CAP_SYS_BOOT", &["reboot"]),
            (
                "CAP_SYS_MODULE",
                &["init_module", "finit_module", "delete_module"],
            ),
            ("CAP_SYS_PACCT", &["acct"]),
            (
                "CAP_SYS_PTRACE",
                &["kcmp", "pidfd_getfd", "process_madvise"],
            ),
            ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
            ("CAP_SYS_TIME", &["settimeofday", "clock_settime"]),
            ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
            ("CAP_SYS_NICE", &["mbind", "set_mempolicy", "get_mempolicy"]),
            ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
            ("CAP_SYSLOG", &["syslog"]),
            ("CAP_BPF", &["bpf"]),
            ("CAP_PERFMON", &["perf_event_open"]),
        ];
        let without = default_json(&caps(&[]));
        for (cap, calls) in gated {
            let with = default_json(&caps(&[*cap]));
            for call in *calls {
                assert!(rules_for(&without, call).is_empty(), "{call} without {cap}");
                assert!(allowed_unconditionally(&with, call), "{call} with {cap}");
            }
        }
        // CAP_SYS_CHROOT is in the default set: chroot is allowed, and goes with it.
        assert!(allowed_unconditionally(&without, "chroot"));
        let no_chroot: Vec<String> = caps(&[])
            .into_iter()
            .filter(|c| c != "CAP_SYS_CHROOT")
            .collect();
        assert!(rules_for(&default_json(&no_chroot), "chroot").is_empty());
    }

    #[test]
    fn io_uring_and_keyrings_are_never_allowed_whatever_the_capabilities() {
        let all: Vec<&str> = ALL_CAPABILITIES.to_vec();
        let p = default_json(&caps(&all));
        for call in [
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "keyctl",
            "add_key",
            "request_key",
            "userfaultfd",
            "kexec_load",
            "kexec_file_load",
            "swapon",
            "uselib",
        ] {
            assert!(rules_for(&p, call).is_empty(), "{call} must fall to EPERM");
        }
        let data: Value = serde_json::from_str(RUNTIME_DEFAULT).expect("json");
        let named_io_uring = data["syscalls"]
            .as_array()
            .expect("syscalls")
            .iter()
            .flat_map(|r| r["names"].as_array().expect("names"))
            .any(|n| n.as_str().is_some_and(|n| n.starts_with("io_uring")));
        assert!(!named_io_uring, "no rule of the data file names io_uring");
    }

    #[test]
    fn clone_cannot_make_namespaces_without_sys_admin_and_clone3_says_enosys() {
        let p = default_json(&caps(&[]));
        let thread = 0x0001_0000 | 0x100 | 0x200 | 0x400 | 0x800 | 0x0008_0000; // pthread_create
        assert!(allowed(&p, "clone", [thread, 0, 0, 0, 0, 0]));
        assert!(allowed(&p, "clone", [17, 0, 0, 0, 0, 0]), "fork = SIGCHLD");
        for ns in [
            CLONE_NEWNS,
            CLONE_NEWCGROUP,
            CLONE_NEWUTS,
            CLONE_NEWIPC,
            CLONE_NEWUSER,
            CLONE_NEWPID,
            CLONE_NEWNET,
        ] {
            assert!(!allowed(&p, "clone", [ns | 17, 0, 0, 0, 0, 0]), "{ns:#x}");
        }
        let clone3 = rules_for(&p, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3[0]["errnoRet"], libc::ENOSYS);

        let admin = default_json(&caps(&["CAP_SYS_ADMIN"]));
        assert!(allowed_unconditionally(&admin, "clone"));
        assert!(allowed_unconditionally(&admin, "clone3"));
        assert!(
            rules_for(&admin, "clone3")
                .iter()
                .all(|r| r["action"] == "SCMP_ACT_ALLOW")
        );
    }

    #[test]
    fn personality_only_takes_the_harmless_personas() {
        let p = default_json(&caps(&[]));
        assert!(!allowed_unconditionally(&p, "personality"));
        for ok in [0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff] {
            assert!(allowed(&p, "personality", [ok, 0, 0, 0, 0, 0]), "{ok:#x}");
        }
        // ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, PER_BSD, junk above 32 bits.
        for bad in [0x4_0000, 0x40_0000, 0x6, 0x1_0000_0000] {
            assert!(
                !allowed(&p, "personality", [bad, 0, 0, 0, 0, 0]),
                "{bad:#x}"
            );
        }
    }

    #[test]
    fn socket_refuses_vsock_and_alg_judged_by_the_low_32_bits() {
        const AF_ALG: u64 = 38;
        const AF_VSOCK: u64 = 40;
        let p = default_json(&caps(&[]));
        assert!(!allowed_unconditionally(&p, "socket"));
        for family in 0..64u64 {
            let expect = family != AF_ALG && family != AF_VSOCK;
            assert_eq!(
                allowed(&p, "socket", [family, 1, 0, 0, 0, 0]),
                expect,
                "{family}"
            );
            // The kernel truncates the family to int: upper bits must not change the verdict.
            let junk = family | 0xdead_beef_0000_0000;
            assert_eq!(
                allowed(&p, "socket", [junk, 1, 0, 0, 0, 0]),
                expect,
                "{junk:#x}"
            );
        }
        assert!(allowed_unconditionally(&p, "socketpair"));
    }

    #[test]
    fn ptrace_is_allowed_as_on_containerd() {
        let p = default_json(&caps(&[]));
        for call in ["ptrace", "process_vm_readv", "process_vm_writev"] {
            assert!(allowed_unconditionally(&p, call), "{call}");
        }
    }

    #[test]
    fn arch_specific_calls_follow_the_host() {
        let p = default_json(&caps(&[]));
        let x86 = cfg!(target_arch = "x86_64");
        assert_eq!(allowed_unconditionally(&p, "arch_prctl"), x86);
        assert_eq!(allowed_unconditionally(&p, "modify_ldt"), x86);
        assert_eq!(
            allowed_unconditionally(&p, "set_tls"),
            cfg!(target_arch = "aarch64")
        );
        assert!(rules_for(&p, "s390_runtime_instr").is_empty());
        // s390's clone rule (flags in the second argument) is for s390 only.
        let clone = rules_for(&p, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0]["args"][0]["index"], 0);
    }

    #[test]
    fn kernel_release_parses() {
        assert_eq!(parse_kernel("6.18.44-fc-v1272"), Some((6, 18)));
        assert_eq!(parse_kernel("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel("5"), None);
        assert_eq!(parse_kernel("x"), None);
    }

    #[test]
    fn localhost_docker_profile_conditions_are_honoured() {
        let docker = r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["read"],"action":"SCMP_ACT_ALLOW"},
            {"names":["mount"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}},
            {"names":["unshare"],"action":"SCMP_ACT_ALLOW","excludes":{"caps":["CAP_SYS_ADMIN"]}},
            {"names":["ptrace"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"4.8"}},
            {"names":["kcmp"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"999.0"}},
            {"names":["iopl"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["no-such-arch"]}}]}"#;
        let host = Host {
            arch: "amd64",
            kernel: Some((6, 18)),
        };
        let plain = resolve(docker, &caps(&[]), &host).expect("converts");
        let admin = resolve(docker, &caps(&["CAP_SYS_ADMIN"]), &host).expect("converts");
        assert!(allowed_unconditionally(&plain, "read"));
        assert!(rules_for(&plain, "mount").is_empty(), "needs SYS_ADMIN");
        assert!(allowed_unconditionally(&admin, "mount"));
        assert!(allowed_unconditionally(&plain, "unshare"));
        assert!(
            rules_for(&admin, "unshare").is_empty(),
            "excluded by SYS_ADMIN"
        );
        assert!(allowed_unconditionally(&plain, "ptrace"));
        assert!(rules_for(&plain, "kcmp").is_empty(), "kernel too old");
        assert!(rules_for(&plain, "iopl").is_empty(), "other arch");
        let unknown_kernel = Host {
            arch: "amd64",
            kernel: None,
        };
        let p = resolve(docker, &caps(&[]), &unknown_kernel).expect("converts");
        assert!(
            rules_for(&p, "ptrace").is_empty(),
            "unknown kernel: too old"
        );
        let bad = r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["ptrace"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"new"}}]}"#;
        let e = resolve(bad, &[], &host).expect_err("bad minKernel");
        assert!(e.contains("syscalls[0].includes.minKernel"), "{e}");
    }

    #[test]
    fn docker_format_localhost_profile_converts() {
        let docker = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod","fchmodat"],"action":"SCMP_ACT_ERRNO"},{"name":"sethostname","action":"SCMP_ACT_ERRNO"}]}"#;
        let p = serde_json::to_value(from_profile_json(docker, &[]).expect("converts"))
            .expect("serialises");
        assert_eq!(p["syscalls"][0]["names"][1], "fchmodat");
        assert_eq!(p["syscalls"][1]["names"][0], "sethostname");
        assert!(from_profile_json("{", &[]).is_err());
        let e = from_profile_json(r#"{"syscalls":[]}"#, &[]).expect_err("no default");
        assert!(e.contains("defaultAction"), "{e}");
        // What the OCI spec has no word for is refused when the spec is built, naming
        // it, not when the runtime reads config.json.
        let e = from_profile_json(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_MAYBE"}]}"#,
            &[],
        )
        .expect_err("unknown action");
        assert!(e.contains("SCMP_ACT_MAYBE"), "{e}");
    }

    /// The typed profile says everything the resolved JSON said: nothing of the
    /// profile is dropped or changed on its way into the OCI type.
    #[test]
    fn the_typed_profile_keeps_every_field_of_the_resolved_one() {
        let all: Vec<String> = ALL_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
        for capabilities in [caps(&[]), all] {
            let mut resolved = resolve(RUNTIME_DEFAULT, &capabilities, &host()).expect("resolves");
            resolved["architectures"] = json!(native_architectures());
            assert_eq!(default_json(&capabilities), resolved);
        }
    }
}
