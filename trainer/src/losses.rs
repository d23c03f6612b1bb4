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
use sampler_core::bundle::SolverKind;
use sampler_core::precond::Precond;
use sampler_core::solver::{Denoiser, Stop, euler, solve};

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

/// The rows a loss needs the denoiser at: `D(x, sigma)` for every row of `x`. Losses are
/// split into these inputs and a `finish` step so that stage 1 can evaluate two of them in
/// one denoiser call ([`denoise_together`]), which at these batch sizes costs much less
/// than two calls.
#[derive(Clone, Debug)]
pub struct DenoiserRows {
    /// Noisy inputs, `[B, d]`.
    pub x: Tensor<2>,
    /// Their noise levels, `[B]`.
    pub sigma: Tensor<1>,
    /// One-hot labels, `[B, L]`.
    pub labels: Option<Tensor<2>>,
}

/// `D` at every block of rows, in one call on the concatenated blocks.
pub fn denoise_together(den: &dyn Denoiser, blocks: Vec<DenoiserRows>) -> Vec<Tensor<2>> {
    if blocks.len() == 1 {
        let b = blocks.into_iter().next().expect("one block");
        return vec![den.denoise(b.x, b.sigma, b.labels)];
    }
    let sizes: Vec<usize> = blocks.iter().map(|b| b.x.dims()[0]).collect();
    let with_labels = blocks.iter().all(|b| b.labels.is_some());
    let mut xs = Vec::with_capacity(blocks.len());
    let mut sigmas = Vec::with_capacity(blocks.len());
    let mut labels = Vec::with_capacity(blocks.len());
    for b in blocks {
        xs.push(b.x);
        sigmas.push(b.sigma);
        labels.extend(b.labels);
    }
    let out = den.denoise(
        Tensor::cat(xs, 0),
        Tensor::cat(sigmas, 0),
        with_labels.then(|| Tensor::cat(labels, 0)),
    );
    let mut start = 0;
    sizes
        .into_iter()
        .map(|n| {
            let part = out.clone().slice(start..start + n);
            start += n;
            part
        })
        .collect()
}

/// `L_bound` prepared: the noisy rows and, for [`BoundTerms::finish`], their clean data and
/// weights.
pub struct BoundTerms {
    /// Where the denoiser is evaluated.
    pub rows: DenoiserRows,
    x: Tensor<2>,
    weight: Tensor<1>,
}

impl BoundTerms {
    /// `L_bound` from the denoiser's output at [`BoundTerms::rows`].
    pub fn finish(self, denoised: Tensor<2>) -> Tensor<1> {
        (row_mse(denoised, self.x) * self.weight).mean()
    }
}

/// [`bound_loss`]'s inputs: level `levels[b]` for sample `b`.
#[allow(clippy::too_many_arguments)]
pub fn bound_terms(
    x: Tensor<2>,
    labels: Option<Tensor<2>>,
    sigmas: Tensor<1>,
    lambdas: Tensor<1>,
    levels: &[usize],
    eps: Tensor<2>,
    weighting: Weighting,
    precond: Precond,
) -> BoundTerms {
    let b = x.dims()[0];
    let t = sigmas.dims()[0];
    let idx = index_tensor(levels, &sigmas);
    let s = sigmas.select(0, idx.clone()); // [B]
    let noisy = x.clone() + eps * s.clone().reshape([b, 1]);
    let weight = match weighting {
        Weighting::Lambda => lambdas.select(0, idx).mul_scalar((t - 1) as f64),
        Weighting::Edm => precond.loss_weight(s.clone()),
    };
    BoundTerms {
        rows: DenoiserRows {
            x: noisy,
            sigma: s,
            labels,
        },
        x,
        weight,
    }
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
    let terms = bound_terms(x, labels, sigmas, lambdas, levels, eps, weighting, precond);
    let denoised = den.denoise(
        terms.rows.x.clone(),
        terms.rows.sigma.clone(),
        terms.rows.labels.clone(),
    );
    terms.finish(denoised)
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

/// `L_disc` through the unrolled sampler (Euler, or the solver a run learns levels for):
/// gradients reach the levels along every path (the `exact` estimator of method.md §5).
///
/// # Shapes
/// `x0`, `target`: `[B, d]`; `sigmas`: `[T]` -> `[1]`.
pub fn disc_loss_exact(
    solver: SolverKind,
    den: &dyn Denoiser,
    x0: Tensor<2>,
    labels: Option<Tensor<2>>,
    sigmas: Tensor<1>,
    target: Tensor<2>,
) -> Tensor<1> {
    let den = ConstantStart {
        den,
        first: core::cell::Cell::new(true),
    };
    let x_last = solve(solver, &den, x0.detach(), sigmas, labels, Stop::Min, |_| {});
    row_mse(x_last, target).mean()
}

/// Every solver's first evaluation is `D(x_0, s_0)` with `x_0 = s_max eps` and `s_0 = s_max`,
/// constants of every schedule (method.md §3: the end points are fixed): their gradient is
/// zero. Autodiff cannot know that of one element of the levels tensor, so it would record
/// that evaluation and back-propagate through it; detaching its inputs saves one of the
/// T - 1 network backward passes of stage 1 (a network with trainable weights still records
/// it for them).
struct ConstantStart<'a> {
    den: &'a dyn Denoiser,
    first: core::cell::Cell<bool>,
}

impl Denoiser for ConstantStart<'_> {
    fn dim(&self) -> usize {
        self.den.dim()
    }

    fn denoise(&self, x: Tensor<2>, sigma: Tensor<1>, labels: Option<Tensor<2>>) -> Tensor<2> {
        if self.first.replace(false) {
            self.den.denoise(x.detach(), sigma.detach(), labels)
        } else {
            self.den.denoise(x, sigma, labels)
        }
    }
}

/// The Euler trajectory under `sigmas`, without gradients: the states `[x_0, ..., x_{T-2}]`
/// the denoiser is evaluated at (before the last one), and the last iterate `x_{T-1}`.
///
/// # Shapes
/// `x0`: `[B, d]`; `sigmas`: `[T]` -> (`T-1` tensors `[B, d]`, `[B, d]`).
pub fn euler_states(
    den: &dyn Denoiser,
    x0: Tensor<2>,
    labels: Option<Tensor<2>>,
    sigmas: Tensor<1>,
) -> (Vec<Tensor<2>>, Tensor<2>) {
    let t = sigmas.dims()[0];
    let mut states = Vec::with_capacity(t);
    let x_last = euler(den, x0.detach(), sigmas.detach(), labels, Stop::Min, |st| {
        states.push(st.x.clone().detach())
    });
    (states, x_last.detach())
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
    let (states, x_last) = euler_states(den, x0, labels.clone(), sigmas.clone());
    let x_ts: Vec<(usize, Tensor<2>)> = ts.iter().map(|&t| (t, states[t].clone())).collect();
    paper_surrogate(den, &x_ts, x_last, labels, sigmas, target)
}

/// [`disc_surrogate_paper`] at given states: `x_ts` pairs a level index `t` with the state
/// `x_t` the sampler reached there, `x_last` is its last iterate `x_{T-1}` (both may come
/// from the trajectory cache, simulated under earlier levels).
///
/// # Shapes
/// each `x_t`, `x_last`, `target`: `[B, d]`; `sigmas`: `[T]` -> (`[1]`, `[1]`).
pub fn paper_surrogate(
    den: &dyn Denoiser,
    x_ts: &[(usize, Tensor<2>)],
    x_last: Tensor<2>,
    labels: Option<Tensor<2>>,
    sigmas: Tensor<1>,
    target: Tensor<2>,
) -> (Tensor<1>, Tensor<1>) {
    let terms = paper_terms(x_ts, x_last, labels, sigmas, target);
    let denoised = terms
        .rows
        .iter()
        .map(|r| den.denoise(r.x.clone(), r.sigma.clone(), r.labels.clone()))
        .collect();
    terms.finish(denoised)
}

/// The paper surrogate prepared: one block of denoiser rows per drawn level.
pub struct PaperTerms {
    /// Where the denoiser is evaluated: `x_t` at `s_t`, one block per `t`.
    pub rows: Vec<DenoiserRows>,
    /// `2 (T-1) / |ts| lambda_t / (B d)` per block (`lambda_t` held fixed).
    coefs: Vec<Tensor<1>>,
    residual: Tensor<2>,
    l_disc: Tensor<1>,
    sigmas: Tensor<1>,
}

impl PaperTerms {
    /// `(surrogate, L_disc)` from the denoiser's outputs at [`PaperTerms::rows`].
    pub fn finish(self, denoised: Vec<Tensor<2>>) -> (Tensor<1>, Tensor<1>) {
        let surrogate = denoised
            .into_iter()
            .zip(self.coefs)
            .map(|(d, coef)| (self.residual.clone() * d).sum() * coef)
            .reduce(|a, b| a + b)
            .unwrap_or_else(|| self.sigmas.sum().mul_scalar(0.0));
        (surrogate, self.l_disc)
    }
}

/// [`paper_surrogate`]'s inputs.
pub fn paper_terms(
    x_ts: &[(usize, Tensor<2>)],
    x_last: Tensor<2>,
    labels: Option<Tensor<2>>,
    sigmas: Tensor<1>,
    target: Tensor<2>,
) -> PaperTerms {
    let [b, d] = x_last.dims();
    let t = sigmas.dims()[0];
    let residual = (x_last.clone() - target.clone()).detach();
    let lambdas = sampler_core::schedule::lambda_weights(sigmas.clone().detach());
    let scale = 2.0 * (t - 1) as f64 / x_ts.len().max(1) as f64 / (b * d) as f64;
    let mut rows = Vec::with_capacity(x_ts.len());
    let mut coefs = Vec::with_capacity(x_ts.len());
    for (ti, x_t) in x_ts {
        let ti = *ti;
        rows.push(DenoiserRows {
            x: x_t.clone().detach(),
            sigma: sigmas.clone().slice(ti..ti + 1).expand([b]),
            labels: labels.clone(),
        });
        coefs.push(lambdas.clone().slice(ti..ti + 1).mul_scalar(scale));
    }
    PaperTerms {
        rows,
        coefs,
        residual,
        l_disc: row_mse(x_last, target).mean(),
        sigmas,
    }
}
