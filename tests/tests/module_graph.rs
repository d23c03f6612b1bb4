//! The layering of sampler-core and the trainer, read from their sources: which module names
//! which (every `crate::` and `super::` path outside comments, test modules included), at
//! every level of the module tree. Two rules (issue 23):
//! - no cycle between sibling modules (a parent and its own children may name each other:
//!   that is Rust's nesting, not a dependency between parts);
//! - in sampler-core, no arrow up its floors: ground (schedule, precond, rng, pack, solver,
//!   the network configs, ...) < the bundle format < the engines (burn's network, the host CPU paths, the micro
//!   runtime) < the sampler and the host file helpers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside one crate, e.g. `["cpu", "conv", "kernel"]`; the crate root is `[]`.
type Module = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module a file defines: `src/cpu/conv/mod.rs` -> `cpu::conv`, `src/lib.rs` -> root.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// Code without comments and string literals (doc comments name modules in prose).
fn code_of(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut code = String::new();
        let mut in_str = false;
        let mut prev = ' ';
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if !in_str && c == '/' && chars.get(i + 1) == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                code.push(c);
            }
            prev = c;
            i += 1;
        }
        out.push_str(&code);
        out.push('\n');
    }
    out
}

/// The `a::b::c` paths that start at `crate::` or `super::` in `code`, expanding
/// `crate::{a, b::c}` groups one level deep.
fn paths(code: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for root in ["crate", "super"] {
        let pat = format!("{root}::");
        let mut from = 0;
        while let Some(found) = code[from..].find(&pat) {
            let at = from + found;
            from = at + pat.len();
            let before = code[..at].chars().last();
            let rest = &code[from..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // `super::` inside `super::super::`, or an identifier ending so
            }
            let mut segs = Vec::new();
            let mut tail = rest;
            let mut supers = 0;
            while let Some(t) = tail.strip_prefix("super::") {
                supers += 1;
                tail = t;
            }
            let take = |s: &str| -> String {
                s.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect()
            };
            if let Some(group) = tail.strip_prefix('{') {
                let inner: String = group.chars().take_while(|&c| c != '}').collect();
                for item in inner.split(',') {
                    let item = item.trim();
                    let segs: Vec<String> = item.split("::").map(|s| take(s.trim())).collect();
                    if !segs.is_empty() && !segs[0].is_empty() {
                        out.push((format!("{root}{supers}"), segs));
                    }
                }
                continue;
            }
            loop {
                let seg = take(tail);
                if seg.is_empty() {
                    break;
                }
                tail = &tail[seg.len()..];
                segs.push(seg);
                match tail.strip_prefix("::") {
                    Some(t) if !t.starts_with('{') => tail = t,
                    Some(t) => {
                        // `crate::a::{b, c}`: the module is `a`, and `a::b`, `a::c` if they are.
                        let inner: String = t[1..].chars().take_while(|&c| c != '}').collect();
                        for item in inner.split(',') {
                            let mut s = segs.clone();
                            s.extend(item.trim().split("::").map(|p| take(p.trim())));
                            out.push((format!("{root}{supers}"), s));
                        }
                        break;
                    }
                    None => break,
                }
            }
            if !segs.is_empty() {
                out.push((format!("{root}{supers}"), segs));
            }
        }
    }
    out
}

/// Arrows `from -> to` between the modules of the crate rooted at `src`.
fn arrows(src: &Path) -> BTreeSet<(Module, Module)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(src, f)).collect();
    let mut out = BTreeSet::new();
    for file in &files {
        let from = module_of(src, file);
        // A file `a/b.rs` or `a/b/mod.rs` is module a::b; `super` of it is `a`.
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for (root, segs) in paths(&code) {
            let base: Module = if root == "crate0" {
                Vec::new()
            } else {
                let ups: usize = root.trim_start_matches("super").parse::<usize>().unwrap() + 1;
                let mut b = from.clone();
                for _ in 0..ups {
                    b.pop();
                }
                b
            };
            let mut target = base.clone();
            let mut best = base.clone();
            for s in &segs {
                target.push(s.clone());
                if modules.contains(&target) {
                    best = target.clone();
                }
            }
            if best != from && !best.is_empty() {
                out.insert((from.clone(), best));
            }
        }
    }
    out
}

/// The sibling arrows: `from -> to` lifted to the children of their deepest common ancestor
/// (skipping a module and its own ancestors or descendants).
fn sibling_arrows(
    arrows: &BTreeSet<(Module, Module)>,
) -> BTreeMap<Module, BTreeSet<(String, String)>> {
    let mut out: BTreeMap<Module, BTreeSet<(String, String)>> = BTreeMap::new();
    for (from, to) in arrows {
        let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
        if common == from.len() || common == to.len() {
            continue;
        }
        out.entry(from[..common].to_vec())
            .or_default()
            .insert((from[common].clone(), to[common].clone()));
    }
    out
}

/// A cycle among `edges`, if any, as the list of its nodes.
fn cycle(edges: &BTreeSet<(String, String)>) -> Option<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    fn visit<'a>(
        n: &'a String,
        edges: &'a BTreeSet<(String, String)>,
        state: &mut BTreeMap<&'a String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let at = stack.iter().position(|s| s == n).unwrap();
                let mut c = stack[at..].to_vec();
                c.push(n.clone());
                return Some(c);
            }
            _ => {}
        }
        state.insert(n, 1);
        stack.push(n.clone());
        for (a, b) in edges {
            if a == n
                && let Some(c) = visit(b, edges, state, stack)
            {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in nodes {
        let mut stack = Vec::new();
        if let Some(c) = visit(n, edges, &mut state, &mut stack) {
            return Some(c);
        }
    }
    None
}

fn src(krate: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src")
}

fn check_acyclic(krate: &str) -> BTreeMap<Module, BTreeSet<(String, String)>> {
    let by_parent = sibling_arrows(&arrows(&src(krate)));
    for (parent, edges) in &by_parent {
        if let Some(c) = cycle(edges) {
            panic!(
                "{krate}: the modules under `{}` form a cycle: {}",
                if parent.is_empty() {
                    "crate".to_string()
                } else {
                    parent.join("::")
                },
                c.join(" -> ")
            );
        }
    }
    by_parent
}

#[test]
fn sampler_core_has_no_cycle_and_no_arrow_up_its_floors() {
    let by_parent = check_acyclic("sampler-core");
    let floor = |m: &str| match m {
        "rng" | "schedule" | "precond" | "pack" | "denoiser" | "solver" | "gmm" | "config" => 0,
        // The errors of sampling name the bundle's.
        "bundle" | "error" => 1,
        "model" | "cpu" | "micro" => 2,
        "sampler" | "fs" => 3,
        other => panic!("sampler-core module `{other}` has no floor: add it to this test"),
    };
    let top = by_parent.get(&Vec::new()).cloned().unwrap_or_default();
    let up: Vec<String> = top
        .iter()
        .filter(|(a, b)| floor(b) > floor(a))
        .map(|(a, b)| format!("{a} -> {b}"))
        .collect();
    assert!(up.is_empty(), "sampler-core arrows up its floors: {up:?}");
    // The rule bites: the floors were read, and the engines do stand on the ground.
    assert!(
        top.contains(&("model".to_string(), "pack".to_string())),
        "{top:?}"
    );
}

#[test]
fn trainer_has_no_cycle() {
    let by_parent = check_acyclic("trainer");
    assert!(!by_parent.is_empty());
}

#[test]
fn the_checker_finds_a_planted_cycle() {
    let edges: BTreeSet<(String, String)> = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let c = cycle(&edges).expect("a -> b -> c -> a");
    assert_eq!(c.first(), c.last());
    assert_eq!(c.len(), 4);
    let code = code_of(
        "use crate::{bundle::Bundle, pack};\n// crate::model\nlet x = super::super::cpu::f();",
    );
    let got = paths(&code);
    assert!(
        got.contains(&("crate0".into(), vec!["bundle".into(), "Bundle".into()])),
        "{got:?}"
    );
    assert!(
        got.contains(&("crate0".into(), vec!["pack".into()])),
        "{got:?}"
    );
    assert!(
        got.iter().all(|(_, s)| s[0] != "model"),
        "comments are not code: {got:?}"
    );
    assert_eq!(
        got.iter()
            .filter(|(root, _)| root.starts_with("super"))
            .collect::<Vec<_>>(),
        [&(
            "super1".to_string(),
            vec!["cpu".to_string(), "f".to_string()]
        )],
        "`super::super::` is one path, one level further up"
    );
}
