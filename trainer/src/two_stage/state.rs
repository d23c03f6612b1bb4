//! The state of a run of Algorithm 1 (docs/method.md §5) and what every part of it reads:
//! the base bundle and its denoiser, the data, the logits `v` and both optimizers, the teacher
//! pool and trajectory cache ([`Pool`], [`Trajectories`]), and the streams of the run's random
//! draws. The two stages (`stage1.rs`, `stage2.rs`) and the teacher (`teacher.rs`) add the
//! steps; `mod.rs` builds, checkpoints and exports the run.

use anyhow::Result;
use burn::optim::ModuleOptimizer;
use burn::tensor::{Device, Tensor};

use sampler_core::bundle::Bundle;
use sampler_core::schedule::Schedule;
use sampler_core::solver::Denoiser;

use super::config::FinetuneConfig;
use super::levels::ScheduleLogits;
use crate::data::Dataset;
use crate::model::Base;

/// One line of the log.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    /// Global step.
    pub step: u64,
    /// 1 or 2.
    pub stage: u8,
    /// The optimized loss.
    pub loss: f64,
    /// Its L_bound part (NaN in stage 2 of solvers other than Euler, which has none).
    pub l_bound: f64,
    /// Its L_disc part (stage 1, and stage 2 of solvers other than Euler).
    pub l_disc: Option<f64>,
}

/// Streams of the run's random draws.
pub(super) mod purpose {
    pub const BATCH_NOISE: u64 = 1;
    pub const LEVELS: u64 = 2;
    pub const DISC_NOISE: u64 = 3;
    pub const DISC_TARGET_NOISE: u64 = 4;
    pub const POOL_NOISE: u64 = 5;
    pub const POOL_PICK: u64 = 6;
    pub const PAPER_T: u64 = 7;
    pub const POOL_LABELS: u64 = 8;
}

/// One step's draws for `L_bound` (method.md §4): data rows `x` with their labels, noise
/// `eps` and the index of each row's level, drawn uniformly from `0..T-1`.
pub(super) struct BoundDraws {
    /// `[B, d]`.
    pub(super) x: Tensor<2>,
    /// One-hot, `[B, L]`.
    pub(super) labels: Option<Tensor<2>>,
    /// `[B, d]`.
    pub(super) eps: Tensor<2>,
    /// `B` level indices.
    pub(super) levels: Vec<usize>,
}

/// A fine-tuning run in memory.
pub struct Finetune {
    /// Its config.
    pub config: FinetuneConfig,
    pub(super) base_bundle: Bundle,
    pub(super) base: Base,
    pub(super) data: Dataset,
    pub(super) logits: ScheduleLogits,
    pub(super) schedule_optim: ModuleOptimizer,
    pub(super) net_optim: ModuleOptimizer,
    /// Steps done.
    pub step: u64,
    pub(super) device: Device,
    /// Devices stage 2's batch is split over (`--devices`); the first is `device`.
    pub(super) replicas: Vec<Device>,
    pub(super) pool: Option<Pool>,
    pub(super) trajectories: Option<Trajectories>,
}

/// One round's teacher pool: `(round, x_0, teacher target, labels)`, each `[pool, ..]`.
pub(super) type Pool = (u64, Tensor<2>, Tensor<2>, Option<Tensor<2>>);

/// A pool's rows without their round: `(x_0, teacher target, labels)`.
pub(super) type PoolRows = (Tensor<2>, Tensor<2>, Option<Tensor<2>>);

/// The trajectory cache: the Euler states of every teacher-pool entry, each simulated under
/// the levels of some recent step. A stage-1 step with the paper gradient then needs one
/// denoiser evaluation at a cached `x_t` instead of a fresh T-step trajectory, plus its
/// share of re-simulation (`teacher_pool / traj_refresh` entries).
pub(super) struct Trajectories {
    /// Round of the teacher pool the states belong to.
    pub(super) round: u64,
    /// `x_0, ..., x_{T-2}`, each `[pool, d]` (no autodiff).
    pub(super) states: Vec<Tensor<2>>,
    /// `x_{T-1}`, `[pool, d]`.
    pub(super) last: Tensor<2>,
    /// Next entry to re-simulate (round robin).
    pub(super) cursor: usize,
}

impl Finetune {
    /// The current levels in f64.
    pub fn schedule(&self) -> Result<Schedule> {
        Ok(Schedule::from_logits(
            &self.logits.values(),
            self.config.s_min,
            self.config.s_max,
            self.config.warp,
        )?)
    }

    /// Whether the network weights (trained and EMA) and the schedule logits are finite.
    pub fn state_finite(&self) -> bool {
        let nets = match &self.base {
            Base::Network { net, ema, .. } => {
                crate::model::network_finite(net) && crate::model::network_finite(ema)
            }
            Base::Mixture { .. } => true,
        };
        nets && self.logits.values().iter().all(|v| v.is_finite())
    }

    /// The data set.
    pub fn data(&self) -> &Dataset {
        &self.data
    }

    /// Runs `f` with the shipped denoiser.
    pub fn with_shipped<R>(&self, f: impl FnOnce(&dyn Denoiser) -> R) -> R {
        self.base.with_shipped(f)
    }

    /// (round, stage) of global step `step`.
    pub fn position(&self, step: u64) -> (u64, u8) {
        let (n1, n2) = self.config.stage_lengths();
        let per_round = (n1 + n2).max(1);
        let round = step / per_round;
        (round, if step % per_round < n1 { 1 } else { 2 })
    }
}
