//! docs/configuration.md cannot drift from the code: every key `berthd config default`
//! prints has a row there, and the page's default file equals the command's output.

use std::path::Path;

use berth_integration::daemon::TestDaemon;

fn config_default() -> String {
    let out = std::process::Command::new(TestDaemon::binary().expect("berthd"))
        .args(["config", "default"])
        .output()
        .expect("running berthd config default");
    assert!(out.status.success(), "berthd config default failed");
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `section.key` (or `key` at top level) for every uncommented key line.
fn keys(toml: &str) -> Vec<String> {
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in toml.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            keys.push(if section.is_empty() {
                key.to_owned()
            } else {
                format!("{section}.{key}")
            });
        }
    }
    keys
}

#[test]
fn every_default_key_is_documented() {
    let defaults = config_default();
    let keys = keys(&defaults);
    assert!(keys.len() >= 10, "too few keys parsed: {keys:?}");
    assert!(keys.contains(&"grpc.socket".to_owned()), "{keys:?}");
    let page = doc("configuration.md");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !page.contains(&format!("| `{k}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md has no table row for {missing:?}"
    );
}

#[test]
fn the_documented_default_file_is_the_real_one() {
    let page = doc("configuration.md");
    let start = page
        .find("```toml\n")
        .expect("configuration.md has a ```toml block")
        + "```toml\n".len();
    let end = page[start..].find("```").expect("block closed") + start;
    assert_eq!(
        &page[start..end],
        config_default(),
        "regenerate the block at the end of docs/configuration.md from `berthd config default`"
    );
}

#[test]
fn key_extraction_sees_sections_and_skips_comments() {
    let k = keys("a = 1\n# b = 2\n[s]\nc = \"x\"\n");
    assert_eq!(k, ["a", "s.c"]);
}
