//! The module layering of `ameide-sdk/src`, checked by `cargo xtask policy`:
//! no import cycle between its files, and no arrow against the layers.
//!
//! An arrow is a `crate::…` or `super::…` path in a file's code (tests,
//! comments and doc comments excluded) that names another file of the crate.
//! The rules ([`FORBIDDEN`]), from the bottom up: shared pieces (`wire_types`,
//! `config_error`, `grpc_headers`, `grpc_timeout`, `inbound`, `peer`, `time`,
//! `call`, …) use nothing above them; `transport/` serves the layers and never
//! imports them; `telemetry/` is shared by client and server and imports
//! neither; the client layers never import the server or the client; the
//! server never imports a client layer. `docs/ARCHITECTURE.md` draws it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `(from, to)` path prefixes (relative to `ameide-sdk/src`) no arrow may join.
pub const FORBIDDEN: &[(&str, &str)] = &[
    ("layers/", "server"),
    ("layers/", "client"),
    ("transport/", "layers/"),
    ("transport/", "client"),
    ("transport/", "server"),
    ("telemetry/", "layers/"),
    ("telemetry/", "server"),
    ("telemetry/", "client"),
    ("server", "layers/"),
    ("server", "client"),
    ("inbound.rs", "server"),
    ("inbound.rs", "layers/"),
];

/// The files of `src` and the files each one imports.
pub fn graph(src: &Path) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let mut files = Vec::new();
    collect(src, src, &mut files)?;
    let known: BTreeSet<String> = files.iter().cloned().collect();
    let mut edges = BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(src.join(file)).map_err(|e| format!("{file}: {e}"))?;
        let module = module_of(file);
        let mut targets = BTreeSet::new();
        for path in paths(&code_of(&text)) {
            let mut segs: Vec<String> = path.split("::").map(str::to_owned).collect();
            let head = segs.remove(0);
            if head == "super" {
                let mut parent = module.clone();
                parent.pop();
                let mut up = segs.iter().take_while(|s| *s == "super").count();
                while up > 0 {
                    parent.pop();
                    up -= 1;
                }
                segs.retain(|s| s != "super");
                segs = parent.into_iter().chain(segs).collect();
            }
            if let Some(target) = resolve(&known, &segs)
                && target != *file
                && target != "lib.rs"
            {
                targets.insert(target);
            }
        }
        edges.insert(file.clone(), targets);
    }
    Ok(edges)
}

/// Every cycle and forbidden arrow, as messages.
pub fn problems(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for cycle in cycles(edges) {
        out.push(format!("import cycle: {}", cycle.join(" -> ")));
    }
    for (from, targets) in edges {
        for to in targets {
            if FORBIDDEN
                .iter()
                .any(|(a, b)| from.starts_with(a) && to.starts_with(b))
            {
                out.push(format!("{from} imports {to}, against the layering"));
            }
        }
    }
    out
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), String> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).map_err(|e| e.to_string())?;
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

fn module_of(file: &str) -> Vec<String> {
    let mut parts: Vec<String> = file
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_owned)
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The file a module path names: the longest prefix that is a file.
fn resolve(known: &BTreeSet<String>, segs: &[String]) -> Option<String> {
    (1..=segs.len()).rev().find_map(|k| {
        let base = segs[..k].join("/");
        [format!("{base}.rs"), format!("{base}/mod.rs")]
            .into_iter()
            .find(|c| known.contains(c))
    })
}

/// The code of a file: without `#[cfg(test)] mod … { … }` blocks and comments.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<i32> = None;
    let mut pending_test = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(depth) = skip_depth.as_mut() {
            *depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
            if *depth <= 0 {
                skip_depth = None;
            }
            continue;
        }
        if trimmed.starts_with("#[cfg(test)]") {
            pending_test = true;
            continue;
        }
        if pending_test && trimmed.starts_with("mod ") && line.contains('{') {
            let depth = line.matches('{').count() as i32 - line.matches('}').count() as i32;
            skip_depth = (depth > 0).then_some(depth);
            pending_test = false;
            continue;
        }
        pending_test = false;
        if trimmed.starts_with("//") {
            continue;
        }
        let code = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// `crate::a::b` and `super::a` paths, plus the items of `use crate::{a, b::c}`.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for head in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(head) {
            let start = from + i;
            from = start + head.len();
            if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
                continue;
            }
            let mut end = start;
            while end < bytes.len()
                && (bytes[end].is_ascii_lowercase()
                    || bytes[end].is_ascii_digit()
                    || bytes[end] == b'_'
                    || bytes[end] == b':')
            {
                end += 1;
            }
            let path = code[start..end].trim_end_matches(':').to_owned();
            // `use crate::{a, b::c}`: each item as its own path.
            if code[end..].starts_with('{') && path.ends_with(head.trim_end_matches(':')) {
                if let Some(close) = code[end..].find('}') {
                    for item in code[end + 1..end + close].split(',') {
                        let item: String = item
                            .trim()
                            .chars()
                            .take_while(|c| {
                                c.is_ascii_lowercase()
                                    || c.is_ascii_digit()
                                    || *c == '_'
                                    || *c == ':'
                            })
                            .collect();
                        if !item.is_empty() {
                            out.push(format!("{}::{}", head.trim_end_matches("::"), item));
                        }
                    }
                }
                continue;
            }
            out.push(path);
        }
    }
    out
}

/// Strongly connected components with more than one file (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on.insert(v);
        let targets: Vec<&'a str> = s
            .edges
            .get(v)
            .map(|t| t.iter().map(String::as_str).collect())
            .unwrap_or_default();
        for w in targets {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges(pairs: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        pairs
            .iter()
            .map(|(f, ts)| (f.to_string(), ts.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    #[test]
    fn a_cycle_and_a_forbidden_arrow_are_found() {
        let g = edges(&[
            ("a.rs", &["b.rs"]),
            ("b.rs", &["a.rs"]),
            ("layers/auth.rs", &["server.rs"]),
            ("server.rs", &[]),
        ]);
        let p = problems(&g);
        assert!(
            p.iter().any(|m| m.contains("import cycle: a.rs -> b.rs")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.contains("layers/auth.rs imports server.rs")),
            "{p:?}"
        );
    }

    #[test]
    fn paths_in_code_are_read_and_comments_and_tests_are_not() {
        let code = code_of(
            "use crate::{config::X, peer};\nlet x = super::names::A; // crate::server\n/// crate::client\n#[cfg(test)]\nmod tests {\n    use crate::server;\n}\n",
        );
        let p = paths(&code);
        assert!(
            p.contains(&"crate::config::".to_string())
                || p.iter()
                    .any(|x| x == "crate::config::X" || x == "crate::config::"),
            "{p:?}"
        );
        assert!(p.iter().any(|x| x == "crate::peer"), "{p:?}");
        assert!(p.iter().any(|x| x.starts_with("super::names")), "{p:?}");
        assert!(
            !p.iter()
                .any(|x| x.contains("server") || x.contains("client")),
            "{p:?}"
        );
    }

    #[test]
    fn the_sdk_has_no_cycle_and_no_arrow_against_the_layers() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ameide-sdk/src");
        let g = graph(&src).unwrap();
        assert!(g.len() > 30, "{} files", g.len());
        assert!(
            g["client/builder.rs"].contains("transport/mod.rs"),
            "{:?}",
            g["client/builder.rs"]
        );
        let p = problems(&g);
        assert!(p.is_empty(), "{p:#?}");
    }
}
