//! Layer unpacking (`berth_image::unpack::unpack_tar`) with hostile archives: raw bytes,
//! or archives built from fuzzer-chosen entries with `..`, absolute names, symlinks and
//! hard links aimed outside, whiteouts, device nodes and huge header fields. No panic,
//! and nothing outside the snapshot directory changes: next to it sit an empty
//! directory and a file, both of which symlinks and hard links in the archive target.
#![no_main]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Input {
    Raw(Vec<u8>),
    Entries(Vec<Entry>),
}

#[derive(Debug, Arbitrary)]
struct Entry {
    kind: Kind,
    name: Name,
    link: Name,
    mode: u32,
    size_override: Option<u64>,
    uid: u16,
    long_name: bool,
    data: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    Char,
    Block,
    Fifo,
    Other(u8),
}

/// Names drawn towards the interesting cases.
#[derive(Debug, Arbitrary)]
enum Name {
    Raw(Vec<u8>),
    Outside,
    OutsideFile,
    OutsideAbsolute,
    OutsideFileAbsolute,
    Through(Vec<u8>),
    Whiteout(Vec<u8>),
    Opaque(Vec<u8>),
    Parent(u8),
}

struct Sandbox {
    outer: tempfile::TempDir,
}

impl Sandbox {
    fn dest(&self) -> std::path::PathBuf {
        self.outer.path().join("snap")
    }
    fn outside(&self) -> std::path::PathBuf {
        self.outer.path().join("outside")
    }
    fn secret(&self) -> std::path::PathBuf {
        self.outer.path().join("secret")
    }
}

fn name_bytes(name: &Name, sb: &Sandbox) -> Vec<u8> {
    let abs = |p: &Path| p.as_os_str().as_encoded_bytes().to_vec();
    match name {
        Name::Raw(b) => b.clone(),
        Name::Outside => b"../outside".to_vec(),
        Name::OutsideFile => b"../secret".to_vec(),
        Name::OutsideAbsolute => abs(&sb.outside()),
        Name::OutsideFileAbsolute => abs(&sb.secret()),
        Name::Through(rest) => [b"lnk/".as_slice(), rest].concat(),
        Name::Whiteout(rest) => [b"lnk/.wh.".as_slice(), rest].concat(),
        Name::Opaque(dir) => [dir.as_slice(), b"/.wh..wh..opq"].concat(),
        Name::Parent(n) => b"../".repeat(usize::from(*n % 8)),
    }
}

fn header(entry: &Entry, sb: &Sandbox, out: &mut Vec<u8>) {
    let name = name_bytes(&entry.name, sb);
    let link = name_bytes(&entry.link, sb);
    let mut h = tar::Header::new_gnu();
    let kind = match entry.kind {
        Kind::File => tar::EntryType::Regular,
        Kind::Dir => tar::EntryType::Directory,
        Kind::Symlink => tar::EntryType::Symlink,
        Kind::HardLink => tar::EntryType::Link,
        Kind::Char => tar::EntryType::Char,
        Kind::Block => tar::EntryType::Block,
        Kind::Fifo => tar::EntryType::Fifo,
        Kind::Other(b) => tar::EntryType::new(b),
    };
    if entry.long_name {
        // GNU long name entry (`././@LongLink`) carrying the real name.
        let mut l = tar::Header::new_gnu();
        l.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        l.set_entry_type(tar::EntryType::GNULongName);
        l.set_size(name.len() as u64 + 1);
        l.set_cksum();
        out.extend_from_slice(l.as_bytes());
        let mut body = name.clone();
        body.push(0);
        pad(&mut body);
        out.extend_from_slice(&body);
    }
    let n = name.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    let l = link.len().min(100);
    h.as_old_mut().linkname[..l].copy_from_slice(&link[..l]);
    h.set_entry_type(kind);
    h.set_mode(entry.mode);
    h.set_uid(u64::from(entry.uid));
    h.set_gid(u64::from(entry.uid));
    h.set_size(entry.size_override.unwrap_or(entry.data.len() as u64));
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    let mut body = entry.data.clone();
    pad(&mut body);
    out.extend_from_slice(&body);
}

fn pad(b: &mut Vec<u8>) {
    let rem = b.len() % 512;
    if rem != 0 {
        b.resize(b.len() + 512 - rem, 0);
    }
}

fn snapshot(dir: &Path) -> Vec<(String, u64, u32, u64, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read outer dir") {
        let e = e.expect("dir entry");
        let m = std::fs::symlink_metadata(e.path()).expect("stat");
        let content = if m.is_file() {
            std::fs::read(e.path()).expect("read")
        } else {
            Vec::new()
        };
        out.push((
            e.file_name().to_string_lossy().into_owned(),
            m.ino(),
            m.mode(),
            m.nlink(),
            content,
        ));
    }
    out.sort();
    out
}

fuzz_target!(|input: Input| {
    let sb = Sandbox {
        outer: tempfile::tempdir().expect("temp dir"),
    };
    std::fs::create_dir(sb.dest()).expect("snap dir");
    std::fs::create_dir(sb.outside()).expect("outside dir");
    std::fs::write(sb.secret(), b"secret").expect("secret file");
    let before_outer = snapshot(sb.outer.path());
    let archive = match &input {
        Input::Raw(b) => b.clone(),
        Input::Entries(entries) => {
            let mut out = Vec::new();
            // The link the `Through`/`Whiteout` names walk through, pointing outside.
            let lnk = Entry {
                kind: Kind::Symlink,
                name: Name::Raw(b"lnk".to_vec()),
                link: Name::OutsideAbsolute,
                mode: 0o777,
                size_override: None,
                uid: 0,
                long_name: false,
                data: Vec::new(),
            };
            header(&lnk, &sb, &mut out);
            for e in entries {
                header(e, &sb, &mut out);
            }
            out.extend_from_slice(&[0; 1024]);
            out
        }
    };
    let _ = berth_image::unpack::unpack_tar(&archive[..], &sb.dest());
    assert_eq!(
        snapshot(sb.outer.path())
            .into_iter()
            .filter(|e| e.0 != "snap")
            .collect::<Vec<_>>(),
        before_outer
            .into_iter()
            .filter(|e| e.0 != "snap")
            .collect::<Vec<_>>(),
        "something next to the snapshot changed"
    );
    assert_eq!(
        std::fs::read_dir(sb.outside()).expect("outside").count(),
        0,
        "an entry was written into the directory next to the snapshot"
    );
    // Device nodes the archive created are removed with the temp dir; make sure the
    // tree is removable (a directory left without write permission is fine for root).
});
