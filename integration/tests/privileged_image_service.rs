//! berthd's ImageService against a real registry (Debian's docker-registry on
//! 127.0.0.1) serving images under their upstream names through certs.d mirrors:
//! crictl pull/images/inspecti/rmi, errors, and critest's image specs.

use std::time::Duration;

use berth_integration::fixtures::BUSYBOX;
use berth_integration::forge::critest_images;
use berth_integration::registry::{CRITEST_HOSTS, TestRegistry};
use berth_integration::tools::{self, CritestRun, crictl};
use berth_integration::{DaemonOptions, TestDaemon};
use berth_proto::v1::{ImageSpec, ImageStatusRequest, PullImageRequest};
use tonic::Code;

/// A registry holding critest's busybox-based images, and a berthd whose certs.d
/// mirrors every upstream registry to it.
async fn setup() -> (TestRegistry, TestDaemon, tempfile::TempDir) {
    let registry = TestRegistry::start().expect("registry");
    registry
        .push_all(&critest_images().expect("build images"))
        .await
        .expect("push images");
    let certs = tempfile::tempdir().expect("tempdir");
    registry
        .write_mirror_hosts(certs.path(), CRITEST_HOSTS)
        .expect("mirror hosts");
    let daemon = TestDaemon::start_with(DaemonOptions {
        extra_config: format!(
            "[registry]\nconfig_path = {:?}\nstall_timeout_secs = 20\n",
            certs.path().display().to_string()
        ),
        ..DaemonOptions::default()
    })
    .await
    .expect("start berthd");
    (registry, daemon, certs)
}

#[tokio::test]
async fn crictl_pull_images_inspecti_rmi_through_a_mirror() {
    let (_registry, d, _certs) = setup().await;
    let ep = d.endpoint();
    let pulled = crictl(&ep, &["pull", BUSYBOX])
        .await
        .expect("crictl")
        .success()
        .expect("crictl pull");
    let pulled = pulled.stdout();
    let id = pulled
        .trim()
        .strip_prefix("Image is up to date for ")
        .unwrap_or_else(|| panic!("unexpected pull output {pulled:?}"))
        .to_owned();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");

    let images = crictl(&ep, &["images"])
        .await
        .expect("crictl")
        .success()
        .expect("images");
    let line = images
        .stdout()
        .lines()
        .find(|l| l.starts_with("registry.k8s.io/e2e-test-images/busybox"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("not listed:\n{}", images.stdout()));
    assert!(
        line.contains("1.29-2") && line.contains(&id[7..20]),
        "{line}"
    );

    let inspect = crictl(&ep, &["inspecti", BUSYBOX])
        .await
        .expect("crictl")
        .success()
        .expect("inspecti");
    let v: serde_json::Value = serde_json::from_str(&inspect.stdout()).expect("JSON");
    assert_eq!(v["status"]["id"], id);
    assert_eq!(v["status"]["repoTags"][0], BUSYBOX);
    let digest = v["status"]["repoDigests"][0]
        .as_str()
        .expect("digest")
        .to_owned();
    assert!(
        digest.starts_with("registry.k8s.io/e2e-test-images/busybox@sha256:"),
        "{digest}"
    );
    assert!(
        v["info"]["imageSpec"]["config"].is_object(),
        "verbose config: {v}"
    );

    // Status by id, tag and digest: the same image.
    let mut c = d.client().await.expect("client");
    let mut seen = Vec::new();
    for name in [id.as_str(), BUSYBOX, digest.as_str()] {
        let image = c
            .image
            .image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: name.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .expect("ImageStatus")
            .into_inner()
            .image
            .unwrap_or_else(|| panic!("{name} not found"));
        seen.push(image);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1], seen[2]);

    crictl(&ep, &["rmi", BUSYBOX])
        .await
        .expect("crictl")
        .success()
        .expect("rmi");
    let gone = c
        .image
        .image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .expect("status of a removed image is not an error")
        .into_inner();
    assert!(gone.image.is_none());
}

#[tokio::test]
async fn pull_errors_name_the_problem() {
    let (_registry, d, _certs) = setup().await;
    let mut c = d.client().await.expect("client");
    let pull = |name: &str| PullImageRequest {
        image: Some(ImageSpec {
            image: name.into(),
            ..Default::default()
        }),
        auth: None,
        sandbox_config: None,
    };
    let err = c
        .image
        .pull_image(pull("registry.k8s.io/e2e-test-images/busybox:no-such-tag"))
        .await
        .expect_err("unknown tag");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("127.0.0.1"),
        "names the endpoint tried: {}",
        err.message()
    );

    let err = c
        .image
        .pull_image(pull("UPPER/Case::bad"))
        .await
        .expect_err("malformed");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A registry nobody listens on: Unavailable, naming it.
    let err = c
        .image
        .pull_image(pull("127.0.0.1:1/nothing:latest"))
        .await
        .expect_err("unreachable");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("127.0.0.1:1"), "{}", err.message());
}

#[tokio::test]
async fn critest_image_specs_pass() {
    let (_registry, d, _certs) = setup().await;
    let ep = d.endpoint();
    let CritestRun { out, text, .. } = tools::critest(
        &ep,
        &[
            r"--ginkgo.focus=\[k8s.io\] Image Manager|Idempotence RemoveImage",
            // Needs the real upstream manifest digest: cannot pass offline.
            "--ginkgo.skip=public image with digest",
        ],
        Duration::from_secs(600),
    )
    .await
    .expect("critest");
    assert!(
        out.output.status.success() && text.contains(" 0 Failed"),
        "critest:\n{text}\n{}",
        out.stderr()
    );
}
