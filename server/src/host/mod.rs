//! The host as berthd reads and changes it: leaf modules that import nothing else of
//! the daemon — the clock, mounts, id mappings, /proc, filesystem usage.

pub mod clock;
pub mod fsinfo;
pub mod idmap;
pub mod mounts;
pub mod procs;
