//! Containers: CRI config → OCI spec, and (soon) their life cycle through
//! berth-monitor and runtime-core.

pub mod apparmor;
pub mod cdi;
pub mod checkpoint;
pub mod handler;
pub mod image_volume;
pub mod manager;
pub mod seccomp;
pub mod spec;
