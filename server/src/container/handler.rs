//! Runtime handlers: which runtime runs a pod's containers.
//!
//! The native handler (`""` or `"berth"`) creates containers with runtime-core inside
//! `berth-monitor`. Each `[runtime_handlers.<name>]` of the config names an OCI runtime
//! binary (runc, crun, berth-runtime) driven through the OCI command line: the monitor
//! runs `<runtime> create`, and start, kill, delete, state and exec go through the
//! same binary. A pod picks its handler in `RunPodSandbox` (a RuntimeClass's handler);
//! every container of the pod runs under it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::error::{Error, Result};
use crate::config::{Config, NATIVE_HANDLER_NAMES};
use crate::error::Plain;

/// What a handler can do, as `Status` reports it (`RuntimeHandlerFeatures`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// `rro` mounts (`recursive_read_only` in CRI mounts).
    pub recursive_read_only_mounts: bool,
    /// Pods with a user namespace (`NamespaceOption.userns_options`).
    pub user_namespaces: bool,
}

/// The native handler's features: the one place to change when it gains one.
pub const NATIVE_FEATURES: Features = Features {
    // runtime-core applies `rro` with mount_setattr(AT_RECURSIVE).
    recursive_read_only_mounts: true,
    // Pod user namespaces (mode POD): pinned by pod/namespaces.rs, joined by path,
    // volumes idmapped by runtime-core.
    user_namespaces: true,
};

/// How long one runtime command (start, kill, delete, state, features) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The runtime a container runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// runtime-core through berth-monitor.
    Native,
    /// An OCI runtime binary.
    Oci(OciRuntime),
}

/// An OCI runtime command line (runc's verbs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRuntime {
    /// The handler's name.
    pub name: String,
    /// The binary.
    pub path: PathBuf,
    /// Its `--root`.
    pub root: PathBuf,
}

/// The handler called `name`; an unknown name is `InvalidArgument` naming the
/// configured ones.
pub fn resolve(config: &Config, name: &str) -> Result<Handler> {
    if NATIVE_HANDLER_NAMES.contains(&name) {
        return Ok(Handler::Native);
    }
    match (
        config.runtime_handlers.get(name),
        config.runtime_handler_root(name),
    ) {
        (Some(h), Some(root)) => Ok(Handler::Oci(OciRuntime {
            name: name.to_owned(),
            path: h.runtime_path.clone(),
            root,
        })),
        _ => {
            let mut known: Vec<String> = vec!["\"\" (native)".into(), "\"berth\" (native)".into()];
            known.extend(config.runtime_handlers.keys().map(|k| format!("{k:?}")));
            Err(Error::invalid_argument(format!(
                "unknown runtime handler {name:?}: configured handlers are {}",
                known.join(", ")
            )))
        }
    }
}

/// Every configured handler with its features, native first (`Status`).
pub fn all_features(config: &Config) -> Vec<(String, Features)> {
    let mut v = vec![(String::new(), NATIVE_FEATURES)];
    for name in config.runtime_handlers.keys() {
        if let Ok(Handler::Oci(rt)) = resolve(config, name) {
            v.push((name.clone(), rt.features()));
        }
    }
    v
}

/// Why a runtime command failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The binary could not be run.
    #[error("running {path} {verb}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The verb.
        verb: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It ran out of time and was killed.
    #[error("{path} {verb} did not finish within {COMMAND_TIMEOUT:?}")]
    Timeout {
        /// The binary.
        path: PathBuf,
        /// The verb.
        verb: String,
    },
    /// The blocking task running it died (panicked or was cancelled).
    #[error("the task running the OCI runtime: {0}")]
    Task(String),
    /// It exited non-zero.
    #[error("{path} {verb} failed ({status}): {message}")]
    Failed {
        /// The binary.
        path: PathBuf,
        /// The verb.
        verb: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        message: String,
    },
}

impl RuntimeError {
    /// Whether the runtime said the container does not exist (already deleted).
    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::Failed { message, .. }
            if message.contains("does not exist") || message.contains("not found")
                || message.contains("No such file"))
    }
}

impl OciRuntime {
    /// `<runtime> --root <root>` with `args`, run to completion (blocking, bounded by
    /// [`COMMAND_TIMEOUT`]); its stdout on success.
    pub fn run(&self, args: &[&str]) -> std::result::Result<Vec<u8>, RuntimeError> {
        let verb = args.first().copied().unwrap_or_default().to_owned();
        let mut child = std::process::Command::new(&self.path)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RuntimeError::Spawn {
                path: self.path.clone(),
                verb: verb.clone(),
                source,
            })?;
        // Read both pipes on threads so a chatty runtime never blocks on a full pipe.
        let out = child.stdout.take().map(read_all_thread);
        let err = child.stderr.take().map(read_all_thread);
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) | Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(RuntimeError::Timeout {
                        path: self.path.clone(),
                        verb,
                    });
                }
            }
        };
        let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
        let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
        if status.success() {
            Ok(stdout)
        } else {
            Err(RuntimeError::Failed {
                path: self.path.clone(),
                verb,
                status,
                message: runtime_message(&stderr),
            })
        }
    }

    /// Like [`Self::run`], off the async threads.
    pub async fn run_async(&self, args: Vec<String>) -> std::result::Result<Vec<u8>, RuntimeError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            me.run(&refs)
        })
        .await
        .map_err(|e| RuntimeError::Task(e.to_string()))?
    }

    /// `start <id>`.
    pub async fn start(&self, id: &str) -> std::result::Result<(), RuntimeError> {
        self.run_async(vec!["start".into(), id.into()])
            .await
            .map(drop)
    }

    /// `kill [--all] <id> <signal>` (blocking).
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> std::result::Result<(), RuntimeError> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, sig.as_str()]);
        self.run(&args).map(drop)
    }

    /// `delete --force <id>` (blocking); a container already gone is not an error.
    pub fn delete(&self, id: &str) -> std::result::Result<(), RuntimeError> {
        match self.run(&["delete", "--force", id]) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(drop),
        }
    }

    /// The OCI `status` from `state <id>` (`created`, `running`, `stopped`, ...).
    pub fn status(&self, id: &str) -> Option<String> {
        let out = self.run(&["state", id]).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out).ok()?;
        v["status"].as_str().map(str::to_owned)
    }

    /// The features the runtime reports through `features` (runc ≥ 1.1, crun ≥ 1.9,
    /// berth-runtime); none when it has no such command. Cached per binary.
    pub fn features(&self) -> Features {
        static CACHE: OnceLock<Mutex<HashMap<PathBuf, Features>>> = OnceLock::new();
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(f) = cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&self.path)
        {
            return *f;
        }
        let f = match self.run(&["features"]) {
            Ok(out) => parse_features(&out),
            Err(e) => {
                tracing::info!(handler = %self.name, error = %e, "runtime reports no features; advertising none");
                Features::default()
            }
        };
        cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(self.path.clone(), f);
        f
    }

    /// Arguments of `exec` up to and including the container id (the command
    /// follows directly: runc takes no `--` there).
    pub fn exec_args(
        &self,
        pid_file: &Path,
        tty: bool,
        console_socket: Option<&Path>,
        id: &str,
    ) -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = vec![
            "--root".into(),
            self.root.clone().into(),
            "exec".into(),
            "--pid-file".into(),
            pid_file.into(),
        ];
        if tty {
            v.push("--tty".into());
        }
        if let Some(s) = console_socket {
            v.push("--console-socket".into());
            v.push(s.into());
        }
        v.push(id.into());
        v
    }
}

fn read_all_thread<R: std::io::Read + Send + 'static>(
    mut r: R,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// A runtime's stderr as one line: the `msg` of runc's logrus lines
/// (`time=… level=error msg="…"`), else the text itself.
pub fn runtime_message(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let msgs: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("msg=")?;
            let m = rest
                .strip_prefix('"')
                .map_or(rest, |r| r.rsplit_once('"').map_or(r, |(inner, _)| inner));
            Some(m.replace("\\\"", "\""))
        })
        .collect();
    if msgs.is_empty() {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        msgs.join("; ")
    }
}

/// Features out of runc-style `features` JSON: `rro` among `mountOptions`; user
/// namespaces need the `user` namespace and idmapped mounts
/// (`linux.mountExtensions.idmap.enabled`), and berthd's own support for them (the
/// native handler's flag: berthd writes the mappings into the spec).
fn parse_features(json: &[u8]) -> Features {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
        return Features::default();
    };
    let rro = v["mountOptions"]
        .as_array()
        .is_some_and(|a| a.iter().any(|o| o == "rro"));
    let userns_ns = v["linux"]["namespaces"]
        .as_array()
        .is_some_and(|a| a.iter().any(|n| n == "user"));
    let idmap = v["linux"]["mountExtensions"]["idmap"]["enabled"] == true;
    Features {
        recursive_read_only_mounts: rro,
        user_namespaces: NATIVE_FEATURES.user_namespaces && userns_ns && idmap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuntimeHandlerConfig;

    fn config() -> Config {
        let mut c = Config::default();
        c.runtime_handlers.insert(
            "runc".into(),
            RuntimeHandlerConfig {
                runtime_path: "/usr/sbin/runc".into(),
                runtime_root: None,
            },
        );
        c
    }

    #[test]
    fn resolves_native_configured_and_unknown() {
        let c = config();
        assert_eq!(resolve(&c, "").expect("native"), Handler::Native);
        assert_eq!(resolve(&c, "berth").expect("native"), Handler::Native);
        match resolve(&c, "runc").expect("runc") {
            Handler::Oci(rt) => {
                assert_eq!(rt.path, PathBuf::from("/usr/sbin/runc"));
                assert_eq!(rt.root, PathBuf::from("/run/berth/oci/runc"));
            }
            Handler::Native => panic!("runc resolved to native"),
        }
        let e = resolve(&c, "kata").expect_err("unknown");
        assert!(
            matches!(e, Error::Host(crate::error::Error::InvalidArgument(_))),
            "{e:?}"
        );
        assert!(e.to_string().contains("\"kata\""), "{e}");
        assert!(e.to_string().contains("\"runc\""), "{e}");
    }

    #[test]
    fn features_from_runc_style_json() {
        // runc 1.1: rro, no idmapped mounts.
        let f = parse_features(
            br#"{"mountOptions":["ro","rro"],"linux":{"namespaces":["user","pid"]}}"#,
        );
        assert!(f.recursive_read_only_mounts);
        assert!(!f.user_namespaces);
        let f = parse_features(br#"{"mountOptions":["ro"]}"#);
        assert_eq!(f, Features::default());
        assert_eq!(parse_features(b"not json"), Features::default());
        let f = parse_features(
            br#"{"mountOptions":[],"linux":{"namespaces":["user"],"mountExtensions":{"idmap":{"enabled":true}}}}"#,
        );
        assert_eq!(f.user_namespaces, NATIVE_FEATURES.user_namespaces);
    }

    #[test]
    fn runc_stderr_becomes_one_message() {
        let err = b"time=\"2026-11-29T09:56:12Z\" level=error msg=\"exec failed: exec: \\\"nosuch\\\": executable file not found in $PATH\"\n";
        assert_eq!(
            runtime_message(err),
            "exec failed: exec: \"nosuch\": executable file not found in $PATH"
        );
        assert_eq!(runtime_message(b"crun: oops\n  more\n"), "crun: oops more");
    }
}
