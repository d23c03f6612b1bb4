//! `trainer make-mixture`: an analytic isotropic Gaussian mixture as a bundle, an exact
//! denoiser for experiments and tests (docs/method.md §6: the truncation error without any
//! network error). The flags become the [`Bundle`] itself.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use sampler_core::bundle::{Bundle, ImageShape, ModelSpec, Provenance, SolverKind};
use sampler_core::gmm::Mixture;
use sampler_core::precond::Precond;
use sampler_core::schedule::{SIGMA_MAX, SIGMA_MIN, Schedule};

use super::DEFAULT_T;
use crate::run::write_atomic;

/// The flags of `trainer make-mixture`.
#[derive(Args, Debug)]
pub(super) struct MixtureArgs {
    /// Number of components.
    #[arg(long, default_value_t = 4)]
    components: usize,
    /// Dimension.
    #[arg(long, default_value_t = 16)]
    dim: usize,
    /// Seed of the means, stds and weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// T of the EDM schedule stored with it.
    #[arg(long, default_value_t = DEFAULT_T)]
    t: usize,
    /// The bundle to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

impl TryFrom<&MixtureArgs> for Bundle {
    type Error = anyhow::Error;

    /// The mixture of the flags with EDM's levels over EDM's range.
    fn try_from(a: &MixtureArgs) -> Result<Bundle> {
        if a.components == 0 || a.dim == 0 {
            bail!("--components and --dim must be positive");
        }
        let m = Mixture::random(a.components, a.dim, a.seed);
        Ok(Bundle {
            name: format!("gmm-{}x{}", a.components, a.dim),
            description: format!("analytic isotropic Gaussian mixture, seed {}", a.seed),
            image: ImageShape {
                channels: 1,
                height: 1,
                width: a.dim as u32,
            },
            label_count: 0,
            precond: Precond::default(),
            schedule: Schedule::edm(a.t, SIGMA_MIN, SIGMA_MAX)?,
            solver: SolverKind::Euler,
            model: ModelSpec::Mixture(m),
            provenance: Provenance {
                dataset: "synthetic mixture".into(),
                training_steps: 0,
                schedule_method: "edm-rho7".into(),
                created_unix: 0,
            },
        })
    }
}

/// Writes the mixture's bundle.
pub(super) fn run(a: MixtureArgs) -> Result<()> {
    let b = Bundle::try_from(&a)?;
    write_atomic(&a.out, &b.to_bytes()?)?;
    println!("wrote {}", a.out.display());
    Ok(())
}
