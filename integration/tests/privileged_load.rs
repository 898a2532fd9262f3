//! Load: 50 clients, each on its own connection like a kubelet, poll ListPodSandbox,
//! PodSandboxStatus, ListContainers, ContainerStatus and ListContainerStats while a
//! churner creates, starts, stops and removes pods with containers. No RPC may fail,
//! except NotFound for an id whose removal the churner had already begun (a status
//! racing a remove); every RPC has a deadline, so a deadlock fails the test instead of
//! hanging it. p50/p99 latency per RPC is printed.
//!
//! `BERTH_LOAD_CLIENTS` (default 50) and `BERTH_LOAD_SECS` (default 30) size the run.

mod reliability_common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_integration::daemon::DaemonOptions;
use berth_integration::fixtures;
use berth_integration::setup::Node;
use berth_integration::{CriClient, TestDaemon};
use berth_proto::v1::{
    ContainerStatusRequest, CreateContainerRequest, ListContainerStatsRequest,
    ListContainersRequest, ListPodSandboxRequest, PodSandboxStatusRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use reliability_common::{BUSYBOX, CgroupParent, Rng, env_number, pod_config, sleeper};

/// Longest any single RPC may take before the run counts as deadlocked.
const RPC_DEADLINE: Duration = Duration::from_secs(30);
/// Pods the churner keeps alive at once.
const LIVE_PODS: usize = 4;

/// Ids whose removal has begun: a NotFound for one of these is a race, not a bug.
#[derive(Default)]
struct Removing(Mutex<HashSet<String>>);

impl Removing {
    fn add(&self, id: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned());
    }
    fn contains(&self, id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(id)
    }
}

type Latencies = BTreeMap<&'static str, Vec<Duration>>;

/// Times one RPC with a deadline; a timeout is an error naming the RPC.
async fn timed<T>(
    lat: &mut Latencies,
    rpc: &'static str,
    f: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> anyhow::Result<Result<T, tonic::Status>> {
    let t = Instant::now();
    let r = tokio::time::timeout(RPC_DEADLINE, f)
        .await
        .with_context(|| format!("{rpc} did not answer within {RPC_DEADLINE:?} (deadlock?)"))?;
    lat.entry(rpc).or_default().push(t.elapsed());
    Ok(r)
}

/// One kubelet-like poller, until `stop`.
async fn poller(
    mut c: CriClient,
    seed: u64,
    stop: Arc<AtomicBool>,
    removing: Arc<Removing>,
    races: Arc<AtomicU64>,
) -> anyhow::Result<Latencies> {
    let mut rng = Rng::new(seed);
    let mut lat = Latencies::new();
    // A NotFound on a status of an id taken from a list is fine only if the churner
    // had started removing it.
    let not_found_ok = |s: &tonic::Status, id: &str| -> bool {
        s.code() == tonic::Code::NotFound && removing.contains(id)
    };
    while !stop.load(Ordering::Relaxed) {
        let pods = timed(
            &mut lat,
            "ListPodSandbox",
            c.runtime.list_pod_sandbox(ListPodSandboxRequest::default()),
        )
        .await?
        .context("ListPodSandbox")?
        .into_inner()
        .items;
        if let Some(p) = rng.pick(&pods) {
            let r = timed(
                &mut lat,
                "PodSandboxStatus",
                c.runtime.pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: p.id.clone(),
                    verbose: false,
                }),
            )
            .await?;
            match r {
                Ok(_) => {}
                Err(s) if not_found_ok(&s, &p.id) => {
                    races.fetch_add(1, Ordering::Relaxed);
                }
                Err(s) => bail!("PodSandboxStatus {}: {s}", p.id),
            }
        }
        let ctrs = timed(
            &mut lat,
            "ListContainers",
            c.runtime.list_containers(ListContainersRequest::default()),
        )
        .await?
        .context("ListContainers")?
        .into_inner()
        .containers;
        if let Some(ctr) = rng.pick(&ctrs) {
            let r = timed(
                &mut lat,
                "ContainerStatus",
                c.runtime.container_status(ContainerStatusRequest {
                    container_id: ctr.id.clone(),
                    verbose: false,
                }),
            )
            .await?;
            match r {
                Ok(_) => {}
                Err(s) if not_found_ok(&s, &ctr.id) => {
                    races.fetch_add(1, Ordering::Relaxed);
                }
                Err(s) => bail!("ContainerStatus {}: {s}", ctr.id),
            }
        }
        timed(
            &mut lat,
            "ListContainerStats",
            c.runtime
                .list_container_stats(ListContainerStatsRequest::default()),
        )
        .await?
        .context("ListContainerStats")?;
    }
    Ok(lat)
}

/// Creates pods with a running container and removes the oldest, until `stop`.
/// Returns the number of pods created.
async fn churner(
    mut c: CriClient,
    cgroup_parent: String,
    stop: Arc<AtomicBool>,
    removing: Arc<Removing>,
) -> anyhow::Result<u64> {
    let mut lat = Latencies::new();
    let mut live: Vec<(String, String)> = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let name = format!("load-{n}");
        let pod = timed(
            &mut lat,
            "RunPodSandbox",
            c.runtime.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod_config(&name, &cgroup_parent)),
                runtime_handler: String::new(),
            }),
        )
        .await?
        .with_context(|| format!("RunPodSandbox {name}"))?
        .into_inner()
        .pod_sandbox_id;
        let ctr = timed(
            &mut lat,
            "CreateContainer",
            c.runtime.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(sleeper("main")),
                sandbox_config: Some(pod_config(&name, &cgroup_parent)),
            }),
        )
        .await?
        .context("CreateContainer")?
        .into_inner()
        .container_id;
        timed(
            &mut lat,
            "StartContainer",
            c.runtime.start_container(StartContainerRequest {
                container_id: ctr.clone(),
            }),
        )
        .await?
        .context("StartContainer")?;
        live.push((pod, ctr));
        if live.len() > LIVE_PODS {
            let (pod, ctr) = live.remove(0);
            timed(
                &mut lat,
                "StopContainer",
                c.runtime.stop_container(StopContainerRequest {
                    container_id: ctr.clone(),
                    timeout: 0,
                }),
            )
            .await?
            .context("StopContainer")?;
            timed(
                &mut lat,
                "StopPodSandbox",
                c.runtime.stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                }),
            )
            .await?
            .context("StopPodSandbox")?;
            removing.add(&pod);
            removing.add(&ctr);
            timed(
                &mut lat,
                "RemovePodSandbox",
                c.runtime.remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                }),
            )
            .await?
            .context("RemovePodSandbox")?;
        }
    }
    print_latencies("churner", &lat);
    Ok(n)
}

fn print_latencies(who: &str, lat: &Latencies) {
    for (rpc, v) in lat {
        let mut v = v.clone();
        v.sort();
        // Nearest rank: the element below which `per_mille`/1000 of the samples lie.
        let at = |per_mille: usize| {
            let i = (v.len().saturating_sub(1) * per_mille).div_ceil(1000);
            v.get(i).copied().unwrap_or_default()
        };
        eprintln!(
            "{who:<8} {rpc:<20} n={:>6}  p50={:>9.2?}  p99={:>9.2?}  max={:>9.2?}",
            v.len(),
            at(500),
            at(990),
            at(1000)
        );
    }
}

async fn run(d: &TestDaemon, clients: u64, secs: u64, cgroup_parent: &str) -> anyhow::Result<()> {
    let mut c = d.client().await?;
    fixtures::try_pull(&mut c, BUSYBOX)
        .await
        .context("pulling busybox")?;
    let stop = Arc::new(AtomicBool::new(false));
    let removing = Arc::new(Removing::default());
    let races = Arc::new(AtomicU64::new(0));
    let churn = tokio::spawn(churner(
        c.clone(),
        cgroup_parent.to_owned(),
        Arc::clone(&stop),
        Arc::clone(&removing),
    ));
    let mut pollers = Vec::new();
    for i in 0..clients {
        // Its own connection, as each kubelet (or monitoring agent) has.
        let client = d.client().await?;
        pollers.push(tokio::spawn(poller(
            client,
            0x5eed + i,
            Arc::clone(&stop),
            Arc::clone(&removing),
            Arc::clone(&races),
        )));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let pods = churn.await.context("churner task")??;
    let mut all = Latencies::new();
    for p in pollers {
        for (rpc, v) in p.await.context("poller task")?? {
            all.entry(rpc).or_default().extend(v);
        }
    }
    let total: usize = all.values().map(Vec::len).sum();
    eprintln!(
        "{clients} pollers for {secs}s: {total} RPCs ({:.0}/s), {pods} pods churned, {} NotFound races on removed ids",
        total as f64 / secs as f64,
        races.load(Ordering::Relaxed)
    );
    print_latencies("pollers", &all);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pollers_while_pods_churn_see_no_errors() {
    let clients = env_number("BERTH_LOAD_CLIENTS", 50);
    let secs = env_number("BERTH_LOAD_SECS", 30);
    let cgroup_parent = format!("/berthload{}", std::process::id());
    let _cg = CgroupParent(cgroup_parent.clone());
    let node = Node::start_with(DaemonOptions {
        log_level: "info".into(),
        ..DaemonOptions::default()
    })
    .await
    .expect("node");
    let limit = Duration::from_secs(secs + 120);
    match tokio::time::timeout(limit, run(&node.daemon, clients, secs, &cgroup_parent)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{e:#}"),
        Err(_) => panic!("the load run did not finish within {limit:?} (deadlock?)"),
    }
}
