//! Filesystem usage for `ImageFsInfo`: bytes and inodes under a directory, and the
//! mount point of the filesystem that holds it (kubelet's image-fs eviction uses both).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Usage of one directory tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes allocated on disk (st_blocks × 512), hard links counted once.
    pub used_bytes: u64,
    /// Inodes: the directory itself and everything below it.
    pub inodes_used: u64,
}

/// Walks `dir` without following symlinks or crossing into other filesystems.
pub fn usage(dir: &Path) -> io::Result<Usage> {
    let root = std::fs::symlink_metadata(dir)?;
    let dev = root.dev();
    let mut seen_links = std::collections::HashSet::new();
    let mut total = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    add(&mut total, &root, &mut seen_links);
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            // Entries can vanish while we walk (a layer being removed): not an error.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != dev {
                continue;
            }
            add(&mut total, &meta, &mut seen_links);
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

fn add(total: &mut Usage, meta: &std::fs::Metadata, seen: &mut std::collections::HashSet<u64>) {
    if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
        return;
    }
    total.used_bytes = total
        .used_bytes
        .saturating_add(meta.blocks().saturating_mul(512));
    total.inodes_used = total.inodes_used.saturating_add(1);
}

/// The mount point of the filesystem holding `path`, from /proc/self/mountinfo.
pub fn mountpoint_of(path: &Path) -> io::Result<PathBuf> {
    let path = std::fs::canonicalize(path)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    longest_mount_prefix(&mountinfo, &path).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no mount in /proc/self/mountinfo holds {}", path.display()),
        )
    })
}

fn longest_mount_prefix(mountinfo: &str, path: &Path) -> Option<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_octal(m)))
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.components().count())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_files_and_dirs() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("sub")).expect("mkdir");
        std::fs::write(d.path().join("sub/f"), vec![7u8; 64 * 1024]).expect("write");
        let u = usage(d.path()).expect("usage");
        assert_eq!(u.inodes_used, 3, "root, sub, f");
        assert!(u.used_bytes >= 64 * 1024, "{u:?}");
    }

    #[test]
    fn hard_links_are_counted_once() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("a"), vec![1u8; 32 * 1024]).expect("write");
        let one = usage(d.path()).expect("usage");
        std::fs::hard_link(d.path().join("a"), d.path().join("b")).expect("link");
        assert_eq!(usage(d.path()).expect("usage"), one);
    }

    #[test]
    fn picks_the_deepest_mount_holding_the_path() {
        let info = "22 1 8:1 / / rw - ext4 /dev/vda rw\n\
                    30 22 0:5 / /var/lib rw - tmpfs tmpfs rw\n\
                    31 22 0:6 / /var/lib2 rw - tmpfs tmpfs rw\n\
                    32 22 0:7 / /mnt/with\\040space rw - tmpfs tmpfs rw\n";
        assert_eq!(
            longest_mount_prefix(info, Path::new("/var/lib/berth/images")),
            Some(PathBuf::from("/var/lib"))
        );
        assert_eq!(
            longest_mount_prefix(info, Path::new("/var/lib2x")),
            Some(PathBuf::from("/"))
        );
        assert_eq!(
            longest_mount_prefix(info, Path::new("/mnt/with space/x")),
            Some(PathBuf::from("/mnt/with space"))
        );
    }

    #[test]
    fn mountpoint_of_root_is_root() {
        assert_eq!(
            mountpoint_of(Path::new("/")).expect("mount"),
            PathBuf::from("/")
        );
    }
}
