//! Crash at any point: a seeded storm of pod and container creates, starts, stops,
//! removes and image pulls while berthd is SIGKILLed at random moments (and, at
//! random, a container's berth-monitor or init is killed). After every restart each
//! object whose RPC was acknowledged is listed with a consistent state, nothing
//! half-created is visible, and every listed object can still be operated on. At the
//! end, after removing everything, the host holds nothing of the storm: no mount,
//! pinned netns, cgroup, veth, IPAM lease, monitor process or per-object file.
//!
//! `BERTH_CRASH_SEED` replays a run's choices (the seed is printed at the start);
//! `BERTH_CRASH_KILLS` sets the number of berthd kills (default 40, about a minute).

mod reliability_common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use berth_integration::daemon::{DIE_AFTER_MONITOR_SPAWN, DaemonOptions, TEST_HOOKS_NEEDED};
use berth_integration::fixtures;
use berth_integration::setup::Node;
use berth_integration::{CriClient, TestDaemon};
use berth_proto::v1::{
    ContainerState, ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    ImageStatusRequest, ListContainersRequest, ListPodSandboxRequest, PodSandboxState,
    PodSandboxStatusRequest, PullImageRequest, RemoveContainerRequest, RemoveImageRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use reliability_common::{
    BUSYBOX, CgroupParent, Rng, SERIAL, become_reaper, bridge_ports, cgroups_under, entries,
    env_number, is_pinned_ns, leases_of, monitor_pids, mounts_under, paths_naming, pod_config,
    seed_from_env, sleeper,
};

/// Images the storm pulls and removes (no container uses them).
const CHURN_IMAGES: [&str; 2] = [
    "gcr.io/k8s-staging-cri-tools/test-image-1:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-2:latest",
];
const MAX_PODS: usize = 4;
const MAX_CONTAINERS_PER_POD: usize = 3;
/// How long one RPC may take before the storm calls it a hang.
const RPC_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PodSt {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum CtrSt {
    Created,
    Running,
    Exited,
}

/// What the storm may see of a pod at the next check.
#[derive(Debug, Clone)]
struct PodM {
    name: String,
    allowed: BTreeSet<PodSt>,
    may_be_gone: bool,
}

/// What the storm may see of a container at the next check.
#[derive(Debug, Clone)]
struct CtrM {
    pod: String,
    name: String,
    allowed: BTreeSet<CtrSt>,
    /// Exit codes acceptable if it is seen exited (empty: any non-zero).
    codes: BTreeSet<i32>,
    may_be_gone: bool,
}

#[derive(Debug, Default)]
struct Model {
    pods: BTreeMap<String, PodM>,
    ctrs: BTreeMap<String, CtrM>,
    /// Pod names whose RunPodSandbox was cut off by a kill.
    pending_pods: BTreeSet<String>,
    /// (pod id, container name) whose CreateContainer was cut off.
    pending_ctrs: BTreeSet<(String, String)>,
    /// Churn images: Some(true) present, Some(false) absent, None unknown.
    images: BTreeMap<&'static str, Option<bool>>,
    /// Every pod and container id ever seen, for the leak checks.
    ever: BTreeSet<String>,
    next_name: u64,
}

#[derive(Debug, Clone)]
enum Op {
    RunPod(String),
    StopPod(String),
    RemovePod(String),
    Create(String, String),
    Start(String),
    Stop(String, i64),
    Remove(String),
    Pull(&'static str),
    RemoveImage(&'static str),
    KillInit(String),
    KillMonitor(String),
}

impl Op {
    /// The pod the op touches (batches run ops of distinct pods side by side).
    fn pod(&self, m: &Model) -> Option<String> {
        match self {
            Op::RunPod(_) | Op::Pull(_) | Op::RemoveImage(_) => None,
            Op::StopPod(p) | Op::RemovePod(p) | Op::Create(p, _) => Some(p.clone()),
            Op::Start(c)
            | Op::Stop(c, _)
            | Op::Remove(c)
            | Op::KillInit(c)
            | Op::KillMonitor(c) => m.ctrs.get(c).map(|c| c.pod.clone()),
        }
    }
}

fn one<T: Copy + Ord>(v: T) -> BTreeSet<T> {
    BTreeSet::from([v])
}

fn ctr_is(m: &Model, id: &str, st: CtrSt) -> bool {
    m.ctrs.get(id).is_some_and(|c| c.allowed == one(st))
}

/// Chooses an op that must succeed given the model (which is exact between kills).
fn choose(rng: &mut Rng, m: &mut Model, allow_kills: bool) -> Op {
    let ready: Vec<String> = m
        .pods
        .iter()
        .filter(|(_, p)| p.allowed == one(PodSt::Ready))
        .map(|(id, _)| id.clone())
        .collect();
    let pods: Vec<String> = m.pods.keys().cloned().collect();
    let with = |st: CtrSt| -> Vec<String> {
        m.ctrs
            .keys()
            .filter(|id| ctr_is(m, id, st))
            .cloned()
            .collect()
    };
    let created = with(CtrSt::Created);
    let running = with(CtrSt::Running);
    let ctrs: Vec<String> = m.ctrs.keys().cloned().collect();
    for _ in 0..50 {
        let op = match rng.below(100) {
            0..=14 if m.pods.len() < MAX_PODS => {
                m.next_name += 1;
                Op::RunPod(format!("storm-{}", m.next_name))
            }
            15..=21 => match rng.pick(&ready) {
                Some(p) => Op::StopPod(p.clone()),
                None => continue,
            },
            22..=29 => match rng.pick(&pods) {
                Some(p) => Op::RemovePod(p.clone()),
                None => continue,
            },
            30..=49 => {
                let room: Vec<&String> = ready
                    .iter()
                    .filter(|p| {
                        m.ctrs.values().filter(|c| &&c.pod == p).count() < MAX_CONTAINERS_PER_POD
                    })
                    .collect();
                match rng.pick(&room) {
                    Some(p) => {
                        m.next_name += 1;
                        Op::Create((*p).clone(), format!("c{}", m.next_name))
                    }
                    None => continue,
                }
            }
            50..=64 => match rng.pick(&created) {
                Some(c) => Op::Start(c.clone()),
                None => continue,
            },
            65..=72 => match rng.pick(&running) {
                Some(c) => Op::Stop(c.clone(), if rng.chance(30) { 2 } else { 0 }),
                None => continue,
            },
            73..=82 => match rng.pick(&ctrs) {
                Some(c) => Op::Remove(c.clone()),
                None => continue,
            },
            83..=88 => {
                let img = CHURN_IMAGES[usize::try_from(rng.below(2)).unwrap_or(0)];
                if m.images.get(img) == Some(&Some(true)) {
                    Op::RemoveImage(img)
                } else {
                    Op::Pull(img)
                }
            }
            89..=93 if allow_kills => match rng.pick(&running) {
                Some(c) => Op::KillInit(c.clone()),
                None => continue,
            },
            94..=99 if allow_kills => {
                let live: Vec<String> = created.iter().chain(&running).cloned().collect();
                match rng.pick(&live) {
                    Some(c) => Op::KillMonitor(c.clone()),
                    None => continue,
                }
            }
            _ => continue,
        };
        return op;
    }
    m.next_name += 1;
    Op::Pull(CHURN_IMAGES[0])
}

/// Whether an RPC error means "the daemon went away" (the outcome is unknown) rather
/// than a refusal by a live daemon.
fn cut_off(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
    )
}

/// Pid fields of `ContainerStatus(verbose)`.
async fn ctr_pids(c: &mut CriClient, id: &str) -> anyhow::Result<(i32, i32)> {
    let r = c
        .runtime
        .container_status(ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: true,
        })
        .await?
        .into_inner();
    let info: serde_json::Value =
        serde_json::from_str(r.info.get("info").map_or("{}", String::as_str))?;
    let pid = |k: &str| {
        info[k]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or(0)
    };
    Ok((pid("pid"), pid("monitorPid")))
}

/// Runs one op. `Ok(Ok(ret))` is an acknowledged success (ret: new id for creations),
/// `Ok(Err(status))` is an RPC error.
async fn run_op(
    c: &mut CriClient,
    op: &Op,
    cgroup_parent: &str,
) -> anyhow::Result<Result<Option<String>, tonic::Status>> {
    let r: Result<Option<String>, tonic::Status> = match op {
        Op::RunPod(name) => c
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod_config(name, cgroup_parent)),
                runtime_handler: String::new(),
            })
            .await
            .map(|r| Some(r.into_inner().pod_sandbox_id)),
        Op::StopPod(p) => c
            .runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: p.clone(),
            })
            .await
            .map(|_| None),
        Op::RemovePod(p) => c
            .runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: p.clone(),
            })
            .await
            .map(|_| None),
        Op::Create(p, name) => c
            .runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: p.clone(),
                config: Some(sleeper(name)),
                sandbox_config: Some(pod_config("unused", cgroup_parent)),
            })
            .await
            .map(|r| Some(r.into_inner().container_id)),
        Op::Start(id) => c
            .runtime
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map(|_| None),
        Op::Stop(id, t) => c
            .runtime
            .stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout: *t,
            })
            .await
            .map(|_| None),
        Op::Remove(id) => c
            .runtime
            .remove_container(RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map(|_| None),
        Op::Pull(img) => c
            .image
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: (*img).to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map(|_| None),
        Op::RemoveImage(img) => c
            .image
            .remove_image(RemoveImageRequest {
                image: Some(ImageSpec {
                    image: (*img).to_owned(),
                    ..Default::default()
                }),
            })
            .await
            .map(|_| None),
        Op::KillInit(id) | Op::KillMonitor(id) => {
            let (pid, monitor) = ctr_pids(c, id).await?;
            let target = if matches!(op, Op::KillInit(_)) {
                pid
            } else {
                monitor
            };
            ensure!(target > 0, "{op:?}: no pid in ContainerStatus");
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is the
            // container's, as berthd reported it just now.
            unsafe { libc::kill(target, libc::SIGKILL) };
            Ok(None)
        }
    };
    Ok(r)
}

/// Applies an op's outcome to the model. `acked`: the RPC returned OK (`ret` its
/// answer); otherwise the daemon was killed with the op in flight.
fn apply(m: &mut Model, op: &Op, acked: bool, ret: Option<String>) {
    match op {
        Op::RunPod(name) => {
            if let (true, Some(id)) = (acked, ret) {
                m.ever.insert(id.clone());
                m.pods.insert(
                    id,
                    PodM {
                        name: name.clone(),
                        allowed: one(PodSt::Ready),
                        may_be_gone: false,
                    },
                );
            } else {
                m.pending_pods.insert(name.clone());
            }
        }
        Op::StopPod(p) => {
            if let Some(pm) = m.pods.get_mut(p) {
                pm.allowed.insert(PodSt::NotReady);
                if acked {
                    pm.allowed = one(PodSt::NotReady);
                }
            }
            for c in m.ctrs.values_mut().filter(|c| &c.pod == p) {
                if c.allowed.contains(&CtrSt::Exited) && c.allowed.len() == 1 {
                    continue;
                }
                c.allowed.insert(CtrSt::Exited);
                c.codes.clear();
                if acked {
                    c.allowed = one(CtrSt::Exited);
                }
            }
        }
        Op::RemovePod(p) => {
            if acked {
                m.pods.remove(p);
                m.ctrs.retain(|_, c| &c.pod != p);
            } else {
                if let Some(pm) = m.pods.get_mut(p) {
                    pm.may_be_gone = true;
                    pm.allowed.insert(PodSt::NotReady);
                }
                for c in m.ctrs.values_mut().filter(|c| &c.pod == p) {
                    c.may_be_gone = true;
                    c.allowed.insert(CtrSt::Exited);
                    c.codes.clear();
                }
            }
        }
        Op::Create(p, name) => {
            if let (true, Some(id)) = (acked, ret) {
                m.ever.insert(id.clone());
                m.ctrs.insert(
                    id,
                    CtrM {
                        pod: p.clone(),
                        name: name.clone(),
                        allowed: one(CtrSt::Created),
                        codes: BTreeSet::new(),
                        may_be_gone: false,
                    },
                );
            } else {
                m.pending_ctrs.insert((p.clone(), name.clone()));
            }
        }
        Op::Start(id) => {
            if let Some(c) = m.ctrs.get_mut(id) {
                c.allowed = if acked {
                    one(CtrSt::Running)
                } else {
                    BTreeSet::from([CtrSt::Created, CtrSt::Running])
                };
            }
        }
        Op::Stop(id, t) => {
            if let Some(c) = m.ctrs.get_mut(id) {
                // SIGKILL (137); with a timeout, SIGTERM first (143: sleep is not pid
                // 1, the pod's infra is).
                c.codes = if *t > 0 {
                    BTreeSet::from([137, 143])
                } else {
                    one(137)
                };
                if acked {
                    c.allowed = one(CtrSt::Exited);
                } else {
                    c.allowed.insert(CtrSt::Exited);
                }
            }
        }
        Op::Remove(id) => {
            if acked {
                m.ctrs.remove(id);
            } else if let Some(c) = m.ctrs.get_mut(id) {
                c.may_be_gone = true;
                c.allowed.insert(CtrSt::Exited);
                c.codes.clear();
            }
        }
        Op::Pull(img) => {
            m.images.insert(img, if acked { Some(true) } else { None });
        }
        Op::RemoveImage(img) => {
            m.images.insert(img, if acked { Some(false) } else { None });
        }
        Op::KillInit(id) => {
            if let Some(c) = m.ctrs.get_mut(id) {
                c.allowed = one(CtrSt::Exited);
                c.codes = one(137);
            }
        }
        Op::KillMonitor(id) => {
            if let Some(c) = m.ctrs.get_mut(id) {
                c.allowed = one(CtrSt::Exited);
                c.codes.clear();
            }
        }
    }
}

fn pod_state(s: i32) -> PodSt {
    if s == i32::from(PodSandboxState::SandboxReady) {
        PodSt::Ready
    } else {
        PodSt::NotReady
    }
}

fn ctr_state(s: i32) -> anyhow::Result<CtrSt> {
    match ContainerState::try_from(s) {
        Ok(ContainerState::ContainerCreated) => Ok(CtrSt::Created),
        Ok(ContainerState::ContainerRunning) => Ok(CtrSt::Running),
        Ok(ContainerState::ContainerExited) => Ok(CtrSt::Exited),
        _ => bail!("container in state {s} (unknown)"),
    }
}

fn alive(pid: i32) -> bool {
    pid > 0
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| !r.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
}

/// Checks what berthd lists against the model, then makes the model exact again (the
/// observed state of every uncertain object becomes its known state).
async fn verify(c: &mut CriClient, m: &mut Model, rng: &mut Rng) -> anyhow::Result<()> {
    // Containers whose exit is under way (init or monitor killed, SIGTERM sent) get a
    // few seconds to be seen exited.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match verify_once(c, m).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline && format!("{e:#}").contains("[settling]") => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
    // Operations on listed objects work: status of every pod and container (done in
    // verify_once), and an exec in a running container.
    let running: Vec<String> = m
        .ctrs
        .iter()
        .filter(|(_, c)| c.allowed == one(CtrSt::Running))
        .map(|(id, _)| id.clone())
        .collect();
    if let Some(id) = rng.pick(&running) {
        let r = c
            .runtime
            .exec_sync(ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["true".into()],
                timeout: 10,
            })
            .await
            .with_context(|| format!("ExecSync in running container {id}"))?
            .into_inner();
        ensure!(
            r.exit_code == 0,
            "ExecSync true in {id}: exit {}",
            r.exit_code
        );
    }
    Ok(())
}

async fn verify_once(c: &mut CriClient, m: &mut Model) -> anyhow::Result<()> {
    let pods = c
        .runtime
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items;
    let ctrs = c
        .runtime
        .list_containers(ListContainersRequest::default())
        .await?
        .into_inner()
        .containers;
    let listed_pods: BTreeMap<String, (PodSt, String)> = pods
        .iter()
        .map(|p| {
            (
                p.id.clone(),
                (
                    pod_state(p.state),
                    p.metadata.clone().unwrap_or_default().name,
                ),
            )
        })
        .collect();

    let mut new_pods = m.pods.clone();
    for (id, pm) in &m.pods {
        match listed_pods.get(id) {
            None if pm.may_be_gone => {
                new_pods.remove(id);
            }
            None => bail!("acknowledged pod {id} ({}) is missing", pm.name),
            Some((st, _)) => {
                ensure!(
                    pm.allowed.contains(st),
                    "pod {id} ({}) is {st:?}, expected one of {:?}",
                    pm.name,
                    pm.allowed
                );
                let e = new_pods.get_mut(id).context("model")?;
                e.allowed = one(*st);
                e.may_be_gone = false;
            }
        }
    }
    for (id, (st, name)) in &listed_pods {
        if m.pods.contains_key(id) {
            continue;
        }
        ensure!(
            m.pending_pods.contains(name),
            "pod {id} ({name}) was never created by the storm"
        );
        // RunPodSandbox answers only once the pod is ready: one that shows up after
        // a cut-off run must be complete.
        ensure!(
            *st == PodSt::Ready,
            "half-created pod {id} ({name}) is {st:?}"
        );
        m.ever.insert(id.clone());
        new_pods.insert(
            id.clone(),
            PodM {
                name: name.clone(),
                allowed: one(PodSt::Ready),
                may_be_gone: false,
            },
        );
    }
    // Nothing half-created: a ready pod has its pinned network namespace.
    for (id, pm) in &new_pods {
        let s = c
            .runtime
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: true,
            })
            .await
            .with_context(|| format!("PodSandboxStatus {id}"))?
            .into_inner();
        if pm.allowed == one(PodSt::Ready) {
            let info: serde_json::Value =
                serde_json::from_str(s.info.get("info").map_or("{}", String::as_str))?;
            let net = info["namespaces"]["net"].as_str().unwrap_or("");
            ensure!(
                is_pinned_ns(net),
                "ready pod {id} has no pinned netns at {net:?}: {info}"
            );
            let ip = s.status.and_then(|s| s.network).map(|n| n.ip);
            ensure!(
                ip.as_ref().is_some_and(|ip| !ip.is_empty()),
                "ready pod {id} has no IP"
            );
        }
    }

    let listed: BTreeMap<String, &berth_proto::v1::Container> =
        ctrs.iter().map(|c| (c.id.clone(), c)).collect();
    let mut new_ctrs = m.ctrs.clone();
    new_ctrs.retain(|_, c| new_pods.contains_key(&c.pod));
    for (id, cm) in &m.ctrs {
        let Some(l) = listed.get(id) else {
            ensure!(
                cm.may_be_gone,
                "acknowledged container {id} ({}) is missing",
                cm.name
            );
            new_ctrs.remove(id);
            continue;
        };
        ensure!(
            new_pods.contains_key(&l.pod_sandbox_id),
            "container {id} is listed but its pod {} is gone",
            l.pod_sandbox_id
        );
        let st = ctr_state(l.state)?;
        if !cm.allowed.contains(&st) {
            let settling = cm.allowed == one(CtrSt::Exited) && st == CtrSt::Running;
            bail!(
                "{}container {id} ({}) is {st:?}, expected one of {:?}",
                if settling { "[settling] " } else { "" },
                cm.name,
                cm.allowed
            );
        }
        check_container(c, id, st, &cm.codes).await?;
        let e = new_ctrs.get_mut(id).context("model")?;
        e.allowed = one(st);
        e.may_be_gone = false;
        if st != CtrSt::Exited {
            e.codes.clear();
        }
    }
    for (id, l) in &listed {
        if m.ctrs.contains_key(id) {
            continue;
        }
        let name = l.metadata.clone().unwrap_or_default().name;
        ensure!(
            m.pending_ctrs
                .contains(&(l.pod_sandbox_id.clone(), name.clone())),
            "container {id} ({name}) was never created by the storm"
        );
        ensure!(
            new_pods.contains_key(&l.pod_sandbox_id),
            "container {id} is listed but its pod {} is gone",
            l.pod_sandbox_id
        );
        let st = ctr_state(l.state)?;
        // A container whose creation was cut off can only be seen created (or exited
        // if its pod was stopped meanwhile).
        ensure!(
            st != CtrSt::Running,
            "container {id} ({name}) whose creation was cut off is running"
        );
        check_container(c, id, st, &BTreeSet::new()).await?;
        m.ever.insert(id.clone());
        new_ctrs.insert(
            id.clone(),
            CtrM {
                pod: l.pod_sandbox_id.clone(),
                name,
                allowed: one(st),
                codes: BTreeSet::new(),
                may_be_gone: false,
            },
        );
    }

    for img in CHURN_IMAGES {
        let present = c
            .image
            .image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: img.to_owned(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await?
            .into_inner()
            .image
            .is_some_and(|i| !i.id.is_empty());
        match m.images.get(img).copied().flatten() {
            Some(expected) => ensure!(
                expected == present,
                "image {img}: present={present}, expected {expected}"
            ),
            None => {
                m.images.insert(img, Some(present));
            }
        }
    }

    m.pods = new_pods;
    m.ctrs = new_ctrs;
    m.pending_pods.clear();
    m.pending_ctrs.clear();
    Ok(())
}

/// A listed container's status is consistent with its state: a live init and monitor
/// while created or running, an exit code, reason and time once exited.
async fn check_container(
    c: &mut CriClient,
    id: &str,
    st: CtrSt,
    codes: &BTreeSet<i32>,
) -> anyhow::Result<()> {
    let r = c
        .runtime
        .container_status(ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: true,
        })
        .await
        .with_context(|| format!("ContainerStatus {id}"))?
        .into_inner();
    let s = r.status.context("no status")?;
    let info: serde_json::Value =
        serde_json::from_str(r.info.get("info").map_or("{}", String::as_str))?;
    let pid = |k: &str| {
        info[k]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or(0)
    };
    match st {
        CtrSt::Created | CtrSt::Running => {
            // A dead init or monitor is reported by berthd within moments; until then
            // the check settles.
            ensure!(
                alive(pid("monitorPid")),
                "[settling] {st:?} container {id} has no live monitor: {info}"
            );
            ensure!(
                alive(pid("pid")),
                "[settling] {st:?} container {id} has no live init: {info}"
            );
            if st == CtrSt::Running {
                ensure!(s.started_at > 0, "running container {id} has no start time");
            }
        }
        CtrSt::Exited => {
            ensure!(
                s.finished_at > 0,
                "exited container {id} has no finish time"
            );
            ensure!(!s.reason.is_empty(), "exited container {id} has no reason");
            if codes.is_empty() {
                ensure!(
                    s.exit_code != 0,
                    "container {id} running sleep exited 0 though it was killed"
                );
            } else {
                ensure!(
                    codes.contains(&s.exit_code),
                    "container {id} exited {} ({}: {}), expected one of {codes:?}",
                    s.exit_code,
                    s.reason,
                    s.message
                );
            }
        }
    }
    Ok(())
}

/// Removes every object through the API, as kubelet's garbage collection would.
async fn remove_all(c: &mut CriClient) -> anyhow::Result<()> {
    for ctr in c
        .runtime
        .list_containers(ListContainersRequest::default())
        .await?
        .into_inner()
        .containers
    {
        c.runtime
            .remove_container(RemoveContainerRequest {
                container_id: ctr.id.clone(),
            })
            .await
            .with_context(|| format!("RemoveContainer {}", ctr.id))?;
    }
    for pod in c
        .runtime
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items
    {
        c.runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .with_context(|| format!("StopPodSandbox {}", pod.id))?;
        c.runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .with_context(|| format!("RemovePodSandbox {}", pod.id))?;
    }
    for img in CHURN_IMAGES {
        c.image
            .remove_image(RemoveImageRequest {
                image: Some(ImageSpec {
                    image: img.to_owned(),
                    ..Default::default()
                }),
            })
            .await
            .with_context(|| format!("RemoveImage {img}"))?;
    }
    Ok(())
}

/// What the host must not hold once every object of the storm is removed.
fn leaks(
    d: &TestDaemon,
    m: &Model,
    cgroup_parent: &str,
    ports_before: &BTreeSet<String>,
    monitors_before: &BTreeSet<i32>,
) -> Vec<String> {
    let mut out = Vec::new();
    // The pin directory's shared bind mount on itself is made once per daemon, not
    // per pod; anything else below the daemon's dirs belongs to an object.
    let ns_dir = d.state_dir.join("ns");
    for mnt in mounts_under(d.dir()) {
        if std::path::Path::new(&mnt) != ns_dir {
            out.push(format!("mount {mnt}"));
        }
    }
    for cg in cgroups_under(cgroup_parent) {
        out.push(format!("cgroup {}", cg.display()));
    }
    for port in bridge_ports().difference(ports_before) {
        out.push(format!("veth {port} on the test bridge"));
    }
    for lease in leases_of(&m.ever) {
        out.push(format!("IPAM lease {lease}"));
    }
    for pid in monitor_pids().difference(monitors_before) {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        out.push(format!(
            "berth-monitor pid {pid}: {}",
            String::from_utf8_lossy(&cmd).replace('\0', " ")
        ));
    }
    for root in [&d.root_dir, &d.state_dir] {
        for p in paths_naming(root, &m.ever) {
            out.push(format!("file {}", p.display()));
        }
    }
    for dir in [
        d.root_dir.join("pods"),
        d.root_dir.join("containers"),
        d.state_dir.join("pods"),
        d.state_dir.join("ns"),
    ] {
        for e in entries(&dir) {
            out.push(format!("entry {}/{e}", dir.display()));
        }
    }
    out
}

struct Stats {
    kills: u64,
    ops: u64,
    cut_off: u64,
    init_kills: u64,
    monitor_kills: u64,
}

async fn storm(
    node: &mut Node,
    seed: u64,
    kills: u64,
    cgroup_parent: &str,
) -> anyhow::Result<Stats> {
    let mut rng = Rng::new(seed);
    let mut m = Model::default();
    for img in CHURN_IMAGES {
        m.images.insert(img, Some(false));
    }
    let ports_before = bridge_ports();
    let monitors_before = monitor_pids();
    let mut stats = Stats {
        kills: 0,
        ops: 0,
        cut_off: 0,
        init_kills: 0,
        monitor_kills: 0,
    };
    let mut c = node.daemon.client().await?;
    fixtures::try_pull(&mut c, BUSYBOX)
        .await
        .context("pulling busybox")?;

    for round in 0..kills {
        // Acknowledged ops: every one must succeed.
        for _ in 0..rng.below(5) + 1 {
            let op = choose(&mut rng, &mut m, true);
            let r = tokio::time::timeout(RPC_TIMEOUT, run_op(&mut c, &op, cgroup_parent))
                .await
                .with_context(|| format!("round {round}: {op:?} hung"))??;
            stats.ops += 1;
            match &op {
                Op::KillInit(_) => stats.init_kills += 1,
                Op::KillMonitor(_) => stats.monitor_kills += 1,
                _ => {}
            }
            match r {
                Ok(ret) => apply(&mut m, &op, true, ret),
                Err(s) => bail!("round {round}: {op:?} failed on a live daemon: {s}"),
            }
        }
        // A batch of ops on distinct pods, cut off by SIGKILL at a random moment.
        let mut batch = Vec::new();
        let mut touched = BTreeSet::new();
        for _ in 0..rng.below(3) + 1 {
            let op = choose(&mut rng, &mut m, false);
            let key = op.pod(&m).unwrap_or_else(|| format!("{op:?}"));
            if touched.insert(key) {
                batch.push(op);
            }
        }
        // Most RPCs of the storm take 50-300 ms: kill within that span so that most
        // kills land with an op in flight, some before it starts doing anything.
        let delay = Duration::from_millis(rng.below(250));
        let mut tasks = Vec::new();
        for op in batch.clone() {
            let mut client = c.clone();
            let parent = cgroup_parent.to_owned();
            tasks.push(tokio::spawn(async move {
                tokio::time::timeout(RPC_TIMEOUT, run_op(&mut client, &op, &parent)).await
            }));
        }
        tokio::time::sleep(delay).await;
        node.daemon.kill().context("SIGKILL berthd")?;
        stats.kills += 1;
        for (op, task) in batch.iter().zip(tasks) {
            stats.ops += 1;
            let r = task
                .await
                .context("op task")?
                .with_context(|| format!("round {round}: {op:?} hung"))??;
            match r {
                Ok(ret) => apply(&mut m, op, true, ret),
                Err(s) if cut_off(&s) => {
                    stats.cut_off += 1;
                    apply(&mut m, op, false, None);
                }
                Err(s) => bail!("round {round}: {op:?} failed: {s}"),
            }
        }
        node.daemon
            .restart()
            .await
            .with_context(|| format!("round {round}: restarting berthd"))?;
        c = node.daemon.client().await?;
        verify(&mut c, &mut m, &mut rng)
            .await
            .with_context(|| format!("round {round}: after restart ({batch:?} cut off)"))?;
    }

    remove_all(&mut c).await.context("removing everything")?;
    let left = c
        .runtime
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items
        .len()
        + c.runtime
            .list_containers(ListContainersRequest::default())
            .await?
            .into_inner()
            .containers
            .len();
    ensure!(
        left == 0,
        "{left} objects still listed after removing everything"
    );
    // Monitors exit once their container is gone; give them a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found = leaks(
        &node.daemon,
        &m,
        cgroup_parent,
        &ports_before,
        &monitors_before,
    );
    while !found.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        found = leaks(
            &node.daemon,
            &m,
            cgroup_parent,
            &ports_before,
            &monitors_before,
        );
    }
    ensure!(
        found.is_empty(),
        "leaked after removing everything:\n  {}",
        found.join("\n  ")
    );
    // And a clean stop leaves nothing either.
    node.daemon.stop().context("stopping berthd")?;
    let found = leaks(
        &node.daemon,
        &m,
        cgroup_parent,
        &ports_before,
        &monitors_before,
    );
    ensure!(
        found.is_empty(),
        "leaked after stop:\n  {}",
        found.join("\n  ")
    );
    Ok(stats)
}

/// The harness's reaper (this test process is the subreaper of what a killed berthd
/// leaves) reaps orphans that exit, but never a child the test forked and waits for
/// itself: a child that is already a zombie across several reaper passes is still
/// there for its owner's wait. The old reaper took every zombie child but a few named
/// ones, and a storm's `busybox --list-full` failed with "No child processes".
#[test]
fn the_reaper_reaps_orphans_but_never_the_tests_own_children() {
    become_reaper();
    let mut own: Vec<std::process::Child> = (0..5)
        .map(|i| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("exit {i}"))
                .spawn()
                .expect("spawn sh")
        })
        .collect();
    // An orphan in a session of its own, as berth-monitor is: `sh` exits at once,
    // leaving `setsid sleep` to this process.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("setsid sleep 0.3 </dev/null >/dev/null 2>&1 & echo $!")
        .output()
        .expect("spawn the orphan's parent");
    let orphan: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("orphan pid");
    // Several reaper passes (every 100 ms) while the own children are zombies.
    std::thread::sleep(Duration::from_millis(600));
    for (i, child) in own.iter_mut().enumerate() {
        let status = child
            .wait()
            .expect("the test's own child was reaped by the reaper");
        assert_eq!(
            status.code(),
            i32::try_from(i).ok(),
            "exit status of child {i}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{orphan}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{orphan}")).exists(),
        "the orphan {orphan} was not reaped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn berthd_killed_at_random_loses_nothing_acknowledged_and_leaks_nothing() {
    let _serial = SERIAL.lock().await;
    become_reaper();
    let seed = seed_from_env("BERTH_CRASH_SEED");
    let kills = env_number("BERTH_CRASH_KILLS", 40);
    let cgroup_parent = format!("/berthstorm{}", std::process::id());
    let _cg = CgroupParent(cgroup_parent.clone());
    let mut node = Node::start_with(DaemonOptions {
        log_level: "info".into(),
        ..DaemonOptions::default()
    })
    .await
    .expect("node");
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(480),
        storm(&mut node, seed, kills, &cgroup_parent),
    )
    .await;
    match result {
        Ok(Ok(s)) => eprintln!(
            "crash storm seed {seed}: {} berthd kills, {} ops ({} cut off by a kill), {} init kills, {} monitor kills, no loss, no leak, {:.1?}",
            s.kills,
            s.ops,
            s.cut_off,
            s.init_kills,
            s.monitor_kills,
            started.elapsed()
        ),
        Ok(Err(e)) => panic!("crash storm seed {seed} (BERTH_CRASH_SEED={seed}): {e:#}"),
        Err(_) => panic!("crash storm seed {seed} (BERTH_CRASH_SEED={seed}): hung for 480s"),
    }
}

/// Regression: berthd used to persist a sandbox's pins, /dev/shm and network only at
/// the end of its creation (and the infra pid once it was up), so a kill after
/// pinning (or while starting the infra, or during CNI ADD) left a `creating` record
/// that named none of them, and recovery leaked the pinned namespaces, the shm mount,
/// the infra process and the IP lease (all seen in crash storms). The on-disk state of such a crash is
/// made exactly: a ready pod's record is rewritten as it stood before those steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_killed_mid_creation_is_torn_down_entirely_at_restart() {
    let _serial = SERIAL.lock().await;
    become_reaper();
    let cgroup_parent = format!("/berthmidcreate{}", std::process::id());
    let _cg = CgroupParent(cgroup_parent.clone());
    let mut node = Node::start().await.expect("node");
    let monitors_before = monitor_pids();
    let mut c = node.daemon.client().await.expect("client");
    let id = fixtures::run_pod(&mut c, &pod_config("mid-creation", &cgroup_parent)).await;
    let ids = BTreeSet::from([id.clone()]);
    assert_eq!(leases_of(&ids).len(), 1, "the pod holds an IP lease");
    node.daemon.kill().expect("SIGKILL berthd");

    let record = node
        .daemon
        .root_dir
        .join("pods")
        .join(&id)
        .join("record.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).expect("record")).expect("JSON");
    v["state"]["phase"] = "creating".into();
    for ns in ["net", "ipc", "uts"] {
        v["state"]["pins"][ns] = serde_json::Value::Null;
    }
    v["state"]["shm"] = serde_json::Value::Null;
    v["state"]["infra_pid"] = serde_json::Value::Null;
    v["state"]["network"] = serde_json::Value::Null;
    v["state"]["ips"] = serde_json::json!([]);
    std::fs::write(&record, v.to_string()).expect("rewrite record");

    node.daemon.restart().await.expect("restart");
    let mut c = node.daemon.client().await.expect("client");
    let pods = c
        .runtime
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .expect("list")
        .into_inner()
        .items;
    assert!(pods.is_empty(), "half-created pod is listed: {pods:?}");
    let d = &node.daemon;
    let mounts: Vec<String> = mounts_under(d.dir())
        .into_iter()
        .filter(|m| m.contains(&id))
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert!(leases_of(&ids).is_empty(), "IP lease left");
    let mut files = paths_naming(&d.root_dir, &ids);
    files.extend(paths_naming(&d.state_dir, &ids));
    assert!(files.is_empty(), "files left: {files:?}");
    // The pod's infra process (pid 1 of its pid namespace), started but not recorded.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut infra: Vec<i32> = monitor_pids()
        .difference(&monitors_before)
        .copied()
        .collect();
    while !infra.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        infra = monitor_pids()
            .difference(&monitors_before)
            .copied()
            .collect();
    }
    assert!(infra.is_empty(), "infra process left: {infra:?}");
}

/// Regression (crash storms with seed 33 and 1795949441423638516): berthd killed after
/// a container's init was started but before the record said so came back listing
/// it running with no start time (`started_at` 0), which kubelet reads as never
/// started. The on-disk state of that kill is made exactly: the record of a running
/// container rewritten as `created`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_started_as_berthd_died_is_running_with_a_start_time() {
    let _serial = SERIAL.lock().await;
    become_reaper();
    let cgroup_parent = format!("/berthstarted{}", std::process::id());
    let _cg = CgroupParent(cgroup_parent.clone());
    let mut node = Node::start().await.expect("node");
    let mut c = node.daemon.client().await.expect("client");
    fixtures::pull(&mut c, BUSYBOX).await;
    let pod = fixtures::run_pod(&mut c, &pod_config("started-as-killed", &cgroup_parent)).await;
    let id = fixtures::create(
        &mut c,
        &pod,
        &pod_config("started-as-killed", &cgroup_parent),
        sleeper("main"),
    )
    .await
    .expect("CreateContainer");
    fixtures::start(&mut c, &id).await.expect("StartContainer");
    node.daemon.kill().expect("SIGKILL berthd");

    let record = node
        .daemon
        .root_dir
        .join("containers")
        .join(&id)
        .join("record.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).expect("record")).expect("JSON");
    v["state"]["phase"] = "created".into();
    v["state"]["started_at"] = 0.into();
    std::fs::write(&record, v.to_string()).expect("rewrite record");

    node.daemon.restart().await.expect("restart");
    let mut c = node.daemon.client().await.expect("client");
    let s = c
        .runtime
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(s.state, i32::from(ContainerState::ContainerRunning));
    assert!(s.started_at > 0, "running container has no start time");
    assert!(
        s.started_at >= s.created_at,
        "started before it was created"
    );
    // And it stays so across another restart (the recovered start is persisted).
    node.daemon.kill().expect("SIGKILL berthd");
    node.daemon.restart().await.expect("restart");
    let mut c = node.daemon.client().await.expect("client");
    let again = c
        .runtime
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(again.started_at, s.started_at, "start time not persisted");
}

/// Regression (crash storm with seed 1795950652294594646): a container whose
/// runtime state berthd could not load when removing it left `<state>/rt/<id>`
/// behind. The state of that kill is made exactly: an exited container whose
/// runtime state file is cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_with_unreadable_runtime_state_is_removed_entirely() {
    let _serial = SERIAL.lock().await;
    become_reaper();
    let cgroup_parent = format!("/berthrtstate{}", std::process::id());
    let _cg = CgroupParent(cgroup_parent.clone());
    let mut node = Node::start().await.expect("node");
    let mut c = node.daemon.client().await.expect("client");
    fixtures::pull(&mut c, BUSYBOX).await;
    let pod = fixtures::run_pod(&mut c, &pod_config("rt-state", &cgroup_parent)).await;
    let id = fixtures::create(
        &mut c,
        &pod,
        &pod_config("rt-state", &cgroup_parent),
        sleeper("main"),
    )
    .await
    .expect("CreateContainer");
    fixtures::start(&mut c, &id).await.expect("StartContainer");
    c.runtime
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .expect("StopContainer");
    node.daemon.kill().expect("SIGKILL berthd");

    let rt_dir = node.daemon.state_dir.join("rt").join(&id);
    assert!(
        rt_dir.is_dir(),
        "{} missing before the test",
        rt_dir.display()
    );
    let state = rt_dir.join("state.json");
    std::fs::write(&state, b"{\"id\":").expect("cut the runtime state short");

    node.daemon.restart().await.expect("restart");
    let mut c = node.daemon.client().await.expect("client");
    c.runtime
        .remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("RemoveContainer");
    assert!(
        !rt_dir.exists(),
        "{} left behind after RemoveContainer",
        rt_dir.display()
    );
    c.runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .expect("RemovePodSandbox");
}

/// Regression for the window the storms never hit: berthd killed after spawning a
/// container's berth-monitor and before recording its pid. The test hook
/// `BERTHD_TEST_HOOK_DIE_AFTER_MONITOR_SPAWN` makes berthd SIGKILL itself at exactly
/// that point, once with the monitor SIGSTOPped first (so it is certainly still
/// mid-create when berthd comes back) and once with the monitor left to finish. After
/// the restart the never-acknowledged container must not be listed and nothing of
/// it may be left: no monitor, no cgroup, no mount, no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_whose_monitor_was_just_spawned_when_berthd_died_leaves_nothing() {
    let _serial = SERIAL.lock().await;
    become_reaper();
    let cgroup_parent = format!("/berthspawned{}", std::process::id());
    let _cg = CgroupParent(cgroup_parent.clone());
    let mut node = Node::start().await.expect("node");
    let trigger = node.daemon.dir().join("die-after-monitor-spawn");
    node.daemon
        .set_env(DIE_AFTER_MONITOR_SPAWN, &trigger.display().to_string());
    node.daemon.restart().await.expect("restart with the hook");
    let mut c = node.daemon.client().await.expect("client");
    fixtures::pull(&mut c, BUSYBOX).await;
    let pod_cfg = pod_config("monitor-spawned", &cgroup_parent);
    let pod = fixtures::run_pod(&mut c, &pod_cfg).await;
    let containers_dir = node.daemon.root_dir.join("containers");

    for mode in ["stop-monitor", "run"] {
        let monitors_before = monitor_pids();
        let ids_before: BTreeSet<String> = entries(&containers_dir).into_iter().collect();
        std::fs::write(&trigger, mode).expect("arming the hook");
        let created = tokio::time::timeout(
            Duration::from_secs(30),
            c.runtime.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(sleeper(&format!("main-{mode}"))),
                sandbox_config: Some(pod_cfg.clone()),
            }),
        )
        .await
        .expect("CreateContainer hung");
        assert!(
            created.is_err(),
            "{mode}: CreateContainer succeeded; the hook did not fire; {TEST_HOOKS_NEEDED}"
        );
        assert!(!trigger.exists(), "{mode}: the hook was not reached");
        let ids: BTreeSet<String> = entries(&containers_dir)
            .into_iter()
            .filter(|id| !ids_before.contains(id))
            .collect();
        assert_eq!(ids.len(), 1, "{mode}: the container's record dir: {ids:?}");
        let id = ids.iter().next().expect("one id").clone();
        let strays: BTreeSet<i32> = monitor_pids()
            .difference(&monitors_before)
            .copied()
            .collect();
        if mode == "stop-monitor" {
            assert!(
                !strays.is_empty(),
                "{mode}: no monitor alive after berthd died; the window was not reproduced"
            );
        }
        eprintln!("{mode}: container {id}, monitors alive after the kill: {strays:?}");

        node.daemon.restart().await.expect("restart");
        c = node.daemon.client().await.expect("client");
        let listed = c
            .runtime
            .list_containers(ListContainersRequest::default())
            .await
            .expect("ListContainers")
            .into_inner()
            .containers;
        assert!(
            listed.iter().all(|ctr| ctr.id != id),
            "{mode}: the never-acknowledged container is listed: {listed:?}"
        );
        // Killed monitors are reaped by this test (the subreaper) within 100 ms.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut left: Vec<i32> = Vec::new();
        while Instant::now() < deadline {
            left = monitor_pids()
                .difference(&monitors_before)
                .copied()
                .collect();
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            left.is_empty(),
            "{mode}: monitor processes left after recovery: {left:?}"
        );
        let cgroups: Vec<_> = cgroups_under(&cgroup_parent)
            .into_iter()
            .filter(|d| d.to_string_lossy().contains(&id))
            .collect();
        assert!(cgroups.is_empty(), "{mode}: cgroups left: {cgroups:?}");
        let mounts: Vec<_> = mounts_under(node.daemon.dir())
            .into_iter()
            .filter(|m| m.contains(&id))
            .collect();
        assert!(mounts.is_empty(), "{mode}: mounts left: {mounts:?}");
        for dir in [&node.daemon.root_dir, &node.daemon.state_dir] {
            let files = paths_naming(dir, &ids);
            assert!(files.is_empty(), "{mode}: files left: {files:?}");
        }
    }

    // The hook is spent: a container is created and started as usual.
    let id = fixtures::create(&mut c, &pod, &pod_cfg, sleeper("after"))
        .await
        .expect("CreateContainer after recovery");
    fixtures::start(&mut c, &id)
        .await
        .expect("StartContainer after recovery");
    c.runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("StopPodSandbox");
    c.runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .expect("RemovePodSandbox");
}
