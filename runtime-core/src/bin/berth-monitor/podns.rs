//! Helpers for the pod layer: `pin-ns` / `unpin-ns` (keep a pod's namespaces alive
//! as bind mounts) and `pause` (an infra process that reaps zombies as pid 1 of a
//! shared pid namespace).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::Res;

const PIN_KINDS: [(&str, libc::c_int); 3] = [
    ("net", libc::CLONE_NEWNET),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
];

pub(crate) fn pin_ns(dir: &Path, net: bool, ipc: bool, uts: bool) -> Res<()> {
    let wanted: Vec<(&str, libc::c_int)> = PIN_KINDS
        .iter()
        .copied()
        .filter(|(k, _)| match *k {
            "net" => net,
            "ipc" => ipc,
            _ => uts,
        })
        .collect();
    if wanted.is_empty() {
        return Err("choose at least one of --net, --ipc, --uts".into());
    }
    fs::create_dir_all(dir)?;
    for (k, _) in &wanted {
        fs::File::create(dir.join(k))?;
    }
    let flags = wanted.iter().fold(0, |a, (_, f)| a | f);
    // SAFETY: this program is single-threaded; the child only makes syscalls and _exits.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            let mut code = 0;
            // SAFETY: unshare with namespace flags only.
            if unsafe { libc::unshare(flags) } != 0 {
                code = 10;
            } else {
                for (k, _) in &wanted {
                    let src = PathBuf::from(format!("/proc/self/ns/{k}"));
                    if nix::mount::mount(
                        Some(&src),
                        &dir.join(k),
                        None::<&str>,
                        nix::mount::MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .is_err()
                    {
                        code = 11;
                        break;
                    }
                }
            }
            // SAFETY: end the forked child without running destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let st = nix::sys::wait::waitpid(child, None)?;
            if st != nix::sys::wait::WaitStatus::Exited(child, 0) {
                let _ = unpin_ns(dir);
                return Err(format!("pinning namespaces failed: {st:?}").into());
            }
        }
    }
    let paths: HashMap<&str, PathBuf> = wanted.iter().map(|(k, _)| (*k, dir.join(k))).collect();
    outln!("{}", serde_json::to_string(&paths)?);
    Ok(())
}

pub(crate) fn unpin_ns(dir: &Path) -> Res<()> {
    for (k, _) in PIN_KINDS {
        let p = dir.join(k);
        if p.exists() {
            match nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
                Err(e) => return Err(format!("unmount {}: {e}", p.display()).into()),
            }
            fs::remove_file(&p)?;
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove {}: {e}", dir.display()).into()),
    }
}

pub(crate) fn pause() -> Res<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        set.add(s);
    }
    set.thread_block()?;
    loop {
        match set.wait()? {
            // As pid 1 of a pod's pid namespace, reaping every orphan is our job.
            Signal::SIGCHLD => {
                while let Ok(st) =
                    nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
                {
                    if st == nix::sys::wait::WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            _ => return Ok(()),
        }
    }
}
