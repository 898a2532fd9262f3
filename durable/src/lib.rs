//! The one way Berth writes a file that must survive a crash, shared by berthd's
//! records, the image store's metadata, runtime-core's state and the monitor's exit
//! record: a temp file of its own in the same directory, written, fsynced, renamed over
//! the target, then the directory fsynced. A crash at any instant leaves the old or the
//! new content, never a torn file; a failed write (a full disk) leaves no temp file.
//!
//! Volatile state (runtime-core's `state.json` under /run, gone with the node anyway)
//! is replaced with [`replace_atomic`]: the same temp-file handling, without the fsyncs
//! that would make every create and start wait for a disk.
//!
//! A crate of its own because its users are otherwise independent (berth-image does
//! not depend on runtime-core, nor runtime-core on the server).

#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `data` to `path` atomically and durably, mode 0600 whatever the umask (the
/// files hold containers' environments and image credentials' traces).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write(path, data, Durability::Durable)
}

/// Replaces `path` with `data` atomically (readers see the old or the new content,
/// never a torn file; no temp file is left on failure) but not durably: for state on
/// a volatile filesystem, which a crash of the node loses as a whole.
pub fn replace_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write(path, data, Durability::Volatile)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    Durable,
    Volatile,
}

fn write(path: &Path, data: &[u8], durability: Durability) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no parent"))?;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    // A temp name of its own per write: concurrent writers of one file (two threads, or
    // a monitor and berth-runtime) must not share, and rename away, each other's temp.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.{n}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| {
            let done = f
                .set_permissions(fs::Permissions::from_mode(0o600))
                .and_then(|()| f.write_all(data))
                .and_then(|()| match durability {
                    Durability::Durable => f.sync_all(),
                    Durability::Volatile => Ok(()),
                });
            if done.is_err() {
                // A full disk must not also leave a torn temp file behind.
                let _ = fs::remove_file(&tmp);
            }
            done
        });
    written?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    match durability {
        Durability::Durable => File::open(dir)?.sync_all(),
        Durability::Volatile => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<std::ffi::OsString> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn files_are_private_whatever_the_umask() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("config.json");
        write_atomic(&p, b"{\"env\":[\"TOKEN=secret\"]}").expect("write");
        let mode = fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }

    #[test]
    fn a_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("meta.json");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("rewrite");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert_eq!(names(d.path()), [std::ffi::OsString::from("meta.json")]);
    }

    #[test]
    fn a_failed_rename_leaves_no_temp_and_the_old_content() {
        for write in [write_atomic, replace_atomic] {
            let d = tempfile::tempdir().expect("tempdir");
            // A directory where the file should go: the rename fails after the write.
            let p = d.path().join("record.json");
            fs::create_dir(&p).expect("mkdir");
            fs::write(p.join("inside"), b"x").expect("write inside");
            assert!(write(&p, b"new").is_err());
            assert_eq!(names(d.path()), [std::ffi::OsString::from("record.json")]);
            assert_eq!(fs::read(p.join("inside")).expect("read"), b"x");
        }
    }

    #[test]
    fn a_replace_is_atomic_and_private_too() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("state.json");
        replace_atomic(&p, b"one").expect("write");
        replace_atomic(&p, b"two").expect("rewrite");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert_eq!(names(d.path()), [std::ffi::OsString::from("state.json")]);
        let mode = fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }

    #[test]
    fn concurrent_writers_of_one_file_do_not_collide() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("record.json");
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        write_atomic(&p, format!("writer {i}").as_bytes()).expect("write");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        assert!(fs::read_to_string(&p).expect("read").starts_with("writer "));
        assert_eq!(names(d.path()).len(), 1, "no temp left");
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let e = write_atomic(Path::new("/"), b"x").expect_err("no name");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
