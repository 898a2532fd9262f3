//! One tracing span per RPC, with the method, the gRPC status and the duration.
//!
//! Successful calls are logged at `debug` (kubelet polls List*/Status every second);
//! failures at `info` with their code and message.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};
use tracing::Instrument;

/// Wraps a service so that every request gets an `rpc` span and a completion event.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcTraceLayer;

impl<S> Layer<S> for RpcTraceLayer {
    type Service = RpcTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTrace { inner }
    }
}

/// The service produced by [`RpcTraceLayer`].
#[derive(Debug, Clone)]
pub struct RpcTrace<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for RpcTrace<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
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
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let result = future.await;
                let ms = start.elapsed().as_secs_f64() * 1000.0;
                match &result {
                    Ok(response) => {
                        // Handler errors come back "trailers-only": grpc-status in the headers.
                        let code = header(response.headers(), "grpc-status");
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
                    Err(e) => tracing::warn!(duration_ms = ms, error = %e, "rpc transport error"),
                }
                result
            }
            .instrument(span),
        )
    }
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

    #[test]
    fn codes_are_named() {
        assert_eq!(code_name("12"), "Unimplemented");
        assert_eq!(code_name("x"), "x");
    }
}
