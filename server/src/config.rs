//! berthd's configuration: a TOML file whose every key has a built-in default, so
//! `berthd` with no arguments runs on a fresh machine.
//!
//! Unknown keys are an error rather than silently ignored: a misspelt key is the
//! most common way an operator's setting fails to take effect.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod subnet;

/// Where the default configuration file lives when `--config` is not given and it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/config.toml";

/// Where CDI spec files live when `[cdi] spec_dirs` is not set; a later directory's
/// device overrides an earlier one's of the same name (the CDI rule).
pub const DEFAULT_CDI_SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// The whole daemon configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Durable state: images, content, snapshots, pod and container records.
    pub root_dir: PathBuf,
    /// Volatile state that must not survive a reboot: pinned namespaces, monitor state.
    pub state_dir: PathBuf,
    /// The gRPC endpoint kubelet, crictl and grpcurl talk to.
    pub grpc: GrpcConfig,
    /// Logging of the daemon itself.
    pub log: LogConfig,
    /// Which cgroup driver kubelet must use with this runtime (RuntimeConfig RPC).
    pub cgroup_driver: CgroupDriver,
    /// On cgroup v2, run containers even when their device rules (an eBPF program)
    /// cannot be loaded, instead of failing them. Off by default: without the
    /// program a container can open any device node it can reach or create.
    pub allow_degraded_device_filter: bool,
    /// Pod networking through CNI plugins.
    pub cni: CniConfig,
    /// Image pulls: registry hosts, mirrors, timeouts.
    pub registry: RegistryConfig,
    /// Limits on unpacked image layers.
    pub image: ImageConfig,
    /// The streaming server behind Exec, Attach and PortForward.
    pub stream: StreamServerConfig,
    /// The Prometheus `/metrics` endpoint.
    pub metrics: MetricsConfig,
    /// OCI runtimes (runc, crun, berth-runtime) a pod can pick by runtime handler name
    /// (a Kubernetes RuntimeClass's `handler`), besides the native one.
    pub runtime_handlers: BTreeMap<String, RuntimeHandlerConfig>,
    /// CDI (Container Device Interface) devices.
    pub cdi: CdiConfig,
}

/// Where CDI device specs are found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CdiConfig {
    /// Directories of CDI spec files (`*.json`, `*.yaml`); a device in a later
    /// directory overrides one of the same name in an earlier one.
    pub spec_dirs: Vec<PathBuf>,
}

impl Default for CdiConfig {
    fn default() -> Self {
        Self {
            spec_dirs: DEFAULT_CDI_SPEC_DIRS.iter().map(PathBuf::from).collect(),
        }
    }
}

/// One `[runtime_handlers.<name>]`: an OCI runtime driven through its command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeHandlerConfig {
    /// The runtime binary (`/usr/sbin/runc`, `/usr/bin/crun`, `berth-runtime`).
    pub runtime_path: PathBuf,
    /// Its `--root` state directory; `<state_dir>/oci/<name>` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_root: Option<PathBuf>,
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `IP:port` serving `GET /metrics`; empty turns the endpoint off.
    pub address: String,
}

impl MetricsConfig {
    /// The address to bind, `None` when the endpoint is off, or why `address` is unusable.
    pub fn socket_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let address = self.address.trim();
        if address.is_empty() {
            return Ok(None);
        }
        address.parse().map(Some).map_err(|_| {
            ConfigError::Invalid(format!(
                "metrics.address {:?} is not an IP:port address (e.g. \"127.0.0.1:9338\")",
                self.address
            ))
        })
    }
}

/// The HTTP server that carries `crictl exec -it`, `attach` and `port-forward`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamServerConfig {
    /// IP address to listen on (kubelet and crictl connect to it).
    pub address: String,
    /// TCP port; 0 picks a free one at start-up.
    pub port: u16,
}

impl Default for StreamServerConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1".to_owned(),
            port: 0,
        }
    }
}

impl StreamServerConfig {
    /// The socket address to bind, or why `address` is not an IP address.
    pub fn socket_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        let ip: std::net::IpAddr = self.address.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "stream.address {:?} is not an IP address",
                self.address
            ))
        })?;
        Ok(std::net::SocketAddr::new(ip, self.port))
    }
}

/// Registry access for image pulls. Every registry is untrusted: these bound what
/// one can make berthd hold or wait for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// containerd-style `certs.d` directory: `<host>/hosts.toml` with mirrors,
    /// plain-HTTP/insecure endpoints, CAs and headers per registry.
    pub config_path: PathBuf,
    /// A layer download that receives no data for this many seconds is abandoned.
    pub stall_timeout_secs: u64,
    /// A layer download must average at least this many bytes per second over each
    /// `stall_timeout_secs` window (0 turns the check off).
    pub min_layer_rate_bytes_per_sec: u64,
    /// Connecting (TCP and TLS) to a registry.
    pub connect_timeout_secs: u64,
    /// From a request sent to its response headers.
    pub header_timeout_secs: u64,
    /// Whole small requests (token, manifest, index, config), body included.
    pub request_timeout_secs: u64,
    /// Largest manifest or index accepted.
    pub max_manifest_bytes: u64,
    /// Largest image config accepted.
    pub max_config_bytes: u64,
    /// Layers downloaded at the same time by one pull.
    pub max_concurrent_downloads: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        let d = berth_image::StoreOptions::default();
        Self {
            config_path: PathBuf::from("/etc/berth/certs.d"),
            stall_timeout_secs: d.stall_timeout.as_secs(),
            min_layer_rate_bytes_per_sec: d.min_layer_rate,
            connect_timeout_secs: d.connect_timeout.as_secs(),
            header_timeout_secs: d.header_timeout.as_secs(),
            request_timeout_secs: d.request_timeout.as_secs(),
            max_manifest_bytes: d.max_manifest_bytes,
            max_config_bytes: d.max_config_bytes,
            max_concurrent_downloads: d.max_concurrent_downloads,
        }
    }
}

/// Limits on what one image layer may unpack to (decompression bombs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// Largest uncompressed size of one layer (its tar stream), in bytes.
    pub max_layer_unpacked_bytes: u64,
    /// Most entries (files, directories, links) in one layer.
    pub max_layer_entries: u64,
    /// Images reported `pinned` (kubelet's image GC skips them) and refused by
    /// RemoveImage: tag or digest references, or image ids.
    pub pinned_images: Vec<String>,
}

/// The pause image kubelet and kubeadm (1.31+) pre-pull and expect a node to keep.
/// containerd pins its sandbox image (this one) by default; Berth needs no pause
/// image but keeps it the same way, so kubelet's GC does not churn it.
pub const DEFAULT_PINNED_IMAGE: &str = "registry.k8s.io/pause:3.10";

impl Default for ImageConfig {
    fn default() -> Self {
        let d = berth_image::unpack::UnpackLimits::default();
        Self {
            max_layer_unpacked_bytes: d.max_bytes,
            max_layer_entries: d.max_entries,
            pinned_images: vec![DEFAULT_PINNED_IMAGE.to_owned()],
        }
    }
}

impl Config {
    /// How the image store reaches registries and unpacks layers.
    pub fn store_options(&self) -> berth_image::StoreOptions {
        use std::time::Duration;
        let r = &self.registry;
        berth_image::StoreOptions {
            hosts: berth_image::RegistryHosts::new(Some(r.config_path.clone())),
            stall_timeout: Duration::from_secs(r.stall_timeout_secs),
            connect_timeout: Duration::from_secs(r.connect_timeout_secs),
            header_timeout: Duration::from_secs(r.header_timeout_secs),
            request_timeout: Duration::from_secs(r.request_timeout_secs),
            min_layer_rate: r.min_layer_rate_bytes_per_sec,
            max_manifest_bytes: r.max_manifest_bytes,
            max_config_bytes: r.max_config_bytes,
            unpack: berth_image::unpack::UnpackLimits {
                max_bytes: self.image.max_layer_unpacked_bytes,
                max_entries: self.image.max_layer_entries,
            },
            max_concurrent_downloads: r.max_concurrent_downloads,
            pinned: self.image.pinned_images.clone(),
            ..berth_image::StoreOptions::default()
        }
    }

    fn validate_registry(&self) -> Result<(), ConfigError> {
        let r = &self.registry;
        for (key, value) in [
            ("registry.stall_timeout_secs", r.stall_timeout_secs),
            ("registry.connect_timeout_secs", r.connect_timeout_secs),
            ("registry.header_timeout_secs", r.header_timeout_secs),
            ("registry.request_timeout_secs", r.request_timeout_secs),
            ("registry.max_manifest_bytes", r.max_manifest_bytes),
            ("registry.max_config_bytes", r.max_config_bytes),
            (
                "registry.max_concurrent_downloads",
                r.max_concurrent_downloads as u64,
            ),
            (
                "image.max_layer_unpacked_bytes",
                self.image.max_layer_unpacked_bytes,
            ),
            ("image.max_layer_entries", self.image.max_layer_entries),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
            }
        }
        for (i, entry) in self.image.pinned_images.iter().enumerate() {
            let id = berth_image::Digest::parse(entry).is_ok()
                || (entry.len() == 64
                    && entry
                        .bytes()
                        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
            if !id && let Err(e) = berth_image::Reference::parse(entry) {
                return Err(ConfigError::Invalid(format!(
                    "image.pinned_images[{i}] = {entry:?} is neither an image reference nor an image id: {e}"
                )));
            }
        }
        Ok(())
    }
}

/// The gRPC server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Path of the Unix socket serving RuntimeService and ImageService.
    pub socket: PathBuf,
    /// Permission bits of the socket (octal in the file, e.g. 0o660).
    pub socket_mode: u32,
}

/// Log output of berthd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter directive: `info`, `debug`, `berth_server=debug,info`, ...
    pub level: String,
    /// `text` for people, `json` for log collectors.
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Cgroup driver, as kubelet names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// Cgroups are managed as plain directories (`/kubepods/burstable/pod<uid>`).
    Cgroupfs,
    /// Cgroups follow systemd's slice naming and are managed through systemd.
    Systemd,
}

/// CNI configuration discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Directory searched for the first `.conflist` / `.conf` / `.json` network config.
    pub conf_dir: PathBuf,
    /// Directories searched, in order, for plugin binaries.
    pub plugin_dirs: Vec<PathBuf>,
    /// When `conf_dir` holds no config, use Berth's built-in bridge network
    /// (bridge + host-local IPAM + portmap) so pods get an IP out of the box.
    pub builtin_default: bool,
    /// How the built-in network is set up: in-process over netlink (`native`) or by
    /// exec'ing the bridge, host-local and portmap plugins (`plugins`).
    pub builtin_mode: BuiltinMode,
    /// The built-in network's bridge device.
    pub builtin_bridge: String,
    /// The built-in network's IPv4 pod subnet (a pod CIDR from kubelet wins).
    pub builtin_subnet: String,
}

/// How the built-in network is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuiltinMode {
    /// berthd sets up the bridge, veth pairs, addresses and routes itself; only
    /// hostPort pods exec the portmap plugin.
    Native,
    /// berthd runs the built-in conflist through the CNI plugins.
    Plugins,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            root_dir: PathBuf::from("/var/lib/berth"),
            state_dir: PathBuf::from("/run/berth"),
            grpc: GrpcConfig::default(),
            log: LogConfig::default(),
            cgroup_driver: CgroupDriver::Cgroupfs,
            allow_degraded_device_filter: false,
            cni: CniConfig::default(),
            registry: RegistryConfig::default(),
            image: ImageConfig::default(),
            stream: StreamServerConfig::default(),
            metrics: MetricsConfig::default(),
            runtime_handlers: BTreeMap::new(),
            cdi: CdiConfig::default(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/berth/berth.sock"),
            socket_mode: 0o660,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            plugin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            builtin_default: true,
            builtin_mode: BuiltinMode::Native,
            builtin_bridge: "berth0".to_owned(),
            builtin_subnet: "10.88.0.0/16".to_owned(),
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type, ...).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key and line.
        message: String,
    },
    /// A value is syntactically right but unusable.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads `path`, or the built-in defaults when `path` is `None` and the default
    /// file does not exist.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => {
                let default = PathBuf::from(DEFAULT_CONFIG_PATH);
                if !default.exists() {
                    return Ok(Self::default());
                }
                default
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path, message },
            other => other,
        })?;
        Ok(config)
    }

    /// Parses and validates a TOML document.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            // toml's messages span several lines with a source excerpt; keep them on one.
            message: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (name, p) in [
            ("root_dir", &self.root_dir),
            ("state_dir", &self.state_dir),
            ("grpc.socket", &self.grpc.socket),
            ("cni.conf_dir", &self.cni.conf_dir),
            ("registry.config_path", &self.registry.config_path),
        ] {
            if !p.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be an absolute path, got {:?}",
                    p.display().to_string()
                )));
            }
        }
        if self.grpc.socket_mode > 0o777 {
            return Err(ConfigError::Invalid(format!(
                "grpc.socket_mode {:o} is not a permission mode (0 to 0o777)",
                self.grpc.socket_mode
            )));
        }
        self.validate_registry()?;
        subnet::Subnet::parse(&self.cni.builtin_subnet)
            .map_err(|e| ConfigError::Invalid(format!("cni.builtin_subnet: {e}")))?;
        let bridge = &self.cni.builtin_bridge;
        if bridge.is_empty()
            || bridge.len() > 15
            || bridge.contains(['/', ' ', '\0', ':'])
            || bridge == "."
            || bridge == ".."
        {
            return Err(ConfigError::Invalid(format!(
                "cni.builtin_bridge {bridge:?} is not a network interface name (1 to 15 characters, no '/', ':' or spaces)"
            )));
        }
        self.stream.socket_addr()?;
        self.metrics.socket_addr()?;
        for (name, h) in &self.runtime_handlers {
            validate_handler(name, h)?;
        }
        for dir in &self.cdi.spec_dirs {
            if !dir.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "cdi.spec_dirs: {:?} must be an absolute path",
                    dir.display().to_string()
                )));
            }
        }
        if self.log.level.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "log.level must not be empty".to_owned(),
            ));
        }
        Ok(())
    }

    /// The default configuration as an annotated TOML document (`berthd config default`).
    pub fn default_toml() -> String {
        let d = Self::default();
        // The items of a TOML array of paths.
        let toml_paths = |paths: &[PathBuf]| {
            paths
                .iter()
                .map(|p| format!("{:?}", p.display().to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let plugin_dirs = toml_paths(&d.cni.plugin_dirs);
        let cdi_dirs = toml_paths(&d.cdi.spec_dirs);
        format!(
            r#"# berthd configuration. Every key is optional; shown here with its default.

# Durable state: images, content, snapshots, pod and container records.
root_dir = "{root}"
# Volatile state (tmpfs): pinned namespaces, monitor state.
state_dir = "{state}"
# Cgroup driver kubelet must use with this runtime: "cgroupfs" or "systemd".
cgroup_driver = "cgroupfs"
# cgroup v2: run containers whose device rules (an eBPF program) cannot be loaded,
# without them, instead of failing them (each such container can then open any
# device node it can reach). Logged loudly.
allow_degraded_device_filter = false

[grpc]
# Unix socket serving runtime.v1 RuntimeService and ImageService.
socket = "{socket}"
# Permission bits of the socket.
socket_mode = 0o{mode:o}

[log]
# tracing filter: "info", "debug", "berth_server=debug,info", ...
level = "{level}"
# "text" or "json".
format = "text"

[cni]
# The first .conflist/.conf/.json file here (in lexical order) is the pod network.
conf_dir = "{conf_dir}"
# Plugin binaries are looked up in these directories, in order.
plugin_dirs = [{plugin_dirs}]
# With no config in conf_dir, use a built-in bridge network (bridge, host-local, portmap).
builtin_default = {builtin}
# How the built-in network is set up: "native" (berthd configures the bridge, veth
# pairs, addresses and routes itself over netlink; only hostPort pods exec the portmap
# plugin) or "plugins" (exec the bridge, host-local and portmap plugins).
builtin_mode = "native"
# The built-in network's bridge device (created if missing).
builtin_bridge = "{builtin_bridge}"
# The built-in network's IPv4 pod subnet; its first host is the bridge's address. A pod
# CIDR set by kubelet (UpdateRuntimeConfig) takes precedence.
builtin_subnet = "{builtin_subnet}"

[registry]
# containerd-style certs.d: <registry host>/hosts.toml with mirrors, plain-HTTP or
# insecure endpoints, CAs and headers. Loopback registries need no configuration.
config_path = "{registry}"
# A layer download that receives no data for this many seconds is abandoned.
stall_timeout_secs = {stall}
# A layer download must average at least this many bytes/s over each
# stall_timeout_secs window (0 turns the check off).
min_layer_rate_bytes_per_sec = {min_rate}
# Connecting (TCP and TLS) to a registry.
connect_timeout_secs = {connect}
# From a request sent to its response headers.
header_timeout_secs = {header}
# Whole small requests (token, manifest, index, config), body included.
request_timeout_secs = {request}
# Largest manifest or index, and largest image config, accepted (bytes).
max_manifest_bytes = {max_manifest}
max_config_bytes = {max_config}
# Layers downloaded at the same time by one pull.
max_concurrent_downloads = {downloads}

[image]
# Largest uncompressed size (bytes) and most entries of one image layer.
max_layer_unpacked_bytes = {max_unpacked}
max_layer_entries = {max_entries}
# Images kubelet's image GC must never remove (reported `pinned`; RemoveImage of
# one fails with FailedPrecondition): references or image ids.
pinned_images = {pinned}

[stream]
# Address of the streaming server behind Exec, Attach and PortForward (HTTP:
# SPDY/3.1 and WebSocket upgrades).
address = "{stream_addr}"
# Its TCP port; 0 picks a free port at start-up.
port = {stream_port}

[metrics]
# IP:port of the Prometheus endpoint (GET /metrics, plain HTTP, no authentication).
# Empty turns it off. Keep it on loopback, e.g. "127.0.0.1:9338", unless the
# network in front of it is trusted.
address = "{metrics_addr}"

[cdi]
# Directories of CDI device spec files (*.json, *.yaml) for CRI CDI_devices and
# cdi.k8s.io/* annotations; a device in a later directory overrides an earlier one's.
spec_dirs = [{cdi_dirs}]

# OCI runtimes a pod can pick by runtime handler (a Kubernetes RuntimeClass's
# `handler`), besides the native one ("" or "berth"). None by default. Example:
# [runtime_handlers.runc]
# runtime_path = "/usr/sbin/runc"
# # Its --root state directory; default <state_dir>/oci/<name>.
# runtime_root = "/run/berth/oci/runc"
"#,
            root = d.root_dir.display(),
            state = d.state_dir.display(),
            socket = d.grpc.socket.display(),
            mode = d.grpc.socket_mode,
            level = d.log.level,
            conf_dir = d.cni.conf_dir.display(),
            builtin = d.cni.builtin_default,
            builtin_bridge = d.cni.builtin_bridge,
            builtin_subnet = d.cni.builtin_subnet,
            registry = d.registry.config_path.display(),
            stall = d.registry.stall_timeout_secs,
            min_rate = d.registry.min_layer_rate_bytes_per_sec,
            connect = d.registry.connect_timeout_secs,
            header = d.registry.header_timeout_secs,
            request = d.registry.request_timeout_secs,
            max_manifest = d.registry.max_manifest_bytes,
            max_config = d.registry.max_config_bytes,
            downloads = d.registry.max_concurrent_downloads,
            max_unpacked = d.image.max_layer_unpacked_bytes,
            max_entries = d.image.max_layer_entries,
            pinned = toml::Value::from(d.image.pinned_images.clone()),
            stream_addr = d.stream.address,
            stream_port = d.stream.port,
            metrics_addr = d.metrics.address,
            cdi_dirs = cdi_dirs,
        )
    }

    /// The `--root` of the OCI runtime of handler `name` (configured or derived).
    pub fn runtime_handler_root(&self, name: &str) -> Option<PathBuf> {
        let h = self.runtime_handlers.get(name)?;
        Some(
            h.runtime_root
                .clone()
                .unwrap_or_else(|| self.state_dir.join("oci").join(name)),
        )
    }

    /// Directory of the image store (content, snapshots); what `ImageFsInfo` reports on.
    pub fn image_store_dir(&self) -> PathBuf {
        self.root_dir.join("images")
    }
}

/// Names the native handler answers to; an OCI handler may not take them.
pub const NATIVE_HANDLER_NAMES: [&str; 2] = ["", "berth"];

fn validate_handler(name: &str, h: &RuntimeHandlerConfig) -> Result<(), ConfigError> {
    if NATIVE_HANDLER_NAMES.contains(&name) {
        return Err(ConfigError::Invalid(format!(
            "runtime_handlers.{name}: {name:?} is the native handler's name"
        )));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ConfigError::Invalid(format!(
            "runtime_handlers: handler name {name:?} may only hold letters, digits, '-', '_' and '.'"
        )));
    }
    if !h.runtime_path.is_absolute() {
        return Err(ConfigError::Invalid(format!(
            "runtime_handlers.{name}.runtime_path must be an absolute path, got {:?}",
            h.runtime_path.display().to_string()
        )));
    }
    if let Some(root) = &h.runtime_root
        && !root.is_absolute()
    {
        return Err(ConfigError::Invalid(format!(
            "runtime_handlers.{name}.runtime_root must be an absolute path, got {:?}",
            root.display().to_string()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_handlers_parse_and_validate() {
        let c = Config::parse(
            "[runtime_handlers.runc]\nruntime_path = \"/usr/sbin/runc\"\n\
             [runtime_handlers.crun]\nruntime_path = \"/usr/bin/crun\"\nruntime_root = \"/run/x\"\n",
        )
        .expect("parses");
        assert_eq!(
            c.runtime_handler_root("runc"),
            Some(PathBuf::from("/run/berth/oci/runc"))
        );
        assert_eq!(
            c.runtime_handler_root("crun"),
            Some(PathBuf::from("/run/x"))
        );
        assert_eq!(c.runtime_handler_root("kata"), None);
        let e = Config::parse("[runtime_handlers.runc]\nruntime_path = \"runc\"\n")
            .expect_err("relative");
        assert!(
            e.to_string().contains("runtime_handlers.runc.runtime_path"),
            "{e}"
        );
        let e = Config::parse("[runtime_handlers.berth]\nruntime_path = \"/x\"\n")
            .expect_err("native name");
        assert!(e.to_string().contains("native"), "{e}");
        let e = Config::parse("[runtime_handlers.runc]\nruntime_pth = \"/x\"\n").expect_err("typo");
        assert!(e.to_string().contains("runtime_pth"), "{e}");
    }

    #[test]
    fn default_toml_round_trips_to_defaults() {
        let parsed = Config::parse(&Config::default_toml()).expect("default config parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(Config::parse("").expect("parses"), Config::default());
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = Config::parse("root_dri = \"/x\"\n").expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("root_dri"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn unknown_nested_key_is_rejected() {
        let err = Config::parse("[grpc]\nsockett = \"/x\"\n").expect_err("must fail");
        assert!(err.to_string().contains("sockett"), "{err}");
    }

    #[test]
    fn relative_paths_are_rejected() {
        let err = Config::parse("state_dir = \"run/berth\"\n").expect_err("must fail");
        assert!(err.to_string().contains("state_dir"), "{err}");
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c = Config::parse("[grpc]\nsocket = \"/tmp/b.sock\"\n").expect("parses");
        assert_eq!(c.grpc.socket, PathBuf::from("/tmp/b.sock"));
        assert_eq!(c.grpc.socket_mode, 0o660);
        assert_eq!(c.root_dir, PathBuf::from("/var/lib/berth"));
    }

    #[test]
    fn cgroup_driver_values() {
        let c = Config::parse("cgroup_driver = \"systemd\"\n").expect("parses");
        assert_eq!(c.cgroup_driver, CgroupDriver::Systemd);
        assert!(Config::parse("cgroup_driver = \"cgroupv1\"\n").is_err());
    }

    #[test]
    fn registry_section_and_zero_timeouts() {
        let c = Config::parse("[registry]\nconfig_path = \"/etc/containerd/certs.d\"\n")
            .expect("parses");
        assert_eq!(
            c.registry.config_path,
            PathBuf::from("/etc/containerd/certs.d")
        );
        assert_eq!(c.registry.stall_timeout_secs, 60);
        let e = Config::parse("[registry]\nstall_timeout_secs = 0\n").expect_err("zero");
        assert!(e.to_string().contains("stall_timeout_secs"), "{e}");
        for key in [
            "request_timeout_secs",
            "header_timeout_secs",
            "connect_timeout_secs",
            "max_manifest_bytes",
        ] {
            let e = Config::parse(&format!("[registry]\n{key} = 0\n")).expect_err("zero");
            assert!(e.to_string().contains(key), "{e}");
        }
        let c = Config::parse(
            "[registry]\nrequest_timeout_secs = 7\n[image]\nmax_layer_entries = 10\n",
        )
        .expect("parses");
        let o = c.store_options();
        assert_eq!(o.request_timeout, std::time::Duration::from_secs(7));
        assert_eq!(o.unpack.max_entries, 10);
        let e = Config::parse("[image]\nmax_layer_entries = 0\n").expect_err("zero");
        assert!(e.to_string().contains("image.max_layer_entries"), "{e}");
        assert_eq!(
            Config::default().store_options().pinned,
            [DEFAULT_PINNED_IMAGE]
        );
        let c = Config::parse("[image]\npinned_images = [\"busybox:1.36\"]\n").expect("parses");
        assert_eq!(c.store_options().pinned, ["busybox:1.36"]);
        let e = Config::parse("[image]\npinned_images = [\"ok:1\", \"Bad Name\"]\n")
            .expect_err("bad reference");
        assert!(e.to_string().contains("image.pinned_images[1]"), "{e}");
    }

    #[test]
    fn stream_section_and_bad_address() {
        let c = Config::parse("[stream]\naddress = \"0.0.0.0\"\nport = 10010\n").expect("parses");
        assert_eq!(
            c.stream.socket_addr().expect("addr"),
            std::net::SocketAddr::from(([0, 0, 0, 0], 10010))
        );
        let e = Config::parse("[stream]\naddress = \"localhost\"\n").expect_err("not an IP");
        assert!(e.to_string().contains("stream.address"), "{e}");
    }

    #[test]
    fn metrics_address_is_off_by_default_and_checked() {
        assert_eq!(Config::default().metrics.socket_addr().expect("ok"), None);
        let c = Config::parse("[metrics]\naddress = \"127.0.0.1:9338\"\n").expect("parses");
        assert_eq!(
            c.metrics.socket_addr().expect("addr"),
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9338)))
        );
        let e = Config::parse("[metrics]\naddress = \"localhost:9338\"\n").expect_err("no IP");
        assert!(e.to_string().contains("metrics.address"), "{e}");
        let e = Config::parse("[metrics]\naddress = \"127.0.0.1\"\n").expect_err("no port");
        assert!(e.to_string().contains("metrics.address"), "{e}");
    }

    #[test]
    fn missing_file_is_a_read_error_naming_it() {
        let err = Config::load(Some(Path::new("/nonexistent/berth.toml"))).expect_err("must fail");
        assert!(err.to_string().contains("/nonexistent/berth.toml"), "{err}");
    }
}
