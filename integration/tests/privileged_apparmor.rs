//! AppArmor profiles from the CRI on a node WITHOUT AppArmor (this CI host's kernel has
//! none), which must behave as containerd does there: containers that ask for nothing
//! or for Unconfined run; a pod or container asking for RuntimeDefault or a Localhost
//! profile is refused with FailedPrecondition saying AppArmor is not enabled (it would
//! otherwise run without the confinement it asked for), leaving nothing behind; a
//! malformed profile name is InvalidArgument naming the field; and Status(verbose)
//! says what the node does. The enabled-host half (berth-default loaded and enforced,
//! Localhost applied) runs in the VM lane: integration/vm/tests/60-apparmor.sh.

use berth_integration::fixtures::{
    container_config, create, create_started, exec, pod_config, pull, remove_container, remove_pod,
    run_pod,
};
use berth_integration::forge::ImageBuilder;
use berth_integration::setup::Node;
use berth_proto::v1 as cri;
use cri::security_profile::ProfileType;

/// A plain busybox image, the only one this test needs (pushed alone: quicker than
/// critest's whole set).
const BUSYBOX: &str = "registry.k8s.io/berth-test/apparmor-busybox:1";

fn with_apparmor(
    mut config: cri::ContainerConfig,
    structured: Option<cri::SecurityProfile>,
    deprecated: &str,
) -> cri::ContainerConfig {
    let linux = config.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    sc.apparmor = structured;
    #[allow(deprecated, reason = "older kubelets send only apparmor_profile")]
    {
        sc.apparmor_profile = deprecated.to_owned();
    }
    config
}

fn profile(ty: ProfileType, localhost_ref: &str) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: ty.into(),
        localhost_ref: localhost_ref.to_owned(),
    })
}

#[tokio::test]
async fn without_apparmor_confinement_requests_are_refused_and_the_rest_runs() {
    assert!(
        !std::path::Path::new("/sys/module/apparmor/parameters/enabled").exists(),
        "this test is for hosts without AppArmor; on AppArmor hosts the VM lane's 60-apparmor.sh applies"
    );
    let node = Node::start_bare().await.expect("node");
    let image = ImageBuilder::busybox()
        .and_then(|b| b.cmd(["sh"]).build())
        .expect("busybox image");
    node.registry
        .push("berth-test/apparmor-busybox", "1", &image)
        .await
        .expect("push busybox");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut client = node.daemon.client().await.expect("client");
    pull(&mut client, BUSYBOX).await;

    // Status(verbose) tells kubelet's operator what this node does with AppArmor.
    let status = client
        .runtime
        .status(cri::StatusRequest { verbose: true })
        .await
        .expect("Status")
        .into_inner();
    let info: serde_json::Value =
        serde_json::from_str(status.info.get("apparmor").expect("info[apparmor]"))
            .expect("info[apparmor] is JSON");
    assert_eq!(info["enabled"], false, "{info}");
    assert!(
        info["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{info}"
    );

    // A pod asking for RuntimeDefault AppArmor is refused at RunPodSandbox.
    let mut confined_pod = pod_config("apparmor-pod", &dir.path().join("logs-confined"));
    confined_pod
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .apparmor = profile(ProfileType::RuntimeDefault, "");
    let e = client
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(confined_pod),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("a RuntimeDefault AppArmor pod on a node without AppArmor");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("AppArmor is not enabled"), "{e:?}");

    let pod = pod_config("apparmor", &dir.path().join("logs"));
    let pod_id = run_pod(&mut client, &pod).await;
    let cmd = ["sleep", "3600"];

    // Refused: each asks for confinement this node cannot give.
    for (what, structured, deprecated, code, words) in [
        (
            "RuntimeDefault",
            profile(ProfileType::RuntimeDefault, ""),
            "",
            tonic::Code::FailedPrecondition,
            "AppArmor is not enabled",
        ),
        (
            "runtime/default (deprecated field)",
            None,
            "runtime/default",
            tonic::Code::FailedPrecondition,
            "AppArmor is not enabled",
        ),
        (
            "Localhost",
            profile(ProfileType::Localhost, "k8s-apparmor-example-deny-write"),
            "",
            tonic::Code::FailedPrecondition,
            "localhost/k8s-apparmor-example-deny-write",
        ),
        (
            "a name that would inject a second command",
            None,
            "localhost/x\nchangeprofile unconfined",
            tonic::Code::InvalidArgument,
            "linux.security_context.apparmor_profile",
        ),
        (
            "localhost_ref without the Localhost type",
            profile(ProfileType::RuntimeDefault, "x"),
            "",
            tonic::Code::InvalidArgument,
            "linux.security_context.apparmor.localhost_ref",
        ),
    ] {
        let config = with_apparmor(container_config("c", BUSYBOX, &cmd), structured, deprecated);
        match create(&mut client, &pod_id, &pod, config).await {
            Ok(id) => {
                remove_container(&mut client, &id).await;
                panic!("{what}: created {id}, want {code:?}");
            }
            Err(e) => {
                assert_eq!(e.code(), code, "{what}: {e:?}");
                assert!(e.message().contains(words), "{what}: {e:?}");
            }
        }
    }
    // Nothing half-created: no container, and the name is free again.
    let left = client
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert!(
        left.iter().all(|c| c.pod_sandbox_id != pod_id),
        "refused creates left {left:?}"
    );

    // Run as they are: nothing asked for, and Unconfined (both spellings).
    for (name, structured, deprecated) in [
        ("c", None, ""),
        ("unconfined", profile(ProfileType::Unconfined, ""), ""),
        ("unconfined-deprecated", None, "unconfined"),
    ] {
        let config = with_apparmor(
            container_config(name, BUSYBOX, &cmd),
            structured,
            deprecated,
        );
        let id = create_started(&mut client, &pod_id, &pod, config).await;
        let (code, out, err) = exec(&mut client, &id, &["echo", "running"]).await;
        assert_eq!((code, out.trim()), (0, "running"), "{name}: {err}");
        remove_container(&mut client, &id).await;
    }
    remove_pod(&mut client, &pod_id).await;
}
