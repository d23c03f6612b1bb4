//! `cargo run --release -p sampler-cli` right after `cargo build --release --workspace`
//! must reuse the workspace's build of burn: every dependency sampler-cli shares with the
//! workspace must resolve with the same features in both (workspace-hack/Cargo.toml pins
//! the union). A dependency whose features differ is named, with the fix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// `package version -> feature sets` of `cargo tree` for `args` (a package built for the
/// host and for the target may appear with two).
fn features(args: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO"))
        .arg("tree")
        .args(args)
        .args(["-e", "normal,build", "--prefix", "none", "-f", "{p}|{f}"])
        .current_dir(root)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((p, f)) = l.split_once('|') else {
            continue;
        };
        let p = p.trim_end_matches(" (*)").trim();
        // "name vX.Y.Z" plus a path for workspace crates; features as printed.
        let key = p.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        map.entry(key)
            .or_default()
            .insert(f.trim_end_matches(" (*)").to_string());
    }
    map
}

#[test]
fn sampler_cli_resolves_the_workspace_features() {
    let cli = features(&["-p", "sampler-cli"]);
    let workspace = features(&["--workspace"]);
    assert!(cli.contains_key("burn v0.22.1"), "{cli:?}");
    let differing: Vec<String> = cli
        .iter()
        .filter(|(p, _)| !p.starts_with("sampler-cli") && !p.starts_with("workspace-hack"))
        .filter_map(|(p, f)| {
            let w = workspace.get(p)?;
            (w != f).then(|| format!("{p}: sampler-cli {f:?}, workspace {w:?}"))
        })
        .collect();
    assert!(
        differing.is_empty(),
        "these dependencies would be rebuilt for `-p sampler-cli`; add the workspace's \
         features to workspace-hack/Cargo.toml:\n{}",
        differing.join("\n")
    );
}
