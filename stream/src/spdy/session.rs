//! The server side of a SPDY/3.1 connection.
//!
//! Two tasks own the connection: a reader that decodes frames, answers PINGs,
//! replies to every SYN_STREAM and routes DATA to the stream it belongs to; and a
//! writer that encodes the frames the streams send, in order. There is no flow
//! control: spdystream never sends or honours WINDOW_UPDATE in practice, so
//! back-pressure comes from bounded queues (a stream whose reader stops reading
//! eventually stalls the connection's reader, as TCP would).

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::PollSender;

use super::frame::{FLAG_FIN, Frame, FrameDecoder, FrameEncoder, HeaderBlock, goaway, rst};

/// Largest DATA payload we send in one frame.
pub const MAX_DATA_CHUNK: usize = 32 * 1024;
const INBOUND_QUEUE: usize = 32;
const OUTBOUND_QUEUE: usize = 64;
const ACCEPT_QUEUE: usize = 32;
/// Streams a client may have open at once; more are refused.
pub const MAX_OPEN_STREAMS: usize = 1024;

/// Something a session's writer task is asked to do.
#[derive(Debug)]
enum Outgoing {
    Frame(Frame),
    /// Flush, close our sending side, then report back.
    Shutdown(oneshot::Sender<()>),
}

#[derive(Debug)]
enum Inbound {
    Data(Bytes),
    Fin,
    Reset(u32),
}

#[derive(Debug, Default)]
struct StreamState {
    /// The peer reset the stream, or we did.
    reset: AtomicBool,
    /// We sent FIN.
    local_fin: AtomicBool,
}

/// One stream the client opened.
#[derive(Debug)]
pub struct SpdyStream {
    /// Stream id (odd: client-initiated).
    pub id: u32,
    /// The SYN_STREAM headers (`streamtype`, `port`, `requestid`, ...).
    pub headers: HeaderBlock,
    /// What the client sends on this stream.
    pub reader: StreamReader,
    /// How we send on this stream.
    pub writer: StreamWriter,
}

/// The receiving half of a stream: an [`AsyncRead`] that ends at the client's FIN
/// and fails if the client resets the stream or the connection drops.
#[derive(Debug)]
pub struct StreamReader {
    id: u32,
    rx: mpsc::Receiver<Inbound>,
    pending: Bytes,
    done: bool,
}

impl AsyncRead for StreamReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.done {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.rx.poll_recv(cx)) {
                Some(Inbound::Data(b)) => this.pending = b,
                Some(Inbound::Fin) => this.done = true,
                Some(Inbound::Reset(status)) => {
                    this.done = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        format!("client reset SPDY stream {} (status {status})", this.id),
                    )));
                }
                None => {
                    this.done = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("SPDY connection closed before stream {} ended", this.id),
                    )));
                }
            }
        }
    }
}

/// A reader already at EOF, left in place of a reader that was handed out.
pub(crate) fn closed_reader() -> StreamReader {
    let (_tx, rx) = mpsc::channel(1);
    StreamReader {
        id: 0,
        rx,
        pending: Bytes::new(),
        done: true,
    }
}

/// The sending half of a stream. Cloning shares the stream; [`StreamWriter::close`]
/// sends FIN once.
#[derive(Debug)]
pub struct StreamWriter {
    id: u32,
    tx: mpsc::Sender<Outgoing>,
    poll_tx: PollSender<Outgoing>,
    state: Arc<StreamState>,
}

impl Clone for StreamWriter {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            tx: self.tx.clone(),
            poll_tx: PollSender::new(self.tx.clone()),
            state: self.state.clone(),
        }
    }
}

fn gone(id: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        format!("SPDY stream {id} is closed or reset"),
    )
}

impl StreamWriter {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn check_open(&self) -> io::Result<()> {
        if self.state.reset.load(Ordering::Acquire) || self.state.local_fin.load(Ordering::Acquire)
        {
            return Err(gone(self.id));
        }
        Ok(())
    }

    /// Sends `data` (split into frames as needed).
    pub async fn write_all(&self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            self.check_open()?;
            let chunk = data.split_to(data.len().min(MAX_DATA_CHUNK));
            self.tx
                .send(Outgoing::Frame(Frame::Data {
                    stream_id: self.id,
                    flags: 0,
                    data: chunk,
                }))
                .await
                .map_err(|_| gone(self.id))?;
        }
        Ok(())
    }

    /// Sends FIN: we will send nothing more. Later calls do nothing.
    pub async fn close(&self) -> io::Result<()> {
        if self.state.reset.load(Ordering::Acquire)
            || self.state.local_fin.swap(true, Ordering::AcqRel)
        {
            return Ok(());
        }
        self.tx
            .send(Outgoing::Frame(Frame::Data {
                stream_id: self.id,
                flags: FLAG_FIN,
                data: Bytes::new(),
            }))
            .await
            .map_err(|_| gone(self.id))
    }

    /// Aborts the stream with RST_STREAM.
    pub async fn reset(&self, status: u32) {
        if self.state.reset.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self
            .tx
            .send(Outgoing::Frame(Frame::RstStream {
                stream_id: self.id,
                status,
            }))
            .await;
    }
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_open()?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let id = self.id;
        ready!(self.poll_tx.poll_reserve(cx)).map_err(|_| gone(id))?;
        let n = buf.len().min(MAX_DATA_CHUNK);
        self.poll_tx
            .send_item(Outgoing::Frame(Frame::Data {
                stream_id: id,
                flags: 0,
                data: Bytes::copy_from_slice(&buf[..n]),
            }))
            .map_err(|_| gone(id))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.state.reset.load(Ordering::Acquire) || self.state.local_fin.load(Ordering::Acquire)
        {
            return Poll::Ready(Ok(()));
        }
        let id = self.id;
        ready!(self.poll_tx.poll_reserve(cx)).map_err(|_| gone(id))?;
        self.state.local_fin.store(true, Ordering::Release);
        self.poll_tx
            .send_item(Outgoing::Frame(Frame::Data {
                stream_id: id,
                flags: FLAG_FIN,
                data: Bytes::new(),
            }))
            .map_err(|_| gone(id))?;
        Poll::Ready(Ok(()))
    }
}

/// Limits of one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// How long [`Session::shutdown`] waits for the client to close after our GOAWAY.
    pub linger: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_secs(5),
        }
    }
}

/// A server-side SPDY/3.1 session over one upgraded connection.
#[derive(Debug)]
pub struct Session {
    incoming: mpsc::Receiver<SpdyStream>,
    out: mpsc::Sender<Outgoing>,
    closed: watch::Receiver<bool>,
    last_stream: watch::Receiver<u32>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    config: SessionConfig,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// A cheap handle that tells whether the client is still connected.
#[derive(Debug, Clone)]
pub struct ClosedSignal(watch::Receiver<bool>);

impl ClosedSignal {
    /// Resolves once the client's side of the connection ended (EOF, error, or a
    /// protocol violation).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|closed| *closed).await;
    }
}

impl Session {
    /// Starts serving SPDY on `io` (an upgraded HTTP connection).
    pub fn start<IO>(io: IO, config: SessionConfig) -> Session
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (in_tx, in_rx) = mpsc::channel(ACCEPT_QUEUE);
        let (closed_tx, closed_rx) = watch::channel(false);
        let (last_tx, last_rx) = watch::channel(0u32);
        let writer = tokio::spawn(write_loop(wr, out_rx, closed_tx.clone()));
        let reader = tokio::spawn(read_loop(rd, out_tx.clone(), in_tx, closed_tx, last_tx));
        Session {
            incoming: in_rx,
            out: out_tx,
            closed: closed_rx,
            last_stream: last_rx,
            reader,
            writer,
            config,
        }
    }

    /// The next stream the client opens (already answered with SYN_REPLY), or
    /// `None` once the client sent GOAWAY or the connection ended.
    pub async fn accept(&mut self) -> Option<SpdyStream> {
        self.incoming.recv().await
    }

    /// A signal that fires when the client goes away.
    pub fn closed_signal(&self) -> ClosedSignal {
        ClosedSignal(self.closed.clone())
    }

    /// True once the client's side ended.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Ends the session politely: GOAWAY, flush, close our sending side, then give
    /// the client `linger` to close its side (closing first with unread client
    /// bytes in our socket buffer would make the kernel reset the connection and
    /// could drop the last frames we sent).
    pub async fn shutdown(mut self, status: u32) {
        let last = *self.last_stream.borrow();
        let _ = self
            .out
            .send(Outgoing::Frame(Frame::GoAway {
                last_good_stream_id: last,
                status,
            }))
            .await;
        let (done_tx, done_rx) = oneshot::channel();
        if self.out.send(Outgoing::Shutdown(done_tx)).await.is_ok() {
            let _ = tokio::time::timeout(self.config.linger, done_rx).await;
        }
        // Stop handing out streams; the reader keeps draining (and answering
        // nothing new) until the client closes.
        self.incoming.close();
        let mut closed = self.closed.clone();
        let _ = tokio::time::timeout(self.config.linger, closed.wait_for(|c| *c)).await;
    }
}

async fn write_loop<W>(mut wr: W, mut rx: mpsc::Receiver<Outgoing>, closed: watch::Sender<bool>)
where
    W: AsyncWrite + Unpin,
{
    let mut encoder = match FrameEncoder::new() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot create SPDY header compressor");
            closed.send_replace(true);
            return;
        }
    };
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut shutdown = None;
        // Batch what is already queued into one write.
        while let Some(item) = next.take() {
            match item {
                Outgoing::Frame(frame) => {
                    if let Err(e) = encoder.encode(&frame, &mut buf) {
                        tracing::warn!(error = %e, "dropping a SPDY frame we could not encode");
                    }
                }
                Outgoing::Shutdown(done) => {
                    shutdown = Some(done);
                    break;
                }
            }
            if buf.len() >= 256 * 1024 {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !buf.is_empty() {
            let written = wr.write_all(&buf).await;
            buf.clear();
            if let Err(e) = written.and(wr.flush().await) {
                tracing::debug!(error = %e, "SPDY connection write failed");
                closed.send_replace(true);
                return;
            }
        }
        if let Some(done) = shutdown {
            let _ = wr.shutdown().await;
            let _ = done.send(());
            return;
        }
    }
}

struct ReaderState {
    out: mpsc::Sender<Outgoing>,
    incoming: Option<mpsc::Sender<SpdyStream>>,
    streams: HashMap<u32, (mpsc::Sender<Inbound>, Arc<StreamState>)>,
    last_stream: watch::Sender<u32>,
}

async fn read_loop<R>(
    mut rd: R,
    out: mpsc::Sender<Outgoing>,
    incoming: mpsc::Sender<SpdyStream>,
    closed: watch::Sender<bool>,
    last_stream: watch::Sender<u32>,
) where
    R: AsyncRead + Unpin,
{
    let mut decoder = FrameDecoder::default();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut st = ReaderState {
        out,
        incoming: Some(incoming),
        streams: HashMap::new(),
        last_stream,
    };
    'conn: loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if !st.handle(frame).await {
                        break 'conn;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(error = %e, "malformed SPDY frame from client; closing the connection");
                    let last = *st.last_stream.borrow();
                    let _ = st
                        .out
                        .send(Outgoing::Frame(Frame::GoAway {
                            last_good_stream_id: last,
                            status: goaway::PROTOCOL_ERROR,
                        }))
                        .await;
                    // Make sure the GOAWAY is on the wire before anyone reacts to
                    // the closed signal by dropping the session.
                    let (done_tx, done_rx) = oneshot::channel();
                    if st.out.send(Outgoing::Shutdown(done_tx)).await.is_ok() {
                        let _ = tokio::time::timeout(Duration::from_secs(1), done_rx).await;
                    }
                    break 'conn;
                }
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "SPDY connection read failed");
                break;
            }
        }
    }
    closed.send_replace(true);
    // Dropping the senders tells every open stream reader the connection is gone.
    st.streams.clear();
}

impl ReaderState {
    /// Handles one frame; false ends the connection.
    async fn handle(&mut self, frame: Frame) -> bool {
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => self.open_stream(stream_id, flags, headers).await,
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let Some((tx, _)) = self.streams.get(&stream_id) else {
                    return true;
                };
                // Queue big frames in slices (sharing one allocation) so a stream's
                // queue holds at most INBOUND_QUEUE * MAX_DATA_CHUNK bytes.
                let mut data = data;
                while !data.is_empty() {
                    let slice = data.split_to(data.len().min(MAX_DATA_CHUNK));
                    if tx.send(Inbound::Data(slice)).await.is_err() {
                        // The reader went away: nobody wants the bytes.
                        break;
                    }
                }
                if flags & FLAG_FIN != 0
                    && let Some((tx, _)) = self.streams.remove(&stream_id)
                {
                    let _ = tx.send(Inbound::Fin).await;
                }
                true
            }
            Frame::RstStream { stream_id, status } => {
                if let Some((tx, state)) = self.streams.remove(&stream_id) {
                    state.reset.store(true, Ordering::Release);
                    let _ = tx.try_send(Inbound::Reset(status));
                }
                true
            }
            Frame::Ping { id } => self
                .out
                .send(Outgoing::Frame(Frame::Ping { id }))
                .await
                .is_ok(),
            Frame::GoAway { .. } => {
                // No new streams will come; existing ones carry on.
                self.incoming = None;
                true
            }
            Frame::Headers {
                stream_id, flags, ..
            } => {
                if flags & FLAG_FIN != 0
                    && let Some((tx, _)) = self.streams.remove(&stream_id)
                {
                    let _ = tx.send(Inbound::Fin).await;
                }
                true
            }
            Frame::SynReply { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => true,
        }
    }

    async fn open_stream(&mut self, id: u32, flags: u8, headers: HeaderBlock) -> bool {
        let last = *self.last_stream.borrow();
        if id.is_multiple_of(2) || id <= last {
            // Clients open odd ids in increasing order; anything else is a protocol error.
            let status = if self.streams.contains_key(&id) {
                rst::STREAM_IN_USE
            } else {
                rst::PROTOCOL_ERROR
            };
            return self
                .out
                .send(Outgoing::Frame(Frame::RstStream {
                    stream_id: id,
                    status,
                }))
                .await
                .is_ok();
        }
        self.last_stream.send_replace(id);
        if self.streams.len() >= MAX_OPEN_STREAMS {
            return self
                .out
                .send(Outgoing::Frame(Frame::RstStream {
                    stream_id: id,
                    status: rst::REFUSED_STREAM,
                }))
                .await
                .is_ok();
        }
        let Some(incoming) = self.incoming.clone() else {
            return self
                .out
                .send(Outgoing::Frame(Frame::RstStream {
                    stream_id: id,
                    status: rst::REFUSED_STREAM,
                }))
                .await
                .is_ok();
        };
        if self
            .out
            .send(Outgoing::Frame(Frame::SynReply {
                stream_id: id,
                flags: 0,
                headers: HeaderBlock::new(),
            }))
            .await
            .is_err()
        {
            return false;
        }
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let state = Arc::new(StreamState::default());
        if flags & FLAG_FIN != 0 {
            let _ = tx.try_send(Inbound::Fin);
        } else {
            self.streams.insert(id, (tx, state.clone()));
        }
        let stream = SpdyStream {
            id,
            headers,
            reader: StreamReader {
                id,
                rx,
                pending: Bytes::new(),
                done: false,
            },
            writer: StreamWriter {
                id,
                tx: self.out.clone(),
                poll_tx: PollSender::new(self.out.clone()),
                state,
            },
        };
        if let Err(refused) = incoming.send(stream).await {
            // Nobody accepts streams any more.
            self.streams.remove(&id);
            refused.0.writer.reset(rst::REFUSED_STREAM).await;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spdy::frame::HeaderBlock;
    use tokio::io::DuplexStream;

    /// A client built from our own codec, driving the session over an in-memory pipe.
    struct TestClient {
        io: DuplexStream,
        enc: FrameEncoder,
        dec: FrameDecoder,
        buf: BytesMut,
    }

    impl TestClient {
        async fn send(&mut self, f: Frame) {
            let mut b = BytesMut::new();
            self.enc.encode(&f, &mut b).unwrap();
            self.io.write_all(&b).await.unwrap();
        }

        async fn recv(&mut self) -> Option<Frame> {
            loop {
                if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                    return Some(f);
                }
                let n =
                    tokio::time::timeout(Duration::from_secs(5), self.io.read_buf(&mut self.buf))
                        .await
                        .expect("session answered within 5 s")
                        .unwrap();
                if n == 0 {
                    return None;
                }
            }
        }

        async fn open(&mut self, id: u32, streamtype: &str, flags: u8) {
            let headers: HeaderBlock = [("streamtype", streamtype)].into_iter().collect();
            self.send(Frame::SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags,
                headers,
            })
            .await;
        }
    }

    fn pair() -> (Session, TestClient) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let session = Session::start(a, SessionConfig::default());
        let client = TestClient {
            io: b,
            enc: FrameEncoder::new().unwrap(),
            dec: FrameDecoder::default(),
            buf: BytesMut::new(),
        };
        (session, client)
    }

    #[tokio::test]
    async fn streams_are_accepted_replied_and_carry_data_both_ways() {
        let (mut session, mut client) = pair();
        client.open(1, "stdin", 0).await;
        assert_eq!(
            client.recv().await,
            Some(Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: HeaderBlock::new()
            })
        );
        let mut stream = session.accept().await.unwrap();
        assert_eq!(stream.headers.get("streamtype"), Some("stdin"));
        client
            .send(Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"ping me"),
            })
            .await;
        let mut got = String::new();
        stream.reader.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "ping me");

        stream
            .writer
            .write_all(Bytes::from_static(b"pong"))
            .await
            .unwrap();
        stream.writer.close().await.unwrap();
        assert_eq!(
            client.recv().await,
            Some(Frame::Data {
                stream_id: 1,
                flags: 0,
                data: Bytes::from_static(b"pong")
            })
        );
        assert!(client.recv().await.unwrap().is_fin());
        // A second close sends nothing and writes after FIN fail.
        stream.writer.close().await.unwrap();
        assert!(
            stream
                .writer
                .write_all(Bytes::from_static(b"x"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn pings_are_echoed() {
        let (_session, mut client) = pair();
        client.send(Frame::Ping { id: 7 }).await;
        assert_eq!(client.recv().await, Some(Frame::Ping { id: 7 }));
    }

    #[tokio::test]
    async fn client_reset_fails_the_reader_and_the_writer() {
        let (mut session, mut client) = pair();
        client.open(1, "data", 0).await;
        client.recv().await.unwrap();
        let mut stream = session.accept().await.unwrap();
        client
            .send(Frame::RstStream {
                stream_id: 1,
                status: rst::CANCEL,
            })
            .await;
        let mut sink = Vec::new();
        let err = stream.reader.read_to_end(&mut sink).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(
            stream
                .writer
                .write_all(Bytes::from_static(b"late"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn even_or_reused_stream_ids_are_refused() {
        let (_session, mut client) = pair();
        client.open(2, "stdin", 0).await;
        assert!(matches!(
            client.recv().await,
            Some(Frame::RstStream {
                stream_id: 2,
                status: rst::PROTOCOL_ERROR
            })
        ));
        client.open(3, "stdin", 0).await;
        client.recv().await.unwrap();
        client.open(3, "stdout", 0).await;
        assert!(matches!(
            client.recv().await,
            Some(Frame::RstStream { stream_id: 3, .. })
        ));
    }

    #[tokio::test]
    async fn garbage_gets_goaway_and_the_session_ends() {
        let (session, mut client) = pair();
        client
            .io
            .write_all(&[0x80, 0x02, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1])
            .await
            .unwrap();
        assert!(matches!(
            client.recv().await,
            Some(Frame::GoAway {
                status: goaway::PROTOCOL_ERROR,
                ..
            })
        ));
        let mut closed = session.closed_signal();
        tokio::time::timeout(Duration::from_secs(5), closed.wait())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn client_disconnect_fails_open_readers_and_fires_the_closed_signal() {
        let (mut session, mut client) = pair();
        client.open(1, "stdin", 0).await;
        client.recv().await.unwrap();
        let mut stream = session.accept().await.unwrap();
        let mut closed = session.closed_signal();
        drop(client);
        let mut sink = Vec::new();
        let err = stream.reader.read_to_end(&mut sink).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        tokio::time::timeout(Duration::from_secs(5), closed.wait())
            .await
            .unwrap();
        assert!(session.is_closed());
    }

    #[tokio::test]
    async fn shutdown_sends_goaway_then_closes() {
        let (mut session, mut client) = pair();
        client.open(1, "error", 0).await;
        client.recv().await.unwrap();
        let _stream = session.accept().await.unwrap();
        let shut = tokio::spawn(session.shutdown(goaway::OK));
        assert_eq!(
            client.recv().await,
            Some(Frame::GoAway {
                last_good_stream_id: 1,
                status: goaway::OK
            })
        );
        assert_eq!(client.recv().await, None, "server closed its sending side");
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), shut)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_large_incoming_frame_reads_back_whole() {
        let (mut session, mut client) = pair();
        client.open(1, "stdin", 0).await;
        client.recv().await.unwrap();
        let mut stream = session.accept().await.unwrap();
        let big: Vec<u8> = (0..(3 * MAX_DATA_CHUNK + 5))
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        client
            .send(Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                data: Bytes::from(big.clone()),
            })
            .await;
        let mut got = Vec::new();
        stream.reader.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big);
    }

    #[tokio::test]
    async fn large_writes_are_split_into_frames() {
        let (mut session, mut client) = pair();
        client.open(1, "stdout", 0).await;
        client.recv().await.unwrap();
        let stream = session.accept().await.unwrap();
        let big = Bytes::from(vec![7u8; MAX_DATA_CHUNK * 2 + 10]);
        stream.writer.write_all(big.clone()).await.unwrap();
        let mut total = 0;
        while total < big.len() {
            match client.recv().await.unwrap() {
                Frame::Data { data, .. } => {
                    assert!(data.len() <= MAX_DATA_CHUNK);
                    total += data.len();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(total, big.len());
    }
}
