//! Stage 1 of Algorithm 1 (docs/method.md §5): the levels learn, the shipped network is a
//! constant. One step is Adam on the logits `v` (§3, paper Eq. 13) of
//! `L_bound(s(v)) + gamma L_disc(s(v))` (§4, paper Eqs. 10 and 12), with `L_disc`'s gradient
//! exact (through the unrolled sampler) or the paper's estimator (Eq. 14). Solvers other
//! than Euler have no bound: their levels learn on `gamma L_disc` alone.
//! [`Finetune::objective`] evaluates the same objective on fixed draws, without gradients.

use anyhow::Result;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use sampler_core::bundle::SolverKind;
use sampler_core::schedule::lambda_weights;

use super::config::{DiscGrad, DiscTarget, FinetuneConfig};
use super::levels::ScheduleLogits;
use super::state::{BoundDraws, Finetune, PoolRows, StepRecord, purpose};
use crate::data::{noise, uniform_indices};
use crate::losses::{
    Weighting, bound_loss, bound_terms, denoise_together, disc_loss_exact, euler_states,
    paper_terms,
};
use crate::run::{check_finite, scalar};

/// Cached states of the picked pool entries: `x_t` at each drawn `t`, and `x_{T-1}`.
type CachedStates = (Vec<(usize, Tensor<2>)>, Tensor<2>);

impl Finetune {
    /// One stage-1 step at global `step` of `round`, on the step's `L_bound` draws.
    pub(super) fn stage1_step(
        &mut self,
        step: u64,
        round: u64,
        draws: BoundDraws,
    ) -> Result<StepRecord> {
        let c = self.config.clone();
        let t = c.t;
        let BoundDraws {
            x,
            labels,
            eps,
            levels,
        } = draws;
        let precond = self.base_bundle.precond;
        // 1. The levels s(v), differentiable in v, and their lambda weights (Eq. 8).
        let sigmas = self.logits.sigmas(c.s_min, c.s_max, c.warp);
        let lambdas = lambda_weights(sigmas.clone());
        let (l_bound, disc, objective) = {
            let ts = uniform_indices(c.seed, purpose::PAPER_T, step, 1, t - 1);
            // 2. L_disc's rows: start, target, labels (and with the trajectory cache, the
            //    picked entries' x_t and x_{T-1}).
            let ((disc_x0, target, disc_labels), cached) =
                self.disc_rows(&c, step, round, &sigmas, &ts)?;
            // 3. The objective, in as few denoiser calls as the estimator allows.
            self.base.with_shipped(|den| {
                let bound = bound_terms(
                    x,
                    labels,
                    sigmas.clone(),
                    lambdas,
                    &levels,
                    eps,
                    Weighting::Lambda,
                    precond,
                );
                let (l_bound, disc_value, disc_term) = match c.disc_grad {
                    DiscGrad::Exact => {
                        let rows = bound.rows.clone();
                        let l_bound = bound.finish(den.denoise(rows.x, rows.sigma, rows.labels));
                        let l = disc_loss_exact(
                            c.solver,
                            den,
                            disc_x0,
                            disc_labels,
                            sigmas.clone(),
                            target,
                        );
                        (l_bound, l.clone(), l)
                    }
                    DiscGrad::Paper => {
                        // x_t and x_{T-1}: from the cache, or a fresh trajectory.
                        let (x_ts, x_last) = match cached {
                            Some(picked) => picked,
                            None => {
                                let (states, x_last) =
                                    euler_states(den, disc_x0, disc_labels.clone(), sigmas.clone());
                                let x_ts = ts.iter().map(|&ti| (ti, states[ti].clone()));
                                (x_ts.collect(), x_last)
                            }
                        };
                        let paper = paper_terms(&x_ts, x_last, disc_labels, sigmas.clone(), target);
                        // L_bound's rows and Eq. 14's in one denoiser call.
                        let mut blocks = vec![bound.rows.clone()];
                        blocks.extend(paper.rows.iter().cloned());
                        let mut outs = denoise_together(den, blocks);
                        let rest = outs.split_off(1);
                        let l_bound = bound.finish(outs.remove(0));
                        let (sur, l) = paper.finish(rest);
                        (l_bound, l, sur)
                    }
                };
                // L_bound is Euler's bound (method.md §4): other solvers learn their
                // levels on L_disc alone (still reported beside it).
                let objective = if c.solver == SolverKind::Euler {
                    l_bound.clone() + disc_term.mul_scalar(c.gamma)
                } else {
                    disc_term.mul_scalar(c.gamma)
                };
                (l_bound, disc_value, objective)
            })
        };
        // 4. Adam on v.
        let grads = objective.backward();
        let l_bound_v = scalar(&l_bound);
        let disc_v = scalar(&disc);
        // The logged loss is the one optimized: L_disc alone for solvers without a bound.
        let loss = if c.solver == SolverKind::Euler {
            l_bound_v + c.gamma * disc_v
        } else {
            c.gamma * disc_v
        };
        check_finite(loss, step, Some(1))?;
        let gp = GradientsParams::from_grads(grads, &self.logits);
        let logits = std::mem::replace(&mut self.logits, ScheduleLogits::new(&[], &self.device));
        self.logits = self.schedule_optim.step(c.lr_schedule, logits, gp);
        Ok(StepRecord {
            step,
            stage: 1,
            loss,
            l_bound: l_bound_v,
            l_disc: Some(disc_v),
        })
    }

    /// `L_disc`'s rows at `step`: `(x_0, target, labels)` of the run's target and, with the
    /// trajectory cache, the picked pool entries' cached `x_t` at each of `ts` and
    /// `x_{T-1}` (the cache first brought up to date under `sigmas`).
    fn disc_rows(
        &mut self,
        c: &FinetuneConfig,
        step: u64,
        round: u64,
        sigmas: &Tensor<1>,
        ts: &[usize],
    ) -> Result<(PoolRows, Option<CachedStates>)> {
        Ok(match c.disc_target {
            DiscTarget::Data => {
                let (xd, ld) = self
                    .data
                    .batch(c.seed ^ 0xD15C, step, c.disc_batch, &self.device);
                let (x0, target) = data_disc_pair(c, xd, step, &self.device);
                ((x0, target, ld), None)
            }
            DiscTarget::Teacher => {
                let pool = self.teacher_pool(round)?;
                let traj = if c.traj_refresh > 0 && c.disc_grad == DiscGrad::Paper {
                    self.refresh_trajectories(round, sigmas, &pool);
                    self.trajectories.as_ref()
                } else {
                    None
                };
                let (idx, rows) = self.pick_from_pool(pool, step);
                let dev = &self.device;
                let cached = traj.map(|tr| {
                    let pick_rows = |m: &Tensor<2>| m.clone().select(0, idx.clone()).to_device(dev);
                    let x_ts = ts
                        .iter()
                        .map(|&ti| (ti, pick_rows(&tr.states[ti])))
                        .collect();
                    (x_ts, pick_rows(&tr.last))
                });
                (rows, cached)
            }
        })
    }

    /// The stage-1 objective at the current levels on fixed evaluation draws: `L_bound`
    /// summed over every level exactly (each row at all T-1 levels) and `L_disc` with the
    /// run's target, both without gradients. Returns `(L_bound, L_disc)`.
    pub fn objective(&self, eval_seed: u64, rows: usize) -> Result<(f64, f64)> {
        let c = &self.config;
        let device = self.device.clone().without_autodiff();
        let t = c.t;
        let d = self.base.dim();
        let sigmas = self.schedule()?.to_tensor(&device);
        let lambdas = lambda_weights(sigmas.clone());
        let (x, labels) = self.data.batch(eval_seed, 0, rows, &device);
        let repeat = |m: Tensor<2>| Tensor::cat(vec![m; t - 1], 0);
        let levels: Vec<usize> = (0..t - 1)
            .flat_map(|i| std::iter::repeat_n(i, rows))
            .collect();
        let eps = noise(
            eval_seed,
            purpose::BATCH_NOISE,
            0,
            rows * (t - 1),
            d,
            &device,
        );
        let precond = self.base_bundle.precond;
        let teacher_pair = match c.disc_target {
            DiscTarget::Data => None,
            DiscTarget::Teacher => {
                let x0 =
                    noise(eval_seed, purpose::POOL_NOISE, 0, rows, d, &device).mul_scalar(c.s_max);
                let target = self.teacher_solution(&x0, &labels)?;
                Some((x0, target))
            }
        };
        self.base.with_shipped(|den| -> Result<(f64, f64)> {
            let l_bound = bound_loss(
                den,
                repeat(x.clone()),
                labels.clone().map(repeat),
                sigmas.clone(),
                lambdas,
                &levels,
                eps,
                Weighting::Lambda,
                precond,
            );
            let (x0, target) = match teacher_pair {
                Some(pair) => pair,
                None => {
                    let eval = FinetuneConfig {
                        seed: eval_seed,
                        ..c.clone()
                    };
                    data_disc_pair(&eval, x.clone(), 0, &device)
                }
            };
            let l_disc = disc_loss_exact(c.solver, den, x0, labels.clone(), sigmas.clone(), target);
            Ok((scalar(&l_bound), scalar(&l_disc)))
        })
    }
}

/// The paper's `L_disc` pair for data `x` (method.md §4): the sampler starts from
/// `x_0 = x + s_max eps_0` and should land on `x + s_min eps'`.
fn data_disc_pair(
    c: &FinetuneConfig,
    x: Tensor<2>,
    step: u64,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let [rows, d] = x.dims();
    let e0 = noise(c.seed, purpose::DISC_NOISE, step, rows, d, device);
    let e1 = noise(c.seed, purpose::DISC_TARGET_NOISE, step, rows, d, device);
    (
        x.clone() + e0.mul_scalar(c.s_max),
        x + e1.mul_scalar(c.s_min),
    )
}
