//! The `portforward.k8s.io` subprotocol over a SPDY session.
//!
//! The client opens streams in pairs sharing `port` and `requestID` headers: first
//! `streamType: error` (which it half-closes at once), then `streamType: data`. For
//! each complete pair the server connects to the port through the backend and
//! copies bytes both ways; any failure is written as text on the error stream,
//! which client-go treats as fatal for the whole connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, copy};
use tokio::time::Instant;

use crate::api::StreamBackend;
use crate::spdy::frame::{goaway, rst};
use crate::spdy::{Session, SpdyStream};

/// The SPDY subprotocol name.
pub(crate) const PROTOCOL: &str = "portforward.k8s.io";

#[derive(Default)]
struct PendingPair {
    error: Option<SpdyStream>,
    data: Option<SpdyStream>,
    deadline: Option<Instant>,
}

/// The key pairing an error stream with its data stream: `requestID`, or for
/// clients that predate it, the error stream's id (the data stream follows it).
fn pair_key(s: &SpdyStream, is_data: bool) -> String {
    match s.headers.get("requestid") {
        Some(id) => format!("r{id}"),
        None if is_data => format!("s{}", s.id.saturating_sub(2)),
        None => format!("s{}", s.id),
    }
}

/// Serves port-forwarding for one pod until the client disconnects.
pub(crate) async fn serve_spdy<B: StreamBackend>(
    mut session: Session,
    pod_sandbox_id: String,
    backend: Arc<B>,
    creation_timeout: Duration,
) {
    let mut pending: HashMap<String, PendingPair> = HashMap::new();
    loop {
        let next_deadline = pending.values().filter_map(|p| p.deadline).min();
        let stream = tokio::select! {
            s = session.accept() => s,
            () = sleep_until_opt(next_deadline) => {
                let now = Instant::now();
                let expired: Vec<String> = pending
                    .iter()
                    .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in expired {
                    if let Some(p) = pending.remove(&key) {
                        fail_pair(p, format!("timed out after {creation_timeout:?} waiting for the other stream of port-forward request {key}")).await;
                    }
                }
                continue;
            }
        };
        let Some(stream) = stream else { break };
        let streamtype = stream.headers.get("streamtype").unwrap_or("").to_owned();
        let is_data = match streamtype.as_str() {
            "data" => true,
            "error" => false,
            other => {
                tracing::info!(
                    streamtype = other,
                    "unexpected port-forward stream; resetting it"
                );
                stream.writer.reset(rst::REFUSED_STREAM).await;
                continue;
            }
        };
        let key = pair_key(&stream, is_data);
        let entry = pending.entry(key.clone()).or_default();
        let slot = if is_data {
            &mut entry.data
        } else {
            &mut entry.error
        };
        if slot.is_some() {
            tracing::info!(request = %key, "duplicate port-forward stream; resetting it");
            stream.writer.reset(rst::PROTOCOL_ERROR).await;
            continue;
        }
        *slot = Some(stream);
        entry
            .deadline
            .get_or_insert(Instant::now() + creation_timeout);
        if entry.error.is_some() && entry.data.is_some() {
            let Some(PendingPair {
                error: Some(error),
                data: Some(data),
                ..
            }) = pending.remove(&key)
            else {
                continue;
            };
            tokio::spawn(forward(
                error,
                data,
                pod_sandbox_id.clone(),
                backend.clone(),
            ));
        }
    }
    // The client went away (or sent GOAWAY): streams already forwarding end with
    // their connection.
    for (_, p) in pending.drain() {
        fail_pair(
            p,
            "connection closed before the port-forward stream pair was complete".into(),
        )
        .await;
    }
    session.shutdown(goaway::OK).await;
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn fail_pair(p: PendingPair, message: String) {
    tracing::info!(%message, "port-forward request failed");
    if let Some(e) = p.error {
        let _ = e.writer.write_all(Bytes::from(message)).await;
        let _ = e.writer.close().await;
    }
    if let Some(d) = p.data {
        d.writer.reset(rst::CANCEL).await;
    }
}

/// Copies one data stream to and from `localhost:port` in the pod.
async fn forward<B: StreamBackend>(
    error: SpdyStream,
    data: SpdyStream,
    pod: String,
    backend: Arc<B>,
) {
    let port = match data.headers.get("port").map(str::parse::<u16>) {
        Some(Ok(p)) if p > 0 => p,
        Some(_) => {
            let raw = data.headers.get("port").unwrap_or("").to_owned();
            fail_pair(
                PendingPair {
                    error: Some(error),
                    data: Some(data),
                    deadline: None,
                },
                format!("invalid port header {raw:?}: must be a number from 1 to 65535"),
            )
            .await;
            return;
        }
        None => {
            fail_pair(
                PendingPair {
                    error: Some(error),
                    data: Some(data),
                    deadline: None,
                },
                "port-forward stream has no port header".into(),
            )
            .await;
            return;
        }
    };
    let conn = match backend.port_forward(&pod, port).await {
        Ok(c) => c,
        Err(e) => {
            fail_pair(
                PendingPair {
                    error: Some(error),
                    data: Some(data),
                    deadline: None,
                },
                format!("error forwarding port {port} to pod {pod}: {e}"),
            )
            .await;
            return;
        }
    };
    let (mut conn_rd, mut conn_wr) = tokio::io::split(conn);
    let SpdyStream {
        reader: mut data_rd,
        writer: data_wr,
        ..
    } = data;
    let mut to_client = data_wr.clone();
    // Client -> pod: at the client's FIN, half-close the pod connection.
    let upstream = async {
        let r = copy(&mut data_rd, &mut conn_wr).await;
        let _ = conn_wr.shutdown().await;
        r
    };
    // Pod -> client: at the pod's EOF, FIN the data stream.
    let downstream = async {
        let r = copy(&mut conn_rd, &mut to_client).await;
        let _ = data_wr.close().await;
        r
    };
    tokio::pin!(upstream, downstream);
    let mut up_done = false;
    let result = loop {
        tokio::select! {
            r = &mut downstream => break r.map(|_| ()),
            r = &mut upstream, if !up_done => match r {
                Ok(_) => up_done = true,
                // The client reset the stream or left: stop copying.
                Err(e) => break Err(e),
            },
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, port, "port-forward copy ended with an error");
    }
    // The client waits for the error stream to end before it forgets the request.
    let _ = error.writer.close().await;
}
