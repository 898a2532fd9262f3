//! WebSocket transports.
//!
//! * `v5.channel.k8s.io` / `v4.channel.k8s.io` for exec and attach: every binary
//!   message starts with a channel byte (0 stdin, 1 stdout, 2 stderr, 3 error,
//!   4 resize); in v5 the message `[255, n]` closes channel `n` (the client's stdin).
//! * `channel.k8s.io` (v1, the same binary framing) and `base64.channel.k8s.io`
//!   (text messages: the channel as an ASCII digit `'0' + n`, then the data in
//!   standard base64), as kubelet's streaming library offers them; their error
//!   channel carries the failure as plain text, not a `metav1.Status`.
//! * `SPDY/3.1+portforward.k8s.io` for port-forward: the binary messages carry a
//!   SPDY byte stream, so the SPDY session runs on top unchanged.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::PollSender;

use crate::api::{ClientInput, ClientOutput, ResizeEvents, StreamBackend, StreamIo};
use crate::remotecommand::{self, Command, Outcome, Version};

/// Subprotocol for port-forward over WebSocket.
pub(crate) const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// The one text-framed exec/attach subprotocol we serve.
pub(crate) const BASE64_PROTOCOL: &str = "base64.channel.k8s.io";

/// How channel data is put into WebSocket messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Binary messages: `[channel byte][data]`.
    Binary,
    /// Text messages: `['0' + channel][base64 of data]`.
    Base64,
}

impl Framing {
    /// The framing and remotecommand version a negotiated subprotocol stands for.
    pub(crate) fn for_protocol(protocol: &str) -> (Framing, Version) {
        if protocol == BASE64_PROTOCOL {
            return (Framing::Base64, Version::V1);
        }
        (
            Framing::Binary,
            Version::from_name(protocol).unwrap_or(Version::V4),
        )
    }
}

const CH_STDIN: u8 = 0;
const CH_STDOUT: u8 = 1;
const CH_STDERR: u8 = 2;
const CH_ERROR: u8 = 3;
const CH_RESIZE: u8 = 4;
const CH_CLOSE: u8 = 255;
const MAX_CHUNK: usize = 32 * 1024;

#[derive(Debug)]
enum WsOut {
    Msg(Message),
    /// Send a normal close and wait for the client's.
    Close,
}

/// An output channel: bytes written become binary messages prefixed with the
/// channel number.
#[derive(Debug)]
struct ChannelWriter {
    channel: u8,
    framing: Framing,
    tx: PollSender<WsOut>,
}

fn ws_gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket connection closed")
}

fn channel_message(framing: Framing, channel: u8, data: &[u8]) -> Message {
    match framing {
        Framing::Binary => {
            let mut b = BytesMut::with_capacity(data.len() + 1);
            b.put_u8(channel);
            b.put_slice(data);
            Message::Binary(b.freeze())
        }
        Framing::Base64 => {
            let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
            text.push(char::from(b'0' + channel));
            BASE64.encode_string(data, &mut text);
            Message::Text(text.into())
        }
    }
}

/// The channel and data of a client message, or `None` for a message this
/// framing does not use (or a malformed one, which kubelet also skips).
fn decode_message(framing: Framing, msg: &Message) -> Option<(u8, Bytes)> {
    match (framing, msg) {
        (Framing::Binary, Message::Binary(data)) => {
            let (&channel, _) = data.split_first()?;
            Some((channel, data.slice(1..)))
        }
        (Framing::Base64, Message::Text(text)) => {
            let (&digit, payload) = text.as_bytes().split_first()?;
            let channel = digit.checked_sub(b'0')?;
            match BASE64.decode(payload) {
                Ok(data) => Some((channel, Bytes::from(data))),
                Err(e) => {
                    tracing::debug!(channel, error = %e, "ignoring a WebSocket message that is not base64");
                    None
                }
            }
        }
        _ => None,
    }
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| ws_gone())?;
        let n = buf.len().min(MAX_CHUNK);
        let msg = channel_message(self.framing, self.channel, &buf[..n]);
        self.tx.send_item(WsOut::Msg(msg)).map_err(|_| ws_gone())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Where incoming channel data goes.
struct Inputs {
    stdin: Option<DuplexStream>,
    resize: Option<DuplexStream>,
}

type WsSink = SplitSink<WebSocket, Message>;
type WsStream = SplitStream<WebSocket>;

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: 1000,
        reason: "".into(),
    }))
}

/// Sends what the command produces until told to close (or the socket fails).
async fn send_loop(mut sink: WsSink, mut out: mpsc::Receiver<WsOut>) {
    while let Some(item) = out.recv().await {
        match item {
            WsOut::Msg(m) => {
                if sink.send(m).await.is_err() {
                    return;
                }
            }
            WsOut::Close => break,
        }
    }
    let _ = sink.send(normal_close()).await;
}

/// Routes what the client sends and reports when the client is gone. Runs apart
/// from [`send_loop`] so a command that does not read stdin cannot stall its output.
async fn recv_loop(
    mut stream: WsStream,
    mut inputs: Inputs,
    framing: Framing,
    stream_close: bool,
    closed: watch::Sender<bool>,
) {
    while let Some(Ok(msg)) = stream.next().await {
        if matches!(msg, Message::Close(_)) {
            break;
        }
        // Pings are answered by the WebSocket layer; a message of the other
        // framing's kind (text in binary mode, binary in base64) is not data.
        if let Some((channel, payload)) = decode_message(framing, &msg) {
            route(channel, &payload, &mut inputs, stream_close).await;
        }
    }
    closed.send_replace(true);
}

async fn route(channel: u8, payload: &[u8], inputs: &mut Inputs, stream_close: bool) {
    match channel {
        CH_STDIN => {
            if let Some(w) = inputs.stdin.as_mut()
                && w.write_all(payload).await.is_err()
            {
                // The command stopped reading stdin (it exited); drop the rest.
                inputs.stdin = None;
            }
        }
        CH_RESIZE => {
            if let Some(w) = inputs.resize.as_mut()
                && w.write_all(payload).await.is_err()
            {
                inputs.resize = None;
            }
        }
        CH_CLOSE if stream_close => {
            if payload.first() == Some(&CH_STDIN) {
                // EOF for the command's stdin.
                inputs.stdin = None;
            }
        }
        other => tracing::debug!(
            channel = other,
            "ignoring WebSocket message on a channel we do not read"
        ),
    }
}

/// Serves one exec or attach over an upgraded WebSocket.
pub(crate) async fn serve_exec<B: StreamBackend>(
    socket: WebSocket,
    framing: Framing,
    version: Version,
    cmd: Command,
    backend: Arc<B>,
    linger: Duration,
) {
    let (out_tx, out_rx) = mpsc::channel::<WsOut>(64);
    let (closed_tx, mut closed_rx) = watch::channel(false);
    let mut io = StreamIo::default();
    let mut inputs = Inputs {
        stdin: None,
        resize: None,
    };
    if cmd.stdin() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        inputs.stdin = Some(ours);
        io.stdin = Some(Box::new(theirs) as ClientInput);
    }
    let writer = |channel| {
        Box::new(ChannelWriter {
            channel,
            framing,
            tx: PollSender::new(out_tx.clone()),
        }) as ClientOutput
    };
    if cmd.stdout() {
        io.stdout = Some(writer(CH_STDOUT));
    }
    if cmd.stderr() {
        io.stderr = Some(writer(CH_STDERR));
    }
    let mut resize_task = None;
    if cmd.tty() {
        let (ours, mut theirs) = tokio::io::duplex(16 * 1024);
        inputs.resize = Some(ours);
        let (tx, events) = ResizeEvents::channel();
        resize_task = Some(tokio::spawn(async move {
            remotecommand::pump_resizes(&mut theirs, tx).await;
            // Drain so a client that keeps sending cannot block the socket.
            let mut sink = [0u8; 4096];
            while matches!(theirs.read(&mut sink).await, Ok(n) if n > 0) {}
        }));
        io.resize = Some(events);
    }
    // Tell the client the streams are ready: an empty message on the first output channel.
    let first = if cmd.stdout() {
        CH_STDOUT
    } else if cmd.stderr() {
        CH_STDERR
    } else {
        CH_ERROR
    };
    let _ = out_tx
        .send(WsOut::Msg(channel_message(framing, first, &[])))
        .await;

    let (sink, stream) = socket.split();
    let send_task = tokio::spawn(send_loop(sink, out_rx));
    let mut recv_task = tokio::spawn(recv_loop(
        stream,
        inputs,
        framing,
        version >= Version::V5,
        closed_tx,
    ));
    let outcome = remotecommand::run(&*backend, cmd, io, async move {
        let _ = closed_rx.wait_for(|c| *c).await;
    })
    .await;
    if let Some(t) = resize_task {
        t.abort();
    }
    if !matches!(outcome, Outcome::ClientGone) {
        let status = remotecommand::status_bytes(version, &outcome);
        if !status.is_empty() {
            let _ = out_tx
                .send(WsOut::Msg(channel_message(framing, CH_ERROR, &status)))
                .await;
        }
        let _ = out_tx.send(WsOut::Close).await;
    }
    drop(out_tx);
    let _ = send_task.await;
    // Give the client time to read everything and answer our close.
    if tokio::time::timeout(linger, &mut recv_task).await.is_err() {
        recv_task.abort();
    }
}

/// Runs a SPDY session over the binary messages of `socket` (port-forward).
pub(crate) fn tunnel(socket: WebSocket) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    tokio::spawn(pump_tunnel(socket, ours));
    theirs
}

async fn pump_tunnel(socket: WebSocket, pipe: DuplexStream) {
    let (mut sink, mut stream) = socket.split();
    let (mut pipe_rd, mut pipe_wr) = tokio::io::split(pipe);
    let inbound = async {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(data) if pipe_wr.write_all(&data).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = pipe_wr.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match pipe_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(normal_close()).await;
    };
    // The SPDY session decides when the tunnel ends (it closes its side of the pipe).
    tokio::join!(inbound, outbound);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_pick_framing_and_version() {
        assert_eq!(
            Framing::for_protocol("base64.channel.k8s.io"),
            (Framing::Base64, Version::V1)
        );
        assert_eq!(
            Framing::for_protocol("channel.k8s.io"),
            (Framing::Binary, Version::V1)
        );
        assert_eq!(
            Framing::for_protocol("v5.channel.k8s.io"),
            (Framing::Binary, Version::V5)
        );
        assert_eq!(
            Framing::for_protocol("v4.channel.k8s.io"),
            (Framing::Binary, Version::V4)
        );
        for name in remotecommand::WEBSOCKET_PROTOCOLS {
            assert!(
                name == &BASE64_PROTOCOL || Version::from_name(name).is_some(),
                "{name}"
            );
        }
    }

    #[test]
    fn binary_messages_are_channel_byte_then_data() {
        let Message::Binary(b) = channel_message(Framing::Binary, CH_STDOUT, b"hi\n") else {
            panic!("binary framing sent a non-binary message");
        };
        assert_eq!(&b[..], b"\x01hi\n");
        let (ch, data) = decode_message(
            Framing::Binary,
            &Message::Binary(Bytes::from_static(b"\x00in")),
        )
        .unwrap();
        assert_eq!((ch, &data[..]), (CH_STDIN, &b"in"[..]));
        // Empty and wrong-kind messages carry no data.
        assert!(decode_message(Framing::Binary, &Message::Binary(Bytes::new())).is_none());
        assert!(decode_message(Framing::Binary, &Message::Text("0aGk=".into())).is_none());
    }

    #[test]
    fn base64_messages_are_ascii_digit_then_base64_text() {
        let Message::Text(t) = channel_message(Framing::Base64, CH_STDOUT, b"hello\n") else {
            panic!("base64 framing sent a non-text message");
        };
        assert_eq!(t.as_str(), "1aGVsbG8K");
        let Message::Text(t) = channel_message(Framing::Base64, CH_ERROR, b"") else {
            panic!("base64 framing sent a non-text message");
        };
        assert_eq!(t.as_str(), "3");
        // What kubelet's base64 client sends for stdin "ls\n".
        let (ch, data) = decode_message(Framing::Base64, &Message::Text("0bHMK".into())).unwrap();
        assert_eq!((ch, &data[..]), (CH_STDIN, &b"ls\n"[..]));
        let (ch, data) = decode_message(Framing::Base64, &Message::Text("0".into())).unwrap();
        assert_eq!((ch, &data[..]), (CH_STDIN, &b""[..]));
        // Not base64, no channel digit, or a binary message: skipped, not a panic.
        assert!(decode_message(Framing::Base64, &Message::Text("0!!!".into())).is_none());
        assert!(decode_message(Framing::Base64, &Message::Text("".into())).is_none());
        assert!(decode_message(Framing::Base64, &Message::Text("\u{1}aGk=".into())).is_none());
        assert!(
            decode_message(
                Framing::Base64,
                &Message::Binary(Bytes::from_static(b"\x00x"))
            )
            .is_none()
        );
    }

    #[test]
    fn v1_error_channel_is_plain_text() {
        let status = remotecommand::status_bytes(Version::V1, &Outcome::Exited(3));
        assert_eq!(status, b"command terminated with non-zero exit code: 3");
        assert!(remotecommand::status_bytes(Version::V1, &Outcome::Exited(0)).is_empty());
    }
}
