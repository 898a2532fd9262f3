//! The remotecommand subprotocols (exec and attach) over a SPDY session:
//! stream types, the wait for the client's streams, resize messages and the
//! final status on the error stream. The transport-independent parts (status
//! JSON, resize parsing, running the backend) are shared with WebSocket.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use crate::api::{
    AttachRequest, BackendError, ClientInput, ClientOutput, ExecRequest, ResizeEvents,
    StreamBackend, StreamIo, TerminalSize,
};
use crate::spdy::frame::{goaway, rst};
use crate::spdy::{Session, SpdyStream};

/// A remotecommand protocol version, as named in `X-Stream-Protocol-Version` or the
/// WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Version {
    V1,
    V2,
    V3,
    V4,
    V5,
}

/// Versions offered over SPDY, newest first. v5 over SPDY behaves as v4.
pub(crate) const SPDY_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// WebSocket subprotocols for exec and attach, in kubelet's streaming library's
/// order: v5 and v4 (binary, JSON status), then the original `channel.k8s.io`
/// (binary) and `base64.channel.k8s.io` (text), both with a plain-text error
/// channel. Kubelet serves no v2/v3 over WebSocket, so neither do we.
pub(crate) const WEBSOCKET_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

impl Version {
    pub(crate) fn from_name(name: &str) -> Option<Version> {
        Some(match name {
            "v5.channel.k8s.io" => Version::V5,
            "v4.channel.k8s.io" => Version::V4,
            "v3.channel.k8s.io" => Version::V3,
            "v2.channel.k8s.io" => Version::V2,
            // An empty negotiation means a client from before versioning.
            "channel.k8s.io" | "" => Version::V1,
            _ => return None,
        })
    }

    /// v4 and later report a JSON `metav1.Status`; earlier ones plain text.
    fn json_status(self) -> bool {
        self >= Version::V4
    }

    /// v3 and later carry terminal resizes.
    fn has_resize(self) -> bool {
        self >= Version::V3
    }
}

/// What the client asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

impl Command {
    pub(crate) fn tty(&self) -> bool {
        match self {
            Command::Exec(r) => r.tty,
            Command::Attach(r) => r.tty,
        }
    }
    pub(crate) fn stdin(&self) -> bool {
        match self {
            Command::Exec(r) => r.stdin,
            Command::Attach(r) => r.stdin,
        }
    }
    pub(crate) fn stdout(&self) -> bool {
        match self {
            Command::Exec(r) => r.stdout,
            Command::Attach(r) => r.stdout,
        }
    }
    pub(crate) fn stderr(&self) -> bool {
        match self {
            Command::Exec(r) => r.stderr && !r.tty,
            Command::Attach(r) => r.stderr && !r.tty,
        }
    }
}

/// How a command ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Exec finished with this exit code (0 = success); attach ended (code 0).
    Exited(i32),
    /// The backend failed.
    Failed(BackendError),
    /// The client disconnected first; the backend future was dropped.
    ClientGone,
}

/// Runs the command, giving up (and dropping the backend's future, which kills
/// what it started) if the client goes away first.
pub(crate) async fn run<B: StreamBackend>(
    backend: &B,
    cmd: Command,
    io: StreamIo,
    client_gone: impl Future<Output = ()>,
) -> Outcome {
    let work = async {
        match cmd {
            Command::Exec(r) => backend.exec(r, io).await,
            Command::Attach(r) => backend.attach(r, io).await.map(|()| 0),
        }
    };
    tokio::select! {
        r = work => match r {
            Ok(code) => Outcome::Exited(code),
            Err(e) => Outcome::Failed(e),
        },
        () = client_gone => Outcome::ClientGone,
    }
}

/// The bytes written on the error stream for `outcome`, empty when nothing is to
/// be written (success in the plain-text versions).
pub(crate) fn status_bytes(version: Version, outcome: &Outcome) -> Vec<u8> {
    let (code, failure) = match outcome {
        Outcome::Exited(0) | Outcome::ClientGone => (0, None),
        Outcome::Exited(code) => (*code, None),
        Outcome::Failed(e) => (0, Some(e.message.clone())),
    };
    if !version.json_status() {
        return match (code, failure) {
            (0, None) => Vec::new(),
            (_, Some(msg)) => msg.into_bytes(),
            (code, None) => {
                format!("command terminated with non-zero exit code: {code}").into_bytes()
            }
        };
    }
    let status = match (code, failure) {
        (0, None) => json!({"metadata": {}, "status": "Success"}),
        (_, Some(msg)) => json!({
            "metadata": {},
            "status": "Failure",
            "message": msg,
            "reason": "InternalError",
            "details": {"causes": [{"message": msg}]},
            "code": 500,
        }),
        (code, None) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
    };
    status.to_string().into_bytes()
}

/// Largest resize backlog kept while waiting for the rest of a JSON object.
const MAX_RESIZE_BUFFER: usize = 64 * 1024;

/// Reads consecutive JSON `{"Width":..,"Height":..}` objects from `r` and
/// publishes each size. Ends at EOF or at the first malformed message.
pub(crate) async fn pump_resizes<R: AsyncRead + Unpin>(
    mut r: R,
    tx: watch::Sender<Option<TerminalSize>>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<TerminalSize>();
            match it.next() {
                Some(Ok(size)) => {
                    let used = it.byte_offset();
                    tx.send_replace(Some(size));
                    buf.drain(..used);
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    tracing::info!(error = %e, "malformed terminal resize message; ignoring further resizes");
                    return;
                }
                None => {
                    buf.clear();
                    break;
                }
            }
        }
        if buf.len() > MAX_RESIZE_BUFFER {
            tracing::info!("terminal resize message too large; ignoring further resizes");
            return;
        }
    }
}

/// The streams a SPDY remotecommand client opened.
#[derive(Default)]
struct Streams {
    error: Option<SpdyStream>,
    stdin: Option<SpdyStream>,
    stdout: Option<SpdyStream>,
    stderr: Option<SpdyStream>,
    resize: Option<SpdyStream>,
}

impl Streams {
    fn slot(&mut self, streamtype: &str) -> Option<&mut Option<SpdyStream>> {
        Some(match streamtype {
            "error" => &mut self.error,
            "stdin" => &mut self.stdin,
            "stdout" => &mut self.stdout,
            "stderr" => &mut self.stderr,
            "resize" => &mut self.resize,
            _ => return None,
        })
    }

    fn complete(&self, cmd: &Command, version: Version) -> bool {
        self.error.is_some()
            && (!cmd.stdin() || self.stdin.is_some())
            && (!cmd.stdout() || self.stdout.is_some())
            && (!cmd.stderr() || self.stderr.is_some())
            && (!(cmd.tty() && version.has_resize()) || self.resize.is_some())
    }

    fn all(&self) -> impl Iterator<Item = &SpdyStream> {
        [
            &self.error,
            &self.stdin,
            &self.stdout,
            &self.stderr,
            &self.resize,
        ]
        .into_iter()
        .flatten()
    }
}

/// Serves one exec or attach over an upgraded SPDY connection.
pub(crate) async fn serve_spdy<B: StreamBackend>(
    mut session: Session,
    version: Version,
    cmd: Command,
    backend: Arc<B>,
    creation_timeout: Duration,
) {
    let mut streams = Streams::default();
    let deadline = tokio::time::Instant::now() + creation_timeout;
    while !streams.complete(&cmd, version) {
        tokio::select! {
            s = session.accept() => {
                let Some(s) = s else {
                    tracing::debug!("client left before opening its streams");
                    return;
                };
                let streamtype = s.headers.get("streamtype").unwrap_or("").to_owned();
                match streams.slot(&streamtype) {
                    Some(slot) if slot.is_none() => *slot = Some(s),
                    _ => {
                        tracing::info!(%streamtype, "unexpected remotecommand stream; resetting it");
                        s.writer.reset(rst::REFUSED_STREAM).await;
                    }
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                tracing::info!(timeout = ?creation_timeout, "client did not open its streams in time");
                if let Some(error) = &streams.error {
                    let failure = Outcome::Failed(BackendError::new(format!(
                        "timed out after {creation_timeout:?} waiting for the client to create streams"
                    )));
                    let _ = error.writer.write_all(Bytes::from(status_bytes(version, &failure))).await;
                }
                for s in streams.all() {
                    let _ = s.writer.close().await;
                }
                session.shutdown(goaway::OK).await;
                return;
            }
        }
    }

    let mut io = StreamIo::default();
    if cmd.stdin()
        && let Some(s) = streams.stdin.as_mut()
    {
        let reader = std::mem::replace(&mut s.reader, crate::spdy::session::closed_reader());
        io.stdin = Some(Box::new(reader) as ClientInput);
    }
    if cmd.stdout()
        && let Some(s) = &streams.stdout
    {
        io.stdout = Some(Box::new(s.writer.clone()) as ClientOutput);
    }
    if cmd.stderr()
        && let Some(s) = &streams.stderr
    {
        io.stderr = Some(Box::new(s.writer.clone()) as ClientOutput);
    }
    let mut resize_task = None;
    if cmd.tty()
        && let Some(s) = streams.resize.as_mut()
    {
        let reader = std::mem::replace(&mut s.reader, crate::spdy::session::closed_reader());
        let (tx, events) = ResizeEvents::channel();
        resize_task = Some(tokio::spawn(pump_resizes(reader, tx)));
        io.resize = Some(events);
    }

    let mut gone = session.closed_signal();
    let work = run(&*backend, cmd, io, async move { gone.wait().await });
    tokio::pin!(work);
    // Keep refusing streams the client opens later, so they cannot pile up in
    // the session's accept queue and stall its reader.
    let mut accepting = true;
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break outcome,
            s = session.accept(), if accepting => match s {
                Some(s) => {
                    tracing::info!(streamtype = s.headers.get("streamtype").unwrap_or(""), "extra remotecommand stream; resetting it");
                    s.writer.reset(rst::REFUSED_STREAM).await;
                }
                None => accepting = false,
            },
        }
    };
    if let Some(t) = resize_task {
        t.abort();
    }
    if let Outcome::ClientGone = outcome {
        tracing::debug!("client disconnected; command abandoned");
        return;
    }
    if let Outcome::Failed(e) = &outcome {
        tracing::info!(error = %e, "stream command failed");
    }
    let status = status_bytes(version, &outcome);
    if let Some(error) = &streams.error
        && !status.is_empty()
    {
        let _ = error.writer.write_all(Bytes::from(status)).await;
    }
    // Output first, error stream last: client-go returns once the error stream ends.
    for s in [
        &streams.stdout,
        &streams.stderr,
        &streams.stdin,
        &streams.resize,
        &streams.error,
    ]
    .into_iter()
    .flatten()
    {
        let _ = s.writer.close().await;
    }
    session.shutdown(goaway::OK).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_success_status_is_exactly_what_kubelet_writes() {
        assert_eq!(
            String::from_utf8(status_bytes(Version::V4, &Outcome::Exited(0))).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
    }

    #[test]
    fn non_zero_exit_carries_the_code_as_a_cause() {
        let v: serde_json::Value =
            serde_json::from_slice(&status_bytes(Version::V5, &Outcome::Exited(7))).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "7");
    }

    #[test]
    fn backend_failures_are_reported_with_their_message() {
        let out = Outcome::Failed(BackendError::new("container c1 not found"));
        let v: serde_json::Value =
            serde_json::from_slice(&status_bytes(Version::V4, &out)).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["message"], "container c1 not found");
        assert_eq!(status_bytes(Version::V2, &out), b"container c1 not found");
        assert!(status_bytes(Version::V3, &Outcome::Exited(0)).is_empty());
    }

    #[tokio::test]
    async fn resize_messages_split_across_reads_are_parsed_in_order() {
        let (mut w, r) = tokio::io::duplex(64);
        let (tx, mut rx) = watch::channel(None);
        let pump = tokio::spawn(pump_resizes(r, tx));
        use tokio::io::AsyncWriteExt;
        w.write_all(br#"{"Width":80,"Hei"#).await.unwrap();
        w.write_all(br#"ght":24}"#).await.unwrap();
        rx.changed().await.unwrap();
        assert_eq!(
            *rx.borrow_and_update(),
            Some(TerminalSize {
                width: 80,
                height: 24
            })
        );
        w.write_all(br#"{"Width":120,"Height":40}"#).await.unwrap();
        rx.changed().await.unwrap();
        assert_eq!(
            *rx.borrow_and_update(),
            Some(TerminalSize {
                width: 120,
                height: 40
            })
        );
        w.write_all(b"not json").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), pump)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn protocol_names_map_to_versions() {
        for name in SPDY_PROTOCOLS {
            assert!(Version::from_name(name).is_some(), "{name}");
        }
        assert_eq!(Version::from_name(""), Some(Version::V1));
        assert_eq!(Version::from_name("v6.channel.k8s.io"), None);
    }
}
