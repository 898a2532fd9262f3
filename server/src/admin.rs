//! berthd's private admin socket, `<state_dir>/admin.sock`: how `berthd image
//! import|pull|list|rm|export` reach the image store of a running daemon (which holds the
//! store's lock), as `ctr images import` goes through containerd.
//!
//! Only the user berthd runs as (root) may use it: the socket is 0600 in the 0711
//! state dir, and every connection's peer credentials are checked as well. The
//! client opens the archive (or creates the output file) itself and passes the open
//! descriptor with `SCM_RIGHTS`, so berthd never opens a path a client names and
//! the file is accessed with the client's own rights. Only regular files are
//! accepted: a read of one always completes, so no session can hang on a pipe.
//!
//! The protocol is one JSON request line (at most [`MAX_REQUEST`] bytes, within
//! [`REQUEST_TIMEOUT`]), answered by JSON lines: progress while an import or a
//! pull runs, then one `done` or `error`.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_image::store::{ImportProgress, PullProgress};
use berth_image::{Image, ImageStore, StoreError};
use serde::{Deserialize, Serialize};

/// Largest request line.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a client has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reply may wait on a client that does not read.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Least time between two progress lines.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Largest reply line a client accepts (a list of many images).
const MAX_REPLY: u64 = 64 * 1024 * 1024;

/// The admin socket of the daemon whose state dir is `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("admin.sock")
}

/// What a client asks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Import the archive whose descriptor comes with the request.
    Import {
        /// How the client names the archive (for messages only).
        label: String,
    },
    /// Pull an image from its registry, anonymously (only the headers the registry's
    /// `hosts.toml` sets are sent), as `ctr images pull`.
    Pull {
        /// Tag or digest reference.
        reference: String,
    },
    /// List the stored images.
    List,
    /// Remove images with CRI RemoveImage semantics (all tags of each).
    Remove {
        /// Tags, digest references or ids.
        refs: Vec<String>,
        /// Remove pinned images too.
        force: bool,
    },
    /// Export images into the file whose descriptor comes with the request.
    Export {
        /// Tags, digest references or ids.
        refs: Vec<String>,
    },
}

/// One image in a reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    /// `sha256:...`.
    pub id: String,
    /// Bytes of layers, config and manifest.
    pub size: u64,
    /// Tags, else repo digests.
    pub names: Vec<String>,
    /// Whether an `image.pinned_images` entry names it.
    pub pinned: bool,
}

impl Summary {
    /// The summary of `image` in `store`.
    pub fn of(store: &ImageStore, image: &Image) -> Self {
        let mut names = image.repo_tags.clone();
        if names.is_empty() {
            names = image.repo_digests.clone();
        }
        Self {
            id: image.id.to_string(),
            size: image.size,
            names,
            pinned: store.pinned_by(image).is_some(),
        }
    }
}

/// One reply line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// An import's progress.
    Progress {
        /// Archive bytes read.
        read_bytes: u64,
        /// Layers unpacked.
        layers_done: usize,
        /// Layers to unpack (0 while the archive is read).
        layers: usize,
    },
    /// A pull's progress.
    PullProgress {
        /// Layers ready.
        layers_done: usize,
        /// Layers of the image.
        layers: usize,
        /// Layer bytes downloaded.
        received_bytes: u64,
        /// Compressed bytes of all layers.
        total_bytes: u64,
    },
    /// The request finished: the images imported, listed, removed or exported, and
    /// what failed for individual names (`rm`).
    Done {
        /// The images.
        images: Vec<Summary>,
        /// One message per name that could not be handled.
        errors: Vec<String>,
    },
    /// The request failed.
    Error {
        /// What failed and what to do.
        message: String,
    },
}

/// Binds the admin socket (replacing a leftover of an earlier run: the state dir
/// is this daemon's, the instance lock proves it) and serves it until the returned
/// task is aborted.
pub fn serve(state_dir: &Path, store: ImageStore) -> io::Result<tokio::task::JoinHandle<()>> {
    let path = socket_path(state_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let handle = tokio::runtime::Handle::current();
    Ok(tokio::spawn(async move {
        loop {
            let stream =
                crate::listener::accept_or_back_off("admin socket", || listener.accept()).await;
            let stream = match stream.into_std().and_then(|s| {
                s.set_nonblocking(false)?;
                Ok(s)
            }) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket: connection unusable");
                    continue;
                }
            };
            let store = store.clone();
            let handle = handle.clone();
            tokio::task::spawn_blocking(move || session(stream, &store, &handle));
        }
    }))
}

/// Serves one connection on a blocking thread.
fn session(stream: UnixStream, store: &ImageStore, handle: &tokio::runtime::Handle) {
    let out = Arc::new(Mutex::new(stream.try_clone().ok()));
    let reply = |r: &Reply| send(&out, r);
    match rustix::net::sockopt::socket_peercred(&stream) {
        Ok(cred) if cred.uid == rustix::process::geteuid() => {}
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid.as_raw(),
                pid = cred.pid.as_raw_nonzero(),
                "admin socket: refused a connection from another user"
            );
            reply(&Reply::Error {
                message: format!(
                    "permission denied: only uid {} (berthd's user) may use the admin socket",
                    rustix::process::geteuid().as_raw()
                ),
            });
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin socket: no peer credentials");
            return;
        }
    }
    let (request, fd) = match read_request(&stream) {
        Ok(r) => r,
        Err(message) => {
            reply(&Reply::Error { message });
            return;
        }
    };
    let _ = stream.set_write_timeout(Some(REPLY_TIMEOUT));
    let result = handle.block_on(run(request, fd, store, &out));
    match result {
        Ok((images, errors)) => reply(&Reply::Done { images, errors }),
        Err(message) => reply(&Reply::Error { message }),
    }
}

/// Writes one reply line; a client gone is no error of ours (the operation itself
/// completes: imports and removals are atomic).
fn send(out: &Mutex<Option<UnixStream>>, reply: &Reply) {
    let mut guard = out.lock().unwrap_or_else(|p| p.into_inner());
    let Some(stream) = guard.as_mut() else {
        return;
    };
    let mut line = serde_json::to_vec(reply).unwrap_or_default();
    line.push(b'\n');
    if stream.write_all(&line).is_err() {
        *guard = None;
    }
}

/// Reads the request line and the descriptor sent with it, within the time and
/// size limits.
fn read_request(stream: &UnixStream) -> Result<(Request, Option<OwnedFd>), String> {
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| format!("admin socket: {e}"))?;
    let started = Instant::now();
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let mut fd = None;
    loop {
        if started.elapsed() > REQUEST_TIMEOUT {
            return Err(format!(
                "no complete request within {}s",
                REQUEST_TIMEOUT.as_secs()
            ));
        }
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut cmsg = rustix::net::RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            stream,
            &mut [IoSliceMut::new(&mut buf[len..])],
            &mut cmsg,
            rustix::net::RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| format!("reading the request: {e}"))?;
        for msg in cmsg.drain() {
            if let rustix::net::RecvAncillaryMessage::ScmRights(fds) = msg {
                // The first descriptor is the file; any other is closed on drop.
                for f in fds {
                    fd.get_or_insert(f);
                }
            }
        }
        if received.bytes == 0 {
            return Err("the client closed the connection before its request ended".into());
        }
        len += received.bytes;
        if let Some(end) = buf[..len].iter().position(|&b| b == b'\n') {
            let request = serde_json::from_slice(&buf[..end])
                .map_err(|e| format!("malformed request: {e}"))?;
            return Ok((request, fd));
        }
        if len == buf.len() {
            return Err(format!("request longer than {MAX_REQUEST} bytes"));
        }
    }
}

/// The descriptor as a regular file, open for reading or writing as `write` says.
fn regular_file(fd: Option<OwnedFd>, write: bool) -> Result<File, String> {
    let what = if write { "output file" } else { "archive" };
    let fd = fd.ok_or_else(|| format!("no {what} descriptor came with the request"))?;
    let meta = File::from(fd.try_clone().map_err(|e| e.to_string())?)
        .metadata()
        .map_err(|e| format!("{what}: {e}"))?;
    if !meta.file_type().is_file() {
        let kind = if meta.file_type().is_fifo() {
            "a pipe"
        } else {
            "not a regular file"
        };
        return Err(format!("the {what} is {kind}; give a regular file"));
    }
    let mode = rustix::fs::fcntl_getfl(&fd).map_err(|e| format!("{what}: {e}"))?;
    let access = mode & rustix::fs::OFlags::RWMODE;
    let ok = if write {
        access != rustix::fs::OFlags::RDONLY
    } else {
        access != rustix::fs::OFlags::WRONLY
    };
    if !ok {
        return Err(format!(
            "the {what} descriptor is not open for {}",
            if write { "writing" } else { "reading" }
        ));
    }
    Ok(File::from(fd))
}

/// A label fit for one log line.
fn clean_label(label: &str) -> String {
    label
        .chars()
        .filter(|c| !c.is_control())
        .take(1024)
        .collect()
}

type Outcome = Result<(Vec<Summary>, Vec<String>), String>;

fn store_error(e: &StoreError) -> String {
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg = format!("{msg}: {text}");
        }
        cause = c.source();
    }
    msg
}

async fn run(
    request: Request,
    fd: Option<OwnedFd>,
    store: &ImageStore,
    out: &Arc<Mutex<Option<UnixStream>>>,
) -> Outcome {
    let summaries = |images: &[Image]| -> Vec<Summary> {
        images.iter().map(|i| Summary::of(store, i)).collect()
    };
    match request {
        Request::List => Ok((summaries(&store.list()), Vec::new())),
        Request::Import { label } => {
            let file = regular_file(fd, false)?;
            let label = clean_label(&label);
            tracing::info!(archive = %label, "image import through the admin socket");
            let out = Arc::clone(out);
            let last = Mutex::new(None::<Instant>);
            let progress: berth_image::store::ProgressFn = Arc::new(move |p: ImportProgress| {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                // Layer steps always go out; byte counts at most every PROGRESS_EVERY.
                if p.layers == 0 && last.is_some_and(|t: Instant| t.elapsed() < PROGRESS_EVERY) {
                    return;
                }
                *last = Some(Instant::now());
                send(
                    &out,
                    &Reply::Progress {
                        read_bytes: p.read_bytes,
                        layers_done: p.layers_done,
                        layers: p.layers,
                    },
                );
            });
            let images = store
                .import_archive_file(file, Path::new(&label), Some(progress))
                .await
                .map_err(|e| store_error(&e))?;
            Ok((summaries(&images), Vec::new()))
        }
        Request::Pull { reference } => {
            let label = clean_label(&reference);
            tracing::info!(reference = %label, "image pull through the admin socket");
            let out = Arc::clone(out);
            let progress: berth_image::store::PullProgressFn = Arc::new(move |p: PullProgress| {
                send(
                    &out,
                    &Reply::PullProgress {
                        layers_done: p.layers_done,
                        layers: p.layers,
                        received_bytes: p.received_bytes,
                        total_bytes: p.total_bytes,
                    },
                )
            });
            let started = Instant::now();
            let pulled = store
                .pull_with_progress(&reference, &berth_image::Auth::anonymous(), Some(progress))
                .await;
            crate::prom::global().observe_pull(
                pulled.is_ok(),
                started.elapsed(),
                pulled.as_ref().ok().map(|i| i.size),
            );
            let image = pulled.map_err(|e| store_error(&e))?;
            Ok((summaries(std::slice::from_ref(&image)), Vec::new()))
        }
        Request::Remove { refs, force } => {
            let mut removed = Vec::new();
            let mut errors = Vec::new();
            for r in &refs {
                match store.remove_with(r, force).await {
                    Ok(Some(image)) => {
                        tracing::info!(reference = %clean_label(r), image = %image.id, force, "image removed through the admin socket");
                        removed.push(Summary::of(store, &image));
                    }
                    Ok(None) => errors.push(format!("image {r:?} is not present")),
                    Err(e) => errors.push(store_error(&e)),
                }
            }
            Ok((removed, errors))
        }
        Request::Export { refs } => {
            if refs.is_empty() {
                return Err("name at least one image to export".into());
            }
            let file = regular_file(fd, true)?;
            let images = store
                .export_archive(&refs, file)
                .await
                .map_err(|e| store_error(&e))?;
            Ok((summaries(&images), Vec::new()))
        }
    }
}

/// Connects to the admin socket of the daemon using `state_dir`: `Ok(None)` when
/// no daemon serves it.
pub fn connect(state_dir: &Path) -> io::Result<Option<UnixStream>> {
    match UnixStream::connect(socket_path(state_dir)) {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Progress of a request, as the client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// An import.
    Import(ImportProgress),
    /// A pull.
    Pull(PullProgress),
}

/// Sends `request` (with `fd` attached) and reads replies until the final one,
/// handing progress to `on_progress`. Returns the final `done` (an `error` reply
/// is returned as `Err` with the daemon's message).
pub fn call(
    stream: UnixStream,
    request: &Request,
    fd: Option<BorrowedFd<'_>>,
    mut on_progress: impl FnMut(Progress),
) -> anyhow::Result<(Vec<Summary>, Vec<String>)> {
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        cmsg.push(rustix::net::SendAncillaryMessage::ScmRights(&fds[..]));
    }
    let sent = rustix::net::sendmsg(
        stream.as_fd(),
        &[IoSlice::new(&line)],
        &mut cmsg,
        rustix::net::SendFlags::NOSIGNAL,
    )
    .map_err(io::Error::from)
    .and_then(|sent| {
        if sent < line.len() {
            (&stream).write_all(&line[sent..])?;
        }
        Ok(())
    });
    // A daemon that refuses the connection (another user) answers and closes before
    // reading the request: its answer says why, the broken pipe does not.
    let mut reader = BufReader::new(stream);
    loop {
        let mut buf = Vec::new();
        let read = (&mut reader).take(MAX_REPLY).read_until(b'\n', &mut buf);
        if let Err(e) = &sent
            && (read.is_err() || buf.is_empty())
        {
            anyhow::bail!("sending the request to berthd's admin socket: {e}");
        }
        read?;
        if buf.is_empty() {
            anyhow::bail!("berthd closed the admin connection without an answer (see its log)");
        }
        match serde_json::from_slice::<Reply>(&buf)? {
            Reply::Progress {
                read_bytes,
                layers_done,
                layers,
            } => on_progress(Progress::Import(ImportProgress {
                read_bytes,
                layers_done,
                layers,
            })),
            Reply::PullProgress {
                layers_done,
                layers,
                received_bytes,
                total_bytes,
            } => on_progress(Progress::Pull(PullProgress {
                layers_done,
                layers,
                received_bytes,
                total_bytes,
            })),
            Reply::Done { images, errors } => return Ok((images, errors)),
            Reply::Error { message } => anyhow::bail!("{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_are_one_json_line_each() {
        let r = Request::Remove {
            refs: vec!["busybox:1".into()],
            force: false,
        };
        let text = serde_json::to_string(&r).expect("json");
        assert_eq!(
            text,
            r#"{"op":"remove","refs":["busybox:1"],"force":false}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).expect("parse"), r);
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
    }

    #[test]
    fn only_readable_regular_files_are_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.tar");
        std::fs::write(&path, b"x").expect("write");
        let ro = OwnedFd::from(File::open(&path).expect("open"));
        assert!(regular_file(Some(ro.try_clone().expect("dup")), false).is_ok());
        let err = regular_file(Some(ro), true).expect_err("read-only for export");
        assert!(err.contains("not open for writing"), "{err}");
        let (r, _w) = std::io::pipe().expect("pipe");
        let err = regular_file(Some(OwnedFd::from(r)), false).expect_err("a pipe");
        assert!(err.contains("pipe"), "{err}");
        let err = regular_file(None, false).expect_err("none");
        assert!(err.contains("no archive descriptor"), "{err}");
    }
}
