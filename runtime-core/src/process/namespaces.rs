//! Which namespaces the container joins (by path, in a safe order) and which it
//! creates.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxNamespaceType;

use super::{ProcessError, SpawnConfig};
use crate::sys::CloneFlags;

/// A namespace to enter: create a new one or join an existing one.
#[derive(Debug)]
pub(super) enum NsAction {
    New(CloneFlags),
    Join(CloneFlags, OwnedFd),
}

pub(super) fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// Order in which namespaces are joined: user first (it grants the rights to join the
/// others), mount last (it changes the filesystem view used to open nothing else).
pub(super) fn join_rank(f: CloneFlags) -> u8 {
    match f {
        CloneFlags::CLONE_NEWUSER => 0,
        CloneFlags::CLONE_NEWNS => 9,
        _ => 5,
    }
}

pub(super) fn open_ns(kind: &str, path: &Path) -> Result<OwnedFd, ProcessError> {
    fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(|source| ProcessError::OpenNamespace {
            kind: kind.to_string(),
            path: path.to_path_buf(),
            source,
        })
}

pub(super) fn plan_namespaces(cfg: &SpawnConfig<'_>) -> Result<Vec<NsAction>, ProcessError> {
    let mut out = Vec::new();
    if let Some(pid) = cfg.exec_in {
        // Join every namespace of the running init that differs from ours.
        for (name, flag) in [
            ("user", CloneFlags::CLONE_NEWUSER),
            ("ipc", CloneFlags::CLONE_NEWIPC),
            ("uts", CloneFlags::CLONE_NEWUTS),
            ("net", CloneFlags::CLONE_NEWNET),
            ("pid", CloneFlags::CLONE_NEWPID),
            ("cgroup", CloneFlags::CLONE_NEWCGROUP),
            ("mnt", CloneFlags::CLONE_NEWNS),
        ] {
            let theirs = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
            let ours = PathBuf::from(format!("/proc/self/ns/{name}"));
            let same = match (fs::metadata(&theirs), fs::metadata(&ours)) {
                (Ok(a), Ok(b)) => {
                    use std::os::unix::fs::MetadataExt;
                    a.ino() == b.ino() && a.dev() == b.dev()
                }
                _ => false,
            };
            if !same {
                out.push(NsAction::Join(flag, open_ns(name, &theirs)?));
            }
        }
        return Ok(out);
    }
    let namespaces = cfg
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for ns in namespaces {
        let flag = ns_flag(ns.typ());
        match ns.path() {
            Some(p) if !p.as_os_str().is_empty() => {
                out.push(NsAction::Join(flag, open_ns(&ns.typ().to_string(), p)?));
            }
            _ => out.push(NsAction::New(flag)),
        }
    }
    out.sort_by_key(|a| match a {
        NsAction::Join(f, _) => join_rank(*f),
        NsAction::New(_) => 10,
    });
    Ok(out)
}
