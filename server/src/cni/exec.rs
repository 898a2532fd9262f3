//! Running CNI plugins (spec 1.0): ADD, DEL and CHECK through a chained conflist, each
//! plugin a child process with the CNI environment and its network config on stdin.
//! Results of ADD are cached on disk so DEL works after a restart of berthd, as the
//! spec asks (DEL gets the same config and the ADD result as `prevResult`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

use super::{NetworkConfig, find_plugin};
use crate::error::{HasKind, Kind};
use crate::store;

/// Longest a single plugin may run before it is killed.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The interface name inside the pod.
pub const POD_IFNAME: &str = "eth0";

/// One pod's attachment to the network.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// CNI_CONTAINERID: the sandbox id.
    pub container_id: String,
    /// CNI_NETNS: the pinned network namespace.
    pub netns: PathBuf,
    /// CNI_ARGS, e.g. K8S_POD_NAMESPACE.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`runtimeConfig`): `portMappings`, `bandwidth`, ...
    pub capabilities: Map<String, Value>,
}

/// A CNI failure, naming the plugin and the operation.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The plugin binary is not installed.
    #[error("CNI plugin {0:?} not found in the plugin directories")]
    PluginNotFound(String),
    /// The plugin binary could not be started (out of fds, not executable, ...).
    #[error("CNI {command} of plugin {plugin:?}: cannot run {}: {source}", binary.display())]
    Spawn {
        /// ADD/DEL/CHECK.
        command: &'static str,
        /// Plugin type.
        plugin: String,
        /// The plugin binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Talking to the running plugin (its stdin, its output) failed.
    #[error("CNI {command} of plugin {plugin:?}: {source}")]
    Io {
        /// ADD/DEL/CHECK.
        command: &'static str,
        /// Plugin type.
        plugin: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The plugin did not answer in time, or answered nonsense.
    #[error("CNI {command} of plugin {plugin:?}: {message}")]
    Exec {
        /// ADD/DEL/CHECK.
        command: &'static str,
        /// Plugin type.
        plugin: String,
        /// What happened.
        message: String,
    },
    /// The plugin reported an error (its JSON error object).
    #[error("CNI {command} of plugin {plugin:?} failed: {message}")]
    Plugin {
        /// ADD/DEL/CHECK.
        command: &'static str,
        /// Plugin type.
        plugin: String,
        /// The plugin's `msg` and `details`.
        message: String,
    },
    /// The result cache could not be read or written.
    #[error("CNI result cache {path}: {source}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl HasKind for CniError {
    fn kind(&self) -> Kind {
        match self {
            // A network the node is configured with but cannot run: Berth's (the
            // node's) fault, not the pod's.
            CniError::PluginNotFound(_) | CniError::Exec { .. } | CniError::Plugin { .. } => {
                Kind::Internal
            }
            CniError::Spawn { source, .. }
            | CniError::Io { source, .. }
            | CniError::Cache { source, .. } => match Kind::of_io(source) {
                // A missing plugin binary or cache directory is the node's set-up,
                // not an object the client named.
                Kind::NotFound => Kind::Internal,
                k => k,
            },
        }
    }
}

/// Runs plugins for one network, caching results under `cache_dir`.
#[derive(Debug, Clone)]
pub struct CniRunner {
    /// Where plugin binaries are looked up.
    pub plugin_dirs: Vec<PathBuf>,
    /// Directory of cached ADD results.
    pub cache_dir: PathBuf,
}

impl CniRunner {
    /// ADD through every plugin in order; returns the final result and caches it.
    pub async fn add(&self, net: &NetworkConfig, att: &Attachment) -> Result<Value, CniError> {
        self.add_after(net, att, None).await
    }

    /// Like [`Self::add`], with `prev` as the first plugin's `prevResult` (the native
    /// network chains portmap after its own attachment this way).
    pub async fn add_after(
        &self,
        net: &NetworkConfig,
        att: &Attachment,
        mut prev: Option<Value>,
    ) -> Result<Value, CniError> {
        for plugin in plugins(net) {
            let conf = plugin_conf(net, &plugin, prev.as_ref(), &att.capabilities);
            let result = self.invoke("ADD", &plugin, &conf, att).await?;
            prev = Some(result);
        }
        let result = prev.unwrap_or_else(|| json!({ "cniVersion": net.conflist["cniVersion"] }));
        let cached =
            json!({ "network": net.conflist, "result": result, "capabilities": att.capabilities });
        let path = self.cache_path(&net.name, &att.container_id);
        std::fs::create_dir_all(&self.cache_dir)
            .and_then(|()| store::write_atomic(&path, cached.to_string().as_bytes()))
            .map_err(|source| CniError::Cache { path, source })?;
        Ok(result)
    }

    /// DEL through every plugin in reverse order, with the cached ADD result as
    /// `prevResult` and the config used at ADD time when it was cached (the config
    /// on disk may have changed since). Idempotent: plugins ignore what is gone.
    pub async fn del(&self, net: &NetworkConfig, att: &Attachment) -> Result<(), CniError> {
        let path = self.cache_path(&net.name, &att.container_id);
        let cached: Option<Value> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let (conflist, prev, caps) = match &cached {
            Some(c) => (
                c["network"].clone(),
                Some(c["result"].clone()),
                c["capabilities"].as_object().cloned().unwrap_or_default(),
            ),
            None => (net.conflist.clone(), None, att.capabilities.clone()),
        };
        let net_at_add = NetworkConfig {
            conflist,
            ..net.clone()
        };
        let mut list = plugins(&net_at_add);
        list.reverse();
        for plugin in list {
            let conf = plugin_conf(&net_at_add, &plugin, prev.as_ref(), &caps);
            self.invoke("DEL", &plugin, &conf, att).await?;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::Cache { path, source }),
        }
    }

    /// CHECK through every plugin, against the cached ADD result.
    pub async fn check(&self, net: &NetworkConfig, att: &Attachment) -> Result<(), CniError> {
        let path = self.cache_path(&net.name, &att.container_id);
        let bytes = std::fs::read(&path).map_err(|source| CniError::Cache {
            path: path.clone(),
            source,
        })?;
        let cached: Value = serde_json::from_slice(&bytes).map_err(|e| CniError::Cache {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        for plugin in plugins(net) {
            let conf = plugin_conf(net, &plugin, Some(&cached["result"]), &att.capabilities);
            self.invoke("CHECK", &plugin, &conf, att).await?;
        }
        Ok(())
    }

    fn cache_path(&self, network: &str, container_id: &str) -> PathBuf {
        self.cache_dir
            .join(format!("{network}-{container_id}-{POD_IFNAME}.json"))
    }

    async fn invoke(
        &self,
        command: &'static str,
        plugin: &Value,
        conf: &Value,
        att: &Attachment,
    ) -> Result<Value, CniError> {
        let kind = plugin["type"].as_str().unwrap_or_default().to_owned();
        let binary = find_plugin(&self.plugin_dirs, &kind)
            .ok_or_else(|| CniError::PluginNotFound(kind.clone()))?;
        let exec_err = |message: String| CniError::Exec {
            command,
            plugin: kind.clone(),
            message,
        };
        let cni_path = std::env::join_paths(&self.plugin_dirs)
            .map_err(|e| exec_err(format!("plugin dirs: {e}")))?;
        let args = att
            .args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        let mut child = tokio::process::Command::new(&binary)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", POD_IFNAME)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| CniError::Spawn {
                command,
                plugin: kind.clone(),
                binary: binary.clone(),
                source,
            })?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| exec_err("no stdin".into()))?;
        let input = conf.to_string();
        let run = async move {
            stdin.write_all(input.as_bytes()).await?;
            drop(stdin);
            child.wait_with_output().await
        };
        let output = tokio::time::timeout(PLUGIN_TIMEOUT, run)
            .await
            .map_err(|_| exec_err(format!("no answer within {PLUGIN_TIMEOUT:?}")))?
            .map_err(|source| CniError::Io {
                command,
                plugin: kind.clone(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            let message = match serde_json::from_str::<Value>(&stdout) {
                Ok(v) => {
                    let msg = v["msg"].as_str().unwrap_or("unknown error");
                    match v["details"].as_str() {
                        Some(d) if !d.is_empty() => format!("{msg}: {d}"),
                        _ => msg.to_owned(),
                    }
                }
                Err(_) => format!(
                    "{} (stdout {:?}, stderr {:?})",
                    output.status,
                    stdout.trim(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            };
            return Err(CniError::Plugin {
                command,
                plugin: kind,
                message,
            });
        }
        if command != "ADD" || stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout).map_err(|e| exec_err(format!("invalid result JSON: {e}")))
    }
}

fn plugins(net: &NetworkConfig) -> Vec<Value> {
    net.conflist["plugins"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The config one plugin receives: its own object plus the list's name and version,
/// the previous plugin's result, and the capability arguments it declared.
fn plugin_conf(
    net: &NetworkConfig,
    plugin: &Value,
    prev: Option<&Value>,
    capabilities: &Map<String, Value>,
) -> Value {
    let mut conf = plugin.as_object().cloned().unwrap_or_default();
    conf.insert("name".into(), net.conflist["name"].clone());
    conf.insert("cniVersion".into(), net.conflist["cniVersion"].clone());
    if let Some(prev) = prev.filter(|p| !p.is_null()) {
        conf.insert("prevResult".into(), prev.clone());
    }
    let declared = plugin["capabilities"].as_object();
    let runtime_config: Map<String, Value> = capabilities
        .iter()
        .filter(|(k, _)| {
            declared
                .and_then(|d| d.get(k.as_str()))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !runtime_config.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
    }
    conf.remove("capabilities");
    Value::Object(conf)
}

/// The pod IPs of an ADD result (`ips[].address` without the prefix length).
pub fn result_ips(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next())
        .map(str::to_owned)
        .collect()
}

/// Whether the plugins of `net` are all installed (used before ADD for a clear error).
pub fn missing_plugin(net: &NetworkConfig, dirs: &[PathBuf]) -> Option<String> {
    net.plugin_types
        .iter()
        .find(|t| find_plugin(dirs, t).is_none())
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::ConfigSource;

    fn net() -> NetworkConfig {
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "n",
            "plugins": [
                { "type": "bridge", "bridge": "b0" },
                { "type": "portmap", "capabilities": { "portMappings": true } }
            ]
        });
        NetworkConfig {
            source: ConfigSource::Builtin,
            name: "n".into(),
            plugin_types: vec!["bridge".into(), "portmap".into()],
            conflist,
        }
    }

    #[test]
    fn only_declared_capabilities_reach_a_plugin() {
        let n = net();
        let mut caps = Map::new();
        caps.insert("portMappings".into(), json!([{ "hostPort": 8080 }]));
        caps.insert("bandwidth".into(), json!({ "ingressRate": 1 }));
        let bridge = plugin_conf(&n, &n.conflist["plugins"][0], None, &caps);
        assert!(bridge.get("runtimeConfig").is_none(), "{bridge}");
        assert_eq!(bridge["name"], "n");
        assert_eq!(bridge["cniVersion"], "1.0.0");
        let prev = json!({ "ips": [] });
        let portmap = plugin_conf(&n, &n.conflist["plugins"][1], Some(&prev), &caps);
        assert_eq!(
            portmap["runtimeConfig"]["portMappings"][0]["hostPort"],
            8080
        );
        assert!(portmap["runtimeConfig"].get("bandwidth").is_none());
        assert_eq!(portmap["prevResult"], prev);
        assert!(portmap.get("capabilities").is_none());
    }

    #[test]
    fn ips_come_without_prefix() {
        let r = json!({ "ips": [ { "address": "10.88.0.5/16" }, { "address": "fd00::5/64" } ] });
        assert_eq!(result_ips(&r), ["10.88.0.5", "fd00::5"]);
        assert!(result_ips(&json!({})).is_empty());
    }

    #[tokio::test]
    async fn plugin_errors_carry_the_plugins_message() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("bridge");
        std::fs::write(
            &p,
            "#!/bin/sh\ncat >/dev/null\necho '{\"code\":11,\"msg\":\"no luck\",\"details\":\"bridge b0\"}'\nexit 1\n",
        )
        .expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let runner = CniRunner {
            plugin_dirs: vec![d.path().to_path_buf()],
            cache_dir: d.path().join("cache"),
        };
        let att = Attachment {
            container_id: "c1".into(),
            netns: "/proc/self/ns/net".into(),
            args: vec![],
            capabilities: Map::new(),
        };
        let err = runner.add(&net(), &att).await.expect_err("plugin fails");
        let msg = err.to_string();
        assert!(msg.contains("no luck: bridge b0"), "{msg}");
        assert!(msg.contains("ADD"), "{msg}");
    }
}
