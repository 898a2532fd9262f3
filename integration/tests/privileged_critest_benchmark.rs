//! critest's own `-benchmark` mode against berthd: pod and container life-cycle
//! operations timed by the conformance suite's harness. Its JSON results are kept in
//! the test log (CI's artifacts-in-log) as per-operation medians. Speed is reported,
//! never asserted: the test fails only if the benchmark specs themselves fail.

use std::time::Duration;

use berth_integration::setup::Node;
use berth_integration::tools::{self, CritestRun};

#[tokio::test]
async fn critest_benchmark_mode_runs_and_reports() {
    let node = Node::start().await.expect("node");
    let ep = node.daemon.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let params = dir.path().join("params.yaml");
    std::fs::write(
        &params,
        "containersNumber: 10\ncontainersNumberParallel: 1\ncontainerBenchmarkTimeoutSeconds: 60\n\
         podsNumber: 10\npodsNumberParallel: 1\npodBenchmarkTimeoutSeconds: 60\n\
         imagesNumber: 0\npodContainerStartBenchmarkTimeoutSeconds: 10\n",
    )
    .expect("params");
    let out_dir = dir.path().join("results");
    std::fs::create_dir(&out_dir).expect("results dir");
    let CritestRun { out, text, .. } = tools::critest(
        &ep,
        &[
            "-benchmark",
            &format!("-benchmarking-params-file={}", params.display()),
            &format!("-benchmarking-output-dir={}", out_dir.display()),
        ],
        Duration::from_secs(600),
    )
    .await
    .expect("critest -benchmark");
    assert!(
        out.output.status.success(),
        "critest -benchmark failed:\n{text}\n{}",
        out.stderr()
    );

    let mut found = 0;
    for entry in std::fs::read_dir(&out_dir).expect("results") {
        let path = entry.expect("entry").path();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("JSON");
        let names: Vec<String> = v["operationsNames"]
            .as_array()
            .expect("operationsNames")
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect();
        let points = v["datapoints"].as_array().expect("datapoints");
        assert!(!points.is_empty(), "{}: no samples", path.display());
        for (i, name) in names.iter().enumerate() {
            let mut ns: Vec<i64> = points
                .iter()
                .filter_map(|p| p["operationsDurationsNs"][i].as_i64())
                .collect();
            ns.sort_unstable();
            let median_ms = ns[ns.len() / 2] as f64 / 1e6;
            println!(
                "critest-benchmark {} {name}: median {median_ms:.2} ms over {} samples",
                path.file_name()
                    .map(|f| f.to_string_lossy())
                    .unwrap_or_default(),
                ns.len()
            );
        }
        found += 1;
    }
    assert_eq!(found, 2, "pod and container life-cycle results are written");
}
