//! One tracing span per RPC, with the method, the gRPC status and the duration.
//!
//! Successful calls are logged at `debug` (kubelet polls List*/Status every second);
//! failures at `info` with their code and message. The layer also counts the RPCs in
//! flight, so that shutdown can wait for exactly those and not for idle connections.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};
use tracing::Instrument;

/// Counts RPCs whose handler has not returned yet.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl InFlight {
    /// RPCs currently being handled.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Resolves once no RPC is being handled.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Decrements the in-flight count when the handler's future ends, however it ends.
struct InFlightGuard(Arc<InFlight>);

impl InFlightGuard {
    fn new(in_flight: &Arc<InFlight>) -> Self {
        in_flight.count.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(in_flight))
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Wraps a service so that every request gets an `rpc` span and a completion event.
#[derive(Debug, Clone, Default)]
pub struct RpcTraceLayer {
    in_flight: Arc<InFlight>,
}

impl RpcTraceLayer {
    /// A layer counting into `in_flight`.
    pub fn new(in_flight: Arc<InFlight>) -> Self {
        Self { in_flight }
    }
}

impl<S> Layer<S> for RpcTraceLayer {
    type Service = RpcTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTrace {
            inner,
            in_flight: Arc::clone(&self.in_flight),
        }
    }
}

/// The service produced by [`RpcTraceLayer`].
#[derive(Debug, Clone)]
pub struct RpcTrace<S> {
    inner: S,
    in_flight: Arc<InFlight>,
}

impl<S, B> Service<http::Request<B>> for RpcTrace<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let span = tracing::info_span!("rpc", method = %method);
        let start = Instant::now();
        let guard = InFlightGuard::new(&self.in_flight);
        let deadline = client_deadline(request.headers());
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                // The client's deadline (grpc-timeout) ends the call with
                // DeadlineExceeded, as gRPC servers answer. tonic's own enforcement,
                // outside this layer, would answer Cancelled; firing a little earlier
                // (and being polled first) makes ours the answer.
                let result = match deadline {
                    Some(d) => match tokio::time::timeout(d, future).await {
                        Ok(r) => r,
                        Err(_) => Ok(tonic::Status::deadline_exceeded(
                            "the client's deadline expired before the call completed",
                        )
                        .into_http()),
                    },
                    None => future.await,
                };
                drop(guard);
                let elapsed = start.elapsed();
                let ms = elapsed.as_secs_f64() * 1000.0;
                match &result {
                    Ok(response) => {
                        // Handler errors come back "trailers-only": grpc-status in the headers.
                        let code = header(response.headers(), "grpc-status");
                        crate::prom::global().observe_rpc(
                            &method,
                            &metric_code(code.as_deref()),
                            elapsed,
                        );
                        match code.as_deref() {
                            None | Some("0") => tracing::debug!(duration_ms = ms, "rpc ok"),
                            Some(code) => {
                                let message = header(response.headers(), "grpc-message")
                                    .map(|m| percent_decode(&m))
                                    .unwrap_or_default();
                                tracing::info!(duration_ms = ms, code = %code_name(code), %message, "rpc failed");
                            }
                        }
                    }
                    Err(e) => {
                        crate::prom::global().observe_rpc(&method, "transport_error", elapsed);
                        tracing::warn!(duration_ms = ms, error = %e, "rpc transport error");
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}

/// The client's deadline from `grpc-timeout` (e.g. `1m`, `30S`), nine tenths of it so
/// that it fires before tonic's timer for the same header.
fn client_deadline(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        'H' => Duration::from_secs(n.checked_mul(3600)?),
        'M' => Duration::from_secs(n.checked_mul(60)?),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    };
    Some(d.mul_f64(0.9))
}

fn header(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn code_name(code: &str) -> String {
    code.parse::<i32>()
        .map(|c| format!("{:?}", tonic::Code::from_i32(c)))
        .unwrap_or_else(|_| code.to_owned())
}

/// The `code` label of the RPC metrics: gRPC's canonical `OK` for success (no
/// grpc-status in the headers, or 0), else the code's name (`NotFound`, ...).
fn metric_code(grpc_status: Option<&str>) -> String {
    match grpc_status {
        None | Some("0") => "OK".to_owned(),
        Some(code) => code_name(code),
    }
}

/// grpc-message is percent-encoded on the wire.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_is_decoded() {
        assert_eq!(percent_decode("no%20such%20pod"), "no such pod");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%é"), "%é");
    }

    #[tokio::test]
    async fn in_flight_counts_until_the_guard_drops() {
        let in_flight = Arc::new(InFlight::default());
        let guard = InFlightGuard::new(&in_flight);
        assert_eq!(in_flight.count(), 1);
        let waiter = tokio::spawn({
            let in_flight = Arc::clone(&in_flight);
            async move { in_flight.wait_idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(guard);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("idle is signalled")
            .expect("task");
        assert_eq!(in_flight.count(), 0);
    }

    #[test]
    fn grpc_timeouts_parse() {
        use std::time::Duration;
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert("grpc-timeout", v.parse().expect("header"));
            client_deadline(&m)
        };
        assert_eq!(h("10S"), Some(Duration::from_secs(9)));
        assert_eq!(h("1m"), Some(Duration::from_micros(900)));
        assert_eq!(h("2M"), Some(Duration::from_secs(108)));
        assert_eq!(h("x"), None);
        assert_eq!(h("123456789S"), None);
        assert_eq!(client_deadline(&http::HeaderMap::new()), None);
    }

    #[test]
    fn codes_are_named() {
        assert_eq!(code_name("12"), "Unimplemented");
        assert_eq!(code_name("x"), "x");
        assert_eq!(metric_code(None), "OK");
        assert_eq!(metric_code(Some("0")), "OK");
        assert_eq!(metric_code(Some("5")), "NotFound");
    }
}
