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
