//! cgroup v2 device rules: v2 has no `devices.allow/deny` files, the kernel asks a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program instead. We compile the OCI rules into a small
//! program (last matching rule wins, default deny — the v1 semantics kubelet expects),
//! load it with bpf(2) and attach it to the cgroup, replacing any previous one.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst register in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const MOV32_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const MOV32_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
const AND32_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RSH32_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JNE_X: u8 = 0x5d; // BPF_JMP | BPF_JNE | BPF_X
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// `bpf_cgroup_dev_ctx.access_type` low half: device type.
pub const DEV_BLOCK: i32 = 1;
pub const DEV_CHAR: i32 = 2;
/// `bpf_cgroup_dev_ctx.access_type` high half: access bits.
pub const ACC_MKNOD: i32 = 1;
pub const ACC_READ: i32 = 2;
pub const ACC_WRITE: i32 = 4;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (dst & 0x0f) | (src << 4),
        off,
        imm,
    }
}

fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |acc, c| {
        acc | match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => 0,
        }
    })
}

/// Compile OCI device rules. Registers: r2 = access bits, r3 = type, r4 = major,
/// r5 = minor; each rule is a block that jumps past itself when it does not match.
pub fn compile(rules: &[LinuxDeviceCgroup]) -> Vec<Insn> {
    let mut prog = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0), // r2 = ctx->access_type
        insn(MOV32_X, 3, 2, 0, 0),   // w3 = w2
        insn(AND32_K, 3, 0, 0, 0xffff),
        insn(RSH32_K, 2, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0), // r4 = ctx->major
        insn(LDX_MEM_W, 5, 1, 8, 0), // r5 = ctx->minor
    ];
    // Last matching rule wins: test them from the end.
    for rule in rules.iter().rev() {
        let mut checks: Vec<Insn> = Vec::new();
        let typ = match rule.typ() {
            Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => Some(DEV_CHAR),
            Some(LinuxDeviceType::B) => Some(DEV_BLOCK),
            // 'p' (fifo) devices are never checked by the kernel's device cgroup.
            Some(LinuxDeviceType::P) => continue,
            Some(LinuxDeviceType::A) | None => None,
        };
        if let Some(t) = typ {
            checks.push(insn(JNE_K, 3, 0, 0, t));
        }
        let acc = access_bits(rule.access().as_deref().unwrap_or("rwm"));
        if acc != ACC_READ | ACC_WRITE | ACC_MKNOD {
            // The request must be a subset of the rule's access.
            checks.push(insn(MOV32_X, 1, 2, 0, 0));
            checks.push(insn(AND32_K, 1, 0, 0, acc));
            checks.push(insn(JNE_X, 1, 2, 0, 0));
        }
        if let Some(maj) = rule.major().filter(|m| *m >= 0) {
            checks.push(insn(JNE_K, 4, 0, 0, i32::try_from(maj).unwrap_or(i32::MAX)));
        }
        if let Some(min) = rule.minor().filter(|m| *m >= 0) {
            checks.push(insn(JNE_K, 5, 0, 0, i32::try_from(min).unwrap_or(i32::MAX)));
        }
        if checks.is_empty() {
            // Matches every access: it decides, and anything after it (earlier rules,
            // the default) is unreachable — which the verifier rejects.
            prog.push(insn(MOV32_K, 0, 0, 0, i32::from(rule.allow())));
            prog.push(insn(EXIT, 0, 0, 0, 0));
            return prog;
        }
        let block_len = checks.len() + 2;
        for (i, c) in checks.iter_mut().enumerate() {
            if c.code == JNE_K || c.code == JNE_X {
                // Skip the rest of this block.
                c.off = i16::try_from(block_len - i - 1).unwrap_or(i16::MAX);
            }
        }
        prog.extend(checks);
        prog.push(insn(MOV32_K, 0, 0, 0, i32::from(rule.allow())));
        prog.push(insn(EXIT, 0, 0, 0, 0));
    }
    prog.push(insn(MOV32_K, 0, 0, 0, 0));
    prog.push(insn(EXIT, 0, 0, 0, 0));
    prog
}

/// Failures loading or attaching the program.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("open cgroup {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("load device program: {0} (verifier: {1})")]
    Load(#[source] std::io::Error, String),
    #[error("attach device program to {path}: {source}")]
    Attach {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_OVERRIDE: u32 = 1;

/// Load `prog` and attach it to the cgroup directory `dir` (replacing the program a
/// previous call attached, so resource updates work).
pub fn attach(dir: &Path, prog: &[Insn]) -> Result<(), BpfError> {
    let cg = std::fs::File::open(dir).map_err(|source| BpfError::Open {
        path: dir.to_path_buf(),
        source,
    })?;
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 4096];
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"berth_device");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(prog.len()).unwrap_or(u32::MAX),
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: u32::try_from(log.len()).unwrap_or(0),
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    // SAFETY: bpf(BPF_PROG_LOAD) with a correctly laid out attr whose pointers (the
    // instructions, the license string, the log buffer) outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        return Err(BpfError::Load(
            err,
            String::from_utf8_lossy(&log[..end]).into_owned(),
        ));
    }
    let fd = i32::try_from(fd).unwrap_or(-1);
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    let prog_fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let attach = ProgAttachAttr {
        target_fd: u32::try_from(cg.as_raw_fd()).unwrap_or(u32::MAX),
        attach_bpf_fd: u32::try_from(prog_fd.as_raw_fd()).unwrap_or(u32::MAX),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_OVERRIDE,
        replace_bpf_fd: 0,
    };
    // SAFETY: bpf(BPF_PROG_ATTACH) with a correctly laid out attr of open fds.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attach as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if rc < 0 {
        return Err(BpfError::Attach {
            path: dir.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run the program like the kernel would for one device access.
    fn eval(prog: &[Insn], typ: i32, major: i32, minor: i32, access: i32) -> i32 {
        let ctx = [(access << 16) | typ, major, minor];
        let mut r = [0i64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = i64::from(ctx[usize::try_from(i.off / 4).unwrap()]),
                MOV32_X => r[dst] = r[src] & 0xffff_ffff,
                MOV32_K => r[dst] = i64::from(i.imm),
                AND32_K => r[dst] &= i64::from(i.imm),
                RSH32_K => r[dst] = (r[dst] & 0xffff_ffff) >> i.imm,
                JNE_K if r[dst] != i64::from(i.imm) => pc += usize::try_from(i.off).unwrap(),
                JNE_X if r[dst] != r[src] => pc += usize::try_from(i.off).unwrap(),
                JNE_K | JNE_X => {}
                EXIT => return i32::try_from(r[0]).unwrap(),
                other => panic!("unknown opcode {other:#x}"),
            }
        }
    }

    fn rules(json: &str) -> Vec<LinuxDeviceCgroup> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn kubelet_style_rules_deny_all_but_the_listed_devices() {
        let p = compile(&rules(
            r#"[{"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                {"allow": true, "type": "c", "major": 136, "access": "rw"},
                {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "r"}]"#,
        ));
        let rw = ACC_READ | ACC_WRITE;
        assert_eq!(eval(&p, DEV_CHAR, 1, 3, rw | ACC_MKNOD), 1, "/dev/null");
        assert_eq!(eval(&p, DEV_CHAR, 136, 7, rw), 1, "any pty");
        assert_eq!(eval(&p, DEV_CHAR, 136, 7, ACC_MKNOD), 0, "mknod of a pty");
        assert_eq!(eval(&p, DEV_CHAR, 1, 5, ACC_READ), 1, "read /dev/zero");
        assert_eq!(eval(&p, DEV_CHAR, 1, 5, rw), 0, "write /dev/zero");
        assert_eq!(eval(&p, DEV_BLOCK, 1, 3, ACC_READ), 0, "block 1:3");
        assert_eq!(eval(&p, DEV_CHAR, 10, 200, ACC_READ), 0, "/dev/net/tun");
    }

    #[test]
    fn later_rules_override_earlier_ones() {
        let p = compile(&rules(
            r#"[{"allow": true, "access": "rwm"},
                {"allow": false, "type": "b", "access": "rwm"}]"#,
        ));
        assert_eq!(eval(&p, DEV_CHAR, 4, 1, ACC_READ), 1);
        assert_eq!(eval(&p, DEV_BLOCK, 8, 0, ACC_READ), 0);
    }

    #[test]
    fn a_catch_all_rule_ends_the_program() {
        // The verifier refuses unreachable instructions after an unconditional exit.
        let p = compile(&rules(
            r#"[{"allow": true, "type": "c", "major": 5, "access": "rwm"},
                {"allow": false, "access": "rwm"}]"#,
        ));
        assert_eq!(p.len(), 6 + 2);
        assert_eq!(p.last().unwrap().code, EXIT);
        assert_eq!(eval(&p, DEV_CHAR, 5, 0, ACC_READ), 0);
    }

    #[test]
    fn no_rules_means_default_deny() {
        let p = compile(&[]);
        assert_eq!(eval(&p, DEV_CHAR, 1, 3, ACC_READ), 0);
    }
}
