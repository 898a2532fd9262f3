//! CDI devices as a workload sees them: a container that asks for a CDI device (CRI
//! `CDI_devices`, or a `cdi.k8s.io/*` annotation of the pod or the container) gets the
//! spec's device node (and can write to it), environment, mount and hook; an unknown
//! device, or one only a broken spec file could define, fails CreateContainer with
//! InvalidArgument naming it, and leaves no container and no mount behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_integration::client::CriClient;
use berth_integration::daemon::{DaemonOptions, TestDaemon};
use berth_integration::fixtures;
use berth_integration::forge::ImageBuilder;
use berth_integration::registry::TestRegistry;
use berth_proto::v1 as cri;

/// Removes what the test made on the host, also when it fails.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A pod on the host network with `annotations`.
fn pod_config(
    name: &str,
    logs: &Path,
    annotations: HashMap<String, String>,
) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        annotations,
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                // Host network: no CNI set-up needed for what this test checks.
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..fixtures::pod_config(name, logs)
    }
}

/// A container sleeping, asking for the CDI devices `cdi` and with `annotations`.
fn container_config(
    name: &str,
    image: &str,
    cdi: &[&str],
    annotations: HashMap<String, String>,
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        annotations,
        cdi_devices: cdi
            .iter()
            .map(|n| cri::CdiDevice {
                name: (*n).to_owned(),
            })
            .collect(),
        ..fixtures::container_config(name, image, &["sleep", "300"])
    }
}

/// Runs `sh -c script` in the container; returns exit code and stdout+stderr.
async fn sh(client: &mut CriClient, id: &str, script: &str) -> (i32, String) {
    let (code, out, err) = fixtures::exec(client, id, &["sh", "-c", script]).await;
    (code, format!("{out}{err}"))
}

async fn container_count(client: &mut CriClient) -> usize {
    client
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
        .len()
}

/// Mount points below `dir` (from this process's mountinfo).
fn mounts_below(dir: &Path) -> usize {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&dir)))
        .count()
}

/// Writes the CDI specs: a YAML one (`berth.test/fake`: a device node with the numbers
/// of /dev/null, an env var, a read-only bind mount, and a spec-wide env var and
/// createRuntime hook) and a JSON one (`berth.test/json`: an env var only).
fn write_specs(dir: &Path, spec_dir: &Path) {
    let node = dir.join("fakedev");
    let status = std::process::Command::new("mknod")
        .arg(&node)
        .args(["c", "1", "3"])
        .status()
        .expect("mknod");
    assert!(status.success(), "mknod {}", node.display());
    let share = dir.join("share");
    std::fs::create_dir(&share).expect("share dir");
    std::fs::write(share.join("marker"), "from the host\n").expect("marker");
    std::fs::create_dir(spec_dir).expect("spec dir");
    let hook_marker = dir.join("hook-ran");
    std::fs::write(
        spec_dir.join("fake.yaml"),
        format!(
            r#"cdiVersion: "0.6.0"
kind: berth.test/fake
devices:
  - name: dev0
    containerEdits:
      deviceNodes:
        - path: /dev/fake0
          hostPath: {node}
          permissions: rw
      env:
        - FAKE_DEVICE=dev0
      mounts:
        - hostPath: {share}
          containerPath: /fake/share
          options: [ro, nosuid, nodev, bind]
containerEdits:
  env: ["FAKE_VENDOR=berth"]
  hooks:
    - hookName: createRuntime
      path: /bin/sh
      args: [sh, -c, "touch {hook}"]
"#,
            node = node.display(),
            share = share.display(),
            hook = hook_marker.display(),
        ),
    )
    .expect("yaml spec");
    std::fs::write(
        spec_dir.join("json.json"),
        r#"{"cdiVersion": "1.0.0", "kind": "berth.test/json",
            "devices": [{"name": "dev1", "containerEdits": {"env": ["JSON_DEVICE=dev1"]}}]}"#,
    )
    .expect("json spec");
}

#[tokio::test]
async fn cdi_devices_reach_the_container_and_unknown_ones_are_refused() {
    let dir = tempfile::Builder::new()
        .prefix("berth-cdi-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let _cleanup = RemoveOnDrop(dir.path().to_path_buf());
    let spec_dir = dir.path().join("cdi");
    write_specs(dir.path(), &spec_dir);

    let registry = TestRegistry::start().expect("registry");
    let image = ImageBuilder::busybox()
        .expect("busybox")
        .build()
        .expect("image");
    registry.push("busybox", "cdi", &image).await.expect("push");
    let image_ref = format!("{}/busybox:cdi", registry.host());

    let mut options = DaemonOptions::default();
    options.extra_config.push_str(&format!(
        "\n[cdi]\nspec_dirs = [\"/nonexistent/berth-cdi\", {:?}]\n",
        spec_dir.display().to_string()
    ));
    let daemon = TestDaemon::start_with(options).await.expect("berthd");
    let mut client = daemon.client().await.expect("client");
    fixtures::pull(&mut client, &image_ref).await;

    // The pod asks for the JSON device by annotation; the first container for the
    // YAML one through CDI_devices, the second through its own annotation.
    let pod = pod_config(
        "cdi",
        &dir.path().join("logs"),
        HashMap::from([(
            "cdi.k8s.io/json".to_owned(),
            "berth.test/json=dev1".to_owned(),
        )]),
    );
    let pod_id = fixtures::run_pod(&mut client, &pod).await;

    let a = fixtures::try_create_started(
        &mut client,
        &pod_id,
        &pod,
        container_config("a", &image_ref, &["berth.test/fake=dev0"], HashMap::new()),
    )
    .await
    .expect("container with CDI_devices");
    let (code, out) = sh(
        &mut client,
        &a,
        "test -c /dev/fake0 && stat -c '%t:%T' /dev/fake0 && echo written > /dev/fake0 && echo wrote",
    )
    .await;
    assert_eq!(
        (code, out.as_str()),
        (0, "1:3\nwrote\n"),
        "device node: {out}"
    );
    let (code, out) = sh(
        &mut client,
        &a,
        "echo $FAKE_DEVICE $FAKE_VENDOR $JSON_DEVICE; cat /fake/share/marker; touch /fake/share/x || echo read-only",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| !l.contains("Read-only"))
            .collect::<Vec<_>>(),
        ["dev0 berth dev1", "from the host", "read-only"],
        "env, mount: {out}"
    );
    assert!(
        dir.path().join("hook-ran").exists(),
        "the spec's createRuntime hook did not run"
    );

    let b = fixtures::try_create_started(
        &mut client,
        &pod_id,
        &pod,
        container_config(
            "b",
            &image_ref,
            &[],
            HashMap::from([(
                "cdi.k8s.io/fake".to_owned(),
                "berth.test/fake=dev0".to_owned(),
            )]),
        ),
    )
    .await
    .expect("container with a CDI annotation");
    let (code, out) = sh(&mut client, &b, "test -c /dev/fake0 && echo $FAKE_DEVICE").await;
    assert_eq!(
        (code, out.as_str()),
        (0, "dev0\n"),
        "annotation form: {out}"
    );

    // Unknown devices, and one only a broken file could define: refused before
    // anything is made.
    std::fs::write(spec_dir.join("broken.yaml"), "cdiVersion: [not, a, spec\n").expect("broken");
    let before = container_count(&mut client).await;
    let mounts = mounts_below(daemon.dir());
    for (name, cdi, annotations, expect) in [
        (
            "u1",
            vec!["berth.test/fake=nope"],
            HashMap::new(),
            "berth.test/fake=nope",
        ),
        (
            "u2",
            vec![],
            HashMap::from([("cdi.k8s.io/x".to_owned(), "other.test/gpu=0".to_owned())]),
            "broken.yaml",
        ),
        ("u3", vec!["not a name"], HashMap::new(), "CDI_devices"),
    ] {
        let err = fixtures::try_create_started(
            &mut client,
            &pod_id,
            &pod,
            container_config(name, &image_ref, &cdi, annotations),
        )
        .await
        .expect_err("an unknown CDI device must fail CreateContainer");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(expect), "{name}: {}", err.message());
    }
    assert_eq!(
        container_count(&mut client).await,
        before,
        "a refused container was left behind"
    );
    assert_eq!(
        mounts_below(daemon.dir()),
        mounts,
        "a refused container left a mount"
    );
    // Known devices still resolve next to the broken file.
    fixtures::try_create_started(
        &mut client,
        &pod_id,
        &pod,
        container_config("c", &image_ref, &["berth.test/fake=dev0"], HashMap::new()),
    )
    .await
    .expect("a good device next to a broken spec file");

    let _ = client
        .runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await;
    let _ = client
        .runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await;
}
