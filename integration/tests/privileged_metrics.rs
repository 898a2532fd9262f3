//! The CRI metrics RPCs (`ListMetricDescriptors`, `ListPodSandboxMetrics`,
//! `StreamPodSandboxMetrics`) against a running pod: every metric kubelet's cadvisor
//! endpoint shows is described, and a busy container's CPU, memory, limits, processes,
//! writable layer and its pod's interface show up with real values and the labels
//! Prometheus queries select on (container, pod, namespace).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use berth_integration::fixtures::BUSYBOX;
use berth_integration::setup::Node;
use berth_integration::tools::{self, CritestRun, crictl_ok};
use berth_proto::v1::{
    ExecSyncRequest, ListMetricDescriptorsRequest, ListPodSandboxMetricsRequest, Metric,
    MetricType, PodSandboxMetrics, StreamPodSandboxMetricsRequest,
};

/// A metric's labels as a map, using the descriptor's keys.
fn labels(keys: &BTreeMap<String, Vec<String>>, m: &Metric) -> BTreeMap<String, String> {
    let k = keys
        .get(&m.name)
        .unwrap_or_else(|| panic!("{} was not described", m.name));
    assert_eq!(k.len(), m.label_values.len(), "{}: keys vs values", m.name);
    k.iter()
        .cloned()
        .zip(m.label_values.iter().cloned())
        .collect()
}

fn value(metrics: &[Metric], name: &str) -> Option<u64> {
    metrics
        .iter()
        .find(|m| m.name == name)
        .and_then(|m| m.value.as_ref())
        .map(|v| v.value)
}

#[tokio::test]
async fn metrics_of_a_running_pod() {
    let node = Node::start().await.expect("node");
    let ep = node.daemon.endpoint();
    let mut c = node.daemon.client().await.expect("client");

    // Described: the whole cadvisor set, each with help and sorted label keys.
    let descs = c
        .runtime
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await
        .expect("descriptors")
        .into_inner()
        .descriptors;
    let keys: BTreeMap<String, Vec<String>> = descs
        .iter()
        .map(|d| (d.name.clone(), d.label_keys.clone()))
        .collect();
    assert_eq!(keys.len(), descs.len(), "names are unique");
    for name in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_network_receive_bytes_total",
        "container_fs_usage_bytes",
        "container_spec_memory_limit_bytes",
        "container_oom_events_total",
    ] {
        assert!(keys.contains_key(name), "{name} not described");
    }
    for d in &descs {
        assert!(!d.help.is_empty(), "{}", d.name);
        assert!(d.label_keys.is_sorted(), "{}", d.name);
        for k in ["container", "pod", "namespace"] {
            assert!(d.label_keys.iter().any(|x| x == k), "{} lacks {k}", d.name);
        }
    }

    // A pod whose container burns about three seconds of CPU, then idles.
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = dir.path().join("pod.json");
    std::fs::write(
        &pod,
        r#"{"metadata":{"name":"metered","namespace":"metrics-ns","uid":"metered-uid","attempt":0},"linux":{}}"#,
    )
    .expect("write");
    let ctr = dir.path().join("ctr.json");
    std::fs::write(
        &ctr,
        format!(
            r#"{{"metadata":{{"name":"burner"}},"image":{{"image":"{BUSYBOX}"}},
                "command":["sh","-c","end=$(( $(date +%s) + 3 )); while [ $(date +%s) -lt $end ]; do :; done; exec sleep 3600"],
                "linux":{{"resources":{{"memory_limit_in_bytes":67108864,"cpu_shares":512,"cpu_period":100000}}}}}}"#
        ),
    )
    .expect("write");
    let pod = pod.display().to_string();
    let ctr = ctr.display().to_string();
    let pod_id = crictl_ok(&ep, &["runp", &pod]).await.trim().to_owned();
    crictl_ok(&ep, &["pull", BUSYBOX]).await;
    let cid = crictl_ok(&ep, &["create", &pod_id, &ctr, &pod])
        .await
        .trim()
        .to_owned();
    crictl_ok(&ep, &["start", &cid]).await;

    // One MiB in the writable layer.
    let out = c
        .runtime
        .exec_sync(ExecSyncRequest {
            container_id: cid.clone(),
            cmd: ["dd", "if=/dev/zero", "of=/ballast", "bs=1024", "count=1024"]
                .map(String::from)
                .to_vec(),
            timeout: 30,
        })
        .await
        .expect("exec")
        .into_inner();
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));

    // Wait (bounded) until at least one whole CPU second is accounted.
    let mut pod_metrics: Option<PodSandboxMetrics> = None;
    for _ in 0..120 {
        let all = c
            .runtime
            .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
            .await
            .expect("list metrics")
            .into_inner()
            .pod_metrics;
        let mine = all
            .into_iter()
            .find(|p| p.pod_sandbox_id == pod_id)
            .expect("metrics of the pod");
        let cpu = mine
            .container_metrics
            .iter()
            .find(|cm| cm.container_id == cid)
            .and_then(|cm| value(&cm.metrics, "container_cpu_usage_seconds_total"));
        let done = cpu.is_some_and(|s| s >= 1);
        pod_metrics = Some(mine);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let pm = pod_metrics.expect("pod metrics");
    assert_eq!(pm.container_metrics.len(), 1, "{pm:?}");
    let cm = &pm.container_metrics[0];
    assert_eq!(cm.container_id, cid);
    let m = &cm.metrics;
    let v = |name: &str| value(m, name).unwrap_or_else(|| panic!("{name} missing: {m:?}"));

    assert!(v("container_cpu_usage_seconds_total") >= 1, "{m:?}");
    // Whole seconds each: user and system may both round down, but never exceed usage by more.
    assert!(
        v("container_cpu_user_seconds_total") + v("container_cpu_system_seconds_total")
            <= v("container_cpu_usage_seconds_total") + 1
    );
    assert!(v("container_memory_usage_bytes") > 0);
    assert!(v("container_memory_working_set_bytes") > 0);
    assert!(v("container_memory_working_set_bytes") <= v("container_memory_usage_bytes"));
    assert_eq!(v("container_spec_memory_limit_bytes"), 64 << 20);
    assert_eq!(v("container_spec_cpu_shares"), 512);
    assert_eq!(v("container_spec_cpu_period"), 100_000);
    assert!(v("container_processes") >= 1);
    assert!(v("container_threads") >= 1);
    assert!(v("container_file_descriptors") >= 1);
    assert_eq!(v("container_oom_events_total"), 0);
    assert!(
        v("container_fs_usage_bytes") >= 1 << 20,
        "the 1 MiB ballast is in the writable layer"
    );
    assert!(v("container_fs_limit_bytes") >= v("container_fs_usage_bytes"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let started = v("container_start_time_seconds");
    assert!(started <= now && now - started < 600, "{started} vs {now}");
    assert!(v("container_last_seen") >= started);

    // Types and labels: counters are counters, and the series name the container.
    let cpu = m
        .iter()
        .find(|x| x.name == "container_cpu_usage_seconds_total")
        .expect("cpu");
    assert_eq!(cpu.metric_type, MetricType::Counter as i32);
    let l = labels(&keys, cpu);
    assert_eq!(l["container"], "burner");
    assert_eq!(l["pod"], "metered");
    assert_eq!(l["namespace"], "metrics-ns");
    assert_eq!(l["id"], cid);
    assert_eq!(l["cpu"], "total");
    assert!(l["image"].contains("busybox"), "{l:?}");
    let mem = m
        .iter()
        .find(|x| x.name == "container_memory_working_set_bytes")
        .expect("memory");
    assert_eq!(mem.metric_type, MetricType::Gauge as i32);
    for x in m.iter().chain(&pm.metrics) {
        labels(&keys, x);
    }

    // The pod's own series: its interface's counters, not loopback's.
    let ifaces: BTreeSet<String> = pm
        .metrics
        .iter()
        .filter(|x| x.name == "container_network_receive_bytes_total")
        .map(|x| labels(&keys, x)["interface"].clone())
        .collect();
    assert_eq!(ifaces, BTreeSet::from(["eth0".to_owned()]), "{pm:?}");
    let net = pm
        .metrics
        .iter()
        .find(|x| x.name == "container_network_transmit_packets_total")
        .expect("tx packets");
    let l = labels(&keys, net);
    assert_eq!((l["pod"].as_str(), l["id"].as_str()), ("metered", &*pod_id));

    // The stream says the same, pod for pod.
    let mut s = c
        .runtime
        .stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest {})
        .await
        .expect("stream")
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(msg) = s.message().await.expect("stream message") {
        assert!(!msg.pod_sandbox_metrics.is_empty());
        streamed.extend(msg.pod_sandbox_metrics);
    }
    assert_eq!(streamed.len(), 1);
    assert_eq!(streamed[0].pod_sandbox_id, pod_id);
    let names = |p: &PodSandboxMetrics| -> BTreeSet<String> {
        p.metrics
            .iter()
            .chain(p.container_metrics.iter().flat_map(|c| &c.metrics))
            .map(|m| m.name.clone())
            .collect()
    };
    assert_eq!(names(&streamed[0]), names(&pm));

    // Once the pod is stopped, its container has no cgroup left to measure.
    crictl_ok(&ep, &["stopp", &pod_id]).await;
    let after = c
        .runtime
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .expect("list metrics")
        .into_inner()
        .pod_metrics;
    let mine = after
        .iter()
        .find(|p| p.pod_sandbox_id == pod_id)
        .expect("the stopped pod is still listed");
    assert!(mine.container_metrics.is_empty(), "{mine:?}");
    assert!(mine.metrics.is_empty(), "no netns, no network series");
    crictl_ok(&ep, &["rmp", &pod_id]).await;
}

/// critest's own metrics specs ("runtime should support metrics operations": the
/// descriptor set, and a pod's metrics with the same labels as described), on their
/// own so a failure points here rather than into the whole suite.
#[tokio::test]
async fn critest_metrics_specs_pass() {
    let node = Node::start().await.expect("node");
    let ep = node.daemon.endpoint();
    let CritestRun { out, text, summary } = tools::critest(
        &ep,
        &["--ginkgo.focus=runtime\\sshould\\ssupport\\smetrics\\soperations"],
        Duration::from_secs(600),
    )
    .await
    .expect("critest");
    assert!(
        out.output.status.success() && summary.contains("2 Passed | 0 Failed"),
        "critest metrics specs: {summary}\n{text}\n{}",
        out.stderr()
    );
}
