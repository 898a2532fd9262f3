//! Unpacking one layer blob (tar, gzip or zstd) into a snapshot directory that can be
//! an overlayfs lower dir: OCI whiteouts become overlay whiteouts, no entry can write
//! outside the directory, and ownership, modes, device nodes and hard links are
//! kept. Extended attributes are filtered (see [`xattr_allowed`]), and the unpacked
//! size and entry count are bounded so a decompression bomb fails instead of
//! filling the disk. Synchronous: run it on a blocking thread.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use sha2::Digest as _;

use crate::reference::Digest;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const PAX_XATTR: &str = "SCHILY.xattr.";

/// How much one layer may unpack to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Uncompressed tar stream bytes (file data plus headers).
    pub max_bytes: u64,
    /// Tar entries (files, directories, links, whiteouts...).
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_bytes: 32 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// Whether an extended attribute from a layer may be applied. `trusted.*` is
/// overlayfs' own namespace (`trusted.overlay.opaque`, `.redirect`, `.metacopy`,
/// `.origin`): a layer that set it could forge whiteouts or redirect lookups to
/// other paths of the lower stack, so only Berth writes it. Of `security.*` only
/// file capabilities are kept: labels (`security.selinux`, `security.SMACK64`) are
/// the runtime's to set, and `security.ima`/`security.evm` belong to the host's
/// integrity policy. ACLs and `user.*` are ordinary file metadata.
pub fn xattr_allowed(name: &str) -> bool {
    name.starts_with("user.")
        || matches!(
            name,
            "security.capability" | "system.posix_acl_access" | "system.posix_acl_default"
        )
}

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
    #[error(
        "layer unpacks to more than {limit} bytes (the limit is image.max_layer_unpacked_bytes)"
    )]
    TooLarge { limit: u64 },
    #[error("layer has more than {limit} entries (the limit is image.max_layer_entries)")]
    TooManyEntries { limit: u64 },
    #[error("layer has an entry whose tar headers (long names, PAX records) pass {limit} bytes")]
    HeaderTooLarge { limit: u64 },
}

/// Bytes tar may read between two entries: their GNU long-name/long-link and PAX
/// headers (tar-rs holds each in memory whole) plus padding. Go's archive/tar, which
/// containerd uses, refuses such headers above 1 MiB each.
pub const HEADER_BUDGET: u64 = 4 << 20;

impl UnpackError {
    /// Whether the layer broke a configured limit.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            Self::TooLarge { .. } | Self::TooManyEntries { .. } | Self::HeaderTooLarge { .. }
        )
    }
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
/// uncompressed bytes. On error `dest` may hold part of the layer: the caller
/// removes it.
pub fn unpack_layer(
    blob: &Path,
    dest: &Path,
    diff_id: &Digest,
    limits: &UnpackLimits,
) -> Result<u64, UnpackError> {
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
        limit: limits.max_bytes,
    };
    let too_large = UnpackError::TooLarge {
        limit: limits.max_bytes,
    };
    let unpacked = unpack_tar_limited(&mut hashing, dest, limits);
    if hashing.bytes > limits.max_bytes {
        return Err(too_large);
    }
    unpacked?;
    // The tar reader may stop at the end-of-archive marker; the diff id covers the
    // whole stream, padding included.
    let drained = io::copy(&mut hashing, &mut io::sink());
    if hashing.bytes > limits.max_bytes {
        return Err(too_large);
    }
    drained.map_err(|source| UnpackError::Archive { source })?;
    let actual = Digest::from_sha256(hashing.hasher.finalize().into());
    if &actual != diff_id {
        return Err(UnpackError::DiffIdMismatch {
            expected: diff_id.clone(),
            actual,
        });
    }
    Ok(hashing.bytes)
}

/// Hashes and counts the decompressed stream, and stops it once it passes `limit`
/// (the caller sees `bytes > limit` and reports the limit).
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
    bytes: u64,
    limit: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.bytes > self.limit {
            return Err(io::Error::other("layer size limit exceeded"));
        }
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Unpacks an uncompressed tar stream into `dest` with the default limits.
pub fn unpack_tar<R: Read>(reader: R, dest: &Path) -> Result<(), UnpackError> {
    unpack_tar_limited(reader, dest, &UnpackLimits::default())
}

/// Unpacks an uncompressed tar stream into `dest`, refusing more than
/// `limits.max_entries` entries.
pub fn unpack_tar_limited<R: Read>(
    reader: R,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<(), UnpackError> {
    // tar-rs reads long-name and PAX headers into memory whole, inside
    // `entries.next()`: what it reads there is bounded by HEADER_BUDGET.
    let budget = std::rc::Rc::new(HeaderBudget::default());
    let mut archive = tar::Archive::new(Budgeted {
        inner: reader,
        budget: budget.clone(),
    });
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    // Applied by us, filtered (see `xattr_allowed`).
    archive.set_unpack_xattrs(false);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let entries = archive
        .entries()
        .map_err(|source| UnpackError::Archive { source })?;
    let mut count: u64 = 0;
    let mut entries = entries;
    loop {
        budget.arm();
        let next = entries.next();
        budget.disarm();
        if budget.tripped.get() {
            return Err(UnpackError::HeaderTooLarge {
                limit: HEADER_BUDGET,
            });
        }
        let Some(entry) = next else { break };
        let mut entry = entry.map_err(|source| UnpackError::Archive { source })?;
        count += 1;
        if count > limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
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
        let xattrs = layer_xattrs(&mut entry).map_err(entry_err)?;
        let unpacked = entry.unpack_in(dest).map_err(entry_err)?;
        if !unpacked {
            return Err(UnpackError::PathEscape { entry: name });
        }
        apply_xattrs(&dest.join(&rel), &xattrs).map_err(entry_err)?;
    }
    Ok(())
}

/// What tar may still read before the next entry, when armed.
#[derive(Default)]
struct HeaderBudget {
    armed: std::cell::Cell<bool>,
    used: std::cell::Cell<u64>,
    tripped: std::cell::Cell<bool>,
}

impl HeaderBudget {
    fn arm(&self) {
        self.used.set(0);
        self.armed.set(true);
    }

    fn disarm(&self) {
        self.armed.set(false);
    }
}

/// A reader that fails once more than [`HEADER_BUDGET`] bytes are read while its
/// budget is armed (between two entries; entry data is read disarmed).
struct Budgeted<R> {
    inner: R,
    budget: std::rc::Rc<HeaderBudget>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let b = &self.budget;
        if !b.armed.get() {
            return self.inner.read(buf);
        }
        let room = HEADER_BUDGET.saturating_sub(b.used.get());
        if room == 0 {
            b.tripped.set(true);
            return Err(io::Error::other("tar headers too large"));
        }
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        b.used.set(b.used.get() + n as u64);
        Ok(n)
    }
}

/// The entry's `SCHILY.xattr.*` records that [`xattr_allowed`] lets through.
fn layer_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let Some(extensions) = entry.pax_extensions()? else {
        return Ok(out);
    };
    for ext in extensions {
        let ext = ext?;
        let Ok(key) = ext.key() else { continue };
        let Some(name) = key.strip_prefix(PAX_XATTR) else {
            continue;
        };
        if xattr_allowed(name) {
            out.push((name.to_owned(), ext.value_bytes().to_vec()));
        } else {
            tracing::debug!(
                xattr = name,
                "dropping a layer xattr outside the allowed set"
            );
        }
    }
    Ok(out)
}

/// Sets `xattrs` on `path` itself (never through a symlink). Filesystems without
/// xattr support, and `user.*` on files that cannot carry it, are skipped as
/// containerd skips them.
fn apply_xattrs(path: &Path, xattrs: &[(String, Vec<u8>)]) -> io::Result<()> {
    for (name, value) in xattrs {
        match rustix::fs::lsetxattr(path, name.as_str(), value, rustix::fs::XattrFlags::empty()) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOTSUP) => {}
            Err(rustix::io::Errno::PERM) if name.starts_with("user.") => {
                let meta = std::fs::symlink_metadata(path)?;
                if meta.is_file() || meta.is_dir() {
                    return Err(io::Error::from(rustix::io::Errno::PERM));
                }
            }
            Err(e) => return Err(e.into()),
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
        let limits = UnpackLimits::default();
        assert_eq!(
            unpack_layer(&blob, &dest, &right, &limits).unwrap(),
            data.len() as u64
        );
        let dest2 = dir.path().join("snap2");
        std::fs::create_dir(&dest2).unwrap();
        let wrong = Digest::of(b"other");
        assert!(matches!(
            unpack_layer(&blob, &dest2, &wrong, &limits),
            Err(UnpackError::DiffIdMismatch { .. })
        ));
        // zstd and uncompressed blobs are detected by their magic.
        std::fs::write(&blob, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        let dest3 = dir.path().join("snap3");
        std::fs::create_dir(&dest3).unwrap();
        unpack_layer(&blob, &dest3, &right, &limits).unwrap();
        assert_eq!(std::fs::read(dest3.join("a")).unwrap(), b"a");
        std::fs::write(&blob, &data).unwrap();
        let dest4 = dir.path().join("snap4");
        std::fs::create_dir(&dest4).unwrap();
        unpack_layer(&blob, &dest4, &right, &limits).unwrap();
        assert_eq!(std::fs::read(dest4.join("a")).unwrap(), b"a");
    }

    /// One PAX record, `"<len> key=value\n"` with `len` counting itself.
    fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
        let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = body_len + 1;
        while len != body_len + len.to_string().len() {
            len = body_len + len.to_string().len();
        }
        let mut out = format!("{len} {key}=").into_bytes();
        out.extend_from_slice(value);
        out.push(b'\n');
        out
    }

    #[test]
    fn layer_xattrs_outside_the_allowed_set_are_dropped() {
        // As root on ext4 or tmpfs, trusted.* and user.* can both be set.
        let dest = tempfile::tempdir().unwrap();
        let data = tar_with(|b| {
            let mut records = Vec::new();
            for (k, v) in [
                ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
                ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
                (
                    "SCHILY.xattr.security.selinux",
                    b"system_u:object_r:shadow_t:s0",
                ),
                ("SCHILY.xattr.user.kept", b"1"),
            ] {
                records.extend(pax_record(k, v));
            }
            let mut x = tar::Header::new_ustar();
            x.set_entry_type(tar::EntryType::XHeader);
            x.set_path("PaxHeaders/dir").unwrap();
            x.set_size(records.len() as u64);
            x.set_mode(0o644);
            x.set_cksum();
            b.append(&x, &records[..]).unwrap();
            let mut d = file_header("dir", 0);
            d.set_entry_type(tar::EntryType::Directory);
            d.set_mode(0o755);
            d.set_cksum();
            b.append(&d, io::empty()).unwrap();
        });
        unpack_tar(&data[..], dest.path()).unwrap();
        let dir = dest.path().join("dir");
        assert!(dir.is_dir());
        let mut buf = vec![0u8; 256];
        for name in [
            "trusted.overlay.opaque",
            "trusted.overlay.redirect",
            "security.selinux",
        ] {
            let got = rustix::fs::lgetxattr(&dir, name, &mut buf[..]);
            // An SELinux host labels every file itself; the layer's label must not be it.
            if name == "security.selinux"
                && let Ok(n) = got
            {
                assert_ne!(&buf[..n], b"system_u:object_r:shadow_t:s0");
                continue;
            }
            assert!(got.is_err(), "{name} from the layer was applied");
        }
        match rustix::fs::lgetxattr(&dir, "user.kept", &mut buf[..]) {
            Ok(n) => assert_eq!(&buf[..n], b"1"),
            // A filesystem without user xattrs: skipped, as containerd does.
            Err(e) => assert_eq!(e, rustix::io::Errno::NOTSUP),
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, data).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        // 12 MiB of zeros in one file: a few KiB gzipped.
        let size = 12u64 << 20;
        let mut b = tar::Builder::new(Vec::new());
        b.append(&file_header("zeros", size), io::repeat(0).take(size))
            .unwrap();
        let data = b.into_inner().unwrap();
        let blob = dir.path().join("blob");
        std::fs::write(&blob, gzip(&data)).unwrap();
        assert!(std::fs::metadata(&blob).unwrap().len() < 1 << 20);
        let dest = dir.path().join("snap");
        std::fs::create_dir(&dest).unwrap();
        let limits = UnpackLimits {
            max_bytes: 2 << 20,
            ..UnpackLimits::default()
        };
        let err = unpack_layer(&blob, &dest, &Digest::of(&data), &limits).unwrap_err();
        assert!(
            matches!(err, UnpackError::TooLarge { limit } if limit == 2 << 20),
            "{err}"
        );
        assert!(
            err.to_string().contains("image.max_layer_unpacked_bytes"),
            "{err}"
        );
        // What was written before the limit hit is bounded by the limit.
        let written = std::fs::metadata(dest.join("zeros")).map_or(0, |m| m.len());
        assert!(written <= 2 << 20, "{written} bytes written");
    }

    #[test]
    fn too_many_entries_stop_at_the_entry_limit() {
        let dest = tempfile::tempdir().unwrap();
        let data = tar_with(|b| {
            for i in 0..50 {
                b.append(&file_header(&format!("f{i}"), 0), io::empty())
                    .unwrap();
            }
        });
        let limits = UnpackLimits {
            max_entries: 10,
            ..UnpackLimits::default()
        };
        let err = unpack_tar_limited(&data[..], dest.path(), &limits).unwrap_err();
        assert!(
            matches!(err, UnpackError::TooManyEntries { limit: 10 }),
            "{err}"
        );
        assert!(!dest.path().join("f10").exists());
        assert!(std::fs::read_dir(dest.path()).unwrap().count() <= 10);
    }

    /// Counts what is read through it.
    struct Counted<R> {
        inner: R,
        read: std::rc::Rc<std::cell::Cell<u64>>,
    }

    impl<R: Read> Read for Counted<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read.set(self.read.get() + n as u64);
            Ok(n)
        }
    }

    /// tar-rs reads a GNU long-name (`L`) or PAX (`x`) header's whole body into
    /// memory, and a few KiB of gzip can declare gigabytes of it: berthd's memory,
    /// bounded only by the 32 GiB unpack limit. Go's archive/tar (containerd) caps
    /// such headers at 1 MiB; here the headers before one entry may take
    /// HEADER_BUDGET bytes, and reading stops there.
    #[test]
    fn a_huge_long_name_header_is_refused_without_reading_it() {
        let long = 256u64 << 20;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::GNULongName);
        header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        header.set_size(long);
        header.set_mode(0o644);
        header.set_cksum();
        let mut file = tar::Header::new_gnu();
        file.set_entry_type(tar::EntryType::Regular);
        file.set_path("x").unwrap();
        file.set_size(0);
        file.set_mode(0o644);
        file.set_cksum();
        let stream = io::Cursor::new(header.as_bytes().to_vec())
            .chain(io::repeat(b'a').take(long))
            .chain(io::Cursor::new(file.as_bytes().to_vec()))
            .chain(io::repeat(0).take(1024));
        let read = std::rc::Rc::new(std::cell::Cell::new(0));
        let dir = tempfile::tempdir().unwrap();
        let err = unpack_tar_limited(
            Counted {
                inner: stream,
                read: read.clone(),
            },
            dir.path(),
            &UnpackLimits::default(),
        )
        .expect_err("a 256 MiB long name");
        let shown: String = err.to_string().chars().take(200).collect();
        assert!(
            read.get() <= 2 * HEADER_BUDGET,
            "{} bytes of header read into memory ({shown})",
            read.get()
        );
        assert!(matches!(err, UnpackError::HeaderTooLarge { .. }), "{shown}");
        assert!(err.is_limit(), "{shown}");
    }
}
