//! Operability on a running berthd: the Prometheus endpoint, scraped over HTTP after
//! real RPCs (a pod, a pull, a failing lookup), must show the counters, histograms
//! and gauges those calls moved, in valid text exposition format.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use berth_integration::daemon::{DaemonOptions, TestDaemon};
use berth_integration::fixtures::{self, BUSYBOX};
use berth_integration::setup::Node;
use berth_proto::v1::{
    ImageSpec, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, PullImageRequest,
    RemovePodSandboxRequest, StopPodSandboxRequest, VersionRequest,
};
use tonic::Code;

/// A free loopback port (there is a small window in which another process could take it).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// One parsed sample: the metric name, its labels, its value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict parser for the text exposition format (0.0.4): `# HELP`/`# TYPE` lines,
/// and samples `name{label="value",...} value` with escaped label values. Panics,
/// naming the line, on anything else.
fn parse_exposition(text: &str) -> (HashMap<String, String>, Vec<Sample>) {
    let mut types = HashMap::new();
    let mut samples = Vec::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(valid_name(name), "TYPE name in {line:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "kind in {line:?}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE given twice: {line:?}"
            );
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).expect("sample has a value");
        let name = &line[..name_end];
        assert!(valid_name(name), "metric name in {line:?}");
        let (labels, rest) = parse_labels(&line[name_end..], line);
        let value = rest.as_str().strip_prefix(' ').expect("space before value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line:?}")),
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    // Every sample belongs to a declared family.
    for s in &samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = s.name.strip_suffix(suffix)?;
                (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(&s.name);
        assert!(types.contains_key(family), "no TYPE for {}", s.name);
    }
    (types, samples)
}

/// `{k="v",...}` (if present) at the start of `s`, and what follows it.
fn parse_labels(s: &str, line: &str) -> (BTreeMap<String, String>, String) {
    let mut labels = BTreeMap::new();
    let chars: Vec<char> = s.chars().collect();
    if chars.first() != Some(&'{') {
        return (labels, s.to_owned());
    }
    let at = |i: usize| -> char {
        *chars
            .get(i)
            .unwrap_or_else(|| panic!("labels not closed in {line:?}"))
    };
    let mut i = 1;
    while at(i) != '}' {
        let start = i;
        while at(i) != '=' {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "label name {key:?} in {line:?}"
        );
        i += 1;
        assert_eq!(at(i), '"', "label value quoted in {line:?}");
        i += 1;
        let mut value = String::new();
        loop {
            match at(i) {
                '"' => break,
                '\\' => {
                    i += 1;
                    match at(i) {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => panic!("bad escape \\{c} in {line:?}"),
                    }
                }
                c => value.push(c),
            }
            i += 1;
        }
        i += 1;
        assert!(
            labels.insert(key, value).is_none(),
            "label twice in {line:?}"
        );
        match at(i) {
            ',' => i += 1,
            '}' => {}
            c => panic!("unexpected {c:?} after a label in {line:?}"),
        }
    }
    (labels, chars[i + 1..].iter().collect())
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// Checks a histogram series: buckets cumulative and ending in `+Inf` == `_count`.
/// Returns `_count`.
fn histogram_count(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| {
            s.name == format!("{name}_bucket")
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| {
            let le = &s.labels["le"];
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le")
            };
            (le, s.value)
        })
        .collect();
    assert!(!buckets.is_empty(), "no buckets for {name}{labels:?}");
    for pair in buckets.windows(2) {
        assert!(pair[0].0 < pair[1].0, "bucket bounds ascend: {buckets:?}");
        assert!(
            pair[0].1 <= pair[1].1,
            "buckets are cumulative: {buckets:?}"
        );
    }
    let (last_le, last) = *buckets.last().expect("a bucket");
    assert!(last_le.is_infinite(), "last bucket is +Inf");
    let count = value(samples, &format!("{name}_count"), labels).expect("_count");
    assert_eq!(
        count, last,
        "+Inf bucket equals _count for {name}{labels:?}"
    );
    assert!(value(samples, &format!("{name}_sum"), labels).expect("_sum") >= 0.0);
    count
}

async fn scrape(http: &reqwest::Client, port: u16) -> Vec<Sample> {
    let resp = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let ct = resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .expect("content type")
        .to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = resp.text().await.expect("body");
    parse_exposition(&text).1
}

const RT: &str = "runtime.v1.RuntimeService";
const IMG: &str = "runtime.v1.ImageService";

#[tokio::test]
async fn metrics_endpoint_counts_what_the_daemon_did() {
    let port = free_port();
    let node = Node::start_with(DaemonOptions {
        extra_config: format!("[metrics]\naddress = \"127.0.0.1:{port}\"\n"),
        ..DaemonOptions::default()
    })
    .await
    .expect("node");
    let d = &node.daemon;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let mut c = d.client().await.expect("client");

    // Other paths are not served.
    let other = http
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .expect("GET /");
    assert_eq!(other.status(), reqwest::StatusCode::NOT_FOUND);

    // The daemon's readiness probe already called Version; count from this baseline.
    let before = scrape(&http, port).await;
    let version_before = value(
        &before,
        "berth_grpc_requests_total",
        &[("service", RT), ("method", "Version"), ("code", "OK")],
    )
    .unwrap_or(0.0);
    assert!(
        version_before >= 1.0,
        "the readiness Version call is counted"
    );

    c.runtime
        .version(VersionRequest::default())
        .await
        .expect("Version");
    let missing = c
        .runtime
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: "no-such-pod".into(),
            verbose: false,
        })
        .await
        .expect_err("unknown pod");
    assert_eq!(missing.code(), Code::NotFound);

    fixtures::pull(&mut c, BUSYBOX).await;
    fixtures::try_pull(&mut c, "registry.k8s.io/berth-no-such-image:1")
        .await
        .expect_err("pulling an image the registry lacks fails");

    let pod_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "metrics".into(),
            uid: "uid-metrics".into(),
            namespace: "berth-test".into(),
            attempt: 0,
        }),
        hostname: "metrics".into(),
        log_directory: d.dir().join("logs").display().to_string(),
        linux: Some(Default::default()),
        ..Default::default()
    };
    let pod = fixtures::run_pod(&mut c, &pod_config).await;
    let ctr = fixtures::create(
        &mut c,
        &pod,
        &pod_config,
        fixtures::container_config("sleeper", BUSYBOX, &["sleep", "3600"]),
    )
    .await
    .expect("CreateContainer");
    fixtures::start(&mut c, &ctr).await.expect("StartContainer");

    let after = scrape(&http, port).await;
    let rpc = |m: &'static str, code: &'static str, svc: &'static str| {
        [("service", svc), ("method", m), ("code", code)]
    };
    assert_eq!(
        value(
            &after,
            "berth_grpc_requests_total",
            &rpc("Version", "OK", RT)
        ),
        Some(version_before + 1.0)
    );
    assert_eq!(
        value(
            &after,
            "berth_grpc_requests_total",
            &rpc("PodSandboxStatus", "NotFound", RT)
        ),
        Some(1.0)
    );
    assert!(
        value(&after, "berth_grpc_errors_total", &[("code", "NotFound")]).unwrap_or(0.0) >= 1.0,
        "NotFound counted as an error kind"
    );
    assert_eq!(
        histogram_count(
            &after,
            "berth_grpc_request_duration_seconds",
            &rpc("RunPodSandbox", "OK", RT)
        ),
        1.0
    );
    assert_eq!(
        histogram_count(
            &after,
            "berth_grpc_request_duration_seconds",
            &rpc("PodSandboxStatus", "NotFound", RT)
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "berth_grpc_requests_total",
            &rpc("PullImage", "OK", IMG)
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&after, "berth_image_pulls_total", &[("result", "success")]),
        Some(1.0)
    );
    assert_eq!(
        value(&after, "berth_image_pulls_total", &[("result", "failure")]),
        Some(1.0)
    );
    assert_eq!(
        histogram_count(
            &after,
            "berth_image_pull_duration_seconds",
            &[("result", "success")]
        ),
        1.0
    );
    let bytes = value(&after, "berth_image_pull_bytes_total", &[]).expect("pull bytes");
    assert!(bytes > 1000.0, "a busybox image is more than 1 kB: {bytes}");
    assert_eq!(
        value(&after, "berth_pods", &[("state", "ready")]),
        Some(1.0)
    );
    assert_eq!(
        value(&after, "berth_containers", &[("state", "running")]),
        Some(1.0)
    );
    assert_eq!(value(&after, "berth_monitor_deaths_total", &[]), Some(0.0));

    // Stopping the pod kills its container: the gauges and exit counter follow.
    c.runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("StopPodSandbox");
    let mut stopped = Vec::new();
    for _ in 0..50 {
        stopped = scrape(&http, port).await;
        if value(&stopped, "berth_containers", &[("state", "exited")]) == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        value(&stopped, "berth_containers", &[("state", "exited")]),
        Some(1.0)
    );
    assert_eq!(
        value(&stopped, "berth_pods", &[("state", "notready")]),
        Some(1.0)
    );
    assert_eq!(
        value(&stopped, "berth_pods", &[("state", "ready")]),
        Some(0.0)
    );
    let exits: f64 = stopped
        .iter()
        .filter(|s| s.name == "berth_container_exits_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(exits, 1.0, "one container exit counted");
    c.runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .expect("RemovePodSandbox");
}

#[test]
fn the_parser_rejects_malformed_expositions() {
    let ok = "# TYPE a counter\na{x=\"1\\\"2\"} 3\n";
    let (_, samples) = parse_exposition(ok);
    assert_eq!(samples[0].labels["x"], "1\"2");
    for bad in [
        "# TYPE a counter\na{x=\"1\"} x\n",
        "# TYPE a counter\na{x=1} 3\n",
        "b 3\n",
        "# TYPE a counter\na{x=\"1\" 3\n",
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_exposition(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
}

/// Runs `berthd --config <config> check`; returns (success, stdout).
fn berthd_check(config: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(TestDaemon::binary().expect("berthd"))
        .arg("--config")
        .arg(config)
        .arg("check")
        .output()
        .expect("running berthd check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(name)))
        .unwrap_or_else(|| panic!("no {name} line in:\n{out}"))
}

#[test]
fn check_passes_on_this_host_and_fails_without_cni_plugins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |s: &str| dir.path().join(s).display().to_string();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "root_dir = {:?}\nstate_dir = {:?}\n[grpc]\nsocket = {:?}\n[cni]\nconf_dir = {:?}\nplugin_dirs = [\"/usr/lib/cni\"]\nbuiltin_default = true\n",
            p("root"),
            p("state"),
            p("s/berth.sock"),
            p("net.d")
        ),
    )
    .expect("write config");
    let (ok, out) = berthd_check(&good);
    assert!(ok, "berthd check fails on this host:\n{out}");
    for name in ["kernel", "root", "namespaces", "overlayfs", "cni", "lock"] {
        assert!(line(&out, name).starts_with("ok "), "{name}:\n{out}");
    }
    // This host has cgroup v1 (hybrid); the line names the version found.
    assert!(line(&out, "cgroups").contains("cgroup v"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");

    // A network whose plugins are nowhere: the cni line fails and says what to do.
    let conf = dir.path().join("net.d");
    std::fs::create_dir_all(&conf).expect("mkdir");
    std::fs::write(
        conf.join("10-x.conflist"),
        r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge","bridge":"x0"}]}"#,
    )
    .expect("write conflist");
    std::fs::create_dir_all(dir.path().join("empty-bin")).expect("mkdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "root_dir = {:?}\nstate_dir = {:?}\n[grpc]\nsocket = {:?}\n[cni]\nconf_dir = {:?}\nplugin_dirs = [{:?}]\nbuiltin_default = false\n",
            p("root"),
            p("state"),
            p("s/berth.sock"),
            p("net.d"),
            p("empty-bin")
        ),
    )
    .expect("write config");
    let (ok, out) = berthd_check(&bad);
    assert!(!ok, "berthd check must fail without CNI plugins:\n{out}");
    let cni = line(&out, "cni");
    assert!(cni.starts_with("FAIL"), "{out}");
    assert!(
        cni.contains("\"bridge\"") && cni.contains("containernetworking-plugins"),
        "{cni}"
    );
    assert!(out.contains("essential check(s) failed"), "{out}");
}

#[tokio::test]
async fn check_reports_a_running_berthd() {
    let d = TestDaemon::start().await.expect("daemon");
    let (_, out) = berthd_check(&d.config_path);
    let lock = line(&out, "lock");
    assert!(lock.starts_with("warn"), "{out}");
    assert!(
        lock.contains(&format!("pid {}", d.pid().expect("pid"))),
        "{lock}"
    );
    assert!(line(&out, "socket").contains("listening"), "{out}");
}

/// Polls the daemon's log until `needle` occurs `n` times (10 s at most).
async fn wait_for_log(d: &TestDaemon, needle: &str, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d.log().matches(needle).count() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} (#{n}) in the log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGHUP reads the config file again: `log.level`, a registry mirror
/// (`registry.config_path`) and `metrics.address` change at once; a changed key that
/// needs a restart (`log.format`) is named and keeps its running value; a broken
/// file is logged and the daemon keeps serving with the configuration it had.
#[tokio::test]
async fn sighup_reloads_what_can_change_live() {
    use berth_integration::forge::ImageBuilder;
    use berth_integration::registry::TestRegistry;

    let registry = TestRegistry::start().expect("registry");
    let image = ImageBuilder::busybox()
        .expect("busybox")
        .build()
        .expect("image");
    registry
        .push("busybox", "reload", &image)
        .await
        .expect("push");
    // mirror.test is reached only through hosts.toml: first a closed loopback port,
    // after the reload the test registry.
    let certs = tempfile::tempdir().expect("tempdir");
    let (dead, live) = (certs.path().join("dead"), certs.path().join("live"));
    std::fs::create_dir_all(dead.join("mirror.test")).expect("dead dir");
    std::fs::write(
        dead.join("mirror.test/hosts.toml"),
        format!("server = \"http://127.0.0.1:{}\"\n", free_port()),
    )
    .expect("dead hosts.toml");
    registry
        .write_mirror_hosts(&live, &["mirror.test"])
        .expect("live hosts.toml");
    let options = DaemonOptions {
        log_level: "info".into(),
        extra_config: format!(
            "\n[registry]\nconfig_path = {:?}\nconnect_timeout_secs = 2\n",
            dead.display().to_string()
        ),
        ..Default::default()
    };
    let d = TestDaemon::start_with(options).await.expect("berthd");
    let mut c = d.client().await.expect("client");
    let pull = PullImageRequest {
        image: Some(ImageSpec {
            image: "mirror.test/busybox:reload".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    c.image
        .pull_image(pull.clone())
        .await
        .expect_err("the mirror is not configured yet");
    c.runtime
        .version(VersionRequest::default())
        .await
        .expect("Version");
    assert!(!d.log().contains("rpc ok"), "debug lines at info level");

    let original = std::fs::read_to_string(&d.config_path).expect("config");
    let port = free_port();
    let changed = format!(
        "{}\n[metrics]\naddress = \"127.0.0.1:{port}\"\n",
        original
            .replace("level = \"info\"", "level = \"debug\"")
            .replace("format = \"text\"", "format = \"json\"")
            .replace(
                &format!("{:?}", dead.display().to_string()),
                &format!("{:?}", live.display().to_string())
            )
    );
    std::fs::write(&d.config_path, changed).expect("write config");
    d.signal(libc::SIGHUP).expect("SIGHUP");
    wait_for_log(&d, "SIGHUP: configuration reloaded", 1).await;
    let log = d.log();
    for key in ["log.level", "registry.config_path", "metrics.address"] {
        assert!(log.contains(key), "{key} not reported as applied:\n{log}");
    }
    assert!(
        log.lines()
            .any(|l| l.contains("restart") && l.contains("log.format")),
        "log.format not reported as needing a restart:\n{log}"
    );
    c.runtime
        .version(VersionRequest::default())
        .await
        .expect("Version");
    wait_for_log(&d, "rpc ok", 1).await;
    assert!(
        !d.log().lines().any(|l| l.starts_with('{')),
        "log.format changed without a restart"
    );
    c.image
        .pull_image(pull.clone())
        .await
        .expect("pull through the mirror configured by the reload");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    assert!(!scrape(&http, port).await.is_empty(), "metrics endpoint");

    // A broken file changes nothing: logged, and the daemon serves as before.
    std::fs::write(&d.config_path, "this is [not toml").expect("write broken");
    d.signal(libc::SIGHUP).expect("SIGHUP");
    wait_for_log(&d, "configuration reload failed", 1).await;
    let oks = d.log().matches("rpc ok").count();
    c.runtime
        .version(VersionRequest::default())
        .await
        .expect("Version after a broken reload");
    wait_for_log(&d, "rpc ok", oks + 1).await;
    assert!(
        !scrape(&http, port).await.is_empty(),
        "metrics after a broken reload"
    );
    std::fs::write(&d.config_path, original).expect("restore config");
}
