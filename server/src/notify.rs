//! systemd's readiness protocol (`sd_notify(3)`), spoken directly: with `Type=notify`
//! systemd sets `NOTIFY_SOCKET` to a Unix datagram socket (a path, or an abstract name
//! written `@name`) and waits for `READY=1` before it starts units ordered after
//! berthd (kubelet). Each message is one datagram of newline-separated `KEY=value`
//! lines. Without `NOTIFY_SOCKET` (run by hand, Type=simple) nothing is sent.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where berthd reports its state to its service manager.
#[derive(Debug)]
pub struct Notifier {
    addr: SocketAddr,
    shown: String,
}

impl Notifier {
    /// The notifier named by `NOTIFY_SOCKET`, and removes that variable from the
    /// environment so that nothing berthd spawns (monitors, infra processes) inherits
    /// it and talks to systemd in berthd's name. `None` without the variable; a value
    /// this protocol cannot use (a `vsock:` address, a relative path) is logged and
    /// ignored: berthd runs, systemd times it out.
    ///
    /// Call it before any other thread exists (it edits the environment).
    pub fn take_from_env() -> Option<Self> {
        let value = std::env::var_os("NOTIFY_SOCKET")?;
        // SAFETY: called from main() before the tokio runtime or any other thread is
        // started, so nothing reads the environment concurrently.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let value = value.to_string_lossy().into_owned();
        match Self::parse(&value) {
            Ok(n) => Some(n),
            Err(e) => {
                eprintln!("berthd: warning: NOTIFY_SOCKET={value:?} ignored: {e}");
                None
            }
        }
    }

    /// A notifier for `NOTIFY_SOCKET`'s value: an absolute path or `@abstract-name`.
    pub fn parse(value: &str) -> io::Result<Self> {
        let addr = if let Some(name) = value.strip_prefix('@') {
            SocketAddr::from_abstract_name(name.as_bytes())?
        } else if value.starts_with('/') {
            SocketAddr::from_pathname(value)?
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only an absolute path or an @abstract name is supported",
            ));
        };
        Ok(Self {
            addr,
            shown: value.to_owned(),
        })
    }

    /// Sends one message (`KEY=value` lines). Failure is logged, never fatal: the
    /// daemon works; at worst systemd does not know it.
    pub fn send(&self, message: &str) {
        let sent =
            UnixDatagram::unbound().and_then(|s| s.send_to_addr(message.as_bytes(), &self.addr));
        match sent {
            Ok(_) => tracing::debug!(socket = %self.shown, message, "told the service manager"),
            Err(error) => tracing::warn!(
                socket = %self.shown,
                %error,
                message,
                "could not notify the service manager (NOTIFY_SOCKET)"
            ),
        }
    }

    /// Start-up is complete and the CRI socket serves.
    pub fn ready(&self, status: &str) {
        self.send(&format!(
            "READY=1\nMAINPID={}\nSTATUS={}",
            std::process::id(),
            one_line(status)
        ));
    }

    /// Shutdown has begun.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }
}

/// A STATUS value is one line: a newline would start a new assignment.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("recv");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn path_and_abstract_addresses_receive_the_messages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let by_path = UnixDatagram::bind(&path).expect("bind path");
        Notifier::parse(path.to_str().expect("utf-8"))
            .expect("path")
            .ready("serving");
        let got = recv(&by_path);
        assert_eq!(
            got,
            format!("READY=1\nMAINPID={}\nSTATUS=serving", std::process::id())
        );

        let name = format!("berth-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract");
        let abstract_sock = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        Notifier::parse(&format!("@{name}"))
            .expect("abstract")
            .stopping("stopping\non SIGTERM");
        assert_eq!(
            recv(&abstract_sock),
            "STOPPING=1\nSTATUS=stopping on SIGTERM"
        );
    }

    #[test]
    fn unusable_addresses_are_refused_and_a_dead_socket_is_not_fatal() {
        assert!(Notifier::parse("relative/notify").is_err());
        assert!(Notifier::parse("vsock:2:1234").is_err());
        // Nobody listens: send logs and returns.
        Notifier::parse("/nonexistent/berth-notify.sock")
            .expect("parse")
            .ready("x");
    }
}
