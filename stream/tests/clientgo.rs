//! End-to-end tests with real clients: client-go's SPDY and WebSocket executors
//! and its port-forwarder (the code crictl and critest run), against real host
//! processes and a real TCP echo server.

mod support;

use std::time::Duration;

use berth_stream::{AttachRequest, ExecRequest, PortForwardRequest, StreamConfig};
use support::{echo_server, raw_request, run_goclient, start_server};

const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];

fn exec(cmd: &[&str], tty: bool, stdin: bool, stderr: bool) -> ExecRequest {
    ExecRequest {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_delivers_stdout_stderr_and_success() {
    let server = start_server(StreamConfig::default()).await;
    for transport in TRANSPORTS {
        let url = server
            .register_exec(exec(
                &["sh", "-c", "echo out; echo err >&2"],
                false,
                false,
                true,
            ))
            .unwrap();
        let run = run_goclient(&["exec", "-url", &url, "-transport", transport], Some(b"")).await;
        assert_eq!(run.result, "ok", "{transport}: {run:?}");
        assert_eq!(run.stdout, "out\n", "{transport}");
        assert!(run.stderr.starts_with("err\n"), "{transport}: {run:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reports_the_exit_code() {
    let server = start_server(StreamConfig::default()).await;
    for transport in TRANSPORTS {
        let url = server
            .register_exec(exec(
                &["sh", "-c", "echo before; exit 7"],
                false,
                false,
                true,
            ))
            .unwrap();
        let run = run_goclient(&["exec", "-url", &url, "-transport", transport], Some(b"")).await;
        assert_eq!(run.result, "exit:7", "{transport}: {run:?}");
        assert_eq!(run.stdout, "before\n", "{transport}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_passes_stdin_through() {
    let server = start_server(StreamConfig::default()).await;
    for transport in TRANSPORTS {
        let url = server
            .register_exec(exec(
                &["sh", "-c", "tr a-z A-Z; echo done"],
                false,
                true,
                true,
            ))
            .unwrap();
        let run = run_goclient(
            &["exec", "-url", &url, "-transport", transport, "-stdin"],
            Some(b"hello stdin\nsecond line\n"),
        )
        .await;
        assert_eq!(run.result, "ok", "{transport}: {run:?}");
        assert_eq!(
            run.stdout, "HELLO STDIN\nSECOND LINE\ndone\n",
            "{transport}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_ends_when_the_process_exits_while_stdin_stays_open() {
    let server = start_server(StreamConfig::default()).await;
    for transport in TRANSPORTS {
        let url = server
            .register_exec(exec(&["sh", "-c", "echo quick; exit 2"], false, true, true))
            .unwrap();
        // stdin None: the client's stdin stays open until it exits by itself.
        let started = std::time::Instant::now();
        let run = run_goclient(
            &["exec", "-url", &url, "-transport", transport, "-stdin"],
            None,
        )
        .await;
        assert_eq!(run.result, "exit:2", "{transport}: {run:?}");
        assert_eq!(run.stdout, "quick\n");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{transport} waited for stdin"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_tty_runs_on_a_terminal_and_applies_resizes() {
    let server = start_server(StreamConfig::default()).await;
    for transport in TRANSPORTS {
        let url = server
            .register_exec(exec(
                &["sh", "-c", "test -t 0 && echo on-a-tty; sleep 1; stty size"],
                true,
                true,
                false,
            ))
            .unwrap();
        let run = run_goclient(
            &[
                "exec",
                "-url",
                &url,
                "-transport",
                transport,
                "-stdin",
                "-tty",
                "-stderr=false",
                "-resize",
                "90x20,123x45",
            ],
            None,
        )
        .await;
        assert_eq!(run.result, "ok", "{transport}: {run:?}");
        // A terminal turns \n into \r\n.
        assert_eq!(run.stdout, "on-a-tty\r\n45 123\r\n", "{transport}: {run:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_failure_in_the_backend_reaches_the_client() {
    let server = start_server(StreamConfig::default()).await;
    for transport in TRANSPORTS {
        let mut req = exec(&["true"], false, false, true);
        req.container_id = "missing".into();
        let url = server.register_exec(req).unwrap();
        let run = run_goclient(&["exec", "-url", &url, "-transport", transport], Some(b"")).await;
        assert!(
            run.result.starts_with("error:")
                && run.result.contains("container \"missing\" not found"),
            "{transport}: {run:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_connects_stdin_and_stdout() {
    let server = start_server(StreamConfig::default()).await;
    for transport in TRANSPORTS {
        let url = server
            .register_attach(AttachRequest {
                container_id: "c1".into(),
                tty: false,
                stdin: true,
                stdout: true,
                stderr: true,
            })
            .unwrap();
        let run = run_goclient(
            &["exec", "-url", &url, "-transport", transport, "-stdin"],
            Some(b"typed into attach\n"),
        )
        .await;
        assert_eq!(run.result, "ok", "{transport}: {run:?}");
        assert_eq!(run.stdout, "attached\ntyped into attach\n", "{transport}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_a_real_tcp_server() {
    let echo = echo_server().await;
    let server = start_server(StreamConfig::default()).await;
    for transport in TRANSPORTS {
        let url = server
            .register_portforward(PortForwardRequest {
                pod_sandbox_id: "pod1".into(),
                ports: vec![i32::from(echo)],
            })
            .unwrap();
        let port = echo.to_string();
        let run = run_goclient(
            &[
                "portforward",
                "-url",
                &url,
                "-transport",
                transport,
                "-port",
                &port,
                "-payload",
                "through the pod",
                "-conns",
                "3",
            ],
            Some(b""),
        )
        .await;
        assert_eq!(run.result, "ok", "{transport}: {run:?}");
        assert_eq!(
            run.stdout, "through the pod\nthrough the pod\nthrough the pod\n",
            "{transport}: three connections, three request ids"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_errors_are_written_on_the_error_stream() {
    let server = start_server(StreamConfig::default()).await;
    for transport in TRANSPORTS {
        let url = server
            .register_portforward(PortForwardRequest {
                pod_sandbox_id: "no-such-pod".into(),
                ports: vec![],
            })
            .unwrap();
        let run = run_goclient(
            &[
                "portforward",
                "-url",
                &url,
                "-transport",
                transport,
                "-port",
                "8080",
                "-payload",
                "x",
            ],
            Some(b""),
        )
        .await;
        assert!(run.result.starts_with("error:"), "{transport}: {run:?}");
        // client-go logs what the server wrote on the error stream.
        assert!(
            run.stderr
                .contains("error forwarding port 8080 to pod no-such-pod"),
            "{transport}: {run:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_token_is_not_found() {
    let server = start_server(StreamConfig::default()).await;
    let url = server
        .register_exec(exec(&["true"], false, false, true))
        .unwrap();
    let first = run_goclient(&["exec", "-url", &url, "-transport", "spdy"], Some(b"")).await;
    assert_eq!(first.result, "ok", "{first:?}");
    let second = run_goclient(&["exec", "-url", &url, "-transport", "spdy"], Some(b"")).await;
    // client-go shows the body of the non-101 answer; the raw requests below check the 404.
    assert!(
        second.result.contains("unknown or expired exec token"),
        "{second:?}"
    );

    let path = url.strip_prefix(server.base_url()).unwrap();
    let (status, _) = raw_request(
        server.local_addr(),
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = raw_request(
        server.local_addr(),
        "POST /exec/not-a-token HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_protocol_is_forbidden_with_the_accepted_list() {
    let server = start_server(StreamConfig::default()).await;
    let url = server
        .register_exec(exec(&["true"], false, false, true))
        .unwrap();
    let path = url.strip_prefix(server.base_url()).unwrap();
    let (status, headers) = raw_request(
        server.local_addr(),
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
             X-Stream-Protocol-Version: v9.channel.k8s.io\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 403);
    let accepted = headers
        .iter()
        .find(|(k, _)| k == "x-accepted-stream-protocol-versions")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    assert!(accepted.contains("v4.channel.k8s.io"), "{headers:?}");

    let url = server
        .register_portforward(PortForwardRequest {
            pod_sandbox_id: "pod1".into(),
            ports: vec![],
        })
        .unwrap();
    let path = url.strip_prefix(server.base_url()).unwrap();
    let (status, headers) = raw_request(
        server.local_addr(),
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
             X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "x-accepted-stream-protocol-versions" && v == "portforward.k8s.io"),
        "{headers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_opens_its_streams_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start_server(StreamConfig {
        stream_creation_timeout: Duration::from_millis(500),
        linger: Duration::from_millis(500),
        ..StreamConfig::default()
    })
    .await;
    let url = server
        .register_exec(exec(&["true"], false, false, true))
        .unwrap();
    let path = url.strip_prefix(server.base_url()).unwrap();
    let mut conn = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    conn.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
             X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Read the 101 and then whatever follows until the server closes on us.
    let mut all = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut all)).await;
    assert!(closed.is_ok(), "server kept a silent client connected");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    // The server still serves others.
    let url = server
        .register_exec(exec(&["echo", "still here"], false, false, true))
        .unwrap();
    let run = run_goclient(&["exec", "-url", &url, "-transport", "spdy"], Some(b"")).await;
    assert_eq!(run.stdout, "still here\n", "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_leaves_no_process_behind() {
    for transport in TRANSPORTS {
        let server = start_server(StreamConfig::default()).await;
        let dir = std::env::temp_dir().join(format!(
            "berth-stream-vanish-{}-{transport}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
        let url = server
            .register_exec(exec(&["sh", "-c", &script], false, true, true))
            .unwrap();
        let mut client = tokio::process::Command::new(support::goclient())
            .args(["exec", "-url", &url, "-transport", transport, "-stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = wait_for_pid(&pidfile).await;
        assert!(process_alive(pid), "exec'd process runs");
        client.kill().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while process_alive(pid) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let alive = process_alive(pid);
        if alive {
            // SAFETY: plain kill(2) on a pid we started; cleanup only.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            !alive,
            "{transport}: exec'd process {pid} outlived its client"
        );
    }
}

async fn wait_for_pid(path: &std::path::Path) -> i32 {
    for _ in 0..200 {
        if let Ok(s) = std::fs::read_to_string(path)
            && let Ok(pid) = s.trim().parse()
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the exec'd process never wrote {}", path.display());
}

/// True while `pid` exists and is not a zombie.
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_v4_is_served_and_unknown_subprotocols_are_refused() {
    let server = start_server(StreamConfig::default()).await;
    let url = server
        .register_exec(exec(
            &["sh", "-c", "echo over v4; echo e >&2; exit 5"],
            false,
            false,
            true,
        ))
        .unwrap();
    let run = run_goclient(
        &[
            "exec",
            "-url",
            &url,
            "-transport",
            "websocket",
            "-ws-protocols",
            "v4.channel.k8s.io",
        ],
        Some(b""),
    )
    .await;
    assert_eq!(run.result, "exit:5", "{run:?}");
    assert_eq!(run.stdout, "over v4\n");
    assert!(run.stderr.starts_with("e\n"), "{run:?}");

    let url = server
        .register_exec(exec(&["true"], false, false, true))
        .unwrap();
    let run = run_goclient(
        &[
            "exec",
            "-url",
            &url,
            "-transport",
            "websocket",
            "-ws-protocols",
            "v9.channel.k8s.io",
        ],
        Some(b""),
    )
    .await;
    assert!(run.result.starts_with("error:"), "{run:?}");
}

/// critest's "exec with tty=true and stdin=true": the client opens a resize
/// stream but sends no size, and keeps stdin open for 20 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_tty_and_no_resizes_finishes_like_critest_expects() {
    let server = start_server(StreamConfig::default()).await;
    for transport in TRANSPORTS {
        let url = server
            .register_exec(exec(&["echo", "hello"], true, true, false))
            .unwrap();
        let started = std::time::Instant::now();
        let run = run_goclient(
            &[
                "exec",
                "-url",
                &url,
                "-transport",
                transport,
                "-stdin",
                "-tty",
            ],
            None,
        )
        .await;
        assert_eq!(run.result, "ok", "{transport}: {run:?}");
        assert_eq!(run.stdout, "hello\r\n", "{transport}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{transport} waited for stdin"
        );
    }
}
