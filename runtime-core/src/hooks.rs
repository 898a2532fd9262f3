//! OCI lifecycle hooks: run a hook binary with the container's state JSON on stdin,
//! its own argv/env, and an optional timeout.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

/// A hook that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook {path}: start: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hook {path} failed: {status}")]
    Failed {
        path: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error("hook {path} timed out after {secs}s")]
    Timeout { path: PathBuf, secs: i64 },
}

/// Run `hooks` in order; the first failure stops the rest.
pub fn run_hooks(hooks: &[Hook], state: &serde_json::Value) -> Result<(), HookError> {
    let input = serde_json::to_vec(state).unwrap_or_default();
    for h in hooks {
        run_hook(h, &input)?;
    }
    Ok(())
}

fn run_hook(h: &Hook, input: &[u8]) -> Result<(), HookError> {
    let path = h.path().clone();
    let args = h.args().clone().unwrap_or_default();
    let mut cmd = Command::new(&path);
    if let Some((argv0, rest)) = args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for kv in h.env().as_deref().unwrap_or(&[]) {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        path: path.clone(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that ignores its stdin may close it early: not an error.
        let _ = stdin.write_all(input);
    }
    let deadline = h
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| (t, Instant::now() + Duration::from_secs(t.unsigned_abs())));
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(HookError::Failed { path, status }),
            Ok(None) => {}
            Err(source) => return Err(HookError::Spawn { path, source }),
        }
        if let Some((secs, at)) = deadline
            && Instant::now() > at
        {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HookError::Timeout { path, secs });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(json: &str) -> Hook {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn hook_gets_state_on_stdin_and_its_own_env_and_args() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let h = hook(&format!(
            r#"{{"path": "/bin/sh", "args": ["sh", "-c", "cat > {0}; echo \"$FOO $1\" >> {0}", "x", "arg1"],
                "env": ["FOO=bar"]}}"#,
            out.display()
        ));
        run_hooks(&[h], &serde_json::json!({"id": "c1", "status": "creating"})).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text, "{\"id\":\"c1\",\"status\":\"creating\"}bar arg1\n");
    }

    #[test]
    fn failing_hook_stops_the_rest_and_says_which() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("second-ran");
        let first = hook(r#"{"path": "/bin/false"}"#);
        let second = hook(&format!(
            r#"{{"path": "/bin/touch", "args": ["touch", "{}"]}}"#,
            marker.display()
        ));
        let err = run_hooks(&[first, second], &serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("/bin/false"), "{err}");
        assert!(!marker.exists());
    }

    #[test]
    fn hook_past_its_timeout_is_killed() {
        let h = hook(r#"{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}"#);
        let start = Instant::now();
        let err = run_hooks(&[h], &serde_json::json!({})).unwrap_err();
        assert!(matches!(err, HookError::Timeout { secs: 1, .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
