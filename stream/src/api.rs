//! What berthd hands the streaming server and what it implements for it.

use std::future::Future;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// A CRI `Exec` request, as validated and cached under a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// Container to run in.
    pub container_id: String,
    /// Command and arguments.
    pub cmd: Vec<String>,
    /// Run the command on a terminal (stdout and stderr merged).
    pub tty: bool,
    /// The client sends stdin.
    pub stdin: bool,
    /// The client wants stdout.
    pub stdout: bool,
    /// The client wants stderr (never with `tty`).
    pub stderr: bool,
}

/// A CRI `Attach` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    /// Container whose main process to attach to.
    pub container_id: String,
    /// The container has a terminal.
    pub tty: bool,
    /// The client sends stdin.
    pub stdin: bool,
    /// The client wants stdout.
    pub stdout: bool,
    /// The client wants stderr (never with `tty`).
    pub stderr: bool,
}

/// A CRI `PortForward` request. The ports to reach are named per stream by the
/// client (the `port` header), so `ports` is informational.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    /// Pod whose network namespace the connections are made in.
    pub pod_sandbox_id: String,
    /// Ports the caller said it will use (may be empty).
    pub ports: Vec<i32>,
}

/// Why a request cannot be registered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// The container or pod id is empty.
    #[error("{0} id is empty")]
    MissingId(&'static str),
    /// `tty` and `stderr` were both requested (a terminal has one output).
    #[error("tty and stderr cannot both be true")]
    TtyWithStderr,
    /// None of stdin, stdout or stderr was requested.
    #[error("one of stdin, stdout, or stderr must be set")]
    NoStreams,
    /// Exec without a command.
    #[error("exec command is empty")]
    EmptyCommand,
    /// A port outside 1..=65535.
    #[error("port {0} is not a valid TCP port")]
    BadPort(i32),
    /// The OS random source failed while making a token.
    #[error("cannot generate a stream token: {0}")]
    Random(String),
}

fn validate_streams(
    tty: bool,
    stdin: bool,
    stdout: bool,
    stderr: bool,
) -> Result<(), RequestError> {
    if tty && stderr {
        return Err(RequestError::TtyWithStderr);
    }
    if !(stdin || stdout || stderr) {
        return Err(RequestError::NoStreams);
    }
    Ok(())
}

impl ExecRequest {
    /// Checks the request as kubelet's streaming server does.
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.container_id.is_empty() {
            return Err(RequestError::MissingId("container"));
        }
        if self.cmd.is_empty() {
            return Err(RequestError::EmptyCommand);
        }
        validate_streams(self.tty, self.stdin, self.stdout, self.stderr)
    }
}

impl AttachRequest {
    /// Checks the request as kubelet's streaming server does.
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.container_id.is_empty() {
            return Err(RequestError::MissingId("container"));
        }
        validate_streams(self.tty, self.stdin, self.stdout, self.stderr)
    }
}

impl PortForwardRequest {
    /// Checks the request.
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.pod_sandbox_id.is_empty() {
            return Err(RequestError::MissingId("pod sandbox"));
        }
        if let Some(&p) = self.ports.iter().find(|&&p| !(1..=65535).contains(&p)) {
            return Err(RequestError::BadPort(p));
        }
        Ok(())
    }
}

/// A terminal size sent by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Terminal resizes from the client. Only the latest size is kept, so a burst of
/// resizes cannot queue up work: a slow consumer sees the newest size.
#[derive(Debug)]
pub struct ResizeEvents {
    rx: watch::Receiver<Option<TerminalSize>>,
}

impl ResizeEvents {
    pub(crate) fn channel() -> (watch::Sender<Option<TerminalSize>>, ResizeEvents) {
        let (tx, rx) = watch::channel(None);
        (tx, ResizeEvents { rx })
    }

    /// The next size, or `None` once the client's resize stream ended.
    pub async fn next(&mut self) -> Option<TerminalSize> {
        loop {
            self.rx.changed().await.ok()?;
            if let Some(size) = *self.rx.borrow_and_update() {
                return Some(size);
            }
        }
    }
}

/// A byte source from the client (its stdin).
pub type ClientInput = Box<dyn AsyncRead + Send + Unpin>;
/// A byte sink to the client (stdout or stderr).
pub type ClientOutput = Box<dyn AsyncWrite + Send + Unpin>;

/// The client's side of an exec or attach, in the shape the request asked for.
/// Dropping an output does not end it; the server closes the client streams after
/// the backend returns.
#[derive(Default)]
pub struct StreamIo {
    /// What the client types, if it sends stdin. EOF when the client closes stdin.
    pub stdin: Option<ClientInput>,
    /// Where the process's stdout (or the terminal's output with tty) goes.
    pub stdout: Option<ClientOutput>,
    /// Where the process's stderr goes (never with tty).
    pub stderr: Option<ClientOutput>,
    /// Terminal resizes (tty only, and only if the client sends them).
    pub resize: Option<ResizeEvents>,
}

impl std::fmt::Debug for StreamIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamIo")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("resize", &self.resize.is_some())
            .finish()
    }
}

/// A failure in the backend, reported to the client on the error stream.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    /// What the client is told.
    pub message: String,
    /// The underlying cause, for logs.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BackendError {
    /// An error with a message only.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// An error with a message and a cause.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// A bidirectional byte stream (a TCP connection inside a pod).
pub trait Connection: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Connection for T {}

/// What berthd implements so the streaming server can run things.
///
/// The futures are dropped when the client disconnects: an `exec` must then kill
/// the process it started (e.g. through a guard's `Drop`), so nothing is left
/// behind.
pub trait StreamBackend: Send + Sync + 'static {
    /// Runs `req.cmd` in the container with the given streams and returns its exit
    /// code once the process exits, without waiting for stdin to close; its output
    /// must have been written to `io` by then.
    fn exec(
        &self,
        req: ExecRequest,
        io: StreamIo,
    ) -> impl Future<Output = Result<i32, BackendError>> + Send;

    /// Connects the streams to the container's main process until it exits or the
    /// client goes away.
    fn attach(
        &self,
        req: AttachRequest,
        io: StreamIo,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Opens a TCP connection to `localhost:port` inside the pod's network
    /// namespace.
    fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
    ) -> impl Future<Output = Result<Box<dyn Connection>, BackendError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> ExecRequest {
        ExecRequest {
            container_id: "c1".into(),
            cmd: vec!["true".into()],
            tty,
            stdin,
            stdout,
            stderr,
        }
    }

    #[test]
    fn tty_with_stderr_is_invalid() {
        assert_eq!(
            exec(true, true, true, true).validate(),
            Err(RequestError::TtyWithStderr)
        );
    }

    #[test]
    fn at_least_one_stream_is_required() {
        assert_eq!(
            exec(false, false, false, false).validate(),
            Err(RequestError::NoStreams)
        );
        assert_eq!(exec(false, true, false, false).validate(), Ok(()));
        assert_eq!(exec(true, false, true, false).validate(), Ok(()));
    }

    #[test]
    fn ids_and_commands_are_required() {
        let mut r = exec(false, false, true, false);
        r.cmd.clear();
        assert_eq!(r.validate(), Err(RequestError::EmptyCommand));
        r.container_id.clear();
        assert_eq!(r.validate(), Err(RequestError::MissingId("container")));
        let pf = PortForwardRequest {
            pod_sandbox_id: "p".into(),
            ports: vec![80, 70000],
        };
        assert_eq!(pf.validate(), Err(RequestError::BadPort(70000)));
    }

    #[tokio::test]
    async fn resize_events_keep_only_the_newest_size() {
        let (tx, mut events) = ResizeEvents::channel();
        for w in 1..=100u16 {
            tx.send_replace(Some(TerminalSize {
                width: w,
                height: 10,
            }));
        }
        assert_eq!(
            events.next().await,
            Some(TerminalSize {
                width: 100,
                height: 10
            })
        );
        drop(tx);
        assert_eq!(events.next().await, None);
    }
}
