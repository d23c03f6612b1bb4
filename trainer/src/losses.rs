//! The losses of docs/method.md §1 and §4, on burn tensors (differentiable in the schedule
//! levels and in the network weights):
//!
//! - [`edm_loss`]: EDM pre-training, `ln s ~ N(P_mean, P_std^2)`, weight `w(s)`.
//! - [`bound_loss`]: `L_bound = sum_i lambda_i E||D(x + s_i eps, s_i) - x||^2` (paper Eq. 12),
//!   estimated with one level per sample, drawn uniformly and scaled by `(T-1) lambda_i`.
//! - [`disc_loss_exact`]: `L_disc = E||x_{T-1} - target||^2` (paper Eq. 10), the Euler
//!   iterate differentiated through the unrolled sampler.
//! - [`disc_surrogate_paper`]: a surrogate whose gradient in `s_t` is paper Eq. 14,
//!   `2 lambda_t <x_{T-1} - target, dD(x_t, s_t)/ds_t>`.
//!
//! Every squared norm is a mean over the `d` dimensions, then over the batch.

use burn::tensor::{Int, Tensor, TensorData};
use sampler_core::precond::Precond;
use sampler_core::solver::{Denoiser, euler_to_min};

/// How the per-level diffusion losses are weighted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weighting {
    /// The paper's `lambda_i` (scaled by `T-1` for the uniform draw of `i`).
    Lambda,
    /// EDM's `w(s_i)` (the "original weight finetune" ablation of paper Table 1).
    Edm,
}

/// `mean_d (a - b)^2` per row: `[B, d]` -> `[B]`.
pub fn row_mse(a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    let n = a.dims()[0];
    (a - b).powi_scalar(2).mean_dim(1).reshape([n])
}

fn index_tensor(levels: &[usize], like: &Tensor<1>) -> Tensor<1, Int> {
    let idx: Vec<i64> = levels.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(idx, [levels.len()]), &like.device())
}

/// `L_bound` with level `levels[b]` for sample `b`.
///
/// # Shapes
/// `x`, `eps`: `[B, d]`; `sigmas`: `[T]`; `lambdas`: `[T-1]` -> `[1]`.
#[allow(clippy::too_many_arguments)]
pub fn bound_loss(
    den: &dyn Denoiser,
    x: Tensor<2>,
    labels: Option<Tensor<2>>,
    sigmas: Tensor<1>,
    lambdas: Tensor<1>,
    levels: &[usize],
    eps: Tensor<2>,
    weighting: Weighting,
    precond: Precond,
) -> Tensor<1> {
    let b = x.dims()[0];
    let t = sigmas.dims()[0];
    let idx = index_tensor(levels, &sigmas);
    let s = sigmas.select(0, idx.clone()); // [B]
    let noisy = x.clone() + eps * s.clone().reshape([b, 1]);
    let per = row_mse(den.denoise(noisy, s.clone(), labels), x); // [B]
    let weight = match weighting {
        Weighting::Lambda => lambdas.select(0, idx).mul_scalar((t - 1) as f64),
        Weighting::Edm => precond.loss_weight(s),
    };
    (per * weight).mean()
}

/// EDM's pre-training loss (method.md §1) at the given `ln s` draws.
///
/// # Shapes
/// `x`, `eps`: `[B, d]`; `ln_sigma`: `[B]` -> `[1]`.
pub fn edm_loss(
    den: &dyn Denoiser,
    x: Tensor<2>,
    labels: Option<Tensor<2>>,
    ln_sigma: Tensor<1>,
    eps: Tensor<2>,
    precond: Precond,
) -> Tensor<1> {
    let b = x.dims()[0];
    let s = ln_sigma.exp();
    let noisy = x.clone() + eps * s.clone().reshape([b, 1]);
    let per = row_mse(den.denoise(noisy, s.clone(), labels), x);
    (per * precond.loss_weight(s)).mean()
}

/// `L_disc` through the unrolled Euler sampler: gradients reach the levels along every
/// path (the `exact` estimator of method.md §5).
///
/// # Shapes
/// `x0`, `target`: `[B, d]`; `sigmas`: `[T]` -> `[1]`.
pub fn disc_loss_exact(
    den: &dyn Denoiser,
    x0: Tensor<2>,
    labels: Option<Tensor<2>>,
    sigmas: Tensor<1>,
    target: Tensor<2>,
) -> Tensor<1> {
    let x_last = euler_to_min(den, x0, sigmas, labels, |_| {});
    row_mse(x_last, target).mean()
}

/// The paper's estimator (Eq. 14) as a surrogate: returns `(surrogate, L_disc)`. The
/// trajectory runs without gradients; `surrogate = (T-1)/|ts| sum_{t in ts} 2 lambda_t
/// <r, D(x_t, s_t)> / (B d)` with `r = x_{T-1} - target` and `lambda_t`, `x_t` held fixed,
/// so its gradient in `s_t` is Eq. 14 (averaged over the drawn `ts`). With one `t` per step
/// the cost beyond sampling is one denoiser backward, whatever T.
///
/// # Shapes
/// `x0`, `target`: `[B, d]`; `sigmas`: `[T]` -> (`[1]`, `[1]`).
pub fn disc_surrogate_paper(
    den: &dyn Denoiser,
    x0: Tensor<2>,
    labels: Option<Tensor<2>>,
    sigmas: Tensor<1>,
    target: Tensor<2>,
    ts: &[usize],
) -> (Tensor<1>, Tensor<1>) {
    let [b, d] = x0.dims();
    let t = sigmas.dims()[0];
    let fixed = sigmas.clone().detach();
    let mut states = Vec::with_capacity(t - 1);
    let x_last = euler_to_min(den, x0.detach(), fixed.clone(), labels.clone(), |st| {
        states.push(st.x.clone().detach())
    })
    .detach();
    let residual = (x_last.clone() - target.clone()).detach();
    let lambdas = sampler_core::schedule::lambda_weights(fixed);
    let mut surrogate: Option<Tensor<1>> = None;
    for &ti in ts {
        let s_t = sigmas.clone().slice(ti..ti + 1).expand([b]);
        let den_t = den.denoise(states[ti].clone(), s_t, labels.clone());
        let lam = lambdas.clone().slice(ti..ti + 1);
        let term = (residual.clone() * den_t)
            .sum()
            .mul_scalar(2.0 / (b * d) as f64)
            * lam;
        surrogate = Some(match surrogate {
            None => term,
            Some(acc) => acc + term,
        });
    }
    let scale = (t - 1) as f64 / ts.len().max(1) as f64;
    let surrogate = surrogate
        .map(|s| s.mul_scalar(scale))
        .unwrap_or_else(|| sigmas.sum().mul_scalar(0.0));
    (surrogate, row_mse(x_last, target).mean())
}
