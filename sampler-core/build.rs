//! Tells the micro runtime's integer kernels whether the target has the Armv7E-M DSP
//! extension (`SMLAD`, `SXTB16`): `cfg(fewstep_dsp)` on thumbv7em targets, where
//! `micro::int` uses them through `asm!`; elsewhere portable code gives the
//! same integers.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(fewstep_dsp)");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.starts_with("thumbv7em") {
        println!("cargo::rustc-cfg=fewstep_dsp");
    }
}
