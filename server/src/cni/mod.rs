//! CNI network configuration: finding the pod network and telling whether it is usable.
//!
//! The network is the first valid config file in the conf dir (lexical order, as libcni
//! does), or, when there is none and the operator allows it, Berth's built-in bridge
//! network. It is "ready" when every plugin it chains is an executable in one of the
//! plugin directories. Running the plugins (ADD/DEL/CHECK) builds on this.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

pub mod exec;
#[allow(unsafe_code)] // setns(2) into the pod netns on a dedicated thread
pub mod native;
#[allow(unsafe_code)] // socket(2), send(2)/recv(2) and if_nametoindex(3) for netlink
pub mod netlink;

use crate::config::{BuiltinMode, CniConfig};

/// Name of the built-in network and its bridge device.
pub const BUILTIN_NETWORK_NAME: &str = "berth";
/// Pod subnet of the built-in network when kubelet gave no pod CIDR.
pub const BUILTIN_SUBNET: &str = "10.88.0.0/16";

/// Where the pod network's configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file in the conf dir.
    File(PathBuf),
    /// Berth's built-in bridge network, run through the CNI plugins.
    Builtin,
    /// Berth's built-in bridge network, set up by berthd itself.
    BuiltinNative,
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Builtin => f.write_str("built-in default"),
            Self::BuiltinNative => f.write_str("built-in default (native)"),
        }
    }
}

/// A loaded network configuration list.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Where it came from.
    pub source: ConfigSource,
    /// The network's `name`.
    pub name: String,
    /// The conflist as JSON (a single-plugin `.conf` is wrapped into a list).
    pub conflist: Value,
    /// The `type` of each chained plugin, in order.
    pub plugin_types: Vec<String>,
}

/// Why the pod network is not ready; the text is what `crictl info` shows operators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// No usable config file, and the built-in network is disabled.
    #[error("no network config found in {dir}{details}")]
    NoConfig {
        /// The conf dir searched.
        dir: String,
        /// Files that were skipped and why.
        details: String,
    },
    /// A chained plugin binary is missing.
    #[error(
        "network {network:?} ({source_desc}) needs CNI plugin {plugin:?}, which is not in {dirs} (install containernetworking-plugins)"
    )]
    MissingPlugin {
        /// Network name.
        network: String,
        /// Where the config came from.
        source_desc: String,
        /// The missing plugin type.
        plugin: String,
        /// The directories searched.
        dirs: String,
    },
}

/// The built-in network: a bridge with host-local IPAM and portmap, like podman's default.
pub fn builtin_conflist(cfg: &CniConfig, pod_cidrs: &[String]) -> Value {
    let ranges: Vec<Value> = if pod_cidrs.is_empty() {
        vec![json!([{ "subnet": cfg.builtin_subnet }])]
    } else {
        pod_cidrs.iter().map(|c| json!([{ "subnet": c }])).collect()
    };
    json!({
        "cniVersion": "1.0.0",
        "name": BUILTIN_NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": cfg.builtin_bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "ranges": ranges,
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    })
}

/// Finds the pod network: the first valid file in the conf dir, else the built-in one.
pub fn load_network(cfg: &CniConfig, pod_cidrs: &[String]) -> Result<NetworkConfig, NotReady> {
    let mut skipped = Vec::new();
    for path in config_files(&cfg.conf_dir) {
        match parse_file(&path) {
            Ok(n) => return Ok(n),
            Err(why) => skipped.push(format!("{}: {why}", path.display())),
        }
    }
    if cfg.builtin_default && cfg.builtin_mode == BuiltinMode::Native {
        return Ok(native_network(cfg, pod_cidrs));
    }
    if cfg.builtin_default {
        let conflist = builtin_conflist(cfg, pod_cidrs);
        return Ok(from_conflist(ConfigSource::Builtin, conflist)
            .unwrap_or_else(|_| unreachable!("the built-in conflist is well formed")));
    }
    Err(NotReady::NoConfig {
        dir: cfg.conf_dir.display().to_string(),
        details: if skipped.is_empty() {
            String::new()
        } else {
            format!(" (skipped {})", skipped.join("; "))
        },
    })
}

/// The native built-in network: no plugins to run (portmap only for hostPort pods); the
/// conflist-shaped description is what `crictl info` and `berthd check` show.
fn native_network(cfg: &CniConfig, pod_cidrs: &[String]) -> NetworkConfig {
    let subnet =
        native::pod_subnet(&cfg.builtin_subnet, pod_cidrs).map_or_else(|e| e, |s| s.to_string());
    native_config(
        json!({
            "type": "berth-native",
            "bridge": cfg.builtin_bridge,
            "subnet": subnet,
            "plugins": [],
        }),
        Vec::new(),
    )
}

/// The portmap plugin alone, chained after a native attachment for hostPort pods (its
/// ADD result is cached under the native network's name, so DEL works after a restart).
pub fn native_portmap() -> NetworkConfig {
    native_config(
        json!({
            "plugins": [{ "type": "portmap", "capabilities": { "portMappings": true } }],
        }),
        vec!["portmap".to_owned()],
    )
}

/// A configuration under the native network's name: its conflist is `fields` with
/// the CNI version and that name.
fn native_config(fields: Value, plugin_types: Vec<String>) -> NetworkConfig {
    let mut conflist = fields;
    if let Value::Object(map) = &mut conflist {
        map.insert("cniVersion".into(), json!("1.0.0"));
        map.insert("name".into(), json!(native::NATIVE_NETWORK_NAME));
    }
    NetworkConfig {
        source: ConfigSource::BuiltinNative,
        name: native::NATIVE_NETWORK_NAME.to_owned(),
        conflist,
        plugin_types,
    }
}

/// Loads the pod network and checks that every plugin it chains is installed.
pub fn check_ready(cfg: &CniConfig, pod_cidrs: &[String]) -> Result<NetworkConfig, NotReady> {
    let net = load_network(cfg, pod_cidrs)?;
    for plugin in &net.plugin_types {
        if find_plugin(&cfg.plugin_dirs, plugin).is_none() {
            return Err(NotReady::MissingPlugin {
                network: net.name.clone(),
                source_desc: net.source.to_string(),
                plugin: plugin.clone(),
                dirs: cfg
                    .plugin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(net)
}

/// The path of an executable plugin binary named `plugin_type`, first match wins.
pub fn find_plugin(dirs: &[PathBuf], plugin_type: &str) -> Option<PathBuf> {
    // A plugin type is a file name; anything with a path separator could escape the dirs.
    if plugin_type.is_empty() || plugin_type.contains('/') || plugin_type == ".." {
        return None;
    }
    dirs.iter()
        .map(|d| d.join(plugin_type))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Config files in lexical order, as libcni lists them.
fn config_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conf" | "conflist" | "json")
                )
        })
        .collect();
    files.sort();
    files
}

fn parse_file(path: &Path) -> Result<NetworkConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_str(&text).map_err(|e| format!("invalid JSON: {e}"))?;
    let conflist = if path.extension().and_then(|e| e.to_str()) == Some("conflist") {
        value
    } else {
        // A single-plugin .conf: wrap it into a list the way libcni does.
        let name = value.get("name").cloned().unwrap_or(Value::Null);
        let version = value.get("cniVersion").cloned().unwrap_or(Value::Null);
        json!({ "cniVersion": version, "name": name, "plugins": [value] })
    };
    from_conflist(ConfigSource::File(path.to_path_buf()), conflist)
}

fn from_conflist(source: ConfigSource, conflist: Value) -> Result<NetworkConfig, String> {
    let name = conflist
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or("missing \"name\"")?
        .to_owned();
    let plugins = conflist
        .get("plugins")
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
        .ok_or("missing or empty \"plugins\"")?;
    let plugin_types = plugins
        .iter()
        .map(|p| {
            p.get("type")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| "a plugin has no \"type\"".to_owned())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NetworkConfig {
        source,
        name,
        conflist,
        plugin_types,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cfg(dir: &Path, plugins: &Path, builtin: bool) -> CniConfig {
        CniConfig {
            conf_dir: dir.to_path_buf(),
            plugin_dirs: vec![plugins.to_path_buf()],
            builtin_default: builtin,
            builtin_mode: if builtin {
                BuiltinMode::Plugins
            } else {
                BuiltinMode::Native
            },
            builtin_bridge: "berth0".into(),
            builtin_subnet: BUILTIN_SUBNET.into(),
        }
    }

    fn install_plugin(dir: &Path, name: &str) {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").expect("write plugin");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    #[test]
    fn builtin_network_needs_bridge_host_local_and_portmap() {
        let conf = tempfile::tempdir().expect("tempdir");
        let bin = tempfile::tempdir().expect("tempdir");
        let c = cfg(conf.path(), bin.path(), true);
        let err = check_ready(&c, &[]).expect_err("no plugins installed");
        assert!(err.to_string().contains("\"bridge\""), "{err}");
        install_plugin(bin.path(), "bridge");
        install_plugin(bin.path(), "portmap");
        let net = check_ready(&c, &[]).expect("ready once plugins exist");
        assert_eq!(net.source, ConfigSource::Builtin);
        assert_eq!(net.plugin_types, ["bridge", "portmap"]);
    }

    #[test]
    fn pod_cidr_becomes_the_builtin_subnet() {
        let d = tempfile::tempdir().expect("tempdir");
        let v = builtin_conflist(
            &cfg(d.path(), d.path(), true),
            &["10.244.1.0/24".to_owned()],
        );
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.1.0/24"
        );
    }

    #[test]
    fn native_builtin_is_ready_without_any_plugin() {
        let conf = tempfile::tempdir().expect("tempdir");
        let bin = tempfile::tempdir().expect("tempdir");
        let mut c = cfg(conf.path(), bin.path(), true);
        c.builtin_mode = BuiltinMode::Native;
        c.builtin_bridge = "berthnat0".into();
        c.builtin_subnet = "10.93.0.0/16".into();
        let net = check_ready(&c, &[]).expect("ready with no plugins installed");
        assert_eq!(net.source, ConfigSource::BuiltinNative);
        assert_eq!(net.name, native::NATIVE_NETWORK_NAME);
        assert_eq!(net.conflist["bridge"], "berthnat0");
        assert_eq!(net.conflist["subnet"], "10.93.0.0/16");
        let net = check_ready(&c, &["10.244.1.0/24".to_owned()]).expect("ready");
        assert_eq!(net.conflist["subnet"], "10.244.1.0/24");
        // A config file in the conf dir still wins over the built-in network.
        std::fs::write(
            conf.path().join("10-a.conf"),
            r#"{"cniVersion":"1.0.0","name":"a","type":"loopback"}"#,
        )
        .expect("write");
        assert_eq!(load_network(&c, &[]).expect("loads").name, "a");
    }

    #[test]
    fn first_valid_file_in_lexical_order_wins() {
        let conf = tempfile::tempdir().expect("tempdir");
        let bin = tempfile::tempdir().expect("tempdir");
        std::fs::write(conf.path().join("05-broken.conflist"), "{not json").expect("write");
        std::fs::write(
            conf.path().join("10-a.conf"),
            r#"{"cniVersion":"1.0.0","name":"a","type":"loopback"}"#,
        )
        .expect("write");
        std::fs::write(
            conf.path().join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
        )
        .expect("write");
        let net = load_network(&cfg(conf.path(), bin.path(), false), &[]).expect("loads");
        assert_eq!(net.name, "a");
        assert_eq!(net.plugin_types, ["loopback"]);
    }

    #[test]
    fn no_config_and_no_builtin_is_not_ready_naming_the_dir() {
        let conf = tempfile::tempdir().expect("tempdir");
        std::fs::write(conf.path().join("bad.conflist"), "[]").expect("write");
        let err = load_network(&cfg(conf.path(), conf.path(), false), &[]).expect_err("none");
        let msg = err.to_string();
        assert!(msg.contains(&conf.path().display().to_string()), "{msg}");
        assert!(msg.contains("bad.conflist"), "{msg}");
    }

    #[test]
    fn plugin_types_cannot_escape_plugin_dirs() {
        assert!(find_plugin(&[PathBuf::from("/usr/bin")], "../bin/sh").is_none());
        assert!(find_plugin(&[PathBuf::from("/usr/bin")], "").is_none());
    }
}
