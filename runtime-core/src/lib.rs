//! berth-runtime-core: turns an OCI runtime spec and a root filesystem into a running,
//! isolated process. No tokio, no gRPC, no CRI types.

pub mod cgroups;
pub mod channel;
pub mod container;
pub mod exeseal;
pub mod process;
pub mod rootfs;
pub mod security;
pub mod sys;

pub use container::{Container, ContainerError, CreateOptions, State, Status};
pub use process::Stdio;
pub mod devices_bpf;
pub mod hooks;
pub mod idmap;
pub mod monitor_protocol;
pub mod time;
