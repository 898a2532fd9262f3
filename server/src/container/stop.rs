//! `StopContainer`: the stop signal, SIGKILL after the grace period, and the sweep of
//! what an init without its own PID namespace leaves in its cgroup.

use std::time::Duration;

use super::error::{Error, Result};
use super::{Container, ContainerManager, KILL_WAIT, Phase};
use crate::error::Plain;

impl ContainerManager {
    /// `StopContainer`: the stop signal, then SIGKILL after `timeout`. Idempotent.
    pub async fn stop(&self, id: &str, timeout: i64) -> Result<()> {
        let Some(ctr) = self.find(id)? else {
            return Ok(());
        };
        let _op = ctr.op.lock().await;
        self.stop_locked(&ctr, timeout).await
    }

    pub(super) async fn stop_locked(&self, ctr: &Container, timeout: i64) -> Result<()> {
        if ctr.state().phase == Phase::Exited {
            return Ok(());
        }
        if timeout > 0 && ctr.state().phase == Phase::Running {
            let signal = stop_signal(&ctr.stop_signal, ctr.config.stop_signal);
            self.kill(ctr, signal, false);
            let wait = Duration::from_secs(u64::try_from(timeout).unwrap_or(0));
            if Self::wait_exited(ctr, wait).await {
                self.sweep_cgroup(ctr).await;
                return Ok(());
            }
        }
        self.kill(ctr, libc::SIGKILL, true);
        if !Self::wait_exited(ctr, KILL_WAIT).await {
            return Err(Error::internal(format!(
                "container {} did not exit {KILL_WAIT:?} after SIGKILL",
                ctr.id
            )));
        }
        self.sweep_cgroup(ctr).await;
        Ok(())
    }

    /// A container without a PID namespace of its own (the host's, or its pod's shared
    /// one) can outlive its init: its other processes are in no namespace that dies with
    /// the init, only in its cgroup. Once the init has exited, kill what is left there
    /// (as containerd's shim does for such containers) and wait, bounded, for it to go,
    /// so a stopped container runs nothing. A container with its own PID namespace has
    /// an empty cgroup by now and costs one read.
    pub(super) async fn sweep_cgroup(&self, ctr: &Container) {
        const SWEEP_WAIT: Duration = Duration::from_secs(2);
        let Some(rc) = self.runtime_container(&ctr.id) else {
            return;
        };
        let Some(cg) = rc.cgroup().cloned() else {
            return;
        };
        let left = |cg: &berth_runtime_core::cgroups::Cgroup| {
            cg.procs().map(|p| !p.is_empty()).unwrap_or(false)
        };
        if !left(&cg) {
            return;
        }
        tracing::info!(container = %ctr.id, "killing the processes its init left in its cgroup");
        self.kill(ctr, libc::SIGKILL, true);
        let deadline = tokio::time::Instant::now() + SWEEP_WAIT;
        while left(&cg) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if left(&cg) {
            tracing::warn!(container = %ctr.id, "processes left in its cgroup {SWEEP_WAIT:?} after SIGKILL");
        }
    }
}

/// The signal that asks a container to stop: the CRI's, else the image's STOPSIGNAL,
/// else SIGTERM.
fn stop_signal(image: &str, cri: i32) -> i32 {
    if let Some(sig) = cri_signal(cri) {
        return sig;
    }
    let name = image.trim().trim_start_matches("SIG").to_ascii_uppercase();
    if let Ok(n) = name.parse::<i32>() {
        return n;
    }
    match name.as_str() {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "WINCH" => libc::SIGWINCH,
        _ => libc::SIGTERM,
    }
}

/// The Linux signal number of a CRI `Signal` (kubelet's `lifecycle.stopSignal`). The
/// enum's values are its own (SIGABRT = 1, SIGKILL = 13), not signal numbers; `None`
/// for RUNTIME_DEFAULT and unknown values. Real-time signals count from glibc's
/// SIGRTMIN (34), as Go's and runc's tables do.
fn cri_signal(cri: i32) -> Option<i32> {
    let signal = berth_proto::v1::Signal::try_from(cri).ok()?;
    let name = signal.as_str_name().strip_prefix("SIGNAL_SIG")?;
    if let Some(n) = name.strip_prefix("RTMINPLUS") {
        return Some(libc::SIGRTMIN() + n.parse::<i32>().ok()?);
    }
    if let Some(n) = name.strip_prefix("RTMAXMINUS") {
        return Some(libc::SIGRTMAX() - n.parse::<i32>().ok()?);
    }
    Some(match name {
        "ABRT" | "IOT" => libc::SIGABRT,
        "ALRM" => libc::SIGALRM,
        "BUS" => libc::SIGBUS,
        "CHLD" | "CLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "FPE" => libc::SIGFPE,
        "HUP" => libc::SIGHUP,
        "ILL" => libc::SIGILL,
        "INT" => libc::SIGINT,
        "IO" | "POLL" => libc::SIGIO,
        "KILL" => libc::SIGKILL,
        "PIPE" => libc::SIGPIPE,
        "PROF" => libc::SIGPROF,
        "PWR" => libc::SIGPWR,
        "QUIT" => libc::SIGQUIT,
        "SEGV" => libc::SIGSEGV,
        "STKFLT" => libc::SIGSTKFLT,
        "STOP" => libc::SIGSTOP,
        "SYS" => libc::SIGSYS,
        "TERM" => libc::SIGTERM,
        "TRAP" => libc::SIGTRAP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "VTALRM" => libc::SIGVTALRM,
        "WINCH" => libc::SIGWINCH,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "RTMIN" => libc::SIGRTMIN(),
        "RTMAX" => libc::SIGRTMAX(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals() {
        assert_eq!(stop_signal("", 0), libc::SIGTERM);
        assert_eq!(stop_signal("SIGQUIT", 0), libc::SIGQUIT);
        assert_eq!(stop_signal("9", 0), 9);
        // A CRI stop signal is the `Signal` enum, not a signal number.
        use berth_proto::v1::Signal;
        assert_eq!(stop_signal("SIGQUIT", Signal::Sigint.into()), libc::SIGINT);
        assert_eq!(stop_signal("", Signal::Sigusr1.into()), libc::SIGUSR1);
        assert_eq!(stop_signal("", Signal::Sigkill.into()), libc::SIGKILL);
        assert_eq!(stop_signal("", Signal::Sigabrt.into()), libc::SIGABRT);
        assert_eq!(stop_signal("", Signal::Sigrtmin.into()), libc::SIGRTMIN());
        assert_eq!(
            stop_signal("", Signal::Sigrtminplus3.into()),
            libc::SIGRTMIN() + 3
        );
        assert_eq!(
            stop_signal("", Signal::Sigrtmaxminus1.into()),
            libc::SIGRTMAX() - 1
        );
        assert_eq!(stop_signal("", Signal::Sigrtmax.into()), libc::SIGRTMAX());
        assert_eq!(
            stop_signal("SIGQUIT", Signal::RuntimeDefault.into()),
            libc::SIGQUIT
        );
        assert_eq!(stop_signal("", 999), libc::SIGTERM);
        // Every value of the enum names a real signal.
        for v in 1..=65 {
            assert!(
                cri_signal(v).is_some_and(|s| s > 0 && s <= libc::SIGRTMAX()),
                "{v}"
            );
        }
    }
}
