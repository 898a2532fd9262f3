//! `--oci-runtime`: creating the container with an OCI runtime binary (runc, crun)
//! instead of runtime-core, and reading its errors from its JSON log.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Res;

/// An OCI runtime command line that creates the container instead of runtime-core.
#[derive(Debug)]
pub(crate) struct OciRuntime {
    pub(crate) path: PathBuf,
    pub(crate) root: PathBuf,
}

/// How long `<runtime> create` may take.
pub(crate) const OCI_CREATE_TIMEOUT: Duration = Duration::from_secs(60);

impl OciRuntime {
    /// Runs `create`; the container's stdio are `stdio` (pipes) or, with a terminal,
    /// the pty whose master arrives on `console`. Returns the init's pid.
    pub(crate) fn create(
        &self,
        bundle: &Path,
        dir: &Path,
        id: &str,
        stdio: Option<[OwnedFd; 3]>,
        console: Option<&Path>,
    ) -> Res<i32> {
        let pid_file = dir.join("oci-init.pid");
        let log_file = dir.join("oci-create.log");
        let mut cmd = std::process::Command::new(&self.path);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&log_file)
            .arg("--log-format")
            .arg("json")
            .arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file);
        if let Some(c) = console {
            cmd.arg("--console-socket").arg(c);
        }
        cmd.arg(id);
        match stdio {
            Some([i, o, e]) => {
                cmd.stdin(i).stdout(o).stderr(e);
            }
            None => {
                cmd.stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("running {} create: {e}", self.path.display()))?;
        // The command holds the pipes' container ends now; ours must be closed so
        // that end-of-file comes when the container's last writer goes.
        drop(cmd);
        let deadline = std::time::Instant::now() + OCI_CREATE_TIMEOUT;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} create did not finish within {OCI_CREATE_TIMEOUT:?}",
                    self.path.display()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let log = fs::read_to_string(&log_file).unwrap_or_default();
        let _ = fs::remove_file(&log_file);
        if !status.success() {
            return Err(OciCreateError(format!(
                "{} create failed ({status}): {}",
                self.path.display(),
                runtime_log_errors(&log)
            ))
            .into());
        }
        let pid = fs::read_to_string(&pid_file)
            .map_err(|e| format!("reading {}: {e}", pid_file.display()))?;
        let _ = fs::remove_file(&pid_file);
        pid.trim()
            .parse::<i32>()
            .map_err(|_| format!("{} holds no pid: {pid:?}", pid_file.display()).into())
    }
}

/// `<runtime> create` failed; the message holds the runtime's own error messages.
#[derive(Debug)]
pub(crate) struct OciCreateError(String);

impl std::fmt::Display for OciCreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OciCreateError {}

impl OciCreateError {
    /// Whether the runtime refused the spec rather than failed: its log text is the
    /// only account of that (runc and crun word it as Go's and libc's errors do).
    pub(crate) fn is_caused_by_spec(&self) -> bool {
        self.0.contains("executable file not found") || self.0.contains("no such file")
    }
}

/// The error messages in a runtime's `--log-format json` log (runc, crun), one line.
pub(crate) fn runtime_log_errors(log: &str) -> String {
    let msgs: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .filter_map(|v| v["msg"].as_str().map(str::to_owned))
        .collect();
    if msgs.is_empty() {
        let text = log.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() {
            "no error message".to_owned()
        } else {
            text
        }
    } else {
        msgs.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_log_errors_keep_only_error_messages() {
        let log = concat!(
            r#"{"level":"warning","msg":"ignored","time":"t"}"#,
            "\n",
            r#"{"level":"error","msg":"runc create failed: unable to start container process: exec: \"nope\": executable file not found in $PATH","time":"t"}"#,
            "\n"
        );
        assert_eq!(
            runtime_log_errors(log),
            "runc create failed: unable to start container process: exec: \"nope\": executable file not found in $PATH"
        );
        assert_eq!(runtime_log_errors("plain\ntext "), "plain text");
        assert_eq!(runtime_log_errors(""), "no error message");
    }
}
