//! Berth's streaming server.
//!
//! `Exec`, `Attach` and `PortForward` CRI calls return a URL on this server; kubelet
//! (or crictl, critest) then connects to it and upgrades the HTTP request to
//! SPDY/3.1 or WebSocket. This crate owns everything on the wire side of that URL:
//! the token cache, the HTTP handshake, the SPDY/3.1 framing and session, the
//! remotecommand and portforward subprotocols, and the WebSocket channel protocol.
//! What runs at the other end (a process in a container, a TCP connection inside a
//! pod's network namespace) is supplied by the daemon through [`StreamBackend`].
//!
//! ```no_run
//! # async fn demo<B: berth_stream::StreamBackend>(backend: std::sync::Arc<B>) -> Result<(), Box<dyn std::error::Error>> {
//! use berth_stream::{ExecRequest, StreamConfig, StreamServer};
//! let server = StreamServer::start(StreamConfig::default(), backend).await?;
//! let url = server.register_exec(ExecRequest {
//!     container_id: "c1".into(),
//!     cmd: vec!["sh".into()],
//!     tty: true,
//!     stdin: true,
//!     stdout: true,
//!     stderr: false,
//! })?;
//! // Return `url` in the CRI ExecResponse.
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod api;
mod portforward;
mod remotecommand;
mod server;
pub mod spdy;
mod token;
mod ws;

pub use api::{
    AttachRequest, BackendError, ClientInput, ClientOutput, Connection, ExecRequest,
    PortForwardRequest, RequestError, ResizeEvents, StreamBackend, StreamIo, TerminalSize,
};
pub use server::{StartError, StreamConfig, StreamServer};
