//! `ExecSync`: a command run in the container through `berth-runtime exec` (or the
//! handler's OCI runtime), its output capped, killed with its children on timeout.

use std::path::PathBuf;
use std::time::Duration;

use super::error::{Error, Result};
use super::handler::{self, Handler};
use super::{ContainerManager, ExecOutput, KILL_WAIT, Phase};
use crate::error::Plain;
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
            return Err(Error::invalid_argument(format!(
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
            // Not kill_on_drop: the runtime must live to reap the process it ran (the
            // guard kills that one); tokio reaps the runtime itself.
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", runtime.display()), e))?;
        let mut out = child
            .stdout
            .take()
            .ok_or_else(|| Error::internal("exec stdout".into()))?;
        let mut err = child
            .stderr
            .take()
            .ok_or_else(|| Error::internal("exec stderr".into()))?;
        let read_out = tokio::spawn(async move { read_capped(&mut out).await });
        let read_err = tokio::spawn(async move { read_capped(&mut err).await });
        // If the client goes away (its deadline usually equals ours), this future is
        // dropped mid-wait: the guard still kills the process in the container.
        let mut guard = ExecGuard {
            pid_file,
            child: Some(child),
        };
        let limit = (timeout > 0).then(|| Duration::from_secs(u64::try_from(timeout).unwrap_or(0)));
        let status = match guard.wait(limit).await {
            Some(s) => s.map_err(|e| Error::io("waiting for exec", e))?,
            None => {
                guard.kill().await;
                return Err(Error::deadline_exceeded(format!(
                    "command {cmd:?} timed out after {timeout}s and was killed"
                )));
            }
        };
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
            return Err(Error::internal(format!(
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
            return Err(Error::internal(format!(
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

/// How often a timed-out exec's pid file is looked for while the runtime is still
/// starting the command.
const PID_FILE_POLL: Duration = Duration::from_millis(100);

/// The runtime running an ExecSync command, and the pid file it writes once the
/// command is started. Dropped while it still holds the runtime (the client went
/// away), it kills the command in the background.
struct ExecGuard {
    pid_file: PathBuf,
    child: Option<tokio::process::Child>,
}

impl ExecGuard {
    /// Waits for the runtime to exit, for at most `limit`: `None` when it ran out.
    /// On an exit the guard is disarmed and the pid file removed; when the wait
    /// itself fails the guard stays armed (nothing says the command ended, so
    /// dropping the guard still kills it).
    async fn wait(
        &mut self,
        limit: Option<Duration>,
    ) -> Option<std::io::Result<std::process::ExitStatus>> {
        let child = self.child.as_mut()?;
        let status = match limit {
            Some(limit) => tokio::time::timeout(limit, child.wait()).await.ok()?,
            None => child.wait().await,
        };
        if status.is_ok() {
            self.child = None;
            let _ = std::fs::remove_file(&self.pid_file);
        }
        Some(status)
    }

    /// Kills the command and everything it started, then waits for the runtime (its
    /// parent, which reaps it) to exit.
    ///
    /// The kill runs as a task of its own that the guard no longer holds: if this
    /// future is dropped mid-kill (the client went away), the task goes on, and the
    /// guard's drop does not start a second kill that would read the pid file again
    /// after the first kill freed its pid for reuse.
    async fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid_file = self.pid_file.clone();
        let _ = tokio::spawn(async move { kill_exec(&pid_file, &mut child).await }).await;
    }
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid_file = std::mem::take(&mut self.pid_file);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { kill_exec(&pid_file, &mut child).await });
            }
            Err(_) => {
                if let Some(pid) = read_pid(&pid_file) {
                    kill_tree(pid);
                }
                let _ = child.start_kill();
                let _ = std::fs::remove_file(&pid_file);
            }
        }
    }
}

/// Kills a timed-out exec: the command's tree once the runtime has written its pid
/// file, then waits for the runtime to reap it and exit.
///
/// The timeout can fire before the runtime has started the command (on a slow or
/// loaded node starting it can take longer than a 1 s timeout): the pid file is
/// then not there yet. Killing only the runtime then would orphan the command it is
/// about to start, still running in the container, so the pid file is watched for
/// until the runtime exits. Only a runtime that neither starts the command nor exits
/// within [`KILL_WAIT`] is killed itself, with whatever it has spawned.
async fn kill_exec(pid_file: &std::path::Path, child: &mut tokio::process::Child) {
    let deadline = tokio::time::Instant::now() + KILL_WAIT;
    let mut killed = false;
    loop {
        if !killed && let Some(pid) = read_pid(pid_file) {
            // Once: after the kill the runtime reaps the process and the pid is free
            // for reuse.
            kill_tree(pid);
            killed = true;
        }
        let poll = tokio::time::Instant::now() + PID_FILE_POLL;
        if tokio::time::timeout_at(poll.min(deadline), child.wait())
            .await
            .is_ok()
        {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                kill_tree(pid);
            }
            let _ = child.kill().await;
            break;
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// The pid in an exec's pid file: `None` while the runtime has not written it (or
/// has written only part of it).
fn read_pid(pid_file: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process's state letter (`/proc/<pid>/stat` field 3), `None` once it is gone.
    fn state(pid: i32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }

    /// The timeout fired before the runtime started the command: the pid file appears
    /// only later, and the command it names must still be killed (a runtime stand-in
    /// that starts `sleep` 1 s late, writes its pid, and waits for it, as
    /// `berth-runtime exec` does).
    #[tokio::test]
    async fn a_command_the_runtime_starts_after_the_timeout_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("exec.pid");
        let seen = dir.path().join("seen.pid");
        let script = format!(
            "sleep 1; sleep 4321 & echo $! > {seen}; echo $! > {pid}; wait $!",
            seen = seen.display(),
            pid = pid_file.display()
        );
        let mut runtime = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            // Its shell reports the killed `sleep` ("Killed"): not the test's output.
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        kill_exec(&pid_file, &mut runtime).await;
        assert!(
            started.elapsed() < KILL_WAIT,
            "the runtime was waited out, not ended by the command's kill"
        );
        let pid: i32 = std::fs::read_to_string(&seen)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(state(pid), None, "the command outlived the kill");
        assert!(!pid_file.exists(), "pid file left behind");
    }

    /// The handler dropped while the guard kills (the client went away during the
    /// kill): the pid file is not read a second time. A runtime stand-in starts the
    /// command, writes its pid, and lingers after the command is killed; once the
    /// kill is cancelled, the pid file names another process, as a reused pid would.
    #[tokio::test]
    async fn a_cancelled_kill_does_not_read_the_pid_file_again() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("exec.pid");
        let script = format!(
            "sleep 4321 & echo $! > {pid}.tmp; mv {pid}.tmp {pid}; wait $!; exec sleep 4321",
            pid = pid_file.display()
        );
        let runtime = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let runtime_pid = runtime.id().unwrap() as i32;
        while read_pid(&pid_file).is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut guard = ExecGuard {
            pid_file: pid_file.clone(),
            child: Some(runtime),
        };
        // The command is killed at once; the runtime lingers, so the kill is still
        // waiting for it when it is cancelled.
        let cancelled = tokio::time::timeout(Duration::from_millis(300), guard.kill()).await;
        assert!(cancelled.is_err(), "the lingering runtime ended the kill");
        let mut other = std::process::Command::new("sleep")
            .arg("4321")
            .spawn()
            .unwrap();
        std::fs::write(&pid_file, other.id().to_string()).unwrap();
        drop(guard);
        tokio::time::sleep(3 * PID_FILE_POLL).await;
        let survived = other.try_wait().unwrap().is_none();
        let _ = other.kill();
        let _ = other.wait();
        kill_tree(runtime_pid);
        assert!(survived, "the process now named by the pid file was killed");
    }

    /// Waiting for the runtime failed (here: it was reaped behind tokio's back, so
    /// waitpid answers ECHILD): nothing says the command ended, so dropping the
    /// guard still kills it.
    #[tokio::test]
    async fn a_failed_wait_leaves_the_guard_armed() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("exec.pid");
        let mut command = std::process::Command::new("sleep")
            .arg("4321")
            .spawn()
            .unwrap();
        std::fs::write(&pid_file, command.id().to_string()).unwrap();
        let runtime = tokio::process::Command::new("true").spawn().unwrap();
        let runtime_pid = runtime.id().unwrap() as i32;
        let reaped = rustix::process::waitpid(
            rustix::process::Pid::from_raw(runtime_pid),
            rustix::process::WaitOptions::empty(),
        )
        .unwrap();
        assert!(reaped.is_some(), "the runtime stand-in was not reaped");
        let mut guard = ExecGuard {
            pid_file: pid_file.clone(),
            child: Some(runtime),
        };
        let waited = guard.wait(None).await;
        assert!(matches!(waited, Some(Err(_))), "{waited:?}");
        drop(guard);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut killed = false;
        while std::time::Instant::now() < deadline {
            if command.try_wait().unwrap().is_some() {
                killed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = command.kill();
        let _ = command.wait();
        assert!(killed, "the command outlived a guard whose wait failed");
    }
}
