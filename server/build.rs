//! Records the git commit berthd is built from, for `berthd --version`.
//!
//! `BERTH_GIT_COMMIT` from the environment wins (packagers building from a tarball can
//! name the commit); else `git rev-parse --short HEAD` in this crate's directory; else
//! "unknown". A build without git or without `.git` never fails here.

use std::path::Path;
use std::process::Command;

fn git(dir: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=BERTH_GIT_COMMIT");
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned());
    let from_env = std::env::var("BERTH_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = from_env
        .or_else(|| git(&dir, &["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    // Rebuild when HEAD moves: HEAD itself (a branch switch), its reflog and the
    // branch's ref (a commit, a reset). Only files that exist: a missing one would
    // rerun this on every build (a packed ref is covered by the reflog).
    let mut files = vec!["HEAD".to_owned(), "logs/HEAD".to_owned()];
    files.extend(git(&dir, &["rev-parse", "--symbolic-full-name", "HEAD"]));
    for file in &files {
        let path = git(
            &dir,
            &["rev-parse", "--path-format=absolute", "--git-path", file],
        );
        if let Some(path) = path.filter(|p| Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rustc-env=BERTH_GIT_COMMIT={commit}");
}
