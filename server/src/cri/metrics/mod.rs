//! cadvisor-style metrics for `ListMetricDescriptors`, `ListPodSandboxMetrics` and
//! `StreamPodSandboxMetrics`: what kubelet's `/metrics/cadvisor` shows when it takes pod
//! and container stats from the runtime (`PodAndContainerStatsFromCRI`).
//!
//! Every value is read live when asked (so `Metric.timestamp` is 0, as the API wants for
//! uncached values): [`reading`] reads a container once — its cgroup through
//! runtime-core's one typed reading (`Cgroup::read_stats`, v1 or v2), its processes in
//! /proc, its writable layer — and the pod's network namespace; [`table`] holds every
//! metric as its descriptor and its source, a function from that reading to values;
//! this file puts the two together. A sample is only sent when its source exists on
//! this host; a descriptor whose source is missing (hugetlb without the hugetlb
//! controller, pressure stall information on cgroup v1) is described but has no samples.
//! Values are `u64`: seconds are whole seconds (the fraction is dropped, as CRI-O does),
//! and a limit that is not set is 0.

mod reading;
mod table;

use std::collections::BTreeMap;

use berth_proto::v1::{ContainerMetrics, Metric, MetricDescriptor, PodSandboxMetrics, UInt64Value};

use berth_runtime_core::cgroups::Detail;

use self::reading::{ContainerReading, InterfaceCounters};
use self::table::{FAMILIES, Family, Source};
use super::Shared;
use crate::container::{Container, Phase};
use crate::host::clock::now_nanos;
use crate::pod::Sandbox;

/// Labels every metric carries, as kubelet's cadvisor endpoint names them: the
/// Kubernetes container name (empty for pod-level series), the CRI id of the container
/// or pod, the image, the runtime's name for it, and the pod's namespace and name.
const BASE_LABELS: [&str; 6] = ["container", "id", "image", "name", "namespace", "pod"];

/// A descriptor's label keys, sorted as the API asks.
fn label_keys(f: &Family) -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = BASE_LABELS.iter().chain(f.extra).copied().collect();
    keys.sort_unstable();
    keys
}

/// `ListMetricDescriptors`.
pub fn descriptors() -> Vec<MetricDescriptor> {
    FAMILIES
        .iter()
        .map(|f| MetricDescriptor {
            name: f.name.to_owned(),
            help: f.help.to_owned(),
            label_keys: label_keys(f).into_iter().map(str::to_owned).collect(),
        })
        .collect()
}

/// One measured value of a family, before the base labels are added.
#[derive(Clone)]
struct Sample {
    family: &'static Family,
    /// Values of the family's extra labels, in its order.
    labels: Vec<String>,
    value: u64,
}

/// The samples of every container-level family for one container.
fn container_samples(r: &ContainerReading) -> Vec<Sample> {
    let mut out = Vec::new();
    for family in FAMILIES {
        let series = match family.source {
            Source::Container(f) => f(r).map(|v| (Vec::new(), v)).into_iter().collect(),
            Source::Labelled(f) => f(r),
            Source::Interface(_) => continue,
        };
        out.extend(series.into_iter().map(|(labels, value)| Sample {
            family,
            labels,
            value,
        }));
    }
    out
}

/// The samples of every pod-level family: one per interface of the pod.
fn pod_samples(interfaces: &[InterfaceCounters]) -> Vec<Sample> {
    let mut out = Vec::new();
    for family in FAMILIES {
        let Source::Interface(f) = family.source else {
            continue;
        };
        out.extend(interfaces.iter().map(|i| Sample {
            family,
            labels: vec![i.name.clone()],
            value: f(i),
        }));
    }
    out
}

/// Turns samples into CRI metrics with `base` (one value per [`BASE_LABELS`] entry).
fn to_metrics(base: &[String; 6], samples: Vec<Sample>) -> Vec<Metric> {
    samples
        .into_iter()
        .map(|s| {
            let f = s.family;
            debug_assert_eq!(f.extra.len(), s.labels.len(), "{}", f.name);
            let mut values: BTreeMap<&str, String> = BASE_LABELS
                .iter()
                .copied()
                .zip(base.iter().cloned())
                .chain(f.extra.iter().copied().zip(s.labels))
                .collect();
            let label_values = label_keys(f)
                .into_iter()
                .map(|k| values.remove(k).unwrap_or_default())
                .collect();
            Metric {
                name: f.name.to_owned(),
                // Gathered live: 0, so kubelet does not treat it as cached.
                timestamp: 0,
                metric_type: f.kind as i32,
                label_values,
                value: Some(UInt64Value { value: s.value }),
            }
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
    let interfaces = sb
        .state()
        .pins
        .net
        .as_deref()
        .and_then(|netns| super::stats::netns_net_dev(netns).ok())
        .map(|text| super::stats::pod_interfaces(&text))
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
                metrics: to_metrics(&base, container_samples(&read_container(shared, &c))),
            }
        })
        .collect();
    PodSandboxMetrics {
        pod_sandbox_id: sb.id.clone(),
        metrics: to_metrics(&pod_base, pod_samples(&interfaces)),
        container_metrics,
    }
}

/// Reads one created or running container.
fn read_container(shared: &Shared, c: &Container) -> ContainerReading {
    let st = c.state();
    let started = if st.started_at > 0 {
        st.started_at
    } else {
        c.created_at
    };
    let mut r = ContainerReading {
        now_secs: u64::try_from(now_nanos() / 1_000_000_000).unwrap_or(0),
        started_secs: u64::try_from(started / 1_000_000_000).unwrap_or(0),
        ..ContainerReading::default()
    };
    let runtime = berth_runtime_core::Container::load(&shared.containers.runtime_root(), &c.id);
    if let Ok(rt) = &runtime
        && let Some(cg) = rt.cgroup()
    {
        r.cgroup = Some(cg.read_stats(Detail::Full));
        r.procs = cg.procs().ok().map(|pids| reading::process_counts(&pids));
    }
    r.name_devices();
    if st.pid > 0 {
        r.open_files_soft = reading::open_files_soft(st.pid);
    }
    // The writable layer: where the container manager keeps it (`<root>/containers/<id>/upper`).
    let upper = shared
        .config
        .root_dir
        .join("containers")
        .join(&c.id)
        .join("upper");
    r.fs = reading::layer_fs(&upper);
    r
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use berth_proto::v1::MetricType;
    use berth_runtime_core::cgroups::{Cgroup, Version};

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
        samples
            .iter()
            .find(|s| s.family.name == name)
            .map(|s| s.value)
    }

    fn named<'a>(samples: &'a [Sample], name: &str) -> Vec<&'a Sample> {
        samples.iter().filter(|s| s.family.name == name).collect()
    }

    /// The container samples of a fake cgroup tree at `root`/`rel`, read the way
    /// berthd reads a live one.
    fn cgroup_samples(version: Version, root: &Path, rel: &str) -> Vec<Sample> {
        let cg = Cgroup {
            version,
            root: root.to_path_buf(),
            path: Path::new("/").join(rel),
        };
        let mut r = ContainerReading {
            cgroup: Some(cg.read_stats(Detail::Full)),
            ..ContainerReading::default()
        };
        r.name_devices();
        container_samples(&r)
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    /// A v1 container cgroup with every file berthd reads but the pressure and
    /// hugetlb ones.
    fn v1_tree(r: &Path, c: &str) {
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
    }

    #[test]
    fn v1_cgroup_files_become_samples() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (r, c) = (tmp.path(), "kubepods/pod1/ctr");
        v1_tree(r, c);
        let s = cgroup_samples(Version::V1, r, c);
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
        let faults: Vec<_> = named(&s, "container_memory_failures_total")
            .into_iter()
            .map(|x| (x.labels.clone(), x.value))
            .collect();
        assert!(faults.contains(&(vec!["pgfault".to_owned(), "hierarchy".to_owned()], 12)));
        assert_eq!(faults.len(), 4);
        assert_eq!(v("container_fs_reads_bytes_total"), Some(8192));
        assert_eq!(v("container_fs_writes_bytes_total"), Some(4096));
        assert_eq!(v("container_fs_reads_total"), Some(2));
        assert_eq!(v("container_fs_writes_total"), Some(1));
        let blkio = named(&s, "container_blkio_device_usage_total").len();
        assert_eq!(blkio, 4, "Read, Write, Sync, Total of one device");
        // No PSI and no hugetlb files in this fixture: no samples, not zeros.
        assert_eq!(v("container_pressure_cpu_waiting_seconds_total"), None);
        assert_eq!(v("container_hugetlb_usage_bytes"), None);
    }

    /// A v2 container cgroup with every file berthd reads but `io.pressure`.
    fn v2_tree(r: &Path, c: &str) {
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
    }

    #[test]
    fn v2_cgroup_files_become_samples() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (r, c) = (tmp.path(), "kubepods.slice/ctr");
        v2_tree(r, c);
        let s = cgroup_samples(Version::V2, r, c);
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
            .filter(|x| x.family.name.starts_with("container_hugetlb"))
            .collect();
        assert_eq!(huge.len(), 1, "v2 has usage but no max usage");
        assert_eq!(huge[0].value, 2_097_152);
        assert_eq!(huge[0].labels, ["2MB"]);
        assert_eq!(named(&s, "container_memory_failures_total").len(), 4);
    }

    #[test]
    fn net_dev_gives_every_counter_per_interface_without_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    5000      10    2    4    0     0          0         0     7000      12    3    5    0     0       0          0\n";
        let s = pod_samples(&super::super::stats::pod_interfaces(text));
        assert_eq!(s.len(), 8);
        assert!(s.iter().all(|x| x.labels == ["eth0"]));
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
        let family = FAMILIES
            .iter()
            .find(|f| f.name == "container_cpu_usage_seconds_total")
            .expect("family");
        let m = to_metrics(
            &base,
            vec![Sample {
                family,
                labels: vec!["total".into()],
                value: 7,
            }],
        );
        assert_eq!(m.len(), 1);
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

    /// Every described metric has a source that yields values, with as many label
    /// values as the labels it declares: over a v1 cgroup (with pressure and hugetlb
    /// files), a v2 one, processes, a writable layer and a pod interface, every row of
    /// the table is exercised.
    #[test]
    fn every_family_has_a_source_with_its_labels() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = tmp.path();
        v1_tree(r, "c");
        for res in ["cpu", "memory", "io"] {
            write(
                r,
                &format!("cpuacct/c/{res}.pressure"),
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=7000000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=2000000\n",
            );
        }
        write(r, "cpu/c/cpu.cfs_quota_us", "50000\n");
        write(r, "hugetlb/c/hugetlb.1GB.usage_in_bytes", "0\n");
        write(r, "hugetlb/c/hugetlb.1GB.max_usage_in_bytes", "0\n");
        let v1 = cgroup_samples(Version::V1, r, "c");
        assert_eq!(
            value(&v1, "container_pressure_io_waiting_seconds_total"),
            Some(7)
        );
        assert_eq!(
            value(&v1, "container_pressure_io_stalled_seconds_total"),
            Some(2)
        );
        let me = i32::try_from(std::process::id()).expect("pid");
        let host = ContainerReading {
            procs: Some(reading::process_counts(&[me])),
            open_files_soft: Some(1024),
            fs: reading::layer_fs(r),
            ..ContainerReading::default()
        };
        let text = "h\nh\n  eth0: 1 2 3 4 0 0 0 0 5 6 7 8 0 0 0 0\n";
        let all: Vec<Sample> = v1
            .into_iter()
            .chain(container_samples(&host))
            .chain(pod_samples(&super::super::stats::pod_interfaces(text)))
            .collect();
        for f in FAMILIES {
            let mine = named(&all, f.name);
            assert!(!mine.is_empty(), "{} yields nothing", f.name);
            for s in mine {
                assert_eq!(s.labels.len(), f.extra.len(), "{}: {:?}", f.name, s.labels);
            }
        }
        let mut names: Vec<_> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len(), "a name described twice");
    }
}
