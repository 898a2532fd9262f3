//! The server's top-level modules (those `lib.rs` declares) depend on each other one
//! way only: `cri` → {`pod`, `container`, `stream`} → {`config`, `store`, `systemd`,
//! `host`, `error`, `prom`} (docs/architecture.md). This test reads the sources,
//! takes every `crate::<module>` path (also inside `use crate::{a, b::c}`) and every
//! `super::` path that climbs to the crate root, builds the graph of top-level modules
//! and fails naming each import cycle, and each leaf module that imports a module
//! above it. Comments, strings and char literals are skipped.
//!
//! It also keeps the CRI's reply messages at the edge: outside `cri/` (and `daemon.rs`
//! and `main.rs`, which register the services and print the API version) a
//! `berth_proto::` path may name only the request-side types of [`REQUEST_SIDE`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules at the bottom: they may import only each other.
const LEAVES: &[&str] = &["error", "host", "listener", "prom", "store", "systemd"];

type Graph = BTreeMap<String, BTreeSet<String>>;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Other,
}

/// The tokens of Rust source that matter for paths; comments, string, byte-string,
/// raw-string and char literals are dropped.
fn tokens(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    // Skips a quoted string starting at the quote `c[i]`, honouring escapes.
    let skip_string = |mut i: usize| -> usize {
        i += 1;
        while i < c.len() && c[i] != '"' {
            i += if c[i] == '\\' { 2 } else { 1 };
        }
        i + 1
    };
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = skip_string(i);
        } else if ch == '\'' {
            if next == Some('\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1; // a lifetime
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let ident: String = c[start..i].iter().collect();
            let at = c.get(i).copied();
            if (ident == "r" || ident == "br") && matches!(at, Some('#' | '"')) {
                let mut hashes = 0;
                while c.get(i) == Some(&'#') {
                    hashes += 1;
                    i += 1;
                }
                i += 1; // the opening quote
                loop {
                    if i >= c.len() {
                        break;
                    }
                    if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                        i += 1 + hashes;
                        break;
                    }
                    i += 1;
                }
            } else if ident == "b" && at == Some('"') {
                i = skip_string(i);
            } else if ident == "b" && at == Some('\'') {
                i += 1;
                while i < c.len() && c[i] != '\'' {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            } else {
                out.push(Tok::Ident(ident));
            }
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == ':' && next == Some(':') {
            out.push(Tok::PathSep);
            i += 2;
        } else {
            out.push(match ch {
                '{' => Tok::Open,
                '}' => Tok::Close,
                ',' => Tok::Comma,
                _ => Tok::Other,
            });
            i += 1;
        }
    }
    out
}

/// The first segments of the path (or `{...}` group of paths) starting at `toks[j]`.
fn first_segments(toks: &[Tok], j: usize, out: &mut BTreeSet<String>) {
    match toks.get(j) {
        Some(Tok::Ident(name)) => {
            out.insert(name.clone());
        }
        Some(Tok::Open) => {
            let mut depth = 0;
            for k in j..toks.len() {
                match &toks[k] {
                    Tok::Open => depth += 1,
                    Tok::Close => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Tok::Ident(name)
                        if depth == 1 && matches!(toks[k - 1], Tok::Open | Tok::Comma) =>
                    {
                        out.insert(name.clone());
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// Names of the crate-root items `src` reaches through `crate::` and through `super::`
/// chains that climb to the root. `depth` is how deep the file's module is below the
/// crate root (1 for `src/x.rs` and `src/x/mod.rs`, 2 for `src/x/y.rs`); inline
/// `mod name { ... }` blocks add one each.
fn root_paths(src: &str, depth: usize) -> BTreeSet<String> {
    let toks = tokens(src);
    let mut out = BTreeSet::new();
    let mut braces = 0usize;
    let mut inline_mods: Vec<usize> = Vec::new();
    for i in 0..toks.len() {
        match &toks[i] {
            Tok::Open => braces += 1,
            Tok::Close => {
                if inline_mods.last() == Some(&braces) {
                    inline_mods.pop();
                }
                braces = braces.saturating_sub(1);
            }
            Tok::Ident(kw) if kw == "mod" => {
                if let (Some(Tok::Ident(_)), Some(Tok::Open)) = (toks.get(i + 1), toks.get(i + 2)) {
                    inline_mods.push(braces + 1);
                }
            }
            Tok::Ident(kw) if kw == "crate" && toks.get(i + 1) == Some(&Tok::PathSep) => {
                first_segments(&toks, i + 2, &mut out);
            }
            Tok::Ident(kw)
                if kw == "super"
                    && toks.get(i + 1) == Some(&Tok::PathSep)
                    && (i == 0 || toks[i - 1] != Tok::PathSep) =>
            {
                let mut j = i;
                let mut climbs = 0;
                while toks.get(j) == Some(&Tok::Ident("super".into()))
                    && toks.get(j + 1) == Some(&Tok::PathSep)
                {
                    climbs += 1;
                    j += 2;
                }
                if depth + inline_mods.len() == climbs {
                    first_segments(&toks, j, &mut out);
                }
            }
            _ => {}
        }
    }
    out
}

/// The `.rs` files of `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module graph of the library whose root is `src/lib.rs`: each top-level module
/// → the other top-level modules it names.
fn module_graph(src: &Path) -> Graph {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("reading lib.rs");
    let toks = tokens(&lib);
    let modules: BTreeSet<String> = toks
        .windows(3)
        .filter_map(|w| match w {
            [Tok::Ident(kw), Tok::Ident(name), Tok::Other] if kw == "mod" => Some(name.clone()),
            _ => None,
        })
        .collect();
    assert!(!modules.is_empty(), "no modules found in {}", src.display());
    let mut graph = Graph::new();
    for module in &modules {
        let mut files = Vec::new();
        let single = src.join(format!("{module}.rs"));
        if single.exists() {
            files.push(single);
        }
        rust_files(&src.join(module), &mut files);
        let mut deps = BTreeSet::new();
        for file in files {
            let rel = file.strip_prefix(src).expect("below src");
            let dirs = rel.components().count() - 1;
            let depth = if rel.ends_with("mod.rs") {
                dirs
            } else {
                dirs + 1
            };
            let text = std::fs::read_to_string(&file).expect("reading a source file");
            deps.extend(root_paths(&text, depth));
        }
        deps.retain(|d| d != module && modules.contains(d));
        graph.insert(module.clone(), deps);
    }
    graph
}

/// Every cycle the depth-first walk closes, each as `a -> b -> ... -> a`.
fn cycles(graph: &Graph) -> Vec<String> {
    fn walk<'g>(
        graph: &'g Graph,
        node: &'g str,
        path: &mut Vec<&'g str>,
        done: &mut BTreeSet<&'g str>,
        found: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node);
            found.push(cycle.join(" -> "));
            return;
        }
        if done.contains(node) {
            return;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            walk(graph, next, path, done, found);
        }
        path.pop();
        done.insert(node);
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        walk(graph, node, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

/// Leaf modules importing a module that is not a leaf, as `leaf -> upper`.
fn leaves_reaching_up(graph: &Graph) -> Vec<String> {
    LEAVES
        .iter()
        .flat_map(|leaf| {
            graph
                .get(*leaf)
                .into_iter()
                .flatten()
                .filter(|d| !LEAVES.contains(&d.as_str()))
                .map(move |d| format!("{leaf} -> {d}"))
        })
        .collect()
}

fn render(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(m, deps)| {
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            format!("  {m} -> {}\n", deps.join(", "))
        })
        .collect()
}

/// The `berth_proto` types the modules below `cri/` may name: the CRI request
/// messages they take as input (container/ and pod/ persist ContainerConfig and
/// PodSandboxConfig verbatim), their parts and enums, and the filters List RPCs pass
/// down. A reply message is built by cri/ (cri/convert.rs), never below it: add a
/// reply type here only with a reason.
const REQUEST_SIDE: &[&str] = &[
    // ContainerConfig and its parts.
    "ContainerConfig",
    "ContainerMetadata",
    "CdiDevice",
    "Device",
    "HugepageLimit",
    "IdMapping",
    "Int64Value",
    "KeyValue",
    "LinuxContainerConfig",
    "LinuxContainerResources",
    "LinuxContainerSecurityContext",
    "Capability",
    "Mount",
    "MountPropagation",
    "NamespaceMode",
    "NamespaceOption",
    "SecurityProfile",
    "security_profile::ProfileType",
    "Signal",
    "SupplementalGroupsPolicy",
    // PodSandboxConfig and its parts.
    "PodSandboxConfig",
    "PodSandboxMetadata",
    "DnsConfig",
    "LinuxPodSandboxConfig",
    "LinuxSandboxSecurityContext",
    "Protocol",
    // The filters of the List RPCs, and the states they select by.
    "ContainerFilter",
    "ContainerStatsFilter",
    "ContainerState",
    "PodSandboxFilter",
    "PodSandboxState",
];

/// Every `berth_proto::` path in `src`, each cut after the item it names: the first
/// segment that is not a module (`v1::Protocol::Udp` names `v1::Protocol`). A path
/// that names no item (`berth_proto::v1`, a glob, `self`) is kept whole.
fn proto_paths(src: &str) -> BTreeSet<String> {
    /// The paths of the path or `{...}` group at `toks[j]`, each after `prefix`;
    /// returns the index past it.
    fn walk(
        toks: &[Tok],
        mut j: usize,
        mut prefix: Vec<String>,
        out: &mut Vec<Vec<String>>,
    ) -> usize {
        loop {
            match toks.get(j) {
                Some(Tok::Ident(name)) => {
                    prefix.push(name.clone());
                    j += 1;
                    if toks.get(j) == Some(&Tok::PathSep) {
                        j += 1;
                        continue;
                    }
                    out.push(prefix);
                    return j;
                }
                Some(Tok::Open) => {
                    j += 1;
                    loop {
                        match toks.get(j) {
                            None => return j,
                            Some(Tok::Close) => return j + 1,
                            Some(Tok::Comma) => j += 1,
                            _ => {
                                j = walk(toks, j, prefix.clone(), out);
                                // Past a rename (`A as B`) to the next item.
                                while !matches!(toks.get(j), None | Some(Tok::Comma | Tok::Close)) {
                                    j += 1;
                                }
                            }
                        }
                    }
                }
                _ => {
                    prefix.push("*".to_owned());
                    out.push(prefix);
                    return j + 1;
                }
            }
        }
    }
    let toks = tokens(src);
    let mut paths = Vec::new();
    for i in 0..toks.len() {
        if toks[i] != Tok::Ident("berth_proto".into()) {
            continue;
        }
        // `berth_proto` itself, or `::berth_proto`; not `some_module::berth_proto`.
        let at_root = i < 2 || toks[i - 1] != Tok::PathSep || !matches!(toks[i - 2], Tok::Ident(_));
        if !at_root {
            continue;
        }
        match toks.get(i + 1) {
            Some(Tok::PathSep) => {
                walk(&toks, i + 2, Vec::new(), &mut paths);
            }
            // `use berth_proto as p;` would hide every later path from this scan.
            Some(Tok::Ident(kw)) if kw == "as" => paths.push(vec!["<renamed crate>".to_owned()]),
            _ => {}
        }
    }
    paths
        .into_iter()
        .map(|segments| {
            let item = segments
                .iter()
                .position(|s| s.starts_with(|c: char| c.is_uppercase()))
                .map_or(segments.len(), |at| at + 1);
            segments[..item].join("::")
        })
        .collect()
}

/// `file: berth_proto::path` for each path outside the edge that names a type
/// [`REQUEST_SIDE`] does not list.
fn replies_below_cri(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let edge = |rel: &Path| {
        rel.starts_with("cri") || rel == Path::new("daemon.rs") || rel == Path::new("main.rs")
    };
    let mut found = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("below src");
        if edge(rel) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("reading a source file");
        for path in proto_paths(&text) {
            let allowed = path
                .strip_prefix("v1::")
                .is_some_and(|name| REQUEST_SIDE.contains(&name));
            if !allowed {
                found.push(format!("{}: berth_proto::{path}", rel.display()));
            }
        }
    }
    found
}

#[test]
fn outside_cri_berth_proto_names_only_request_side_types() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = replies_below_cri(&src);
    assert!(
        found.is_empty(),
        "berth_proto types outside cri/ that are not request-side (a CRI reply is built \
         in cri/, from cri/convert.rs; or, for a request message, add it to REQUEST_SIDE \
         in server/tests/module_graph.rs):\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn proto_paths_are_cut_after_the_item_and_groups_renames_and_globs_are_seen() {
    let src = r#"
        use berth_proto::v1::{ContainerConfig, Mount as CriMount, security_profile::ProfileType};
        use berth_proto::v1::*;
        // berth_proto::v1::Commented
        fn f() -> berth_proto::v1::PodSandboxStatus { berth_proto::v1::Protocol::Udp; }
        const V: &str = berth_proto::CRI_API_VERSION;
        use berth_proto::v1;
        fn g() -> ::berth_proto::v1::ContainerStats { todo!() }
        use berth_proto as p;
        fn h() -> other::berth_proto::Ignored { todo!() }
    "#;
    let found: Vec<String> = proto_paths(src).into_iter().collect();
    assert_eq!(
        found,
        [
            "<renamed crate>",
            "CRI_API_VERSION",
            "v1",
            "v1::*",
            "v1::ContainerConfig",
            "v1::ContainerStats",
            "v1::Mount",
            "v1::PodSandboxStatus",
            "v1::Protocol",
            "v1::security_profile::ProfileType",
        ]
    );
}

#[test]
fn server_modules_form_no_import_cycle_and_leaves_import_nothing_above() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    for leaf in LEAVES {
        assert!(graph.contains_key(*leaf), "leaf module {leaf} is gone");
    }
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "import cycles between the server's modules:\n  {}\nthe graph:\n{}",
        cycles.join("\n  "),
        render(&graph)
    );
    let up = leaves_reaching_up(&graph);
    assert!(
        up.is_empty(),
        "leaf modules import modules above them:\n  {}\nthe graph:\n{}",
        up.join("\n  "),
        render(&graph)
    );
}

#[test]
fn paths_are_found_in_uses_groups_and_super_chains_but_not_in_comments_or_strings() {
    let src = r##"
        use crate::pod::PodManager;
        use crate::{error::Result, host};
        // crate::commented
        /* crate::blocked /* nested */ crate::still_blocked */
        const S: &str = "crate::quoted";
        const R: &str = r#"crate::raw "quoted""#;
        const C: char = '"';
        fn f<'a>(x: &'a str) { super::sibling::g(); super::super::too_high(); }
        mod tests { use super::*; fn t() { super::super::from_tests(); } }
        pub(crate) fn h() {}
    "##;
    let found: Vec<String> = root_paths(src, 1).into_iter().collect();
    assert_eq!(found, ["error", "from_tests", "host", "pod", "sibling"]);
    // One level deeper (src/pod/files.rs), `super::` is pod itself.
    let found: Vec<String> = root_paths(src, 2).into_iter().collect();
    assert_eq!(found, ["error", "host", "pod", "too_high"]);
}

#[test]
fn a_cycle_and_a_leaf_reaching_up_are_reported_by_name() {
    let graph: Graph = [
        ("cri", vec!["pod", "store"]),
        ("pod", vec!["config", "store"]),
        ("config", vec!["cri"]),
        ("store", vec!["error", "config"]),
        ("error", vec![]),
    ]
    .into_iter()
    .map(|(m, deps)| (m.to_owned(), deps.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(
        cycles(&graph),
        [
            "config -> cri -> pod -> config",
            "config -> cri -> pod -> store -> config"
        ]
    );
    assert_eq!(leaves_reaching_up(&graph), ["store -> config"]);
    let acyclic: Graph = graph
        .into_iter()
        .map(|(m, mut deps)| {
            deps.remove("cri");
            (m, deps)
        })
        .collect();
    assert!(cycles(&acyclic).is_empty());
}
