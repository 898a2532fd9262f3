//! `CheckpointContainer`: request validation and the CRIU capability probe.
//!
//! Checkpointing needs CRIU to work on the host. Whether it does is decided once per
//! berthd process, on the first checkpoint request, by running `criu check` (a
//! kernel and CRIU mismatch is a property of the host, not of a container) and cached.
//! When CRIU cannot run, the RPC answers `FailedPrecondition` with `criu check`'s own
//! error lines and what they mean, after the request itself has been validated (so an
//! unknown container or a bad location still gets its precise answer).
//!
//! Linux 6.13 split the vDSO's data pages into `[vvar]` and `[vvar_vclock]`; CRIU
//! before 4.1 (Debian 12's 3.17 included) refuses to start on such kernels ("Unexpected
//! rt vDSO area bounds"), so on those hosts checkpointing is unavailable until a newer
//! CRIU is installed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::OnceCell;

use super::error::{Error, Result};
use super::{ContainerManager, Phase};
use crate::error::Plain;

/// How long `criu check` may take.
const CRIU_CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Directories searched for `criu` after `$PATH` (Debian installs it in /usr/sbin,
/// which is often missing from a service's PATH).
const CRIU_DIRS: &[&str] = &["/usr/sbin", "/usr/local/sbin", "/sbin"];

/// What the host can do, as found by [`probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CriuSupport {
    /// `criu check` passed.
    Usable {
        /// The binary that passed.
        criu: PathBuf,
    },
    /// CRIU cannot checkpoint here; the text says why.
    Unusable(String),
}

static SUPPORT: OnceCell<CriuSupport> = OnceCell::const_new();

/// The host's CRIU support, probed once per process.
pub async fn support() -> &'static CriuSupport {
    SUPPORT
        .get_or_init(|| async {
            let s = probe(find_criu()).await;
            match &s {
                CriuSupport::Usable { criu } => {
                    tracing::info!(criu = %criu.display(), "criu check passed");
                }
                CriuSupport::Unusable(why) => {
                    tracing::warn!("container checkpointing is unavailable: {why}");
                }
            }
            s
        })
        .await
}

/// `criu` on `$PATH`, else in the sbin directories.
pub fn find_criu() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(CRIU_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join("criu"))
        .find(|p| p.is_file())
}

/// Runs `criu check` with `criu` and says what it means.
pub async fn probe(criu: Option<PathBuf>) -> CriuSupport {
    let Some(criu) = criu else {
        return CriuSupport::Unusable(
            "criu is not installed (install the criu package, version 4.1 or newer on Linux 6.13 and later)"
                .to_owned(),
        );
    };
    let run = tokio::process::Command::new(&criu)
        .arg("check")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(CRIU_CHECK_TIMEOUT, run).await {
        Err(_) => {
            return CriuSupport::Unusable(format!(
                "`{} check` did not finish within {}s",
                criu.display(),
                CRIU_CHECK_TIMEOUT.as_secs()
            ));
        }
        Ok(Err(e)) => {
            return CriuSupport::Unusable(format!("running `{} check`: {e}", criu.display()));
        }
        Ok(Ok(out)) => out,
    };
    if out.status.success() {
        return CriuSupport::Usable { criu };
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    CriuSupport::Unusable(explain_check_failure(&criu, &out.status, &text))
}

/// The message for a failed `criu check`: its error lines, and the known cause when
/// there is one.
fn explain_check_failure(criu: &Path, status: &std::process::ExitStatus, text: &str) -> String {
    let errors: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("Error") || l.contains("error"))
        .collect();
    let shown = if errors.is_empty() {
        text.lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("no output")
            .to_owned()
    } else {
        errors.join("; ")
    };
    let mut msg = format!("`{} check` failed ({status}): {shown}", criu.display());
    if text.contains("vDSO area bounds") || text.contains("vdso symtable") {
        msg.push_str(&format!(
            ". This CRIU does not know the [vvar_vclock] mapping that Linux 6.13 added (running kernel {}); \
             checkpointing needs CRIU 4.1 or newer on this kernel, or a kernel older than 6.13",
            kernel_release()
        ));
    } else if text.contains("CONFIG_CHECKPOINT_RESTORE") {
        msg.push_str(". The kernel lacks CONFIG_CHECKPOINT_RESTORE");
    }
    msg
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// `location` must be an absolute path to a file whose directory exists.
pub fn validate_location(location: &str) -> Result<PathBuf> {
    if location.is_empty() {
        return Err(Error::invalid_argument(
            "location is empty: name the checkpoint archive to write (an absolute path)".into(),
        ));
    }
    let path = PathBuf::from(location);
    if !path.is_absolute() {
        return Err(Error::invalid_argument(format!(
            "location {location:?} is not an absolute path"
        )));
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::invalid_argument(format!(
            "location {location:?} must not contain \"..\""
        )));
    }
    if path.is_dir() {
        return Err(Error::invalid_argument(format!(
            "location {location:?} is a directory; name the archive file to write"
        )));
    }
    match path.parent() {
        Some(dir) if dir.is_dir() => Ok(path),
        Some(dir) => Err(Error::invalid_argument(format!(
            "location {location:?}: directory {} does not exist",
            dir.display()
        ))),
        None => Err(Error::invalid_argument(format!(
            "location {location:?} names no file"
        ))),
    }
}

/// CheckpointContainer: validates the container and the location, then needs CRIU.
pub async fn checkpoint(
    containers: &ContainerManager,
    container_id: &str,
    location: &str,
) -> Result<()> {
    let ctr = containers.get(container_id)?;
    validate_location(location)?;
    let phase = ctr.state().phase;
    if phase != Phase::Running {
        let phase = format!("{phase:?}").to_lowercase();
        return Err(Error::failed_precondition(format!(
            "container {} is not running ({phase}); only a running container can be checkpointed",
            ctr.id
        )));
    }
    match support().await {
        CriuSupport::Unusable(why) => Err(Error::failed_precondition(format!(
            "cannot checkpoint container {}: CRIU is unusable on this host: {why}",
            ctr.id
        ))),
        CriuSupport::Usable { criu } => Err(Error::failed_precondition(format!(
            "cannot checkpoint container {}: {} passes `criu check`, but Berth does not drive criu dump yet \
             (it was built on a kernel where CRIU cannot run); see docs/checkpoint.md",
            ctr.id,
            criu.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[tokio::test]
    async fn missing_criu_says_to_install_it() {
        match probe(None).await {
            CriuSupport::Unusable(m) => assert!(m.contains("criu is not installed"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn exit_status_decides() {
        // Real binaries standing in for criu: `true check` passes, `false check` fails.
        let t = PathBuf::from("/bin/true");
        assert_eq!(
            probe(Some(t.clone())).await,
            CriuSupport::Usable { criu: t }
        );
        match probe(Some(PathBuf::from("/bin/false"))).await {
            CriuSupport::Unusable(m) => assert!(m.contains("`/bin/false check` failed"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn vdso_failure_is_explained() {
        let text = "Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\n\
                    Error (criu/crtools.c:260): Could not initialize kernel features detection.\n";
        let m = explain_check_failure(
            Path::new("/usr/sbin/criu"),
            &std::process::ExitStatus::from_raw(1 << 8),
            text,
        );
        assert!(m.contains("Unexpected rt vDSO area bounds"), "{m}");
        assert!(m.contains("Could not initialize kernel features"), "{m}");
        assert!(m.contains("CRIU 4.1 or newer"), "{m}");
    }

    #[test]
    fn locations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = dir.path().join("c.tar");
        assert_eq!(
            validate_location(ok.to_str().expect("utf-8")).expect("valid"),
            ok
        );
        for bad in [
            "",
            "c.tar",
            "./x/c.tar",
            "/nonexistent-dir-xyz/c.tar",
            "/tmp/../c.tar",
        ] {
            assert!(
                matches!(
                    validate_location(bad),
                    Err(Error::Host(crate::error::Error::InvalidArgument(_)))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            validate_location(dir.path().to_str().expect("utf-8")),
            Err(Error::Host(crate::error::Error::InvalidArgument(m))) if m.contains("is a directory")
        ));
    }
}
