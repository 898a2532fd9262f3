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

/// A row of docs/troubleshooting.md's "Errors by RPC": the message pattern and its code.
#[derive(Debug)]
struct ErrorRow {
    pattern: String,
    code: String,
}

fn error_rows(page: &str) -> Vec<ErrorRow> {
    let section = page
        .split_once("\n## Errors by RPC\n")
        .map(|(_, s)| s)
        .expect("troubleshooting.md has an \"Errors by RPC\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("| `")?;
            let (pattern, rest) = rest.split_once("` | ")?;
            let code = rest.split(" | ").next()?.trim().to_owned();
            Some(ErrorRow {
                pattern: pattern.to_owned(),
                code,
            })
        })
        .collect()
}

/// The literal pieces of a pattern: the text between its `<placeholders>`.
fn fragments(pattern: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('<') {
        out.push(&rest[..open]);
        rest = match rest[open..].find('>') {
            Some(close) => &rest[open + close + 1..],
            None => "",
        };
    }
    out.push(rest);
    out.into_iter().filter(|f| !f.is_empty()).collect()
}

/// Whether `message` is an instance of `pattern`: its literal pieces, in order.
fn matches_pattern(pattern: &str, message: &str) -> bool {
    let mut at = 0;
    for f in fragments(pattern) {
        match message[at..].find(f) {
            Some(i) => at += i + f.len(),
            None => return false,
        }
    }
    true
}

/// The Rust sources berthd's messages come from, with string continuations
/// (`\` + newline + indent) joined and `\"` unescaped, as the message reads.
fn message_sources() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut text = String::new();
    let mut dirs: Vec<_> = ["server/src", "image/src", "runtime-core/src"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                text.push_str(&std::fs::read_to_string(&path).expect("source"));
            }
        }
    }
    let mut joined = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("\\\n") {
        joined.push_str(&rest[..i]);
        rest = rest[i + 2..].trim_start();
    }
    joined.push_str(rest);
    joined.replace("\\\"", "\"")
}

const GRPC_CODES: &[&str] = &[
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "FailedPrecondition",
    "ResourceExhausted",
    "Unavailable",
    "DeadlineExceeded",
    "PermissionDenied",
    "Internal",
];

/// Messages berthd returns that the page must keep listing (a curated list: the
/// ones kubelet users meet most). Each is a literal piece of the message.
const MUST_BE_DOCUMENTED: &[&str] = &[
    " is not present; pull it first",
    " is already reserved by sandbox ",
    " is already reserved by container ",
    "unknown runtime handler ",
    " not found next to berthd (",
    "creating the container: ",
    " is not running",
    " is not in the created state",
    ": cmd is required (give the command to run)",
    " timed out after ",
    "invalid image reference ",
    ": no registry reachable; tried: ",
    ": access denied; tried: ",
    ": the index has no manifest for ",
    " is pinned by the image.pinned_images entry ",
    "unknown CDI device ",
    " is not a CIDR like 10.244.0.0/24",
    ": the pod infra process did not start within 1s",
    ": its monitor did not answer within 10s",
];

#[test]
fn every_documented_error_exists_in_the_code_and_the_curated_ones_are_documented() {
    let page = doc("troubleshooting.md");
    let rows = error_rows(&page);
    assert!(rows.len() >= 40, "too few rows parsed: {rows:?}");
    let code = message_sources();
    for row in &rows {
        for c in row.code.split([',', ' ']).filter(|w| w.len() > 2) {
            assert!(
                c == "or" || GRPC_CODES.contains(&c),
                "{:?}: {c:?} is not a gRPC code",
                row.pattern
            );
        }
        let pieces = fragments(&row.pattern);
        assert!(
            pieces.iter().map(|p| p.trim().len()).sum::<usize>() >= 10,
            "{:?}: a pattern needs 10+ literal characters",
            row.pattern
        );
        // A message may join texts of two layers ("pulling <ref>: " + the cause), so
        // each piece is looked for without the separators at its ends.
        let separators = |c: char| c.is_whitespace() || matches!(c, ':' | ';' | ',');
        for p in pieces
            .iter()
            .map(|p| p.trim_matches(separators))
            .filter(|p| p.len() >= 3)
        {
            assert!(
                code.contains(p),
                "docs/troubleshooting.md documents {:?}, but no berthd source has {p:?}: \
                 update the row to the message the code returns now",
                row.pattern
            );
        }
    }
    for piece in MUST_BE_DOCUMENTED {
        assert!(code.contains(piece), "the code no longer says {piece:?}");
        assert!(
            rows.iter().any(|r| r.pattern.contains(piece.trim())),
            "docs/troubleshooting.md's \"Errors by RPC\" has no row for {piece:?}"
        );
    }
}

#[test]
fn patterns_match_by_their_literal_pieces_in_order() {
    assert_eq!(
        fragments("container <id> is not running"),
        ["container ", " is not running"]
    );
    let p = "image <ref> is not present; pull it first";
    assert!(matches_pattern(
        p,
        "image \"x:1\" is not present; pull it first"
    ));
    assert!(!matches_pattern(p, "image \"x:1\" not found"));
    assert!(!matches_pattern("a <x> b <y> c", "c b a"));
}

/// Real replies of a running berthd to bad requests carry the code and the message
/// the page documents for them.
#[tokio::test]
async fn real_error_replies_match_the_documented_rows() {
    use berth_proto::v1 as cri;
    let rows = error_rows(&doc("troubleshooting.md"));
    let d = TestDaemon::start().await.expect("berthd");
    let mut c = d.client().await.expect("client");
    let check = |what: &str, status: tonic::Status, expected_row: &str| {
        let row = rows
            .iter()
            .find(|r| r.pattern.starts_with(expected_row))
            .unwrap_or_else(|| panic!("no documented row starts with {expected_row:?}"));
        assert!(
            matches_pattern(&row.pattern, status.message()),
            "{what}: berthd said {:?}, the page documents {:?}",
            status.message(),
            row.pattern
        );
        assert!(
            row.code.contains(&format!("{:?}", status.code())),
            "{what}: berthd answered {:?}, the page documents {} for {:?}",
            status.code(),
            row.code,
            row.pattern
        );
    };

    let bad_ref = c
        .image
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: "Registry.test/UPPER/Case:1".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("an invalid reference was pulled");
    assert!(bad_ref.message().contains("UPPER/Case"), "{bad_ref:?}");
    check(
        "PullImage of a bad reference",
        bad_ref,
        "invalid image reference",
    );

    let unknown = c
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: "nosuchcontainer".into(),
            verbose: false,
        })
        .await
        .expect_err("status of an unknown container");
    assert!(unknown.message().contains("nosuchcontainer"), "{unknown:?}");
    check(
        "ContainerStatus of an unknown id",
        unknown,
        "container <id> not found",
    );

    let bad_pod = c
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "web/../x".into(),
                    uid: "uid-1".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("a pod named with '/'");
    assert!(bad_pod.message().contains("web/../x"), "{bad_pod:?}");
    check(
        "RunPodSandbox with a '/' in its name",
        bad_pod,
        "config.metadata.<field> <value> must not contain",
    );

    let no_pod = c
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: "nosuchpod".into(),
            config: Some(cri::ContainerConfig::default()),
            sandbox_config: None,
        })
        .await
        .expect_err("a container in an unknown pod");
    assert!(no_pod.message().contains("nosuchpod"), "{no_pod:?}");
    check(
        "CreateContainer in an unknown pod",
        no_pod,
        "pod sandbox <id> does not exist",
    );
}
