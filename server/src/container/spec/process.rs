//! The spec's `process`: arguments (ENTRYPOINT/CMD), environment, and the user
//! resolved through the image's /etc/passwd and /etc/group.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use berth_proto::v1::{ContainerConfig, LinuxContainerSecurityContext};

use super::{ImageConfig, ResolvedUser};
use crate::error::{Error, Result};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// ENTRYPOINT/CMD merge as containerd does it: a CRI `command` replaces the
/// entrypoint (and drops CMD); CRI `args` replace CMD.
pub fn merge_args(config: &ContainerConfig, image: &ImageConfig) -> Result<Vec<String>> {
    let mut args = Vec::new();
    if !config.command.is_empty() {
        args.extend(config.command.iter().cloned());
        args.extend(config.args.iter().cloned());
    } else {
        args.extend(image.entrypoint.iter().cloned());
        if config.args.is_empty() {
            args.extend(image.cmd.iter().cloned());
        } else {
            args.extend(config.args.iter().cloned());
        }
    }
    if args.is_empty() {
        return Err(Error::InvalidArgument(
            "no command: the container config has no command/args and the image no ENTRYPOINT/CMD"
                .into(),
        ));
    }
    Ok(args)
}

/// Image ENV, then CRI envs (a CRI variable replaces the image's of the same name);
/// PATH and HOME get defaults when neither sets them, and HOSTNAME is the pod's
/// hostname unless the image or the CRI config sets it (containerd sets it first and
/// lets both replace it; CRI-O likewise). Programs read it instead of calling uname.
pub fn merge_env(
    config: &ContainerConfig,
    image: &ImageConfig,
    user: &ResolvedUser,
    hostname: &str,
) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    fn set(order: &mut Vec<String>, values: &mut HashMap<String, String>, k: String, v: String) {
        if !values.contains_key(&k) {
            order.push(k.clone());
        }
        values.insert(k, v);
    }
    for e in &image.env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        set(&mut order, &mut values, k.to_owned(), v.to_owned());
    }
    for kv in &config.envs {
        let v = String::from_utf8_lossy(&kv.value).into_owned();
        set(&mut order, &mut values, kv.key.clone(), v);
    }
    if !values.contains_key("PATH") {
        set(&mut order, &mut values, "PATH".into(), DEFAULT_PATH.into());
    }
    if !hostname.is_empty() && !values.contains_key("HOSTNAME") {
        set(&mut order, &mut values, "HOSTNAME".into(), hostname.into());
    }
    if !values.contains_key("HOME") {
        let home = user.home.clone().unwrap_or_else(|| "/".into());
        set(&mut order, &mut values, "HOME".into(), home);
    }
    order
        .into_iter()
        .map(|k| {
            let v = values.get(&k).cloned().unwrap_or_default();
            format!("{k}={v}")
        })
        .collect()
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Largest `/etc/passwd` or `/etc/group` berthd reads from an image. Real ones are a
/// few KiB; the cap keeps a sparse multi-GiB file from being read into berthd's memory.
pub const IMAGE_FILE_MAX: u64 = 4 * 1024 * 1024;

/// Reads `path` (absolute, as the container sees it) from the image's root filesystem
/// at `rootfs`. The image's author controls every byte of it, so: the path is resolved
/// by the kernel as if `rootfs` were `/` (openat2 RESOLVE_IN_ROOT: symlinks and `..`
/// cannot leave it, magic /proc links are refused), opened O_PATH and checked before
/// it is opened for reading (a FIFO cannot hang the open), and read only when it is a regular file of at most
/// [`IMAGE_FILE_MAX`] bytes. A missing file is `Ok(None)`; a FIFO, device, socket,
/// directory, symlink loop, dangling symlink or oversized file is InvalidArgument
/// naming the file, at once.
pub fn read_image_file(rootfs: &Path, path: &str) -> Result<Option<String>> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    use std::io::Read;
    let bad = |why: String| Error::InvalidArgument(format!("image file {path}: {why}"));
    // The node running out of fds or memory is not the image's fault (refused_io).
    let unreadable = |why: &str, e| Error::refused_io(format!("image file {path}: {why}"), e);
    let root = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(format!("opening the rootfs {}", rootfs.display()), e.into()))?;
    let rel = path.trim_start_matches('/');
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    // O_PATH first: opening a FIFO or a device for reading has effects (a FIFO
    // blocks until a writer comes); an O_PATH fd has none and pins the inode.
    let opened = rustix::fs::openat2(
        &root,
        rel,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        resolve,
    );
    let fd = match opened {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => {
            // Absent is fine (scratch images have no /etc/passwd). A link that exists
            // but leads nowhere inside the image is the author pointing at the host
            // (`/proc/self/...`, `../../etc/shadow`): said, not silently ignored.
            let link = rustix::fs::openat2(
                &root,
                rel,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                resolve,
            );
            return match link {
                Ok(_) => Err(bad(
                    "is a symbolic link that leads nowhere inside the image".into(),
                )),
                Err(_) => Ok(None),
            };
        }
        Err(rustix::io::Errno::LOOP) => return Err(bad("symbolic link loop".into())),
        Err(rustix::io::Errno::XDEV) => {
            return Err(bad("resolves through a /proc magic link".into()));
        }
        Err(rustix::io::Errno::NOTDIR) => return Ok(None),
        Err(e) => return Err(unreadable("cannot be opened", e.into())),
    };
    let st = rustix::fs::fstat(&fd)
        .map_err(|e| Error::io(format!("stat of image file {path}"), e.into()))?;
    let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
    if kind != rustix::fs::FileType::RegularFile {
        return Err(bad(format!("is a {kind:?}, not a regular file")));
    }
    let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
    if size > IMAGE_FILE_MAX {
        return Err(bad(format!(
            "is {size} bytes, more than the {IMAGE_FILE_MAX} berthd reads"
        )));
    }
    // The same inode, now for reading (non-blocking all the same).
    let file = rustix::fs::open(
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| unreadable("cannot be opened", e.into()))?;
    let mut text = Vec::new();
    std::fs::File::from(file)
        .take(IMAGE_FILE_MAX + 1)
        .read_to_end(&mut text)
        .map_err(|e| unreadable("cannot be read", e))?;
    if text.len() as u64 > IMAGE_FILE_MAX {
        return Err(bad(format!(
            "is more than the {IMAGE_FILE_MAX} bytes berthd reads"
        )));
    }
    Ok(Some(String::from_utf8_lossy(&text).into_owned()))
}

fn read_in_rootfs(rootfs: &Path, path: &str) -> Result<String> {
    Ok(read_image_file(rootfs, path)?.unwrap_or_default())
}

fn passwd(rootfs: &Path) -> Result<Vec<PasswdEntry>> {
    Ok(read_in_rootfs(rootfs, "/etc/passwd")?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: (*f.first()?).to_owned(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).map(|s| (*s).to_owned()).unwrap_or_default(),
            })
        })
        .collect())
}

fn groups(rootfs: &Path) -> Result<Vec<GroupEntry>> {
    Ok(read_in_rootfs(rootfs, "/etc/group")?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: (*f.first()?).to_owned(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect())
}

/// Resolves the process user: CRI run_as_user / run_as_username / run_as_group, else
/// the image's USER, through the image's /etc/passwd and /etc/group.
pub fn resolve_user(
    rootfs: &Path,
    sc: &LinuxContainerSecurityContext,
    image_user: &str,
) -> Result<ResolvedUser> {
    let users = passwd(rootfs)?;
    let grps = groups(rootfs)?;
    let (user_part, group_part): (String, Option<String>) = if let Some(uid) = &sc.run_as_user {
        (uid.value.to_string(), None)
    } else if !sc.run_as_username.is_empty() {
        (sc.run_as_username.clone(), None)
    } else {
        match image_user.split_once(':') {
            Some((u, g)) => (u.to_owned(), Some(g.to_owned())),
            None => (image_user.to_owned(), None),
        }
    };
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(Error::InvalidArgument(
            "security_context.run_as_group needs run_as_user or run_as_username".into(),
        ));
    }

    let (uid, mut gid, name, home) = if user_part.is_empty() {
        (
            0,
            0,
            Some("root".to_owned()),
            users.iter().find(|u| u.uid == 0).map(|u| u.home.clone()),
        )
    } else if let Ok(uid) = user_part.parse::<u32>() {
        let entry = users.iter().find(|u| u.uid == uid);
        (
            uid,
            entry.map(|e| e.gid).unwrap_or(0),
            entry.map(|e| e.name.clone()),
            entry.map(|e| e.home.clone()),
        )
    } else {
        let entry = users.iter().find(|u| u.name == user_part).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "user {user_part:?} is not in the image's /etc/passwd"
            ))
        })?;
        (
            entry.uid,
            entry.gid,
            Some(entry.name.clone()),
            Some(entry.home.clone()),
        )
    };

    if let Some(g) = &sc.run_as_group {
        gid = u32::try_from(g.value).map_err(|_| {
            Error::InvalidArgument(format!("run_as_group {} is out of range", g.value))
        })?;
    } else if let Some(g) = group_part.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => grps
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("group {g:?} is not in the image's /etc/group"))
                })?,
        };
    }

    // The primary group is listed too (as `id -G` shows it and containerd reports it).
    let mut additional: BTreeSet<u32> = BTreeSet::from([gid]);
    let strict = sc.supplemental_groups_policy
        == i32::from(berth_proto::v1::SupplementalGroupsPolicy::Strict);
    if let Some(name) = name.as_ref().filter(|_| !strict) {
        for g in &grps {
            if g.members.iter().any(|m| m == name) {
                additional.insert(g.gid);
            }
        }
    }
    for g in &sc.supplemental_groups {
        additional.insert(u32::try_from(*g).map_err(|_| {
            Error::InvalidArgument(format!("supplemental group {g} is out of range"))
        })?);
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional.into_iter().collect(),
        home: home.filter(|h| !h.is_empty()),
    })
}
