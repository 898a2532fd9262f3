//! A process id that names exactly one process.
//!
//! kill(2) and waitpid(2) read 0 as "my process group" and -1 as "every process I may
//! signal" (or "any child"); a pid of 0 recorded for a container whose creation was cut
//! short once made berthd signal its own group (fc3be3d). [`Pid`] cannot hold such a
//! value, so the kill and wait paths built on it cannot make that mistake again.

use std::fmt;
use std::num::NonZeroI32;

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus};

/// A positive process id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(NonZeroI32);

impl Pid {
    /// `raw` as a pid, or `None` if it is 0 or negative (a group or "everyone").
    pub fn new(raw: i32) -> Option<Pid> {
        if raw > 0 {
            NonZeroI32::new(raw).map(Pid)
        } else {
            None
        }
    }

    /// The raw value, always positive.
    pub fn get(self) -> i32 {
        self.0.get()
    }

    /// Sends `signal` to this one process.
    pub fn kill(self, signal: Signal) -> nix::Result<()> {
        nix::sys::signal::kill(self.into(), signal)
    }

    /// waitpid(2) on this one child.
    pub fn wait(self, flags: Option<WaitPidFlag>) -> nix::Result<WaitStatus> {
        nix::sys::wait::waitpid(nix::unistd::Pid::from(self), flags)
    }
}

impl From<Pid> for nix::unistd::Pid {
    fn from(pid: Pid) -> Self {
        nix::unistd::Pid::from_raw(pid.get())
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_positive_values_name_a_process() {
        for raw in [0, -1, -42, i32::MIN] {
            assert_eq!(Pid::new(raw), None, "{raw} names a group or every process");
        }
        assert_eq!(Pid::new(1).map(Pid::get), Some(1));
        assert_eq!(Pid::new(i32::MAX).map(Pid::get), Some(i32::MAX));
    }

    #[test]
    fn kill_and_wait_reach_exactly_that_child() {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = Pid::new(i32::try_from(child.id()).unwrap()).unwrap();
        pid.kill(Signal::SIGKILL).unwrap();
        assert_eq!(
            pid.wait(None).unwrap(),
            WaitStatus::Signaled(pid.into(), Signal::SIGKILL, false)
        );
        // Reaped above; dropping the std handle does not wait again.
        drop(child);
    }
}
