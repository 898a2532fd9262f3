//! The root filesystem of a container in a pod with its own user namespace
//! (`hostUsers: false`) on the real kernel: the image's layers are idmapped with
//! the pod's mapping, so the image's files show their image owners inside (root's
//! are root's, a file of uid 1000 is 1000's), root writes where root writes in a
//! normal pod, a `USER 1000` image owns what it owned, and every file the container
//! creates lands in its upper layer owned by the mapped host ids (200000 + uid),
//! never by host root. The pod's files, a volume, /dev/termination-log, exec and
//! attach work as in a normal pod. Where the layers cannot be idmapped (here: an
//! image store on ramfs), CreateContainer fails at once with FailedPrecondition
//! and leaves nothing behind.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_integration::client::CriClient;
use berth_integration::fixtures::{create, create_started, exec, pull, run_pod};
use berth_integration::forge::{BuiltImage, Group, ImageBuilder, LayerBuilder, User};
use berth_integration::setup::Node;
use berth_integration::tools;
use berth_proto::v1 as cri;

const APP: &str = "registry.k8s.io/berth-test/userns-app:1";
const APP_USER: &str = "registry.k8s.io/berth-test/userns-app:user";
const ONE_LAYER: &str = "registry.k8s.io/berth-test/userns-one:1";
/// First host id of the pod's mapping (container 0..65535 -> host 200000..265535).
const HOST_BASE: u32 = 200_000;

/// busybox with a user `app` (1000:1000) owning `/home/app.txt` (mode 0600, so only
/// its owner can read it), and a root-owned `/etc/app.conf`; `as_user` makes
/// `USER app` the image's user.
fn app_image(as_user: bool) -> BuiltImage {
    let base = berth_integration::forge::busybox_layer(
        &[User {
            name: "app".into(),
            uid: 1000,
            gid: 1000,
        }],
        &[Group {
            name: "app".into(),
            gid: 1000,
            members: vec![],
        }],
    )
    .expect("busybox layer");
    let mut image = ImageBuilder::new()
        .layer(base)
        .layer(
            LayerBuilder::new()
                .file_owned("home/app.txt", b"mine\n", 0o600, 1000, 1000)
                .file("etc/app.conf", b"from the image\n", 0o644),
        )
        .cmd(["sleep", "3600"]);
    if as_user {
        image = image.user("app");
    }
    image.build().expect("build the app image")
}

/// One layer (an image volume of one layer is a bind, not an overlay) with a file
/// only its owner, 1000, may read.
fn one_layer_image() -> BuiltImage {
    ImageBuilder::new()
        .layer(LayerBuilder::new().file_owned("data/own", b"one layer\n", 0o600, 1000, 1000))
        .build()
        .expect("build the one-layer image")
}

fn mapping() -> cri::UserNamespace {
    let ids = vec![cri::IdMapping {
        host_id: HOST_BASE,
        container_id: 0,
        length: 65536,
    }];
    cri::UserNamespace {
        mode: cri::NamespaceMode::Pod as i32,
        uids: ids.clone(),
        gids: ids,
    }
}

fn namespace_options() -> cri::NamespaceOption {
    cri::NamespaceOption {
        userns_options: Some(mapping()),
        ..Default::default()
    }
}

fn pod_config(name: &str, logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_owned(),
            uid: format!("{name}-uid"),
            namespace: "default".to_owned(),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        log_directory: logs.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container of `image`, in the pod's user namespace as kubelet asks for it.
fn container_config(name: &str, image: &str, mounts: Vec<cri::Mount>) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        mounts,
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespace_options()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn bind(container_path: &str, host_path: &Path) -> cri::Mount {
    cri::Mount {
        container_path: container_path.to_owned(),
        host_path: host_path.display().to_string(),
        ..Default::default()
    }
}

fn image_volume(container_path: &str, image: &str) -> cri::Mount {
    cri::Mount {
        container_path: container_path.to_owned(),
        readonly: true,
        image: Some(cri::ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// ExecSync `sh -c script`: (exit code, stdout, stderr).
async fn sh(client: &mut CriClient, id: &str, script: &str) -> (i32, String, String) {
    exec(client, id, &["sh", "-c", script]).await
}

/// Every path below `dir` (itself included) with its owner.
fn owners_below(dir: &Path) -> Vec<(PathBuf, u32, u32)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir()
            && let Ok(entries) = std::fs::read_dir(&p)
        {
            todo.extend(entries.flatten().map(|e| e.path()));
        }
        out.push((p, m.uid(), m.gid()));
    }
    out
}

fn owner(path: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{} on the host: {e}", path.display()));
    (m.uid(), m.gid())
}

#[tokio::test]
async fn userns_pod_sees_its_image_as_its_own_and_writes_as_mapped_ids() {
    let node = Node::start_bare().await.expect("node");
    node.registry
        .push("berth-test/userns-app", "1", &app_image(false))
        .await
        .expect("push app");
    node.registry
        .push("berth-test/userns-app", "user", &app_image(true))
        .await
        .expect("push app:user");
    node.registry
        .push("berth-test/userns-one", "1", &one_layer_image())
        .await
        .expect("push one");
    let ep = node.daemon.endpoint();
    let containers = node.daemon.root_dir.join("containers");
    let mut c = node.daemon.client().await.expect("client");
    pull(&mut c, APP).await;
    pull(&mut c, APP_USER).await;
    pull(&mut c, ONE_LAYER).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    let vol = dir.path().join("vol");
    std::fs::create_dir(&vol).expect("volume dir");
    // kubelet's termination-log file: host root's, bound at /dev/termination-log.
    let term = dir.path().join("termination-log");
    std::fs::write(&term, "").expect("termination-log");

    let pod = pod_config("usernsfs", &logs);
    let pod_id = run_pod(&mut c, &pod).await;
    let root_id = create_started(
        &mut c,
        &pod_id,
        &pod,
        container_config(
            "root",
            APP,
            vec![
                bind("/vol", &vol),
                bind("/dev/termination-log", &term),
                image_volume("/mnt/app", APP),
                image_volume("/mnt/one", ONE_LAYER),
            ],
        ),
    )
    .await;

    // The image's owners, as the image has them (65534 everywhere without the idmap).
    let (code, out, err) = sh(
        &mut c,
        &root_id,
        "id -u; stat -c '%n %u:%g' / /etc /etc/passwd /bin/busybox /home/app.txt",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out, "0\n/ 0:0\n/etc 0:0\n/etc/passwd 0:0\n/bin/busybox 0:0\n/home/app.txt 1000:1000\n",
        "{err}"
    );

    // Root writes where root writes in any pod: /etc (new and image files), /var, /run.
    let (code, out, err) = sh(
        &mut c,
        &root_id,
        "touch /etc/x && echo changed >> /etc/app.conf && mkdir -p /var/cache/t \
         && echo v > /var/cache/t/f && mkdir -p /run/r && touch /run/r/pid \
         && chown 1000:1000 /run/r/pid && cat /home/app.txt && echo ok",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "mine\nok\n"), "{err}");

    // The pod's files, a volume and the termination log, as in a normal pod.
    let (code, out, err) = sh(
        &mut c,
        &root_id,
        "cat /etc/hostname; grep -c usernsfs-host /etc/hosts; test -s /etc/resolv.conf \
         && echo resolv; echo '10.9.9.9 added' >> /etc/hosts && echo hosts; \
         echo from-ctr > /vol/made && echo vol; \
         echo bye > /dev/termination-log && echo term",
    )
    .await;
    assert_eq!(
        (code, out.as_str()),
        (0, "usernsfs-host\n1\nresolv\nhosts\nvol\nterm\n"),
        "{err}"
    );
    // Image volumes (an overlay of two layers, a bind of one) show the image's
    // owners too, and stay read-only.
    let (code, out, err) = sh(
        &mut c,
        &root_id,
        "stat -c '%n %u:%g' /mnt/app/etc/passwd /mnt/app/home/app.txt /mnt/one/data/own \
         && cat /mnt/app/home/app.txt /mnt/one/data/own; touch /mnt/app/x /mnt/one/x 2>&1",
    )
    .await;
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            "/mnt/app/etc/passwd 0:0\n/mnt/app/home/app.txt 1000:1000\n/mnt/one/data/own 1000:1000\n\
             mine\none layer\ntouch: /mnt/app/x: Read-only file system\n\
             touch: /mnt/one/x: Read-only file system\n"
        ),
        "{err}"
    );
    // Volumes are idmapped: the container's root writes there as host root.
    assert_eq!(owner(&vol.join("made")), (0, 0));
    assert_eq!(std::fs::read_to_string(&term).expect("term"), "bye\n");

    // On the host, the writable layer holds the container's files as mapped ids.
    let upper = containers.join(&root_id).join("upper");
    assert_eq!(owner(&upper), (HOST_BASE, HOST_BASE), "the container's /");
    for f in ["etc/x", "etc/app.conf", "var/cache/t/f", "run/r"] {
        assert_eq!(owner(&upper.join(f)), (HOST_BASE, HOST_BASE), "{f}");
    }
    assert_eq!(
        owner(&upper.join("run/r/pid")),
        (HOST_BASE + 1000, HOST_BASE + 1000)
    );
    let host_owned: Vec<_> = owners_below(&upper)
        .into_iter()
        .filter(|(_, u, g)| *u < HOST_BASE || *g < HOST_BASE)
        .collect();
    assert!(
        host_owned.is_empty(),
        "files in the upper layer owned by host ids: {host_owned:?}"
    );

    // `USER app` (1000) owns what it owned in the image and nothing of root's.
    let user_id = create_started(
        &mut c,
        &pod_id,
        &pod,
        container_config("user", APP_USER, vec![]),
    )
    .await;
    let (code, out, err) = sh(
        &mut c,
        &user_id,
        "id -u; echo more >> /home/app.txt && cat /home/app.txt && touch /tmp/mine && echo ok; \
         touch /etc/y 2>&1",
    )
    .await;
    assert_eq!(code, 1, "{out} {err}");
    assert_eq!(
        out, "1000\nmine\nmore\nok\ntouch: /etc/y: Permission denied\n",
        "{err}"
    );
    let upper = containers.join(&user_id).join("upper");
    assert_eq!(
        owner(&upper.join("home/app.txt")),
        (HOST_BASE + 1000, HOST_BASE + 1000)
    );
    assert_eq!(
        owner(&upper.join("tmp/mine")),
        (HOST_BASE + 1000, HOST_BASE + 1000)
    );

    // Streaming exec and attach, through crictl.
    let out = tools::crictl(&ep, &["exec", &root_id, "cat", "/etc/x", "/etc/app.conf"])
        .await
        .expect("crictl exec")
        .success()
        .unwrap_or_else(|e| panic!("{e}"))
        .stdout();
    assert_eq!(out, "from the image\nchanged\n");
    let mut echo = container_config("echo", APP, vec![]);
    echo.command = vec![
        "sh".into(),
        "-c".into(),
        "while read l; do echo got-$l-$(id -u); done; echo bye".into(),
    ];
    echo.stdin = true;
    echo.stdin_once = true;
    let echo_id = create_started(&mut c, &pod_id, &pod, echo).await;
    let out = tools::crictl_with_stdin(&ep, &["attach", "-i", &echo_id], b"one\ntwo\n")
        .await
        .expect("crictl attach")
        .success()
        .unwrap_or_else(|e| panic!("{e}"))
        .stdout();
    assert_eq!(out, "got-one-0\ngot-two-0\nbye\n");

    c.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("StopPodSandbox");
    c.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await
        .expect("RemovePodSandbox");
    for id in [&root_id, &user_id, &echo_id] {
        assert!(!containers.join(id).exists(), "container {id} left on disk");
    }
}

#[tokio::test]
async fn userns_pod_on_a_store_that_cannot_be_idmapped_is_refused_at_create() {
    let mut node = Node::start_bare().await.expect("node");
    node.registry
        .push("berth-test/userns-app", "1", &app_image(false))
        .await
        .expect("push app");
    // The image store on ramfs, which cannot be idmapped: berthd restarted on it.
    let root = node.daemon.root_dir.clone();
    node.daemon.stop().expect("stop berthd");
    let c_root = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: valid NUL-terminated strings alive across the call; no data argument.
    let rc = unsafe {
        libc::mount(
            c"ramfs".as_ptr(),
            c_root.as_ptr(),
            c"ramfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "mount ramfs: {}", std::io::Error::last_os_error());
    // The daemon's drop unmounts everything below its directory, this ramfs too,
    // after it has stopped berthd (also when the test fails).
    node.daemon
        .restart()
        .await
        .expect("restart berthd on ramfs");
    let mut c = node.daemon.client().await.expect("client");
    pull(&mut c, APP).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let pod = pod_config("usernsramfs", &dir.path().join("logs"));
    let pod_id = run_pod(&mut c, &pod).await;
    let started = std::time::Instant::now();
    let err = create(
        &mut c,
        &pod_id,
        &pod,
        container_config("refused", APP, vec![]),
    )
    .await
    .expect_err("a container whose rootfs cannot be idmapped must be refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(
        err.message().contains("idmapped view of the image"),
        "{}",
        err.message()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "refused only after {:?}",
        started.elapsed()
    );
    // Nothing half-made: no container, no directory, no mount under the store.
    let listed = c
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert!(listed.is_empty(), "{listed:?}");
    let left: Vec<_> = std::fs::read_dir(root.join("containers"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "container dirs left: {left:?}");
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(&root) && Path::new(m) != root)
        .map(str::to_owned)
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
}
