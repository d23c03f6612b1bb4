//! `trainer export`: the bundle of a run directory (the EMA weights with the learned levels,
//! or a pre-training run's with EDM's), a bundle converted to another weight storage, or a
//! network written as an NVlabs/edm state dict for PyTorch. No run config: the flags name
//! files and formats, and the run directory's own `config.json` says what it holds.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use sampler_core::bundle::{Bundle, ModelSpec};
use sampler_core::pack::WeightDtype;

use super::{DEFAULT_T, DEFAULT_WEIGHTS};
use crate::pretrain::PretrainConfig;
use crate::run::{RunDir, write_atomic};
use crate::two_stage::FinetuneConfig;

/// The flags of `trainer export`.
#[derive(Args, Debug)]
pub(super) struct ExportArgs {
    /// The run directory to export.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "bundle",
        conflicts_with = "bundle"
    )]
    run: Option<PathBuf>,
    /// Convert an existing bundle instead of a run: a version-1 bundle to version 2, or
    /// f32 weights to f16/int8 for a microcontroller.
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
    /// The bundle to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Bundle name (default: the run directory's name).
    #[arg(long)]
    name: Option<String>,
    /// Free-text description.
    #[arg(long, default_value = "")]
    description: String,
    /// For pre-training runs: T of the EDM rho = 7 schedule written with the weights.
    #[arg(long, default_value_t = DEFAULT_T)]
    t: usize,
    /// How the network's matrices and convolution kernels are stored: f32 (exact), f16
    /// (half the size) or int8 (a quarter: symmetric per output channel, f32 scales).
    /// Biases and GroupNorm parameters stay f32. The firmware reads every one in place.
    #[arg(long, default_value = DEFAULT_WEIGHTS.name(), value_name = "TYPE")]
    weights: WeightDtype,
    /// What to write.
    #[arg(long, value_enum, default_value_t = ExportFormat::Bundle)]
    format: ExportFormat,
}

/// What `export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ExportFormat {
    /// A fewstep bundle.
    Bundle,
    /// The network as an NVlabs/edm state dict (EDMPrecond keys and layouts) plus its
    /// config JSON beside it (`model.safetensors` -> `model.json`), for PyTorch.
    Safetensors,
}

/// Writes the bundle or state dict and says what it holds.
pub(super) fn run(a: ExportArgs) -> Result<()> {
    let mut bundle = match (&a.run, &a.bundle) {
        (_, Some(path)) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let mut b =
                Bundle::from_bytes(&bytes).with_context(|| format!("{}", path.display()))?;
            if let Some(name) = &a.name {
                b.name = name.clone();
            }
            if !a.description.is_empty() {
                b.description = a.description.clone();
            }
            b
        }
        (Some(run), None) => export_run(run, &a)?,
        (None, None) => bail!("give --run DIR or --bundle FILE"),
    };
    if a.format == ExportFormat::Safetensors {
        let config = crate::interop::config_path_for(&a.out);
        crate::interop::export_safetensors(&bundle, &a.out, &config)?;
        println!(
            "wrote {} and {} (EDMPrecond state dict and config; the T = {} levels are in the \
             config's \"fewstep\" section)",
            a.out.display(),
            config.display(),
            bundle.schedule.len()
        );
        return Ok(());
    }
    if let ModelSpec::Network { config, weights } = &mut bundle.model {
        *weights = sampler_core::model::weights_to_pack(config, weights, a.weights)
            .map_err(|e| anyhow::anyhow!("cannot convert the weights: {e}"))?;
    }
    let bytes = bundle.to_bytes()?;
    write_atomic(&a.out, &bytes)?;
    println!(
        "wrote {} ({} bytes, {} weights, T = {}, {})",
        a.out.display(),
        bytes.len(),
        a.weights.name(),
        bundle.schedule.len(),
        bundle.provenance.schedule_method
    );
    Ok(())
}

/// The bundle of a run directory: a fine-tuning run with its base, or a pre-training run
/// with EDM's levels.
fn export_run(run: &Path, a: &ExportArgs) -> Result<Bundle> {
    let run_dir = RunDir::open(run);
    let ck = run_dir
        .load_checkpoint()?
        .with_context(|| format!("{} has no checkpoint yet", run.display()))?;
    let name = a.name.clone().unwrap_or_else(|| {
        run.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "fewstep".into())
    });
    if let Ok(c) = run_dir.load_config::<FinetuneConfig>() {
        let base_bytes = std::fs::read(&c.base)
            .with_context(|| format!("cannot read the run's base bundle {}", c.base.display()))?;
        let base =
            Bundle::from_bytes(&base_bytes).with_context(|| format!("{}", c.base.display()))?;
        crate::two_stage::export_bundle(&c, &base, &ck, &name, &a.description)
    } else {
        let c: PretrainConfig = run_dir.load_config().context(
            "the run directory's config.json is neither a fine-tuning nor a pre-training config",
        )?;
        let mut b = crate::pretrain::export_bundle(&c, &ck, a.t, &name)?;
        if !a.description.is_empty() {
            b.description = a.description.clone();
        }
        Ok(b)
    }
}
