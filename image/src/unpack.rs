//! Unpacking one layer blob (tar, gzip or zstd) into a snapshot directory that can be
//! an overlayfs lower dir: OCI whiteouts become overlay whiteouts, no entry can write
//! outside the directory, and ownership, modes, device nodes, xattrs and hard links
//! are kept. Synchronous: run it on a blocking thread.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use sha2::Digest as _;

use crate::reference::Digest;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// A layer that could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("opening layer {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer entry {entry:?} points outside the snapshot")]
    PathEscape { entry: String },
    #[error("layer entry {entry:?}: {source}")]
    Entry {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("reading layer archive: {source}")]
    Archive {
        #[source]
        source: io::Error,
    },
    #[error("layer content digest is {actual}, the image config says {expected}")]
    DiffIdMismatch { expected: Digest, actual: Digest },
}

impl UnpackError {
    /// Whether the layer itself is at fault (an entry escaping the snapshot), not the
    /// host: the pull fails with InvalidArgument naming the entry, never Internal.
    pub fn is_bad_layer(&self) -> bool {
        matches!(self, Self::PathEscape { .. })
    }
}

/// Unpacks the layer blob at `blob` into the existing, empty directory `dest` and
/// checks that the uncompressed stream hashes to `diff_id`. Returns the number of
/// uncompressed bytes.
pub fn unpack_layer(blob: &Path, dest: &Path, diff_id: &Digest) -> Result<u64, UnpackError> {
    let file = File::open(blob).map_err(|source| UnpackError::Open {
        path: blob.to_owned(),
        source,
    })?;
    let mut buffered = BufReader::with_capacity(1 << 20, file);
    let head = buffered
        .fill_buf()
        .map_err(|source| UnpackError::Archive { source })?;
    let decompressed: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered)
                .map_err(|source| UnpackError::Archive { source })?,
        )
    } else {
        Box::new(buffered)
    };
    let mut hashing = HashingReader {
        inner: decompressed,
        hasher: sha2::Sha256::new(),
        bytes: 0,
    };
    unpack_tar(&mut hashing, dest)?;
    // The tar reader may stop at the end-of-archive marker; the diff id covers the
    // whole stream, padding included.
    io::copy(&mut hashing, &mut io::sink()).map_err(|source| UnpackError::Archive { source })?;
    let actual = Digest::from_sha256(hashing.hasher.finalize().into());
    if &actual != diff_id {
        return Err(UnpackError::DiffIdMismatch {
            expected: diff_id.clone(),
            actual,
        });
    }
    Ok(hashing.bytes)
}

struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Unpacks an uncompressed tar stream into `dest`.
pub fn unpack_tar<R: Read>(reader: R, dest: &Path) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let entries = archive
        .entries()
        .map_err(|source| UnpackError::Archive { source })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| UnpackError::Archive { source })?;
        let raw = entry
            .path()
            .map_err(|source| UnpackError::Archive { source })?
            .into_owned();
        let name = raw.to_string_lossy().into_owned();
        let rel = clean_relative(&raw).ok_or_else(|| UnpackError::PathEscape {
            entry: name.clone(),
        })?;
        if let Some(link) = entry
            .link_name()
            .map_err(|source| UnpackError::Archive { source })?
            && entry.header().entry_type().is_hard_link()
            && clean_relative(&link).is_none()
        {
            return Err(UnpackError::PathEscape { entry: name });
        }
        let Some(file_name) = rel.file_name().and_then(|n| n.to_str()) else {
            // The root directory itself ("./"): nothing to create.
            continue;
        };
        let entry_err = |source: io::Error| UnpackError::Entry {
            entry: name.clone(),
            source,
        };
        if file_name == OPAQUE_MARKER {
            let dir = safe_dir(dest, rel.parent().unwrap_or(Path::new("")), &name)?;
            rustix::fs::setxattr(
                &dir,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| entry_err(e.into()))?;
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                return Err(UnpackError::PathEscape { entry: name });
            }
            let dir = safe_dir(dest, rel.parent().unwrap_or(Path::new("")), &name)?;
            let target = dir.join(hidden);
            remove_existing(&target).map_err(entry_err)?;
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &target,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| entry_err(e.into()))?;
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            // tar-rs would write these as regular files; create the node ourselves.
            let dir = safe_dir(dest, rel.parent().unwrap_or(Path::new("")), &name)?;
            make_node(entry.header(), &dir.join(file_name)).map_err(entry_err)?;
            continue;
        }
        let unpacked = entry.unpack_in(dest).map_err(entry_err)?;
        if !unpacked {
            return Err(UnpackError::PathEscape { entry: name });
        }
    }
    Ok(())
}

/// Creates a device node or FIFO as the header describes, with its owner and mode.
fn make_node(header: &tar::Header, path: &Path) -> io::Result<()> {
    use rustix::fs::{FileType, Mode};
    let kind = header.entry_type();
    let file_type = if kind.is_character_special() {
        FileType::CharacterDevice
    } else if kind.is_block_special() {
        FileType::BlockDevice
    } else {
        FileType::Fifo
    };
    // FIFOs carry no device numbers (some writers leave the fields blank).
    let (major, minor) = if file_type == FileType::Fifo {
        (0, 0)
    } else {
        (
            header.device_major()?.unwrap_or(0),
            header.device_minor()?.unwrap_or(0),
        )
    };
    let mode = header.mode()? & 0o7777;
    let uid = u32::try_from(header.uid()?).map_err(|_| invalid("uid out of range"))?;
    let gid = u32::try_from(header.gid()?).map_err(|_| invalid("gid out of range"))?;
    remove_existing(path)?;
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        file_type,
        Mode::from_raw_mode(mode),
        rustix::fs::makedev(major, minor),
    )?;
    rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?;
    // mknod applies the umask; set the exact mode (after chown, which may clear
    // set-id bits).
    rustix::fs::chmodat(
        rustix::fs::CWD,
        path,
        Mode::from_raw_mode(mode),
        rustix::fs::AtFlags::empty(),
    )?;
    Ok(())
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// `path` made relative (leading `/` and `.` dropped), or `None` if it has `..`.
fn clean_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return None,
            Component::Normal(p) => out.push(p),
        }
    }
    Some(out)
}

/// The directory `dest/rel`, created if missing, refusing any symlink on the way
/// (a whiteout must never be placed through a link).
fn safe_dir(dest: &Path, rel: &Path, entry: &str) -> Result<PathBuf, UnpackError> {
    let mut dir = dest.to_path_buf();
    for c in rel.components() {
        let Component::Normal(part) = c else {
            return Err(UnpackError::PathEscape {
                entry: entry.to_owned(),
            });
        };
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(UnpackError::PathEscape {
                    entry: entry.to_owned(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&dir).map_err(|source| UnpackError::Entry {
                    entry: entry.to_owned(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(UnpackError::Entry {
                    entry: entry.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(dir)
}

fn remove_existing(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file_header(path: &str, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        // Set the name bytes directly so that `..` and absolute names survive.
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Own the file as the test's user so unpacking needs no privilege.
        use std::os::unix::fs::MetadataExt;
        let me = std::fs::metadata("/proc/self").unwrap();
        h.set_uid(me.uid().into());
        h.set_gid(me.gid().into());
        h.set_cksum();
        h
    }

    #[test]
    fn dot_dot_entries_are_rejected_and_nothing_is_written_outside() {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("snap");
        std::fs::create_dir(&dest).unwrap();
        let data = tar_with(|b| {
            b.append(&file_header("../escaped", 3), &b"bad"[..])
                .unwrap();
        });
        let err = unpack_tar(&data[..], &dest).unwrap_err();
        assert!(matches!(err, UnpackError::PathEscape { .. }), "{err}");
        assert!(!outer.path().join("escaped").exists());
    }

    #[test]
    fn absolute_entries_land_inside() {
        let dest = tempfile::tempdir().unwrap();
        let data = tar_with(|b| {
            b.append(&file_header("/etc/motd", 2), &b"hi"[..]).unwrap();
        });
        // Directory /etc is created on the way.
        unpack_tar(&data[..], dest.path()).unwrap();
        assert_eq!(std::fs::read(dest.path().join("etc/motd")).unwrap(), b"hi");
    }

    #[test]
    fn writing_through_a_symlinked_directory_is_rejected() {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("snap");
        let victim = outer.path().join("victim");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::create_dir_all(&victim).unwrap();
        let data = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, "link", &victim).unwrap();
            b.append(&file_header("link/owned", 1), &b"x"[..]).unwrap();
        });
        assert!(unpack_tar(&data[..], &dest).is_err());
        assert!(!victim.join("owned").exists());
    }

    #[test]
    fn hard_links_outside_are_rejected() {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("snap");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::write(outer.path().join("secret"), "s").unwrap();
        let data = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            h.set_mode(0o644);
            h.set_path("stolen").unwrap();
            let link = b"../secret";
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
        });
        assert!(unpack_tar(&data[..], &dest).is_err());
        assert!(!dest.join("stolen").exists());
    }

    #[test]
    fn hard_links_inside_are_kept() {
        let dest = tempfile::tempdir().unwrap();
        let data = tar_with(|b| {
            b.append(&file_header("bin/busybox", 4), &b"elf!"[..])
                .unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            h.set_mode(0o755);
            b.append_link(&mut h, "bin/sh", "bin/busybox").unwrap();
        });
        unpack_tar(&data[..], dest.path()).unwrap();
        use std::os::unix::fs::MetadataExt;
        let a = std::fs::metadata(dest.path().join("bin/busybox")).unwrap();
        let b = std::fs::metadata(dest.path().join("bin/sh")).unwrap();
        assert_eq!(a.ino(), b.ino());
    }

    #[test]
    fn fifos_are_created_as_fifos_with_their_mode() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let dest = tempfile::tempdir().unwrap();
        let data = tar_with(|b| {
            let mut h = file_header("run/pipe", 0);
            h.set_entry_type(tar::EntryType::Fifo);
            h.set_mode(0o620);
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
        });
        unpack_tar(&data[..], dest.path()).unwrap();
        let m = std::fs::symlink_metadata(dest.path().join("run/pipe")).unwrap();
        assert!(m.file_type().is_fifo());
        assert_eq!(m.permissions().mode() & 0o7777, 0o620);
    }

    #[test]
    fn diff_id_mismatch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        let data = tar_with(|b| {
            b.append(&file_header("a", 1), &b"a"[..]).unwrap();
        });
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &data).unwrap();
        std::fs::write(&blob, gz.finish().unwrap()).unwrap();
        let dest = dir.path().join("snap");
        std::fs::create_dir(&dest).unwrap();
        let right = Digest::of(&data);
        assert_eq!(
            unpack_layer(&blob, &dest, &right).unwrap(),
            data.len() as u64
        );
        let dest2 = dir.path().join("snap2");
        std::fs::create_dir(&dest2).unwrap();
        let wrong = Digest::of(b"other");
        assert!(matches!(
            unpack_layer(&blob, &dest2, &wrong),
            Err(UnpackError::DiffIdMismatch { .. })
        ));
        // zstd and uncompressed blobs are detected by their magic.
        std::fs::write(&blob, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        let dest3 = dir.path().join("snap3");
        std::fs::create_dir(&dest3).unwrap();
        unpack_layer(&blob, &dest3, &right).unwrap();
        assert_eq!(std::fs::read(dest3.join("a")).unwrap(), b"a");
        std::fs::write(&blob, &data).unwrap();
        let dest4 = dir.path().join("snap4");
        std::fs::create_dir(&dest4).unwrap();
        unpack_layer(&blob, &dest4, &right).unwrap();
        assert_eq!(std::fs::read(dest4.join("a")).unwrap(), b"a");
    }
}
