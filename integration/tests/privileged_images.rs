//! Image pulls against a real registry (Debian's docker-registry on 127.0.0.1) with
//! images built by the forge: auth, mirrors, compression, whiteouts on a real
//! overlay mount, malicious layers, corrupted blobs, shared downloads and GC.
//! Privileged: unpacking keeps ownership and creates whiteout device nodes, and one
//! test mounts overlayfs.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_image::{Auth, ErrorKind, ImageStore, RegistryHosts, StoreError, StoreOptions};
use berth_integration::fixtures::BUSYBOX;
use berth_integration::forge::{
    Compression, Group, ImageBuilder, LayerBuilder, User, busybox_layer, critest_images,
};
use berth_integration::registry::{CRITEST_HOSTS, TestRegistry, free_port};

fn open_store(root: &Path, hosts_dir: Option<PathBuf>) -> ImageStore {
    ImageStore::open(
        root,
        StoreOptions {
            hosts: RegistryHosts::new(hosts_dir),
            stall_timeout: Duration::from_secs(10),
            ..StoreOptions::default()
        },
    )
    .expect("open store")
}

fn write_hosts(dir: &Path, host: &str, text: &str) {
    std::fs::create_dir_all(dir.join(host)).unwrap();
    std::fs::write(dir.join(host).join("hosts.toml"), text).unwrap();
}

/// Every entry under `root`, relative, sorted (to prove nothing half-done is left).
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            out.push(e.path().strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn busybox_image_pulls_with_exact_names_users_and_hard_linked_applets() {
    let reg = TestRegistry::start().expect("registry");
    let users = [User {
        name: "default-user".into(),
        uid: 1000,
        gid: 50000,
    }];
    let image = ImageBuilder::new()
        .layer(
            busybox_layer(
                &users,
                &[Group {
                    name: "predefined".into(),
                    gid: 50000,
                    members: vec!["default-user".into()],
                }],
            )
            .unwrap(),
        )
        .layer(LayerBuilder::new().file_owned(
            "/home/default-user/note",
            "mine\n",
            0o600,
            1000,
            50000,
        ))
        .user("1003:1004")
        .cmd(["sh"])
        .build()
        .unwrap();
    reg.push("e2e-test-images/busybox", "1.29-2", &image)
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path(), None);
    let name = format!("{}/e2e-test-images/busybox:1.29-2", reg.host());
    let pulled = store.pull(&name, &Auth::anonymous()).await.expect("pull");

    assert_eq!(pulled.id.as_str(), image.id());
    assert_eq!(pulled.repo_tags, std::slice::from_ref(&name));
    assert_eq!(
        pulled.repo_digests,
        [format!(
            "{}/e2e-test-images/busybox@{}",
            reg.host(),
            image.manifest_digest
        )]
    );
    assert_eq!(pulled.uid(), Some(1003));
    assert_eq!(pulled.username(), "");
    assert_eq!(pulled.config.cmd.as_deref(), Some(&["sh".to_owned()][..]));

    // By id, tag and digest: the same record.
    let by_id = store.status(pulled.id.as_str()).unwrap().unwrap();
    let by_digest = store.status(&pulled.repo_digests[0]).unwrap().unwrap();
    assert_eq!(by_id, pulled);
    assert_eq!(by_digest, pulled);

    let dirs = store.snapshot_dirs(&pulled);
    assert_eq!(dirs.len(), 2);
    let base = &dirs[1];
    let bb = std::fs::metadata(base.join("bin/busybox")).unwrap();
    let ls = std::fs::symlink_metadata(base.join("bin/ls")).unwrap();
    assert!(
        ls.file_type().is_file(),
        "/bin/ls must be a hard link, not a symlink"
    );
    assert_eq!(bb.ino(), ls.ino());
    assert_eq!(bb.mode() & 0o7777, 0o755);
    assert_eq!(
        std::fs::metadata(base.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    let passwd = std::fs::read_to_string(base.join("etc/passwd")).unwrap();
    assert!(passwd.contains("default-user:x:1000:50000:"), "{passwd}");
    assert!(
        std::fs::read_to_string(base.join("etc/group"))
            .unwrap()
            .contains("predefined:x:50000:")
    );
    let note = std::fs::metadata(dirs[0].join("home/default-user/note")).unwrap();
    assert_eq!(
        (note.uid(), note.gid(), note.mode() & 0o777),
        (1000, 50000, 0o600)
    );

    // A second pull is a no-op that returns the same image; the record survives a
    // reopen.
    let again = store.pull(&name, &Auth::anonymous()).await.unwrap();
    assert_eq!(again, pulled);
    drop(store);
    let store = open_store(tmp.path(), None);
    assert_eq!(store.status(&name).unwrap().unwrap(), pulled);
    assert_eq!(store.list().len(), 1);
}

#[tokio::test]
async fn pull_by_digest_records_only_the_digest() {
    let reg = TestRegistry::start().expect("registry");
    let image = ImageBuilder::new()
        .files(&[("/test-image-digest", b"digest\n", 0o644)])
        .build()
        .unwrap();
    reg.push("k8s-staging-cri-tools/test-image-digest", "x", &image)
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path(), None);
    let name = format!(
        "{}/k8s-staging-cri-tools/test-image-digest@{}",
        reg.host(),
        image.manifest_digest
    );
    let pulled = store.pull(&name, &Auth::anonymous()).await.unwrap();
    assert!(pulled.repo_tags.is_empty());
    assert_eq!(pulled.repo_digests, std::slice::from_ref(&name));
    assert_eq!(store.status(&name).unwrap().unwrap(), pulled);

    // A digest the registry does not have is NotFound naming the endpoint.
    let missing = format!(
        "{}/k8s-staging-cri-tools/test-image-digest@sha256:{}",
        reg.host(),
        "0".repeat(64)
    );
    let err = store.pull(&missing, &Auth::anonymous()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains(&reg.url()), "{err}");
}

#[tokio::test]
async fn htpasswd_registry_needs_the_right_credentials() {
    let reg = TestRegistry::start_with_auth("tester", "s3cret").expect("registry");
    let image = ImageBuilder::new()
        .files(&[("/a", b"a", 0o644)])
        .build()
        .unwrap();
    reg.push("private/app", "1", &image).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path(), None);
    let name = format!("{}/private/app:1", reg.host());

    let err = store.pull(&name, &Auth::anonymous()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let err = store
        .pull(&name, &Auth::basic("tester", "wrong"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "secrets must not leak: {err}"
    );
    assert!(store.list().is_empty());

    let pulled = store
        .pull(&name, &Auth::basic("tester", "s3cret"))
        .await
        .unwrap();
    assert_eq!(pulled.id.as_str(), image.id());
    // CRI's `auth` field: base64 of user:password.
    store.remove(&name).await.unwrap();
    let auth = Auth {
        auth: "dGVzdGVyOnMzY3JldA==".into(),
        ..Auth::default()
    };
    store.pull(&name, &auth).await.unwrap();
}

#[tokio::test]
async fn mirrors_are_tried_in_order_and_fall_back() {
    let reg = TestRegistry::start().expect("registry");
    let image = ImageBuilder::new()
        .files(&[("/pause", b"pause", 0o755)])
        .build()
        .unwrap();
    // Stored under the upstream's repository path, as a mirror of registry.k8s.io.
    reg.push("pause", "3.9", &image).await.unwrap();
    let dead = format!("127.0.0.1:{}", free_port().unwrap());
    let hosts = tempfile::tempdir().unwrap();
    // registry.k8s.io: a dead mirror first, then the real registry as a mirror; the
    // "upstream" is also dead so this test can never reach the internet.
    write_hosts(
        hosts.path(),
        "registry.k8s.io",
        &format!(
            "server = \"http://{dead}\"\n\
             [host.\"http://{dead}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
             [host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            reg.url()
        ),
    );
    // The registry's own host: a dead mirror, then its server (the real registry).
    write_hosts(
        hosts.path(),
        &reg.host(),
        &format!("[host.\"http://{dead}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    );
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path(), Some(hosts.path().to_owned()));

    let pulled = store
        .pull("registry.k8s.io/pause:3.9", &Auth::anonymous())
        .await
        .expect("pull through the second mirror");
    assert_eq!(pulled.repo_tags, ["registry.k8s.io/pause:3.9"]);
    assert_eq!(
        pulled.repo_digests,
        [format!("registry.k8s.io/pause@{}", image.manifest_digest)]
    );

    store.remove(pulled.id.as_str()).await.unwrap();
    let direct = format!("{}/pause:3.9", reg.host());
    let pulled = store
        .pull(&direct, &Auth::anonymous())
        .await
        .expect("fallback to upstream");
    assert_eq!(pulled.repo_tags, [direct]);

    // Unknown tag: NotFound naming every endpoint tried.
    let err = store
        .pull("registry.k8s.io/pause:0.0", &Auth::anonymous())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("http://{dead}/v2")), "{text}");
    assert!(text.contains(&format!("{}/v2", reg.url())), "{text}");

    // Nothing reachable at all: Unavailable.
    let err = store
        .pull(&format!("{dead}/pause:3.9"), &Auth::anonymous())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}

#[tokio::test]
async fn zstd_uncompressed_docker_and_index_images_pull() {
    let reg = TestRegistry::start().expect("registry");
    let zstd_layer =
        LayerBuilder::new()
            .compression(Compression::Zstd)
            .file("/z/zstd.txt", "zstd\n", 0o644);
    let raw_layer = LayerBuilder::new()
        .compression(Compression::None)
        .file("/z/raw.txt", "raw\n", 0o644)
        .symlink("/z/link", "raw.txt");
    let oci = ImageBuilder::new()
        .layer(LayerBuilder::new().file("/z/gzip.txt", "gzip\n", 0o644))
        .layer(zstd_layer)
        .layer(raw_layer)
        .with_index()
        .build()
        .unwrap();
    reg.push("multi/oci", "1", &oci).await.unwrap();
    let docker = ImageBuilder::new()
        .files(&[("/docker.txt", b"docker\n", 0o644)])
        .docker_media_types()
        .build()
        .unwrap();
    reg.push("multi/docker", "1", &docker).await.unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path(), None);
    let pulled = store
        .pull(&format!("{}/multi/oci:1", reg.host()), &Auth::anonymous())
        .await
        .unwrap();
    // The index's digest is the repo digest; the host platform's manifest is used.
    assert_eq!(
        pulled.repo_digests,
        [format!("{}/multi/oci@{}", reg.host(), oci.top_digest())]
    );
    assert_eq!(pulled.manifest_digest.as_str(), oci.manifest_digest);
    let dirs = store.snapshot_dirs(&pulled);
    assert_eq!(
        std::fs::read_to_string(dirs[2].join("z/gzip.txt")).unwrap(),
        "gzip\n"
    );
    assert_eq!(
        std::fs::read_to_string(dirs[1].join("z/zstd.txt")).unwrap(),
        "zstd\n"
    );
    assert_eq!(
        std::fs::read_to_string(dirs[0].join("z/raw.txt")).unwrap(),
        "raw\n"
    );
    assert_eq!(
        std::fs::read_link(dirs[0].join("z/link")).unwrap(),
        PathBuf::from("raw.txt")
    );
    let pulled = store
        .pull(
            &format!("{}/multi/docker:1", reg.host()),
            &Auth::anonymous(),
        )
        .await
        .unwrap();
    assert_eq!(pulled.id.as_str(), docker.id());
}

/// Unmounts on drop, also when the test fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn whiteouts_hide_lower_files_on_a_real_overlay_mount() {
    let reg = TestRegistry::start().expect("registry");
    let image = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .file("/etc/gone", "x", 0o644)
                .file("/etc/kept", "k", 0o644)
                .file("/var/cache/old", "o", 0o644)
                .char_device("/dev/null", 1, 3),
        )
        .layer(
            LayerBuilder::new()
                .whiteout("/etc/gone")
                .opaque("/var/cache")
                .file("/var/cache/new", "n", 0o644),
        )
        .build()
        .unwrap();
    reg.push("wh/test", "1", &image).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("store"), None);
    let pulled = store
        .pull(&format!("{}/wh/test:1", reg.host()), &Auth::anonymous())
        .await
        .unwrap();
    let dirs = store.snapshot_dirs(&pulled);
    let top = &dirs[0];
    let wh = std::fs::symlink_metadata(top.join("etc/gone")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!top.join("etc/.wh.gone").exists());
    let opaque = Command::new("getfattr")
        .args(["--only-values", "-n", "trusted.overlay.opaque"])
        .arg(top.join("var/cache"))
        .output();
    if let Ok(out) = opaque {
        // getfattr (attr package) is optional; the overlay check below is the judge.
        if out.status.success() {
            assert_eq!(out.stdout, b"y");
        }
    }
    let null = std::fs::symlink_metadata(dirs[1].join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));

    let merged = tmp.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    let lower = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("lowerdir={lower}"))
        .arg(&merged)
        .status()
        .unwrap();
    assert!(status.success(), "mounting the overlay failed");
    let _guard = Mounted(merged.clone());
    assert!(!merged.join("etc/gone").exists());
    assert!(merged.join("etc/kept").exists());
    assert!(!merged.join("var/cache/old").exists());
    assert_eq!(
        std::fs::read_to_string(merged.join("var/cache/new")).unwrap(),
        "n"
    );
}

#[tokio::test]
async fn malicious_layers_are_rejected_and_leave_nothing() {
    let reg = TestRegistry::start().expect("registry");
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("escaped");
    let depth = "../".repeat(12);
    let evil_name = format!(
        "{depth}{}",
        target.display().to_string().trim_start_matches('/')
    );
    let escape = ImageBuilder::new()
        .layer(LayerBuilder::new().raw_name(evil_name.as_bytes(), "pwned"))
        .build()
        .unwrap();
    reg.push("evil/escape", "1", &escape).await.unwrap();
    let hardlink = ImageBuilder::new()
        .layer(LayerBuilder::new().raw_hardlink("shadow", b"../../../../../../etc/shadow"))
        .build()
        .unwrap();
    reg.push("evil/hardlink", "1", &hardlink).await.unwrap();
    let symlink = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .symlink("/escape", &outside.path().display().to_string())
                .file("/escape/through-link", "pwned", 0o644),
        )
        .build()
        .unwrap();
    reg.push("evil/symlink", "1", &symlink).await.unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path(), None);
    for repo in ["evil/escape", "evil/hardlink", "evil/symlink"] {
        let err = store
            .pull(&format!("{}/{repo}:1", reg.host()), &Auth::anonymous())
            .await
            .expect_err(repo);
        assert!(matches!(err, StoreError::Unpack { .. }), "{repo}: {err}");
    }
    assert!(!target.exists());
    assert!(!outside.path().join("through-link").exists());
    assert!(store.list().is_empty());
    let snapshots = tree(&tmp.path().join("snapshots"));
    assert!(snapshots.is_empty(), "{snapshots:?}");
    assert!(tree(&tmp.path().join("ingest")).is_empty());
}

#[tokio::test]
async fn a_blob_with_the_wrong_digest_is_rejected_and_not_stored() {
    let reg = TestRegistry::start().expect("registry");
    let image = ImageBuilder::new()
        .files(&[("/data", &[7u8; 4096], 0o644)])
        .build()
        .unwrap();
    reg.push("corrupt/app", "1", &image).await.unwrap();
    // Flip the registry's stored copy of the layer (same length).
    let layer = &image.layers[0];
    let hex = layer.digest.trim_start_matches("sha256:");
    let data = reg
        .storage()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path(), None);
    let err = store
        .pull(&format!("{}/corrupt/app:1", reg.host()), &Auth::anonymous())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&layer.digest), "{err}");
    assert!(!tmp.path().join("blobs/sha256").join(hex).exists());
    assert!(tree(&tmp.path().join("ingest")).is_empty());
    assert!(tree(&tmp.path().join("snapshots")).is_empty());
    assert!(store.list().is_empty());
}

#[tokio::test]
async fn concurrent_pulls_share_work_and_gc_keeps_shared_snapshots() {
    let reg = TestRegistry::start().expect("registry");
    let base = LayerBuilder::new().file("/big", vec![5u8; 3 << 20], 0o644);
    let one = ImageBuilder::new()
        .layer(base.clone())
        .files(&[("/one", b"1", 0o644)])
        .build()
        .unwrap();
    let two = ImageBuilder::new()
        .layer(base)
        .files(&[("/two", b"2", 0o644)])
        .build()
        .unwrap();
    reg.push("shared/img", "one", &one).await.unwrap();
    reg.push("shared/img", "two", &two).await.unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path(), None);
    let a = format!("{}/shared/img:one", reg.host());
    let b = format!("{}/shared/img:two", reg.host());
    let anon = Auth::anonymous();
    let (r1, r2, r3) = tokio::join!(
        store.pull(&a, &anon),
        store.pull(&a, &anon),
        store.pull(&b, &anon),
    );
    let (i1, i2, i3) = (r1.unwrap(), r2.unwrap(), r3.unwrap());
    assert_eq!(i1, i2);
    assert_eq!(i1.layers[0].chain_id, i3.layers[0].chain_id);
    assert_eq!(store.snapshot_dirs(&i1)[1], store.snapshot_dirs(&i3)[1]);
    // Three snapshots: the shared base and one per image.
    assert_eq!(
        std::fs::read_dir(tmp.path().join("snapshots"))
            .unwrap()
            .count(),
        3
    );

    let shared = store.snapshot_dirs(&i1)[1].clone();
    let only_one = store.snapshot_dirs(&i1)[0].clone();
    store.remove(&a).await.unwrap().expect("removed");
    assert!(
        shared.exists(),
        "a snapshot still used by another image must stay"
    );
    assert!(!only_one.exists());
    // Removing by id removes every tag.
    store
        .remove(i3.id.as_str())
        .await
        .unwrap()
        .expect("removed");
    assert!(store.status(&b).unwrap().is_none());
    assert!(!shared.exists());
    assert!(store.remove(i3.id.as_str()).await.unwrap().is_none());
    assert_eq!(tree(&tmp.path().join("blobs/sha256")), Vec::<String>::new());
}

#[tokio::test]
async fn a_registry_that_stops_sending_is_abandoned_after_the_stall_timeout() {
    // A listener that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(
        tmp.path(),
        StoreOptions {
            hosts: RegistryHosts::new(None),
            stall_timeout: Duration::from_secs(1),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        store.pull(&format!("{host}/slow/app:1"), &Auth::anonymous()),
    )
    .await
    .expect("the stall timeout must end the pull")
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("no data"), "{err}");
    drop(listener);
}

/// Bytes gzip cannot shrink, so the download takes a measurable time.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test]
async fn a_cancelled_pull_leaves_no_image_and_a_retry_succeeds() {
    let reg = TestRegistry::start().expect("registry");
    let image = ImageBuilder::new()
        .layer(LayerBuilder::new().file("/a", noise(24 << 20, 1), 0o644))
        .layer(LayerBuilder::new().file("/b", noise(24 << 20, 2), 0o644))
        .build()
        .unwrap();
    reg.push("big/app", "1", &image).await.unwrap();
    let name = format!("{}/big/app:1", reg.host());
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path(), None);
    let mut cancelled = 0;
    for ms in [1, 10, 50, 150] {
        match tokio::time::timeout(
            Duration::from_millis(ms),
            store.pull(&name, &Auth::anonymous()),
        )
        .await
        {
            Err(_) => {
                cancelled += 1;
                assert!(store.list().is_empty(), "cancelled after {ms} ms");
                assert!(store.status(&name).unwrap().is_none());
                // Aborted download tasks are dropped by the runtime right after;
                // their partial files must go with them.
                let ingest = tmp.path().join("ingest");
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while !tree(&ingest).is_empty() && std::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert!(
                    tree(&ingest).is_empty(),
                    "a cancelled download must remove its partial file"
                );
            }
            Ok(r) => {
                r.expect("pull");
                store.remove(&name).await.unwrap();
            }
        }
    }
    assert!(
        cancelled > 0,
        "no pull was cancelled; the image is too small"
    );
    let pulled = store.pull(&name, &Auth::anonymous()).await.expect("retry");
    assert_eq!(pulled.id.as_str(), image.id());
    for dir in store.snapshot_dirs(&pulled) {
        assert!(dir.is_dir());
    }
    assert!(tree(&tmp.path().join("ingest")).is_empty());
}

#[tokio::test]
async fn critest_images_pull_through_mirrors_under_their_upstream_names() {
    let reg = TestRegistry::start().expect("registry");
    let images = critest_images().unwrap();
    reg.push_all(&images).await.unwrap();
    let hosts = tempfile::tempdir().unwrap();
    reg.write_mirror_hosts(hosts.path(), CRITEST_HOSTS).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path(), Some(hosts.path().to_owned()));
    let anon = Auth::anonymous();
    for p in &images {
        for tag in &p.tags {
            let name = format!("{}:{tag}", p.upstream);
            let img = store.pull(&name, &anon).await.expect(&name);
            assert_eq!(img.id.as_str(), p.image.id(), "{name}");
            assert!(img.repo_tags.contains(&name), "{name}: {:?}", img.repo_tags);
        }
    }
    let staging = "gcr.io/k8s-staging-cri-tools";
    let id = |n: &str| store.status(&format!("{staging}/{n}")).unwrap().unwrap().id;
    // One image, three tags; three tags, three images.
    assert_eq!(id("test-image-tags:1"), id("test-image-tags:3"));
    assert_eq!(
        store
            .status(&format!("{staging}/test-image-tags:2"))
            .unwrap()
            .unwrap()
            .repo_tags
            .len(),
        3
    );
    assert_ne!(id("test-image-1"), id("test-image-2"));
    assert_ne!(id("test-image-2"), id("test-image-3"));
    let user = |n: &str| store.status(&format!("{staging}/{n}")).unwrap().unwrap();
    assert_eq!(user("test-image-user-uid").uid(), Some(1002));
    assert_eq!(user("test-image-user-uid-group").uid(), Some(1003));
    assert_eq!(user("test-image-user-username").username(), "www-data");
    assert_eq!(
        user("test-image-user-username-group").username(),
        "www-data"
    );
    // pause:3.9 from both registries is one image with both names; removing it by
    // one name removes both.
    let pause = store.status("registry.k8s.io/pause:3.9").unwrap().unwrap();
    assert_eq!(
        pause.repo_tags,
        ["registry.k8s.io/pause:3.9", "k8s.gcr.io/pause:3.9"]
    );
    store.remove("k8s.gcr.io/pause:3.9").await.unwrap();
    assert!(store.status("registry.k8s.io/pause:3.9").unwrap().is_none());
    // Every busybox-based image shares the base layer's single snapshot.
    let bases: std::collections::HashSet<_> = store
        .list()
        .iter()
        .map(|i| i.layers[0].chain_id.clone())
        .collect();
    assert_eq!(bases.len(), 1);
}

/// A berthd whose `[registry]` points the critest registries at `reg`.
async fn daemon_with_mirrors(reg: &TestRegistry, hosts: &Path) -> berth_integration::TestDaemon {
    reg.write_mirror_hosts(hosts, CRITEST_HOSTS).unwrap();
    berth_integration::TestDaemon::start_with(berth_integration::DaemonOptions {
        extra_config: format!(
            "[registry]\nconfig_path = {:?}\nstall_timeout_secs = 20\n",
            hosts.display().to_string()
        ),
        ..berth_integration::DaemonOptions::default()
    })
    .await
    .expect("start berthd")
}

#[tokio::test]
async fn crictl_pull_images_inspecti_rmi_and_imagefsinfo_through_a_mirror() {
    use berth_integration::tools::crictl;
    let reg = TestRegistry::start().expect("registry");
    let images = critest_images().unwrap();
    reg.push_all(&images).await.unwrap();
    let hosts = tempfile::tempdir().unwrap();
    let d = daemon_with_mirrors(&reg, hosts.path()).await;
    let ep = d.endpoint();
    let name = BUSYBOX;

    let out = crictl(&ep, &["pull", name])
        .await
        .unwrap()
        .success()
        .unwrap();
    let busybox = &images[0].image;
    assert!(out.stdout().contains(busybox.id()), "{}", out.stdout());

    let out = crictl(&ep, &["images", "-o", "json"])
        .await
        .unwrap()
        .success()
        .unwrap();
    let list: serde_json::Value = serde_json::from_str(&out.stdout()).unwrap();
    let listed = list["images"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{list}");
    assert_eq!(listed[0]["repoTags"][0], name);
    assert_eq!(listed[0]["id"], busybox.id());

    let uid_image = "gcr.io/k8s-staging-cri-tools/test-image-user-uid-group:latest";
    crictl(&ep, &["pull", uid_image])
        .await
        .unwrap()
        .success()
        .unwrap();
    let out = crictl(&ep, &["inspecti", "-o", "json", uid_image])
        .await
        .unwrap()
        .success()
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&out.stdout()).unwrap();
    assert_eq!(status["status"]["uid"]["value"], "1003", "{status}");
    assert_eq!(status["status"]["repoTags"][0], uid_image);

    let out = crictl(&ep, &["imagefsinfo", "-o", "json"])
        .await
        .unwrap()
        .success()
        .unwrap();
    let fs: serde_json::Value = serde_json::from_str(&out.stdout()).unwrap();
    let used: u64 = fs["status"]["imageFilesystems"][0]["usedBytes"]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        used > 1_000_000,
        "two busybox images use more than 1 MB: {fs}"
    );

    crictl(&ep, &["rmi", name])
        .await
        .unwrap()
        .success()
        .unwrap();
    let out = crictl(&ep, &["inspecti", name]).await.unwrap();
    assert!(!out.output.status.success(), "{}", out.stdout());

    // Bad input gets clear errors.
    let out = crictl(&ep, &["pull", "registry.k8s.io/e2e-test-images/missing:1"])
        .await
        .unwrap();
    assert!(!out.output.status.success());
    let err = out.stderr();
    assert!(
        err.contains("NotFound") && err.contains(&reg.url()),
        "{err}"
    );
    let out = crictl(&ep, &["pull", "Bad:Ref"]).await.unwrap();
    assert!(!out.output.status.success());
    assert!(out.stderr().contains("InvalidArgument"), "{}", out.stderr());
}

#[tokio::test]
async fn critest_image_specs_pass_through_mirrors() {
    let reg = TestRegistry::start().expect("registry");
    reg.push_all(&critest_images().unwrap()).await.unwrap();
    let hosts = tempfile::tempdir().unwrap();
    let d = daemon_with_mirrors(&reg, hosts.path()).await;
    let critest = berth_integration::tools::tool("critest").unwrap();
    let ep = d.endpoint();
    let out = berth_integration::tools::run(
        critest.as_os_str(),
        [
            "--runtime-endpoint",
            ep.as_str(),
            "--image-endpoint",
            ep.as_str(),
            // The digest spec needs the real upstream digest; it cannot pass offline.
            "--ginkgo.focus",
            r"Image\sManager|Image\sConsistency|Image\sIdentifier|RemoveImage",
            "--ginkgo.skip",
            r"public\simage\swith\sdigest",
            "--ginkgo.no-color",
        ],
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    let text = format!("{}\n{}", out.stdout(), out.stderr());
    assert!(
        out.output.status.success(),
        "critest failed:\n{text}\n--- berthd ---\n{}",
        d.log()
    );
    // At cri-tools v1.37: Image Manager (9 without the digest spec), Image
    // Consistency (3), Image Identifier Consistency (2, with containers) and
    // Idempotence RemoveImage (1).
    let ran: usize = text
        .split("Ran ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        ran >= 15,
        "expected at least 15 image specs to run:\n{text}"
    );
}

#[tokio::test]
async fn a_full_disk_fails_the_pull_cleanly_and_frees_partial_files() {
    let reg = TestRegistry::start().expect("registry");
    let image = ImageBuilder::new()
        .layer(LayerBuilder::new().file("/small", "s", 0o644))
        .layer(LayerBuilder::new().file("/big", noise(6 << 20, 7), 0o644))
        .build()
        .unwrap();
    reg.push("full/app", "1", &image).await.unwrap();
    // A 4 MiB tmpfs as the store's filesystem: the 6 MiB layer cannot fit.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    std::fs::create_dir(&root).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success(), "mounting a tmpfs failed");
    let _guard = Mounted(root.clone());
    let store = open_store(&root, None);
    let err = store
        .pull(&format!("{}/full/app:1", reg.host()), &Auth::anonymous())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert!(store.list().is_empty());
    let ingest = root.join("ingest");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !tree(&ingest).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        tree(&ingest).is_empty(),
        "partial downloads must be removed"
    );
    // Another layer's unpack may still be running on a blocking thread when the pull
    // fails (it cannot be aborted mid-write); it removes its own temp dir when it ends.
    let unpacking = || -> Vec<String> {
        tree(&root.join("snapshots"))
            .into_iter()
            .filter(|p| p.starts_with("tmp-"))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !unpacking().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leftovers = unpacking();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The space is back: a small image still fits.
    let small = ImageBuilder::new()
        .files(&[("/ok", b"ok", 0o644)])
        .build()
        .unwrap();
    reg.push("full/small", "1", &small).await.unwrap();
    store
        .pull(&format!("{}/full/small:1", reg.host()), &Auth::anonymous())
        .await
        .expect("a small pull after the failure");
}

#[tokio::test]
async fn host_binaries_bring_their_libraries_and_run_in_the_image() {
    let reg = TestRegistry::start().expect("registry");
    let image = ImageBuilder::new()
        .layer(LayerBuilder::new().host_binary("/usr/bin/env").unwrap())
        .build()
        .unwrap();
    reg.push("dyn/env", "1", &image).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path(), None);
    let pulled = store
        .pull(&format!("{}/dyn/env:1", reg.host()), &Auth::anonymous())
        .await
        .unwrap();
    let root = &store.snapshot_dirs(&pulled)[0];
    // Only the image's own files: the dynamic loader and libc come from the layer.
    let out = Command::new("chroot")
        .arg(root)
        .args(["/usr/bin/env", "-i", "FROM_IMAGE=1", "/usr/bin/env"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "FROM_IMAGE=1\n");
}

#[tokio::test]
async fn a_blob_missing_on_the_mirror_comes_from_the_upstream() {
    let upstream = TestRegistry::start().expect("upstream registry");
    let mirror = TestRegistry::start().expect("mirror registry");
    let image = ImageBuilder::new()
        .layer(LayerBuilder::new().file("/one", "1", 0o644))
        .layer(LayerBuilder::new().file("/two", "2", 0o644))
        .build()
        .unwrap();
    upstream.push("app/partial", "1", &image).await.unwrap();
    mirror.push("app/partial", "1", &image).await.unwrap();
    // The mirror forgets the second layer: it answers 404 for that blob.
    let hex = image.layers[1].digest.trim_start_matches("sha256:");
    let link = mirror
        .storage()
        .join("docker/registry/v2/repositories/app/partial/_layers/sha256")
        .join(hex);
    std::fs::remove_dir_all(&link).expect("removing the mirror's layer link");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let status = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!(
            "{}/v2/app/partial/blobs/{}",
            mirror.url(),
            image.layers[1].digest
        ))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(
        status,
        reqwest::StatusCode::NOT_FOUND,
        "the mirror must lack the blob"
    );
    let hosts = tempfile::tempdir().unwrap();
    write_hosts(
        hosts.path(),
        &upstream.host(),
        &format!(
            "[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror.url()
        ),
    );
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path(), Some(hosts.path().to_owned()));
    let name = format!("{}/app/partial:1", upstream.host());
    let pulled = store.pull(&name, &Auth::anonymous()).await.expect("pull");
    let dirs = store.snapshot_dirs(&pulled);
    assert_eq!(std::fs::read_to_string(dirs[0].join("two")).unwrap(), "2");
    assert_eq!(std::fs::read_to_string(dirs[1].join("one")).unwrap(), "1");
}

/// Runs `script` with the image's layers mounted as an overlay at `$M` (with a
/// writable upper dir, /proc and /dev), in fresh mount, network and PID namespaces:
/// everything it starts and mounts disappears when it ends.
fn run_in_image(dirs: &[PathBuf], script: &str, args: &[String]) -> std::process::Output {
    let work = tempfile::tempdir().unwrap();
    let lower = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let prelude = format!(
        "set -e\nW={w}\nmkdir -p $W/upper $W/work $W/m\nM=$W/m\n\
         mount -t overlay overlay -o lowerdir={lower},upperdir=$W/upper,workdir=$W/work $M\n\
         mount -t proc proc $M/proc\nmount --rbind /dev $M/dev\nip link set lo up\n",
        w = work.path().display()
    );
    Command::new("timeout")
        .args([
            "60",
            "unshare",
            "--mount",
            "--net",
            "--pid",
            "--fork",
            "--mount-proc",
        ])
        .args(["--propagation", "private", "sh", "-c"])
        .arg(format!("{prelude}{script}"))
        .arg("sh")
        .args(args)
        .output()
        .unwrap()
}

fn argv(image: &berth_image::Image) -> Vec<String> {
    let mut v = image.config.entrypoint.clone().unwrap_or_default();
    v.extend(image.config.cmd.clone().unwrap_or_default());
    v
}

#[tokio::test]
async fn critest_server_images_serve_and_behave_like_upstream() {
    use berth_integration::forge::critest_server_images;
    let reg = TestRegistry::start().expect("registry");
    let images = critest_server_images().expect("building server images");
    reg.push_all(&images).await.unwrap();
    let hosts = tempfile::tempdir().unwrap();
    reg.write_mirror_hosts(hosts.path(), CRITEST_HOSTS).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path(), Some(hosts.path().to_owned()));
    let anon = Auth::anonymous();
    let env = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

    // nginx: serves on :80 from its ENTRYPOINT; PID file; "master process" title.
    let nginx = store
        .pull("registry.k8s.io/e2e-test-images/nginx:1.14-2", &anon)
        .await
        .unwrap();
    let out = run_in_image(
        &store.snapshot_dirs(&nginx),
        &format!(
            "chroot $M env -i {env} \"$@\" >$W/log 2>&1 &\n\
             for i in $(seq 100); do chroot $M wget -qO- http://127.0.0.1:80/ && break; sleep 0.1; done\n\
             pid=$(cat $M/var/run/nginx.pid)\ntr '\\0' ' ' </proc/$pid/cmdline; echo\ncat $W/log\n"
        ),
        &argv(&nginx),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Welcome to nginx!"), "{text}");
    assert!(
        text.contains("nginx: master process nginx -g daemon off;"),
        "{text}"
    );

    let hostnet = store
        .pull(
            &format!(
                "gcr.io/k8s-staging-cri-tools/hostnet-nginx-{}:latest",
                if cfg!(target_arch = "aarch64") {
                    "arm64"
                } else {
                    "amd64"
                }
            ),
            &anon,
        )
        .await
        .unwrap();
    let out = run_in_image(
        &store.snapshot_dirs(&hostnet),
        &format!(
            "chroot $M env -i {env} \"$@\" >$W/log 2>&1 &\n\
             for i in $(seq 100); do chroot $M wget -qO- http://127.0.0.1:12003/ && exit 0; sleep 0.1; done\n\
             cat $W/log; exit 1\n"
        ),
        &argv(&hostnet),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // httpd: serves on :80; the log names the command line as upstream's does.
    let httpd = store
        .pull("registry.k8s.io/e2e-test-images/httpd:2.4.39-4", &anon)
        .await
        .unwrap();
    let out = run_in_image(
        &store.snapshot_dirs(&httpd),
        &format!(
            "chroot $M env -i {env} \"$@\" >$W/log 2>&1 &\n\
             for i in $(seq 100); do chroot $M wget -qO- http://127.0.0.1:80/ && break; sleep 0.1; done\n\
             sleep 0.2; cat $W/log\n"
        ),
        &argv(&httpd),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("It works!"), "{text}");
    assert!(text.contains("httpd -D FOREGROUND"), "{text}");

    // nonewprivs: set-uid root escalates unless no_new_privs is set.
    let nnp = store
        .pull("registry.k8s.io/e2e-test-images/nonewprivs:1.3", &anon)
        .await
        .unwrap();
    assert_eq!(argv(&nnp), ["nnp"]);
    let out = run_in_image(
        &store.snapshot_dirs(&nnp),
        &format!(
            "chroot --userspec=1000:1000 $M env -i {env} nnp\n\
             setpriv --no-new-privs chroot --userspec=1000:1000 $M env -i {env} nnp\n"
        ),
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text, "Effective uid: 0\nEffective uid: 1000\n");
}

#[tokio::test]
async fn the_default_critest_busybox_has_the_tools_the_specs_run() {
    let reg = TestRegistry::start().expect("registry");
    let images = critest_images().unwrap();
    reg.push_all(&images[..1]).await.unwrap();
    let hosts = tempfile::tempdir().unwrap();
    reg.write_mirror_hosts(hosts.path(), CRITEST_HOSTS).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path(), Some(hosts.path().to_owned()));
    let busybox = store.pull(BUSYBOX, &Auth::anonymous()).await.unwrap();
    let env = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    let out = run_in_image(
        &store.snapshot_dirs(&busybox),
        &format!(
            "chroot $M env -i {env} sleep 4321 &\nsleep 0.2\n\
             echo pgrep: $(chroot $M env -i {env} pgrep sleep)\n\
             chroot $M env -i {env} ipcs -m | head -2\n\
             for a in sh echo top ls cat id touch hostname ping brctl netstat pidof dd mount mkdir grep; do\n\
             \x20 chroot $M env -i {env} which $a >/dev/null || echo missing $a\ndone\n"
        ),
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: String = text
        .lines()
        .find_map(|l| l.strip_prefix("pgrep: "))
        .unwrap_or("")
        .to_owned();
    assert!(
        pid.trim().parse::<u32>().is_ok(),
        "pgrep found no sleep: {text}"
    );
    assert!(text.contains("Shared Memory Segments"), "{text}");
    assert!(!text.contains("missing"), "{text}");
}
