//! berthd, the Berth CRI daemon, as a library: the binary in `main.rs` is a thin CLI
//! over these modules, and unit tests reach them directly.
//!
//! `unsafe` is denied here and allowed only on the modules below that call the
//! kernel where no safe wrapper fits, each with its reason (and, inside, a
//! `// SAFETY:` comment on every block).

#![deny(unsafe_code)]

pub mod admin;
#[allow(unsafe_code)] // the raw mount_setattr(2) probe of what the kernel supports
pub mod check;
pub mod cni;
pub mod config;
pub mod container;
pub mod cri;
pub mod daemon;
pub mod error;
#[allow(unsafe_code)] // umount2(2) and the NS_GET_OWNER_UID ioctl (host/mounts.rs, host/procs.rs)
pub mod host;
#[allow(unsafe_code)] // getrlimit(2)/setrlimit(2) of RLIMIT_NOFILE
pub mod listener;
#[allow(unsafe_code)] // removing NOTIFY_SOCKET from the environment before any thread reads it
pub mod notify;
pub mod pod;
pub mod progress;
pub mod prom;
pub mod reload;
pub mod store;
#[allow(unsafe_code)] // AsyncFd over the pty master berth-runtime hands over
pub mod stream;
pub mod systemd;
