//! Bad-input tests that need a client misbehaving in ways client-go never does:
//! a burst of resizes, streams of unknown types, malformed frames. The client is
//! built from this crate's own frame codec over a real TCP connection.

mod support;

use std::time::Duration;

use berth_stream::spdy::frame::{FLAG_FIN, Frame, goaway};
use berth_stream::{ExecRequest, StreamConfig};
use bytes::Bytes;
use support::raw::RawClient;
use support::{run_goclient, start_server};
use tokio::io::AsyncWriteExt;

/// Collects the DATA sent on each stream until the server closes.
async fn collect(client: &mut RawClient) -> (Vec<(u32, Vec<u8>)>, Vec<Frame>) {
    let mut data: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut control = Vec::new();
    while let Some(f) = client.recv().await {
        match f {
            Frame::Data {
                stream_id, data: d, ..
            } => match data.iter_mut().find(|(id, _)| *id == stream_id) {
                Some((_, v)) => v.extend_from_slice(&d),
                None => data.push((stream_id, d.to_vec())),
            },
            other => control.push(other),
        }
    }
    (data, control)
}

fn stream_data(data: &[(u32, Vec<u8>)], id: u32) -> String {
    data.iter()
        .find(|(i, _)| *i == id)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resize_burst_is_absorbed_and_the_last_size_wins() {
    let server = start_server(StreamConfig::default()).await;
    let url = server
        .register_exec(ExecRequest {
            container_id: "c1".into(),
            cmd: vec!["sh".into(), "-c".into(), "sleep 2; stty size".into()],
            tty: true,
            stdin: false,
            stdout: true,
            stderr: false,
        })
        .unwrap();
    let path = url.strip_prefix(server.base_url()).unwrap().to_owned();
    let mut client = RawClient::connect(server.local_addr(), &path).await;
    client.open(1, "error").await;
    client.open(3, "stdout").await;
    client.open(5, "resize").await;
    let mut burst = String::new();
    for i in 0..20_000u32 {
        burst.push_str(&format!(
            "{{\"Width\":{},\"Height\":{}}}",
            10 + i % 300,
            10 + i % 100
        ));
    }
    burst.push_str(r#"{"Width":77,"Height":33}"#);
    let bytes = Bytes::from(burst);
    for chunk in bytes.chunks(16 * 1024) {
        client
            .send(&Frame::Data {
                stream_id: 5,
                flags: 0,
                data: Bytes::copy_from_slice(chunk),
            })
            .await;
    }
    let (data, _) = collect(&mut client).await;
    assert_eq!(stream_data(&data, 3), "33 77\r\n");
    assert_eq!(
        stream_data(&data, 1),
        r#"{"metadata":{},"status":"Success"}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_unknown_types_are_refused_and_the_exec_still_runs() {
    let server = start_server(StreamConfig::default()).await;
    let url = server
        .register_exec(ExecRequest {
            container_id: "c1".into(),
            // Long enough that stream 9 arrives while the command runs.
            cmd: vec!["sh".into(), "-c".into(), "sleep 0.5; echo fine".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: false,
        })
        .unwrap();
    let path = url.strip_prefix(server.base_url()).unwrap().to_owned();
    let mut client = RawClient::connect(server.local_addr(), &path).await;
    client.open(1, "bogus").await;
    client.open(3, "error").await;
    client.open(5, "error").await; // duplicate
    client.open(7, "stdout").await;
    client.send(&Frame::Ping { id: 41 }).await;
    // Streams opened after the command started are refused too.
    client.open(9, "stdin").await;
    let (data, control) = collect(&mut client).await;
    assert!(control.contains(&Frame::RstStream {
        stream_id: 1,
        status: berth_stream::spdy::frame::rst::REFUSED_STREAM
    }));
    assert!(
        control
            .iter()
            .any(|f| matches!(f, Frame::RstStream { stream_id: 5, .. }))
    );
    assert!(control.contains(&Frame::Ping { id: 41 }), "ping echoed");
    assert!(control.iter().any(|f| matches!(
        f,
        Frame::GoAway {
            status: goaway::OK,
            ..
        }
    )));
    assert_eq!(stream_data(&data, 7), "fine\n");
    assert_eq!(
        stream_data(&data, 3),
        r#"{"metadata":{},"status":"Success"}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_the_connection_and_the_server_keeps_serving() {
    let server = start_server(StreamConfig::default()).await;
    let url = server
        .register_exec(ExecRequest {
            container_id: "c1".into(),
            cmd: vec!["sh".into(), "-c".into(), "echo $$; exec sleep 60".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: false,
        })
        .unwrap();
    let path = url.strip_prefix(server.base_url()).unwrap().to_owned();
    let mut client = RawClient::connect(server.local_addr(), &path).await;
    client.open(1, "error").await;
    client.open(3, "stdout").await;
    // Wait for the command's pid on stdout, then send garbage.
    let mut pid_text = String::new();
    while !pid_text.ends_with('\n') {
        match client.recv().await.expect("stdout before garbage") {
            Frame::Data {
                stream_id: 3, data, ..
            } => pid_text.push_str(&String::from_utf8_lossy(&data)),
            _ => continue,
        }
    }
    let pid: i32 = pid_text.trim().parse().unwrap();
    client
        .conn
        .write_all(&[
            0x80, 0x03, 0x00, 0x01, FLAG_FIN, 0, 0, 12, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0xde, 0xad,
            0xbe, 0xef,
        ])
        .await
        .unwrap();
    let (_, control) = collect(&mut client).await;
    assert!(
        control.iter().any(|f| matches!(
            f,
            Frame::GoAway {
                status: goaway::PROTOCOL_ERROR,
                ..
            }
        )),
        "{control:?}"
    );
    // The exec'd process is not left behind.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z"),
        "process {pid} survived: {stat}"
    );

    let url = server
        .register_exec(ExecRequest {
            container_id: "c1".into(),
            cmd: vec!["echo".into(), "next client".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        })
        .unwrap();
    let run = run_goclient(&["exec", "-url", &url, "-transport", "spdy"], Some(b"")).await;
    assert_eq!(run.stdout, "next client\n", "{run:?}");
}

/// Runs one exec over a raw WebSocket offering only `protocol`, sends `stdin`
/// as one client message, and returns the chosen subprotocol and every
/// (opcode, payload) the server sent before its close frame.
async fn raw_ws_exec(url: &str, protocol: &str, stdin: &[u8]) -> (String, Vec<(u8, Vec<u8>)>) {
    use tokio::io::AsyncReadExt;
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let chosen = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-protocol"))
        })
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    // One masked client frame (zero mask key: payload unchanged).
    let opcode = if protocol.starts_with("base64.") {
        1
    } else {
        2
    };
    let len = u8::try_from(stdin.len())
        .ok()
        .filter(|n| *n < 126)
        .expect("short stdin");
    let mut frame = vec![0x80 | opcode, 0x80 | len, 0, 0, 0, 0];
    frame.extend_from_slice(stdin);
    s.write_all(&frame).await.unwrap();
    let mut msgs = Vec::new();
    let read = async {
        loop {
            let mut h = [0u8; 2];
            s.read_exact(&mut h).await.unwrap();
            let len = match h[1] & 0x7f {
                126 => u64::from(s.read_u16().await.unwrap()),
                127 => s.read_u64().await.unwrap(),
                n => u64::from(n),
            };
            let mut payload = vec![0u8; usize::try_from(len).unwrap()];
            s.read_exact(&mut payload).await.unwrap();
            if h[0] & 0x0f == 8 {
                break;
            }
            msgs.push((h[0] & 0x0f, payload));
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("server closes within 20 s");
    (chosen, msgs)
}

/// The node e2e spec's subprotocol (`channel.k8s.io`) and its text twin
/// (`base64.channel.k8s.io`) are negotiated and framed like kubelet's server:
/// stdin reaches the command, stdout/stderr come back on channels 1/2, and the
/// exit code comes as plain text on channel 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_v1_binary_and_base64_exec_over_a_real_socket() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let server = start_server(StreamConfig::default()).await;
    for protocol in ["channel.k8s.io", "base64.channel.k8s.io"] {
        let url = server
            .register_exec(ExecRequest {
                container_id: "c1".into(),
                cmd: ["sh", "-c", "head -c 3; echo err >&2; exit 3"]
                    .map(String::from)
                    .to_vec(),
                tty: false,
                stdin: true,
                stdout: true,
                stderr: true,
            })
            .unwrap();
        let stdin = if protocol.starts_with("base64.") {
            format!("0{}", b64.encode("hi\n")).into_bytes()
        } else {
            b"\x00hi\n".to_vec()
        };
        let (chosen, msgs) = raw_ws_exec(&url, protocol, &stdin).await;
        assert_eq!(chosen, protocol);
        let mut channels: [Vec<u8>; 4] = Default::default();
        for (opcode, payload) in &msgs {
            let (ch, data) = if protocol.starts_with("base64.") {
                assert_eq!(*opcode, 1, "{protocol}: text messages only: {msgs:?}");
                (payload[0] - b'0', b64.decode(&payload[1..]).unwrap())
            } else {
                assert_eq!(*opcode, 2, "{protocol}: binary messages only: {msgs:?}");
                (payload[0], payload[1..].to_vec())
            };
            channels[usize::from(ch)].extend_from_slice(&data);
        }
        assert_eq!(channels[1], b"hi\n", "{protocol}: {msgs:?}");
        assert_eq!(channels[2], b"err\n", "{protocol}: {msgs:?}");
        assert_eq!(
            String::from_utf8_lossy(&channels[3]),
            "command terminated with non-zero exit code: 3",
            "{protocol}"
        );
    }
}
