//! Configuration reload on SIGHUP: the file is read again (with the same command-line
//! overrides), and the keys that can change under a running daemon take effect at
//! once; every other changed key is named in the log as needing a restart, and its
//! running value stays. A file that does not load or validate changes nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use crate::config::Config;

/// Reads the configuration again: the file plus the command-line overrides.
pub type Loader = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;
/// Replaces the daemon's log filter (`log.level`).
pub type LogFilterSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static LOG_FILTER: OnceLock<LogFilterSetter> = OnceLock::new();

/// Installs how `log.level` changes (berthd's `main` after setting up logging).
pub fn set_log_filter_setter(setter: LogFilterSetter) {
    let _ = LOG_FILTER.set(setter);
}

/// The keys a reload applies to the running daemon (docs/configuration.md lists them).
pub const LIVE_KEYS: [&str; 17] = [
    "log.level",
    "registry.config_path",
    "registry.stall_timeout_secs",
    "registry.min_layer_rate_bytes_per_sec",
    "registry.connect_timeout_secs",
    "registry.header_timeout_secs",
    "registry.request_timeout_secs",
    "registry.max_manifest_bytes",
    "registry.max_config_bytes",
    "registry.max_concurrent_downloads",
    "image.max_layer_unpacked_bytes",
    "image.max_layer_entries",
    "image.pinned_images",
    "cni.conf_dir",
    "cni.plugin_dirs",
    "metrics.address",
    "cdi.spec_dirs",
];

/// What a reload will do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Changed keys applied now.
    pub live: Vec<String>,
    /// Changed keys that keep their running value until berthd restarts.
    pub need_restart: Vec<String>,
    /// The configuration in force after the reload: the running one with the live
    /// keys taken from the new file.
    pub config: Config,
}

/// Compares the running configuration with the one just read.
pub fn plan(running: &Config, read: &Config) -> Result<Plan, String> {
    let old = serde_json::to_value(running).map_err(|e| e.to_string())?;
    let new = serde_json::to_value(read).map_err(|e| e.to_string())?;
    let (mut old_keys, mut new_keys) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &old, &mut old_keys);
    flatten("", &new, &mut new_keys);
    let mut keys: Vec<&String> = old_keys.keys().chain(new_keys.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut merged = old.clone();
    let (mut live, mut need_restart) = (Vec::new(), Vec::new());
    for key in keys {
        let (a, b) = (old_keys.get(key), new_keys.get(key));
        if a == b {
            continue;
        }
        if LIVE_KEYS.contains(&key.as_str())
            && let Some(value) = b
        {
            set_path(&mut merged, key, (*value).clone());
            live.push(key.clone());
        } else {
            // A whole table (a runtime handler) added or removed is one key.
            let table = key.split('.').take(2).collect::<Vec<_>>().join(".");
            let name = if key.starts_with("runtime_handlers.") {
                table
            } else {
                key.clone()
            };
            if !need_restart.contains(&name) {
                need_restart.push(name);
            }
        }
    }
    let config: Config = serde_json::from_value(merged).map_err(|e| e.to_string())?;
    Ok(Plan {
        live,
        need_restart,
        config,
    })
}

fn flatten<'a>(prefix: &str, v: &'a Value, out: &mut BTreeMap<String, &'a Value>) {
    match v {
        // An empty table (no runtime handlers) holds no key.
        Value::Object(map) => {
            for (k, child) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, child, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned(), v);
        }
    }
}

fn set_path(root: &mut Value, dotted: &str, value: Value) {
    let mut at = root;
    let parts: Vec<&str> = dotted.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            at[*part] = value;
            return;
        }
        at = &mut at[*part];
    }
}

/// Sets the log filter when `log.level` is among `live`; the first step of a reload,
/// so that a filter the logger refuses leaves everything else as it was.
pub fn apply_log_level(plan: &Plan) -> Result<(), String> {
    if !plan.live.iter().any(|k| k == "log.level") {
        return Ok(());
    }
    match LOG_FILTER.get() {
        Some(set) => set(&plan.config.log.level)
            .map_err(|e| format!("log.level {:?}: {e}", plan.config.log.level)),
        None => Err("log.level cannot change: logging was set up without a reload handle".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_keys_are_taken_and_restart_keys_keep_their_running_value() {
        let running = Config::default();
        let read = Config::parse(
            "root_dir = \"/elsewhere\"\n\
             [log]\nlevel = \"debug\"\nformat = \"json\"\n\
             [registry]\nconfig_path = \"/etc/containerd/certs.d\"\n\
             [cdi]\nspec_dirs = [\"/x/cdi\"]\n\
             [runtime_handlers.runc]\nruntime_path = \"/usr/sbin/runc\"\n",
        )
        .expect("parses");
        let p = plan(&running, &read).expect("plan");
        assert_eq!(
            p.live,
            ["cdi.spec_dirs", "log.level", "registry.config_path"]
        );
        assert_eq!(
            p.need_restart,
            ["log.format", "root_dir", "runtime_handlers.runc"]
        );
        assert_eq!(p.config.log.level, "debug");
        assert_eq!(p.config.log.format, running.log.format);
        assert_eq!(p.config.root_dir, running.root_dir);
        assert!(p.config.runtime_handlers.is_empty());
        assert_eq!(
            p.config.registry.config_path,
            std::path::PathBuf::from("/etc/containerd/certs.d")
        );
        assert_eq!(p.config.cdi.spec_dirs, [std::path::PathBuf::from("/x/cdi")]);
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let c = Config::default();
        let p = plan(&c, &c).expect("plan");
        assert!(p.live.is_empty() && p.need_restart.is_empty());
        assert_eq!(p.config, c);
    }
}
