//! The real clients operators and Kubernetes use, against a real berthd: crictl,
//! grpcurl (through server reflection, no proto files) and critest.

use std::time::Duration;

use berth_integration::TestDaemon;
use berth_integration::tools::{self, crictl};

#[tokio::test]
async fn crictl_version_names_berth() {
    let d = TestDaemon::start().await.expect("start");
    let out = crictl(&d.endpoint(), &["version"])
        .await
        .expect("crictl")
        .success()
        .expect("crictl version");
    let text = out.stdout();
    assert!(text.contains("RuntimeName:  berth"), "{text}");
    assert!(text.contains("RuntimeApiVersion:  v1"), "{text}");
    assert!(text.contains("Version:  0.1.0"), "{text}");
}

#[tokio::test]
async fn crictl_info_shows_both_conditions() {
    let d = TestDaemon::start().await.expect("start");
    let out = crictl(&d.endpoint(), &["info"])
        .await
        .expect("crictl")
        .success()
        .expect("crictl info");
    let info: serde_json::Value = serde_json::from_str(&out.stdout()).expect("crictl info JSON");
    let conditions = info["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .clone();
    let types: Vec<&str> = conditions
        .iter()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert_eq!(types, ["RuntimeReady", "NetworkReady"]);
    let runtime = &conditions[0];
    assert_eq!(runtime["status"], true, "{runtime}");
    // The verbose info crictl asks for is there, parsed into objects.
    assert_eq!(
        info["config"]["stateDir"],
        d.state_dir.display().to_string()
    );
}

#[tokio::test]
async fn crictl_imagefsinfo_reports_the_image_store_filesystem() {
    let d = TestDaemon::start().await.expect("start");
    let out = crictl(&d.endpoint(), &["imagefsinfo"])
        .await
        .expect("crictl")
        .success()
        .expect("crictl imagefsinfo");
    let v: serde_json::Value = serde_json::from_str(&out.stdout()).expect("JSON");
    let fs = &v["status"]["imageFilesystems"][0];
    let mountpoint = fs["fsId"]["mountpoint"].as_str().expect("mountpoint");
    assert!(d.root_dir.starts_with(mountpoint), "{v}");
    let used: u64 = fs["usedBytes"]["value"]
        .as_str()
        .expect("usedBytes")
        .parse()
        .expect("number");
    assert!(used > 0, "{v}");
}

#[tokio::test]
async fn grpcurl_lists_and_describes_through_reflection() {
    let d = TestDaemon::start().await.expect("start");
    let grpcurl = tools::tool("grpcurl").expect("grpcurl");
    let socket = d.socket.display().to_string();
    let list = tools::run(
        grpcurl.as_os_str(),
        ["-plaintext", "-unix", &socket, "list"],
        Duration::from_secs(30),
    )
    .await
    .expect("grpcurl")
    .success()
    .expect("grpcurl list");
    let services = list.stdout();
    assert!(
        services.lines().any(|l| l == "runtime.v1.RuntimeService"),
        "{services}"
    );
    assert!(
        services.lines().any(|l| l == "runtime.v1.ImageService"),
        "{services}"
    );

    let describe = tools::run(
        grpcurl.as_os_str(),
        [
            "-plaintext",
            "-unix",
            &socket,
            "describe",
            "runtime.v1.RuntimeService",
        ],
        Duration::from_secs(30),
    )
    .await
    .expect("grpcurl")
    .success()
    .expect("grpcurl describe");
    assert!(
        describe.stdout().contains("rpc RunPodSandbox"),
        "{}",
        describe.stdout()
    );

    // And a real call, with a JSON body.
    let call = tools::run(
        grpcurl.as_os_str(),
        [
            "-plaintext",
            "-unix",
            "-d",
            "{}",
            &socket,
            "runtime.v1.RuntimeService/Version",
        ],
        Duration::from_secs(30),
    )
    .await
    .expect("grpcurl")
    .success()
    .expect("grpcurl Version");
    let v: serde_json::Value = serde_json::from_str(&call.stdout()).expect("JSON");
    assert_eq!(v["runtimeName"], "berth");
}

#[tokio::test]
async fn critest_runtime_info_specs_pass() {
    let d = TestDaemon::start().await.expect("start");
    let critest = tools::tool("critest").expect("critest");
    let endpoint = d.endpoint();
    let out = tools::run(
        critest.as_os_str(),
        [
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
            "--ginkgo.focus=runtime info",
            "--ginkgo.no-color",
        ],
        Duration::from_secs(120),
    )
    .await
    .expect("critest");
    let text = out.stdout();
    assert!(
        out.output.status.success() && text.contains("2 Passed | 0 Failed"),
        "critest failed:\n{text}\n{}",
        out.stderr()
    );
}

/// README's RPC table is the contract operators read: it must list every RPC of the
/// vendored api.proto, and each row's status must be what berthd really answers.
#[tokio::test]
async fn readme_rpc_table_matches_the_proto_and_the_daemon() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let proto = std::fs::read_to_string(root.join("proto/proto/api.proto")).expect("api.proto");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");

    let mut in_proto = Vec::new();
    let mut service = "";
    for line in proto.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("service ") {
            service = if rest.starts_with("RuntimeService") {
                "RuntimeService"
            } else {
                "ImageService"
            };
        } else if let Some(rest) = t.strip_prefix("rpc ") {
            let name = rest.split('(').next().expect("rpc name").trim();
            in_proto.push((name.to_owned(), service.to_owned()));
        }
    }

    let mut in_readme = Vec::new();
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() >= 5 && cells[1].starts_with('`') && cells[2].ends_with("Service") {
            let name = cells[1].trim_matches('`').to_owned();
            let implemented = match cells[3] {
                "implemented" => true,
                "Unimplemented" => false,
                other => panic!("README: unknown status {other:?} for {name}"),
            };
            in_readme.push((name, cells[2].to_owned(), implemented));
        }
    }
    let mut a: Vec<_> = in_proto.clone();
    let mut b: Vec<_> = in_readme
        .iter()
        .map(|(n, s, _)| (n.clone(), s.clone()))
        .collect();
    a.sort();
    b.sort();
    assert_eq!(
        a, b,
        "README's RPC table must list exactly the RPCs of api.proto"
    );

    let d = TestDaemon::start().await.expect("start");
    let grpcurl = tools::tool("grpcurl").expect("grpcurl");
    let socket = d.socket.display().to_string();
    let mut wrong = Vec::new();
    for (name, service, implemented) in &in_readme {
        let method = format!("runtime.v1.{service}/{name}");
        let out = tools::run(
            grpcurl.as_os_str(),
            [
                "-plaintext",
                "-unix",
                "-max-time",
                "10",
                "-d",
                "{}",
                &socket,
                &method,
            ],
            Duration::from_secs(30),
        )
        .await
        .expect("grpcurl");
        let unimplemented = out.stderr().contains("Code: Unimplemented");
        if unimplemented == *implemented {
            wrong.push(format!(
                "{name}: README says {}, berthd answered: {}{}",
                if *implemented {
                    "implemented"
                } else {
                    "Unimplemented"
                },
                out.stdout().trim(),
                out.stderr().trim()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "README RPC table is wrong:\n{}",
        wrong.join("\n")
    );
}
