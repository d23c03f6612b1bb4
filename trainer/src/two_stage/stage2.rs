//! Stage 2 of Algorithm 1 (docs/method.md §5): the weights learn, the levels are frozen.
//! One step is Adam on the network's weights of the lambda-weighted `L_bound` (§4, paper
//! Eq. 12) at the learned levels, or at EDM's for the ablations of paper Table 1
//! (`stage2-only`; `edm-weight-finetune` weights by EDM's `w(s_i)` instead), followed by the
//! EMA update of the shipped weights. Solvers other than Euler have no bound: their weights
//! learn on `L_disc` against the teacher pool (a distillation, §5) unless `--stage2-loss
//! bound` gives them the same lambda-weighted `L_bound` at their own levels. The batch is split over
//! `--devices` ([`crate::parallel`]).

use anyhow::{Result, bail};
use burn::tensor::Tensor;

use sampler_core::model::Preconditioned;
use sampler_core::schedule::{Schedule, lambda_weights};

use super::config::{Mode, Stage2Loss};
use super::state::{BoundDraws, Finetune, StepRecord};
use crate::losses::{Weighting, bound_loss, disc_loss_exact};
use crate::model::{Base, ema_decay_at, update_ema};
use crate::run::check_finite;

impl Finetune {
    /// One stage-2 step at global `step` of `round`, on the step's `L_bound` draws.
    pub(super) fn stage2_step(
        &mut self,
        step: u64,
        round: u64,
        draws: BoundDraws,
    ) -> Result<StepRecord> {
        let c = self.config.clone();
        let n = self.step_in_stage2();
        let plain = self.device.clone().without_autodiff();
        // 1. The loss's rows. Solvers other than Euler have no L_bound (method.md §4): by
        //    default their weights learn on L_disc, the unrolled solver's end point against
        //    the teacher's, on the same pool draws as stage 1; `--stage2-loss bound` gives
        //    them Euler's lambda-weighted denoising loss at their levels instead.
        let disc_rows = if c.stage2_loss() == Stage2Loss::Bound {
            None
        } else {
            let pool = self.teacher_pool(round)?;
            Some(self.pick_from_pool(pool, step).1)
        };
        let Base::Network {
            config,
            net,
            ema,
            precond,
        } = &mut self.base
        else {
            bail!("stage 2 needs a network");
        };
        // 2. The frozen levels: learned, or EDM's for the weight-only ablations.
        let sigmas = match c.mode {
            Mode::Stage2Only | Mode::EdmWeightFinetune => {
                Schedule::edm(c.t, c.s_min, c.s_max)?.to_tensor(&self.device)
            }
            _ => self.logits.sigmas(c.s_min, c.s_max, c.warp).detach(),
        };
        let lambdas = lambda_weights(sigmas.clone()).detach();
        let weighting = if c.mode == Mode::EdmWeightFinetune {
            Weighting::Edm
        } else {
            Weighting::Lambda
        };
        let rows = match &disc_rows {
            Some((x0, _, _)) => x0.dims()[0],
            None => c.batch,
        };
        // 3. The loss and its gradient, the batch split over the devices.
        let (loss, gp) =
            crate::parallel::loss_and_grads(&*net, &self.replicas, rows, |net, r, dev| {
                let den = Preconditioned {
                    net,
                    precond: *precond,
                    dim: config.dim(),
                };
                let on = |t: &Tensor<2>| crate::parallel::rows_on(t, r.clone(), dev);
                let sigmas = sigmas.clone().to_device(dev);
                Ok(match &disc_rows {
                    Some((x0, target, disc_labels)) => disc_loss_exact(
                        c.solver,
                        &den,
                        on(x0),
                        disc_labels.as_ref().map(on),
                        sigmas,
                        on(target),
                    ),
                    None => bound_loss(
                        &den,
                        on(&draws.x),
                        draws.labels.as_ref().map(on),
                        sigmas,
                        lambdas.clone().to_device(dev),
                        &draws.levels[r.clone()],
                        on(&draws.eps),
                        weighting,
                        *precond,
                    ),
                })
            })?;
        check_finite(loss, step, Some(2))?;
        // 4. Adam on the weights, then the EMA that ships.
        let taken = std::mem::replace(net, config.init(&plain));
        *net = self.net_optim.step(c.lr_weights, taken, gp);
        let decay = ema_decay_at(c.ema_decay, n);
        let old = std::mem::replace(ema, config.init(&plain));
        *ema = update_ema(old, net, decay);
        let bound = disc_rows.is_none();
        Ok(StepRecord {
            step,
            stage: 2,
            loss,
            // Logged as null where the loss is L_disc.
            l_bound: if bound { loss } else { f64::NAN },
            l_disc: (!bound).then_some(loss),
        })
    }

    /// Number of stage-2 steps before the current one (the EMA's warm-up counts these).
    fn step_in_stage2(&self) -> u64 {
        let (n1, n2) = self.config.stage_lengths();
        let per = (n1 + n2).max(1);
        let done_rounds = self.step / per;
        done_rounds * n2 + (self.step % per).saturating_sub(n1)
    }
}
