//! The create report on berthd's sync pipe: created with a pid, or failed with a
//! kind (the spec's fault, resources exhausted, or internal), step and errno.

use std::fs;
use std::io::Write;

use berth_runtime_core::monitor_protocol::{CreateReport, ErrorKind, MonitorError};

use crate::oci::OciCreateError;

pub(crate) fn report(sync: &mut Option<fs::File>, report: &CreateReport) {
    if let Some(f) = sync.as_mut() {
        let _ = writeln!(f, "{}", report.encode());
        let _ = f.flush();
    }
    *sync = None;
}

/// The failure as berthd reads it: the message, its kind (the pod spec's fault, such
/// as a working directory or executable that cannot be used; the node out of fds or
/// memory; or anything else), and for a failure of the container's init the step and
/// errno name.
pub(crate) fn error_report(e: &(dyn std::error::Error + 'static)) -> MonitorError {
    use berth_runtime_core::ContainerError;
    use berth_runtime_core::process::ProcessError;
    let mut report = MonitorError {
        kind: ErrorKind::Internal,
        message: e.to_string(),
        step: None,
        errno: None,
    };
    let child = match e.downcast_ref::<ContainerError>() {
        Some(ContainerError::Process(ProcessError::Child(child))) => Some(child),
        _ => None,
    };
    if let Some(child) = child {
        report.step = Some(child.step.clone());
        report.errno = Some(berth_runtime_core::channel::errno_name(child.errno));
    }
    let spec_fault = child.is_some_and(|c| c.is_caused_by_spec())
        || e.downcast_ref::<OciCreateError>()
            .is_some_and(OciCreateError::is_caused_by_spec);
    let exhausted = child
        .map(|c| c.errno)
        .into_iter()
        .chain(errnos(e))
        .any(|n| {
            matches!(
                n,
                libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOSPC | libc::EDQUOT
            )
        });
    if spec_fault {
        report.kind = ErrorKind::SpecFault;
    } else if exhausted {
        report.kind = ErrorKind::ResourceExhausted;
    }
    report
}

/// The errnos in an error's chain of causes.
fn errnos<'a>(e: &'a (dyn std::error::Error + 'static)) -> impl Iterator<Item = i32> + 'a {
    std::iter::successors(Some(e), |e| e.source()).filter_map(|e| {
        e.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .or_else(|| e.downcast_ref::<nix::errno::Errno>().map(|n| *n as i32))
            .or_else(|| {
                e.downcast_ref::<rustix::io::Errno>()
                    .map(|n| n.raw_os_error())
            })
    })
}

#[cfg(test)]
mod tests {
    use berth_runtime_core::ContainerError;
    use nix::errno::Errno;

    use super::*;

    /// A kernel call of the container's creation that failed for want of space, fds
    /// or memory is the node's state (docs/troubleshooting.md: ResourceExhausted); any
    /// other errno stays Berth's.
    #[test]
    fn a_failed_kernel_call_is_classified_by_its_errno() {
        let kind = |errno| {
            error_report(&ContainerError::Sys {
                what: "mkfifo exec.fifo",
                errno,
            })
            .kind
        };
        assert_eq!(kind(Errno::ENOSPC), ErrorKind::ResourceExhausted);
        assert_eq!(kind(Errno::EMFILE), ErrorKind::ResourceExhausted);
        assert_eq!(kind(Errno::EIO), ErrorKind::Internal);
        let e = ContainerError::Sys {
            what: "mkfifo exec.fifo",
            errno: Errno::ENOSPC,
        };
        assert_eq!(error_report(&e).message, e.to_string());
    }
}
