//! The metrics table: every metric Berth describes, as its descriptor (name, help,
//! type, labels beyond the base ones) together with its source, a function from a
//! reading to values. A metric cannot be described without a source or measured
//! without a descriptor, and a source's label values are positional to the labels its
//! row declares (a unit test checks the counts), so no name is ever looked up.

use berth_proto::v1::MetricType;
use berth_runtime_core::cgroups::stats::{CgroupStats, HugetlbStats, PageFaults, UNLIMITED};

use super::reading::{ContainerReading, InterfaceCounters};

/// Label values (in the order of [`Family::extra`]) and the value of one series.
pub(super) type Series = (Vec<String>, u64);

/// Where a metric's values come from.
#[derive(Clone, Copy)]
pub(super) enum Source {
    /// One unlabelled value of a container, when its source exists on this host.
    Container(fn(&ContainerReading) -> Option<u64>),
    /// Labelled values of a container.
    Labelled(fn(&ContainerReading) -> Vec<Series>),
    /// One value per interface of the pod's network namespace (pod-level series).
    Interface(fn(&InterfaceCounters) -> u64),
}

/// Label names.
type Labels = &'static [&'static str];

/// One metric family: its descriptor and its source.
pub(super) struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    /// Labels beyond [`super::BASE_LABELS`].
    pub extra: &'static [&'static str],
    pub source: Source,
}

const fn family(
    kind: MetricType,
    name: &'static str,
    help: &'static str,
    extra: Labels,
    source: Source,
) -> Family {
    Family {
        name,
        help,
        kind,
        extra,
        source,
    }
}

const fn counter(name: &'static str, help: &'static str, extra: Labels, source: Source) -> Family {
    family(MetricType::Counter, name, help, extra, source)
}

const fn gauge(name: &'static str, help: &'static str, extra: Labels, source: Source) -> Family {
    family(MetricType::Gauge, name, help, extra, source)
}

/// A counter of the pod's network interfaces, one series per interface.
const fn net(
    name: &'static str,
    help: &'static str,
    value: fn(&InterfaceCounters) -> u64,
) -> Family {
    counter(name, help, IFACE, Source::Interface(value))
}

const NONE: &[&str] = &[];
const DEVICE: &[&str] = &["device"];
const IFACE: &[&str] = &["interface"];
const PAGESIZE: &[&str] = &["pagesize"];

use Source::{Container, Labelled};

fn cg(r: &ContainerReading) -> Option<&CgroupStats> {
    r.cgroup.as_ref()
}

/// Whole seconds of nanoseconds (the fraction is dropped, as CRI-O does).
fn secs_ns(ns: Option<u64>) -> Option<u64> {
    ns.map(|n| n / 1_000_000_000)
}

/// Whole seconds of microseconds.
fn secs_us(us: Option<u64>) -> Option<u64> {
    us.map(|u| u / 1_000_000)
}

/// A limit that is not set is 0 (a `u64` cannot say "none").
fn limit(v: Option<u64>) -> Option<u64> {
    v.map(|v| if v == UNLIMITED { 0 } else { v })
}

fn one(labels: &[&str], v: Option<u64>) -> Vec<Series> {
    v.map(|v| (labels.iter().map(|l| (*l).to_owned()).collect(), v))
        .into_iter()
        .collect()
}

/// Per block device, the count of operation `op` (`Read`/`Write`), labelled by device name.
fn per_device(r: &ContainerReading, bytes: bool, op: &str) -> Vec<Series> {
    let Some(c) = cg(r) else { return Vec::new() };
    let counts = if bytes { &c.blkio.bytes } else { &c.blkio.ios };
    counts
        .iter()
        .filter_map(|(dev, ops)| Some((vec![r.device_name(*dev)], *ops.get(op)?)))
        .collect()
}

fn faults(r: &ContainerReading) -> Vec<Series> {
    let Some(m) = cg(r).map(|c| &c.memory) else {
        return Vec::new();
    };
    let scope = |f: &PageFaults, scope: &str| {
        [("pgfault", f.pgfault), ("pgmajfault", f.pgmajfault)]
            .into_iter()
            .filter_map(|(kind, v)| Some((vec![kind.to_owned(), scope.to_owned()], v?)))
            .collect::<Vec<_>>()
    };
    let mut out = scope(&m.faults, "container");
    out.extend(scope(&m.hierarchy_faults, "hierarchy"));
    out
}

fn hugetlb(r: &ContainerReading, value: fn(&HugetlbStats) -> Option<u64>) -> Vec<Series> {
    cg(r)
        .map(|c| {
            c.hugetlb
                .iter()
                .filter_map(|h| Some((vec![h.pagesize.clone()], value(h)?)))
                .collect()
        })
        .unwrap_or_default()
}

fn layer(r: &ContainerReading, value: Option<u64>) -> Vec<Series> {
    r.fs.as_ref()
        .map(|fs| one(&[&fs.device], value))
        .unwrap_or_default()
}

/// Every metric Berth describes: the set kubelet shows from cadvisor, which critest
/// expects a CRI runtime to describe.
pub(super) const FAMILIES: &[Family] = &[
    counter(
        "container_blkio_device_usage_total",
        "Blkio device bytes usage.",
        &["device", "major", "minor", "operation"],
        Labelled(|r| {
            let Some(c) = cg(r) else { return Vec::new() };
            let mut out = Vec::new();
            for (&(major, minor), ops) in &c.blkio.bytes {
                let name = r.device_name((major, minor));
                for (op, &v) in ops {
                    let labels = vec![
                        name.clone(),
                        major.to_string(),
                        minor.to_string(),
                        op.clone(),
                    ];
                    out.push((labels, v));
                }
            }
            out
        }),
    ),
    counter(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        NONE,
        Container(|r| cg(r)?.cpu.periods),
    ),
    counter(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        NONE,
        Container(|r| cg(r)?.cpu.throttled_periods),
    ),
    counter(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled, in whole seconds.",
        NONE,
        Container(|r| secs_ns(cg(r)?.cpu.throttled_ns)),
    ),
    counter(
        "container_cpu_system_seconds_total",
        "Cumulative system CPU time consumed, in whole seconds.",
        NONE,
        Container(|r| secs_ns(cg(r)?.cpu.system_ns)),
    ),
    counter(
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed, in whole seconds.",
        &["cpu"],
        Labelled(|r| one(&["total"], secs_ns(cg(r).and_then(|c| c.cpu.usage_ns)))),
    ),
    counter(
        "container_cpu_user_seconds_total",
        "Cumulative user CPU time consumed, in whole seconds.",
        NONE,
        Container(|r| secs_ns(cg(r)?.cpu.user_ns)),
    ),
    gauge(
        "container_file_descriptors",
        "Number of open file descriptors of the container's processes.",
        NONE,
        Container(|r| Some(r.procs?.fds)),
    ),
    gauge(
        "container_fs_inodes_free",
        "Number of free inodes on the filesystem of the writable layer.",
        DEVICE,
        Labelled(|r| layer(r, r.fs.as_ref().and_then(|f| f.inodes_free))),
    ),
    gauge(
        "container_fs_inodes_total",
        "Number of inodes on the filesystem of the writable layer.",
        DEVICE,
        Labelled(|r| layer(r, r.fs.as_ref().and_then(|f| f.inodes_total))),
    ),
    gauge(
        "container_fs_limit_bytes",
        "Size in bytes of the filesystem of the writable layer.",
        DEVICE,
        Labelled(|r| layer(r, r.fs.as_ref().and_then(|f| f.limit_bytes))),
    ),
    counter(
        "container_fs_reads_bytes_total",
        "Cumulative count of bytes read from block devices.",
        DEVICE,
        Labelled(|r| per_device(r, true, "Read")),
    ),
    counter(
        "container_fs_reads_total",
        "Cumulative count of reads completed on block devices.",
        DEVICE,
        Labelled(|r| per_device(r, false, "Read")),
    ),
    gauge(
        "container_fs_usage_bytes",
        "Bytes used by the container's writable layer.",
        DEVICE,
        Labelled(|r| layer(r, r.fs.as_ref().and_then(|f| f.used_bytes))),
    ),
    counter(
        "container_fs_writes_bytes_total",
        "Cumulative count of bytes written to block devices.",
        DEVICE,
        Labelled(|r| per_device(r, true, "Write")),
    ),
    counter(
        "container_fs_writes_total",
        "Cumulative count of writes completed on block devices.",
        DEVICE,
        Labelled(|r| per_device(r, false, "Write")),
    ),
    gauge(
        "container_hugetlb_max_usage_bytes",
        "Maximum hugepage usage recorded, in bytes.",
        PAGESIZE,
        Labelled(|r| hugetlb(r, |h| h.max_usage)),
    ),
    gauge(
        "container_hugetlb_usage_bytes",
        "Current hugepage usage in bytes.",
        PAGESIZE,
        Labelled(|r| hugetlb(r, |h| h.usage)),
    ),
    gauge(
        "container_last_seen",
        "Last time (Unix seconds) the runtime saw the container.",
        NONE,
        Container(|r| Some(r.now_secs)),
    ),
    gauge(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        NONE,
        Container(|r| cg(r)?.memory.cache),
    ),
    counter(
        "container_memory_failcnt",
        "Number of times memory usage hit the limit.",
        NONE,
        Container(|r| cg(r)?.memory.failcnt),
    ),
    counter(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures (page faults).",
        &["failure_type", "scope"],
        Labelled(faults),
    ),
    gauge(
        "container_memory_kernel_usage",
        "Size of kernel memory allocated, in bytes.",
        NONE,
        Container(|r| cg(r)?.memory.kernel),
    ),
    gauge(
        "container_memory_mapped_file",
        "Size of memory mapped files, in bytes.",
        NONE,
        Container(|r| cg(r)?.memory.mapped_file),
    ),
    gauge(
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded, in bytes.",
        NONE,
        Container(|r| cg(r)?.memory.max_usage),
    ),
    gauge(
        "container_memory_rss",
        "Size of RSS (anonymous memory), in bytes.",
        NONE,
        Container(|r| cg(r)?.memory.rss),
    ),
    gauge(
        "container_memory_swap",
        "Container swap usage, in bytes.",
        NONE,
        Container(|r| cg(r)?.memory.swap),
    ),
    gauge(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        NONE,
        Container(|r| cg(r)?.memory.usage),
    ),
    gauge(
        "container_memory_working_set_bytes",
        "Current working set (usage minus inactive file cache), in bytes.",
        NONE,
        Container(|r| cg(r)?.memory.working_set()),
    ),
    net(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        |i| i.rx_bytes,
    ),
    net(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        |i| i.rx_errors,
    ),
    net(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        |i| i.rx_dropped,
    ),
    net(
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
        |i| i.rx_packets,
    ),
    net(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        |i| i.tx_bytes,
    ),
    net(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        |i| i.tx_errors,
    ),
    net(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        |i| i.tx_dropped,
    ),
    net(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
        |i| i.tx_packets,
    ),
    counter(
        "container_oom_events_total",
        "Count of out of memory kills observed for the container.",
        NONE,
        Container(|r| cg(r)?.memory.oom_kills),
    ),
    counter(
        "container_pressure_cpu_stalled_seconds_total",
        "Total time all non-idle tasks were stalled waiting for CPU, in whole seconds.",
        NONE,
        Container(|r| secs_us(cg(r)?.pressure.cpu?.full_total_us)),
    ),
    counter(
        "container_pressure_cpu_waiting_seconds_total",
        "Total time some tasks were waiting for CPU, in whole seconds.",
        NONE,
        Container(|r| secs_us(cg(r)?.pressure.cpu?.some_total_us)),
    ),
    counter(
        "container_pressure_io_stalled_seconds_total",
        "Total time all non-idle tasks were stalled on I/O, in whole seconds.",
        NONE,
        Container(|r| secs_us(cg(r)?.pressure.io?.full_total_us)),
    ),
    counter(
        "container_pressure_io_waiting_seconds_total",
        "Total time some tasks were waiting on I/O, in whole seconds.",
        NONE,
        Container(|r| secs_us(cg(r)?.pressure.io?.some_total_us)),
    ),
    counter(
        "container_pressure_memory_stalled_seconds_total",
        "Total time all non-idle tasks were stalled on memory, in whole seconds.",
        NONE,
        Container(|r| secs_us(cg(r)?.pressure.memory?.full_total_us)),
    ),
    counter(
        "container_pressure_memory_waiting_seconds_total",
        "Total time some tasks were waiting for memory, in whole seconds.",
        NONE,
        Container(|r| secs_us(cg(r)?.pressure.memory?.some_total_us)),
    ),
    gauge(
        "container_processes",
        "Number of processes running inside the container.",
        NONE,
        Container(|r| Some(r.procs?.processes)),
    ),
    gauge(
        "container_sockets",
        "Number of open sockets of the container's processes.",
        NONE,
        Container(|r| Some(r.procs?.sockets)),
    ),
    gauge(
        "container_spec_cpu_period",
        "CPU CFS period of the container, in microseconds.",
        NONE,
        Container(|r| cg(r)?.cpu.period_us),
    ),
    gauge(
        "container_spec_cpu_quota",
        "CPU CFS quota of the container, in microseconds (absent when unlimited).",
        NONE,
        Container(|r| cg(r)?.cpu.quota_us),
    ),
    gauge(
        "container_spec_cpu_shares",
        "CPU shares of the container.",
        NONE,
        Container(|r| cg(r)?.cpu.shares),
    ),
    gauge(
        "container_spec_memory_limit_bytes",
        "Memory limit of the container in bytes (0: no limit).",
        NONE,
        Container(|r| limit(cg(r)?.memory.limit)),
    ),
    gauge(
        "container_spec_memory_reservation_limit_bytes",
        "Memory reservation (soft limit) of the container in bytes (0: none).",
        NONE,
        Container(|r| limit(cg(r)?.memory.reservation)),
    ),
    gauge(
        "container_spec_memory_swap_limit_bytes",
        "Memory swap limit of the container in bytes (0: no limit).",
        NONE,
        Container(|r| limit(cg(r)?.memory.swap_limit)),
    ),
    gauge(
        "container_start_time_seconds",
        "Start time of the container since the Unix epoch, in seconds.",
        NONE,
        Container(|r| Some(r.started_secs)),
    ),
    gauge(
        "container_threads",
        "Number of threads running inside the container.",
        NONE,
        Container(|r| cg(r)?.pids.current),
    ),
    gauge(
        "container_threads_max",
        "Maximum number of threads allowed inside the container (0: no limit).",
        NONE,
        Container(|r| limit(cg(r)?.pids.limit)),
    ),
    gauge(
        "container_ulimits_soft",
        "Soft ulimit values of the container's init process.",
        &["ulimit"],
        Labelled(|r| one(&["max_open_files"], r.open_files_soft)),
    ),
];
