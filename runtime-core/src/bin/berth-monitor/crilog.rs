//! The CRI container log format: `<RFC3339Nano> <stdout|stderr> <P|F> <msg>\n`.
//! A line the container has not finished yet (no newline in what we read) is written as
//! a partial (`P`) record right away, so long or unterminated output is never held back.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

pub use berth_runtime_core::time::rfc3339_nano;

/// Split a chunk into CRI records: complete lines are `F`, a trailing piece without a
/// newline is `P`.
pub fn records(chunk: &[u8]) -> Vec<(bool, &[u8])> {
    let mut out = Vec::new();
    let mut rest = chunk;
    while !rest.is_empty() {
        match rest.iter().position(|b| *b == b'\n') {
            Some(i) => {
                out.push((true, &rest[..i]));
                rest = &rest[i + 1..];
            }
            None => {
                out.push((false, rest));
                rest = &[];
            }
        }
    }
    out
}

/// Appends CRI records to a file; can be reopened after rotation.
#[derive(Debug)]
pub struct CriLog {
    path: PathBuf,
    file: Option<File>,
}

impl CriLog {
    /// Open (create, append) the log at `path`.
    pub fn open(path: &Path) -> std::io::Result<CriLog> {
        let mut l = CriLog {
            path: path.to_path_buf(),
            file: None,
        };
        l.reopen()?;
        Ok(l)
    }

    /// Reopen the file at the same path (after the old one was renamed away).
    pub fn reopen(&mut self) -> std::io::Result<()> {
        self.file = Some(
            // O_NOFOLLOW: a symlink planted at the log path must not make the monitor
            // (root) append to whatever file it names. Not world-readable: the log
            // holds whatever the container prints, secrets included.
            OpenOptions::new()
                .create(true)
                .append(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .mode(0o640)
                .open(&self.path)?,
        );
        Ok(())
    }

    /// Write one chunk read from `stream`.
    pub fn write_chunk(&mut self, stream: Stream, chunk: &[u8]) -> std::io::Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        let now = rfc3339_nano(SystemTime::now());
        let mut buf = Vec::with_capacity(chunk.len() + 64);
        for (full, msg) in records(chunk) {
            buf.extend_from_slice(now.as_bytes());
            buf.push(b' ');
            buf.extend_from_slice(stream.tag().as_bytes());
            buf.extend_from_slice(if full { b" F " } else { b" P " });
            buf.extend_from_slice(msg);
            buf.push(b'\n');
        }
        append_records(f, &buf)
    }
}

/// Appends `buf` (whole records) to `f`. When the disk fills up part-way, the part
/// that made it is cut off again: a torn record would otherwise run into the next
/// one written once space is back, and kubelet would read a corrupt line.
fn append_records(f: &mut File, buf: &[u8]) -> std::io::Result<()> {
    let mut written = 0;
    while written < buf.len() {
        match f.write(&buf[written..]) {
            Ok(0) => {
                return Err(undo_partial(
                    f,
                    written,
                    std::io::ErrorKind::WriteZero.into(),
                ));
            }
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(undo_partial(f, written, e)),
        }
    }
    Ok(())
}

/// Truncates the `written` bytes of a failed append; returns the write's error.
fn undo_partial(f: &File, written: usize, err: std::io::Error) -> std::io::Error {
    if written > 0
        && let Ok(meta) = f.metadata()
    {
        let _ = f.set_len(meta.len().saturating_sub(written as u64));
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_lines_are_full_and_the_tail_is_partial() {
        let r = records(b"one\ntwo\nthr");
        assert_eq!(
            r,
            vec![
                (true, &b"one"[..]),
                (true, &b"two"[..]),
                (false, &b"thr"[..])
            ]
        );
        assert_eq!(records(b"\n"), vec![(true, &b""[..])]);
        assert!(records(b"").is_empty());
    }

    #[test]
    fn log_lines_have_time_stream_tag_and_message_and_survive_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("c.log");
        let mut log = CriLog::open(&p).unwrap();
        log.write_chunk(Stream::Stdout, b"hello\npart").unwrap();
        log.write_chunk(Stream::Stderr, b"oops\n").unwrap();
        std::fs::rename(&p, tmp.path().join("c.log.1")).unwrap();
        log.reopen().unwrap();
        log.write_chunk(Stream::Stdout, b"after\n").unwrap();
        let old = std::fs::read_to_string(tmp.path().join("c.log.1")).unwrap();
        let lines: Vec<&str> = old.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].ends_with("Z stdout F hello"), "{}", lines[0]);
        assert!(lines[1].ends_with("Z stdout P part"), "{}", lines[1]);
        assert!(lines[2].ends_with("Z stderr F oops"), "{}", lines[2]);
        assert_eq!(lines[0].split(' ').next().unwrap().len(), 30);
        let new = std::fs::read_to_string(&p).unwrap();
        assert!(new.ends_with("Z stdout F after\n"), "{new}");
    }
}
