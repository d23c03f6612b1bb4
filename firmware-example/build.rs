//! Puts memory.x on the linker path, links with cortex-m-rt's link.x (binaries only, so
//! the dependencies build exactly as for any thumbv7em library), copies the bundle to
//! embed (`FEWSTEP_BUNDLE=path/to/bundle.bin` or the shipped bundles/digits8.bin) and sizes
//! the activation arena for it (in `FEWSTEP_ACTIVATIONS=f32|f16|int8|int-f32` storage,
//! default the one that suits the weights): `sampler_core::micro` plans the arena on the
//! host with the code the firmware runs, so the static arena is exactly what the bundle
//! needs.

use std::path::PathBuf;

use sampler_core::micro::{Activations, MicroSampler};

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
    let bytes = std::fs::read(&bundle).unwrap_or_else(|e| {
        panic!(
            "cannot read the bundle to embed, {}: {e} (set FEWSTEP_BUNDLE to a bundle file)",
            bundle.display()
        )
    });
    let sampler = MicroSampler::new(&bytes)
        .unwrap_or_else(|e| panic!("{} cannot run on the firmware: {e}", bundle.display()));
    // FEWSTEP_ACTIVATIONS=f32|f16|int8|int-f32 overrides the storage that suits the weights
    // (int8 weights run the integer path by default, on f32 rows for small networks and on
    // int8 rows otherwise; f16 keeps the earlier float path).
    println!("cargo:rerun-if-env-changed=FEWSTEP_ACTIVATIONS");
    let act: Activations = match std::env::var("FEWSTEP_ACTIVATIONS").as_deref() {
        Err(_) | Ok("") => sampler.default_activations(),
        Ok(name) => name
            .parse()
            .unwrap_or_else(|e| panic!("FEWSTEP_ACTIVATIONS={name}: {e}")),
    };
    let words = sampler.arena_words(act);
    std::fs::write(out.join("bundle.bin"), &bytes).expect("write bundle.bin");
    std::fs::write(
        out.join("plan.rs"),
        format!(
            "/// Activation storage of the embedded bundle.\n\
             const ACTIVATIONS: Activations = Activations::{act:?};\n\
             /// Arena words the embedded bundle needs (planned by build.rs).\n\
             const ARENA_WORDS: usize = {words};\n"
        ),
    )
    .expect("write plan.rs");
}
