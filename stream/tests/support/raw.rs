//! A SPDY/3.1 remotecommand client built from this crate's codec, for tests and
//! benchmarks that need to misbehave or to skip a Go process per request.

use std::net::SocketAddr;
use std::time::Duration;

use berth_stream::spdy::frame::{Frame, FrameDecoder, FrameEncoder, HeaderBlock};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One upgraded connection.
pub struct RawClient {
    pub conn: TcpStream,
    enc: FrameEncoder,
    dec: FrameDecoder,
    buf: BytesMut,
}

impl RawClient {
    /// Upgrades `path` to SPDY with protocol v4 and reads the 101.
    pub async fn connect(addr: SocketAddr, path: &str) -> RawClient {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
                 X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = BytesMut::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = conn.read_buf(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the 101");
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("x-stream-protocol-version: v4.channel.k8s.io")
        );
        let _ = buf.split_to(end);
        RawClient {
            conn,
            enc: FrameEncoder::new().unwrap(),
            dec: FrameDecoder::default(),
            buf,
        }
    }

    pub async fn send(&mut self, f: &Frame) {
        let mut b = BytesMut::new();
        self.enc.encode(f, &mut b).unwrap();
        self.conn.write_all(&b).await.unwrap();
    }

    pub async fn open(&mut self, id: u32, streamtype: &str) {
        let headers: HeaderBlock = [("streamtype", streamtype)].into_iter().collect();
        self.send(&Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers,
        })
        .await;
    }

    /// The next frame, or None when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            let n =
                tokio::time::timeout(Duration::from_secs(20), self.conn.read_buf(&mut self.buf))
                    .await
                    .expect("server answered within 20 s")
                    .ok()?;
            if n == 0 {
                return None;
            }
        }
    }
}
