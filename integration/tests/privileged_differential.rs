//! Berth side by side with containerd 2.x + runc, in the same run on the same host,
//! through the same CRI client with the same pod and container configs: a busybox
//! probe reports what a process sees and may do inside (identity, environment, umask,
//! capabilities, rlimits, /dev, mounts and masks, cgroup view, hostname, hosts,
//! resolv.conf, what root may do), plus exit codes, a stop by signal, ExecSync, a
//! missing working directory and the codes of bad input. Every difference must be a
//! row of the reviewed table in docs/conformance.md ("Differences from containerd");
//! a new difference, or a row that no longer happens, fails the test.
//!
//! Also here, one test per gRPC code of bad input (berthd alone): an invalid sysctl
//! value, a sysctl the kernel lacks and a layer entry escaping its root come back as
//! InvalidArgument naming the field or entry, with the errno's name.
//!
//! The peer is containerd 2.x from integration/scripts/build-containerd2.sh (install-deps
//! runs it); `BERTH_DIFF_PEER=containerd` compares with Debian's 1.6 instead (for a
//! machine without the 2.x build; the table is written against 2.x).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_integration::CriClient;
use berth_integration::daemon::{DaemonOptions, TestDaemon};
use berth_integration::fixtures;
use berth_integration::forge::{ImageBuilder, LayerBuilder};
use berth_integration::peer::{Containerd, PAUSE, PeerSpec, peer_busybox_image, peer_specs};
use berth_integration::registry::{CRITEST_HOSTS, TestRegistry};
use berth_proto::v1 as cri;
use tonic::Code;

/// The probe image: static busybox with the applets the probe uses.
const PROBE_IMAGE: &str = "registry.k8s.io/e2e-test-images/berth-probe:1";
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "env", "grep", "hostname", "id", "kill", "ls", "mkdir", "mknod", "mount",
    "nc", "ping", "pwd", "sed", "sleep", "sort", "stat", "chown", "touch",
];
/// An image whose only layer has an entry `../escaped`.
const ESCAPE_IMAGE: &str = "registry.k8s.io/e2e-test-images/berth-escape:1";
/// Upper bound for one RPC and for a probe container to finish.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// What a process sees and may do inside. Each check prints `== <name>` then its
/// lines; the test normalises what legitimately differs between two runs (ids, IPs,
/// mount ids) before comparing.
const PROBE: &str = r#"
sec() { echo "== $1"; }
ok() { if "$@" >/dev/null 2>&1; then echo "$1: ok"; else echo "$1: refused"; fi; }
sec id; id
sec env; env | sort
sec umask; umask
sec cwd; pwd
sec status; grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status
sec limits; cat /proc/self/limits
sec dev; for f in /dev/* /dev/pts/* /dev/shm /dev/mqueue; do [ -e "$f" ] || [ -L "$f" ] && stat -c '%A %t:%T %u:%g %n' "$f"; done
sec mounts; cat /proc/self/mountinfo
sec cgroup; cat /proc/self/cgroup
sec hostname; hostname
sec hosts; cat /etc/hosts
sec resolv; cat /etc/resolv.conf
sec root-may
ok mknod /tmp/null c 1 3
touch /tmp/f; ok chown 123:456 /tmp/f
ok ping -c1 -W2 127.0.0.1
mkdir -p /tmp/m; ok mount -t tmpfs none /tmp/m
ok hostname probe-renamed
nc -l -p 80 </dev/null >/dev/null 2>&1 & p=$!
r="bind :80: no answer in 5 s"
i=0
while [ $i -lt 50 ]; do
  i=$((i + 1))
  if grep -q ':0050 0*:0000 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null; then r="bind :80: ok"; break; fi
  if ! kill -0 $p 2>/dev/null; then r="bind :80: refused"; break; fi
  sleep 0.1
done
kill $p 2>/dev/null; echo "$r"
sec end
"#;

// ---------------------------------------------------------------------------------
// one runtime
// ---------------------------------------------------------------------------------

/// A runtime under comparison: berthd or the containerd peer.
struct Side {
    name: &'static str,
    client: CriClient,
    logs: tempfile::TempDir,
}

async fn rpc<T>(
    what: &str,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(RPC_TIMEOUT, fut).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "{what}: no answer within {RPC_TIMEOUT:?}"
        ))),
    }
}

/// Pod `name` of `side`, the same on both sides but for its uid and log directory:
/// hostname `probe`, a cluster's DNS settings.
fn pod_config(side: &Side, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_owned(),
            uid: format!("diff-{}-{name}", side.name),
            namespace: "diff".to_owned(),
            attempt: 0,
        }),
        hostname: "probe".to_owned(),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.0.0.10".to_owned()],
            searches: vec!["diff.svc.cluster.local".to_owned()],
            options: vec!["ndots:5".to_owned()],
        }),
        ..fixtures::pod_config(name, &side.logs.path().join(name))
    }
}

/// A container of the probe image running `command`.
fn container_config(name: &str, command: &[&str]) -> cri::ContainerConfig {
    fixtures::container_config(name, PROBE_IMAGE, command)
}

impl Side {
    async fn run_pod(&mut self, config: &cri::PodSandboxConfig) -> Result<String, tonic::Status> {
        rpc(
            "RunPodSandbox",
            self.client
                .runtime
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: String::new(),
                }),
        )
        .await
        .map(|r| r.pod_sandbox_id)
    }

    async fn create(
        &mut self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        rpc(
            "CreateContainer",
            self.client
                .runtime
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod.to_owned(),
                    config: Some(config),
                    sandbox_config: Some(pod_config.clone()),
                }),
        )
        .await
        .map(|r| r.container_id)
    }

    async fn start(&mut self, id: &str) -> Result<(), tonic::Status> {
        rpc(
            "StartContainer",
            self.client
                .runtime
                .start_container(cri::StartContainerRequest {
                    container_id: id.to_owned(),
                }),
        )
        .await
        .map(drop)
    }

    /// Waits (bounded) for the container to exit; its status.
    async fn wait_exit(&mut self, id: &str) -> cri::ContainerStatus {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            let status = rpc(
                "ContainerStatus",
                self.client
                    .runtime
                    .container_status(cri::ContainerStatusRequest {
                        container_id: id.to_owned(),
                        verbose: false,
                    }),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: ContainerStatus: {e}", self.name))
            .status
            .expect("status");
            if status.state == cri::ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: container {id} did not exit within {EXIT_TIMEOUT:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `config` to completion in `pod`: its exit code, reason and output (the CRI
    /// log's messages, partial lines joined), or the code of the RPC that failed.
    async fn run_to_exit(
        &mut self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<(i32, String, String), String> {
        let log = Path::new(&pod_config.log_directory).join(&config.log_path);
        let id = self
            .create(pod, pod_config, config)
            .await
            .map_err(|e| format!("CreateContainer: {:?}", e.code()))?;
        self.start(&id)
            .await
            .map_err(|e| format!("StartContainer: {:?}", e.code()))?;
        let status = self.wait_exit(&id).await;
        Ok((status.exit_code, status.reason, read_cri_log(&log)))
    }
}

/// The messages of a CRI log file (`<time> <stream> <P|F> <msg>`), partial lines joined.
fn read_cri_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_, _, tag) = (parts.next(), parts.next(), parts.next());
        out.push_str(parts.next().unwrap_or(""));
        if tag != Some("P") {
            out.push('\n');
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// normalisation and comparison
// ---------------------------------------------------------------------------------

/// `check -> lines`, from the probe's `== name` sections, normalised.
type Report = BTreeMap<String, BTreeSet<String>>;

fn add(report: &mut Report, check: &str, line: impl Into<String>) {
    report
        .entry(check.to_owned())
        .or_default()
        .insert(line.into());
}

/// IPv4 addresses of pods (10.x) replaced by `<pod-ip>`: each runtime has its subnet.
fn mask_pod_ips(line: &str) -> String {
    line.split(|c: char| c.is_whitespace())
        .map(|w| {
            let octets: Vec<_> = w.split('.').collect();
            if octets.len() == 4
                && octets[0] == "10"
                && octets.iter().all(|o| o.parse::<u8>().is_ok())
            {
                "<pod-ip>".to_owned()
            } else {
                w.to_owned()
            }
        })
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One mountinfo line as `<target> <fstype> <flags>`: mount ids, sources and
/// filesystem options (overlay lowerdirs, tmpfs sizes) differ between any two runs.
fn normalise_mount(line: &str) -> Option<String> {
    let (left, right) = line.split_once(" - ")?;
    let f: Vec<_> = left.split(' ').collect();
    let target = f.get(4)?;
    let mut fstype = right.split(' ').next()?;
    // Each runtime keeps these files in its own state dir, on whatever the host has.
    if ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"].contains(target) {
        fstype = "<state dir fs>";
    }
    let flags: Vec<_> = f
        .get(5)?
        .split(',')
        .filter(|o| ["ro", "rw", "nosuid", "nodev", "noexec"].contains(o))
        .collect();
    Some(format!("{target} {fstype} {}", flags.join(",")))
}

/// One /proc/self/cgroup line as `<id>:<controllers>:<view>`: `/` when the container sees
/// its own cgroup as the root (a cgroup namespace), `<nested>` when it sees the path
/// (whose names differ by runtime).
fn normalise_cgroup(line: &str) -> Option<String> {
    let mut f = line.splitn(3, ':');
    let (id, ctrls, path) = (f.next()?, f.next()?, f.next()?);
    let view = if path == "/" { "/" } else { "<nested>" };
    Some(format!("{id}:{ctrls}:{view}"))
}

/// One /etc/hosts line, pod IPs masked; a line copied from the node's own /etc/hosts
/// (other than localhost's) as `<node /etc/hosts entry>`, since those differ by host.
fn normalise_hosts_line(line: &str) -> String {
    let line = mask_pod_ips(line);
    if line.contains("localhost") || line.contains("ip6-") {
        return line;
    }
    let node = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let copied = node
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .any(|l| !l.is_empty() && !l.starts_with('#') && l == line);
    if copied {
        "<node /etc/hosts entry>".to_owned()
    } else {
        line
    }
}

/// The probe's output as a report, checks prefixed with `prefix`.
fn parse_probe(report: &mut Report, prefix: &str, output: &str) {
    let mut check = String::new();
    let mut ended = false;
    for line in output.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            check = format!("{prefix}{name}");
            ended = name == "end";
            continue;
        }
        if check.is_empty() {
            continue;
        }
        let line = match check.strip_prefix(prefix).unwrap_or("") {
            "mounts" => match normalise_mount(line) {
                Some(l) => l,
                None => continue,
            },
            "cgroup" => match normalise_cgroup(line) {
                Some(l) => l,
                None => continue,
            },
            "hosts" => normalise_hosts_line(line),
            "limits" | "status" | "resolv" => mask_pod_ips(line),
            _ => line.trim_end().to_owned(),
        };
        if !line.is_empty() {
            add(report, &check, line);
        }
    }
    add(
        report,
        &format!("{prefix}completed"),
        if ended { "yes" } else { "no: output cut short" },
    );
}

/// A reviewed difference: the check, the line only Berth shows, the line only the
/// peer shows (`None`: none), and why.
#[derive(Debug)]
struct Known {
    check: String,
    berth: Option<String>,
    peer: Option<String>,
    /// The row depends on the host or on work in flight (its why starts with
    /// `(may vanish)`): its absence is reported, not a failure.
    may_vanish: bool,
}

impl Known {
    /// Whether this row is about `check` (a row for `mounts` also covers the probe run
    /// as another user, `uid1000/mounts`).
    fn covers(&self, check: &str) -> bool {
        check == self.check || check.ends_with(&format!("/{}", self.check))
    }
}

/// The table under `<!-- differential:begin -->` in docs/conformance.md: rows
/// `| check | Berth | containerd | why |`, cells in backticks, `—` for none.
fn known_differences() -> Vec<Known> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/conformance.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let table = doc
        .split("<!-- differential:begin -->")
        .nth(1)
        .and_then(|t| t.split("<!-- differential:end -->").next())
        .expect("docs/conformance.md has the differential table markers");
    let cell = |c: &str| {
        let c = c.trim();
        (c != "—").then(|| {
            c.strip_prefix('`')
                .and_then(|c| c.strip_suffix('`'))
                .unwrap_or_else(|| panic!("cell {c:?} is neither `code` nor —"))
                .replace("\\|", "|")
        })
    };
    table
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---") && !l.starts_with("| check"))
        .map(|l| {
            // Split on `|` not escaped as `\|`.
            let mut cells = Vec::new();
            let mut cur = String::new();
            let mut chars = l.trim().trim_matches('|').chars().peekable();
            while let Some(c) = chars.next() {
                if c == '\\' && chars.peek() == Some(&'|') {
                    cur.push_str("\\|");
                    chars.next();
                } else if c == '|' {
                    cells.push(std::mem::take(&mut cur));
                } else {
                    cur.push(c);
                }
            }
            cells.push(cur);
            assert!(cells.len() >= 4, "table row {l:?} needs 4 cells");
            Known {
                check: cells[0].trim().trim_matches('`').to_owned(),
                berth: cell(&cells[1]),
                peer: cell(&cells[2]),
                may_vanish: cells[3].trim().starts_with("(may vanish)"),
            }
        })
        .collect()
}

/// Every line one side has and the other lacks must be a row of the table, and every
/// row must still happen. Returns the problems, one per line.
fn compare(berth: &Report, peer: &Report, known: &[Known]) -> Vec<String> {
    let empty = BTreeSet::new();
    let mut used = vec![false; known.len()];
    let mut problems = Vec::new();
    let checks: BTreeSet<_> = berth.keys().chain(peer.keys()).collect();
    for check in checks {
        let b = berth.get(check).unwrap_or(&empty);
        let p = peer.get(check).unwrap_or(&empty);
        for (side, only) in [("Berth", b.difference(p)), ("containerd", p.difference(b))] {
            for line in only {
                let hit = known.iter().position(|k| {
                    k.covers(check)
                        && if side == "Berth" {
                            k.berth.as_deref() == Some(line)
                        } else {
                            k.peer.as_deref() == Some(line)
                        }
                });
                match hit {
                    Some(i) => used[i] = true,
                    None => problems.push(format!(
                        "new difference in {check}: only {side} has `{line}`"
                    )),
                }
            }
        }
    }
    for (k, used) in known.iter().zip(used) {
        if !used && k.may_vanish {
            eprintln!("note: table row no longer happens (it may vanish): {k:?}");
        } else if !used {
            problems.push(format!(
                "table row no longer happens (remove it from docs/conformance.md): {k:?}"
            ));
        }
    }
    problems
}

// ---------------------------------------------------------------------------------
// the comparison run
// ---------------------------------------------------------------------------------

/// Everything one runtime shows, as a report.
async fn observe(side: &mut Side) -> Report {
    let mut report = Report::new();
    let name = side.name;
    let pod_cfg = pod_config(side, "probe");
    let pod = side
        .run_pod(&pod_cfg)
        .await
        .unwrap_or_else(|e| panic!("{name}: RunPodSandbox: {e}"));

    // The probe as root and as an unprivileged user.
    for (prefix, user) in [("", None), ("uid1000/", Some(1000))] {
        let mut cfg = container_config(
            if user.is_some() {
                "probe-user"
            } else {
                "probe"
            },
            &["sh", "-c", PROBE],
        );
        if let Some(uid) = user {
            cfg.linux = Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    run_as_user: Some(cri::Int64Value { value: uid }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        match side.run_to_exit(&pod, &pod_cfg, cfg).await {
            Ok((code, _, out)) => {
                parse_probe(&mut report, prefix, &out);
                add(&mut report, &format!("{prefix}exit"), code.to_string());
            }
            Err(e) => add(&mut report, &format!("{prefix}exit"), e),
        }
    }

    // Exit codes and reasons.
    for (name, cmd) in [
        ("exit-0", "true"),
        ("exit-7", "exit 7"),
        ("exit-by-signal", "kill -KILL $$"),
    ] {
        let r = side
            .run_to_exit(&pod, &pod_cfg, container_config(name, &["sh", "-c", cmd]))
            .await;
        let line = match r {
            Ok((code, reason, _)) => format!("{code} {reason}"),
            Err(e) => e,
        };
        add(&mut report, name, line);
    }

    // A working directory the image does not have.
    let mut cfg = container_config("workdir", &["pwd"]);
    cfg.working_dir = "/no/such/dir".to_owned();
    let line = match side.run_to_exit(&pod, &pod_cfg, cfg).await {
        Ok((code, _, out)) => format!("{code} {}", out.trim()),
        Err(e) => e,
    };
    add(&mut report, "workdir-missing", line);

    // A long-running container: ExecSync, then StopContainer with a 1 s grace period.
    let id = side
        .create(
            &pod,
            &pod_cfg,
            container_config("sleeper", &["sleep", "1000"]),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: CreateContainer: {e}"));
    side.start(&id)
        .await
        .unwrap_or_else(|e| panic!("{name}: StartContainer: {e}"));
    for (check, cmd) in [
        (
            "exec-sync",
            vec!["sh", "-c", "echo out; echo err >&2; exit 3"],
        ),
        ("exec-sync-missing-binary", vec!["/no/such/binary"]),
    ] {
        let r = rpc(
            "ExecSync",
            side.client.runtime.exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: cmd.into_iter().map(str::to_owned).collect(),
                timeout: 10,
            }),
        )
        .await;
        let line = match r {
            Ok(r) => format!(
                "exit {} stdout {:?} stderr-empty {}",
                r.exit_code,
                String::from_utf8_lossy(&r.stdout),
                r.stderr.is_empty(),
            ),
            Err(e) => format!("{:?}", e.code()),
        };
        add(&mut report, check, line);
    }
    rpc(
        "StopContainer",
        side.client
            .runtime
            .stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: 1,
            }),
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: StopContainer: {e}"));
    let st = side.wait_exit(&id).await;
    add(
        &mut report,
        "stop-with-1s-grace",
        format!("{} {}", st.exit_code, st.reason),
    );

    // Bad input: an invalid sysctl value, a sysctl the kernel lacks, an image with a
    // layer entry escaping its root.
    for (check, key, value) in [
        ("bad-sysctl-value", "net.ipv4.ip_forward", "not-a-number"),
        ("unknown-sysctl", "net.ipv4.no_such_sysctl", "1"),
    ] {
        let mut cfg = pod_config(side, check);
        if let Some(l) = cfg.linux.as_mut() {
            l.sysctls.insert(key.to_owned(), value.to_owned());
        }
        let line = match side.run_pod(&cfg).await {
            Ok(_) => "accepted".to_owned(),
            Err(e) => format!("{:?}", e.code()),
        };
        add(&mut report, check, line);
    }
    let r = rpc(
        "PullImage",
        side.client.image.pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: ESCAPE_IMAGE.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await;
    let line = match r {
        Ok(_) => "pulled".to_owned(),
        Err(e) => format!("{:?}", e.code()),
    };
    add(&mut report, "layer-entry-escaping", line);
    report
}

/// Stops and removes every pod of a side (bounded), so nothing outlives the test.
async fn remove_pods(side: &mut Side) {
    let Ok(pods) = rpc(
        "ListPodSandbox",
        side.client
            .runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest::default()),
    )
    .await
    else {
        return;
    };
    for pod in pods.items {
        let _ = rpc(
            "StopPodSandbox",
            side.client
                .runtime
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: pod.id.clone(),
                }),
        )
        .await;
        let _ = rpc(
            "RemovePodSandbox",
            side.client
                .runtime
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: pod.id,
                }),
        )
        .await;
    }
}

/// The registry with the probe, pause and escaping images, and a certs.d mirroring the
/// usual upstream hosts to it.
async fn registry() -> (TestRegistry, tempfile::TempDir, DaemonOptions) {
    let registry = TestRegistry::start().expect("registry");
    registry
        .push(
            "e2e-test-images/berth-probe",
            "1",
            &peer_busybox_image(APPLETS, &[], &["sh"]).expect("probe image"),
        )
        .await
        .expect("push probe");
    registry
        .push(
            "pause",
            "3.9",
            &peer_busybox_image(&["sleep"], &["/bin/sleep", "2147483647"], &[])
                .expect("pause image"),
        )
        .await
        .expect("push pause");
    let escape = ImageBuilder::new()
        .layer(LayerBuilder::new().raw_name(b"../escaped", b"outside"))
        .cmd(["sh"])
        .build()
        .expect("escape image");
    registry
        .push("e2e-test-images/berth-escape", "1", &escape)
        .await
        .expect("push escape");
    let certs = tempfile::tempdir().expect("certs dir");
    registry
        .write_mirror_hosts(certs.path(), CRITEST_HOSTS)
        .expect("mirror hosts");
    let options = DaemonOptions {
        extra_config: format!(
            "\n[registry]\nconfig_path = {:?}\nstall_timeout_secs = 20\n",
            certs.path().display().to_string()
        ),
        ..DaemonOptions::default()
    };
    (registry, certs, options)
}

/// The peer this run compares with: containerd 2.x unless `BERTH_DIFF_PEER` names
/// another, on its own bridge.
fn peer_spec() -> PeerSpec {
    let key = std::env::var("BERTH_DIFF_PEER").unwrap_or_else(|_| "containerd2".to_owned());
    let mut spec = peer_specs()
        .into_iter()
        .find(|s| s.key == key)
        .unwrap_or_else(|| panic!("BERTH_DIFF_PEER={key:?}: unknown peer"));
    spec.network = "berth-diff";
    spec.bridge = "berthdiff0";
    spec.subnet = "10.96.0.0/16";
    if let Some(why) = spec.missing() {
        panic!("the containerd peer cannot run here: {why}");
    }
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_matches_containerd_except_the_reviewed_differences() {
    let started = Instant::now();
    let spec = peer_spec();
    let (registry, _certs, options) = registry().await;
    let daemon = TestDaemon::start_with(options).await.expect("berthd");
    let ctd = Containerd::start(&spec, &registry.url(), CRITEST_HOSTS)
        .await
        .expect("containerd");
    let mut berth = Side {
        name: "berth",
        client: daemon.client().await.expect("berthd client"),
        logs: tempfile::tempdir().expect("logs"),
    };
    let mut peer = Side {
        name: "containerd",
        client: CriClient::connect(&ctd.socket)
            .await
            .expect("containerd client"),
        logs: tempfile::tempdir().expect("logs"),
    };
    for side in [&mut berth, &mut peer] {
        for image in [PROBE_IMAGE, PAUSE] {
            rpc(
                "PullImage",
                side.client.image.pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image: image.to_owned(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: pulling {image}: {e}", side.name));
        }
    }
    // Both sides concurrently: the run is twice as quick, and neither sees the other.
    let (b, p) = tokio::join!(observe(&mut berth), observe(&mut peer));
    remove_pods(&mut berth).await;
    remove_pods(&mut peer).await;
    let dump = |r: &Report| {
        r.iter()
            .flat_map(|(k, v)| v.iter().map(move |l| format!("{k}: {l}")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if std::env::var_os("BERTH_DIFF_DUMP").is_some() {
        eprintln!(
            "---- berth ----\n{}\n---- containerd ----\n{}",
            dump(&b),
            dump(&p)
        );
    }
    // The probe itself works on both sides: it ran to its end, and root's bind of a
    // low port (CAP_NET_BIND_SERVICE on both) was seen listening.
    for (side, r) in [("Berth", &b), (spec.key, &p)] {
        for (check, line) in [("completed", "yes"), ("root-may", "bind :80: ok")] {
            assert!(
                r.get(check).is_some_and(|l| l.contains(line)),
                "{side}'s probe is broken: no `{line}` in {check}:\n{}",
                dump(r)
            );
        }
    }
    let problems = compare(&b, &p, &known_differences());
    eprintln!("differential run took {:?}", started.elapsed());
    assert!(
        problems.is_empty(),
        "Berth and {} differ beyond docs/conformance.md's table:\n{}\n(BERTH_DIFF_DUMP=1 prints both reports)",
        spec.key,
        problems.join("\n")
    );
    drop(ctd);
    drop(daemon);
    drop(registry);
}

// ---------------------------------------------------------------------------------
// the gRPC code of bad input, one test per code (berthd alone)
// ---------------------------------------------------------------------------------

async fn berth_alone() -> (TestRegistry, tempfile::TempDir, TestDaemon, Side) {
    let (registry, certs, options) = registry().await;
    let daemon = TestDaemon::start_with(options).await.expect("berthd");
    let side = Side {
        name: "berth",
        client: daemon.client().await.expect("client"),
        logs: tempfile::tempdir().expect("logs"),
    };
    (registry, certs, daemon, side)
}

async fn pod_count(side: &mut Side) -> usize {
    rpc(
        "ListPodSandbox",
        side.client
            .runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest::default()),
    )
    .await
    .expect("ListPodSandbox")
    .items
    .len()
}

/// RunPodSandbox with one sysctl: its error (it must fail).
async fn run_pod_with_sysctl(side: &mut Side, key: &str, value: &str) -> tonic::Status {
    let mut cfg = pod_config(side, "sysctl");
    if let Some(l) = cfg.linux.as_mut() {
        l.sysctls.insert(key.to_owned(), value.to_owned());
    }
    let err = side
        .run_pod(&cfg)
        .await
        .expect_err("a pod with a bad sysctl must be refused");
    assert_eq!(
        pod_count(side).await,
        0,
        "a refused pod is not half-created"
    );
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_sysctl_value_is_invalid_argument_naming_it() {
    let (_registry, _certs, _daemon, mut side) = berth_alone().await;
    let err = run_pod_with_sysctl(&mut side, "net.ipv4.ip_forward", "not-a-number").await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let msg = err.message();
    for part in [
        "linux.sysctls",
        "net.ipv4.ip_forward",
        "not-a-number",
        "(EINVAL)",
    ] {
        assert!(msg.contains(part), "message lacks {part:?}: {msg}");
    }
    assert!(!msg.contains("os error"), "errno shown as a number: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysctl_the_kernel_lacks_is_invalid_argument_naming_it() {
    let (_registry, _certs, _daemon, mut side) = berth_alone().await;
    let err = run_pod_with_sysctl(&mut side, "net.ipv4.no_such_sysctl", "1").await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let msg = err.message();
    for part in ["linux.sysctls", "net.ipv4.no_such_sysctl", "(ENOENT)"] {
        assert!(msg.contains(part), "message lacks {part:?}: {msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_entry_escaping_its_root_is_invalid_argument_naming_it() {
    let (_registry, _certs, daemon, mut side) = berth_alone().await;
    let err = rpc(
        "PullImage",
        side.client.image.pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: ESCAPE_IMAGE.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await
    .expect_err("an image with an escaping entry must not be pulled");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("../escaped"),
        "message does not name the entry: {}",
        err.message()
    );
    let images = rpc(
        "ListImages",
        side.client
            .image
            .list_images(cri::ListImagesRequest::default()),
    )
    .await
    .expect("ListImages");
    assert!(
        !images
            .images
            .iter()
            .any(|i| i.repo_tags.iter().any(|t| t == ESCAPE_IMAGE)),
        "the refused image is listed"
    );
    assert!(
        !daemon.root_dir.join("escaped").exists()
            && !daemon.dir().join("escaped").exists()
            && !PathBuf::from("/escaped").exists(),
        "the entry was written outside"
    );
}
