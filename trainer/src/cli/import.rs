//! `trainer import`: an NVlabs/edm SongUNet state dict and its config JSON turned into a
//! base bundle (`crate::interop` does the conversion). No run config: the flags name the
//! files, the levels and the weight storage.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use sampler_core::bundle::ModelSpec;
use sampler_core::pack::WeightDtype;

use super::{DEFAULT_T, DEFAULT_WEIGHTS};
use crate::run::write_atomic;

/// The flags of `trainer import`.
#[derive(Args, Debug)]
pub(super) struct ImportArgs {
    /// The state dict: .safetensors or a PyTorch .pt of EDMPrecond/VPPrecond (keys
    /// `model.*`) or of a bare SongUNet. scripts/edm_to_safetensors.py makes one (and the
    /// config) from EDM's network-snapshot-*.pkl.
    #[arg(long = "from", value_name = "FILE")]
    from: PathBuf,
    /// The network's config JSON: SongUNet's arguments and the preconditioning.
    #[arg(long, value_name = "CONFIG.json")]
    config: PathBuf,
    /// The base bundle to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// T of the EDM rho = 7 levels written with the weights (ignored when the config
    /// carries levels, as `export --format safetensors` writes them).
    #[arg(long, default_value_t = DEFAULT_T as u32, value_parser = clap::value_parser!(u32).range(2..=1000))]
    t: u32,
    /// How the weights are stored in the bundle (f32, f16 or int8).
    #[arg(long, default_value = DEFAULT_WEIGHTS.name(), value_name = "TYPE")]
    weights: WeightDtype,
}

/// Writes the base bundle and says what it holds and what the state dict had besides.
pub(super) fn run(a: ImportArgs) -> Result<()> {
    let imported = crate::interop::import(&a.from, &a.config, a.t as usize, a.weights)?;
    let bytes = imported.bundle.to_bytes()?;
    write_atomic(&a.out, &bytes)?;
    let b = &imported.bundle;
    let params = match &b.model {
        ModelSpec::Network { config, .. } => config
            .parameters()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum::<usize>(),
        ModelSpec::Mixture(_) => 0,
    };
    println!(
        "wrote {} ({} bytes: {params} parameters as {}, {}x{}x{}, {} labels, precond {}, T = {})",
        a.out.display(),
        bytes.len(),
        a.weights.name(),
        b.image.channels,
        b.image.height,
        b.image.width,
        b.label_count,
        b.precond.name(),
        b.schedule.len()
    );
    let filters = imported
        .skipped
        .iter()
        .filter(|s| s.ends_with(".resample_filter"))
        .count();
    if filters > 0 {
        println!("  checked: {filters} resample filter buffers, all EDM's [1, 1] filter");
    }
    for s in imported
        .skipped
        .iter()
        .filter(|s| !s.ends_with(".resample_filter"))
    {
        println!("  left out: {s}");
    }
    Ok(())
}
