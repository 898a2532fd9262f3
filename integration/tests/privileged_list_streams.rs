//! The v0.36 `Stream*` list RPCs (feature gate CRIListStreaming) return exactly what
//! their `List*` counterparts do, with the same filters, and nothing for an empty list.

use std::collections::BTreeSet;

use berth_integration::fixtures::BUSYBOX;
use berth_integration::setup::Node;
use berth_integration::tools::crictl;
use berth_proto::v1::{
    ContainerFilter, ListContainerStatsRequest, ListContainersRequest, ListImagesRequest,
    ListPodSandboxRequest, ListPodSandboxStatsRequest, PodSandboxFilter,
    StreamContainerStatsRequest, StreamContainersRequest, StreamImagesRequest,
    StreamPodSandboxStatsRequest, StreamPodSandboxesRequest,
};

#[tokio::test]
async fn stream_rpcs_match_their_list_counterparts() {
    let node = Node::start().await.expect("node");
    let ep = node.daemon.endpoint();
    let mut c = node.daemon.client().await.expect("client");

    // Nothing yet: the streams end without a message.
    let mut s = c
        .runtime
        .stream_pod_sandboxes(StreamPodSandboxesRequest::default())
        .await
        .expect("stream")
        .into_inner();
    assert!(
        s.message().await.expect("ok").is_none(),
        "no message for no pods"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let mut pods = Vec::new();
    for name in ["a", "b"] {
        let pod = dir.path().join(format!("{name}.json"));
        std::fs::write(
            &pod,
            format!(r#"{{"metadata":{{"name":"{name}","namespace":"default","uid":"{name}-uid","attempt":0}},"labels":{{"app":"{name}"}},"linux":{{}}}}"#),
        )
        .expect("write");
        let ctr = dir.path().join(format!("{name}-ctr.json"));
        std::fs::write(
            &ctr,
            format!(r#"{{"metadata":{{"name":"{name}"}},"image":{{"image":"{BUSYBOX}"}},"command":["sleep","3600"]}}"#),
        )
        .expect("write");
        let pod = pod.display().to_string();
        let ctr = ctr.display().to_string();
        let id = crictl(&ep, &["runp", &pod])
            .await
            .expect("crictl")
            .success()
            .expect("runp")
            .stdout()
            .trim()
            .to_owned();
        crictl(&ep, &["pull", BUSYBOX])
            .await
            .expect("crictl")
            .success()
            .expect("pull");
        let cid = crictl(&ep, &["create", &id, &ctr, &pod])
            .await
            .expect("crictl")
            .success()
            .expect("create")
            .stdout()
            .trim()
            .to_owned();
        crictl(&ep, &["start", &cid])
            .await
            .expect("crictl")
            .success()
            .expect("start");
        pods.push(id);
    }

    let listed: BTreeSet<String> = c
        .runtime
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .expect("list")
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect();
    let mut streamed = BTreeSet::new();
    let mut s = c
        .runtime
        .stream_pod_sandboxes(StreamPodSandboxesRequest::default())
        .await
        .expect("stream")
        .into_inner();
    while let Some(m) = s.message().await.expect("ok") {
        assert!(
            !m.pod_sandboxes.is_empty(),
            "every message has at least one item"
        );
        for p in m.pod_sandboxes {
            assert!(streamed.insert(p.id), "no duplicates");
        }
    }
    assert_eq!(streamed, listed);
    assert_eq!(listed.len(), 2);

    // The same filters as List.
    let mut s = c
        .runtime
        .stream_pod_sandboxes(StreamPodSandboxesRequest {
            filter: Some(PodSandboxFilter {
                label_selector: [("app".to_owned(), "b".to_owned())].into(),
                ..Default::default()
            }),
        })
        .await
        .expect("stream")
        .into_inner();
    let m = s.message().await.expect("ok").expect("one message");
    assert_eq!(m.pod_sandboxes.len(), 1);
    assert_eq!(m.pod_sandboxes[0].id, pods[1]);
    assert!(s.message().await.expect("ok").is_none());

    let filter = ContainerFilter {
        pod_sandbox_id: pods[0].clone(),
        ..Default::default()
    };
    let listed: Vec<String> = c
        .runtime
        .list_containers(ListContainersRequest {
            filter: Some(filter.clone()),
        })
        .await
        .expect("list")
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut s = c
        .runtime
        .stream_containers(StreamContainersRequest {
            filter: Some(filter),
        })
        .await
        .expect("stream")
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(m) = s.message().await.expect("ok") {
        streamed.extend(m.containers.into_iter().map(|c| c.id));
    }
    assert_eq!(streamed, listed);
    assert_eq!(streamed.len(), 1);

    let n_stats = c
        .runtime
        .list_container_stats(ListContainerStatsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .stats
        .len();
    let mut s = c
        .runtime
        .stream_container_stats(StreamContainerStatsRequest::default())
        .await
        .expect("stream")
        .into_inner();
    let mut streamed = 0;
    while let Some(m) = s.message().await.expect("ok") {
        streamed += m.container_stats.len();
    }
    assert_eq!((streamed, n_stats), (2, 2));

    let n_pod_stats = c
        .runtime
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .stats
        .len();
    let mut s = c
        .runtime
        .stream_pod_sandbox_stats(StreamPodSandboxStatsRequest::default())
        .await
        .expect("stream")
        .into_inner();
    let mut streamed = 0;
    while let Some(m) = s.message().await.expect("ok") {
        streamed += m.pod_sandbox_stats.len();
    }
    assert_eq!((streamed, n_pod_stats), (2, 2));

    let images: BTreeSet<String> = c
        .image
        .list_images(ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images
        .into_iter()
        .map(|i| i.id)
        .collect();
    let mut s = c
        .image
        .stream_images(StreamImagesRequest::default())
        .await
        .expect("stream")
        .into_inner();
    let mut streamed = BTreeSet::new();
    while let Some(m) = s.message().await.expect("ok") {
        streamed.extend(m.images.into_iter().map(|i| i.id));
    }
    assert_eq!(streamed, images);
    assert!(!images.is_empty());
}
