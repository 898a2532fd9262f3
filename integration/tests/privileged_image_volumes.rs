//! Image volumes (CRI `Mount.image`, KEP-4639) on the real kernel: a container sees
//! the files of another image, pulled from the local registry, read-only at the
//! mount path (a multi-layer image as an overlay, a one-layer image as a bind, an
//! `image_sub_path`), `ContainerStatus` reports the image it mounted, the image's
//! layers stay leased while the container uses them, and removing the container (or
//! a failed create) leaves no mount and no lease behind, also across a restart.

use std::path::{Path, PathBuf};

use berth_integration::client::CriClient;
use berth_integration::fixtures::{
    self, BUSYBOX, create, exec_output, pod_config, pull, remove_pod, run_pod, start,
};
use berth_integration::forge::{BuiltImage, ImageBuilder, LayerBuilder};
use berth_integration::setup::Node;
use berth_proto::v1 as cri;
const MULTI: &str = "registry.k8s.io/berth-test/volume-multi:1";
const SINGLE: &str = "registry.k8s.io/berth-test/volume-single:1";

/// Two layers: the second adds a file and replaces one of the first.
fn multi_layer_image() -> BuiltImage {
    ImageBuilder::new()
        .files(&[
            ("data/hello.txt", b"hello from the first layer\n", 0o644),
            ("data/replaced.txt", b"old\n", 0o644),
        ])
        .layer(
            LayerBuilder::new()
                .file("data/second.txt", b"second layer\n", 0o644)
                .file("data/replaced.txt", b"new\n", 0o644)
                .dir("etc/conf.d", 0o755)
                .file("etc/conf.d/app.conf", b"key=value\n", 0o644),
        )
        .build()
        .expect("build multi-layer image")
}

/// One layer, so berthd binds it instead of making an overlay.
fn single_layer_image() -> BuiltImage {
    ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .file("single/marker", b"single layer marker\n", 0o644)
                .file(
                    "single/run.sh",
                    b"#!/bin/sh\necho ran from the volume\n",
                    0o755,
                )
                .symlink("link", "/single"),
        )
        .build()
        .expect("build single-layer image")
}

fn image_mount(path: &str, image: &str, sub_path: &str, readonly: bool) -> cri::Mount {
    cri::Mount {
        container_path: path.to_owned(),
        readonly,
        image: Some(cri::ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        image_sub_path: sub_path.to_owned(),
        ..Default::default()
    }
}

/// A busybox container sleeping with `mounts`.
fn container_config(name: &str, mounts: Vec<cri::Mount>) -> cri::ContainerConfig {
    cri::ContainerConfig {
        mounts,
        ..fixtures::container_config(name, BUSYBOX, &["sleep", "3600"])
    }
}

async fn remove(client: &mut CriClient, id: &str) {
    client
        .runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.to_owned(),
        })
        .await
        .expect("RemoveContainer");
}

/// Mount points on the host below `dir`.
fn host_mounts_below(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// The image-store lease files whose holder starts with `prefix`.
fn leases(root: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("images/leases"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn image_volumes_mount_read_only_and_leave_nothing_behind() {
    let mut node = Node::start().await.expect("node");
    node.registry
        .push("berth-test/volume-multi", "1", &multi_layer_image())
        .await
        .expect("push multi");
    node.registry
        .push("berth-test/volume-single", "1", &single_layer_image())
        .await
        .expect("push single");
    let root = node.daemon.root_dir.clone();
    let containers = root.join("containers");
    let mut c = node.daemon.client().await.expect("client");
    pull(&mut c, BUSYBOX).await;
    let multi_id = pull(&mut c, MULTI).await;
    let single_id = pull(&mut c, SINGLE).await;

    let logs = tempfile::tempdir().expect("log dir");
    let pod = pod_config("imgvol", logs.path());
    let pod_id = run_pod(&mut c, &pod).await;

    // kubelet passes the id PullImage returned; a tag works as well.
    let id = create(
        &mut c,
        &pod_id,
        &pod,
        container_config(
            "reader",
            vec![
                image_mount("/mnt/multi", &multi_id, "", true),
                image_mount("/mnt/single", SINGLE, "", true),
                image_mount("/mnt/conf", MULTI, "etc/conf.d", true),
                image_mount("/mnt/linked", SINGLE, "link", true),
            ],
        ),
    )
    .await
    .expect("CreateContainer with image volumes");
    start(&mut c, &id).await.expect("StartContainer");

    // The merged view of both layers, the upper one winning.
    let r = exec_output(
        &mut c,
        &id,
        &[
            "cat",
            "/mnt/multi/data/hello.txt",
            "/mnt/multi/data/second.txt",
            "/mnt/multi/data/replaced.txt",
        ],
    )
    .await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "hello from the first layer\nsecond layer\nnew\n"),
        "{}",
        r.stderr
    );
    let r = exec_output(&mut c, &id, &["cat", "/mnt/single/single/marker"]).await;
    assert_eq!(r.stdout, "single layer marker\n", "{}", r.stderr);
    // image_sub_path mounts that directory only; a symlink resolves in the image.
    let r = exec_output(&mut c, &id, &["ls", "/mnt/conf"]).await;
    assert_eq!(r.stdout.trim(), "app.conf", "{}", r.stderr);
    let r = exec_output(&mut c, &id, &["cat", "/mnt/linked/marker"]).await;
    assert_eq!(r.stdout, "single layer marker\n", "{}", r.stderr);
    // Executables in the volume run (no noexec).
    let r = exec_output(&mut c, &id, &["/mnt/single/single/run.sh"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "ran from the volume\n"),
        "{}",
        r.stderr
    );
    // Read-only, however written to.
    for target in [
        "/mnt/multi/new",
        "/mnt/multi/data/hello.txt",
        "/mnt/single/new",
        "/mnt/conf/app.conf",
    ] {
        let r = exec_output(&mut c, &id, &["sh", "-c", &format!("echo x >> {target}")]).await;
        assert_ne!(r.code, 0, "writing {target} must fail");
        assert!(
            r.stderr.contains("Read-only file system"),
            "writing {target}: {}",
            r.stderr
        );
    }

    // ContainerStatus echoes each image mount with the image it resolved to.
    let status = fixtures::container_status(&mut c, &id).await;
    let mounts: Vec<(String, String, String, String, bool)> = status
        .mounts
        .iter()
        .map(|m| {
            let image = m.image.clone().unwrap_or_default();
            (
                m.container_path.clone(),
                image.image,
                image.image_ref,
                m.image_sub_path.clone(),
                m.readonly,
            )
        })
        .collect();
    assert_eq!(
        mounts,
        [
            (
                "/mnt/multi".into(),
                multi_id.clone(),
                multi_id.clone(),
                String::new(),
                true
            ),
            (
                "/mnt/single".into(),
                SINGLE.into(),
                single_id.clone(),
                String::new(),
                true
            ),
            (
                "/mnt/conf".into(),
                MULTI.into(),
                multi_id.clone(),
                "etc/conf.d".into(),
                true
            ),
            (
                "/mnt/linked".into(),
                SINGLE.into(),
                single_id.clone(),
                "link".into(),
                true
            ),
        ]
    );

    // On the host: one read-only mount per volume under the container's dir, and
    // one lease per volume.
    let ctr_dir = containers.join(&id);
    let vol_mounts = host_mounts_below(&ctr_dir.join("image-volumes"));
    assert_eq!(vol_mounts.len(), 4, "{vol_mounts:?}");
    assert_eq!(
        leases(&root, &format!("{id}.vol")),
        (0..4)
            .map(|i| format!("{id}.vol{i}.json"))
            .collect::<Vec<_>>()
    );

    // Removing an image a volume uses succeeds, as with containerd (kubelet keeps
    // images in use); the leased layers stay, so the volume keeps its content.
    c.image
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: MULTI.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("RemoveImage of a volume's image");
    let r = exec_output(&mut c, &id, &["cat", "/mnt/multi/data/second.txt"]).await;
    assert_eq!(r.stdout, "second layer\n", "{}", r.stderr);

    // The volumes survive a restart of berthd: still mounted, still leased.
    node.daemon.restart().await.expect("restart");
    let mut c = node.daemon.client().await.expect("client");
    assert_eq!(
        host_mounts_below(&ctr_dir.join("image-volumes")).len(),
        4,
        "a restart must not drop image volume mounts"
    );
    let r = exec_output(&mut c, &id, &["cat", "/mnt/conf/app.conf"]).await;
    assert_eq!(r.stdout, "key=value\n", "{}", r.stderr);

    remove(&mut c, &id).await;
    assert!(
        host_mounts_below(&ctr_dir).is_empty(),
        "mounts left after RemoveContainer: {:?}",
        host_mounts_below(&ctr_dir)
    );
    assert!(!ctr_dir.exists(), "container dir left behind");
    assert!(
        leases(&root, &id).is_empty(),
        "leases left after RemoveContainer: {:?}",
        leases(&root, &id)
    );

    // Refusals: each names what is wrong, and a refused create leaves nothing.
    let before: Vec<PathBuf> = host_mounts_below(&containers);
    let absent = "registry.k8s.io/berth-test/never-pulled:1";
    let e = create(
        &mut c,
        &pod_id,
        &pod,
        container_config("absent", vec![image_mount("/mnt/a", absent, "", true)]),
    )
    .await
    .expect_err("an image that was never pulled");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    assert!(
        e.message().contains(absent) && e.message().contains("/mnt/a"),
        "{e}"
    );

    let e = create(
        &mut c,
        &pod_id,
        &pod,
        container_config("rw", vec![image_mount("/mnt/a", SINGLE, "", false)]),
    )
    .await
    .expect_err("a writable image volume");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("read-only"), "{e}");

    let e = create(
        &mut c,
        &pod_id,
        &pod,
        container_config(
            "nosub",
            vec![
                image_mount("/mnt/ok", SINGLE, "", true),
                image_mount("/mnt/a", SINGLE, "not-existing", true),
            ],
        ),
    )
    .await
    .expect_err("a sub path the image lacks");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("not-existing"), "{e}");

    let e = create(
        &mut c,
        &pod_id,
        &pod,
        container_config(
            "filesub",
            vec![image_mount("/mnt/a", SINGLE, "single/marker", true)],
        ),
    )
    .await
    .expect_err("a sub path that is a file");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("not a directory"), "{e}");

    assert_eq!(
        host_mounts_below(&containers),
        before,
        "a failed create leaked a mount"
    );
    let left: Vec<String> = leases(&root, "")
        .into_iter()
        .filter(|l| l.contains(".vol"))
        .collect();
    assert!(left.is_empty(), "a failed create leaked a lease: {left:?}");

    remove_pod(&mut c, &pod_id).await;
}
