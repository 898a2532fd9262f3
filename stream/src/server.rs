//! The HTTP server: token lookup, protocol handshake and upgrade to SPDY/3.1 or
//! WebSocket, then hand-off to the subprotocol.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{AttachRequest, ExecRequest, PortForwardRequest, RequestError, StreamBackend};
use crate::remotecommand::{self, Command, Version};
use crate::spdy::{Session, SessionConfig};
use crate::token::{Pending, TokenCache};
use crate::{portforward, ws};

/// The header carrying the client's (and then the chosen) subprotocol over SPDY.
const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
/// The header listing what we accept, sent with 403.
const ACCEPTED_HEADER: &str = "x-accepted-stream-protocol-versions";

/// Settings of the streaming server.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Address to listen on; the default is loopback with an ephemeral port.
    pub addr: SocketAddr,
    /// Base URL handed to clients (e.g. when behind a proxy); by default
    /// `http://<bound address>`.
    pub base_url: Option<String>,
    /// How long a registered request waits for its client (kubelet: 1 minute).
    pub token_ttl: Duration,
    /// How long to wait for the client to open its streams (kubelet: 30 s).
    pub stream_creation_timeout: Duration,
    /// How long to wait for the client to close after we finished.
    pub linger: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_url: None,
            token_ttl: Duration::from_secs(60),
            stream_creation_timeout: Duration::from_secs(30),
            linger: Duration::from_secs(5),
        }
    }
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Binding the listening socket failed.
    #[error("cannot listen on {addr} for the streaming server")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

struct Inner<B> {
    tokens: Arc<TokenCache>,
    backend: Arc<B>,
    config: StreamConfig,
}

/// A running streaming server. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct StreamServer {
    addr: SocketAddr,
    base_url: String,
    tokens: Arc<TokenCache>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl StreamServer {
    /// Binds `config.addr` and serves streams with `backend` in the background.
    pub async fn start<B: StreamBackend>(
        config: StreamConfig,
        backend: Arc<B>,
    ) -> Result<StreamServer, StartError> {
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.addr,
            source,
        })?;
        let base_url = config
            .base_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"))
            .trim_end_matches('/')
            .to_owned();
        let tokens = Arc::new(TokenCache::new(config.token_ttl));
        let inner = Arc::new(Inner {
            tokens: tokens.clone(),
            backend,
            config,
        });
        let app = Router::new()
            .route("/{kind}/{token}", any(handle::<B>))
            .with_state(inner);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "streaming server stopped");
            }
        });
        tracing::info!(%addr, "streaming server listening");
        Ok(StreamServer {
            addr,
            base_url,
            tokens,
            stop: Some(stop_tx),
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL prefix of every stream URL (`http://127.0.0.1:<port>`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn register(&self, req: Pending) -> Result<String, RequestError> {
        let path = req.path();
        let token = self.tokens.insert(req)?;
        Ok(format!("{}/{path}/{token}", self.base_url))
    }

    /// Validates and caches an exec request; returns the URL for the client.
    pub fn register_exec(&self, req: ExecRequest) -> Result<String, RequestError> {
        req.validate()?;
        self.register(Pending::Command(Command::Exec(req)))
    }

    /// Validates and caches an attach request; returns the URL for the client.
    pub fn register_attach(&self, req: AttachRequest) -> Result<String, RequestError> {
        req.validate()?;
        self.register(Pending::Command(Command::Attach(req)))
    }

    /// Validates and caches a port-forward request; returns the URL for the client.
    pub fn register_portforward(&self, req: PortForwardRequest) -> Result<String, RequestError> {
        req.validate()?;
        self.register(Pending::PortForward(req))
    }

    /// Stops accepting connections and waits for the listener task to end
    /// (connections already upgraded carry on until they finish).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

fn plain(status: StatusCode, msg: String) -> Response {
    (status, msg).into_response()
}

fn header_contains(headers: &HeaderMap, name: header::HeaderName, needle: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(needle)))
            .unwrap_or(false)
    })
}

/// Picks the first protocol the client lists that we support.
fn negotiate(headers: &HeaderMap, supported: &[&str]) -> Result<Option<String>, Vec<String>> {
    let client: Vec<String> = headers
        .get_all(PROTOCOL_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    if client.is_empty() {
        // A client from before protocol negotiation: the oldest protocol.
        return Ok(None);
    }
    match client.iter().find(|c| supported.contains(&c.as_str())) {
        Some(p) => Ok(Some(p.clone())),
        None => Err(client),
    }
}

async fn handle<B: StreamBackend>(
    State(inner): State<Arc<Inner<B>>>,
    Path((kind, token)): Path<(String, String)>,
    req: Request,
) -> Response {
    let Some(pending) = inner.tokens.take(&token, &kind) else {
        return plain(
            StatusCode::NOT_FOUND,
            format!("unknown or expired {kind} token\n"),
        );
    };
    if header_contains(req.headers(), header::UPGRADE, "websocket") {
        return upgrade_websocket(inner, pending, req).await;
    }
    upgrade_spdy(inner, pending, req)
}

async fn upgrade_websocket<B: StreamBackend>(
    inner: Arc<Inner<B>>,
    pending: Pending,
    req: Request,
) -> Response {
    let (mut parts, _body) = req.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let supported: &[&str] = match pending {
        Pending::PortForward(_) => &[ws::TUNNEL_PROTOCOL],
        _ => remotecommand::WEBSOCKET_PROTOCOLS,
    };
    let upgrade = upgrade.protocols(supported.iter().copied());
    let Some(chosen) = upgrade
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .map(str::to_owned)
    else {
        let offered: Vec<String> = upgrade
            .requested_protocols()
            .filter_map(|p| p.to_str().ok().map(str::to_owned))
            .collect();
        return plain(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: no supported WebSocket subprotocol: client offers {offered:?}, server supports {supported:?}\n"
            ),
        );
    };
    let linger = inner.config.linger;
    let creation_timeout = inner.config.stream_creation_timeout;
    upgrade.on_upgrade(move |socket| async move {
        match pending {
            Pending::PortForward(req) => {
                let session = Session::start(ws::tunnel(socket), SessionConfig { linger });
                portforward::serve_spdy(
                    session,
                    req.pod_sandbox_id,
                    inner.backend.clone(),
                    creation_timeout,
                )
                .await;
            }
            Pending::Command(command) => {
                run_ws(socket, &chosen, command, inner.backend.clone(), linger).await
            }
        }
    })
}

async fn run_ws<B: StreamBackend>(
    socket: axum::extract::ws::WebSocket,
    protocol: &str,
    cmd: Command,
    backend: Arc<B>,
    linger: Duration,
) {
    let (framing, version) = ws::Framing::for_protocol(protocol);
    ws::serve_exec(socket, framing, version, cmd, backend, linger).await;
}

fn upgrade_spdy<B: StreamBackend>(
    inner: Arc<Inner<B>>,
    pending: Pending,
    mut req: Request,
) -> Response {
    let supported: &[&str] = match pending {
        Pending::PortForward(_) => &[portforward::PROTOCOL],
        _ => remotecommand::SPDY_PROTOCOLS,
    };
    let chosen = match negotiate(req.headers(), supported) {
        Ok(p) => p,
        Err(client) => {
            let mut resp = plain(
                StatusCode::FORBIDDEN,
                format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {client:?}, server supports {supported:?}\n"
                ),
            );
            if let Ok(v) = HeaderValue::from_str(&supported.join(", ")) {
                resp.headers_mut().insert(ACCEPTED_HEADER, v);
            }
            return resp;
        }
    };
    if !header_contains(req.headers(), header::CONNECTION, "upgrade")
        || !header_contains(req.headers(), header::UPGRADE, "spdy/3.1")
    {
        return plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: the request must carry Connection: Upgrade and Upgrade: SPDY/3.1 or websocket\n".into(),
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let config = inner.config.clone();
    let backend = inner.backend.clone();
    let protocol = chosen.clone().unwrap_or_default();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(error = %e, "SPDY upgrade failed");
                return;
            }
        };
        let session = Session::start(
            TokioIo::new(upgraded),
            SessionConfig {
                linger: config.linger,
            },
        );
        match pending {
            Pending::PortForward(req) => {
                portforward::serve_spdy(
                    session,
                    req.pod_sandbox_id,
                    backend,
                    config.stream_creation_timeout,
                )
                .await;
            }
            Pending::Command(command) => {
                let version = Version::from_name(&protocol).unwrap_or(Version::V1);
                remotecommand::serve_spdy(
                    session,
                    version,
                    command,
                    backend,
                    config.stream_creation_timeout,
                )
                .await;
            }
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Some(p) = chosen
        && let Ok(v) = HeaderValue::from_str(&p)
    {
        h.insert(PROTOCOL_HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(PROTOCOL_HEADER, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn negotiation_takes_the_clients_first_supported_protocol() {
        let h = headers(&[
            "v6.channel.k8s.io",
            "v4.channel.k8s.io",
            "v5.channel.k8s.io",
        ]);
        assert_eq!(
            negotiate(&h, remotecommand::SPDY_PROTOCOLS),
            Ok(Some("v4.channel.k8s.io".into()))
        );
    }

    #[test]
    fn negotiation_fails_when_nothing_matches_and_passes_without_a_header() {
        assert!(
            negotiate(
                &headers(&["v9.channel.k8s.io"]),
                remotecommand::SPDY_PROTOCOLS
            )
            .is_err()
        );
        assert_eq!(
            negotiate(&headers(&[]), remotecommand::SPDY_PROTOCOLS),
            Ok(None)
        );
        assert_eq!(
            negotiate(
                &headers(&["a, portforward.k8s.io"]),
                &[portforward::PROTOCOL]
            ),
            Ok(Some("portforward.k8s.io".into()))
        );
    }
}
