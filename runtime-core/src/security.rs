//! Capabilities and seccomp: translate the spec's sets and filter for the kernel.

use std::str::FromStr;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    Capabilities, LinuxCapabilities, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator,
};

use crate::sys::{CapSet, Errno, Syscall};

/// Failures applying capabilities or seccomp.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("unknown capability {0}")]
    UnknownCapability(String),
    #[error("set {set:?} capabilities: {errno}")]
    SetCapability { set: CapSet, errno: Errno },
    #[error("seccomp: {0}")]
    SeccompUnsupported(String),
    #[error("seccomp: {what}: {source}")]
    Seccomp {
        what: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },
}

impl SecurityError {
    /// The errno behind this failure.
    pub fn errno(&self) -> i32 {
        match self {
            SecurityError::UnknownCapability(_) | SecurityError::SeccompUnsupported(_) => {
                libc::EINVAL
            }
            SecurityError::SetCapability { errno, .. } => *errno as i32,
            SecurityError::Seccomp { source, .. } => {
                source.errno().map_or(libc::EINVAL, |e| -(e as i32)).abs()
            }
        }
    }
}

/// Convert an OCI capability set to the `caps` crate's.
pub fn to_caps(set: &Capabilities) -> Result<caps::CapsHashSet, SecurityError> {
    set.iter()
        .map(|c| {
            let name = serde_json::to_value(c)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            caps::Capability::from_str(&name).map_err(|_| SecurityError::UnknownCapability(name))
        })
        .collect()
}

/// Drop the bounding set to the spec's (must happen while still privileged).
pub fn apply_bounding(sys: &dyn Syscall, c: &LinuxCapabilities) -> Result<(), SecurityError> {
    let bounding = to_caps(c.bounding().as_ref().unwrap_or(&Capabilities::new()))?;
    sys.set_capability(CapSet::Bounding, &bounding)
        .map_err(|errno| SecurityError::SetCapability {
            set: CapSet::Bounding,
            errno,
        })
}

/// Set permitted, inheritable, effective and ambient (after the uid switch).
pub fn apply_capabilities(sys: &dyn Syscall, c: &LinuxCapabilities) -> Result<(), SecurityError> {
    let empty = Capabilities::new();
    for (set, caps) in [
        // capset needs effective ⊆ permitted at every step: shrink effective first.
        (CapSet::Inheritable, c.inheritable()),
        (CapSet::Effective, c.effective()),
        (CapSet::Permitted, c.permitted()),
        (CapSet::Ambient, c.ambient()),
    ] {
        let v = to_caps(caps.as_ref().unwrap_or(&empty))?;
        sys.set_capability(set, &v)
            .map_err(|errno| SecurityError::SetCapability { set, errno })?;
    }
    Ok(())
}

fn action(a: LinuxSeccompAction, errno_ret: Option<u32>) -> ScmpAction {
    let errno = i32::try_from(errno_ret.unwrap_or(1)).unwrap_or(libc::EPERM);
    match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno),
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
        LinuxSeccompAction::ScmpActTrace => {
            ScmpAction::Trace(u16::try_from(errno_ret.unwrap_or(1)).unwrap_or(1))
        }
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
    }
}

fn seccomp_err(
    what: impl Into<String>,
) -> impl FnOnce(libseccomp::error::SeccompError) -> SecurityError {
    let what = what.into();
    move |source| SecurityError::Seccomp { what, source }
}

/// Build (but do not load) the filter described by `linux.seccomp`. Syscall names this
/// libseccomp does not know are skipped, as runc does.
pub fn build_seccomp(s: &LinuxSeccomp) -> Result<ScmpFilterContext, SecurityError> {
    // Nobody would answer user notifications: the syscalls would hang forever.
    let notify = s.default_action() == LinuxSeccompAction::ScmpActNotify
        || s.syscalls()
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .any(|r| r.action() == LinuxSeccompAction::ScmpActNotify);
    if notify {
        return Err(SecurityError::SeccompUnsupported(
            "SCMP_ACT_NOTIFY (seccomp user notification) is not supported".into(),
        ));
    }
    let default = action(s.default_action(), s.default_errno_ret());
    let mut ctx = ScmpFilterContext::new(default).map_err(seccomp_err("create filter"))?;
    // We set no_new_privs ourselves when the spec asks for it.
    ctx.set_ctl_nnp(false).map_err(seccomp_err("disable NNP"))?;
    for arch in s.architectures().as_deref().unwrap_or(&[]) {
        let name = serde_json::to_value(arch)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let arch =
            ScmpArch::from_str(&name).map_err(seccomp_err(format!("architecture {name}")))?;
        if !ctx.is_arch_present(arch).unwrap_or(false) {
            ctx.add_arch(arch)
                .map_err(seccomp_err(format!("add architecture {name}")))?;
        }
    }
    for rule in s.syscalls().as_deref().unwrap_or(&[]) {
        let act = action(rule.action(), rule.errno_ret());
        if act == default {
            continue;
        }
        let conds: Vec<ScmpArgCompare> = rule
            .args()
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .map(|a| {
                let idx = u32::try_from(a.index()).unwrap_or(u32::MAX);
                let (op, datum) = match a.op() {
                    LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, a.value()),
                    LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, a.value()),
                    LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, a.value()),
                    LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, a.value()),
                    LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, a.value()),
                    LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, a.value()),
                    LinuxSeccompOperator::ScmpCmpMaskedEq => (
                        ScmpCompareOp::MaskedEqual(a.value()),
                        a.value_two().unwrap_or(0),
                    ),
                };
                ScmpArgCompare::new(idx, op, datum)
            })
            .collect();
        for name in rule.names() {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                continue;
            };
            if conds.is_empty() {
                ctx.add_rule(act, sc)
                    .map_err(seccomp_err(format!("rule for {name}")))?;
            } else {
                ctx.add_rule_conditional(act, sc, &conds)
                    .map_err(seccomp_err(format!("conditional rule for {name}")))?;
            }
        }
    }
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, RecordingSyscall};
    use oci_spec::runtime::Capability;

    #[test]
    fn bounding_then_sets_are_applied_with_spec_names() {
        let mut c = LinuxCapabilities::default();
        c.set_bounding(Some(
            [Capability::Chown, Capability::Kill].into_iter().collect(),
        ));
        c.set_effective(Some([Capability::Kill].into_iter().collect()));
        c.set_permitted(Some([Capability::Kill].into_iter().collect()));
        c.set_inheritable(Some(Capabilities::new()));
        c.set_ambient(None);
        let sys = RecordingSyscall::new();
        apply_bounding(&sys, &c).unwrap();
        apply_capabilities(&sys, &c).unwrap();
        let calls = sys.calls();
        assert_eq!(
            calls[0],
            Call::SetCapability {
                set: CapSet::Bounding,
                caps: vec!["CAP_CHOWN".into(), "CAP_KILL".into()]
            }
        );
        assert_eq!(
            calls[2],
            Call::SetCapability {
                set: CapSet::Effective,
                caps: vec!["CAP_KILL".into()]
            }
        );
        assert_eq!(
            calls[4],
            Call::SetCapability {
                set: CapSet::Ambient,
                caps: vec![]
            }
        );
    }

    #[test]
    fn seccomp_profile_builds_multi_arch_and_skips_unknown_syscalls() {
        let json = r#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat", "no_such_syscall_xyz"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_NE"}]}
            ]
        }"#;
        let s: LinuxSeccomp = serde_json::from_str(json).unwrap();
        let ctx = build_seccomp(&s).unwrap();
        assert!(ctx.is_arch_present(ScmpArch::X86).unwrap());
        assert!(ctx.is_arch_present(ScmpArch::X32).unwrap());
    }

    #[test]
    fn runtime_default_style_profile_with_repeated_conditional_rules_builds() {
        // The shapes of containerd's default profile: errno default, per-arg allow rules
        // for the same syscall, a masked-equal on clone flags, ENOSYS for clone3.
        let json = r#"{
            "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["read", "write", "exit_group", "execve"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]}
            ]
        }"#;
        let s: LinuxSeccomp = serde_json::from_str(json).unwrap();
        let ctx = build_seccomp(&s).unwrap();
        assert_eq!(ctx.get_act_default().unwrap(), ScmpAction::Errno(1));
        assert!(ctx.is_arch_present(ScmpArch::X8664).unwrap());
    }

    #[test]
    fn notify_action_is_refused_instead_of_hanging_the_container() {
        let json = r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]}"#;
        let s: LinuxSeccomp = serde_json::from_str(json).unwrap();
        let err = build_seccomp(&s).unwrap_err();
        assert!(err.to_string().contains("SCMP_ACT_NOTIFY"), "{err}");
    }

    #[test]
    fn unknown_architecture_is_an_error() {
        let json = r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_NOPE"]}"#;
        assert!(
            serde_json::from_str::<LinuxSeccomp>(json).is_err() || {
                let s: LinuxSeccomp = serde_json::from_str(json).unwrap();
                build_seccomp(&s).is_err()
            }
        );
    }
}
