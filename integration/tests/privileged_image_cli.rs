//! `berthd image import|pull|list|rm|export` against a running berthd (through its
//! admin socket, as `ctr images import` goes through containerd), their progress
//! output, `image.pinned_images`, and the export -> import round trip ending in a
//! running container.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Output;

use berth_integration::client::CriClient;
use berth_integration::fixtures;
use berth_integration::forge::ImageBuilder;
use berth_integration::registry::TestRegistry;
use berth_integration::{DaemonOptions, TestDaemon};
use berth_proto::v1 as cri;
use tonic::Code;

const APP: &str = "berth.test/roundtrip:1";
const PINNED: &str = "berth.test/pinned:1";

fn run(mut c: std::process::Command) -> Output {
    c.output().expect("running berthd")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "berthd failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn spec(name: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: name.to_owned(),
        ..Default::default()
    })
}

async fn status(c: &mut CriClient, name: &str) -> Option<cri::Image> {
    c.image
        .image_status(cri::ImageStatusRequest {
            image: spec(name),
            verbose: false,
        })
        .await
        .expect("ImageStatus")
        .into_inner()
        .image
}

/// `berthd image <args>` against `d`.
fn image(d: &TestDaemon, args: &[&str]) -> std::process::Command {
    let mut c = d.command().expect("berthd");
    c.arg("image").args(args);
    c
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Imports, pins, refuses and forces removal, exports, and imports the export on a
/// fresh berthd where a container runs from it, all while the daemons run.
#[tokio::test]
async fn live_import_pinned_rm_export_and_a_container_from_the_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = ImageBuilder::busybox()
        .expect("busybox")
        .files(&[("etc/motd", b"round trip\n", 0o644)])
        .build()
        .expect("app image");
    let pinned = ImageBuilder::new()
        .files(&[("keep.txt", b"keep\n", 0o644)])
        .build()
        .expect("pinned image");
    let app_tar = dir.path().join("app.tar");
    let pinned_tar = dir.path().join("pinned.tar");
    std::fs::write(&app_tar, app.oci_archive(APP).expect("archive")).expect("write");
    std::fs::write(&pinned_tar, pinned.oci_archive(PINNED).expect("archive")).expect("write");

    let d = TestDaemon::start_with(DaemonOptions {
        extra_config: format!("[image]\npinned_images = [{PINNED:?}]\n"),
        ..DaemonOptions::default()
    })
    .await
    .expect("berthd");
    let admin = d.state_dir.join("admin.sock");
    let mode = std::fs::metadata(&admin)
        .expect("admin socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin socket mode {mode:o}");

    // Import through the running daemon: it serves the image at once.
    let out = run(image(&d, &["import", path(&app_tar)]));
    let stdout = ok(&out);
    assert!(
        stdout.contains(app.id()) && stdout.contains(APP),
        "{stdout}"
    );
    // Not a terminal (a CI log): plain progress lines, no carriage returns.
    let progress = text(&out.stderr);
    let label = format!("importing {}", app_tar.display());
    assert!(
        progress.contains(&format!("{label}: 2 layer(s)"))
            && progress.contains(&format!("{label}: layer 2/2 unpacked")),
        "{progress}"
    );
    assert!(!progress.contains(['\r', '\x1b']), "{progress:?}");
    assert!(
        d.log().contains("image import through the admin socket"),
        "not imported by the daemon"
    );
    let mut c = d.client().await.expect("client");
    let got = status(&mut c, APP).await.expect("imported image served");
    assert_eq!(got.id, app.id());
    assert!(!got.pinned);

    // On a terminal, the import shows bytes and layers.
    if Path::new("/usr/bin/script").exists() {
        let cmd = format!(
            "{} --config {} image import {}",
            TestDaemon::binary().expect("berthd").display(),
            d.config_path.display(),
            pinned_tar.display()
        );
        let out = run({
            let mut s = std::process::Command::new("/usr/bin/script");
            s.args(["-qec", &cmd, "/dev/null"]);
            s
        });
        let shown = ok(&out);
        assert!(
            shown.contains("importing") && shown.contains("layers unpacked 1/1"),
            "{shown}"
        );
    } else {
        ok(&run(image(&d, &["import", path(&pinned_tar)])));
    }
    let p = status(&mut c, PINNED).await.expect("pinned image");
    assert!(p.pinned, "ImageStatus must report the configured pin");
    let listed = c
        .image
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("ListImages")
        .into_inner()
        .images;
    for i in &listed {
        assert_eq!(i.pinned, i.id == pinned.id(), "{i:?}");
    }

    // RemoveImage of a pinned image: FailedPrecondition naming the config key.
    let err = c
        .image
        .remove_image(cri::RemoveImageRequest {
            image: spec(PINNED),
        })
        .await
        .expect_err("pinned image removed");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("image.pinned_images"),
        "{}",
        err.message()
    );
    let out = run(image(&d, &["rm", PINNED]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("image.pinned_images"),
        "{}",
        text(&out.stderr)
    );
    let list = ok(&run(image(&d, &["list"])));
    assert!(
        list.lines()
            .any(|l| l.contains(PINNED) && l.contains(" yes ")),
        "{list}"
    );
    let removed = ok(&run(image(&d, &["rm", "--force", PINNED])));
    assert!(removed.contains(pinned.id()), "{removed}");
    assert!(status(&mut c, PINNED).await.is_none());

    // Export through the daemon: a docker save archive that is an OCI layout.
    let exported = dir.path().join("export.tar");
    ok(&run(image(&d, &["export", "-o", path(&exported), APP])));
    let mut members = Vec::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&exported).expect("export"));
    for e in archive.entries().expect("tar") {
        members.push(
            e.expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string(),
        );
    }
    for m in ["oci-layout", "index.json", "manifest.json"] {
        assert!(members.iter().any(|n| n == m), "{m} missing: {members:?}");
    }
    let out = run(image(
        &d,
        &[
            "export",
            "-o",
            path(&dir.path().join("no.tar")),
            "nothere:1",
        ],
    ));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("nothere"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !dir.path().join("no.tar").exists(),
        "a failed export leaves no file"
    );

    // A fresh node: import the export, run a container from it.
    let fresh = TestDaemon::start().await.expect("second berthd");
    ok(&run(image(&fresh, &["import", path(&exported)])));
    let mut c2 = fresh.client().await.expect("client");
    let again = status(&mut c2, APP).await.expect("re-imported");
    assert_eq!(again.id, app.id());
    assert_eq!(
        again.repo_digests, got.repo_digests,
        "the export keeps the digest"
    );
    let pod = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "roundtrip".into(),
            uid: "roundtrip-uid".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "roundtrip".into(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    let pod_id = fixtures::run_pod(&mut c2, &pod).await;
    let ctr = c2
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                image: spec(APP),
                command: vec!["sleep".into(), "3600".into()],
                ..Default::default()
            }),
            sandbox_config: Some(pod),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    fixtures::start(&mut c2, &ctr)
        .await
        .expect("StartContainer");
    let exec = |c: &mut CriClient| {
        let req = cri::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec!["cat".into(), "/etc/motd".into()],
            timeout: 20,
        };
        let mut c = c.clone();
        async move {
            c.runtime
                .exec_sync(req)
                .await
                .expect("ExecSync")
                .into_inner()
        }
    };
    let r = exec(&mut c2).await;
    assert_eq!(
        (r.exit_code, text(&r.stdout)),
        (0, "round trip\n".to_owned())
    );

    // `rm` of an image a container uses: removed (CRI RemoveImage), the container
    // keeps its layers.
    ok(&run(image(&fresh, &["rm", APP])));
    assert!(status(&mut c2, APP).await.is_none());
    let r = exec(&mut c2).await;
    assert_eq!(text(&r.stdout), "round trip\n");
    c2.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("StopPodSandbox");
    c2.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await
        .expect("RemovePodSandbox");
}

/// The admin socket serves only berthd's own user: 0600, and the peer's uid is
/// checked too, so a socket left more open (a stray chmod) still refuses others.
#[tokio::test]
async fn the_admin_socket_refuses_other_users() {
    let d = TestDaemon::start().await.expect("berthd");
    // A copy of the binary every user can run (the build tree may be private).
    let bin = d.dir().join("berthd-copy");
    std::fs::copy(TestDaemon::binary().expect("berthd"), &bin).expect("copy");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&d.config_path, std::fs::Permissions::from_mode(0o644))
        .expect("chmod config");
    let as_nobody = || {
        let mut c = std::process::Command::new(&bin);
        c.arg("--config")
            .arg(&d.config_path)
            .args(["image", "list"])
            .uid(65534)
            .gid(65534);
        c.output().expect("run as nobody")
    };
    let out = as_nobody();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("run as root"),
        "{}",
        text(&out.stderr)
    );

    let admin = d.state_dir.join("admin.sock");
    std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = as_nobody();
    assert_eq!(
        out.status.code(),
        Some(1),
        "another user used the admin socket: {}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("only uid 0"),
        "{}",
        text(&out.stderr)
    );
    assert!(d.log().contains("refused a connection from another user"));
}

/// `berthd image pull` through the running daemon, from a real registry: per-layer
/// progress as plain lines when stderr is a log, one line rewritten in place on a
/// terminal, the image served over CRI at once; a bad reference is refused with a
/// message that names it.
#[tokio::test]
async fn pull_through_the_daemon_shows_per_layer_progress() {
    let reg = TestRegistry::start().expect("registry");
    let app = ImageBuilder::busybox()
        .expect("busybox")
        .files(&[("etc/motd", b"pulled\n", 0o644)])
        .build()
        .expect("image");
    reg.push("cli/pull", "1", &app).await.expect("push");
    reg.push("cli/pull", "2", &app).await.expect("push");
    let d = TestDaemon::start().await.expect("berthd");
    let name = format!("{}/cli/pull:1", reg.host());

    let out = run(image(&d, &["pull", &name]));
    let stdout = ok(&out);
    assert!(
        stdout.contains(&format!("pulled {} {name}", app.id())),
        "{stdout}"
    );
    let progress = text(&out.stderr);
    let label = format!("pulling {name}");
    for line in [
        format!("{label}: 2 layer(s), 0.0/"),
        format!("{label}: layer 1/2 ready, "),
        format!("{label}: layer 2/2 ready, "),
    ] {
        assert!(progress.contains(&line), "no {line:?} in:\n{progress}");
    }
    assert!(!progress.contains(['\r', '\x1b']), "{progress:?}");
    assert!(
        d.log().contains("image pull through the admin socket"),
        "not pulled by the daemon"
    );
    let mut c = d.client().await.expect("client");
    let got = status(&mut c, &name).await.expect("pulled image served");
    assert_eq!(got.id, app.id());

    // On a terminal: one status line, rewritten in place.
    if Path::new("/usr/bin/script").exists() {
        let tag2 = format!("{}/cli/pull:2", reg.host());
        let cmd = format!(
            "{} --config {} image pull {tag2}",
            TestDaemon::binary().expect("berthd").display(),
            d.config_path.display(),
        );
        let out = run({
            let mut s = std::process::Command::new("/usr/bin/script");
            s.args(["-qec", &cmd, "/dev/null"]);
            s
        });
        let shown = ok(&out);
        assert!(
            shown.contains(&format!("\r\x1b[2Kpulling {tag2}: "))
                && shown.contains("layers ready 2/2"),
            "{shown:?}"
        );
    }

    let out = run(image(&d, &["pull", "Bad/UPPER:1"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("invalid image reference \"Bad/UPPER:1\""),
        "{err}"
    );
}
