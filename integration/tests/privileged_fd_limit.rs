//! Resource exhaustion, open files: berthd's RLIMIT_NOFILE is lowered (prlimit on
//! the running daemon) to just above what it holds, then clients open connections
//! until no more are accepted, and a pod and a container are created at the limit.
//! What a user would notice is checked: calls fail with an error naming the cause
//! (or, for a connection berthd cannot accept, a prompt Unavailable instead of a hang),
//! nothing half-made is listed or left on the host, the daemon keeps accepting once
//! fds are free again, and new pods work after the limit is raised back.

mod reliability_common;

use std::collections::{BTreeMap, BTreeSet};

/// The most spare fds tried before a pod with a running container must succeed.
const MAX_HEADROOM: u64 = 80;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use berth_integration::CriClient;
use berth_integration::daemon::DaemonOptions;
use berth_integration::fixtures;
use berth_integration::setup::Node;
use berth_proto::v1::{
    ListContainersRequest, ListPodSandboxRequest, RemovePodSandboxRequest, StopPodSandboxRequest,
    VersionRequest,
};
use reliability_common::{
    BUSYBOX, CgroupParent, cgroups_under, monitor_pids, mounts_under, paths_naming, pod_config,
    sleeper,
};

/// Sets the soft RLIMIT_NOFILE of `pid` (the hard limit is kept, so it can be raised
/// again without CAP_SYS_RESOURCE). Returns the previous soft limit.
fn set_nofile(pid: u32, soft: u64) -> anyhow::Result<u64> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit with a null new limit only reads into `old`, a valid out-pointer.
    if unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &raw mut old) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading berthd's RLIMIT_NOFILE");
    }
    let new = libc::rlimit {
        rlim_cur: soft.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: `new` is a valid rlimit; no old value is asked for.
    if unsafe {
        libc::prlimit(
            pid,
            libc::RLIMIT_NOFILE,
            &raw const new,
            std::ptr::null_mut(),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error()).context("setting berthd's RLIMIT_NOFILE");
    }
    Ok(old.rlim_cur)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// A new connection that has answered `Version`, or why not within `wait`.
async fn connect(node: &Node, wait: Duration) -> anyhow::Result<CriClient> {
    let attempt = async {
        let mut c = node.daemon.client().await?;
        c.runtime
            .version(VersionRequest::default())
            .await
            .context("Version")?;
        anyhow::Ok(c)
    };
    match tokio::time::timeout(wait, attempt).await {
        Ok(r) => r,
        Err(_) => bail!("no answer to Version on a new connection within {wait:?}"),
    }
}

/// Whether `status` says what ran out.
fn names_fd_exhaustion(status: &tonic::Status) -> bool {
    let m = status.message().to_ascii_lowercase();
    m.contains("too many open files") || m.contains("os error 24")
}

async fn run_pod(c: &mut CriClient, name: &str, cg: &str) -> Result<String, tonic::Status> {
    fixtures::run_pod_with(c, &pod_config(name, cg), "").await
}

/// CreateContainer then StartContainer; an error says which step failed.
async fn create_started(
    c: &mut CriClient,
    pod: &str,
    name: &str,
    cg: &str,
) -> Result<String, (&'static str, tonic::Status)> {
    let id = fixtures::create(c, pod, &pod_config(name, cg), sleeper(name))
        .await
        .map_err(|s| ("CreateContainer", s))?;
    fixtures::start(c, &id)
        .await
        .map_err(|s| ("StartContainer", s))?;
    Ok(id)
}

fn step_error((rpc, status): (&'static str, tonic::Status)) -> anyhow::Error {
    anyhow::anyhow!("{rpc}: {status:?}")
}

async fn ctrs_listed(c: &mut CriClient) -> anyhow::Result<BTreeSet<String>> {
    Ok(listed(c).await?.1)
}

async fn listed(c: &mut CriClient) -> anyhow::Result<(BTreeSet<String>, BTreeSet<String>)> {
    let pods = c
        .runtime
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect();
    let ctrs = c
        .runtime
        .list_containers(ListContainersRequest::default())
        .await?
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    Ok((pods, ctrs))
}

async fn run(node: &Node, cg: &str) -> anyhow::Result<()> {
    let d = &node.daemon;
    let pid = d.pid().context("berthd is not running")?;
    let mut c = d.client().await?;
    fixtures::try_pull(&mut c, BUSYBOX)
        .await
        .context("pulling busybox")?;
    let base_pod = run_pod(&mut c, "fd-base", cg).await?;
    create_started(&mut c, &base_pod, "fd-base", cg)
        .await
        .map_err(step_error)?;
    let monitors_before = monitor_pids();
    let mounts_before = mounts_under(d.dir());
    let cgroups_before = cgroups_under(cg);

    // Just above what berthd holds now: a few connections' worth.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = open_fds(pid);
    let limit = held as u64 + 12;
    let old_limit = set_nofile(pid, limit)?;
    eprintln!("berthd holds {held} fds; soft RLIMIT_NOFILE {old_limit} → {limit}");

    // 1. Connections until one is not served. A connection berthd cannot accept
    //    must fail promptly (not hang until the client's deadline).
    let mut conns = Vec::new();
    let refused = loop {
        ensure!(
            conns.len() < 64,
            "64 connections were served under a limit of {limit} fds"
        );
        let t = std::time::Instant::now();
        match connect(node, Duration::from_secs(20)).await {
            Ok(conn) => conns.push(conn),
            Err(e) => break (e, t.elapsed()),
        }
    };
    eprintln!(
        "{} connections served; the next: {:#} after {:?}",
        conns.len(),
        refused.0,
        refused.1
    );
    ensure!(
        refused.1 < Duration::from_secs(10),
        "a connection over the fd limit hung for {:?} ({:#}) instead of failing",
        refused.1,
        refused.0
    );

    // 2. Fds free again (the clients hang up): a new connection is served within a
    //    few seconds (berthd sees the hang-ups asynchronously: a connection made at
    //    once may still meet the limit and be shed, which is the behaviour above).
    drop(conns);
    let recovering = std::time::Instant::now();
    let mut fresh = loop {
        match connect(node, Duration::from_secs(20)).await {
            Ok(c) => break c,
            Err(e) if recovering.elapsed() < Duration::from_secs(10) => {
                eprintln!("not yet served after the hang-ups ({e:#}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(e.context("a new connection 10 s after the clients hung up"));
            }
        }
    };
    set_nofile(pid, old_limit)?;

    // 3. RunPodSandbox → CreateContainer → StartContainer with 0, 1, 2, … fds of
    //    headroom, so the limit strikes each step in turn (and their rollbacks run
    //    at the limit too), until one headroom lets all three through. Every failure
    //    must name the cause; after each, exactly the acknowledged objects are listed.
    let mut acked_pods = BTreeSet::from([base_pod.clone()]);
    let mut acked_ctrs = ctrs_listed(&mut fresh).await?;
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let mut passed_at = None;
    let mut pod_passed_at = None;
    let mut container_from = 0;
    for step in 0..2 * MAX_HEADROOM {
        let headroom = step - container_from;
        let name = format!("fd-{headroom}");
        let limit = open_fds(pid) as u64 + headroom;
        set_nofile(pid, limit)?;
        let mut pod_id = None;
        let attempt = async {
            // First the whole pod, then, once that passes, containers in the base pod.
            let p = if pod_passed_at.is_none() {
                let p = run_pod(&mut c, &name, cg)
                    .await
                    .map_err(|s| ("RunPodSandbox", s))?;
                pod_id = Some(p.clone());
                p
            } else {
                base_pod.clone()
            };
            create_started(&mut c, &p, &name, cg).await
        };
        let outcome = tokio::time::timeout(Duration::from_secs(60), attempt).await;
        set_nofile(pid, old_limit)?;
        acked_pods.extend(pod_id);
        match outcome {
            Err(_) => bail!("calls with {headroom} fds of headroom hung for 60 s"),
            Ok(Ok(ctr)) => {
                acked_ctrs.insert(ctr);
                if pod_passed_at.is_none() {
                    pod_passed_at = Some(headroom);
                    container_from = step + 1;
                } else {
                    passed_at = Some(headroom);
                    break;
                }
            }
            Ok(Err((rpc, status))) => {
                ensure!(
                    names_fd_exhaustion(&status),
                    "{rpc} with {headroom} fds of headroom failed without naming the fd limit: {status:?}"
                );
                *failures
                    .entry(format!("{rpc} → {:?}", status.code()))
                    .or_default() += 1;
                // A container created but not started is acknowledged too.
                for id in ctrs_listed(&mut fresh).await?.difference(&acked_ctrs) {
                    ensure!(
                        rpc == "StartContainer",
                        "{rpc} failed ({status:?}) yet container {id} is listed"
                    );
                }
                if rpc == "StartContainer" {
                    acked_ctrs = ctrs_listed(&mut fresh).await?;
                }
            }
        }
        let (pods_now, ctrs_now) = listed(&mut fresh).await?;
        ensure!(
            pods_now == acked_pods && ctrs_now == acked_ctrs,
            "with {headroom} fds of headroom: listed pods {pods_now:?} / containers {ctrs_now:?}, acknowledged {acked_pods:?} / {acked_ctrs:?}"
        );
    }
    eprintln!(
        "failures by step and code: {failures:?}; a pod passed with {pod_passed_at:?} fds of headroom, a container in a pod with {passed_at:?}"
    );
    let passed_at = passed_at.with_context(|| {
        format!("no pod and container could be made with up to {MAX_HEADROOM} spare fds")
    })?;
    ensure!(
        failures.keys().any(|k| k.starts_with("RunPodSandbox"))
            && failures.keys().any(|k| !k.starts_with("RunPodSandbox")),
        "the limit did not strike both pod and container creation: {failures:?}"
    );
    let _ = passed_at;

    // Raised back: a new pod with a running container works.
    let pod = run_pod(&mut fresh, "fd-after", cg)
        .await
        .context("RunPodSandbox after the limit was raised")?;
    create_started(&mut fresh, &pod, "fd-after", cg)
        .await
        .map_err(step_error)
        .context("a container after the limit was raised")?;
    acked_pods.insert(pod);
    for p in &acked_pods {
        fresh
            .runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: p.clone(),
            })
            .await?;
        fresh
            .runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: p.clone(),
            })
            .await?;
    }

    // 4. Nothing of the failed calls is left on the host.
    let (pods, ctrs) = listed(&mut fresh).await?;
    ensure!(
        pods.is_empty() && ctrs.is_empty(),
        "left listed: {pods:?} {ctrs:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mounts = mounts_under(d.dir());
    ensure!(
        mounts.len() <= 1,
        "mounts left below the daemon's dirs: {mounts:?} (with one pod: {mounts_before:?})"
    );
    let cgroups = cgroups_under(cg);
    ensure!(
        cgroups.is_empty(),
        "cgroups left below {cg}: {cgroups:?} (with one pod: {cgroups_before:?})"
    );
    let monitors: Vec<i32> = monitor_pids()
        .difference(&monitors_before)
        .copied()
        .collect();
    ensure!(
        monitors.is_empty(),
        "new berth-monitor processes left: {monitors:?}"
    );
    let left: BTreeSet<String> = acked_pods.iter().chain(&acked_ctrs).cloned().collect();
    for dir in [&d.root_dir, &d.state_dir] {
        for sub in ["pods", "containers"] {
            // The records of calls that failed at the limit are removed once fds are
            // free again, by a retry that runs every second: wait a few of them.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let names = loop {
                let names = reliability_common::entries(&dir.join(sub));
                if names.is_empty() || tokio::time::Instant::now() >= deadline {
                    break names;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            ensure!(
                names.is_empty(),
                "left in {} 10 s after fds were free: {names:?}",
                dir.join(sub).display()
            );
        }
        let named = paths_naming(dir, &left);
        ensure!(
            named.is_empty(),
            "files left naming removed objects: {named:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berthd_at_its_fd_limit_fails_calls_clearly_and_recovers() {
    let cg = format!("/berthfd{}", std::process::id());
    let _cg = CgroupParent(cg.clone());
    let node = Node::start_with(DaemonOptions {
        log_level: "info".into(),
        ..DaemonOptions::default()
    })
    .await
    .expect("node");
    match tokio::time::timeout(Duration::from_secs(300), run(&node, &cg)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{e:#}"),
        Err(_) => panic!("the fd-limit test did not finish within 300 s"),
    }
}
