//! docs/configuration.md cannot drift from the code: every key `berthd config default`
//! prints has a row there, and the page's default file equals the command's output.
//! Nor can the man page deploy/berthd.8: it describes every option and command
//! `berthd --help` lists.

use std::path::Path;

use berth_integration::daemon::TestDaemon;

fn config_default() -> String {
    berthd(&["config", "default"])
}

fn berthd(args: &[&str]) -> String {
    let out = std::process::Command::new(TestDaemon::binary().expect("berthd"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running berthd {args:?}: {e}"));
    assert!(out.status.success(), "berthd {args:?} failed");
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

/// Long options (`--socket`) and commands (`check`) of a clap help text.
fn help_options_and_commands(help: &str) -> (Vec<String>, Vec<String>) {
    let mut options = Vec::new();
    let mut commands = Vec::new();
    let mut in_commands = false;
    for line in help.lines() {
        if line == "Commands:" {
            in_commands = true;
            continue;
        }
        if !line.starts_with(' ') {
            in_commands = false;
        }
        let trimmed = line.trim_start();
        if in_commands && line.starts_with("  ") && !line.starts_with("   ") {
            let name = trimmed.split_whitespace().next().unwrap_or_default();
            if name != "help" {
                commands.push(name.to_owned());
            }
        } else if trimmed.starts_with('-') {
            options.extend(
                trimmed
                    .split_whitespace()
                    .map(|w| w.trim_end_matches(','))
                    .filter(|w| w.starts_with("--"))
                    .map(str::to_owned),
            );
        }
    }
    (options, commands)
}

#[test]
fn the_man_page_describes_every_option_and_command_of_help() {
    let help = berthd(&["--help"]);
    let (options, commands) = help_options_and_commands(&help);
    assert!(options.len() >= 8, "too few options parsed: {options:?}");
    assert!(commands.len() >= 3, "too few commands parsed: {commands:?}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/berthd.8");
    let page = std::fs::read_to_string(&path).expect("deploy/berthd.8");
    let page = page.replace("\\-", "-");
    // An item of OPTIONS or COMMANDS: the line after `.TP`.
    let items: Vec<&str> = page
        .split(".TP\n")
        .skip(1)
        .filter_map(|rest| rest.lines().next())
        .collect();
    let undocumented: Vec<&String> = options
        .iter()
        .chain(&commands)
        .filter(|name| {
            !items.iter().any(|item| {
                item.split([' ', '"', ','])
                    .any(|word| word == name.as_str())
            })
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "deploy/berthd.8 has no .TP item for {undocumented:?} of `berthd --help`"
    );
    // The long help reads as the man page: the same sections after the options.
    for section in ["Files:", "Signals:", "Environment:", "Exit status:"] {
        assert!(help.contains(section), "`berthd --help` lacks {section}");
    }
}

#[test]
fn help_parsing_finds_options_and_commands() {
    let help = "Usage: x\n\nCommands:\n  config  Helpers\n  help    Print\n\n\
                Options:\n  -c, --config <FILE>\n          Config\n      --socket <PATH>\n";
    let (options, commands) = help_options_and_commands(help);
    assert_eq!(options, ["--config", "--socket"]);
    assert_eq!(commands, ["config"]);
}
