//! Tells the micro runtime's integer kernels whether the target has the Armv7E-M DSP
//! extension (`SMLAD`, `SXTB16`): `cfg(fewstep_dsp)` on thumbv7em targets, where
//! `micro::int` uses them through `asm!`; elsewhere portable code gives the
//! same integers.
//!
//! It also writes the integer path's SiLU table (`silu_table.rs` in OUT_DIR): silu at
//! 1025 points of [-16, 16], computed with the `libm` crate in f64 so every build machine
//! writes the same bits, as 1024 segments (start, rise to the next point in f32).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(fewstep_dsp)");
    println!("cargo::rerun-if-changed=build.rs");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let point = |i: usize| {
        let v = -16.0 + i as f64 / 32.0;
        (v / (1.0 + libm::exp(-v))) as f32
    };
    let mut table = String::from("static SILU_TABLE: [[f32; 2]; 1024] = [\n");
    for i in 0..1024 {
        // The rise as the runtime's f32 subtraction rounds it (IEEE, the same everywhere).
        let (a, b) = (point(i), point(i + 1));
        table.push_str(&format!(
            "    [f32::from_bits({:#010x}), f32::from_bits({:#010x})],\n",
            a.to_bits(),
            (b - a).to_bits()
        ));
    }
    table.push_str("];\n");
    std::fs::write(out.join("silu_table.rs"), table).expect("write silu_table.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.starts_with("thumbv7em") {
        println!("cargo::rustc-cfg=fewstep_dsp");
    }
}
