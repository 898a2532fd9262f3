//! The native built-in network: berthd wires pods to a bridge itself, over netlink,
//! instead of exec'ing the bridge and host-local plugins (like podman's netavark).
//!
//! Per daemon (once per bridge and subnet): the bridge exists, has the subnet's first
//! host as its address and is up; `net.ipv4.ip_forward=1`; one masquerade rule for the
//! subnet. Per pod: an IPv4 address from the in-process IPAM, a veth pair whose host end
//! (named after the pod id, see [`host_veth_name`]) is a bridge port and whose peer is
//! created directly inside the pod's netns as `eth0`, with the address, `lo` and `eth0`
//! up and a default route via the gateway. Teardown needs only the pod id: the host veth
//! name is derived from it and every IP file names its pod.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};

use super::exec::POD_IFNAME;
use super::netlink::{self, NetlinkError, Socket};
use crate::config::subnet::Subnet;
use crate::error::{HasKind, Kind};

/// Name the native network's attachments are recorded under (distinct from the
/// exec'd built-in network's, so a mode change never tears a pod down the wrong way).
pub const NATIVE_NETWORK_NAME: &str = "berth-native";

/// A failure of the native network, naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The IPAM directory could not be used.
    #[error("IPAM state {path}: {source}")]
    Ipam {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Every address of the subnet is taken.
    #[error("no free IPv4 address left in {0}")]
    Exhausted(String),
    /// The pod's network namespace could not be entered.
    #[error("entering the pod network namespace {path}: {source}")]
    Netns {
        /// The pinned netns.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Host set-up outside netlink (iptables) refused.
    #[error("{0}")]
    Host(String),
    /// Host set-up outside netlink (sysctl, running iptables) failed with a host error.
    #[error("{what}: {source}")]
    HostIo {
        /// What Berth was doing.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl HasKind for NativeError {
    fn kind(&self) -> Kind {
        match self {
            NativeError::Exhausted(_) => Kind::ResourceExhausted,
            NativeError::Ipam { source, .. } | NativeError::Netns { source, .. } => {
                Kind::of_io_or(source, Kind::Internal)
            }
            NativeError::Netlink(e) => crate::error::io_kind_in_chain(e, Kind::Internal),
            NativeError::HostIo { source, .. } => Kind::of_io_or(source, Kind::Internal),
            NativeError::Host(_) => Kind::Internal,
        }
    }
}

/// The subnet pods get: the first IPv4 pod CIDR kubelet gave, else the configured one.
pub fn pod_subnet(configured: &str, pod_cidrs: &[String]) -> Result<Subnet, String> {
    pod_cidrs
        .iter()
        .find_map(|c| Subnet::parse(c).ok())
        .map_or_else(|| Subnet::parse(configured), Ok)
}

/// The host end of a pod's veth pair: `bth` and the first 12 hex digits of its id.
pub fn host_veth_name(pod_id: &str) -> String {
    let short: String = pod_id.chars().take(12).collect();
    format!("bth{short}")
}

/// In-process IPAM: one file per allocated address, named by the address and holding
/// the pod id. A file appears atomically with its content (hard link of a temp file),
/// and the link fails if the address is taken, so two pods never share an address even
/// across crashes and restarts of berthd.
#[derive(Debug)]
pub struct Ipam {
    dir: PathBuf,
    lock: Mutex<()>,
}

const LAST_FILE: &str = "last_reserved";

impl Ipam {
    /// IPAM state under `dir` (created on first use).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            lock: Mutex::new(()),
        }
    }

    fn err(&self, path: &Path, source: std::io::Error) -> NativeError {
        NativeError::Ipam {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Allocates a free pod address of `subnet` for `pod_id`, after the last one
    /// allocated (so a released address is not handed out again right away).
    pub fn allocate(&self, subnet: &Subnet, pod_id: &str) -> Result<Ipv4Addr, NativeError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::create_dir_all(&self.dir).map_err(|e| self.err(&self.dir, e))?;
        let tmp = self.dir.join(format!(".tmp-{pod_id}"));
        std::fs::write(&tmp, pod_id).map_err(|e| self.err(&tmp, e))?;
        let (first, last) = subnet.pod_range();
        let last_path = self.dir.join(LAST_FILE);
        let start = std::fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .filter(|a| (first..last).contains(a))
            .map_or(first, |a| a + 1);
        let result = (start..=last)
            .chain(first..start)
            .map(Ipv4Addr::from)
            .find_map(|ip| {
                let path = self.dir.join(ip.to_string());
                match std::fs::hard_link(&tmp, &path) {
                    Ok(()) => Some(Ok(ip)),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
                    Err(e) => Some(Err(self.err(&path, e))),
                }
            })
            .unwrap_or_else(|| Err(NativeError::Exhausted(subnet.to_string())));
        let _ = std::fs::remove_file(&tmp);
        let ip = result?;
        // Only a hint for the next search: a torn or lost write costs nothing, so it
        // is not worth an fsync.
        let _ = std::fs::write(&last_path, ip.to_string());
        Ok(ip)
    }

    /// The addresses held by `pod_id`.
    pub fn held_by(&self, pod_id: &str) -> Vec<Ipv4Addr> {
        self.entries()
            .into_iter()
            .filter(|(_, holder)| holder == pod_id)
            .map(|(ip, _)| ip)
            .collect()
    }

    /// Every allocated address and the pod holding it.
    fn entries(&self) -> Vec<(Ipv4Addr, String)> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| {
                let ip: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
                let holder = std::fs::read_to_string(e.path()).ok()?;
                Some((ip, holder.trim().to_owned()))
            })
            .collect()
    }

    /// Releases every address `pod_id` holds. Idempotent.
    pub fn release(&self, pod_id: &str) -> Result<(), NativeError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let _ = std::fs::remove_file(self.dir.join(format!(".tmp-{pod_id}")));
        for ip in self.held_by(pod_id) {
            let path = self.dir.join(ip.to_string());
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.err(&path, e)),
            }
        }
        Ok(())
    }

    /// Releases addresses held by pods not in `live` (their records are gone).
    pub fn release_orphans(&self, live: &HashSet<String>) -> Vec<Ipv4Addr> {
        let mut freed = Vec::new();
        for (ip, holder) in self.entries() {
            if !live.contains(&holder) && self.release(&holder).is_ok() {
                freed.push(ip);
            }
        }
        freed
    }
}

/// The native network of one daemon: its IPAM and what it has set up on the host.
#[derive(Debug)]
pub struct NativeNetwork {
    ipam: Ipam,
    /// (bridge, subnet) pairs whose bridge, gateway address and masquerade rule are set.
    ensured: Mutex<HashSet<(String, Subnet)>>,
}

impl NativeNetwork {
    /// A native network keeping its IPAM state under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            ipam: Ipam::new(state_dir.join("net").join("ips")),
            ensured: Mutex::new(HashSet::new()),
        }
    }

    /// The IPAM.
    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// Attaches pod `pod_id` (netns pinned at `netns`) to `bridge`; returns a CNI 1.0
    /// result describing the attachment. Blocking; on error the caller runs [`Self::del`].
    pub fn add(
        &self,
        bridge: &str,
        subnet: &Subnet,
        pod_id: &str,
        netns: &Path,
    ) -> Result<Value, NativeError> {
        self.ensure_host(bridge, subnet)?;
        let ip = self.ipam.allocate(subnet, pod_id)?;
        let host = host_veth_name(pod_id);
        let ns = std::fs::File::open(netns).map_err(|source| NativeError::Netns {
            path: netns.to_path_buf(),
            source,
        })?;
        let mut sock = Socket::open()?;
        let bridge_index = match netlink::index_of(bridge) {
            Ok(index) => index,
            Err(_) => {
                // Someone deleted the bridge since this daemon set it up: again.
                self.ensured
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&(bridge.to_owned(), *subnet));
                self.ensure_host(bridge, subnet)?;
                netlink::index_of(bridge)?
            }
        };
        sock.call(&netlink::new_veth(
            &host,
            bridge_index,
            POD_IFNAME,
            ns.as_raw_fd(),
        ))?;
        let host_index = netlink::index_of(&host)?;
        sock.call(&netlink::hairpin_on(host_index, &host))?;
        let gateway = subnet.gateway();
        let prefix = subnet.prefix;
        in_netns(ns, netns, move || {
            let mut sock = Socket::open()?;
            sock.call(&netlink::link_up("lo"))?;
            let index = netlink::index_of(POD_IFNAME)?;
            sock.call(&netlink::add_addr(index, ip, prefix, POD_IFNAME))?;
            sock.call(&netlink::link_up(POD_IFNAME))?;
            sock.call(&netlink::add_default_route(index, gateway))?;
            Ok(())
        })?;
        Ok(json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                { "name": bridge },
                { "name": host },
                { "name": POD_IFNAME, "sandbox": netns },
            ],
            "ips": [{
                "address": format!("{ip}/{prefix}"),
                "gateway": gateway.to_string(),
                "interface": 2,
            }],
            "routes": [{ "dst": "0.0.0.0/0", "gw": gateway.to_string() }],
            "dns": {},
        }))
    }

    /// Detaches pod `pod_id`: deletes its host veth (the peer goes with it) and releases
    /// its addresses. Idempotent.
    pub fn del(&self, pod_id: &str) -> Result<(), NativeError> {
        let mut sock = Socket::open()?;
        match sock.call(&netlink::del_link(&host_veth_name(pod_id))) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::ENODEV) => {}
            Err(e) => return Err(e.into()),
        }
        self.ipam.release(pod_id)
    }

    /// Sets up the bridge, its gateway address, IP forwarding and the masquerade rule,
    /// once per daemon for each bridge and subnet (each step tolerates what a previous
    /// daemon left, so nothing piles up across restarts).
    fn ensure_host(&self, bridge: &str, subnet: &Subnet) -> Result<(), NativeError> {
        let key = (bridge.to_owned(), *subnet);
        let mut ensured = self.ensured.lock().unwrap_or_else(|e| e.into_inner());
        if ensured.contains(&key) {
            return Ok(());
        }
        let mut sock = Socket::open()?;
        match sock.call(&netlink::new_bridge(bridge)) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let index = netlink::index_of(bridge)?;
        match sock.call(&netlink::add_addr(
            index,
            subnet.gateway(),
            subnet.prefix,
            bridge,
        )) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        sock.call(&netlink::link_up(bridge))?;
        let forward = Path::new("/proc/sys/net/ipv4/ip_forward");
        if std::fs::read_to_string(forward).map_or(true, |s| s.trim() != "1") {
            std::fs::write(forward, "1").map_err(|source| NativeError::HostIo {
                what: "setting net.ipv4.ip_forward=1",
                source,
            })?;
        }
        ensure_masquerade(bridge, subnet)?;
        ensured.insert(key);
        Ok(())
    }
}

/// The masquerade rule of the subnet, as iptables arguments after the command.
pub fn masquerade_rule(bridge: &str, subnet: &Subnet) -> Vec<String> {
    let s = subnet.to_string();
    [
        "POSTROUTING",
        "-s",
        &s,
        "!",
        "-d",
        &s,
        "-m",
        "comment",
        "--comment",
        &format!("berth native network {bridge}"),
        "-j",
        "MASQUERADE",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect()
}

fn iptables(command: &str, rule: &[String]) -> Result<bool, NativeError> {
    let out = std::process::Command::new("iptables")
        .args(["-w", "10", "-t", "nat", command])
        .args(rule)
        .output()
        .map_err(|source| NativeError::HostIo {
            what: "running iptables",
            source,
        })?;
    if out.status.success() {
        return Ok(true);
    }
    if command == "-C" && out.status.code() == Some(1) {
        return Ok(false);
    }
    Err(NativeError::Host(format!(
        "iptables {command} {}: {}",
        rule.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

fn ensure_masquerade(bridge: &str, subnet: &Subnet) -> Result<(), NativeError> {
    let rule = masquerade_rule(bridge, subnet);
    if !iptables("-C", &rule)? {
        iptables("-A", &rule)?;
    }
    Ok(())
}

/// Runs `f` on a new thread that has entered the network namespace `ns` (so netlink
/// sockets it opens talk to that namespace); the calling thread's namespace is untouched.
fn in_netns<F>(ns: std::fs::File, path: &Path, f: F) -> Result<(), NativeError>
where
    F: FnOnce() -> Result<(), NativeError> + Send + 'static,
{
    let netns_err = |source| NativeError::Netns {
        path: path.to_path_buf(),
        source,
    };
    let handle = std::thread::Builder::new()
        .name("berth-netns".into())
        .spawn(move || {
            // SAFETY: setns(2) on a descriptor we own; it only changes this thread's
            // network namespace, and this thread exits when `f` returns.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(Err(std::io::Error::last_os_error()));
            }
            drop(ns);
            f().map_err(Ok)
        })
        .map_err(netns_err)?;
    match handle.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(Ok(e))) => Err(e),
        Ok(Err(Err(io))) => Err(netns_err(io)),
        Err(_) => Err(netns_err(std::io::Error::other(
            "the netns thread panicked",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_pod_cidr_wins_over_the_configured_subnet() {
        let s = pod_subnet(
            "10.88.0.0/16",
            &["fd00::/64".into(), "10.244.1.0/24".into()],
        )
        .expect("valid");
        assert_eq!(s.to_string(), "10.244.1.0/24");
        let s = pod_subnet("10.93.0.0/16", &[]).expect("valid");
        assert_eq!(s.to_string(), "10.93.0.0/16");
    }

    #[test]
    fn host_veth_names_fit_ifnamsiz() {
        let n = host_veth_name(&"ab".repeat(32));
        assert_eq!(n, "bthabababababab");
        assert!(n.len() <= 15);
    }

    #[test]
    fn ipam_never_hands_out_a_held_address_and_frees_by_pod() {
        let d = tempfile::tempdir().expect("tempdir");
        let subnet = Subnet::parse("10.93.0.0/29").expect("valid"); // pods: .2 to .6
        let ipam = Ipam::new(d.path().join("ips"));
        let a = ipam.allocate(&subnet, "pod-a").expect("a");
        let b = ipam.allocate(&subnet, "pod-b").expect("b");
        assert_eq!(a, Ipv4Addr::new(10, 93, 0, 2));
        assert_eq!(b, Ipv4Addr::new(10, 93, 0, 3));
        ipam.release("pod-a").expect("release");
        // A new IPAM over the same directory (a restarted berthd) continues after b and
        // does not reuse a right away.
        let ipam = Ipam::new(d.path().join("ips"));
        let c = ipam.allocate(&subnet, "pod-c").expect("c");
        assert_eq!(c, Ipv4Addr::new(10, 93, 0, 4));
        assert_eq!(ipam.held_by("pod-b"), vec![b]);
        for p in ["d", "e", "f"] {
            ipam.allocate(&subnet, p).expect("room left");
        }
        let held: HashSet<Ipv4Addr> = ["pod-b", "pod-c", "d", "e", "f"]
            .iter()
            .flat_map(|p| ipam.held_by(p))
            .collect();
        assert_eq!(held.len(), 5, "five distinct addresses");
        let err = ipam.allocate(&subnet, "g").expect_err("full");
        assert!(err.to_string().contains("10.93.0.0/29"), "{err}");
        ipam.release("pod-b").expect("release");
        ipam.release("pod-b").expect("idempotent");
        assert_eq!(ipam.allocate(&subnet, "g").expect("freed"), b);
        assert!(
            !d.path().join("ips/.tmp-g").exists(),
            "no temp file is left behind"
        );
    }

    #[test]
    fn orphaned_addresses_are_released() {
        let d = tempfile::tempdir().expect("tempdir");
        let subnet = Subnet::parse("10.93.0.0/24").expect("valid");
        let ipam = Ipam::new(d.path().to_path_buf());
        let live = ipam.allocate(&subnet, "live").expect("live");
        let gone = ipam.allocate(&subnet, "gone").expect("gone");
        let freed = ipam.release_orphans(&HashSet::from(["live".to_owned()]));
        assert_eq!(freed, vec![gone]);
        assert_eq!(ipam.held_by("live"), vec![live]);
    }

    #[test]
    fn masquerade_rule_names_the_subnet_and_bridge() {
        let r = masquerade_rule("berth0", &Subnet::parse("10.88.0.0/16").expect("valid"));
        let joined = r.join(" ");
        assert_eq!(
            joined,
            "POSTROUTING -s 10.88.0.0/16 ! -d 10.88.0.0/16 -m comment --comment berth native network berth0 -j MASQUERADE"
        );
    }
}
