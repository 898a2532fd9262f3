//! berth-runtime-core: turns an OCI runtime spec and a root filesystem into a running,
//! isolated process. No tokio, no gRPC, no CRI types.
//!
//! `unsafe` is denied here and allowed only on the modules below that make raw
//! system calls, each with its reason; every block in them carries a `// SAFETY:`.

#![deny(unsafe_code)]

#[allow(unsafe_code)] // kill(2) of the cgroup's processes
pub mod cgroups;
#[allow(unsafe_code)] // send(2)/recv(2) of packets on the set-up channel
pub mod channel;
pub mod container;
#[allow(unsafe_code)] // execveat(2) of the sealed copy, clearing its env guard, prctl(2)
pub mod exeseal;
#[allow(unsafe_code)] // fork, setns/unshare, execve, raw fds: the container's processes
pub mod process;
pub mod rootfs;
pub mod security;
pub mod sys;

pub use container::{Container, ContainerError, CreateOptions, State, Status};
pub use process::Stdio;
#[allow(unsafe_code)] // bpf(2): loading and attaching the device-filter program
pub mod devices_bpf;
pub mod hooks;
#[allow(unsafe_code)] // fork of a user-namespace holder, mount_setattr(2)
pub mod idmap;
pub mod monitor_protocol;
pub mod pid;
pub mod time;
