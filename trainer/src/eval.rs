//! Measurements of a schedule (docs/method.md §6): the truncation error of the T-step Euler
//! sampler against the same denoiser's many-step Heun solution from the same noise, and,
//! for an analytic mixture, the mean log-likelihood of the samples under the true density.

use anyhow::Result;
use burn::tensor::{Device, Tensor};
use sampler_core::gmm::MixtureDenoiser;
use sampler_core::schedule::Schedule;
use sampler_core::solver::{Denoiser, euler, heun};

use crate::data::noise;
use crate::losses::row_mse;

/// What [`evaluate_schedule`] measures.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleEval {
    /// RMSE between Euler's output and the reference solution (per value).
    pub trunc_rmse: f64,
    /// Mean `ln p(x)` of Euler's samples under the mixture, when one is given.
    pub mean_loglik: Option<f64>,
}

/// Evaluates `schedule` on `n` initial noises of stream `seed` against a Heun reference with
/// `reference_steps` EDM levels over the same range.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_schedule(
    den: &dyn Denoiser,
    truth: Option<&MixtureDenoiser>,
    schedule: &Schedule,
    reference_steps: usize,
    n: usize,
    seed: u64,
    labels: Option<Tensor<2>>,
    device: &Device,
) -> Result<ScheduleEval> {
    let d = den.dim();
    let x0 = noise(seed, 0xE7A1, 0, n, d, device).mul_scalar(schedule.s_max() as f64);
    let out = euler(
        den,
        x0.clone(),
        schedule.to_tensor(device),
        labels.clone(),
        |_| {},
    );
    let reference_levels = Schedule::edm(
        reference_steps,
        schedule.s_min() as f64,
        schedule.s_max() as f64,
    )?;
    let reference = heun(den, x0, reference_levels.to_tensor(device), labels, |_| {});
    let trunc_rmse = crate::finetune::scalar(&row_mse(out.clone(), reference).mean()).sqrt();
    let mean_loglik = truth.map(|m| {
        let zero = Tensor::<1>::zeros([n], device);
        crate::finetune::scalar(&m.log_density(out, zero).mean())
    });
    Ok(ScheduleEval {
        trunc_rmse,
        mean_loglik,
    })
}
