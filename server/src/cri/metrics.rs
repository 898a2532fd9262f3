//! cadvisor-style metrics for `ListMetricDescriptors`, `ListPodSandboxMetrics` and
//! `StreamPodSandboxMetrics`: what kubelet's `/metrics/cadvisor` shows when it takes pod
//! and container stats from the runtime (`PodAndContainerStatsFromCRI`).
//!
//! Every value is read live when asked (so `Metric.timestamp` is 0, as the API wants for
//! uncached values) from the container's cgroup (v1 or v2), its processes in /proc, its
//! writable layer, and the pod's network namespace. A sample is only sent when its source
//! exists on this host; a descriptor whose source is missing (hugetlb without the hugetlb
//! controller, pressure stall information on cgroup v1) is described but has no samples.
//! Values are `u64`: seconds are whole seconds (the fraction is dropped, as CRI-O does),
//! and a limit that is not set is 0.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_proto::v1::{
    ContainerMetrics, Metric, MetricDescriptor, MetricType, PodSandboxMetrics, UInt64Value,
};
use berth_runtime_core::cgroups::Version;

use super::Shared;
use crate::container::{Container, Phase};
use crate::host::clock::now_nanos;
use crate::pod::Sandbox;

/// Labels every metric carries, as kubelet's cadvisor endpoint names them: the
/// Kubernetes container name (empty for pod-level series), the CRI id of the container
/// or pod, the image, the runtime's name for it, and the pod's namespace and name.
const BASE_LABELS: [&str; 6] = ["container", "id", "image", "name", "namespace", "pod"];

/// One metric family.
struct Def {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    /// Labels beyond [`BASE_LABELS`].
    extra: &'static [&'static str],
}

const fn counter(name: &'static str, help: &'static str, extra: &'static [&'static str]) -> Def {
    Def {
        name,
        help,
        kind: MetricType::Counter,
        extra,
    }
}

const fn gauge(name: &'static str, help: &'static str, extra: &'static [&'static str]) -> Def {
    Def {
        name,
        help,
        kind: MetricType::Gauge,
        extra,
    }
}

const DEVICE: &[&str] = &["device"];
const IFACE: &[&str] = &["interface"];

/// Every metric Berth describes: the set kubelet shows from cadvisor, which critest
/// expects a CRI runtime to describe.
const DEFS: &[Def] = &[
    counter(
        "container_blkio_device_usage_total",
        "Blkio device bytes usage.",
        &["device", "major", "minor", "operation"],
    ),
    counter(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        &[],
    ),
    counter(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        &[],
    ),
    counter(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled, in whole seconds.",
        &[],
    ),
    counter(
        "container_cpu_system_seconds_total",
        "Cumulative system CPU time consumed, in whole seconds.",
        &[],
    ),
    counter(
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed, in whole seconds.",
        &["cpu"],
    ),
    counter(
        "container_cpu_user_seconds_total",
        "Cumulative user CPU time consumed, in whole seconds.",
        &[],
    ),
    gauge(
        "container_file_descriptors",
        "Number of open file descriptors of the container's processes.",
        &[],
    ),
    gauge(
        "container_fs_inodes_free",
        "Number of free inodes on the filesystem of the writable layer.",
        DEVICE,
    ),
    gauge(
        "container_fs_inodes_total",
        "Number of inodes on the filesystem of the writable layer.",
        DEVICE,
    ),
    gauge(
        "container_fs_limit_bytes",
        "Size in bytes of the filesystem of the writable layer.",
        DEVICE,
    ),
    counter(
        "container_fs_reads_bytes_total",
        "Cumulative count of bytes read from block devices.",
        DEVICE,
    ),
    counter(
        "container_fs_reads_total",
        "Cumulative count of reads completed on block devices.",
        DEVICE,
    ),
    gauge(
        "container_fs_usage_bytes",
        "Bytes used by the container's writable layer.",
        DEVICE,
    ),
    counter(
        "container_fs_writes_bytes_total",
        "Cumulative count of bytes written to block devices.",
        DEVICE,
    ),
    counter(
        "container_fs_writes_total",
        "Cumulative count of writes completed on block devices.",
        DEVICE,
    ),
    gauge(
        "container_hugetlb_max_usage_bytes",
        "Maximum hugepage usage recorded, in bytes.",
        &["pagesize"],
    ),
    gauge(
        "container_hugetlb_usage_bytes",
        "Current hugepage usage in bytes.",
        &["pagesize"],
    ),
    gauge(
        "container_last_seen",
        "Last time (Unix seconds) the runtime saw the container.",
        &[],
    ),
    gauge(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        &[],
    ),
    counter(
        "container_memory_failcnt",
        "Number of times memory usage hit the limit.",
        &[],
    ),
    counter(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures (page faults).",
        &["failure_type", "scope"],
    ),
    gauge(
        "container_memory_kernel_usage",
        "Size of kernel memory allocated, in bytes.",
        &[],
    ),
    gauge(
        "container_memory_mapped_file",
        "Size of memory mapped files, in bytes.",
        &[],
    ),
    gauge(
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded, in bytes.",
        &[],
    ),
    gauge(
        "container_memory_rss",
        "Size of RSS (anonymous memory), in bytes.",
        &[],
    ),
    gauge(
        "container_memory_swap",
        "Container swap usage, in bytes.",
        &[],
    ),
    gauge(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        &[],
    ),
    gauge(
        "container_memory_working_set_bytes",
        "Current working set (usage minus inactive file cache), in bytes.",
        &[],
    ),
    counter(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        IFACE,
    ),
    counter(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        IFACE,
    ),
    counter(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        IFACE,
    ),
    counter(
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
        IFACE,
    ),
    counter(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        IFACE,
    ),
    counter(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        IFACE,
    ),
    counter(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        IFACE,
    ),
    counter(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
        IFACE,
    ),
    counter(
        "container_oom_events_total",
        "Count of out of memory kills observed for the container.",
        &[],
    ),
    counter(
        "container_pressure_cpu_stalled_seconds_total",
        "Total time all non-idle tasks were stalled waiting for CPU, in whole seconds.",
        &[],
    ),
    counter(
        "container_pressure_cpu_waiting_seconds_total",
        "Total time some tasks were waiting for CPU, in whole seconds.",
        &[],
    ),
    counter(
        "container_pressure_io_stalled_seconds_total",
        "Total time all non-idle tasks were stalled on I/O, in whole seconds.",
        &[],
    ),
    counter(
        "container_pressure_io_waiting_seconds_total",
        "Total time some tasks were waiting on I/O, in whole seconds.",
        &[],
    ),
    counter(
        "container_pressure_memory_stalled_seconds_total",
        "Total time all non-idle tasks were stalled on memory, in whole seconds.",
        &[],
    ),
    counter(
        "container_pressure_memory_waiting_seconds_total",
        "Total time some tasks were waiting for memory, in whole seconds.",
        &[],
    ),
    gauge(
        "container_processes",
        "Number of processes running inside the container.",
        &[],
    ),
    gauge(
        "container_sockets",
        "Number of open sockets of the container's processes.",
        &[],
    ),
    gauge(
        "container_spec_cpu_period",
        "CPU CFS period of the container, in microseconds.",
        &[],
    ),
    gauge(
        "container_spec_cpu_quota",
        "CPU CFS quota of the container, in microseconds (absent when unlimited).",
        &[],
    ),
    gauge(
        "container_spec_cpu_shares",
        "CPU shares of the container.",
        &[],
    ),
    gauge(
        "container_spec_memory_limit_bytes",
        "Memory limit of the container in bytes (0: no limit).",
        &[],
    ),
    gauge(
        "container_spec_memory_reservation_limit_bytes",
        "Memory reservation (soft limit) of the container in bytes (0: none).",
        &[],
    ),
    gauge(
        "container_spec_memory_swap_limit_bytes",
        "Memory swap limit of the container in bytes (0: no limit).",
        &[],
    ),
    gauge(
        "container_start_time_seconds",
        "Start time of the container since the Unix epoch, in seconds.",
        &[],
    ),
    gauge(
        "container_threads",
        "Number of threads running inside the container.",
        &[],
    ),
    gauge(
        "container_threads_max",
        "Maximum number of threads allowed inside the container (0: no limit).",
        &[],
    ),
    gauge(
        "container_ulimits_soft",
        "Soft ulimit values of the container's init process.",
        &["ulimit"],
    ),
];

fn def(name: &str) -> Option<&'static Def> {
    DEFS.iter().find(|d| d.name == name)
}

/// A descriptor's label keys, sorted as the API asks.
fn label_keys(d: &Def) -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = BASE_LABELS.iter().chain(d.extra).copied().collect();
    keys.sort_unstable();
    keys
}

/// `ListMetricDescriptors`.
pub fn descriptors() -> Vec<MetricDescriptor> {
    DEFS.iter()
        .map(|d| MetricDescriptor {
            name: d.name.to_owned(),
            help: d.help.to_owned(),
            label_keys: label_keys(d).into_iter().map(str::to_owned).collect(),
        })
        .collect()
}

/// One measured value, before the base labels are added.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sample {
    name: &'static str,
    extra: Vec<(&'static str, String)>,
    value: u64,
}

fn sample(name: &'static str, value: u64) -> Sample {
    Sample {
        name,
        extra: Vec::new(),
        value,
    }
}

fn labelled(name: &'static str, extra: Vec<(&'static str, String)>, value: u64) -> Sample {
    Sample { name, extra, value }
}

/// Turns samples into CRI metrics with `base` (one value per [`BASE_LABELS`] entry).
fn to_metrics(base: &[String; 6], samples: Vec<Sample>) -> Vec<Metric> {
    samples
        .into_iter()
        .filter_map(|s| {
            let d = def(s.name)?;
            let mut values: BTreeMap<&str, String> = BASE_LABELS
                .iter()
                .copied()
                .zip(base.iter().cloned())
                .collect();
            values.extend(s.extra);
            let label_values = label_keys(d)
                .into_iter()
                .map(|k| values.remove(k).unwrap_or_default())
                .collect();
            Some(Metric {
                name: d.name.to_owned(),
                // Gathered live: 0, so kubelet does not treat it as cached.
                timestamp: 0,
                metric_type: d.kind as i32,
                label_values,
                value: Some(UInt64Value { value: s.value }),
            })
        })
        .collect()
}

/// `ListPodSandboxMetrics` (blocking: reads cgroups, /proc and the pods' netns).
pub fn list_pod_metrics(shared: &Shared) -> Vec<PodSandboxMetrics> {
    shared
        .pods
        .all()
        .into_iter()
        .map(|sb| pod_metrics(shared, &sb))
        .collect()
}

fn pod_metrics(shared: &Shared, sb: &Sandbox) -> PodSandboxMetrics {
    let meta = sb.config.metadata.clone().unwrap_or_default();
    let pod_base = [
        String::new(),
        sb.id.clone(),
        String::new(),
        meta.name.clone(),
        meta.namespace.clone(),
        meta.name.clone(),
    ];
    let network = sb
        .state()
        .pins
        .net
        .as_deref()
        .and_then(|netns| super::stats::netns_net_dev(netns).ok())
        .map(|text| network_samples(&text))
        .unwrap_or_default();
    let container_metrics = shared
        .containers
        .of_pod(&sb.id)
        .into_iter()
        .filter(|c| matches!(c.state().phase, Phase::Created | Phase::Running))
        .map(|c| {
            let base = [
                c.config
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_default(),
                c.id.clone(),
                c.image_name.clone(),
                c.name_key.clone(),
                meta.namespace.clone(),
                meta.name.clone(),
            ];
            ContainerMetrics {
                container_id: c.id.clone(),
                metrics: to_metrics(&base, container_samples(shared, &c)),
            }
        })
        .collect();
    PodSandboxMetrics {
        pod_sandbox_id: sb.id.clone(),
        metrics: to_metrics(&pod_base, network),
        container_metrics,
    }
}

/// Everything measured for one created or running container.
fn container_samples(shared: &Shared, c: &Container) -> Vec<Sample> {
    let now_secs = u64::try_from(now_nanos() / 1_000_000_000).unwrap_or(0);
    let st = c.state();
    let started = if st.started_at > 0 {
        st.started_at
    } else {
        c.created_at
    };
    let mut out = vec![
        sample("container_last_seen", now_secs),
        sample(
            "container_start_time_seconds",
            u64::try_from(started / 1_000_000_000).unwrap_or(0),
        ),
    ];
    let runtime = berth_runtime_core::Container::load(&shared.containers.runtime_root(), &c.id);
    if let Ok(rt) = &runtime
        && let Some(cg) = rt.cgroup()
    {
        let files = CgroupFiles {
            version: cg.version,
            root: cg.root.clone(),
            rel: cg.path.strip_prefix("/").unwrap_or(&cg.path).to_path_buf(),
        };
        out.extend(files.samples());
        if let Ok(pids) = cg.procs() {
            out.extend(process_samples(&pids));
        }
    }
    if st.pid > 0 {
        out.extend(ulimit_samples(st.pid));
    }
    // The writable layer: where the container manager keeps it (`<root>/containers/<id>/upper`).
    let upper = shared
        .config
        .root_dir
        .join("containers")
        .join(&c.id)
        .join("upper");
    out.extend(fs_samples(&upper));
    out
}

/// A cgroup's files (v1: one directory per controller; v2: one directory).
struct CgroupFiles {
    version: Version,
    root: PathBuf,
    rel: PathBuf,
}

impl CgroupFiles {
    fn dir(&self, controller: &str) -> PathBuf {
        match self.version {
            Version::V1 => self.root.join(controller).join(&self.rel),
            Version::V2 => self.root.join(&self.rel),
        }
    }

    fn path(&self, controller: &str, file: &str) -> PathBuf {
        self.dir(controller).join(file)
    }

    fn read(&self, controller: &str, file: &str) -> Option<String> {
        std::fs::read_to_string(self.path(controller, file)).ok()
    }

    fn u64(&self, controller: &str, file: &str) -> Option<u64> {
        self.read(controller, file)?.trim().parse().ok()
    }

    /// A limit file: "max" or a v1 "unlimited" sentinel becomes 0.
    fn limit(&self, controller: &str, file: &str) -> Option<u64> {
        parse_limit(&self.read(controller, file)?)
    }

    fn samples(&self) -> Vec<Sample> {
        let mut out = match self.version {
            Version::V1 => self.v1_samples(),
            Version::V2 => self.v2_samples(),
        };
        // Pressure stall information: in every v2 cgroup; in v1 only with psi=1 and
        // the cgroup1 psi boot option, under cpuacct.
        let psi_controller = "cpuacct";
        for (res, stalled, waiting) in [
            (
                "cpu",
                "container_pressure_cpu_stalled_seconds_total",
                "container_pressure_cpu_waiting_seconds_total",
            ),
            (
                "io",
                "container_pressure_io_stalled_seconds_total",
                "container_pressure_io_waiting_seconds_total",
            ),
            (
                "memory",
                "container_pressure_memory_stalled_seconds_total",
                "container_pressure_memory_waiting_seconds_total",
            ),
        ] {
            if let Some(text) = self.read(psi_controller, &format!("{res}.pressure")) {
                let (some, full) = parse_psi_totals(&text);
                if let Some(us) = some {
                    out.push(sample(waiting, us / 1_000_000));
                }
                if let Some(us) = full {
                    out.push(sample(stalled, us / 1_000_000));
                }
            }
        }
        out.extend(self.hugetlb_samples());
        out
    }

    fn v1_samples(&self) -> Vec<Sample> {
        let mut out = Vec::new();
        if let Some(ns) = self.u64("cpuacct", "cpuacct.usage") {
            out.push(labelled(
                "container_cpu_usage_seconds_total",
                vec![("cpu", "total".into())],
                ns / 1_000_000_000,
            ));
        }
        let (user, system) = match (
            self.u64("cpuacct", "cpuacct.usage_user"),
            self.u64("cpuacct", "cpuacct.usage_sys"),
        ) {
            (Some(u), Some(s)) => (Some(u), Some(s)),
            _ => {
                // Older kernels: cpuacct.stat in USER_HZ ticks.
                let stat = self.read("cpuacct", "cpuacct.stat").unwrap_or_default();
                let tick_ns = 1_000_000_000 / clock_ticks();
                (
                    keyed(&stat, "user").map(|t| t * tick_ns),
                    keyed(&stat, "system").map(|t| t * tick_ns),
                )
            }
        };
        if let Some(ns) = user {
            out.push(sample(
                "container_cpu_user_seconds_total",
                ns / 1_000_000_000,
            ));
        }
        if let Some(ns) = system {
            out.push(sample(
                "container_cpu_system_seconds_total",
                ns / 1_000_000_000,
            ));
        }
        if let Some(stat) = self.read("cpu", "cpu.stat") {
            push_keyed(
                &mut out,
                &stat,
                "nr_periods",
                "container_cpu_cfs_periods_total",
            );
            push_keyed(
                &mut out,
                &stat,
                "nr_throttled",
                "container_cpu_cfs_throttled_periods_total",
            );
            if let Some(ns) = keyed(&stat, "throttled_time") {
                out.push(sample(
                    "container_cpu_cfs_throttled_seconds_total",
                    ns / 1_000_000_000,
                ));
            }
        }
        if let Some(p) = self.u64("cpu", "cpu.cfs_period_us") {
            out.push(sample("container_spec_cpu_period", p));
        }
        // -1 is "no quota": no sample, as cadvisor does.
        if let Some(q) = self
            .read("cpu", "cpu.cfs_quota_us")
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            out.push(sample("container_spec_cpu_quota", q));
        }
        if let Some(s) = self.u64("cpu", "cpu.shares") {
            out.push(sample("container_spec_cpu_shares", s));
        }

        let stat = self.read("memory", "memory.stat").unwrap_or_default();
        let usage = self.u64("memory", "memory.usage_in_bytes");
        if let Some(u) = usage {
            out.push(sample("container_memory_usage_bytes", u));
            let inactive = keyed(&stat, "total_inactive_file").unwrap_or(0);
            out.push(sample(
                "container_memory_working_set_bytes",
                u.saturating_sub(inactive),
            ));
        }
        push_keyed(&mut out, &stat, "total_cache", "container_memory_cache");
        push_keyed(&mut out, &stat, "total_rss", "container_memory_rss");
        push_keyed(
            &mut out,
            &stat,
            "total_mapped_file",
            "container_memory_mapped_file",
        );
        for (key, kind, scope) in [
            ("pgfault", "pgfault", "container"),
            ("pgmajfault", "pgmajfault", "container"),
            ("total_pgfault", "pgfault", "hierarchy"),
            ("total_pgmajfault", "pgmajfault", "hierarchy"),
        ] {
            if let Some(v) = keyed(&stat, key) {
                out.push(labelled(
                    "container_memory_failures_total",
                    vec![("failure_type", kind.into()), ("scope", scope.into())],
                    v,
                ));
            }
        }
        // Swap: memory+swap usage minus memory usage (needs swap accounting).
        match (self.u64("memory", "memory.memsw.usage_in_bytes"), usage) {
            (Some(memsw), Some(u)) => {
                out.push(sample("container_memory_swap", memsw.saturating_sub(u)));
            }
            _ => push_keyed(&mut out, &stat, "total_swap", "container_memory_swap"),
        }
        if let Some(v) = self.u64("memory", "memory.max_usage_in_bytes") {
            out.push(sample("container_memory_max_usage_bytes", v));
        }
        if let Some(v) = self.u64("memory", "memory.failcnt") {
            out.push(sample("container_memory_failcnt", v));
        }
        if let Some(v) = self.u64("memory", "memory.kmem.usage_in_bytes") {
            out.push(sample("container_memory_kernel_usage", v));
        }
        if let Some(oom) = self.read("memory", "memory.oom_control")
            && let Some(v) = keyed(&oom, "oom_kill")
        {
            out.push(sample("container_oom_events_total", v));
        }
        if let Some(v) = self.limit("memory", "memory.limit_in_bytes") {
            out.push(sample("container_spec_memory_limit_bytes", v));
        }
        if let Some(v) = self.limit("memory", "memory.soft_limit_in_bytes") {
            out.push(sample("container_spec_memory_reservation_limit_bytes", v));
        }
        if let Some(v) = self.limit("memory", "memory.memsw.limit_in_bytes") {
            out.push(sample("container_spec_memory_swap_limit_bytes", v));
        }
        if let Some(v) = self.u64("pids", "pids.current") {
            out.push(sample("container_threads", v));
        }
        if let Some(v) = self.limit("pids", "pids.max") {
            out.push(sample("container_threads_max", v));
        }
        let bytes = self
            .read("blkio", "blkio.throttle.io_service_bytes_recursive")
            .unwrap_or_default();
        let ios = self
            .read("blkio", "blkio.throttle.io_serviced_recursive")
            .unwrap_or_default();
        out.extend(block_io_samples(
            &parse_blkio_v1(&bytes),
            &parse_blkio_v1(&ios),
        ));
        out
    }

    fn v2_samples(&self) -> Vec<Sample> {
        let mut out = Vec::new();
        if let Some(stat) = self.read("cpu", "cpu.stat") {
            if let Some(us) = keyed(&stat, "usage_usec") {
                out.push(labelled(
                    "container_cpu_usage_seconds_total",
                    vec![("cpu", "total".into())],
                    us / 1_000_000,
                ));
            }
            for (key, name) in [
                ("user_usec", "container_cpu_user_seconds_total"),
                ("system_usec", "container_cpu_system_seconds_total"),
                (
                    "throttled_usec",
                    "container_cpu_cfs_throttled_seconds_total",
                ),
            ] {
                if let Some(us) = keyed(&stat, key) {
                    out.push(sample(name, us / 1_000_000));
                }
            }
            push_keyed(
                &mut out,
                &stat,
                "nr_periods",
                "container_cpu_cfs_periods_total",
            );
            push_keyed(
                &mut out,
                &stat,
                "nr_throttled",
                "container_cpu_cfs_throttled_periods_total",
            );
        }
        if let Some(max) = self.read("cpu", "cpu.max") {
            let mut parts = max.split_whitespace();
            let quota = parts.next().and_then(|q| q.parse::<u64>().ok());
            if let Some(period) = parts.next().and_then(|p| p.parse::<u64>().ok()) {
                out.push(sample("container_spec_cpu_period", period));
            }
            if let Some(q) = quota {
                out.push(sample("container_spec_cpu_quota", q));
            }
        }
        if let Some(w) = self.u64("cpu", "cpu.weight") {
            out.push(sample("container_spec_cpu_shares", weight_to_shares(w)));
        }

        let stat = self.read("memory", "memory.stat").unwrap_or_default();
        if let Some(u) = self.u64("memory", "memory.current") {
            out.push(sample("container_memory_usage_bytes", u));
            let inactive = keyed(&stat, "inactive_file").unwrap_or(0);
            out.push(sample(
                "container_memory_working_set_bytes",
                u.saturating_sub(inactive),
            ));
        }
        push_keyed(&mut out, &stat, "file", "container_memory_cache");
        push_keyed(&mut out, &stat, "anon", "container_memory_rss");
        push_keyed(
            &mut out,
            &stat,
            "file_mapped",
            "container_memory_mapped_file",
        );
        // "kernel" exists since Linux 5.18; before, the parts it sums.
        let kernel = keyed(&stat, "kernel").or_else(|| {
            let parts: Vec<u64> = ["kernel_stack", "pagetables", "percpu", "sock", "slab"]
                .iter()
                .filter_map(|k| keyed(&stat, k))
                .collect();
            (!parts.is_empty()).then(|| parts.iter().sum())
        });
        if let Some(k) = kernel {
            out.push(sample("container_memory_kernel_usage", k));
        }
        // v2 memory.stat is hierarchical: both scopes are the same counters.
        for scope in ["container", "hierarchy"] {
            for kind in ["pgfault", "pgmajfault"] {
                if let Some(v) = keyed(&stat, kind) {
                    out.push(labelled(
                        "container_memory_failures_total",
                        vec![("failure_type", kind.into()), ("scope", scope.into())],
                        v,
                    ));
                }
            }
        }
        if let Some(v) = self.u64("memory", "memory.swap.current") {
            out.push(sample("container_memory_swap", v));
        }
        if let Some(v) = self.u64("memory", "memory.peak") {
            out.push(sample("container_memory_max_usage_bytes", v));
        }
        if let Some(ev) = self.read("memory", "memory.events") {
            push_keyed(&mut out, &ev, "max", "container_memory_failcnt");
            push_keyed(&mut out, &ev, "oom_kill", "container_oom_events_total");
        }
        if let Some(v) = self.limit("memory", "memory.max") {
            out.push(sample("container_spec_memory_limit_bytes", v));
        }
        if let Some(v) = self.limit("memory", "memory.low") {
            out.push(sample("container_spec_memory_reservation_limit_bytes", v));
        }
        if let Some(v) = self.limit("memory", "memory.swap.max") {
            out.push(sample("container_spec_memory_swap_limit_bytes", v));
        }
        if let Some(v) = self.u64("pids", "pids.current") {
            out.push(sample("container_threads", v));
        }
        if let Some(v) = self.limit("pids", "pids.max") {
            out.push(sample("container_threads_max", v));
        }
        let (bytes, ios) = parse_io_stat_v2(&self.read("io", "io.stat").unwrap_or_default());
        out.extend(block_io_samples(&bytes, &ios));
        out
    }

    /// `hugetlb.<size>.usage_in_bytes` / `max_usage_in_bytes` (v1) or
    /// `hugetlb.<size>.current` (v2, which keeps no maximum).
    fn hugetlb_samples(&self) -> Vec<Sample> {
        let dir = self.dir("hugetlb");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        let mut out = Vec::new();
        for file in names {
            let Some(rest) = file.strip_prefix("hugetlb.") else {
                continue;
            };
            let (size, name) = match (self.version, rest.split_once('.')) {
                (Version::V1, Some((size, "usage_in_bytes"))) => {
                    (size, "container_hugetlb_usage_bytes")
                }
                (Version::V1, Some((size, "max_usage_in_bytes"))) => {
                    (size, "container_hugetlb_max_usage_bytes")
                }
                (Version::V2, Some((size, "current"))) => (size, "container_hugetlb_usage_bytes"),
                _ => continue,
            };
            if let Some(v) = std::fs::read_to_string(dir.join(&file))
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                out.push(labelled(name, vec![("pagesize", size.to_owned())], v));
            }
        }
        out
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf(3) only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// `key value` lines (memory.stat, cpu.stat, memory.events, oom_control).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn push_keyed(out: &mut Vec<Sample>, text: &str, key: &str, name: &'static str) {
    if let Some(v) = keyed(text, key) {
        out.push(sample(name, v));
    }
}

/// "max", or v1's "no limit" (a page-rounded `LLONG_MAX`), reads as 0.
fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return Some(0);
    }
    let v: u64 = t.parse().ok()?;
    Some(if v >= 1 << 62 { 0 } else { v })
}

/// The inverse of the cgroup v2 shares→weight mapping runc and crun use.
fn weight_to_shares(weight: u64) -> u64 {
    if weight == 0 {
        return 0;
    }
    2 + (weight - 1) * 262_142 / 9_999
}

/// `some ... total=N` and `full ... total=N` of a `*.pressure` file (µs).
fn parse_psi_totals(text: &str) -> (Option<u64>, Option<u64>) {
    let total = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))?
            .split_whitespace()
            .find_map(|f| f.strip_prefix("total="))?
            .parse()
            .ok()
    };
    (total("some "), total("full "))
}

/// Per device (`major:minor`) and operation (`Read`, `Write`, ...), a count.
type DeviceCounts = BTreeMap<(u32, u32), BTreeMap<String, u64>>;

/// v1 `blkio.throttle.io_service_bytes_recursive` / `io_serviced_recursive`:
/// `8:0 Read 4096` lines and a closing `Total N`.
fn parse_blkio_v1(text: &str) -> DeviceCounts {
    let mut out = DeviceCounts::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [dev, op, value] = f.as_slice() else {
            continue;
        };
        let (Some(dev), Ok(value)) = (parse_dev(dev), value.parse::<u64>()) else {
            continue;
        };
        out.entry(dev).or_default().insert((*op).to_owned(), value);
    }
    out
}

/// v2 `io.stat`: `8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6`, as bytes and
/// I/O counts per operation (named as v1 names them).
fn parse_io_stat_v2(text: &str) -> (DeviceCounts, DeviceCounts) {
    let mut bytes = DeviceCounts::new();
    let mut ios = DeviceCounts::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(dev) = f.next().and_then(parse_dev) else {
            continue;
        };
        for kv in f {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(v) = v.parse::<u64>() else { continue };
            let (map, op) = match k {
                "rbytes" => (&mut bytes, "Read"),
                "wbytes" => (&mut bytes, "Write"),
                "dbytes" => (&mut bytes, "Discard"),
                "rios" => (&mut ios, "Read"),
                "wios" => (&mut ios, "Write"),
                "dios" => (&mut ios, "Discard"),
                _ => continue,
            };
            map.entry(dev).or_default().insert(op.to_owned(), v);
        }
    }
    (bytes, ios)
}

fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (ma, mi) = s.split_once(':')?;
    Some((ma.parse().ok()?, mi.parse().ok()?))
}

/// A block device's name as /dev shows it (`/dev/vda`), else `major:minor`.
fn device_name((major, minor): (u32, u32)) -> String {
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|u| {
            u.lines()
                .find_map(|l| l.strip_prefix("DEVNAME="))
                .map(|n| format!("/dev/{n}"))
        })
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

fn block_io_samples(bytes: &DeviceCounts, ios: &DeviceCounts) -> Vec<Sample> {
    let mut out = Vec::new();
    for (&dev, ops) in bytes {
        let name = device_name(dev);
        for (op, &v) in ops {
            out.push(labelled(
                "container_blkio_device_usage_total",
                vec![
                    ("device", name.clone()),
                    ("major", dev.0.to_string()),
                    ("minor", dev.1.to_string()),
                    ("operation", op.clone()),
                ],
                v,
            ));
        }
        for (op, metric) in [
            ("Read", "container_fs_reads_bytes_total"),
            ("Write", "container_fs_writes_bytes_total"),
        ] {
            if let Some(&v) = ops.get(op) {
                out.push(labelled(metric, vec![("device", name.clone())], v));
            }
        }
    }
    for (&dev, ops) in ios {
        let name = device_name(dev);
        for (op, metric) in [
            ("Read", "container_fs_reads_total"),
            ("Write", "container_fs_writes_total"),
        ] {
            if let Some(&v) = ops.get(op) {
                out.push(labelled(metric, vec![("device", name.clone())], v));
            }
        }
    }
    out
}

/// Processes, open descriptors and sockets of the pids in the container's cgroup.
fn process_samples(pids: &[i32]) -> Vec<Sample> {
    let mut fds = 0u64;
    let mut sockets = 0u64;
    for pid in pids {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in entries.flatten() {
            fds += 1;
            if std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
            {
                sockets += 1;
            }
        }
    }
    vec![
        sample("container_processes", pids.len() as u64),
        sample("container_file_descriptors", fds),
        sample("container_sockets", sockets),
    ]
}

/// The soft limit on open files of the container's init process (what cadvisor
/// reports as `max_open_files`); nothing when unlimited, which a `u64` cannot say.
fn ulimit_samples(pid: i32) -> Vec<Sample> {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|t| soft_open_files(&t))
        .map(|v| {
            vec![labelled(
                "container_ulimits_soft",
                vec![("ulimit", "max_open_files".into())],
                v,
            )]
        })
        .unwrap_or_default()
}

/// The soft limit column of the `Max open files` line of /proc/<pid>/limits.
fn soft_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Usage of the writable layer, and the size and inodes of the filesystem it is on.
fn fs_samples(upper: &Path) -> Vec<Sample> {
    let Ok(meta) = std::fs::metadata(upper) else {
        return Vec::new();
    };
    let dev = meta.dev();
    let device = device_name((libc::major(dev), libc::minor(dev)));
    let d = |name| labelled(name, vec![("device", device.clone())], 0);
    let mut out = Vec::new();
    if let Ok(usage) = crate::host::fsinfo::usage(upper) {
        out.push(Sample {
            value: usage.used_bytes,
            ..d("container_fs_usage_bytes")
        });
    }
    if let Ok(st) = rustix::fs::statvfs(upper) {
        out.push(Sample {
            value: st.f_blocks.saturating_mul(st.f_frsize),
            ..d("container_fs_limit_bytes")
        });
        out.push(Sample {
            value: st.f_files,
            ..d("container_fs_inodes_total")
        });
        out.push(Sample {
            value: st.f_ffree,
            ..d("container_fs_inodes_free")
        });
    }
    out
}

/// Network counters of the pod's interfaces (loopback left out, as cadvisor does),
/// from the text of /proc/net/dev read inside the pod's network namespace, parsed by
/// the same function as the pod stats (`stats::pod_interfaces`).
fn network_samples(net_dev: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for i in super::stats::pod_interfaces(net_dev) {
        for (name, value) in [
            ("container_network_receive_bytes_total", i.rx_bytes),
            ("container_network_receive_packets_total", i.rx_packets),
            ("container_network_receive_errors_total", i.rx_errors),
            (
                "container_network_receive_packets_dropped_total",
                i.rx_dropped,
            ),
            ("container_network_transmit_bytes_total", i.tx_bytes),
            ("container_network_transmit_packets_total", i.tx_packets),
            ("container_network_transmit_errors_total", i.tx_errors),
            (
                "container_network_transmit_packets_dropped_total",
                i.tx_dropped,
            ),
        ] {
            out.push(labelled(name, vec![("interface", i.name.clone())], value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What critest v1.37.0 (`pkg/validate/pod.go`) expects a runtime to describe.
    const CRITEST_EXPECTED: &[&str] = &[
        "container_blkio_device_usage_total",
        "container_cpu_cfs_periods_total",
        "container_cpu_cfs_throttled_periods_total",
        "container_cpu_cfs_throttled_seconds_total",
        "container_cpu_system_seconds_total",
        "container_cpu_usage_seconds_total",
        "container_cpu_user_seconds_total",
        "container_file_descriptors",
        "container_fs_inodes_free",
        "container_fs_inodes_total",
        "container_fs_limit_bytes",
        "container_fs_reads_bytes_total",
        "container_fs_reads_total",
        "container_fs_usage_bytes",
        "container_fs_writes_bytes_total",
        "container_fs_writes_total",
        "container_hugetlb_max_usage_bytes",
        "container_hugetlb_usage_bytes",
        "container_last_seen",
        "container_memory_cache",
        "container_memory_failcnt",
        "container_memory_failures_total",
        "container_memory_kernel_usage",
        "container_memory_mapped_file",
        "container_memory_max_usage_bytes",
        "container_memory_rss",
        "container_memory_swap",
        "container_memory_usage_bytes",
        "container_memory_working_set_bytes",
        "container_network_receive_bytes_total",
        "container_network_receive_errors_total",
        "container_network_receive_packets_dropped_total",
        "container_network_receive_packets_total",
        "container_network_transmit_bytes_total",
        "container_network_transmit_errors_total",
        "container_network_transmit_packets_dropped_total",
        "container_network_transmit_packets_total",
        "container_oom_events_total",
        "container_pressure_cpu_stalled_seconds_total",
        "container_pressure_cpu_waiting_seconds_total",
        "container_pressure_io_stalled_seconds_total",
        "container_pressure_io_waiting_seconds_total",
        "container_pressure_memory_stalled_seconds_total",
        "container_pressure_memory_waiting_seconds_total",
        "container_processes",
        "container_sockets",
        "container_spec_cpu_period",
        "container_spec_cpu_quota",
        "container_spec_cpu_shares",
        "container_spec_memory_limit_bytes",
        "container_spec_memory_reservation_limit_bytes",
        "container_spec_memory_swap_limit_bytes",
        "container_start_time_seconds",
        "container_threads",
        "container_threads_max",
        "container_ulimits_soft",
    ];

    #[test]
    fn descriptors_cover_critest_and_have_help_and_sorted_labels() {
        let descs = descriptors();
        let mut names: Vec<&str> = descs.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, CRITEST_EXPECTED);
        for d in &descs {
            assert!(!d.help.is_empty(), "{} has no help", d.name);
            let mut sorted = d.label_keys.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted, d.label_keys, "{} keys unsorted or repeated", d.name);
            for base in BASE_LABELS {
                assert!(d.label_keys.iter().any(|k| k == base), "{}", d.name);
            }
        }
    }

    fn value(samples: &[Sample], name: &str) -> Option<u64> {
        samples.iter().find(|s| s.name == name).map(|s| s.value)
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    #[test]
    fn v1_cgroup_files_become_samples() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = tmp.path();
        let c = "kubepods/pod1/ctr";
        write(r, &format!("cpuacct/{c}/cpuacct.usage"), "3500000000\n");
        write(
            r,
            &format!("cpuacct/{c}/cpuacct.usage_user"),
            "2100000000\n",
        );
        write(r, &format!("cpuacct/{c}/cpuacct.usage_sys"), "1400000000\n");
        write(
            r,
            &format!("cpu/{c}/cpu.stat"),
            "nr_periods 40\nnr_throttled 7\nthrottled_time 2500000000\n",
        );
        write(r, &format!("cpu/{c}/cpu.cfs_period_us"), "100000\n");
        write(r, &format!("cpu/{c}/cpu.cfs_quota_us"), "-1\n");
        write(r, &format!("cpu/{c}/cpu.shares"), "1024\n");
        write(
            r,
            &format!("memory/{c}/memory.stat"),
            "cache 1\nrss 2\ntotal_cache 4096\ntotal_rss 8192\ntotal_mapped_file 1024\n\
             total_inactive_file 2048\npgfault 10\npgmajfault 1\ntotal_pgfault 12\ntotal_pgmajfault 2\n",
        );
        write(r, &format!("memory/{c}/memory.usage_in_bytes"), "20480\n");
        write(
            r,
            &format!("memory/{c}/memory.memsw.usage_in_bytes"),
            "24576\n",
        );
        write(
            r,
            &format!("memory/{c}/memory.max_usage_in_bytes"),
            "30000\n",
        );
        write(r, &format!("memory/{c}/memory.failcnt"), "3\n");
        write(
            r,
            &format!("memory/{c}/memory.kmem.usage_in_bytes"),
            "512\n",
        );
        write(
            r,
            &format!("memory/{c}/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        write(
            r,
            &format!("memory/{c}/memory.limit_in_bytes"),
            "67108864\n",
        );
        write(
            r,
            &format!("memory/{c}/memory.soft_limit_in_bytes"),
            "9223372036854771712\n",
        );
        write(
            r,
            &format!("memory/{c}/memory.memsw.limit_in_bytes"),
            "67108864\n",
        );
        write(r, &format!("pids/{c}/pids.current"), "5\n");
        write(r, &format!("pids/{c}/pids.max"), "max\n");
        write(
            r,
            &format!("blkio/{c}/blkio.throttle.io_service_bytes_recursive"),
            "254:0 Read 8192\n254:0 Write 4096\n254:0 Sync 0\n254:0 Total 12288\nTotal 12288\n",
        );
        write(
            r,
            &format!("blkio/{c}/blkio.throttle.io_serviced_recursive"),
            "254:0 Read 2\n254:0 Write 1\nTotal 3\n",
        );
        let files = CgroupFiles {
            version: Version::V1,
            root: r.to_path_buf(),
            rel: PathBuf::from(c),
        };
        let s = files.samples();
        let v = |n| value(&s, n);
        assert_eq!(v("container_cpu_usage_seconds_total"), Some(3));
        assert_eq!(v("container_cpu_user_seconds_total"), Some(2));
        assert_eq!(v("container_cpu_system_seconds_total"), Some(1));
        assert_eq!(v("container_cpu_cfs_periods_total"), Some(40));
        assert_eq!(v("container_cpu_cfs_throttled_periods_total"), Some(7));
        assert_eq!(v("container_cpu_cfs_throttled_seconds_total"), Some(2));
        assert_eq!(v("container_spec_cpu_period"), Some(100_000));
        assert_eq!(v("container_spec_cpu_quota"), None, "-1 is no quota");
        assert_eq!(v("container_spec_cpu_shares"), Some(1024));
        assert_eq!(v("container_memory_usage_bytes"), Some(20480));
        assert_eq!(v("container_memory_working_set_bytes"), Some(18432));
        assert_eq!(v("container_memory_cache"), Some(4096));
        assert_eq!(v("container_memory_rss"), Some(8192));
        assert_eq!(v("container_memory_mapped_file"), Some(1024));
        assert_eq!(v("container_memory_swap"), Some(4096));
        assert_eq!(v("container_memory_max_usage_bytes"), Some(30000));
        assert_eq!(v("container_memory_failcnt"), Some(3));
        assert_eq!(v("container_memory_kernel_usage"), Some(512));
        assert_eq!(v("container_oom_events_total"), Some(2));
        assert_eq!(v("container_spec_memory_limit_bytes"), Some(67_108_864));
        assert_eq!(v("container_spec_memory_reservation_limit_bytes"), Some(0));
        assert_eq!(
            v("container_spec_memory_swap_limit_bytes"),
            Some(67_108_864)
        );
        assert_eq!(v("container_threads"), Some(5));
        assert_eq!(v("container_threads_max"), Some(0));
        let faults: Vec<_> = s
            .iter()
            .filter(|x| x.name == "container_memory_failures_total")
            .map(|x| (x.extra.clone(), x.value))
            .collect();
        assert!(faults.contains(&(
            vec![
                ("failure_type", "pgfault".to_owned()),
                ("scope", "hierarchy".to_owned())
            ],
            12
        )));
        assert_eq!(faults.len(), 4);
        assert_eq!(v("container_fs_reads_bytes_total"), Some(8192));
        assert_eq!(v("container_fs_writes_bytes_total"), Some(4096));
        assert_eq!(v("container_fs_reads_total"), Some(2));
        assert_eq!(v("container_fs_writes_total"), Some(1));
        let blkio = s
            .iter()
            .filter(|x| x.name == "container_blkio_device_usage_total")
            .count();
        assert_eq!(blkio, 4, "Read, Write, Sync, Total of one device");
        // No PSI and no hugetlb files in this fixture: no samples, not zeros.
        assert_eq!(v("container_pressure_cpu_waiting_seconds_total"), None);
        assert_eq!(v("container_hugetlb_usage_bytes"), None);
    }

    #[test]
    fn v1_cpuacct_stat_ticks_when_usage_user_is_missing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = tmp.path();
        write(r, "cpuacct/c/cpuacct.stat", "user 250\nsystem 100\n");
        let files = CgroupFiles {
            version: Version::V1,
            root: r.to_path_buf(),
            rel: PathBuf::from("c"),
        };
        let s = files.samples();
        let hz = clock_ticks();
        assert_eq!(
            value(&s, "container_cpu_user_seconds_total"),
            Some(250 / hz)
        );
        assert_eq!(
            value(&s, "container_cpu_system_seconds_total"),
            Some(100 / hz)
        );
    }

    #[test]
    fn v2_cgroup_files_become_samples() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = tmp.path();
        let c = "kubepods.slice/ctr";
        write(
            r,
            &format!("{c}/cpu.stat"),
            "usage_usec 4200000\nuser_usec 3100000\nsystem_usec 1100000\nnr_periods 9\n\
             nr_throttled 4\nthrottled_usec 1500000\n",
        );
        write(r, &format!("{c}/cpu.max"), "20000 100000\n");
        write(r, &format!("{c}/cpu.weight"), "100\n");
        write(
            r,
            &format!("{c}/memory.stat"),
            "anon 8192\nfile 4096\nkernel 700\nfile_mapped 1024\ninactive_file 1000\npgfault 33\npgmajfault 3\n",
        );
        write(r, &format!("{c}/memory.current"), "16000\n");
        write(r, &format!("{c}/memory.peak"), "17000\n");
        write(r, &format!("{c}/memory.swap.current"), "0\n");
        write(
            r,
            &format!("{c}/memory.events"),
            "low 0\nhigh 0\nmax 6\noom 1\noom_kill 1\n",
        );
        write(r, &format!("{c}/memory.max"), "max\n");
        write(r, &format!("{c}/memory.low"), "1048576\n");
        write(r, &format!("{c}/memory.swap.max"), "max\n");
        write(r, &format!("{c}/pids.current"), "3\n");
        write(r, &format!("{c}/pids.max"), "1024\n");
        write(
            r,
            &format!("{c}/io.stat"),
            "8:0 rbytes=1000 wbytes=2000 rios=10 wios=20 dbytes=0 dios=0\n",
        );
        write(
            r,
            &format!("{c}/cpu.pressure"),
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=3000000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\n",
        );
        write(
            r,
            &format!("{c}/memory.pressure"),
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        );
        write(r, &format!("{c}/hugetlb.2MB.current"), "2097152\n");
        write(r, &format!("{c}/hugetlb.2MB.max"), "max\n");
        let files = CgroupFiles {
            version: Version::V2,
            root: r.to_path_buf(),
            rel: PathBuf::from(c),
        };
        let s = files.samples();
        let v = |n| value(&s, n);
        assert_eq!(v("container_cpu_usage_seconds_total"), Some(4));
        assert_eq!(v("container_cpu_user_seconds_total"), Some(3));
        assert_eq!(v("container_cpu_system_seconds_total"), Some(1));
        assert_eq!(v("container_cpu_cfs_periods_total"), Some(9));
        assert_eq!(v("container_cpu_cfs_throttled_periods_total"), Some(4));
        assert_eq!(v("container_cpu_cfs_throttled_seconds_total"), Some(1));
        assert_eq!(v("container_spec_cpu_period"), Some(100_000));
        assert_eq!(v("container_spec_cpu_quota"), Some(20_000));
        assert_eq!(
            v("container_spec_cpu_shares"),
            Some(2 + 99 * 262_142 / 9_999)
        );
        assert_eq!(v("container_memory_usage_bytes"), Some(16000));
        assert_eq!(v("container_memory_working_set_bytes"), Some(15000));
        assert_eq!(v("container_memory_rss"), Some(8192));
        assert_eq!(v("container_memory_cache"), Some(4096));
        assert_eq!(v("container_memory_kernel_usage"), Some(700));
        assert_eq!(v("container_memory_mapped_file"), Some(1024));
        assert_eq!(v("container_memory_max_usage_bytes"), Some(17000));
        assert_eq!(v("container_memory_swap"), Some(0));
        assert_eq!(v("container_memory_failcnt"), Some(6));
        assert_eq!(v("container_oom_events_total"), Some(1));
        assert_eq!(v("container_spec_memory_limit_bytes"), Some(0), "max is 0");
        assert_eq!(
            v("container_spec_memory_reservation_limit_bytes"),
            Some(1_048_576)
        );
        assert_eq!(v("container_spec_memory_swap_limit_bytes"), Some(0));
        assert_eq!(v("container_threads"), Some(3));
        assert_eq!(v("container_threads_max"), Some(1024));
        assert_eq!(v("container_fs_reads_bytes_total"), Some(1000));
        assert_eq!(v("container_fs_writes_total"), Some(20));
        assert_eq!(v("container_pressure_cpu_waiting_seconds_total"), Some(3));
        assert_eq!(v("container_pressure_cpu_stalled_seconds_total"), Some(1));
        assert_eq!(
            v("container_pressure_memory_waiting_seconds_total"),
            Some(0)
        );
        assert_eq!(v("container_pressure_io_waiting_seconds_total"), None);
        let huge: Vec<_> = s
            .iter()
            .filter(|x| x.name.starts_with("container_hugetlb"))
            .collect();
        assert_eq!(huge.len(), 1, "v2 has usage but no max usage: {huge:?}");
        assert_eq!(huge[0].value, 2_097_152);
        assert_eq!(huge[0].extra, vec![("pagesize", "2MB".to_owned())]);
        assert_eq!(
            s.iter()
                .filter(|x| x.name == "container_memory_failures_total")
                .count(),
            4
        );
    }

    #[test]
    fn net_dev_gives_every_counter_per_interface_without_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    5000      10    2    4    0     0          0         0     7000      12    3    5    0     0       0          0\n";
        let s = network_samples(text);
        assert_eq!(s.len(), 8);
        assert!(
            s.iter()
                .all(|x| x.extra == vec![("interface", "eth0".into())])
        );
        let v = |n| value(&s, n);
        assert_eq!(v("container_network_receive_bytes_total"), Some(5000));
        assert_eq!(v("container_network_receive_packets_total"), Some(10));
        assert_eq!(v("container_network_receive_errors_total"), Some(2));
        assert_eq!(
            v("container_network_receive_packets_dropped_total"),
            Some(4)
        );
        assert_eq!(v("container_network_transmit_bytes_total"), Some(7000));
        assert_eq!(v("container_network_transmit_packets_total"), Some(12));
        assert_eq!(v("container_network_transmit_errors_total"), Some(3));
        assert_eq!(
            v("container_network_transmit_packets_dropped_total"),
            Some(5)
        );
    }

    #[test]
    fn metrics_carry_values_in_descriptor_key_order() {
        let base = [
            "web".to_owned(),
            "abc".to_owned(),
            "busybox".to_owned(),
            "web_pod_ns_uid_0".to_owned(),
            "ns".to_owned(),
            "pod".to_owned(),
        ];
        let m = to_metrics(
            &base,
            vec![
                labelled(
                    "container_cpu_usage_seconds_total",
                    vec![("cpu", "total".into())],
                    7,
                ),
                sample("not_a_metric", 1),
            ],
        );
        assert_eq!(m.len(), 1, "undescribed samples are dropped");
        let d = descriptors()
            .into_iter()
            .find(|d| d.name == "container_cpu_usage_seconds_total")
            .expect("descriptor");
        assert_eq!(
            d.label_keys,
            [
                "container",
                "cpu",
                "id",
                "image",
                "name",
                "namespace",
                "pod"
            ]
        );
        assert_eq!(
            m[0].label_values,
            [
                "web",
                "total",
                "abc",
                "busybox",
                "web_pod_ns_uid_0",
                "ns",
                "pod"
            ]
        );
        assert_eq!(m[0].metric_type, MetricType::Counter as i32);
        assert_eq!(m[0].value.as_ref().map(|v| v.value), Some(7));
        assert_eq!(m[0].timestamp, 0);
    }

    #[test]
    fn limits_and_weights_parse() {
        assert_eq!(parse_limit("max\n"), Some(0));
        assert_eq!(parse_limit("9223372036854771712"), Some(0));
        assert_eq!(parse_limit("1024"), Some(1024));
        assert_eq!(parse_limit("junk"), None);
        assert_eq!(weight_to_shares(1), 2);
        assert_eq!(weight_to_shares(10_000), 262_144);
        assert_eq!(
            soft_open_files(
                "Limit Soft Limit Hard Limit Units\nMax open files            1024                 524288               files\n"
            ),
            Some(1024)
        );
        assert_eq!(
            soft_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[test]
    fn process_samples_count_this_process() {
        let me = i32::try_from(std::process::id()).expect("pid");
        let s = process_samples(&[me]);
        assert_eq!(value(&s, "container_processes"), Some(1));
        assert!(value(&s, "container_file_descriptors").is_some_and(|n| n >= 3));
        let ul = ulimit_samples(me);
        assert_eq!(ul.len(), 1);
    }

    #[test]
    fn fs_samples_measure_a_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("f"), vec![1u8; 64 * 1024]).expect("write");
        let s = fs_samples(tmp.path());
        assert!(value(&s, "container_fs_usage_bytes").is_some_and(|b| b >= 64 * 1024));
        assert!(value(&s, "container_fs_limit_bytes").is_some_and(|b| b > 0));
        assert!(value(&s, "container_fs_inodes_total").is_some_and(|b| b > 0));
        assert!(fs_samples(&tmp.path().join("missing")).is_empty());
    }
}
