//! CDI, the Container Device Interface: the devices a container asks for by fully
//! qualified name (`vendor.com/class=name`, in CRI `ContainerConfig.CDI_devices` or a
//! `cdi.k8s.io/*` annotation of the container or its pod) are looked up in the CDI spec
//! files (JSON or YAML) of the configured directories, and their container edits
//! (device nodes, mounts, environment, hooks, additional groups) are applied to the OCI
//! spec berthd builds.
//!
//! Every requested device is found or the container is refused with InvalidArgument
//! naming it (and the spec files that could not be read): a GPU pod never starts
//! without its GPU. The spec files are root's configuration, but they are still read
//! bounded (size, count) and strictly (an unknown field is an error, not an edit
//! silently skipped). They are read afresh for each container that asks for a CDI
//! device: DRA drivers write `/var/run/cdi` at any time, and a container that asks for
//! none pays nothing.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use berth_proto::v1::ContainerConfig;
use oci_spec::runtime::{self as oci, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, Mount};
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::error::{Error, Result};
use crate::error::Plain;

/// Annotations whose value lists CDI devices (comma-separated qualified names).
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";
/// Largest spec file read (NVIDIA's for 8 GPUs are well under 1 MiB).
const MAX_SPEC_BYTES: u64 = 4 << 20;
/// Most spec files looked at per directory.
const MAX_SPEC_FILES: usize = 1024;
/// CDI spec versions understood (0.1.0 and 0.2.0 used another layout and fail to parse
/// with a message naming the unknown field).
const VERSIONS: [&str; 10] = [
    "0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
];
/// OCI hook names a CDI hook may use.
const HOOK_NAMES: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];
/// Options a CDI bind mount may carry (what runtime-core applies to a bind).
const MOUNT_OPTIONS: [&str; 18] = [
    "ro",
    "rw",
    "bind",
    "rbind",
    "nosuid",
    "nodev",
    "noexec",
    "private",
    "rprivate",
    "slave",
    "rslave",
    "relatime",
    "norelatime",
    "noatime",
    "strictatime",
    "nodiratime",
    "rro",
    "defaults",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    cdi_version: String,
    kind: String,
    #[serde(default)]
    #[allow(dead_code)]
    annotations: Option<HashMap<String, String>>,
    devices: Vec<Device>,
    #[serde(default)]
    container_edits: Option<Edits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Device {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    annotations: Option<HashMap<String, String>>,
    #[serde(default)]
    container_edits: Option<Edits>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Edits {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    device_nodes: Option<Vec<DeviceNode>>,
    #[serde(default)]
    hooks: Option<Vec<Hook>>,
    #[serde(default)]
    mounts: Option<Vec<MountEdit>>,
    #[serde(default)]
    intel_rdt: Option<IgnoredAny>,
    #[serde(default)]
    net_devices: Option<IgnoredAny>,
    #[serde(default, rename = "additionalGids")]
    additional_gids: Option<Vec<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DeviceNode {
    path: String,
    #[serde(default)]
    host_path: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    major: Option<i64>,
    #[serde(default)]
    minor: Option<i64>,
    #[serde(default)]
    file_mode: Option<u32>,
    #[serde(default)]
    permissions: Option<String>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    gid: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MountEdit {
    host_path: String,
    container_path: String,
    #[serde(default)]
    options: Option<Vec<String>>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Hook {
    hook_name: String,
    path: String,
    #[serde(default)]
    args: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    timeout: Option<i64>,
}

/// What the requested CDI devices add to a container's OCI spec, already checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Injection {
    env: Vec<String>,
    devices: Vec<Node>,
    mounts: Vec<Mount>,
    hooks: Vec<(String, oci::Hook)>,
    additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
struct Node {
    path: String,
    /// The host node it stands for, when not at `path` on the host too.
    host_path: Option<String>,
    kind: LinuxDeviceType,
    major: i64,
    minor: i64,
    file_mode: u32,
    uid: u32,
    gid: u32,
    access: String,
}

/// The fully qualified CDI device names a container asks for: its `CDI_devices`, then
/// the `cdi.k8s.io/*` annotations of the container and of its pod, without repeats.
pub fn requested_devices(
    config: &ContainerConfig,
    pod_annotations: &HashMap<String, String>,
) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |name: &str, from: &str| -> Result<()> {
        check_qualified_name(name).map_err(|why| {
            Error::invalid_argument(format!("{from}: {name:?} is not a CDI device name: {why}"))
        })?;
        if !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
        Ok(())
    };
    for d in &config.cdi_devices {
        add(&d.name, "CDI_devices")?;
    }
    for (whose, annotations) in [("container", &config.annotations), ("pod", pod_annotations)] {
        let mut keys: Vec<&String> = annotations
            .keys()
            .filter(|k| k.starts_with(ANNOTATION_PREFIX))
            .collect();
        keys.sort();
        for key in keys {
            for name in annotations[key].split(',') {
                add(name.trim(), &format!("{whose} annotation {key}"))?;
            }
        }
    }
    Ok(out)
}

/// `vendor.com/class=name`: vendor and class as CDI allows them in a spec's `kind`,
/// and a device name of letters, digits, `_`, `-`, `.` and `:`.
fn check_qualified_name(name: &str) -> std::result::Result<(), String> {
    let (kind, device) = name
        .split_once('=')
        .ok_or("expected vendor.com/class=name")?;
    check_kind(kind)?;
    check_device_name(device)
}

fn check_kind(kind: &str) -> std::result::Result<(), String> {
    let (vendor, class) = kind
        .split_once('/')
        .ok_or_else(|| format!("kind {kind:?} is not vendor.com/class"))?;
    let alnum_ends = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    if !alnum_ends(vendor)
        || !vendor
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!("vendor {vendor:?} is not a domain-like name"));
    }
    if !alnum_ends(class)
        || !class
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!(
            "class {class:?} may only hold letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

fn check_device_name(name: &str) -> std::result::Result<(), String> {
    let ok_ends = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok_ends
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(format!(
            "device name {name:?} may only hold letters, digits, '.', '-', '_' and ':' and must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// One spec file that was read and parsed.
struct Loaded {
    path: PathBuf,
    dir_index: usize,
    spec: Spec,
}

/// Looks the `names` up in the spec files of `dirs` and turns their edits into an
/// [`Injection`]. An unknown device, a device two files of one directory both define,
/// or an edit berthd cannot apply is InvalidArgument naming the device and the file.
pub fn resolve(dirs: &[PathBuf], names: &[String]) -> Result<Injection> {
    if names.is_empty() {
        return Ok(Injection::default());
    }
    let (loaded, broken) = load_specs(dirs);
    // name -> (index into loaded, device index); conflicts within one directory.
    let mut index: HashMap<String, (usize, usize)> = HashMap::new();
    let mut conflicts: HashMap<String, (PathBuf, PathBuf)> = HashMap::new();
    for (i, l) in loaded.iter().enumerate() {
        for (j, d) in l.spec.devices.iter().enumerate() {
            let qualified = format!("{}={}", l.spec.kind, d.name);
            if let Some(&(pi, _)) = index.get(&qualified)
                && loaded[pi].dir_index == l.dir_index
            {
                conflicts.insert(qualified.clone(), (loaded[pi].path.clone(), l.path.clone()));
            } else {
                // A later directory overrides an earlier one.
                conflicts.remove(&qualified);
            }
            index.insert(qualified, (i, j));
        }
    }
    let mut out = Injection::default();
    let mut specs_used: Vec<usize> = Vec::new();
    for name in names {
        if let Some((a, b)) = conflicts.get(name) {
            return Err(Error::invalid_argument(format!(
                "CDI device {name:?} is defined by both {} and {}; remove one",
                a.display(),
                b.display()
            )));
        }
        let Some(&(i, j)) = index.get(name) else {
            let mut msg = format!(
                "unknown CDI device {name:?}: no CDI spec file in {} defines it",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if !broken.is_empty() {
                msg.push_str("; these spec files could not be used: ");
                msg.push_str(&broken.join("; "));
            }
            return Err(Error::invalid_argument(msg));
        };
        let l = &loaded[i];
        if let Some(edits) = &l.spec.devices[j].container_edits {
            out.add(edits, name, &l.path)?;
        }
        if !specs_used.contains(&i) {
            specs_used.push(i);
        }
    }
    for i in specs_used {
        let l = &loaded[i];
        if let Some(edits) = &l.spec.container_edits {
            out.add(
                edits,
                &format!("{} (spec-wide edits)", l.spec.kind),
                &l.path,
            )?;
        }
    }
    Ok(out)
}

/// Every spec file of `dirs`, and a line for each one that could not be used.
fn load_specs(dirs: &[PathBuf]) -> (Vec<Loaded>, Vec<String>) {
    let mut loaded = Vec::new();
    let mut broken = Vec::new();
    for (dir_index, dir) in dirs.iter().enumerate() {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                broken.push(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("json" | "yaml" | "yml")
                )
            })
            .take(MAX_SPEC_FILES + 1)
            .collect();
        if paths.len() > MAX_SPEC_FILES {
            broken.push(format!(
                "{}: more than {MAX_SPEC_FILES} spec files; only the first {MAX_SPEC_FILES} are read",
                dir.display()
            ));
            paths.truncate(MAX_SPEC_FILES);
        }
        paths.sort();
        for path in paths {
            match load_spec(&path) {
                Ok(spec) => loaded.push(Loaded {
                    path,
                    dir_index,
                    spec,
                }),
                Err(why) => broken.push(format!("{}: {why}", path.display())),
            }
        }
    }
    (loaded, broken)
}

/// Reads and checks one spec file: a regular file, not larger than the cap, owned by
/// root and writable only by it when berthd runs as root (its hooks run as root).
fn load_spec(path: &Path) -> std::result::Result<Spec, String> {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_SPEC_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_SPEC_BYTES} a CDI spec may have",
            meta.len()
        ));
    }
    if rustix::process::geteuid().is_root() && (meta.uid() != 0 || meta.mode() & 0o022 != 0) {
        return Err(format!(
            "owned by uid {} with mode {:o}: a CDI spec must be root's and writable only by root",
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    let mut text = Vec::new();
    file.take(MAX_SPEC_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_SPEC_BYTES {
        return Err(format!("larger than {MAX_SPEC_BYTES} bytes"));
    }
    let spec: Spec = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_slice(&text).map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        serde_saphyr::from_slice(&text).map_err(|e| format!("invalid YAML: {e}"))?
    };
    if !VERSIONS.contains(&spec.cdi_version.trim_start_matches('v')) {
        return Err(format!(
            "cdiVersion {:?} is not one berthd knows ({})",
            spec.cdi_version,
            VERSIONS.join(", ")
        ));
    }
    check_kind(&spec.kind)?;
    let mut names = BTreeSet::new();
    for d in &spec.devices {
        check_device_name(&d.name)?;
        if !names.insert(d.name.as_str()) {
            return Err(format!("device {:?} is listed twice", d.name));
        }
    }
    Ok(spec)
}

impl Injection {
    /// True when there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Checks `edits` (of `device`, from `file`) and adds them.
    fn add(&mut self, edits: &Edits, device: &str, file: &Path) -> Result<()> {
        let bad = |what: String| {
            Error::invalid_argument(format!(
                "CDI device {device:?} (spec file {}): {what}",
                file.display()
            ))
        };
        if edits.intel_rdt.is_some() {
            return Err(bad("intelRdt edits are not supported by berthd".into()));
        }
        if edits.net_devices.is_some() {
            return Err(bad("netDevices edits are not supported by berthd".into()));
        }
        for e in edits.env.iter().flatten() {
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() => self.env.push(e.clone()),
                _ => return Err(bad(format!("env {e:?} is not KEY=VALUE"))),
            }
        }
        for n in edits.device_nodes.iter().flatten() {
            self.devices.push(device_node(n).map_err(&bad)?);
        }
        let mut mounts = Vec::new();
        for m in edits.mounts.iter().flatten() {
            mounts.push(mount(m).map_err(&bad)?);
        }
        // Parents before children (CDI sorts mounts by depth).
        mounts.sort_by_key(|m| m.destination().components().count());
        self.mounts.extend(mounts);
        for h in edits.hooks.iter().flatten() {
            if !HOOK_NAMES.contains(&h.hook_name.as_str()) {
                return Err(bad(format!(
                    "hook name {:?} is not one of {}",
                    h.hook_name,
                    HOOK_NAMES.join(", ")
                )));
            }
            if !h.path.starts_with('/') {
                return Err(bad(format!("hook path {:?} is not absolute", h.path)));
            }
            if let Some(t) = h.timeout
                && t <= 0
            {
                return Err(bad(format!("hook timeout {t} must be positive")));
            }
            let mut hook = oci::Hook::default();
            hook.set_path(PathBuf::from(&h.path));
            hook.set_args(h.args.clone());
            hook.set_env(h.env.clone());
            hook.set_timeout(h.timeout);
            self.hooks.push((h.hook_name.clone(), hook));
        }
        for g in edits.additional_gids.iter().flatten() {
            if *g != 0 && !self.additional_gids.contains(g) {
                self.additional_gids.push(*g);
            }
        }
        Ok(())
    }

    /// A device node whose host node is at another path. In a pod with its own user
    /// namespace device nodes cannot be made (mknod), runtime-core binds the host's
    /// node at the container's path instead: such a node would be the wrong one.
    pub fn remapped_device_node(&self) -> Option<(&str, &str)> {
        self.devices
            .iter()
            .find_map(|d| d.host_path.as_deref().map(|h| (d.path.as_str(), h)))
    }

    /// Applies the edits to an OCI spec built by `spec::build`.
    pub fn apply(&self, spec: &mut oci::Spec) {
        if self.is_empty() {
            return;
        }
        if let Some(process) = spec.process_mut() {
            if let Some(env) = process.env_mut() {
                let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_owned();
                for e in &self.env {
                    let k = key(e);
                    env.retain(|v| key(v) != k);
                    env.push(e.clone());
                }
            }
            if let Some(gids) = process.user_mut().additional_gids_mut() {
                for g in &self.additional_gids {
                    if !gids.contains(g) {
                        gids.push(*g);
                    }
                }
            }
        }
        let linux = spec.linux_mut().get_or_insert_with(empty_linux);
        let devices = linux.devices_mut().get_or_insert_with(Vec::new);
        for d in &self.devices {
            devices.retain(|v| v.path() != Path::new(&d.path));
            let mut node = LinuxDevice::default();
            node.set_path(PathBuf::from(&d.path));
            node.set_typ(d.kind);
            // A FIFO has no numbers: 0, as a runtime reads them (the spec's type
            // cannot leave them out).
            node.set_major(d.major);
            node.set_minor(d.minor);
            node.set_file_mode(Some(d.file_mode));
            node.set_uid(Some(d.uid));
            node.set_gid(Some(d.gid));
            devices.push(node);
        }
        let rules = linux
            .resources_mut()
            .get_or_insert_with(Default::default)
            .devices_mut()
            .get_or_insert_with(Vec::new);
        for d in self.devices.iter().filter(|d| d.kind != LinuxDeviceType::P) {
            let mut rule = LinuxDeviceCgroup::default();
            rule.set_allow(true);
            rule.set_typ(Some(d.kind));
            rule.set_major(Some(d.major));
            rule.set_minor(Some(d.minor));
            rule.set_access(Some(d.access.clone()));
            rules.push(rule);
        }
        spec.mounts_mut()
            .get_or_insert_with(Vec::new)
            .extend(self.mounts.iter().cloned());
        if self.hooks.is_empty() {
            return;
        }
        let hooks = spec.hooks_mut().get_or_insert_with(oci::Hooks::default);
        for (name, hook) in &self.hooks {
            #[allow(deprecated, reason = "CDI specs may still ask for prestart hooks")]
            let list = match name.as_str() {
                "prestart" => hooks.prestart_mut(),
                "createRuntime" => hooks.create_runtime_mut(),
                "createContainer" => hooks.create_container_mut(),
                "startContainer" => hooks.start_container_mut(),
                "poststart" => hooks.poststart_mut(),
                "poststop" => hooks.poststop_mut(),
                // `add` took only HOOK_NAMES.
                _ => continue,
            };
            list.get_or_insert_with(Vec::new).push(hook.clone());
        }
    }
}

/// A `linux` section with nothing in it (`Linux::default()` is a sample container's).
fn empty_linux() -> oci::Linux {
    let mut linux = oci::Linux::default();
    linux.set_resources(None);
    linux.set_namespaces(None);
    linux.set_masked_paths(None);
    linux.set_readonly_paths(None);
    linux
}

fn device_node(n: &DeviceNode) -> std::result::Result<Node, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let path = Path::new(&n.path);
    let clean = clean_path(&n.path);
    if !path.is_absolute() || !clean.starts_with("/dev/") {
        return Err(format!(
            "device node path {:?} must be an absolute path under /dev",
            n.path
        ));
    }
    let host = n.host_path.as_deref().unwrap_or(&n.path);
    if !host.starts_with('/') {
        return Err(format!("device node hostPath {host:?} is not absolute"));
    }
    let mut kind = match n.kind.as_deref() {
        None | Some("") => None,
        Some("c" | "u") => Some("c"),
        Some("b") => Some("b"),
        Some("p") => Some("p"),
        Some(other) => {
            return Err(format!(
                "device node {:?}: type {other:?} is not c, u, b or p",
                n.path
            ));
        }
    };
    let (mut major, mut minor) = (n.major, n.minor);
    let mut file_mode = n.file_mode;
    if kind.is_none() || (kind != Some("p") && (major.is_none() || minor.is_none())) {
        let meta = std::fs::metadata(host)
            .map_err(|e| format!("device node {:?}: host path {host:?}: {e}", n.path))?;
        let ft = meta.file_type();
        let found = if ft.is_char_device() {
            "c"
        } else if ft.is_block_device() {
            "b"
        } else if ft.is_fifo() {
            "p"
        } else {
            return Err(format!(
                "device node {:?}: host path {host:?} is not a device",
                n.path
            ));
        };
        if kind.is_some_and(|k| k != found) {
            return Err(format!(
                "device node {:?}: type {:?} but host path {host:?} is type {found}",
                n.path,
                kind.unwrap_or_default()
            ));
        }
        kind = Some(found);
        let rdev = meta.rdev();
        major = major.or(Some(i64::from(libc::major(rdev))));
        minor = minor.or(Some(i64::from(libc::minor(rdev))));
        file_mode = file_mode.or(Some(meta.mode() & 0o777));
    }
    let kind = match kind {
        Some("b") => LinuxDeviceType::B,
        Some("p") => LinuxDeviceType::P,
        _ => LinuxDeviceType::C,
    };
    let access = n.permissions.clone().unwrap_or_else(|| "rwm".into());
    if access.is_empty() || !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(format!(
            "device node {:?}: permissions {access:?} must be letters of \"rwm\"",
            n.path
        ));
    }
    let (major, minor) = (major.unwrap_or(0), minor.unwrap_or(0));
    if major < 0 || minor < 0 {
        return Err(format!("device node {:?}: negative major or minor", n.path));
    }
    let host_path = (clean_path(host) != clean).then(|| host.to_owned());
    Ok(Node {
        path: clean,
        host_path,
        kind,
        major,
        minor,
        file_mode: file_mode.unwrap_or(0o666) & 0o7777,
        uid: n.uid.unwrap_or(0),
        gid: n.gid.unwrap_or(0),
        access,
    })
}

fn mount(m: &MountEdit) -> std::result::Result<Mount, String> {
    match m.kind.as_deref() {
        None | Some("" | "bind") => {}
        Some(other) => {
            return Err(format!(
                "mount {:?}: type {other:?} is not supported (only bind mounts)",
                m.container_path
            ));
        }
    }
    if !m.container_path.starts_with('/') {
        return Err(format!(
            "mount containerPath {:?} must be absolute",
            m.container_path
        ));
    }
    let destination = clean_path(&m.container_path);
    berth_runtime_core::rootfs::check_proc_mount(
        Path::new(&destination),
        "bind",
        Some(Path::new(&m.host_path)),
    )
    .map_err(|e| format!("mount {:?}: {e}", m.container_path))?;
    if !m.host_path.starts_with('/') {
        return Err(format!("mount hostPath {:?} must be absolute", m.host_path));
    }
    // Symlinks of the host path resolve on the host, as for any volume; the
    // destination is resolved inside the rootfs by runtime-core.
    let source = std::fs::canonicalize(&m.host_path)
        .map_err(|e| format!("mount hostPath {:?}: {e}", m.host_path))?;
    let mut options: Vec<String> = Vec::new();
    for o in m.options.iter().flatten() {
        if !MOUNT_OPTIONS.contains(&o.as_str()) {
            return Err(format!(
                "mount {:?}: option {o:?} is not supported for a bind mount",
                m.container_path
            ));
        }
        if !options.contains(o) {
            options.push(o.clone());
        }
    }
    if !options.iter().any(|o| o == "bind" || o == "rbind") {
        options.insert(0, "rbind".into());
    }
    if !options
        .iter()
        .any(|o| matches!(o.as_str(), "private" | "rprivate" | "slave" | "rslave"))
    {
        options.push("rprivate".into());
    }
    let mut mount = Mount::default();
    mount.set_destination(PathBuf::from(destination));
    mount.set_typ(Some("bind".into()));
    mount.set_source(Some(source));
    mount.set_options(Some(options));
    Ok(mount)
}

/// `p` with `.`, `..` and repeated slashes resolved lexically (never above `/`).
fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::v1::CdiDevice;
    use serde_json::{Value, json};

    /// Applies `inj` to the spec `json` stands for, and gives back its JSON.
    fn applied(inj: &Injection, json: Value) -> Value {
        let mut spec: oci::Spec = serde_json::from_value(json).expect("a spec");
        inj.apply(&mut spec);
        serde_json::to_value(spec).expect("serialises")
    }

    fn dirs(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
        let t = tempfile::tempdir().expect("tempdir");
        let d: Vec<PathBuf> = (0..n).map(|i| t.path().join(format!("d{i}"))).collect();
        for dir in &d {
            std::fs::create_dir(dir).expect("mkdir");
        }
        (t, d)
    }

    const YAML: &str = r#"
cdiVersion: "0.6.0"
kind: vendor.example/gpu
devices:
  - name: "0"
    containerEdits:
      env: ["GPU=0"]
      deviceNodes:
        - path: /dev/gpu0
          hostPath: /dev/null
containerEdits:
  env: ["VENDOR=1"]
  additionalGids: [44]
"#;

    #[test]
    fn yaml_and_json_specs_resolve_to_edits_on_the_oci_spec() {
        let (_t, d) = dirs(1);
        std::fs::write(d[0].join("gpu.yaml"), YAML).expect("write");
        std::fs::write(
            d[0].join("net.json"),
            r#"{"cdiVersion":"1.1.0","kind":"vendor.example/nic","devices":[{"name":"a","containerEdits":{"env":["GPU=override"]}}]}"#,
        )
        .expect("write");
        let inj = resolve(
            &d,
            &["vendor.example/gpu=0".into(), "vendor.example/nic=a".into()],
        )
        .expect("resolves");
        assert_eq!(
            inj.remapped_device_node(),
            Some(("/dev/gpu0", "/dev/null")),
            "a user-namespaced pod must refuse it"
        );
        let spec = applied(
            &inj,
            json!({
                "process": {"env": ["PATH=/bin", "GPU=old"], "user": {"uid": 0, "gid": 0, "additionalGids": []}, "cwd": "/"},
                "mounts": [],
                "linux": {"devices": [], "resources": {"devices": [{"allow": false, "access": "rwm"}]}},
            }),
        );
        assert_eq!(
            spec["process"]["env"],
            json!(["PATH=/bin", "GPU=override", "VENDOR=1"]),
            "device edits in order, then the spec-wide ones; a key set twice keeps the last"
        );
        assert_eq!(spec["process"]["user"]["additionalGids"], json!([44]));
        assert_eq!(
            spec["linux"]["devices"],
            json!([{"path": "/dev/gpu0", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666, "uid": 0, "gid": 0}]),
            "type and numbers come from the host path"
        );
        assert_eq!(
            spec["linux"]["resources"]["devices"][1],
            json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"})
        );
    }

    #[test]
    fn unknown_conflicting_and_broken_specs_are_named() {
        let (_t, d) = dirs(2);
        std::fs::write(d[0].join("a.yaml"), YAML).expect("write");
        std::fs::write(d[0].join("b.yaml"), YAML).expect("write");
        std::fs::write(d[0].join("bad.json"), "{").expect("write");
        std::fs::write(
            d[0].join("typo.yaml"),
            YAML.replace("deviceNodes", "deviceNode"),
        )
        .expect("write");
        let e = resolve(&d, &["vendor.example/gpu=0".into()]).expect_err("conflict");
        assert!(
            matches!(e, Error::Host(crate::error::Error::InvalidArgument(_))),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("vendor.example/gpu=0")
                && msg.contains("a.yaml")
                && msg.contains("b.yaml"),
            "{msg}"
        );
        let msg = resolve(&d, &["vendor.example/gpu=1".into()])
            .expect_err("unknown")
            .to_string();
        assert!(
            msg.contains("unknown CDI device \"vendor.example/gpu=1\""),
            "{msg}"
        );
        assert!(msg.contains("bad.json"), "{msg}");
        assert!(
            msg.contains("typo.yaml") && msg.contains("deviceNode"),
            "{msg}"
        );
        // A later directory overrides: no conflict.
        std::fs::remove_file(d[0].join("b.yaml")).expect("rm");
        std::fs::write(d[1].join("c.yaml"), YAML.replace("GPU=0", "GPU=late")).expect("write");
        let spec = applied(
            &resolve(&d, &["vendor.example/gpu=0".into()]).expect("later dir wins"),
            json!({"process": {"env": [], "user": {"uid": 0, "gid": 0}, "cwd": "/"}}),
        );
        assert_eq!(spec["process"]["env"][0], "GPU=late");
    }

    #[test]
    fn edits_berthd_cannot_apply_are_refused() {
        let (_t, d) = dirs(1);
        for (i, (edit, why)) in [
            (
                "{deviceNodes: [{path: /etc/passwd, hostPath: /dev/null}]}",
                "under /dev",
            ),
            (
                "{deviceNodes: [{path: /dev/../etc/x, hostPath: /dev/null}]}",
                "under /dev",
            ),
            (
                "{deviceNodes: [{path: /dev/x, hostPath: /etc/hostname}]}",
                "not a device",
            ),
            (
                "{mounts: [{hostPath: /tmp, containerPath: /proc/sys}]}",
                "/proc",
            ),
            (
                "{mounts: [{hostPath: /tmp, containerPath: /x, type: tmpfs}]}",
                "only bind",
            ),
            (
                "{mounts: [{hostPath: /tmp, containerPath: /x, options: [rshared]}]}",
                "rshared",
            ),
            (
                "{hooks: [{hookName: whenever, path: /bin/true}]}",
                "whenever",
            ),
            ("{intelRdt: {closID: x}}", "intelRdt"),
            ("{env: [NOEQUALS]}", "NOEQUALS"),
        ]
        .into_iter()
        .enumerate()
        {
            std::fs::write(
                d[0].join(format!("s{i}.yaml")),
                format!("cdiVersion: 0.7.0\nkind: v.example/c{i}\ndevices:\n  - name: x\n    containerEdits: {edit}\n"),
            )
            .expect("write");
            let msg = resolve(&d, &[format!("v.example/c{i}=x")])
                .expect_err(edit)
                .to_string();
            assert!(
                msg.contains(why) && msg.contains(&format!("s{i}.yaml")),
                "{edit}: {msg}"
            );
        }
    }

    #[test]
    fn requested_devices_come_from_the_field_and_both_annotations() {
        let mut c = ContainerConfig {
            cdi_devices: vec![CdiDevice {
                name: "a.example/x=1".into(),
            }],
            ..Default::default()
        };
        c.annotations.insert(
            "cdi.k8s.io/ctr".into(),
            "a.example/x=2, a.example/x=1".into(),
        );
        c.annotations.insert("other".into(), "not=cdi".into());
        let pod = HashMap::from([("cdi.k8s.io/pod".to_owned(), "b.example/y=z".to_owned())]);
        assert_eq!(
            requested_devices(&c, &pod).expect("names"),
            ["a.example/x=1", "a.example/x=2", "b.example/y=z"]
        );
        c.cdi_devices[0].name = "../../etc=x".into();
        let e = requested_devices(&c, &pod).expect_err("bad name");
        assert!(e.to_string().contains("CDI_devices"), "{e}");
        assert!(
            requested_devices(&ContainerConfig::default(), &HashMap::new())
                .expect("none")
                .is_empty()
        );
    }

    #[test]
    fn oversized_and_foreign_version_specs_are_refused() {
        let (_t, d) = dirs(1);
        let big = format!(
            "{YAML}\n#{}\n",
            "x".repeat(usize::try_from(MAX_SPEC_BYTES).unwrap_or(0))
        );
        std::fs::write(d[0].join("big.yaml"), big).expect("write");
        std::fs::write(
            d[0].join("v.yaml"),
            YAML.replace("0.6.0", "9.0.0").replace("gpu", "gpu2"),
        )
        .expect("write");
        let msg = resolve(&d, &["vendor.example/gpu=0".into()])
            .expect_err("too big")
            .to_string();
        assert!(msg.contains("big.yaml") && msg.contains("bytes"), "{msg}");
        assert!(msg.contains("v.yaml") && msg.contains("9.0.0"), "{msg}");
    }
}
