//! berthd, the Berth CRI daemon, as a library: the binary in `main.rs` is a thin CLI
//! over these modules, and unit tests reach them directly.

pub mod admin;
pub mod check;
pub mod cni;
pub mod config;
pub mod container;
pub mod cri;
pub mod daemon;
pub mod error;
pub mod host;
pub mod listener;
pub mod notify;
pub mod pod;
pub mod progress;
pub mod prom;
pub mod reload;
pub mod store;
pub mod stream;
pub mod systemd;
