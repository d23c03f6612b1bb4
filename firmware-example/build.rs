//! Puts memory.x on the linker path, links with cortex-m-rt's link.x (binaries only, so
//! the dependencies build exactly as for any thumbv7em library), and copies the bundle to
//! embed: `FEWSTEP_BUNDLE=path/to/bundle.bin` or the shipped bundles/digits8.bin.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let here =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    std::fs::copy(here.join("memory.x"), out.join("memory.x")).expect("copy memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
    println!("cargo:rerun-if-changed=memory.x");

    println!("cargo:rerun-if-env-changed=FEWSTEP_BUNDLE");
    let bundle = match std::env::var_os("FEWSTEP_BUNDLE") {
        Some(p) => PathBuf::from(p),
        None => here.join("../bundles/digits8.bin"),
    };
    println!("cargo:rerun-if-changed={}", bundle.display());
    if let Err(e) = std::fs::copy(&bundle, out.join("bundle.bin")) {
        panic!(
            "cannot read the bundle to embed, {}: {e} (set FEWSTEP_BUNDLE to a bundle file)",
            bundle.display()
        );
    }
}
