//! crictl itself (v1.37, from integration/scripts/install-deps.sh) against the
//! streaming server, behind a minimal CRI endpoint whose Exec/Attach/PortForward
//! RPCs register requests exactly as berthd will. Skipped with a message when
//! crictl is not installed.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1::image_service_server::{ImageService, ImageServiceServer};
use berth_proto::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use berth_proto::v1::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, ImageFsInfoRequest,
    ImageFsInfoResponse, PortForwardRequest, PortForwardResponse, VersionRequest, VersionResponse,
};
use berth_stream::{RequestError, StreamConfig, StreamServer};
use support::{echo_server, start_server};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

struct Cri {
    streams: Arc<StreamServer>,
}

fn invalid(e: RequestError) -> Status {
    Status::invalid_argument(e.to_string())
}

#[tonic::async_trait]
impl RuntimeService for Cri {
    async fn version(
        &self,
        _r: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "berth-stream-test".into(),
            runtime_version: "0".into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn exec(&self, r: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        let r = r.into_inner();
        let url = self
            .streams
            .register_exec(berth_stream::ExecRequest {
                container_id: r.container_id,
                cmd: r.cmd,
                tty: r.tty,
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
            })
            .map_err(invalid)?;
        Ok(Response::new(ExecResponse { url }))
    }

    async fn attach(&self, r: Request<AttachRequest>) -> Result<Response<AttachResponse>, Status> {
        let r = r.into_inner();
        let url = self
            .streams
            .register_attach(berth_stream::AttachRequest {
                container_id: r.container_id,
                tty: r.tty,
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
            })
            .map_err(invalid)?;
        Ok(Response::new(AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        r: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        let r = r.into_inner();
        let url = self
            .streams
            .register_portforward(berth_stream::PortForwardRequest {
                pod_sandbox_id: r.pod_sandbox_id,
                ports: r.port,
            })
            .map_err(invalid)?;
        Ok(Response::new(PortForwardResponse { url }))
    }
}

struct Images;

#[tonic::async_trait]
impl ImageService for Images {
    async fn image_fs_info(
        &self,
        _r: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        Ok(Response::new(ImageFsInfoResponse::default()))
    }
}

struct Endpoint {
    socket: PathBuf,
    dir: PathBuf,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn cri_endpoint(name: &str) -> Endpoint {
    let streams = Arc::new(start_server(StreamConfig::default()).await);
    let dir =
        std::env::temp_dir().join(format!("berth-stream-crictl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("cri.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(RuntimeServiceServer::new(Cri { streams }))
            .add_service(ImageServiceServer::new(Images))
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await
            .unwrap();
    });
    Endpoint { socket, dir }
}

fn crictl() -> Option<PathBuf> {
    let dir = std::env::var_os("BERTH_TOOLS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/berth/tools/bin"));
    let bin = dir.join("crictl");
    if bin.exists() {
        Some(bin)
    } else {
        eprintln!(
            "SKIP: {} not found; run integration/scripts/install-deps.sh",
            bin.display()
        );
        None
    }
}

fn crictl_cmd(bin: &PathBuf, ep: &Endpoint) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin);
    let endpoint = format!("unix://{}", ep.socket.display());
    c.args([
        "--runtime-endpoint",
        &endpoint,
        "--image-endpoint",
        &endpoint,
        "--timeout",
        "10s",
    ])
    .env("HOME", &ep.dir)
    .kill_on_drop(true);
    c
}

async fn output(mut c: tokio::process::Command, stdin: &[u8]) -> std::process::Output {
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("crictl starts");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("crictl finished within 60 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_exec_with_piped_stdin_and_exit_codes() {
    let Some(bin) = crictl() else { return };
    let ep = cri_endpoint("exec").await;
    for transport in ["spdy", "websocket"] {
        let mut c = crictl_cmd(&bin, &ep);
        c.args([
            "exec",
            "-r",
            transport,
            "-i",
            "c1",
            "sh",
            "-c",
            "tr a-z A-Z; exit 4",
        ]);
        let out = output(c, b"from crictl\n").await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "FROM CRICTL\n",
            "{transport}: {out:?}"
        );
        // crictl reports the remote exit code from the Status and fails.
        assert!(!out.status.success(), "{transport}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("command terminated with exit code 4"),
            "{transport}: {out:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_exec_tty_through_a_real_terminal() {
    let Some(bin) = crictl() else { return };
    if !std::path::Path::new("/usr/bin/script").exists() {
        eprintln!("SKIP: script(1) not installed");
        return;
    }
    let ep = cri_endpoint("tty").await;
    for transport in ["spdy", "websocket"] {
        let endpoint = format!("unix://{}", ep.socket.display());
        // script(1) gives crictl a real pseudo-terminal on stdin/stdout, as a user has.
        let line = format!(
            "{} --runtime-endpoint {endpoint} --image-endpoint {endpoint} exec -r {transport} -it c1 sh -c 'test -t 0 && echo tty-ok; read x; echo got-$x'",
            bin.display()
        );
        let mut c = tokio::process::Command::new("script");
        c.args(["-qefc", &line, "/dev/null"])
            .env("HOME", &ep.dir)
            .kill_on_drop(true);
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut seen = String::new();
        // Wait for the remote shell to be up before typing.
        tokio::time::timeout(Duration::from_secs(30), async {
            while !seen.contains("tty-ok") {
                let mut l = String::new();
                if stdout.read_line(&mut l).await.unwrap() == 0 {
                    break;
                }
                seen.push_str(&l);
            }
        })
        .await
        .expect("tty-ok within 30 s");
        input.write_all(b"typed\r").await.unwrap();
        let mut rest = String::new();
        tokio::time::timeout(Duration::from_secs(30), stdout.read_to_string(&mut rest))
            .await
            .expect("crictl ended within 30 s")
            .unwrap();
        seen.push_str(&rest);
        let status = child.wait().await.unwrap();
        assert!(seen.contains("tty-ok"), "{transport}: {seen:?}");
        assert!(seen.contains("got-typed"), "{transport}: {seen:?}");
        assert!(status.success(), "{transport}: {status:?} {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_attach() {
    let Some(bin) = crictl() else { return };
    let ep = cri_endpoint("attach").await;
    for transport in ["spdy", "websocket"] {
        let mut c = crictl_cmd(&bin, &ep);
        c.args(["attach", "-r", transport, "-i", "c1"]);
        let out = output(c, b"hello attach\n").await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "attached\nhello attach\n",
            "{transport}: {out:?}"
        );
        assert!(out.status.success(), "{transport}: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_port_forward_to_a_tcp_server() {
    let Some(bin) = crictl() else { return };
    let ep = cri_endpoint("pf").await;
    let echo = echo_server().await;
    for transport in ["spdy", "websocket"] {
        // Pick a free local port for crictl to listen on.
        let local = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = crictl_cmd(&bin, &ep);
        c.args([
            "port-forward",
            "-r",
            transport,
            "pod1",
            &format!("{local}:{echo}"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(30), async {
            while !line.contains("Forwarding from") {
                line.clear();
                if stdout.read_line(&mut line).await.unwrap() == 0 {
                    break;
                }
            }
        })
        .await
        .expect("crictl forwards within 30 s");
        assert!(line.contains("Forwarding from"), "{transport}: {line}");
        for round in 0..2 {
            let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", local))
                .await
                .unwrap();
            let msg = format!("round {round} over {transport}");
            conn.write_all(msg.as_bytes()).await.unwrap();
            let mut got = vec![0u8; msg.len()];
            tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut got))
                .await
                .expect("echo within 10 s")
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&got), msg);
        }
        child.kill().await.unwrap();
    }
}
