//! The gRPC socket's accept stream, made safe for a daemon at its open-file limit.
//!
//! tonic retries a failed accept at once. With EMFILE/ENFILE the pending connection
//! stays in the backlog, so the retry fails again at once: the accept loop spins a
//! core and the client waits, connected but unanswered, until its deadline (found by
//! `privileged_fd_limit`). This stream keeps one spare fd in reserve instead: at the
//! limit it frees the spare, accepts the pending connection, tells the client why
//! it is refused (an HTTP/2 GOAWAY naming "too many open files", which gRPC clients
//! report as Unavailable) and closes it, then takes the spare back. When even that
//! is impossible it backs off briefly instead of spinning. Other accept errors are
//! logged and backed off from too.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::net::{UnixListener, UnixStream};

/// How long to wait before accepting again after an accept error that shedding
/// could not clear.
const BACKOFF: Duration = Duration::from_millis(100);
/// At most one warning per this period while accepts keep failing.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// What a refused client is told.
const REFUSAL: &[u8] = b"berthd: too many open files (EMFILE); connection refused, retry later";

/// The next connection of a plain accept loop (the admin socket, the metrics server).
/// An accept error (EMFILE and the like) is logged, naming `what`, and retried after
/// [`BACKOFF`] rather than spun on.
pub async fn accept_or_back_off<S, A, F>(what: &str, mut accept: impl FnMut() -> F) -> S
where
    F: Future<Output = io::Result<(S, A)>>,
{
    loop {
        match accept().await {
            Ok((stream, _)) => return stream,
            Err(e) => {
                tracing::warn!(error = %e, "{what}: accept failed");
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}

/// The incoming connections of the gRPC server. Never yields an error: errors are
/// handled here (see the module doc).
#[derive(Debug)]
pub struct Incoming {
    listener: UnixListener,
    reserve: Option<std::fs::File>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
    last_warning: Option<Instant>,
    refused: u64,
}

impl Incoming {
    /// Wraps `listener`, taking one spare fd (on /dev/null) in reserve.
    pub fn new(listener: UnixListener) -> Self {
        Self {
            listener,
            reserve: open_reserve(),
            backoff: None,
            last_warning: None,
            refused: 0,
        }
    }

    fn warn(&mut self, error: &io::Error) {
        if self.last_warning.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        self.last_warning = Some(Instant::now());
        tracing::warn!(
            %error,
            refused_so_far = self.refused,
            "accepting a gRPC connection failed; clients over the limit are refused"
        );
    }

    /// At the fd limit: frees the reserve to accept one pending connection, refuses
    /// it, and takes the reserve back. False when there was no reserve to free or
    /// nothing was accepted with it.
    fn shed_one(&mut self, cx: &mut Context<'_>) -> bool {
        if self.reserve.take().is_none() {
            self.reserve = open_reserve();
            return false;
        }
        let shed = match self.listener.poll_accept(cx) {
            Poll::Ready(Ok((stream, _))) => {
                refuse(&stream);
                drop(stream);
                self.refused += 1;
                true
            }
            _ => false,
        };
        self.reserve = open_reserve();
        shed
    }
}

fn open_reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Best effort: an empty SETTINGS frame (the server preface) and a GOAWAY
/// (ENHANCE_YOUR_CALM) whose debug data says why. A fresh socket's buffer takes it
/// whole; a short write just leaves the client with a closed connection.
fn refuse(stream: &UnixStream) {
    let mut frames = Vec::with_capacity(9 + 9 + 8 + REFUSAL.len());
    // SETTINGS: length 0, type 0x4, no flags, stream 0.
    frames.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    let len = u32::try_from(8 + REFUSAL.len()).unwrap_or(8).to_be_bytes();
    // GOAWAY: type 0x7, no flags, stream 0; last stream 0, error ENHANCE_YOUR_CALM.
    frames.extend_from_slice(&[len[1], len[2], len[3], 0x7, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&0u32.to_be_bytes());
    frames.extend_from_slice(&0xbu32.to_be_bytes());
    frames.extend_from_slice(REFUSAL);
    let _ = stream.try_write(&frames);
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<UnixStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let me = self.get_mut();
        loop {
            if let Some(sleep) = me.backoff.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                me.backoff = None;
                if me.reserve.is_none() {
                    me.reserve = open_reserve();
                }
            }
            match me.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((stream, _))) => return Poll::Ready(Some(Ok(stream))),
                Poll::Ready(Err(e)) => {
                    me.warn(&e);
                    if is_fd_exhaustion(&e) && me.shed_one(cx) {
                        continue;
                    }
                    me.backoff = Some(Box::pin(tokio::time::sleep(BACKOFF)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    /// Lowers this process's soft RLIMIT_NOFILE for the guard's life.
    struct NofileGuard(libc::rlimit);

    impl NofileGuard {
        fn set(soft: u64) -> Self {
            let mut old = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into `old`, a valid out-pointer.
            let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut old) };
            assert_eq!(rc, 0);
            let new = libc::rlimit {
                rlim_cur: soft,
                rlim_max: old.rlim_max,
            };
            // SAFETY: `new` is a valid rlimit.
            let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const new) };
            assert_eq!(rc, 0);
            Self(old)
        }
    }

    impl Drop for NofileGuard {
        fn drop(&mut self) {
            // SAFETY: restores the limit read in `set`.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const self.0) };
        }
    }

    fn open_fds() -> u64 {
        std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
    }

    /// At the fd limit a pending client is refused with the reason (not left
    /// waiting), the stream does not end, and once fds are free it accepts again.
    /// Runs in its own process (the limit is process-wide): see the test below.
    async fn at_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let mut incoming = Incoming::new(UnixListener::bind(&path).expect("bind"));
        // Fill every fd up to a limit a little above what is open now.
        let _limit = NofileGuard::set(open_fds() + 8);
        let mut filler = Vec::new();
        while let Ok(f) = std::fs::File::open("/dev/null") {
            filler.push(f);
        }
        // The client's connect needs one fd: free one for it, then take it back
        // once connected (the server side is what must be at its limit).
        filler.pop();
        let mut client = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let next = tokio::time::timeout(Duration::from_millis(500), incoming.next()).await;
        assert!(next.is_err(), "a connection was accepted at the fd limit");
        let mut said = Vec::new();
        let _ = io::Read::read_to_end(&mut client, &mut said);
        let said = String::from_utf8_lossy(&said);
        assert!(
            said.contains("too many open files"),
            "the refused client was told {said:?}"
        );
        filler.clear();
        let _client = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        let accepted = tokio::time::timeout(Duration::from_secs(5), incoming.next())
            .await
            .expect("no connection accepted once fds were free");
        assert!(matches!(accepted, Some(Ok(_))));
    }

    #[test]
    fn refuses_with_the_reason_at_the_fd_limit_and_recovers() {
        // The fd limit is per process: run the body in a child of this test binary
        // so the parallel tests of this crate never see it.
        if std::env::var_os("BERTH_LISTENER_AT_LIMIT").is_some() {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(at_limit());
            return;
        }
        let exe = std::env::current_exe().expect("current_exe");
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "listener::tests::refuses_with_the_reason_at_the_fd_limit_and_recovers",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("BERTH_LISTENER_AT_LIMIT", "1")
            .output()
            .expect("running the test in a child");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "child run failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
