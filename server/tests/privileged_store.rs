//! Record writes on a full disk (needs root: mounts a tiny tmpfs).
//!
//! `store::write_atomic` writes a temp file and renames it over the record. When the
//! disk fills mid-write the call must fail with ENOSPC, keep the old record intact, and
//! leave no torn temp file behind (one used to stay until someone removed it by hand).

use std::path::{Path, PathBuf};

use berth_server::store::write_atomic;

/// A 64 KiB tmpfs, unmounted (lazily) when dropped, even if the test fails.
struct TinyTmpfs {
    dir: tempfile::TempDir,
}

impl TinyTmpfs {
    fn mount() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                "size=64k,mode=0700",
                "berth-store-test",
            ])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting a tmpfs failed: {status}");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

#[test]
fn a_write_that_fills_the_disk_fails_and_leaves_the_old_record_and_no_temp_file() {
    let fs = TinyTmpfs::mount();
    let record = fs.path().join("record.json");
    write_atomic(&record, b"{\"version\":1}").expect("a small record fits");

    // Four times the filesystem's size: the write runs out of space part way.
    let big = vec![b'x'; 256 * 1024];
    let err = write_atomic(&record, &big).expect_err("a record larger than the disk");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOSPC),
        "expected ENOSPC, got {err}"
    );

    assert_eq!(
        std::fs::read(&record).expect("old record still readable"),
        b"{\"version\":1}",
        "the failed write must not touch the record"
    );
    assert_eq!(
        entries(fs.path()),
        vec![record.clone()],
        "a torn temp file was left next to the record"
    );

    // The space came back: the next write succeeds.
    write_atomic(&record, b"{\"version\":2}").expect("write after the failure");
    assert_eq!(std::fs::read(&record).expect("read"), b"{\"version\":2}");
}
