//! Pushes the images Kubernetes' node e2e suite (`[NodeConformance]`) runs into a local
//! registry, under their upstream paths (`registry.k8s.io/e2e-test-images/...`), so
//! berthd's mirror configuration serves them offline. Used by
//! `integration/scripts/node-e2e.sh`; the list and what each stands in for is in
//! docs/conformance.md.
//!
//!   berth-node-e2e-images http://127.0.0.1:PORT AGNHOST_BINARY [AGNHOST_PORTER_DIR]
//!
//! What is built here (test/utils/image/manifest.go of Kubernetes v1.37):
//! - agnhost 2.66.1 and 2.55 (the suite's `Agnhost` and `AgnhostPrev`): the agnhost
//!   binary built from the kubernetes module by build-node-e2e.sh, on the busybox base
//!   plus Debian's curl and bash and `/bin/nmeter` as busybox's below, with the user
//!   and group agnhost's Dockerfile adds, `ENTRYPOINT ["/agnhost"]`, `CMD ["pause"]`, `/agnhost-2`, `/uploads` and (from AGNHOST_PORTER_DIR, the
//!   module's test/images/agnhost/porter) `/localhost.crt` and `/localhost.key` as upstream;
//! - busybox 1.37.0-2, 1.36.1-1 and 1.29-2: the busybox base with every applet also in
//!   `/bin` as upstream's, plus `/bin/nmeter` (`berth-nmeter`: Debian's busybox has no
//!   nmeter applet), `CMD ["sh"]`;
//! - nginx 1.27.0-2 and 1.28.0-2: Debian's nginx on port 80;
//! - nonewprivs 1.4: critest's set-uid `nnp` probe;
//! - nonroot 1.5: busybox with `USER 1234`, as its Dockerfile;
//! - glibc-dns-testing 2.1.1: the busybox base with Debian's `hostname` (glibc's
//!   resolver answers `hostname -f`) and `hosts: files dns`;
//! - pause 3.10.2 (registry.k8s.io/pause): agnhost's `pause` subcommand as `/pause`,
//!   which exits on SIGTERM as the real pause does.
//!
//! Not built (the specs that need them are skipped, with this reason): perl, the
//! node-perf workloads, kitten/nautilus, ipc-utils, nfs, etcd,
//! cadvisor, the sample device plugin and node-problem-detector, and any image pinned by
//! upstream digest (a local build cannot reproduce the digest).

use std::path::Path;

use anyhow::{Context, bail};
use berth_integration::forge::{
    BUSYBOX, BuiltImage, Group, ImageBuilder, LayerBuilder, Pusher, User, busybox_layer,
    nginx_image, nonewprivs_image,
};

/// Debian's curl (package `curl`).
const CURL: &str = "/usr/bin/curl";

/// Repository paths below `registry.k8s.io/` and their tags.
const E2E: &str = "e2e-test-images";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, agnhost, porter) = match args.as_slice() {
        [url, agnhost] => (url, agnhost, None),
        [url, agnhost, porter] => (url, agnhost, Some(Path::new(porter))),
        _ => bail!(
            "usage: berth-node-e2e-images http://127.0.0.1:PORT AGNHOST_BINARY [AGNHOST_PORTER_DIR]"
        ),
    };
    let agnhost = Path::new(agnhost);
    let pusher = Pusher::new(url, None)?;

    let plain = busybox_layer(&[], &[])?;
    let busybox = ImageBuilder::new()
        .layer(plain.clone())
        .layer(all_applets_in_bin()?)
        .layer(nmeter_layer()?)
        .cmd(["sh"])
        .build()?;
    let agnhost_image = agnhost_image(agnhost, porter)?;
    let pause = ImageBuilder::new()
        .layer(LayerBuilder::new().host_binary_at("/pause", agnhost)?)
        .entrypoint(["/pause", "pause"])
        .build()?;
    let nonroot = ImageBuilder::new()
        .layer(plain.clone())
        .cmd(["sh"])
        .user("1234")
        .build()?;
    let nginx = nginx_image(&plain, 80)?;
    let glibc_dns = glibc_dns_testing_image(&plain)?;
    let nonewprivs = nonewprivs_image(&plain)?;

    let images: [(String, &[&str], &BuiltImage); 8] = [
        (
            format!("{E2E}/agnhost"),
            &["2.66.1", "2.55"],
            &agnhost_image,
        ),
        (
            format!("{E2E}/busybox"),
            &["1.37.0-2", "1.36.1-1", "1.29-2"],
            &busybox,
        ),
        (format!("{E2E}/nginx"), &["1.27.0-2", "1.28.0-2"], &nginx),
        (format!("{E2E}/nonewprivs"), &["1.4"], &nonewprivs),
        (format!("{E2E}/nonroot"), &["1.5"], &nonroot),
        (format!("{E2E}/glibc-dns-testing"), &["2.1.1"], &glibc_dns),
        ("pause".to_owned(), &["3.10.2"], &pause),
        // Specs that say just `busybox` (docker.io/library/busybox).
        ("library/busybox".to_owned(), &["latest", "1.36"], &busybox),
    ];
    for (repo, tags, image) in images {
        for tag in tags {
            pusher
                .push(&repo, tag, image)
                .await
                .with_context(|| format!("pushing {repo}:{tag}"))?;
            println!("berth-node-e2e-images: {repo}:{tag}");
        }
    }
    println!("berth-node-e2e-images: pushed to {url}");
    Ok(())
}

/// The upstream busybox image has every applet in `/bin` (the specs run `/bin/sysctl`);
/// Debian's busybox lists some under `/sbin` and `/usr/bin`: add `/bin/<applet>`
/// symlinks for those (busybox runs the applet its `argv[0]` names).
fn all_applets_in_bin() -> anyhow::Result<LayerBuilder> {
    let out = std::process::Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .context("running busybox --list-full")?;
    if !out.status.success() {
        bail!("busybox --list-full failed: {}", out.status);
    }
    let mut layer = LayerBuilder::new();
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((dir, name)) = applet.trim().rsplit_once('/') else {
            continue;
        };
        if dir != "bin" && !name.is_empty() && !name.contains("..") {
            layer = layer.symlink(&format!("bin/{name}"), "busybox");
        }
    }
    Ok(layer)
}

/// `/bin/nmeter`: Debian's busybox lacks that applet, and the container-lifecycle
/// specs time-stamp their logs with it; `berth-nmeter` (built next to this program)
/// does what they ask of it.
fn nmeter_layer() -> anyhow::Result<LayerBuilder> {
    LayerBuilder::new().host_binary_at("bin/nmeter", &sibling("berth-nmeter")?)
}

/// A program cargo built next to this one.
fn sibling(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let path = exe.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{} missing: cargo build -p berth-integration --bins",
            path.display()
        );
    }
    Ok(path)
}

/// glibc-dns-testing: upstream's is Debian with dnsutils; the hostname specs run
/// `hostname` and `hostname -f` in it, which must resolve through glibc (the pod's
/// `/etc/hosts`). Debian's `hostname` with its glibc, and Debian's `hosts: files dns`,
/// over the busybox base (whose `sh` runs the specs' command lines).
fn glibc_dns_testing_image(base: &LayerBuilder) -> anyhow::Result<BuiltImage> {
    ImageBuilder::new()
        .layer(base.clone())
        .layer(
            LayerBuilder::new()
                .host_binary_at("bin/hostname", Path::new("/bin/hostname"))?
                .file("etc/nsswitch.conf", "hosts: files dns\n", 0o644),
        )
        .cmd(["sh"])
        .build()
}

/// agnhost as its Dockerfile lays it out, on the busybox base instead of alpine.
fn agnhost_image(agnhost: &Path, porter: Option<&Path>) -> anyhow::Result<BuiltImage> {
    let base = busybox_layer(
        &[User {
            name: "user-defined-in-image".into(),
            uid: 1000,
            gid: 1000,
        }],
        &[
            Group {
                name: "user-defined-in-image".into(),
                gid: 1000,
                members: vec![],
            },
            Group {
                name: "group-defined-in-image".into(),
                gid: 50000,
                members: vec!["user-defined-in-image".into()],
            },
        ],
    )?;
    // `/localhost.crt` and `/localhost.key` (agnhost's porter directory in the
    // kubernetes module): netexec serves HTTPS with them in the https hook specs.
    let mut tls = LayerBuilder::new();
    if let Some(dir) = porter {
        for f in ["localhost.crt", "localhost.key"] {
            tls = tls.host_file(f, &dir.join(f), 0o644)?;
        }
    }
    ImageBuilder::new()
        .layer(base)
        .layer(tls)
        .layer(
            LayerBuilder::new()
                .host_binary_at("/agnhost", agnhost)?
                // Upstream's alpine base has curl; exec hooks and the networking
                // specs run it. Debian's, with the libraries it links.
                .host_binary(CURL)?
                // Upstream's installs bash too; the probe specs' pods run `/bin/bash`.
                .host_binary("/bin/bash")?
                // The container-lifecycle specs that change a container's image run
                // their time-stamped command in agnhost too.
                .host_binary_at("bin/nmeter", &sibling("berth-nmeter")?)?
                .symlink("agnhost-2", "agnhost")
                .dir("uploads", 0o755),
        )
        .entrypoint(["/agnhost"])
        .cmd(["pause"])
        .expose("80/tcp")
        .expose("8080/tcp")
        .expose("8081/tcp")
        .expose("9376/tcp")
        .expose("5000/tcp")
        .build()
}
