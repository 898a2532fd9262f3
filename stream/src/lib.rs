//! Berth's streaming server.
//!
//! `Exec`, `Attach` and `PortForward` CRI calls return a URL on this server; kubelet
//! (or crictl, critest) then connects to it and upgrades the HTTP request to
//! SPDY/3.1 or WebSocket. This crate owns everything on the wire side of that URL:
//! the token cache, the HTTP handshake, the SPDY/3.1 framing and session, the
//! remotecommand and portforward subprotocols, and the WebSocket channel protocol.
//! What runs at the other end (a process in a container, a TCP connection inside a
//! pod's network namespace) is supplied by the daemon through `StreamBackend`.

pub mod spdy;
