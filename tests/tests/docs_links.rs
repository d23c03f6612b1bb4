//! Every relative link in the README and in docs/ resolves to a file of the repository, so
//! a fresh clone has what the documentation points to (issue 13: the method notes used to
//! link outside the repository).

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Markdown files to check: README.md and everything under docs/.
fn markdown_files() -> Vec<PathBuf> {
    let mut out = vec![repo().join("README.md"), repo().join("data/README.md")];
    let mut stack = vec![repo().join("docs")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    out
}

/// The targets of `[text](target)` and `![alt](target)` in `text`.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        if let Some(end) = after.find(')') {
            out.push(after[..end].trim().to_string());
        }
        rest = after;
    }
    out
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for md in markdown_files() {
        let text = std::fs::read_to_string(&md).unwrap();
        for target in links(&text) {
            if target.is_empty()
                || target.starts_with('#')
                || target.contains("://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            let path = target.split('#').next().unwrap_or("");
            let resolved = md.parent().unwrap().join(path);
            checked += 1;
            // Inside the repository, and present.
            let inside = resolved
                .canonicalize()
                .ok()
                .is_some_and(|p| p.starts_with(repo().canonicalize().unwrap()));
            if !inside {
                broken.push(format!("{}: {target}", md.display()));
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found; is the parser right?"
    );
    assert!(
        broken.is_empty(),
        "links that do not resolve in the repository: {broken:#?}"
    );
}

#[test]
fn the_link_parser_finds_links_and_images() {
    let t = "see [a](x.md) and ![b](img/y.png) or [c](https://e.org) (not a link)";
    assert_eq!(links(t), ["x.md", "img/y.png", "https://e.org"]);
}
