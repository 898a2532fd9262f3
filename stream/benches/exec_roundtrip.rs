//! Exec round-trip latency through the streaming server: register → HTTP upgrade
//! → SPDY streams → command → Status → close, measured from the client side with
//! this crate's SPDY client (no Go process per sample).
//!
//! `cargo bench -p berth-stream --bench exec_roundtrip` prints the median, p90
//! and p99 of 300 samples for a backend that answers in memory (the server's own
//! cost) and for one that runs `/bin/true` on the host (plus a process spawn).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_stream::spdy::frame::Frame;
use berth_stream::{
    AttachRequest, BackendError, Connection, ExecRequest, StreamBackend, StreamConfig, StreamIo,
    StreamServer,
};
use support::raw::RawClient;
use tokio::io::AsyncWriteExt;

/// Writes one line and exits 0 without starting a process.
struct InMemory;

impl StreamBackend for InMemory {
    async fn exec(&self, _req: ExecRequest, io: StreamIo) -> Result<i32, BackendError> {
        if let Some(mut out) = io.stdout {
            out.write_all(b"x\n")
                .await
                .map_err(|e| BackendError::with_source("write", e))?;
        }
        Ok(0)
    }
    async fn attach(&self, _req: AttachRequest, _io: StreamIo) -> Result<(), BackendError> {
        Ok(())
    }
    async fn port_forward(
        &self,
        _pod: &str,
        _port: u16,
    ) -> Result<Box<dyn Connection>, BackendError> {
        Err(BackendError::new("not in this benchmark"))
    }
}

async fn one_exec(server: &StreamServer, cmd: &[&str]) -> Duration {
    let started = Instant::now();
    let url = server
        .register_exec(ExecRequest {
            container_id: "bench".into(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            tty: false,
            stdin: false,
            stdout: true,
            stderr: false,
        })
        .expect("register");
    let path = url
        .strip_prefix(server.base_url())
        .expect("our url")
        .to_owned();
    let mut client = RawClient::connect(server.local_addr(), &path).await;
    client.open(1, "error").await;
    client.open(3, "stdout").await;
    let mut error_done = false;
    while let Some(f) = client.recv().await {
        if let Frame::Data { stream_id: 1, .. } = &f
            && f.is_fin()
        {
            error_done = true;
            break;
        }
    }
    assert!(error_done, "the error stream ended");
    let elapsed = started.elapsed();
    drop(client);
    elapsed
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    // Nearest-rank percentile: per-mille arithmetic on integers.
    let pick =
        |per_mille: usize| samples[(samples.len() - 1) * per_mille / 1000].as_secs_f64() * 1e3;
    println!(
        "{name:<28} n={:<4} median {:>7.3} ms   p90 {:>7.3} ms   p99 {:>7.3} ms",
        samples.len(),
        pick(500),
        pick(900),
        pick(990)
    );
}

async fn bench<B: StreamBackend>(name: &str, backend: B, cmd: &[&str]) {
    let server = StreamServer::start(StreamConfig::default(), Arc::new(backend))
        .await
        .expect("server");
    for _ in 0..20 {
        one_exec(&server, cmd).await;
    }
    let mut samples = Vec::with_capacity(300);
    for _ in 0..300 {
        samples.push(one_exec(&server, cmd).await);
    }
    report(name, samples);
}

fn main() {
    // `cargo test --benches` runs bench binaries with --bench absent; keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("exec_roundtrip: run with `cargo bench` to measure");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        bench("exec, in-memory backend", InMemory, &["x"]).await;
        bench(
            "exec /bin/true on the host",
            support::HostBackend,
            &["/bin/true"],
        )
        .await;
    });
}
