//! Exec, attach and port-forward through berthd's streaming server with crictl
//! itself, against real busybox containers in a real pod, over SPDY and WebSocket;
//! then critest's streaming specs in both modes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use berth_integration::fixtures::{BUSYBOX, write_file};
use berth_integration::setup::Node;
use berth_integration::tools::{self, CritestRun, crictl_ok};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];

/// Removes the pod (and its containers) even when the test fails.
struct PodGuard {
    ep: String,
    crictl: PathBuf,
    pod: String,
}

impl Drop for PodGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.crictl)
            .args(["--runtime-endpoint", &self.ep, "--timeout", "20s"])
            .args(["rmp", "-f", &self.pod])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn crictl_cmd(ep: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(tools::tool("crictl").expect("crictl"));
    c.args([
        "--runtime-endpoint",
        ep,
        "--image-endpoint",
        ep,
        "--timeout",
        "20s",
    ])
    .kill_on_drop(true);
    c
}

/// Runs crictl with `stdin` piped in (then closed), within 60 s.
async fn crictl_with_stdin(ep: &str, args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut c = crictl_cmd(ep);
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("crictl starts");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).await.expect("write stdin");
    drop(input);
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("crictl finished within 60 s")
        .expect("crictl output")
}

/// Creates and starts a container from `config` (JSON) in the pod; returns its id.
async fn run_container(
    ep: &str,
    dir: &Path,
    pod_id: &str,
    pod: &str,
    name: &str,
    config: &str,
) -> String {
    let path = write_file(dir, &format!("{name}.json"), config);
    let id = crictl_ok(ep, &["create", pod_id, &path, pod])
        .await
        .trim()
        .to_owned();
    crictl_ok(ep, &["start", &id]).await;
    for _ in 0..100 {
        let v: serde_json::Value =
            serde_json::from_str(&crictl_ok(ep, &["inspect", &id]).await).expect("JSON");
        if v["status"]["state"] == "CONTAINER_RUNNING" {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("container {name} never ran");
}

/// The gRPC code of a call that must fail.
fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Code {
    r.expect_err("must fail").code()
}

/// Processes on the host whose command line contains `marker`.
fn host_processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&c).replace('\0', " ");
            if text.contains(marker) {
                found.push(format!("{}: {text}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[tokio::test]
async fn crictl_exec_attach_and_port_forward_in_a_busybox_pod() {
    let node = Node::start().await.expect("node");
    let ep = node.daemon.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = write_file(
        dir.path(),
        "pod.json",
        &format!(
            r#"{{"metadata":{{"name":"streams","namespace":"default","uid":"streams-uid","attempt":0}},
                "log_directory":"{}","linux":{{}}}}"#,
            dir.path().join("logs").display()
        ),
    );
    let pod_id = crictl_ok(&ep, &["runp", &pod]).await.trim().to_owned();
    let _guard = PodGuard {
        ep: ep.clone(),
        crictl: tools::tool("crictl").expect("crictl"),
        pod: pod_id.clone(),
    };
    crictl_ok(&ep, &["pull", BUSYBOX]).await;
    // A web server on port 80 inside the pod (its own network namespace).
    let web = run_container(
        &ep,
        dir.path(),
        &pod_id,
        &pod,
        "web",
        &format!(
            r#"{{"metadata":{{"name":"web"}},"image":{{"image":"{BUSYBOX}"}},
                "command":["sh","-c","mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 80 -h /www"],
                "log_path":"web.log"}}"#
        ),
    )
    .await;

    // exec -i with piped stdin: stdout, stderr and the exit code come back.
    for transport in TRANSPORTS {
        let out = crictl_with_stdin(
            &ep,
            &[
                "exec",
                "-r",
                transport,
                "-i",
                &web,
                "sh",
                "-c",
                "tr a-z A-Z; echo to-stderr >&2; exit 4",
            ],
            b"from crictl\n",
        )
        .await;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(stdout, "FROM CRICTL\n", "{transport}: {out:?}");
        assert!(stderr.contains("to-stderr"), "{transport}: {stderr}");
        assert!(
            stderr.contains("command terminated with exit code 4"),
            "{transport}: {stderr}"
        );
        // The command ran in the container: its root is the busybox image.
        let out = crictl_with_stdin(
            &ep,
            &["exec", "-r", transport, &web, "cat", "/www/index.html"],
            b"",
        )
        .await;
        assert!(out.status.success(), "{transport}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello-from-pod\n");
    }

    // A command that does not exist in the container fails with a message naming it.
    for transport in TRANSPORTS {
        let out =
            crictl_with_stdin(&ep, &["exec", "-r", transport, &web, "/no/such/cmd"], b"").await;
        assert!(!out.status.success(), "{transport}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("/no/such/cmd"), "{transport}: {stderr}");
    }

    // exec -it through a real pseudo-terminal (script(1)), typing into it.
    let crictl_bin = tools::tool("crictl").expect("crictl");
    for transport in TRANSPORTS {
        let line = format!(
            "stty cols 97 rows 31; {} --runtime-endpoint {ep} --timeout 20s exec -r {transport} -it {web} sh -c 'test -t 0 && echo tty-ok; read x; echo got-$x; echo size-$(stty size | tr \" \" x); exit 3'",
            crictl_bin.display()
        );
        let mut c = tokio::process::Command::new("script");
        c.args(["-qefc", &line, "/dev/null"])
            .kill_on_drop(true)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("script starts");
        let mut input = child.stdin.take().expect("stdin");
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut seen = String::new();
        tokio::time::timeout(Duration::from_secs(30), async {
            while !seen.contains("tty-ok") {
                let mut l = String::new();
                if stdout.read_line(&mut l).await.expect("read") == 0 {
                    break;
                }
                seen.push_str(&l);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{transport}: tty-ok within 30 s, got {seen:?}"));
        input.write_all(b"typed\r").await.expect("type");
        let mut rest = String::new();
        tokio::time::timeout(Duration::from_secs(30), stdout.read_to_string(&mut rest))
            .await
            .expect("crictl ended within 30 s")
            .expect("read");
        seen.push_str(&rest);
        let status = child.wait().await.expect("wait");
        assert!(seen.contains("tty-ok"), "{transport}: {seen:?}");
        assert!(seen.contains("got-typed"), "{transport}: {seen:?}");
        // crictl sent its terminal's size; the container's terminal has it.
        assert!(seen.contains("size-31x97"), "{transport}: {seen:?}");
        // script -e passes crictl's failure (exit code 3 in the container) on.
        assert!(!status.success(), "{transport}: {status:?} {seen:?}");
    }

    // A client that vanishes mid-exec leaves no process behind in the container.
    for transport in TRANSPORTS {
        let marker = format!("4242{}", if transport == "spdy" { 1 } else { 2 });
        let mut c = crictl_cmd(&ep);
        c.args(["exec", "-r", transport, "-i", &web, "sleep", &marker])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = c.spawn().expect("crictl starts");
        let mut running = false;
        for _ in 0..100 {
            if host_processes_with(&format!("sleep {marker}"))
                .iter()
                .any(|p| !p.contains("crictl"))
            {
                running = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(running, "{transport}: the exec'd sleep never started");
        child.kill().await.expect("kill crictl");
        let mut left = Vec::new();
        for _ in 0..100 {
            left = host_processes_with(&format!("sleep {marker}"));
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(left.is_empty(), "{transport}: left behind: {left:?}");
    }

    // attach to a container whose stdin is open once: what we send comes back, and
    // closing our stdin closes the container's, so it finishes and attach ends.
    for transport in TRANSPORTS {
        let id = run_container(
            &ep,
            dir.path(),
            &pod_id,
            &pod,
            &format!("att-{transport}"),
            &format!(
                r#"{{"metadata":{{"name":"att-{transport}"}},"image":{{"image":"{BUSYBOX}"}},
                    "command":["sh","-c","while read l; do echo got-$l; echo err-$l >&2; done; echo bye"],
                    "stdin":true,"stdin_once":true,"tty":false,"log_path":"att-{transport}.log"}}"#
            ),
        )
        .await;
        let out =
            crictl_with_stdin(&ep, &["attach", "-r", transport, "-i", &id], b"one\ntwo\n").await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{transport}: {out:?}");
        let v: serde_json::Value =
            serde_json::from_str(&crictl_ok(&ep, &["inspect", &id]).await).expect("JSON");
        let log = std::fs::read_to_string(v["status"]["logPath"].as_str().unwrap_or_default())
            .unwrap_or_else(|e| format!("{e}"));
        assert_eq!(
            stdout, "got-one\ngot-two\nbye\n",
            "{transport}: {out:?}\ncontainer log:\n{log}"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("err-two"),
            "{transport}: {out:?}"
        );
    }

    // attach -it to a container with a terminal, through a real pseudo-terminal: our
    // keystrokes reach it and the terminal takes our size.
    for transport in TRANSPORTS {
        let id = run_container(
            &ep,
            dir.path(),
            &pod_id,
            &pod,
            &format!("tty-{transport}"),
            &format!(
                r#"{{"metadata":{{"name":"tty-{transport}"}},"image":{{"image":"{BUSYBOX}"}},
                    "command":["sh","-c","read x; echo got-$x-$(stty size | tr ' ' x)"],
                    "stdin":true,"tty":true,"log_path":"tty-{transport}.log"}}"#
            ),
        )
        .await;
        let line = format!(
            "stty cols 88 rows 22; {} --runtime-endpoint {ep} --timeout 20s attach -r {transport} -it {id}",
            crictl_bin.display()
        );
        let mut c = tokio::process::Command::new("script");
        c.args(["-qefc", &line, "/dev/null"])
            .kill_on_drop(true)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("script starts");
        let mut input = child.stdin.take().expect("stdin");
        let mut stdout = child.stdout.take().expect("stdout");
        // Type until the container reads a line (attach needs a moment to connect;
        // keystrokes sent before it are lost).
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut next_key = tokio::time::Instant::now();
        while !String::from_utf8_lossy(&seen).contains("got-hi") {
            if tokio::time::Instant::now() >= next_key {
                input.write_all(b"hi\r").await.expect("type");
                next_key += Duration::from_millis(500);
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout_at(next_key, stdout.read(&mut buf)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => panic!("{transport}: {e}"),
                Err(_) => {}
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{transport}: no echo within 30 s: {:?}",
                String::from_utf8_lossy(&seen)
            );
        }
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stdout.read_to_end(&mut rest))
            .await
            .expect("attach ended with the container within 30 s")
            .expect("read");
        seen.extend_from_slice(&rest);
        let seen = String::from_utf8_lossy(&seen);
        assert!(seen.contains("got-hi-22x88"), "{transport}: {seen:?}");
        let status = child.wait().await.expect("wait");
        assert!(status.success(), "{transport}: {status:?} {seen:?}");
    }

    // port-forward reaches the web server on the pod's port 80.
    for transport in TRANSPORTS {
        let local = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut c = crictl_cmd(&ep);
        c.args([
            "port-forward",
            "-r",
            transport,
            &pod_id,
            &format!("{local}:80"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().expect("crictl starts");
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(30), async {
            while !line.contains("Forwarding from") {
                line.clear();
                if stdout.read_line(&mut line).await.expect("read") == 0 {
                    break;
                }
            }
        })
        .await
        .expect("crictl forwards within 30 s");
        assert!(line.contains("Forwarding from"), "{transport}: {line}");
        for round in 0..3 {
            let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", local))
                .await
                .expect("connect");
            conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
                .await
                .expect("request");
            let mut resp = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut resp))
                .await
                .unwrap_or_else(|_| panic!("{transport} round {round}: response within 10 s"))
                .expect("read");
            let text = String::from_utf8_lossy(&resp);
            assert!(text.starts_with("HTTP/1.1 200 OK"), "{transport}: {text}");
            assert!(text.contains("hello-from-pod"), "{transport}: {text}");
        }
        child.kill().await.expect("kill crictl");
    }

    // Bad requests are refused at the RPC.
    let out = crictl_with_stdin(
        &ep,
        &["exec", "-r", "spdy", "no-such-container", "true"],
        b"",
    )
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not found") || stderr.contains("NotFound"),
        "{stderr}"
    );

    // The RPCs refuse bad requests with the CRI codes kubelet expects.
    let mut client = node.daemon.client().await.expect("client");
    let exec = |id: &str, tty: bool, stderr: bool| berth_proto::v1::ExecRequest {
        container_id: id.to_owned(),
        cmd: vec!["true".into()],
        tty,
        stdin: false,
        stdout: true,
        stderr,
    };
    assert_eq!(
        code(client.runtime.exec(exec(&web, true, true)).await),
        tonic::Code::InvalidArgument,
        "tty with stderr"
    );
    assert_eq!(
        code(
            client
                .runtime
                .exec(exec("no-such-container", false, true))
                .await
        ),
        tonic::Code::NotFound
    );
    let exited = crictl_ok(&ep, &["ps", "-a", "-q", "--name", "att-spdy"]).await;
    assert_eq!(
        code(client.runtime.exec(exec(exited.trim(), false, true)).await),
        tonic::Code::FailedPrecondition,
        "exec in an exited container"
    );
    assert_eq!(
        code(
            client
                .runtime
                .port_forward(berth_proto::v1::PortForwardRequest {
                    pod_sandbox_id: "no-such-pod".into(),
                    port: vec![80],
                })
                .await
        ),
        tonic::Code::NotFound
    );
    let url = client
        .runtime
        .exec(exec(&web, false, true))
        .await
        .expect("exec")
        .into_inner()
        .url;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    crictl_ok(&ep, &["stopp", &pod_id]).await;
    crictl_ok(&ep, &["rmp", &pod_id]).await;
}

#[tokio::test]
async fn critest_streaming_specs_in_both_modes() {
    let node = Node::start().await.expect("node");
    let ep = node.daemon.endpoint();
    for extra in [
        &[][..],
        &[
            "-websocket-exec",
            "-websocket-attach",
            "-websocket-portforward",
        ][..],
    ] {
        let mut args = vec!["--ginkgo.focus=Streaming"];
        args.extend_from_slice(extra);
        let CritestRun { out, text, summary } =
            tools::critest(&ep, &args, Duration::from_secs(600))
                .await
                .expect("critest");
        println!("critest streaming {extra:?}: {summary}");
        assert!(
            out.output.status.success(),
            "critest streaming {extra:?} failed: {summary}\n{text}\n{}",
            out.stderr()
        );
        assert!(summary.contains(" 0 Failed"), "{summary}");
    }
}
