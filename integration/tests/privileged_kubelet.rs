//! kubelet end to end: a real kubelet (built from the Go module proxy by
//! `integration/scripts/build-kubelet.sh`) runs in standalone mode — no API server,
//! static pods from a manifest directory — against berthd, and keeps the pods alive.
//!
//! One kubelet runs every scenario at once: a pod writing logs, a web server with an
//! HTTP readiness probe and an exec liveness probe, a container that keeps failing
//! (restarted with back-off), a container killed by its memory limit, a pod with an
//! init container, and pods removed by deleting their manifests. States are read
//! from kubelet's read-only port and from crictl; kubelet's log must hold no CRI
//! error caused by Berth, and nothing may be left behind.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_integration::cgroup::CgroupParent;
use berth_integration::fixtures::BUSYBOX;
use berth_integration::setup::Node;
use berth_integration::tools::{crictl, tool};
use serde_json::Value;

/// The kubelet release this test runs: `integration/scripts/build-kubelet.sh`'s default.
/// `BERTH_KUBELET_VERSION=v1.34.4` runs the same scenario against an older kubelet
/// (build it first with `KUBELET_VERSION=v1.34.4 integration/scripts/build-kubelet.sh`).
const KUBELET_VERSION: &str = "v1.37.2";

/// kubelet's read-only port (plain HTTP, no auth) on 127.0.0.1.
const READ_ONLY_PORT: u16 = 10255;
/// kubelet's authenticated port; bound to 127.0.0.1 too.
const PORT: u16 = 10250;
/// kubelet's healthz port.
const HEALTHZ_PORT: u16 = 10248;
/// The node name kubelet appends to static pod names.
const NODE: &str = "berth-kubelet-it";
/// `cgroupRoot` of the test kubelet: its QoS and pod cgroups live below this in every
/// hierarchy, so cleanup never touches anything else.
const CGROUP_ROOT: &str = "/berth-kubelet-it";

const NGINX: &str = "registry.k8s.io/e2e-test-images/nginx:1.14-2";

/// A kubelet child process with its own directories; stopped and cleaned up on drop.
struct Kubelet {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Set when the test passed; otherwise drop prints the tail of kubelet's log.
    passed: bool,
}

impl Kubelet {
    fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    fn pod_logs(&self) -> PathBuf {
        self.dir.path().join("pod-logs")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("kubelet.log")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn start(endpoint: &str) -> anyhow::Result<Self> {
        let version =
            std::env::var("BERTH_KUBELET_VERSION").unwrap_or_else(|_| KUBELET_VERSION.to_owned());
        let kubelet = tool(&format!("kubelet-{version}")).with_context(|| {
            format!(
                "kubelet {version} is built by integration/scripts/build-kubelet.sh \
                 (install-deps.sh runs it; KUBELET_VERSION={version} for another release)"
            )
        })?;
        // The binary's own word, so a mislabelled or stale build cannot pass for this
        // release.
        let out = Command::new(&kubelet).arg("--version").output()?;
        let said = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(
            said.split_whitespace().any(|w| w == version),
            "{} says {said:?}, not {version}",
            kubelet.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("berth-kubelet-")
            .tempdir_in("/tmp")?;
        let root = dir.path().join("root");
        for d in ["manifests", "pod-logs", "root", "volume-plugins"] {
            fs::create_dir_all(dir.path().join(d))?;
        }
        let config = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: {manifests}
fileCheckFrequency: 2s
syncFrequency: 5s
address: 127.0.0.1
port: {PORT}
readOnlyPort: {READ_ONLY_PORT}
healthzBindAddress: 127.0.0.1
healthzPort: {HEALTHZ_PORT}
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: {endpoint}
imageServiceEndpoint: {endpoint}
cgroupDriver: cgroupfs
cgroupsPerQOS: true
# kubelet >= 1.35 refuses to start on a cgroup v1 host unless this is false (the
# CI host is v1); it changes nothing on a cgroup v2 host.
failCgroupV1: false
cgroupRoot: {CGROUP_ROOT}
enforceNodeAllocatable: []
failSwapOn: false
protectKernelDefaults: false
podLogsDir: {pod_logs}
volumePluginDir: {volume_plugins}
resolvConf: /etc/resolv.conf
serializeImagePulls: false
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
"#,
            manifests = dir.path().join("manifests").display(),
            pod_logs = dir.path().join("pod-logs").display(),
            volume_plugins = dir.path().join("volume-plugins").display(),
        );
        create_cgroups(CGROUP_ROOT)?;
        let config_path = dir.path().join("kubelet.yaml");
        fs::write(&config_path, config)?;
        let log = fs::File::create(dir.path().join("kubelet.log"))?;
        let child = Command::new(kubelet)
            .arg(format!("--config={}", config_path.display()))
            .arg(format!("--root-dir={}", root.display()))
            .arg(format!("--hostname-override={NODE}"))
            .arg("--v=2")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting kubelet")?;
        Ok(Self {
            child: Some(child),
            dir,
            passed: false,
        })
    }

    /// Fails if kubelet exited (with its log), so waits do not run into timeouts.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            self.child = None;
            bail!("kubelet exited ({status}):\n{}", tail(&self.log(), 60));
        }
        Ok(())
    }

    fn write_manifest(&self, name: &str, yaml: &str) -> anyhow::Result<()> {
        // Written aside and renamed, so kubelet never reads half a manifest.
        let tmp = self.dir.path().join(format!(".{name}.yaml"));
        fs::write(&tmp, yaml)?;
        fs::rename(&tmp, self.manifests().join(format!("{name}.yaml")))?;
        Ok(())
    }

    fn remove_manifest(&self, name: &str) -> anyhow::Result<()> {
        fs::remove_file(self.manifests().join(format!("{name}.yaml")))?;
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop();
        // kubelet mounts nothing for these pods, but be safe about its root dir.
        berth_integration::daemon::unmount_below(self.dir.path());
        drop(CgroupParent(CGROUP_ROOT.to_owned()));
        if !self.passed {
            eprintln!("--- kubelet log (tail) ---\n{}", tail(&self.log(), 80));
        }
    }
}

/// kubelet requires its `cgroupRoot` to exist in every hierarchy (as a node's init
/// system would have created it). A v1 cpuset cgroup needs cpus and mems before
/// anything can join it: copied from the root.
fn create_cgroups(root: &str) -> anyhow::Result<()> {
    for hierarchy in fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let base = hierarchy.path();
        if !base.join("cgroup.procs").exists() {
            continue;
        }
        let dir = base.join(root.trim_start_matches('/'));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for knob in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = fs::read_to_string(base.join(knob)) {
                fs::write(dir.join(knob), v.trim())
                    .with_context(|| format!("writing {}", dir.join(knob).display()))?;
            }
        }
    }
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A static pod manifest.
fn manifest(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    berth-test: kubelet\nspec:\n{spec}"
    )
}

async fn crictl_json(endpoint: &str, args: &[&str]) -> anyhow::Result<Value> {
    let out = crictl(endpoint, args).await?.success()?;
    serde_json::from_str(&out.stdout()).with_context(|| format!("crictl {args:?} output"))
}

/// Containers (all states) whose name is `name`, newest attempt first.
async fn containers_named(endpoint: &str, name: &str) -> anyhow::Result<Vec<Value>> {
    let v = crictl_json(
        endpoint,
        &["ps", "-a", "--name", &format!("^{name}$"), "-o", "json"],
    )
    .await?;
    let mut list = v["containers"].as_array().cloned().unwrap_or_default();
    list.sort_by_key(|c| std::cmp::Reverse(c["metadata"]["attempt"].as_u64().unwrap_or(0)));
    Ok(list)
}

async fn inspect(endpoint: &str, id: &str) -> anyhow::Result<Value> {
    crictl_json(endpoint, &["inspect", "-o", "json", id]).await
}

/// kubelet's view of its pods (`/pods` on the read-only port), by pod name.
async fn kubelet_pods() -> anyhow::Result<HashMap<String, Value>> {
    let body = reqwest::get(format!("http://127.0.0.1:{READ_ONLY_PORT}/pods"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    let v: Value = serde_json::from_str(&body)?;
    Ok(v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| Some((p["metadata"]["name"].as_str()?.to_owned(), p)))
        .collect())
}

/// kubelet's probe counters (`/metrics/probes`): successful results per
/// (probe type, container).
async fn probe_successes() -> anyhow::Result<HashMap<(String, String), f64>> {
    let body = reqwest::get(format!("http://127.0.0.1:{READ_ONLY_PORT}/metrics/probes"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    let mut out = HashMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("prober_probe_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |key: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        if label("result") == "successful" {
            let value: f64 = value.trim().parse().unwrap_or(0.0);
            *out.entry((label("probe_type"), label("container")))
                .or_insert(0.0) += value;
        }
    }
    Ok(out)
}

/// Polls `check` every second until it returns `Some`, failing with `what` and the
/// last observation after `timeout`.
async fn wait_for<T, F, Fut>(
    kubelet: &mut Kubelet,
    what: &str,
    timeout: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Result<T, String>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last: String;
    loop {
        kubelet.check_alive()?;
        match check().await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(seen)) => last = seen,
            Err(e) => last = format!("error: {e:#}"),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn state_of(c: &Value) -> String {
    c["state"].as_str().unwrap_or("?").to_owned()
}

/// CRI log lines: `<RFC3339Nano> <stdout|stderr> <F|P> <text>`.
fn is_cri_log_line(line: &str) -> bool {
    let mut parts = line.splitn(4, ' ');
    let (Some(ts), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    ts.len() >= 20
        && ts.contains('T')
        && matches!(stream, "stdout" | "stderr")
        && matches!(tag, "F" | "P")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubelet_runs_static_pods_on_berth() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let endpoint = node.daemon.endpoint();
    let mut kubelet = Kubelet::start(&endpoint)?;

    // kubelet is up and talks to berthd: its healthz answers and it lists the runtime
    // as ready (no pods can start otherwise).
    wait_for(
        &mut kubelet,
        "kubelet healthz",
        Duration::from_secs(90),
        || async {
            let r = reqwest::get(format!("http://127.0.0.1:{HEALTHZ_PORT}/healthz")).await?;
            let status = r.status();
            let body = r.text().await?;
            Ok(if status.is_success() && body.trim() == "ok" {
                Ok(())
            } else {
                Err(format!("{status} {body}"))
            })
        },
    )
    .await?;

    kubelet.write_manifest(
        "logger",
        &manifest(
            "logger",
            &format!(
                "  containers:\n  - name: logger\n    image: {BUSYBOX}\n    imagePullPolicy: IfNotPresent\n    command: [\"sh\", \"-c\", \"i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done\"]\n"
            ),
        ),
    )?;
    kubelet.write_manifest(
        "web",
        &manifest(
            "web",
            &format!(
                "  containers:\n  - name: web\n    image: {NGINX}\n    imagePullPolicy: IfNotPresent\n    ports:\n    - containerPort: 80\n    readinessProbe:\n      httpGet:\n        path: /\n        port: 80\n      periodSeconds: 2\n    livenessProbe:\n      exec:\n        command: [\"cat\", \"/var/run/nginx.pid\"]\n      periodSeconds: 2\n      failureThreshold: 3\n"
            ),
        ),
    )?;
    kubelet.write_manifest(
        "crasher",
        &manifest(
            "crasher",
            &format!(
                "  restartPolicy: Always\n  containers:\n  - name: crasher\n    image: {BUSYBOX}\n    imagePullPolicy: IfNotPresent\n    command: [\"sh\", \"-c\", \"echo about to fail; exit 3\"]\n"
            ),
        ),
    )?;
    kubelet.write_manifest(
        "oom",
        &manifest(
            "oom",
            &format!(
                "  restartPolicy: Never\n  containers:\n  - name: oom\n    image: {BUSYBOX}\n    imagePullPolicy: IfNotPresent\n    command: [\"dd\", \"if=/dev/zero\", \"of=/dev/null\", \"bs=256M\", \"count=1\"]\n    resources:\n      limits:\n        memory: 32Mi\n"
            ),
        ),
    )?;
    kubelet.write_manifest(
        "init",
        &manifest(
            "init",
            &format!(
                "  volumes:\n  - name: work\n    emptyDir: {{}}\n  initContainers:\n  - name: setup\n    image: {BUSYBOX}\n    imagePullPolicy: IfNotPresent\n    command: [\"sh\", \"-c\", \"echo prepared-by-init > /work/state\"]\n    volumeMounts:\n    - name: work\n      mountPath: /work\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    imagePullPolicy: IfNotPresent\n    command: [\"sh\", \"-c\", \"cat /work/state; sleep 3600\"]\n    volumeMounts:\n    - name: work\n      mountPath: /work\n"
            ),
        ),
    )?;

    kubelet.write_manifest(
        "userns",
        &manifest(
            "userns",
            &format!(
                "  hostUsers: false\n  containers:\n  - name: userns\n    image: {BUSYBOX}\n    imagePullPolicy: IfNotPresent\n    command: [\"sh\", \"-c\", \"touch /etc/written-by-root && echo wrote; sleep 3600\"]\n"
            ),
        ),
    )?;

    // 1. The logger runs and its log is a CRI-format file under kubelet's pod log
    //    directory that crictl reads back.
    let logger = wait_for(
        &mut kubelet,
        "logger running",
        Duration::from_secs(120),
        || async {
            let list = containers_named(&endpoint, "logger").await?;
            Ok(match list.first() {
                Some(c) if state_of(c) == "CONTAINER_RUNNING" => {
                    Ok(c["id"].as_str().unwrap_or_default().to_owned())
                }
                other => Err(format!("{other:?}")),
            })
        },
    )
    .await?;
    let logs = wait_for(
        &mut kubelet,
        "logger output",
        Duration::from_secs(30),
        || async {
            let out = crictl(&endpoint, &["logs", &logger]).await?.success()?;
            let text = out.stdout();
            Ok(if text.contains("tick 2") {
                Ok(text)
            } else {
                Err(text)
            })
        },
    )
    .await?;
    assert!(logs.lines().any(|l| l == "tick 0"), "crictl logs: {logs}");
    let status = inspect(&endpoint, &logger).await?;
    let log_path = PathBuf::from(status["status"]["logPath"].as_str().unwrap_or_default());
    assert!(
        log_path.starts_with(kubelet.pod_logs()),
        "log path {} is not under kubelet's pod log directory {}",
        log_path.display(),
        kubelet.pod_logs().display()
    );
    let file = fs::read_to_string(&log_path)?;
    assert!(
        file.lines().count() >= 3 && file.lines().all(is_cri_log_line),
        "{} is not in CRI log format:\n{file}",
        log_path.display()
    );
    assert!(file.contains(" stdout F tick 1"), "{file}");

    // 2. The web server becomes ready through the HTTP readiness probe on the pod IP,
    //    and the exec liveness probe (ExecSync) keeps succeeding: no restart.
    let web = wait_for(
        &mut kubelet,
        "web probes succeeding",
        Duration::from_secs(120),
        || async {
            let probes = probe_successes().await?;
            let ready = probes
                .get(&("Readiness".to_owned(), "web".to_owned()))
                .copied()
                .unwrap_or(0.0);
            let live = probes
                .get(&("Liveness".to_owned(), "web".to_owned()))
                .copied()
                .unwrap_or(0.0);
            let list = containers_named(&endpoint, "web").await?;
            Ok(match list.first() {
                Some(c) if ready >= 1.0 && live >= 2.0 && state_of(c) == "CONTAINER_RUNNING" => {
                    Ok(c.clone())
                }
                other => Err(format!(
                    "readiness {ready}, liveness {live}, container {other:?}"
                )),
            })
        },
    )
    .await?;
    assert_eq!(
        web["metadata"]["attempt"].as_u64(),
        Some(0),
        "the web server was restarted although its liveness probe passes: {web}"
    );
    let web_pod = format!("web-{NODE}");
    let pods = kubelet_pods().await?;
    assert!(
        pods.contains_key(&web_pod),
        "kubelet /pods lacks {web_pod}: {:?}",
        pods.keys()
    );

    // 3. A container that exits with an error is restarted by kubelet with back-off:
    //    its attempt number rises and every attempt exited with code 3.
    let crashes = wait_for(
        &mut kubelet,
        "crasher restarted twice",
        Duration::from_secs(120),
        || async {
            let list = containers_named(&endpoint, "crasher").await?;
            let attempt = list
                .first()
                .and_then(|c| c["metadata"]["attempt"].as_u64())
                .unwrap_or(0);
            Ok(if attempt >= 2 {
                Ok(list)
            } else {
                Err(format!("attempt {attempt}"))
            })
        },
    )
    .await?;
    for c in crashes.iter().filter(|c| state_of(c) == "CONTAINER_EXITED") {
        let s = inspect(&endpoint, c["id"].as_str().unwrap_or_default()).await?;
        assert_eq!(s["status"]["exitCode"].as_i64(), Some(3), "{s}");
        assert_eq!(s["status"]["reason"].as_str(), Some("Error"), "{s}");
    }

    // 4. A container over its memory limit is OOM-killed and kubelet sees OOMKilled.
    let oom = wait_for(
        &mut kubelet,
        "oom container OOMKilled",
        Duration::from_secs(120),
        || async {
            let list = containers_named(&endpoint, "oom").await?;
            let Some(c) = list.first() else {
                return Ok(Err("no container yet".into()));
            };
            let s = inspect(&endpoint, c["id"].as_str().unwrap_or_default()).await?;
            Ok(
                if s["status"]["state"].as_str() == Some("CONTAINER_EXITED") {
                    Ok(s)
                } else {
                    Err(format!("{}", s["status"]))
                },
            )
        },
    )
    .await?;
    assert_eq!(
        oom["status"]["reason"].as_str(),
        Some("OOMKilled"),
        "{}",
        oom["status"]
    );
    let oom_pod = format!("oom-{NODE}");
    let seen_by_kubelet = wait_for(
        &mut kubelet,
        "kubelet reporting OOMKilled",
        Duration::from_secs(60),
        || async {
            let pods = kubelet_pods().await?;
            let statuses = pods
                .get(&oom_pod)
                .map(|p| p["status"]["containerStatuses"].clone())
                .unwrap_or(Value::Null);
            let reason = statuses[0]["state"]["terminated"]["reason"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            Ok(if reason == "OOMKilled" {
                Ok(statuses)
            } else {
                Err(format!("{statuses}"))
            })
        },
    )
    .await;
    seen_by_kubelet.context("kubelet's /pods (its status manager's view)")?;

    // 5. The init container ran to completion before the main container started, and
    //    what it wrote is visible to the main container through the emptyDir volume.
    let main = wait_for(
        &mut kubelet,
        "main container running",
        Duration::from_secs(120),
        || async {
            let list = containers_named(&endpoint, "main").await?;
            Ok(match list.first() {
                Some(c) if state_of(c) == "CONTAINER_RUNNING" => {
                    Ok(c["id"].as_str().unwrap_or_default().to_owned())
                }
                other => Err(format!("{other:?}")),
            })
        },
    )
    .await?;
    let setup = containers_named(&endpoint, "setup").await?;
    let setup = setup.first().context("init container missing")?;
    let setup = inspect(&endpoint, setup["id"].as_str().unwrap_or_default()).await?;
    let main_status = inspect(&endpoint, &main).await?;
    assert_eq!(
        setup["status"]["state"].as_str(),
        Some("CONTAINER_EXITED"),
        "{setup}"
    );
    assert_eq!(setup["status"]["exitCode"].as_i64(), Some(0), "{setup}");
    let finished = setup["status"]["finishedAt"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let started = main_status["status"]["startedAt"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        !finished.is_empty() && started > finished,
        "main started at {started}, before the init container finished at {finished}"
    );
    let main_logs = wait_for(
        &mut kubelet,
        "main container output",
        Duration::from_secs(30),
        || async {
            let text = crictl(&endpoint, &["logs", &main])
                .await?
                .success()?
                .stdout();
            Ok(if text.contains("prepared-by-init") {
                Ok(text)
            } else {
                Err(text)
            })
        },
    )
    .await?;
    assert!(main_logs.contains("prepared-by-init"));

    // 5b. A `hostUsers: false` pod runs in its own user namespace, with kubelet's
    //     mapping: its root is an unprivileged host uid, yet the image is its own (the
    //     idmapped rootfs): image files show their owners and root writes /etc.
    let userns = wait_for(
        &mut kubelet,
        "userns container running",
        Duration::from_secs(120),
        || async {
            let list = containers_named(&endpoint, "userns").await?;
            Ok(match list.first() {
                Some(c) if state_of(c) == "CONTAINER_RUNNING" => {
                    Ok(c["id"].as_str().unwrap_or_default().to_owned())
                }
                other => Err(format!("{other:?}")),
            })
        },
    )
    .await?;
    let uid_map = crictl(&endpoint, &["exec", &userns, "cat", "/proc/self/uid_map"])
        .await?
        .success()?
        .stdout();
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    assert!(
        fields.len() >= 3 && fields[0] == "0" && fields[1] != "0",
        "the hostUsers: false pod's root is not mapped to an unprivileged host uid: {uid_map}"
    );
    let owner = crictl(
        &endpoint,
        &["exec", &userns, "stat", "-c", "%u:%g", "/etc/passwd"],
    )
    .await?
    .success()?
    .stdout();
    assert_eq!(
        owner.trim(),
        "0:0",
        "image files must show their image owner"
    );
    let userns_logs = wait_for(
        &mut kubelet,
        "userns container output",
        Duration::from_secs(30),
        || async {
            let text = crictl(&endpoint, &["logs", &userns])
                .await?
                .success()?
                .stdout();
            Ok(if text.contains("wrote") {
                Ok(text)
            } else {
                Err(text)
            })
        },
    )
    .await?;
    assert!(
        userns_logs.contains("wrote"),
        "root could not write /etc: {userns_logs}"
    );

    // 6. Deleting a manifest makes kubelet stop and remove the pod: its sandbox and
    //    containers disappear from Berth.
    let pods_json = crictl_json(&endpoint, &["pods", "-o", "json"]).await?;
    let logger_pod = pods_json["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["metadata"]["name"].as_str() == Some(&format!("logger-{NODE}")))
        .and_then(|p| p["id"].as_str())
        .context("logger pod not listed by crictl")?
        .to_owned();
    kubelet.remove_manifest("logger")?;
    wait_for(
        &mut kubelet,
        "logger pod removed",
        Duration::from_secs(180),
        || async {
            let v = crictl_json(&endpoint, &["pods", "-o", "json"]).await?;
            let left: Vec<String> = v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["id"].as_str() == Some(&logger_pod))
                .map(|p| p["state"].as_str().unwrap_or("?").to_owned())
                .collect();
            Ok(if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            })
        },
    )
    .await?;

    // Every pod goes away the same way; then Berth must hold nothing.
    for name in ["web", "crasher", "oom", "init", "userns"] {
        kubelet.remove_manifest(name)?;
    }
    wait_for(
        &mut kubelet,
        "every pod removed",
        Duration::from_secs(240),
        || async {
            let pods = crictl_json(&endpoint, &["pods", "-o", "json"]).await?;
            let ctrs = crictl_json(&endpoint, &["ps", "-a", "-o", "json"]).await?;
            let p = pods["items"].as_array().map(Vec::len).unwrap_or(0);
            let c = ctrs["containers"].as_array().map(Vec::len).unwrap_or(0);
            Ok(if p == 0 && c == 0 {
                Ok(())
            } else {
                Err(format!("{p} pods, {c} containers"))
            })
        },
    )
    .await?;
    let ns_dir = node.daemon.state_dir.join("ns");
    let pinned: Vec<_> = fs::read_dir(&ns_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(pinned.is_empty(), "pinned namespaces left: {pinned:?}");
    let mounts = fs::read_to_string("/proc/self/mountinfo")?;
    // berthd's own shared mount of `<state>/ns` (where it pins namespaces) stays;
    // anything below it or below the root dir (rootfs, /dev/shm, pins) must be gone.
    let ns_root = node.daemon.state_dir.join("ns");
    let leaked: Vec<&str> = mounts
        .lines()
        .filter(|l| {
            let Some(point) = l.split(' ').nth(4).map(Path::new) else {
                return false;
            };
            (point.starts_with(&ns_root) && point != ns_root)
                || point.starts_with(&node.daemon.root_dir)
        })
        .collect();
    assert!(leaked.is_empty(), "mounts left behind: {leaked:#?}");

    // kubelet logged no CRI error that Berth caused: no call it needs is
    // unimplemented, and no answer was malformed or failed inside Berth.
    kubelet.stop();
    let log = kubelet.log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("rpc error")
                && [
                    "Unimplemented",
                    "Internal",
                    "Unknown",
                    "InvalidArgument",
                    "FailedPrecondition",
                ]
                .iter()
                .any(|code| l.contains(&format!("code = {code}")))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "kubelet logged CRI errors:\n{}",
        bad.join("\n")
    );
    kubelet.passed = true;
    Ok(())
}
