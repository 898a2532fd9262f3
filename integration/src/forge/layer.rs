//! Layer tarballs: files, directories, links, whiteouts, owners and modes, compressed
//! as asked.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, bail};

use super::{Compression, DOCKER_LAYER_GZIP, sha256};

#[derive(Clone, Debug)]
pub(super) enum Entry {
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
        uid: u64,
        gid: u64,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    HardLink {
        path: String,
        target: String,
    },
    CharDevice {
        path: String,
        major: u32,
        minor: u32,
    },
    Fifo {
        path: String,
    },
    /// A file whose name is written into the header verbatim (no `..` checks), for
    /// forging malicious layers.
    RawName {
        name: Vec<u8>,
        data: Vec<u8>,
    },
    /// A hard link whose target is written verbatim.
    RawLink {
        path: String,
        target: Vec<u8>,
    },
}

/// A layer: a list of tar entries, in order.
#[derive(Clone, Debug, Default)]
pub struct LayerBuilder {
    pub(super) entries: Vec<Entry>,
    compression: Compression,
}

/// A layer as it will be pushed.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    /// The compressed blob.
    pub blob: Vec<u8>,
    /// Digest of `blob`.
    pub digest: String,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    pub media_type: String,
}

fn rel(path: &str) -> String {
    path.trim_start_matches('/').to_owned()
}

impl LayerBuilder {
    /// An empty gzip layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the compression of this layer.
    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }

    /// A regular file owned by root.
    pub fn file(self, path: &str, data: impl AsRef<[u8]>, mode: u32) -> Self {
        self.file_owned(path, data, mode, 0, 0)
    }

    /// A regular file with an owner.
    pub fn file_owned(
        mut self,
        path: &str,
        data: impl AsRef<[u8]>,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Self {
        self.entries.push(Entry::File {
            path: rel(path),
            data: data.as_ref().to_vec(),
            mode,
            uid,
            gid,
        });
        self
    }

    /// A copy of a host file.
    pub fn host_file(self, path: &str, host: &Path, mode: u32) -> anyhow::Result<Self> {
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        Ok(self.file(path, data, mode))
    }

    /// A host executable at the same path, with the shared libraries and dynamic
    /// loader it needs (as `ldd` lists them), so dynamically linked programs from
    /// Debian packages (nginx, ...) run in a busybox image.
    pub fn host_binary(self, path: &str) -> anyhow::Result<Self> {
        self.host_binary_at(path, Path::new(path))
    }

    /// Like [`LayerBuilder::host_binary`], with the binary taken from `host` and
    /// stored at `path` (its libraries keep their host paths).
    pub fn host_binary_at(mut self, path: &str, host: &Path) -> anyhow::Result<Self> {
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(host)
                .with_context(|| format!("reading {}", host.display()))?
                .permissions()
                .mode()
                & 0o7777
        };
        self = self.host_file(path, host, mode)?;
        let out = std::process::Command::new("ldd")
            .arg(host)
            .output()
            .context("running ldd")?;
        // A static binary makes ldd fail with "not a dynamic executable".
        if !out.status.success() {
            return Ok(self);
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let line = line.trim();
            let lib = match line.split_once("=>") {
                Some((_, rest)) => rest.trim().split(' ').next().unwrap_or(""),
                None => line.split(' ').next().unwrap_or(""),
            };
            if lib.starts_with('/') {
                self = self.host_file(lib, Path::new(lib), 0o755)?;
                // glibc dlopen()s libgcc_s for thread cancellation and unwinding;
                // ldd does not list it.
                if lib.ends_with("/libc.so.6") {
                    let gcc = Path::new(lib).with_file_name("libgcc_s.so.1");
                    if gcc.is_file() {
                        let gcc = gcc.display().to_string();
                        self = self.host_file(&gcc, Path::new(&gcc), 0o644)?;
                    }
                }
            }
        }
        Ok(self)
    }

    /// A directory.
    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        self.entries.push(Entry::Dir {
            path: rel(path),
            mode,
        });
        self
    }

    /// A symbolic link.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.entries.push(Entry::Symlink {
            path: rel(path),
            target: target.to_owned(),
        });
        self
    }

    /// A hard link to an earlier entry of this layer.
    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        self.entries.push(Entry::HardLink {
            path: rel(path),
            target: rel(target),
        });
        self
    }

    /// A character device node.
    pub fn char_device(mut self, path: &str, major: u32, minor: u32) -> Self {
        self.entries.push(Entry::CharDevice {
            path: rel(path),
            major,
            minor,
        });
        self
    }

    /// A named pipe (FIFO).
    pub fn fifo(mut self, path: &str) -> Self {
        self.entries.push(Entry::Fifo { path: rel(path) });
        self
    }

    /// An OCI whiteout deleting `path` from the layers below.
    pub fn whiteout(self, path: &str) -> Self {
        let p = rel(path);
        let (dir, name) = match p.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n.to_owned()),
            None => (String::new(), p),
        };
        self.file(&format!("{dir}.wh.{name}"), b"", 0o644)
    }

    /// An OCI opaque-directory marker: `dir` hides everything below it.
    pub fn opaque(self, dir: &str) -> Self {
        let d = rel(dir);
        self.file(
            &format!("{}/.wh..wh..opq", d.trim_end_matches('/')),
            b"",
            0o644,
        )
    }

    /// A file whose tar name is written verbatim (e.g. `../../etc/evil`).
    pub fn raw_name(mut self, name: &[u8], data: impl AsRef<[u8]>) -> Self {
        self.entries.push(Entry::RawName {
            name: name.to_vec(),
            data: data.as_ref().to_vec(),
        });
        self
    }

    /// A hard link whose target is written verbatim (e.g. `../../etc/shadow`).
    pub fn raw_hardlink(mut self, path: &str, target: &[u8]) -> Self {
        self.entries.push(Entry::RawLink {
            path: rel(path),
            target: target.to_vec(),
        });
        self
    }

    /// Mode, uid and gid of the file the hard link at `index` names: the last
    /// entry before it with that path (through other hard links).
    fn link_target_attrs(&self, index: usize, target: &str) -> anyhow::Result<(u32, u64, u64)> {
        let found = self.entries[..index].iter().enumerate().rev().find(|(_, e)| {
            matches!(e, Entry::File { path, .. } | Entry::HardLink { path, .. } if path == target)
        });
        match found {
            Some((_, Entry::File { mode, uid, gid, .. })) => Ok((*mode, *uid, *gid)),
            Some((j, Entry::HardLink { target: next, .. })) => self.link_target_attrs(j, next),
            _ => {
                bail!("hard link to {target:?}: no regular file of that name earlier in the layer")
            }
        }
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> anyhow::Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Deterministic);
        for (i, e) in self.entries.iter().enumerate() {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            match e {
                Entry::File {
                    path,
                    data,
                    mode,
                    uid,
                    gid,
                } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_uid(*uid);
                    h.set_gid(*gid);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, &data[..])?;
                }
                Entry::Dir { path, mode } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    b.append_data(&mut h, path, std::io::empty())?;
                }
                Entry::Symlink { path, target } => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, path, target)?;
                }
                Entry::HardLink { path, target } => {
                    // The header carries the linked file's mode and owner, as docker
                    // and buildkit write it: containerd (and docker) apply a link
                    // header's mode and owner to the shared inode, so anything else
                    // would change the target's.
                    let (mode, uid, gid) = self.link_target_attrs(i, target)?;
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_mode(mode);
                    h.set_uid(uid);
                    h.set_gid(gid);
                    h.set_size(0);
                    b.append_link(&mut h, path, target)?;
                }
                Entry::CharDevice { path, major, minor } => {
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_mode(0o666);
                    h.set_size(0);
                    h.set_device_major(*major)?;
                    h.set_device_minor(*minor)?;
                    b.append_data(&mut h, path, std::io::empty())?;
                }
                Entry::Fifo { path } => {
                    h.set_entry_type(tar::EntryType::Fifo);
                    h.set_mode(0o644);
                    h.set_size(0);
                    b.append_data(&mut h, path, std::io::empty())?;
                }
                Entry::RawName { name, data } => {
                    if name.len() > 100 {
                        bail!("raw tar names are limited to 100 bytes");
                    }
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(data.len() as u64);
                    h.as_old_mut().name[..name.len()].copy_from_slice(name);
                    h.set_cksum();
                    b.append(&h, &data[..])?;
                }
                Entry::RawLink { path, target } => {
                    if target.len() > 100 {
                        bail!("raw link targets are limited to 100 bytes");
                    }
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_mode(0o644);
                    h.set_size(0);
                    h.set_path(path)?;
                    h.as_old_mut().linkname[..target.len()].copy_from_slice(target);
                    h.set_cksum();
                    b.append(&h, std::io::empty())?;
                }
            }
        }
        Ok(b.into_inner()?)
    }

    /// Builds the blob.
    pub fn build(&self, docker_media_types: bool) -> anyhow::Result<BuiltLayer> {
        let tar = self.tar()?;
        let diff_id = sha256(&tar);
        let (blob, media_type) = match self.compression {
            Compression::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&tar)?;
                let media = if docker_media_types {
                    DOCKER_LAYER_GZIP
                } else {
                    "application/vnd.oci.image.layer.v1.tar+gzip"
                };
                (gz.finish()?, media)
            }
            Compression::Zstd => (
                zstd::encode_all(&tar[..], 3)?,
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        Ok(BuiltLayer {
            digest: sha256(&blob),
            blob,
            diff_id,
            media_type: media_type.to_owned(),
        })
    }
}
