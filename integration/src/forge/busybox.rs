//! The busybox base layer, from the host's busybox binary.

use std::path::Path;

use anyhow::{Context, bail};

use super::LayerBuilder;

/// Debian's static busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// Debian's dynamically linked busybox (package `busybox`, which conflicts with
/// `busybox-static`), unpacked here by install-deps.sh. Unlike the static build its
/// `sh` execs external commands instead of running applets in-process, so a masked
/// `/bin/ls` really fails the way critest's MaskedPaths spec expects.
pub const DYNAMIC_BUSYBOX: &str = "/var/cache/berth/busybox/bin/busybox";

/// A user in the base layer's `/etc/passwd`.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// A group in the base layer's `/etc/group`.
#[derive(Clone, Debug)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    /// Supplementary members.
    pub members: Vec<String>,
}

/// The busybox base layer: `/bin/busybox` with every applet as a hard link at its
/// usual path (critest's MaskedPaths spec needs `/bin/ls` to be a real file), the
/// usual directories, and `/etc/passwd` + `/etc/group` with root, nobody, www-data
/// and the given extra users and groups.
pub fn busybox_layer(users: &[User], groups: &[Group]) -> anyhow::Result<LayerBuilder> {
    busybox_layer_from(Path::new(BUSYBOX), users, groups)
}

/// [`busybox_layer`] built from the busybox binary at `busybox` on the host, copied
/// with the shared libraries it needs when it is dynamically linked.
pub fn busybox_layer_from(
    busybox: &Path,
    users: &[User],
    groups: &[Group],
) -> anyhow::Result<LayerBuilder> {
    if !busybox.is_file() {
        bail!(
            "{} is missing: run integration/scripts/install-deps.sh",
            busybox.display()
        );
    }
    let mut layer = LayerBuilder::new();
    for (dir, mode) in [
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("var", 0o755),
        ("var/run", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
    ] {
        layer = layer.dir(dir, mode);
    }
    layer = layer.host_binary_at("bin/busybox", busybox)?;
    let out = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .context("running busybox --list-full")?;
    if !out.status.success() {
        bail!("busybox --list-full failed: {}", out.status);
    }
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "bin/busybox" || applet.contains("..") {
            continue;
        }
        layer = layer.hardlink(applet, "bin/busybox");
    }
    let mut passwd = String::from(
        "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/false\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
    );
    let mut group = String::from("root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n");
    for u in users {
        passwd.push_str(&format!(
            "{}:x:{}:{}:{}:/home/{}:/bin/sh\n",
            u.name, u.uid, u.gid, u.name, u.name
        ));
    }
    for g in groups {
        group.push_str(&format!("{}:x:{}:{}\n", g.name, g.gid, g.members.join(",")));
    }
    Ok(layer
        .file("etc/passwd", passwd, 0o644)
        .file("etc/group", group, 0o644))
}
