//! `ExecSync`: a command run in the container through `berth-runtime exec` (or the
//! handler's OCI runtime), its output capped, killed with its children on timeout.

use std::path::PathBuf;
use std::time::Duration;

use super::error::{Error, Result};
use super::handler::{self, Handler};
use super::{ContainerManager, ExecOutput, KILL_WAIT, Phase};
use crate::host::procs::kill_tree;
use crate::store;

/// Largest ExecSync output kept per stream (kubelet's gRPC limit is 16 MiB).
const EXEC_OUTPUT_LIMIT: usize = 8 << 20;

impl ContainerManager {
    /// `ExecSync`: runs `cmd` in the container through `berth-runtime exec` (a
    /// single-threaded process does the namespace joining), with a timeout that kills
    /// the process and its children.
    pub async fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout: i64) -> Result<ExecOutput> {
        let ctr = self.get(id)?;
        if ctr.state().phase != Phase::Running {
            return Err(Error::NotRunning { id: ctr.id.clone() });
        }
        if cmd.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "exec in container {}: cmd is required (give the command to run)",
                ctr.id
            )));
        }
        let handler = self.handler(&ctr)?;
        let runtime = match &handler {
            Handler::Oci(rt) => rt.path.clone(),
            Handler::Native => self.helper("berth-runtime")?,
        };
        let pid_file = self.dir(&ctr.id).join(format!(
            "exec-{}.pid",
            store::new_id()
                .map_err(|e| Error::io("exec id", e))?
                .get(..12)
                .unwrap_or("x")
        ));
        let mut command = tokio::process::Command::new(&runtime);
        match &handler {
            Handler::Oci(rt) => command.args(rt.exec_args(&pid_file, false, None, &ctr.id)),
            Handler::Native => command
                .arg("--root")
                .arg(self.runtime_root())
                .arg("exec")
                .arg("--pid-file")
                .arg(&pid_file)
                .arg(&ctr.id)
                .arg("--"),
        };
        let mut child = command
            .args(&cmd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // Not kill_on_drop: berth-runtime must live to reap the process it ran
            // (the guard kills that one); tokio reaps berth-runtime itself.
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", runtime.display()), e))?;
        // If the client goes away (its deadline usually equals ours), this future is
        // dropped mid-wait: the guard still kills the process in the container.
        let mut guard = ExecGuard {
            pid_file: pid_file.clone(),
            armed: true,
        };
        let mut out = child
            .stdout
            .take()
            .ok_or_else(|| Error::Internal("exec stdout".into()))?;
        let mut err = child
            .stderr
            .take()
            .ok_or_else(|| Error::Internal("exec stderr".into()))?;
        let read_out = tokio::spawn(async move { read_capped(&mut out).await });
        let read_err = tokio::spawn(async move { read_capped(&mut err).await });
        let waited = if timeout > 0 {
            tokio::time::timeout(
                Duration::from_secs(u64::try_from(timeout).unwrap_or(0)),
                child.wait(),
            )
            .await
        } else {
            Ok(child.wait().await)
        };
        let status = match waited {
            Ok(s) => s.map_err(|e| Error::io("waiting for exec", e))?,
            Err(_) => {
                // Kill the command; berth-runtime, its parent, then reaps it and
                // exits. Killing berth-runtime first would leave a zombie with the
                // host's init.
                drop(guard);
                if tokio::time::timeout(KILL_WAIT, child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
                return Err(Error::DeadlineExceeded(format!(
                    "command {cmd:?} timed out after {timeout}s and was killed"
                )));
            }
        };
        guard.armed = false;
        let _ = std::fs::remove_file(&pid_file);
        let stdout = read_out.await.unwrap_or_default();
        let mut stderr = read_err.await.unwrap_or_default();
        let exit_code = status.code().unwrap_or(255);
        // An OCI runtime's own failure: runc's logrus line on stderr.
        if exit_code != 0
            && matches!(handler, Handler::Oci(_))
            && stderr.starts_with(b"time=")
            && String::from_utf8_lossy(&stderr).contains("level=error")
        {
            let msg = handler::runtime_message(&stderr);
            if msg.contains("executable file not found") || msg.contains("no such file") {
                return Ok(ExecOutput {
                    stdout,
                    stderr: msg.into_bytes(),
                    exit_code: 126,
                });
            }
            return Err(Error::Internal(format!(
                "exec in container {}: {msg}",
                ctr.id
            )));
        }
        // berth-runtime reports its own failures (not the command's) with this prefix.
        if exit_code != 0 && stderr.starts_with(b"berth-runtime:") {
            let msg = String::from_utf8_lossy(&stderr).trim().to_owned();
            if msg.contains("executable") {
                stderr = msg.clone().into_bytes();
                return Ok(ExecOutput {
                    stdout,
                    stderr,
                    exit_code: 126,
                });
            }
            return Err(Error::Internal(format!(
                "exec in container {}: {msg}",
                ctr.id
            )));
        }
        Ok(ExecOutput {
            stdout,
            stderr,
            exit_code,
        })
    }
}

async fn read_capped(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = EXEC_OUTPUT_LIMIT.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    out
}

/// Kills an exec'd process tree unless disarmed (the process finished normally).
struct ExecGuard {
    pid_file: PathBuf,
    armed: bool,
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            kill_tree(pid);
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}
