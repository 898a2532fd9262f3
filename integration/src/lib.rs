//! Berth's end-to-end test harness: start a real `berthd` with temporary directories,
//! talk to it with a typed CRI client, and drive real clients (crictl, grpcurl,
//! critest) against it. Everything started here is torn down on drop, also when a
//! test fails.

pub mod bench;
pub mod cgroup;
pub mod client;
pub mod daemon;
pub mod fixtures;
pub mod forge;
pub mod hostile_registry;
pub mod peer;
pub mod registry;
pub mod setup;
pub mod tools;

pub use client::CriClient;
pub use daemon::{DaemonOptions, TestDaemon};
