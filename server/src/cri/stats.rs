//! Pod-level stats (`PodSandboxStats`, `ListPodSandboxStats`): the sum of the pod's
//! containers' cgroups, its process count, and the traffic of its network namespace.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use berth_proto::v1::{
    CpuUsage, LinuxPodSandboxStats, MemoryUsage, NetworkInterfaceUsage, NetworkUsage,
    PodSandboxAttributes, PodSandboxStats, ProcessUsage, UInt64Value,
};

use super::Shared;
use crate::host::clock::now_nanos;
use crate::pod::Sandbox;

fn v(value: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value })
}

/// Stats of one pod (blocking: reads cgroup files and the netns).
pub fn pod_stats(shared: &Shared, sb: &Sandbox) -> PodSandboxStats {
    let now = now_nanos();
    let containers = shared.containers.of_pod(&sb.id);
    let stats: Vec<_> = containers
        .iter()
        .map(|c| super::convert::container_stats(c, &shared.containers.stats(c)))
        .collect();
    let sum = |f: &dyn Fn(&berth_proto::v1::ContainerStats) -> Option<u64>| -> u64 {
        stats.iter().filter_map(f).sum()
    };
    let cpu_total = sum(&|s| {
        s.cpu
            .as_ref()?
            .usage_core_nano_seconds
            .as_ref()
            .map(|v| v.value)
    });
    let nano_cores = if stats.iter().all(|s| {
        s.cpu
            .as_ref()
            .and_then(|c| c.usage_nano_cores.as_ref())
            .is_some()
    }) {
        v(sum(&|s| {
            s.cpu.as_ref()?.usage_nano_cores.as_ref().map(|v| v.value)
        }))
    } else {
        None
    };
    let working_set = sum(&|s| {
        s.memory
            .as_ref()?
            .working_set_bytes
            .as_ref()
            .map(|v| v.value)
    });
    let usage = sum(&|s| s.memory.as_ref()?.usage_bytes.as_ref().map(|v| v.value));
    let processes: u64 = containers
        .iter()
        .map(|c| shared.containers.process_count(c))
        .sum();
    let network = sb
        .state()
        .pins
        .net
        .as_deref()
        .and_then(|netns| netns_interfaces(netns).ok())
        .map(|interfaces| NetworkUsage {
            timestamp: now,
            default_interface: interfaces
                .iter()
                .find(|i| i.name == crate::cni::exec::POD_IFNAME)
                .cloned(),
            interfaces,
        });
    PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: sb.id.clone(),
            metadata: sb.config.metadata.clone(),
            labels: sb.config.labels.clone(),
            annotations: sb.config.annotations.clone(),
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu: Some(CpuUsage {
                timestamp: now,
                usage_core_nano_seconds: v(cpu_total),
                usage_nano_cores: nano_cores,
                psi: None,
            }),
            memory: Some(MemoryUsage {
                timestamp: now,
                working_set_bytes: v(working_set),
                usage_bytes: v(usage),
                ..Default::default()
            }),
            network,
            process: Some(ProcessUsage {
                timestamp: now,
                process_count: v(processes),
            }),
            containers: stats,
            io: None,
        }),
        windows: None,
    }
}

/// Stats of the pods matching `filter` (blocking).
pub fn list_pod_stats(
    shared: &Shared,
    filter: Option<&berth_proto::v1::PodSandboxStatsFilter>,
) -> Vec<PodSandboxStats> {
    shared
        .pods
        .all()
        .into_iter()
        .filter(|p| {
            filter.is_none_or(|f| {
                (f.id.is_empty() || p.id.starts_with(&f.id))
                    && f.label_selector
                        .iter()
                        .all(|(k, v)| p.config.labels.get(k) == Some(v))
            })
        })
        .map(|p| pod_stats(shared, &p))
        .collect()
}

/// Interface counters inside a network namespace, read from a thread that joins it
/// (`/proc/thread-self/net/dev` shows the reading thread's namespace).
fn netns_interfaces(netns: &Path) -> io::Result<Vec<NetworkInterfaceUsage>> {
    netns_net_dev(netns).map(|text| parse_net_dev(&text))
}

/// The text of /proc/net/dev as seen inside the network namespace `netns`.
pub(super) fn netns_net_dev(netns: &Path) -> io::Result<String> {
    let ns = std::fs::File::open(netns)?;
    std::thread::spawn(move || -> io::Result<String> {
        // SAFETY: setns(2) on an open namespace fd moves only this short-lived thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        std::fs::read_to_string("/proc/thread-self/net/dev")
    })
    .join()
    .map_err(|_| io::Error::other("netns stats thread panicked"))?
}

/// One interface's counters: a line of /proc/net/dev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct InterfaceCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// The pod's interfaces in the text of /proc/net/dev read inside its network
/// namespace (`iface: rx bytes packets errs drop fifo frame compressed multicast, tx
/// bytes packets errs drop ...`), loopback left out: kubelet's stats, like cadvisor's
/// metrics, count the traffic a pod exchanges with others, and `lo` never leaves it.
/// The one parser behind both pod stats and the network metrics, so they agree.
pub(super) fn pod_interfaces(net_dev: &str) -> Vec<InterfaceCounters> {
    net_dev
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (name != "lo" && f.len() >= 16).then(|| InterfaceCounters {
                name: name.to_owned(),
                rx_bytes: f[0],
                rx_packets: f[1],
                rx_errors: f[2],
                rx_dropped: f[3],
                tx_bytes: f[8],
                tx_packets: f[9],
                tx_errors: f[10],
                tx_dropped: f[11],
            })
        })
        .collect()
}

/// The CRI form of [`pod_interfaces`].
fn parse_net_dev(text: &str) -> Vec<NetworkInterfaceUsage> {
    pod_interfaces(text)
        .into_iter()
        .map(|i| NetworkInterfaceUsage {
            name: i.name,
            rx_bytes: v(i.rx_bytes),
            rx_errors: v(i.rx_errors),
            tx_bytes: v(i.tx_bytes),
            tx_errors: v(i.tx_errors),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_parses_without_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    5000      10    2    0    0     0          0         0     7000      12    3    0    0     0       0          0\n";
        // Pod stats and metrics read the same interfaces: eth0, never lo.
        let ifaces = parse_net_dev(text);
        assert_eq!(ifaces.len(), 1, "{ifaces:?}");
        assert_eq!(ifaces[0].name, "eth0");
        assert_eq!(ifaces[0].rx_bytes.as_ref().map(|v| v.value), Some(5000));
        assert_eq!(ifaces[0].rx_errors.as_ref().map(|v| v.value), Some(2));
        assert_eq!(ifaces[0].tx_bytes.as_ref().map(|v| v.value), Some(7000));
        assert_eq!(ifaces[0].tx_errors.as_ref().map(|v| v.value), Some(3));
        let names = |v: Vec<InterfaceCounters>| v.into_iter().map(|i| i.name).collect::<Vec<_>>();
        assert_eq!(names(pod_interfaces(text)), ["eth0"]);
    }
}
