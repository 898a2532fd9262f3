//! berthd against a hostile registry on 127.0.0.1 (integration/src/hostile_registry.rs):
//! one test per row of issue 25's table, plus the layer and credential defences of
//! issue 16. berthd runs with small test limits and timeouts, so every test ends in
//! seconds; each asserts the error a user sees (code, limit, URL), that the pull
//! ended quickly, that berthd's peak memory stayed flat, and that nothing was left.
//! Privileged: berthd runs as root and unpacks layers with their ownership.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_integration::forge::{ImageBuilder, LayerBuilder};
use berth_integration::hostile_registry::{Body, HostileRegistry, Reply, Request, serve_image};
use berth_integration::{DaemonOptions, TestDaemon};
use berth_proto::v1::{AuthConfig, ImageSpec, ListImagesRequest, PullImageRequest};
use tonic::Code;

/// Limits every test daemon runs with (see the `[registry]`/`[image]` keys).
const MANIFEST_LIMIT: u64 = 64 << 10;
const CONFIG_LIMIT: u64 = 64 << 10;
const UNPACK_LIMIT: u64 = 4 << 20;
/// How much berthd's peak RSS may grow during a hostile pull.
const RSS_SLACK_KIB: u64 = 64 << 10;

async fn daemon() -> (TestDaemon, tempfile::TempDir) {
    daemon_with_hosts(None).await
}

/// A berthd with small limits; `hosts` (registry host, hosts.toml text) is written
/// into its certs.d.
async fn daemon_with_hosts(hosts: Option<(&str, String)>) -> (TestDaemon, tempfile::TempDir) {
    let certs = tempfile::tempdir().expect("tempdir");
    if let Some((host, text)) = hosts {
        std::fs::create_dir_all(certs.path().join(host)).unwrap();
        std::fs::write(certs.path().join(host).join("hosts.toml"), text).unwrap();
    }
    let d = TestDaemon::start_with(DaemonOptions {
        extra_config: format!(
            "[registry]\nconfig_path = {:?}\nstall_timeout_secs = 2\n\
             min_layer_rate_bytes_per_sec = 65536\nconnect_timeout_secs = 2\n\
             header_timeout_secs = 2\nrequest_timeout_secs = 3\n\
             max_manifest_bytes = {MANIFEST_LIMIT}\nmax_config_bytes = {CONFIG_LIMIT}\n\n\
             [image]\nmax_layer_unpacked_bytes = {UNPACK_LIMIT}\nmax_layer_entries = 1000\n",
            certs.path().display().to_string()
        ),
        log_level: "info".into(),
        ..DaemonOptions::default()
    })
    .await
    .expect("start berthd");
    (d, certs)
}

/// berthd's peak resident memory (VmHWM), KiB.
fn peak_rss_kib(d: &TestDaemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid().expect("pid")))
        .expect("berthd status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Pulls `image` through CRI with no deadline (as kubelet does), giving up after
/// 60 s; returns the status and how long the pull took.
async fn pull(
    d: &TestDaemon,
    image: &str,
    auth: Option<AuthConfig>,
) -> (Result<String, tonic::Status>, Duration) {
    let mut client = d.client().await.expect("client");
    let started = Instant::now();
    let res = tokio::time::timeout(
        Duration::from_secs(60),
        client.image.pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            auth,
            sandbox_config: None,
        }),
    )
    .await
    .expect("the pull must end by itself, long before 60 s");
    (res.map(|r| r.into_inner().image_ref), started.elapsed())
}

/// A pull that must fail with `code` within `within`, its message containing every
/// one of `needles`; berthd's peak memory must not have grown by more than the slack.
async fn pull_fails(
    d: &TestDaemon,
    image: &str,
    code: Code,
    within: Duration,
    needles: &[&str],
) -> tonic::Status {
    let before = peak_rss_kib(d);
    let (res, took) = pull(d, image, None).await;
    let status = res.expect_err("the pull must fail");
    let after = peak_rss_kib(d);
    assert_eq!(status.code(), code, "{status:?}");
    for n in needles {
        assert!(
            status.message().contains(n),
            "{n:?} missing from {:?}",
            status.message()
        );
    }
    assert!(took < within, "the pull took {took:?}: {status:?}");
    assert!(
        after.saturating_sub(before) < RSS_SLACK_KIB,
        "berthd's peak RSS grew from {before} KiB to {after} KiB"
    );
    status
}

/// Nothing of a failed pull is left: no image, no partial download, no unpack
/// directory, no lease.
async fn assert_nothing_left(d: &TestDaemon) {
    let images = d
        .client()
        .await
        .unwrap()
        .image
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(images.is_empty(), "{images:?}");
    let store = d.root_dir.join("images");
    // Aborted download tasks are dropped right after the RPC returns.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = ["ingest", "leases"]
            .iter()
            .flat_map(|dir| entries(&store.join(dir)))
            .chain(
                entries(&store.join("snapshots"))
                    .into_iter()
                    .filter(|n| n.starts_with("tmp-")),
            )
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn small_image() -> berth_integration::forge::BuiltImage {
    ImageBuilder::new()
        .files(&[("/hello", b"hello", 0o644)])
        .build()
        .expect("image")
}

/// Bytes gzip cannot shrink.
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

// Row 1: 401 with a Bearer challenge whose token endpoint's body never ends.
#[tokio::test]
async fn an_endless_token_response_is_cut_at_its_limit_and_memory_stays_flat() {
    let reg = HostileRegistry::start(|req: &Request| {
        if req.path() == "/token" {
            return Reply::ok("application/json", Vec::new()).body(Body::Endless);
        }
        let host = req.header("host").unwrap_or("").to_owned();
        Reply::status(401).header(
            "WWW-Authenticate",
            &format!(r#"Bearer realm="http://{host}/token",service="hostile""#),
        )
    })
    .unwrap();
    let (d, _certs) = daemon().await;
    let token_url = format!("http://{}/token", reg.host());
    pull_fails(
        &d,
        &format!("{}/app:1", reg.host()),
        Code::InvalidArgument,
        Duration::from_secs(10),
        &["token response", &token_url, "1048576 bytes"],
    )
    .await;
    assert_nothing_left(&d).await;
}

// Row 2: a manifest sent one byte at a time, each byte well inside the stall timeout.
#[tokio::test]
async fn a_trickled_manifest_hits_the_request_deadline() {
    let image = small_image();
    let manifest = image.manifest.clone();
    let reg = HostileRegistry::start(move |req: &Request| {
        if req.path().contains("/manifests/") {
            return Reply::ok("application/vnd.oci.image.manifest.v1+json", Vec::new()).body(
                Body::Trickle {
                    bytes: manifest.clone(),
                    chunk: 1,
                    every: Duration::from_millis(500),
                },
            );
        }
        Reply::status(404)
    })
    .unwrap();
    let (d, _certs) = daemon().await;
    // The whole manifest would take minutes; the 3 s request deadline ends it.
    pull_fails(
        &d,
        &format!("{}/app:1", reg.host()),
        Code::Unavailable,
        Duration::from_secs(10),
        &[
            &format!("http://{}/v2/app/manifests/1", reg.host()),
            "registry.request_timeout_secs",
        ],
    )
    .await;
    assert_nothing_left(&d).await;
}

// Row 3: an endless manifest body, with and without a (huge) declared length.
#[tokio::test]
async fn an_endless_manifest_is_refused_at_the_manifest_limit() {
    let reg = HostileRegistry::start(|req: &Request| {
        let reply =
            Reply::ok("application/vnd.oci.image.manifest.v1+json", Vec::new()).body(Body::Endless);
        if req.path().ends_with("/declared") {
            reply.declared_length(1 << 40)
        } else {
            reply
        }
    })
    .unwrap();
    let (d, _certs) = daemon().await;
    for tag in ["endless", "declared"] {
        pull_fails(
            &d,
            &format!("{}/app:{tag}", reg.host()),
            Code::InvalidArgument,
            Duration::from_secs(5),
            &[
                &format!("http://{}/v2/app/manifests/{tag}", reg.host()),
                &format!("larger than {MANIFEST_LIMIT} bytes"),
                "registry.max_manifest_bytes",
            ],
        )
        .await;
    }
    assert_nothing_left(&d).await;
}

// Row 4: a manifest declaring a 1 TiB config whose body never ends; and a config
// declared small whose body never ends.
#[tokio::test]
async fn an_endless_config_is_refused_at_the_config_limit() {
    let image = small_image();
    let mut huge: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap();
    huge["config"]["size"] = serde_json::json!(1u64 << 40);
    let huge = serde_json::to_vec(&huge).unwrap();
    let honest = image.manifest.clone();
    let media_type = image.manifest_media_type.clone();
    let reg = HostileRegistry::start(move |req: &Request| {
        if req.path().ends_with("/manifests/huge") {
            return Reply::ok(&media_type, huge.clone());
        }
        if req.path().ends_with("/manifests/honest") {
            return Reply::ok(&media_type, honest.clone());
        }
        if req.path().contains("/blobs/") {
            return Reply::ok("application/octet-stream", Vec::new()).body(Body::Endless);
        }
        Reply::status(404)
    })
    .unwrap();
    let (d, _certs) = daemon().await;
    pull_fails(
        &d,
        &format!("{}/app:huge", reg.host()),
        Code::InvalidArgument,
        Duration::from_secs(5),
        &["1099511627776 bytes", "registry.max_config_bytes"],
    )
    .await;
    pull_fails(
        &d,
        &format!("{}/app:honest", reg.host()),
        Code::InvalidArgument,
        Duration::from_secs(5),
        &[
            &format!("http://{}/v2/app/blobs/{}", reg.host(), image.config_digest),
            &format!("larger than {CONFIG_LIMIT} bytes"),
            "registry.max_config_bytes",
        ],
    )
    .await;
    assert_nothing_left(&d).await;
}

// Row 5: a redirect loop.
#[tokio::test]
async fn a_redirect_loop_is_refused() {
    let reg =
        HostileRegistry::start(|req: &Request| Reply::status(302).header("Location", &req.target))
            .unwrap();
    let (d, _certs) = daemon().await;
    pull_fails(
        &d,
        &format!("{}/app:1", reg.host()),
        Code::Unavailable,
        Duration::from_secs(5),
        &["redirect"],
    )
    .await;
    assert_nothing_left(&d).await;
}

// Row 6: error statuses with endless bodies: 404 is not read at all; a 5xx body is
// read only up to a few KiB for the message.
#[tokio::test]
async fn errors_with_endless_bodies_are_refused_and_memory_stays_flat() {
    let reg = HostileRegistry::start(|req: &Request| {
        let status = if req.path().ends_with("/missing") {
            404
        } else {
            500
        };
        Reply::status(status).body(Body::Endless)
    })
    .unwrap();
    let (d, _certs) = daemon().await;
    pull_fails(
        &d,
        &format!("{}/app:missing", reg.host()),
        Code::NotFound,
        Duration::from_secs(5),
        &["not found"],
    )
    .await;
    pull_fails(
        &d,
        &format!("{}/app:broken", reg.host()),
        Code::Unavailable,
        Duration::from_secs(8),
        &[
            "HTTP 500",
            &format!("http://{}/v2/app/manifests/broken", reg.host()),
        ],
    )
    .await;
    assert_nothing_left(&d).await;
}

/// An image with one incompressible layer of `size` bytes, served with its layer
/// trickled `chunk` bytes every `every`.
fn slow_layer_registry(size: usize, chunk: usize, every: Duration) -> (HostileRegistry, String) {
    let image = ImageBuilder::new()
        .layer(LayerBuilder::new().file("/big", noise(size, 7), 0o644))
        .build()
        .unwrap();
    let layer = image.layers[0].clone();
    let id = image.id().to_owned();
    let reg = HostileRegistry::start(move |req: &Request| {
        if req.path().ends_with(&format!("/blobs/{}", layer.digest)) {
            return Reply::ok("application/octet-stream", Vec::new()).body(Body::Trickle {
                bytes: layer.blob.clone(),
                chunk,
                every,
            });
        }
        serve_image(req, "slow", "1", &image).unwrap_or_else(|| Reply::status(404))
    })
    .unwrap();
    (reg, id)
}

#[tokio::test]
async fn a_layer_below_the_minimum_rate_is_abandoned_and_leaves_nothing() {
    // 1 KiB every 200 ms: 5 KiB/s, well under the 64 KiB/s minimum, and never
    // silent long enough for the 2 s stall timeout. Whole, it would take ~100 s.
    let (reg, _) = slow_layer_registry(512 << 10, 1 << 10, Duration::from_millis(200));
    let (d, _certs) = daemon().await;
    pull_fails(
        &d,
        &format!("{}/slow:1", reg.host()),
        Code::Unavailable,
        Duration::from_secs(10),
        &["too slow", "registry.min_layer_rate_bytes_per_sec"],
    )
    .await;
    assert_nothing_left(&d).await;
}

#[tokio::test]
async fn a_pull_whose_caller_gives_up_stops_at_once_and_leaves_nothing() {
    // 32 KiB every 50 ms (~640 KiB/s, above the minimum rate): 3 MiB take ~5 s.
    let (reg, _) = slow_layer_registry(3 << 20, 32 << 10, Duration::from_millis(50));
    let (d, _certs) = daemon().await;
    let mut client = d.client().await.unwrap();
    let mut req = tonic::Request::new(PullImageRequest {
        image: Some(ImageSpec {
            image: format!("{}/slow:1", reg.host()),
            ..Default::default()
        }),
        auth: None,
        sandbox_config: None,
    });
    req.set_timeout(Duration::from_millis(1500));
    let started = Instant::now();
    let err = client.image.pull_image(req).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The download had started: the layer was requested.
    assert!(reg.requests().iter().any(|r| r.path().contains("/blobs/")));
    assert_nothing_left(&d).await;
}

#[tokio::test]
async fn a_slow_registry_does_not_hold_up_pulls_from_another() {
    // The slow pull runs ~10 s (32 KiB every 100 ms, above the minimum rate); the
    // good pull must finish while it is still running.
    let (slow, _) = slow_layer_registry(3 << 20, 32 << 10, Duration::from_millis(100));
    let good_image = small_image();
    let served = good_image.clone();
    let good = HostileRegistry::start(move |req: &Request| {
        serve_image(req, "good", "1", &served).unwrap_or_else(|| Reply::status(404))
    })
    .unwrap();
    let (d, _certs) = daemon().await;
    let slow_name = format!("{}/slow:1", slow.host());
    let slow_pull = {
        let mut client = d.client().await.unwrap();
        tokio::spawn(async move {
            client
                .image
                .pull_image(PullImageRequest {
                    image: Some(ImageSpec {
                        image: slow_name,
                        ..Default::default()
                    }),
                    auth: None,
                    sandbox_config: None,
                })
                .await
        })
    };
    // Let the slow pull get to its layer.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !slow
        .requests()
        .iter()
        .any(|r| r.path().contains("/blobs/sha256"))
    {
        assert!(Instant::now() < deadline, "the slow pull never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (res, took) = pull(&d, &format!("{}/good:1", good.host()), None).await;
    assert_eq!(res.expect("good pull"), good_image.id());
    assert!(took < Duration::from_secs(8), "the good pull took {took:?}");
    assert!(
        !slow_pull.is_finished(),
        "the slow pull should still be running"
    );
    // It completes in the end: slow but above the minimum rate.
    slow_pull.await.unwrap().expect("slow pull");
}

#[tokio::test]
async fn a_decompression_bomb_fails_the_pull_and_leaves_nothing() {
    // 12 MiB of zeros: a few KiB of gzip, three times the 4 MiB unpack limit.
    let image = ImageBuilder::new()
        .layer(LayerBuilder::new().file("/zeros", vec![0u8; 12 << 20], 0o644))
        .build()
        .unwrap();
    assert!(image.layers[0].blob.len() < 1 << 20);
    let reg = HostileRegistry::start(move |req: &Request| {
        serve_image(req, "bomb", "1", &image).unwrap_or_else(|| Reply::status(404))
    })
    .unwrap();
    let (d, _certs) = daemon().await;
    pull_fails(
        &d,
        &format!("{}/bomb:1", reg.host()),
        Code::InvalidArgument,
        Duration::from_secs(10),
        &[
            &format!("more than {UNPACK_LIMIT} bytes"),
            "image.max_layer_unpacked_bytes",
        ],
    )
    .await;
    assert_nothing_left(&d).await;
    assert!(
        entries(&d.root_dir.join("images/snapshots")).is_empty(),
        "no snapshot of the bomb may remain"
    );
}

/// A registry that wants Basic `user:pass` and serves `image` as `app:1`.
fn basic_auth_registry(image: berth_integration::forge::BuiltImage) -> HostileRegistry {
    HostileRegistry::start(move |req: &Request| {
        // "Basic " + base64("user:pass")
        if req.header("authorization") != Some("Basic dXNlcjpwYXNz") {
            return Reply::status(401).header("WWW-Authenticate", r#"Basic realm="hostile""#);
        }
        serve_image(req, "app", "1", &image).unwrap_or_else(|| Reply::status(404))
    })
    .unwrap()
}

fn basic(server_address: &str) -> Option<AuthConfig> {
    Some(AuthConfig {
        username: "user".into(),
        password: "pass".into(),
        server_address: server_address.into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn credentials_go_only_to_the_registry_they_were_given_for() {
    let image = small_image();
    let reg = basic_auth_registry(image.clone());
    let (d, _certs) = daemon().await;
    let name = format!("{}/app:1", reg.host());

    // Credentials kubelet found for another registry are not sent here.
    let (res, _) = pull(&d, &name, basic("other.example:5000")).await;
    assert_eq!(res.unwrap_err().code(), Code::PermissionDenied);
    assert!(
        reg.requests()
            .iter()
            .all(|r| r.header("authorization").is_none()),
        "credentials for other.example:5000 were sent to {}",
        reg.host()
    );
    // Scoped to this registry (written as kubelet writes it), they are used.
    let (res, _) = pull(&d, &name, basic(&format!("http://{}/v2/", reg.host()))).await;
    assert_eq!(res.expect("pull"), image.id());
}

#[tokio::test]
async fn credentials_are_never_sent_to_a_mirror() {
    // A mirror that asks for credentials: it must get none of upstream.example's
    // (a mirror that needs some gets them from its hosts.toml `header`).
    let mirror = basic_auth_registry(small_image());
    let hosts = format!(
        "server = \"http://127.0.0.1:9\"\n[host.\"http://{}\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
        mirror.host()
    );
    let (d, _certs) = daemon_with_hosts(Some(("upstream.example", hosts))).await;
    let (res, _) = pull(&d, "upstream.example/app:1", basic("upstream.example")).await;
    let status = res.expect_err("the mirror gets no credentials and upstream is down");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let seen = mirror.requests();
    assert!(!seen.is_empty(), "the mirror was not tried");
    assert!(
        seen.iter().all(|r| r.header("authorization").is_none()),
        "upstream.example's credentials were sent to the mirror"
    );
}

#[tokio::test]
async fn an_identity_token_is_exchanged_with_the_refresh_token_grant() {
    let image = small_image();
    let served = image.clone();
    let reg = HostileRegistry::start(move |req: &Request| {
        let host = req.header("host").unwrap_or("").to_owned();
        if req.path() == "/token" {
            let body = String::from_utf8_lossy(&req.body).into_owned();
            if req.method == "POST"
                && body.contains("grant_type=refresh_token")
                && body.contains("refresh_token=the-refresh-token")
            {
                return Reply::ok("application/json", br#"{"access_token":"granted"}"#.to_vec());
            }
            return Reply::status(401);
        }
        if req.header("authorization") != Some("Bearer granted") {
            return Reply::status(401).header(
                "WWW-Authenticate",
                &format!(
                    r#"Bearer realm="http://{host}/token",service="hostile",scope="repository:app:pull""#
                ),
            );
        }
        serve_image(req, "app", "1", &served).unwrap_or_else(|| Reply::status(404))
    })
    .unwrap();
    let (d, _certs) = daemon().await;
    let (res, _) = pull(
        &d,
        &format!("{}/app:1", reg.host()),
        Some(AuthConfig {
            identity_token: "the-refresh-token".into(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(res.expect("pull with an identity token"), image.id());
    let post = reg
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path() == "/token")
        .expect("a POST to the token realm");
    let body = String::from_utf8_lossy(&post.body).into_owned();
    for field in [
        "grant_type=refresh_token",
        "service=hostile",
        "scope=repository%3Aapp%3Apull",
        "client_id=berth",
    ] {
        assert!(body.contains(field), "{field} missing from {body:?}");
    }
    // The refresh token itself never goes to the registry as a bearer token.
    assert!(
        reg.requests()
            .iter()
            .all(|r| r.header("authorization") != Some("Bearer the-refresh-token"))
    );
}
