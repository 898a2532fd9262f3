//! berth-runtime-core: turns an OCI runtime spec and a root filesystem into a running,
//! isolated process. No tokio, no gRPC, no CRI types.

pub mod rootfs;
pub mod sys;
