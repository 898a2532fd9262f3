//! Shared pieces of the integration tests: a backend that runs real host
//! processes (pipes, or a real pseudo-terminal for tty) and dials real TCP
//! ports, the client-go test client, and a raw HTTP helper.

#![allow(dead_code)]

pub mod raw;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use berth_stream::{
    AttachRequest, BackendError, Connection, ExecRequest, StreamBackend, StreamConfig, StreamIo,
    StreamServer, TerminalSize,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

/// Runs commands on the host. Attach starts `sh -c 'echo attached; cat'` and
/// attaches to it (there are no containers in this crate).
#[derive(Debug, Default)]
pub struct HostBackend;

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

impl HostBackend {
    async fn run(&self, cmd: Vec<String>, tty: bool, io: StreamIo) -> Result<i32, BackendError> {
        if tty {
            return self.run_tty(cmd, io).await;
        }
        let mut command = Command::new(&cmd[0]);
        command
            .args(&cmd[1..])
            .stdin(if io.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(if io.stdout.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(if io.stderr.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| BackendError::with_source(format!("cannot start {:?}", cmd[0]), e))?;
        let stdin_task = match (io.stdin, child.stdin.take()) {
            (Some(mut from), Some(mut to)) => Some(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
            })),
            _ => None,
        };
        let out_task = match (io.stdout, child.stdout.take()) {
            (Some(mut to), Some(mut from)) => Some(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
            })),
            _ => None,
        };
        let err_task = match (io.stderr, child.stderr.take()) {
            (Some(mut to), Some(mut from)) => Some(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
            })),
            _ => None,
        };
        let status = child
            .wait()
            .await
            .map_err(|e| BackendError::with_source("wait failed", e))?;
        // The process is gone: stop feeding stdin even if the client keeps it open.
        if let Some(t) = stdin_task {
            t.abort();
        }
        for t in [out_task, err_task].into_iter().flatten() {
            let _ = t.await;
        }
        Ok(exit_code(status))
    }

    async fn run_tty(&self, cmd: Vec<String>, io: StreamIo) -> Result<i32, BackendError> {
        let (master, slave) =
            open_pty().map_err(|e| BackendError::with_source("openpty failed", e))?;
        let mut command = Command::new(&cmd[0]);
        command
            .args(&cmd[1..])
            .stdin(Stdio::from(
                slave
                    .try_clone()
                    .map_err(|e| BackendError::with_source("dup", e))?,
            ))
            .stdout(Stdio::from(
                slave
                    .try_clone()
                    .map_err(|e| BackendError::with_source("dup", e))?,
            ))
            .stderr(Stdio::from(slave))
            .kill_on_drop(true);
        // SAFETY: the closure only calls async-signal-safe setsid and ioctl.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| BackendError::with_source(format!("cannot start {:?}", cmd[0]), e))?;
        drop(command);
        let resize_fd = master
            .try_clone()
            .map_err(|e| BackendError::with_source("dup", e))?;
        let write_fd = master
            .try_clone()
            .map_err(|e| BackendError::with_source("dup", e))?;
        let mut reader = tokio::fs::File::from_std(std::fs::File::from(master));
        let mut writer = tokio::fs::File::from_std(std::fs::File::from(write_fd));
        let resize_task = io.resize.map(|mut events| {
            tokio::spawn(async move {
                while let Some(size) = events.next().await {
                    set_winsize(&resize_fd, size);
                }
            })
        });
        let stdin_task = io.stdin.map(|mut from| {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut writer).await;
            })
        });
        let out_task = io.stdout.map(|mut to| {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                // EIO once the last slave fd closes: that is the terminal's EOF.
                while let Ok(n) = reader.read(&mut buf).await {
                    if n == 0 || to.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            })
        });
        let status = child
            .wait()
            .await
            .map_err(|e| BackendError::with_source("wait failed", e))?;
        for t in [stdin_task, resize_task].into_iter().flatten() {
            t.abort();
        }
        if let Some(t) = out_task {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        Ok(exit_code(status))
    }
}

fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    // SAFETY: openpty writes two fds into the provided ints; name/termios/winsize may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded, so both fds are open and owned by us alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}

fn set_winsize(fd: &OwnedFd, size: TerminalSize) {
    let ws = libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: fd is an open pty master and ws a valid winsize for TIOCSWINSZ.
    unsafe {
        libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws);
    }
}

impl StreamBackend for HostBackend {
    async fn exec(&self, req: ExecRequest, io: StreamIo) -> Result<i32, BackendError> {
        if req.container_id == "missing" {
            return Err(BackendError::new("container \"missing\" not found"));
        }
        self.run(req.cmd, req.tty, io).await
    }

    async fn attach(&self, req: AttachRequest, io: StreamIo) -> Result<(), BackendError> {
        let cmd = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "echo attached; cat".to_owned(),
        ];
        self.run(cmd, req.tty, io).await.map(|_| ())
    }

    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
    ) -> Result<Box<dyn Connection>, BackendError> {
        if pod_sandbox_id != "pod1" {
            return Err(BackendError::new(format!(
                "pod {pod_sandbox_id:?} not found"
            )));
        }
        let conn = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| {
            BackendError::with_source(format!("cannot connect to localhost:{port}: {e}"), e)
        })?;
        Ok(Box::new(conn))
    }
}

/// Starts a server with the host backend.
pub async fn start_server(config: StreamConfig) -> StreamServer {
    StreamServer::start(config, Arc::new(HostBackend))
        .await
        .expect("streaming server starts")
}

/// A TCP echo server on 127.0.0.1; returns its port.
pub async fn echo_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The client-go test client, built once per source version into
/// /var/cache/berth/stream (the Go module and build caches make rebuilds cheap).
pub fn goclient() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/goclient");
        let mut h = 0xcbf2_9ce4_8422_2325;
        for f in ["main.go", "go.mod", "go.sum"] {
            h = fnv(&std::fs::read(src.join(f)).expect("goclient sources"), h);
        }
        let mut dir = std::env::var_os("BERTH_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/berth"))
            .join("stream");
        if std::fs::create_dir_all(&dir).is_err() {
            // Not root and no cache override: build into cargo's per-target temp dir.
            dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("goclient");
            std::fs::create_dir_all(&dir).expect("goclient build dir");
        }
        let bin = dir.join(format!("goclient-{h:016x}"));
        if !bin.exists() {
            let tmp = dir.join(format!("goclient-{h:016x}.tmp{}", std::process::id()));
            let out = std::process::Command::new("go")
                .args(["build", "-trimpath", "-o"])
                .arg(&tmp)
                .arg(".")
                .current_dir(&src)
                .env("CGO_ENABLED", "0")
                .output()
                .expect("go is installed (integration/scripts/install-deps.sh requires it)");
            assert!(
                out.status.success(),
                "go build of the test client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::rename(&tmp, &bin).expect("install goclient");
        }
        bin
    })
    .clone()
}

/// What the Go client did.
#[derive(Debug)]
pub struct ClientRun {
    pub stdout: String,
    pub stderr: String,
    /// The `GOCLIENT_RESULT=` marker: `ok`, `exit:<n>` or `error:<msg>`.
    pub result: String,
}

/// Runs the Go client with `args`, feeding `stdin` (None: stdin stays open until
/// the client exits), with a hard timeout.
pub async fn run_goclient(args: &[&str], stdin: Option<&[u8]>) -> ClientRun {
    let mut child = Command::new(goclient())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("goclient starts");
    let mut child_stdin = child.stdin.take().unwrap();
    let keep_open = match stdin {
        Some(bytes) => {
            child_stdin.write_all(bytes).await.unwrap();
            drop(child_stdin);
            None
        }
        None => Some(child_stdin),
    };
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("goclient finished within 60 s")
        .expect("goclient ran");
    drop(keep_open);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let result = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("GOCLIENT_RESULT="))
        .unwrap_or("<no result line>")
        .to_owned();
    ClientRun {
        stdout,
        stderr,
        result,
    }
}

/// Sends a raw HTTP/1.1 request and returns the status line and headers (lowercased names).
pub async fn raw_request(
    addr: std::net::SocketAddr,
    request: &str,
) -> (u16, Vec<(String, String)>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("response within 10 s")
            .unwrap();
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}
