//! The two-stage alternating optimization (paper Algorithm 1, docs/method.md §5):
//!
//! ```text
//! v = 0 (EDM rho = 7), theta = base network
//! repeat R rounds:
//!   stage 1, N1 steps: v     <- Adam on L_bound(s(v), theta) + gamma L_disc(s(v))   (theta frozen)
//!   stage 2, N2 steps: theta <- Adam on L_bound(s, theta)                           (s frozen)
//! ```
//!
//! and the ablations of paper Table 1. Every random draw is a function of `(seed, step)`, so
//! a run resumed from its checkpoint reproduces an uninterrupted one.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::json;

use sampler_core::bundle::Bundle;
use sampler_core::bundle::SolverKind;
use sampler_core::model::{Preconditioned, network_from_bytes, weights_to_bytes};
use sampler_core::schedule::{Schedule, Warp, lambda_weights};
use sampler_core::solver::{Denoiser, heun_to_min};

pub mod losses;

use crate::data::{Dataset, noise, uniform_indices};
use crate::model::{Base, ScheduleLogits, update_ema};
use crate::run::{Checkpoint, ResumeState, RunDir, TrajectoryState};
use losses::{
    Weighting, bound_loss, bound_terms, denoise_together, disc_loss_exact, euler_states,
    paper_terms,
};

/// Which rows of paper Table 1 to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Mode {
    /// Alternate stage 1 (schedule) and stage 2 (weights).
    TwoStage,
    /// Stage 1 only: learn the schedule for the fixed network (the only mode for mixtures).
    Stage1Only,
    /// Stage 2 only, on EDM's schedule.
    Stage2Only,
    /// Stage 2 with EDM's loss weight `w(s_i)` instead of `lambda_i`, on EDM's schedule.
    EdmWeightFinetune,
}

/// Gradient of `L_disc` with respect to the schedule (method.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum DiscGrad {
    /// Autodiff through the unrolled sampler.
    Exact,
    /// The paper's Eq. 14 estimator.
    Paper,
}

/// Target of `L_disc` (method.md §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum DiscTarget {
    /// The same network's many-step Heun solution from the same initial noise.
    Teacher,
    /// `x + s_min eps'`, the paper's literal target.
    Data,
}

/// Whose many-step solution the teacher target is (`--disc-target teacher`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Teacher {
    /// The weights being shipped (their EMA), recomputed each round: the target moves
    /// with the student once stage 2 has changed them.
    Shipped,
    /// The base bundle's weights, frozen: stage 2 distils the T-step sampler toward the
    /// pre-trained network's ODE solution.
    Base,
}

fn shipped_teacher() -> Teacher {
    Teacher::Shipped
}

/// Everything that defines a fine-tuning run (saved as the run's `config.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FinetuneConfig {
    /// The base bundle (network or mixture).
    pub base: PathBuf,
    /// Number of levels T (= denoiser evaluations of the sampler).
    pub t: usize,
    /// Which rows of the ablation.
    pub mode: Mode,
    /// Rounds of (stage 1, stage 2).
    pub rounds: u64,
    /// N1: stage-1 steps per round.
    pub stage1_steps: u64,
    /// N2: stage-2 steps per round.
    pub stage2_steps: u64,
    /// gamma: weight of L_disc in stage 1.
    pub gamma: f64,
    /// Adam learning rate of the schedule logits.
    pub lr_schedule: f64,
    /// Adam learning rate of the network weights.
    pub lr_weights: f64,
    /// Warp space of the parameterization.
    pub warp: Warp,
    /// Estimator of the L_disc gradient.
    pub disc_grad: DiscGrad,
    /// Target of L_disc.
    pub disc_target: DiscTarget,
    /// Batch size of L_bound and of stage 2.
    pub batch: usize,
    /// Batch size of L_disc.
    pub disc_batch: usize,
    /// Heun steps of the teacher reference.
    pub teacher_steps: usize,
    /// Number of (noise, teacher solution) pairs computed per round.
    pub teacher_pool: usize,
    /// Whose solution the teacher target is (configs written before the choice existed
    /// used the shipped weights).
    #[serde(default = "shipped_teacher")]
    pub teacher: Teacher,
    /// Trajectory cache of the paper gradient: every pool entry's Euler states are
    /// re-simulated under the current levels once every this many steps; 0 = no cache.
    /// (Absent from configs written before the cache existed: those ran without it.)
    #[serde(default)]
    pub traj_refresh: u64,
    /// The solver stage 1 unrolls and the bundle records (Euler: the paper's two-stage).
    #[serde(default = "euler_solver")]
    pub solver: SolverKind,
    /// Largest level (default: the base bundle's).
    pub s_max: f64,
    /// Smallest level (default: the base bundle's).
    pub s_min: f64,
    /// EMA decay of the weights (with warm-up `min(decay, (1+n)/(10+n))`).
    pub ema_decay: f64,
    /// Seed of every random draw.
    pub seed: u64,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
    /// Samples drawn from a mixture base as its data set.
    pub mixture_samples: usize,
}

impl FinetuneConfig {
    /// Defaults for `base` at `t` levels (the CLI fills the rest from flags).
    pub fn new(base: PathBuf, t: usize) -> Self {
        FinetuneConfig {
            base,
            t,
            mode: Mode::TwoStage,
            rounds: 4,
            stage1_steps: 50,
            stage2_steps: 100,
            gamma: 1.0,
            lr_schedule: 2e-2,
            lr_weights: 2e-5,
            warp: Warp::Rho7,
            disc_grad: DiscGrad::Exact,
            disc_target: DiscTarget::Teacher,
            batch: 32,
            disc_batch: 32,
            teacher_steps: 64,
            teacher_pool: 256,
            teacher: Teacher::Shipped,
            traj_refresh: 0,
            solver: SolverKind::Euler,
            s_max: 80.0,
            s_min: 0.002,
            ema_decay: 0.999,
            seed: 0,
            checkpoint_every: 50,
            mixture_samples: 8192,
        }
    }

    /// Steps per round for the mode: (stage-1 steps, stage-2 steps).
    pub fn stage_lengths(&self) -> (u64, u64) {
        match self.mode {
            Mode::TwoStage => (self.stage1_steps, self.stage2_steps),
            Mode::Stage1Only => (self.stage1_steps, 0),
            Mode::Stage2Only | Mode::EdmWeightFinetune => (0, self.stage2_steps),
        }
    }

    /// Total steps of the run.
    pub fn total_steps(&self) -> u64 {
        let (a, b) = self.stage_lengths();
        self.rounds * (a + b)
    }

    /// Checks the numbers a user can get wrong.
    pub fn validate(&self) -> Result<()> {
        if self.solver != SolverKind::Euler
            && (!matches!(self.mode, Mode::Stage1Only | Mode::TwoStage)
                || self.disc_grad != DiscGrad::Exact
                || self.disc_target != DiscTarget::Teacher)
        {
            bail!(
                "--solver {} runs --mode stage1-only or two-stage with --disc-grad exact and \
                 --disc-target teacher: L_bound and the paper gradient are Euler's (method.md \
                 §4), so both stages of another solver optimize L_disc against the teacher",
                self.solver.name()
            );
        }
        if self.t < 3 {
            bail!("--t must be at least 3 (T = 2 has no free level to learn)");
        }
        if self.s_min.is_nan()
            || self.s_max.is_nan()
            || self.s_min <= 0.0
            || self.s_min >= self.s_max
        {
            bail!(
                "need 0 < s_min < s_max, got {} and {}",
                self.s_min,
                self.s_max
            );
        }
        if self.batch == 0
            || self.disc_batch == 0
            || self.teacher_pool == 0
            || self.teacher_steps < 2
        {
            bail!("batch sizes and the teacher pool must be positive, teacher steps at least 2");
        }
        if self.gamma.is_nan()
            || self.gamma < 0.0
            || self.lr_schedule.is_nan()
            || self.lr_schedule <= 0.0
            || self.lr_weights.is_nan()
            || self.lr_weights <= 0.0
        {
            bail!("gamma must be >= 0 and learning rates > 0");
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            bail!("--ema-decay must be in [0, 1)");
        }
        if self.teacher == Teacher::Base && self.disc_target != DiscTarget::Teacher {
            bail!(
                "--teacher base chooses the teacher target's network: it needs --disc-target teacher"
            );
        }
        if self.traj_refresh > 0
            && (self.disc_grad != DiscGrad::Paper || self.disc_target != DiscTarget::Teacher)
        {
            bail!(
                "--traj-refresh caches the paper gradient's trajectories of the teacher pool: \
                 it needs --disc-grad paper --disc-target teacher"
            );
        }
        Ok(())
    }

    fn schedule_method(&self) -> String {
        match self.mode {
            Mode::TwoStage | Mode::Stage1Only => format!(
                "{}{} {:?}/{:?}{} warp={} gamma={} rounds={}",
                if self.mode == Mode::TwoStage {
                    "two-stage"
                } else {
                    "stage1-only"
                },
                if self.solver == SolverKind::Euler {
                    String::new()
                } else {
                    format!(" solver={}", self.solver.name())
                },
                self.disc_target,
                self.disc_grad,
                if self.teacher == Teacher::Base {
                    " teacher=base"
                } else {
                    ""
                },
                self.warp.name(),
                self.gamma,
                self.rounds
            )
            .to_lowercase(),
            Mode::Stage2Only => "edm-rho7 (stage2-only weights)".into(),
            Mode::EdmWeightFinetune => "edm-rho7 (edm-weight finetune)".into(),
        }
    }
}

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
mod purpose {
    pub const BATCH_NOISE: u64 = 1;
    pub const LEVELS: u64 = 2;
    pub const DISC_NOISE: u64 = 3;
    pub const DISC_TARGET_NOISE: u64 = 4;
    pub const POOL_NOISE: u64 = 5;
    pub const POOL_PICK: u64 = 6;
    pub const PAPER_T: u64 = 7;
    pub const POOL_LABELS: u64 = 8;
}

/// A fine-tuning run in memory.
pub struct Finetune {
    /// Its config.
    pub config: FinetuneConfig,
    base_bundle: Bundle,
    base: Base,
    data: Dataset,
    logits: ScheduleLogits,
    schedule_optim: ModuleOptimizer,
    net_optim: ModuleOptimizer,
    /// Steps done.
    pub step: u64,
    device: Device,
    /// Devices stage 2's batch is split over (`--devices`); the first is `device`.
    replicas: Vec<Device>,
    pool: Option<(u64, Tensor<2>, Tensor<2>, Option<Tensor<2>>)>,
    trajectories: Option<Trajectories>,
}

/// The trajectory cache: the Euler states of every teacher-pool entry, each simulated under
/// the levels of some recent step. A stage-1 step with the paper gradient then needs one
/// denoiser evaluation at a cached `x_t` instead of a fresh T-step trajectory, plus its
/// share of re-simulation (`teacher_pool / traj_refresh` entries).
struct Trajectories {
    /// Round of the teacher pool the states belong to.
    round: u64,
    /// `x_0, ..., x_{T-2}`, each `[pool, d]` (no autodiff).
    states: Vec<Tensor<2>>,
    /// `x_{T-1}`, `[pool, d]`.
    last: Tensor<2>,
    /// Next entry to re-simulate (round robin).
    cursor: usize,
}

impl Finetune {
    /// Splits stage 2's batch over `devices` (data parallel, [`crate::parallel`]); the first
    /// must be the run's device. Stage 1 (a few hundred schedule parameters, whose cost is
    /// the unrolled sampler) runs on the first device.
    pub fn with_replicas(mut self, devices: Vec<Device>) -> Result<Self> {
        if devices.first() != Some(&self.device) {
            bail!("the first of --devices must be the run's device");
        }
        self.replicas = devices;
        Ok(self)
    }

    /// Prepares a run from its config, its data and (when resuming) a checkpoint.
    pub fn new(
        config: FinetuneConfig,
        data: Option<Dataset>,
        checkpoint: Option<Checkpoint>,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let bytes = std::fs::read(&config.base)
            .with_context(|| format!("cannot read base bundle {}", config.base.display()))?;
        let base_bundle =
            Bundle::from_bytes(&bytes).with_context(|| format!("{}", config.base.display()))?;
        let mut base = Base::from_bundle(&base_bundle, device)?;
        if matches!(base, Base::Mixture { .. }) && config.mode != Mode::Stage1Only {
            bail!(
                "the base is an analytic mixture, which has no weights to fine-tune: use --mode stage1-only"
            );
        }
        let data = match (data, &base) {
            (Some(d), _) => d,
            (None, Base::Mixture { mixture, .. }) => Dataset::from_mixture(
                mixture,
                config.mixture_samples,
                config.seed ^ 0xDA7A,
                base_bundle.image,
            ),
            (None, Base::Network { .. }) => bail!("fine-tuning a network needs --data"),
        };
        if data.dim() != base.dim() {
            bail!(
                "the data has {} values per sample but the base model expects {}",
                data.dim(),
                base.dim()
            );
        }
        if data.label_count != base_bundle.label_count {
            bail!(
                "the data has {} classes but the base model {}",
                data.label_count,
                base_bundle.label_count
            );
        }
        let t = config.t;
        let mut logits = ScheduleLogits::new(&vec![0.0; t - 2], device);
        let mut schedule_optim = AdamConfig::new().with_epsilon(1e-8).init();
        let mut net_optim = AdamConfig::new().with_epsilon(1e-8).init();
        let mut step = 0;
        let mut resume = None;
        if let Some(ck) = checkpoint {
            step = ck.step;
            resume = Some(ck.resume.clone());
            if let Some(v) = &ck.logits {
                if v.len() != t - 2 {
                    bail!(
                        "checkpoint has {} logits but T = {t} needs {}",
                        v.len(),
                        t - 2
                    );
                }
                logits = ScheduleLogits::new(v, device);
            }
            if let Some(b) = ck.schedule_optim {
                schedule_optim =
                    schedule_optim.from_bytes(burn::tensor::Bytes::from_bytes_vec(b))?;
            }
            if let Some(b) = ck.net_optim {
                net_optim = net_optim.from_bytes(burn::tensor::Bytes::from_bytes_vec(b))?;
            }
            if let Base::Network {
                config: nc,
                net,
                ema,
                ..
            } = &mut base
            {
                if let Some(w) = &ck.net {
                    *net = network_from_bytes(nc, w, device)
                        .map_err(|e| anyhow::anyhow!("checkpoint weights: {e}"))?;
                }
                if let Some(w) = &ck.ema {
                    *ema = network_from_bytes(nc, w, device)
                        .map_err(|e| anyhow::anyhow!("checkpoint EMA weights: {e}"))?
                        .valid();
                }
            }
        }
        let mut ft = Finetune {
            config,
            base_bundle,
            base,
            data,
            logits,
            schedule_optim,
            net_optim,
            step,
            device: device.clone(),
            replicas: vec![device.clone()],
            pool: None,
            trajectories: None,
        };
        if let Some(state) = resume {
            ft.restore(&state)?;
        }
        Ok(ft)
    }

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

    /// The state to save.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let (net, ema) = match &self.base {
            Base::Network { net, ema, .. } => (
                Some(weights_to_bytes(net).map_err(|e| anyhow::anyhow!("{e}"))?),
                Some(weights_to_bytes(ema).map_err(|e| anyhow::anyhow!("{e}"))?),
            ),
            Base::Mixture { .. } => (None, None),
        };
        Ok(Checkpoint {
            step: self.step,
            net,
            ema,
            net_optim: Some(self.net_optim.into_bytes()?.to_vec()),
            logits: Some(self.logits.values()),
            schedule_optim: Some(self.schedule_optim.into_bytes()?.to_vec()),
            resume: self.resume_state()?,
        })
    }

    /// The teacher pool's targets and the trajectory cache, as values.
    fn resume_state(&self) -> Result<ResumeState> {
        let values = |t: &Tensor<2>| -> Result<Vec<f32>> {
            // Converted: the device may compute in f64.
            t.clone()
                .try_into_vec_as::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))
        };
        let teacher_targets = match &self.pool {
            Some((round, _, target, _)) => Some((*round, values(target)?)),
            None => None,
        };
        let trajectories = match &self.trajectories {
            Some(tr) => Some(TrajectoryState {
                round: tr.round,
                states: tr
                    .states
                    .iter()
                    .chain(std::iter::once(&tr.last))
                    .map(values)
                    .collect::<Result<_>>()?,
                cursor: tr.cursor as u64,
            }),
            None => None,
        };
        Ok(ResumeState {
            teacher_targets,
            trajectories,
        })
    }

    /// Puts back what [`Finetune::resume_state`] saved, checking its shapes.
    fn restore(&mut self, state: &ResumeState) -> Result<()> {
        let (n, d) = (self.config.teacher_pool, self.base.dim());
        let plain = self.device.clone().without_autodiff();
        let tensor = |v: &[f32]| -> Result<Tensor<2>> {
            if v.len() != n * d {
                bail!(
                    "the checkpoint's teacher pool has {} values, this run's needs {n} x {d}",
                    v.len()
                );
            }
            Ok(Tensor::from_data(
                TensorData::new(v.to_vec(), [n, d]),
                &plain,
            ))
        };
        if let Some((round, target)) = &state.teacher_targets {
            let (x0, labels) = self.pool_inputs(*round);
            self.pool = Some((*round, x0, tensor(target)?, labels));
        }
        if let Some(tr) = &state.trajectories {
            if tr.states.len() != self.config.t || tr.cursor as usize >= n.max(1) {
                bail!(
                    "the checkpoint's trajectory cache does not fit T = {}",
                    self.config.t
                );
            }
            let mut states = tr
                .states
                .iter()
                .map(|v| tensor(v))
                .collect::<Result<Vec<_>>>()?;
            let last = states.pop().context("empty trajectory cache")?;
            self.trajectories = Some(Trajectories {
                round: tr.round,
                states,
                last,
                cursor: tr.cursor as usize,
            });
        }
        Ok(())
    }

    /// (x_0, teacher target, labels) pool of `round`, computed with the network
    /// `config.teacher` names.
    pub fn teacher_pool(
        &mut self,
        round: u64,
    ) -> Result<(Tensor<2>, Tensor<2>, Option<Tensor<2>>)> {
        if let Some((r, x0, target, labels)) = &self.pool
            && *r == round
        {
            return Ok((x0.clone(), target.clone(), labels.clone()));
        }
        let (x0, labels) = self.pool_inputs(round);
        let target = self.teacher_solution(&x0, &labels)?;
        self.pool = Some((round, x0.clone(), target.clone(), labels.clone()));
        Ok((x0, target, labels))
    }

    /// The teacher pool's noises `x_0` (`[pool, d]`, times `s_max`) and labels of `round`,
    /// on the device without autodiff: a function of the seed and the round alone.
    fn pool_inputs(&self, round: u64) -> (Tensor<2>, Option<Tensor<2>>) {
        let c = &self.config;
        let n = c.teacher_pool;
        let device = self.device.clone().without_autodiff();
        let x0 = noise(
            c.seed,
            purpose::POOL_NOISE,
            round,
            n,
            self.base.dim(),
            &device,
        )
        .mul_scalar(c.s_max);
        let labels = one_hot_labels(
            &uniform_indices(
                c.seed,
                purpose::POOL_LABELS,
                round,
                n,
                self.data.label_count.max(1) as usize,
            ),
            self.data.label_count,
            &device,
        );
        (x0, labels)
    }

    /// The teacher target of `x0`: the `teacher_steps`-level Heun solution of the network
    /// `config.teacher` names (the frozen base, or the weights being fine-tuned). The one
    /// place that choice is made, for the pool and for [`Finetune::objective`] alike.
    fn teacher_solution(&self, x0: &Tensor<2>, labels: &Option<Tensor<2>>) -> Result<Tensor<2>> {
        let c = &self.config;
        let device = x0.device();
        let reference = Schedule::edm(c.teacher_steps, c.s_min, c.s_max)?.to_tensor(&device);
        let frozen = match c.teacher {
            Teacher::Shipped => None,
            Teacher::Base => Some(Base::from_bundle(&self.base_bundle, &self.device)?),
        };
        let n = x0.dims()[0];
        Ok(frozen.as_ref().unwrap_or(&self.base).with_shipped(|den| {
            // Chunks bound the memory of large networks.
            let mut parts = Vec::new();
            let chunk = 64;
            for start in (0..n).step_by(chunk) {
                let end = (start + chunk).min(n);
                let lab = labels.clone().map(|l| l.slice(start..end));
                parts.push(heun_to_min(
                    den,
                    x0.clone().slice(start..end),
                    reference.clone(),
                    lab,
                    |_| {},
                ));
            }
            Tensor::cat(parts, 0)
        }))
    }

    /// The `disc_batch` rows of the teacher pool drawn at `step`: their indices (on the
    /// pool's device, for the trajectory cache) and the (x_0, target, labels) rows moved to
    /// the training device.
    #[allow(clippy::type_complexity)]
    fn pick_from_pool(
        &self,
        (x0, target, labels): (Tensor<2>, Tensor<2>, Option<Tensor<2>>),
        step: u64,
    ) -> (
        Tensor<1, burn::tensor::Int>,
        (Tensor<2>, Tensor<2>, Option<Tensor<2>>),
    ) {
        let c = &self.config;
        let pick = uniform_indices(
            c.seed,
            purpose::POOL_PICK,
            step,
            c.disc_batch,
            c.teacher_pool,
        );
        let idx = Tensor::<1, burn::tensor::Int>::from_data(
            TensorData::new(
                pick.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [pick.len()],
            ),
            &x0.device(),
        );
        let dev = &self.device;
        let rows = (
            x0.select(0, idx.clone()).to_device(dev),
            target.select(0, idx.clone()).to_device(dev),
            labels.map(|l| l.select(0, idx.clone()).to_device(dev)),
        );
        (idx, rows)
    }

    /// Brings the cached states up to date for a step of `round` under `sigmas` (the
    /// current levels): the whole pool at a round's first step, then `ceil(pool / N)` entries
    /// round robin, N = `traj_refresh`.
    fn refresh_trajectories(
        &mut self,
        round: u64,
        sigmas: &Tensor<1>,
        pool: &(Tensor<2>, Tensor<2>, Option<Tensor<2>>),
    ) {
        let n = self.config.teacher_pool;
        let plain = self.device.clone().without_autodiff();
        let sigmas = sigmas.clone().detach().to_device(&plain);
        let (px0, _, plabels) = pool;
        let simulate = |range: std::ops::Range<usize>| -> (Vec<Tensor<2>>, Tensor<2>) {
            self.base.with_shipped(|den| {
                euler_states(
                    den,
                    px0.clone().slice(range.clone()),
                    plabels.clone().map(|l| l.slice(range.clone())),
                    sigmas.clone(),
                )
            })
        };
        let fresh = match &self.trajectories {
            Some(tr) if tr.round == round => None,
            _ => Some(simulate(0..n)),
        };
        if let Some((states, last)) = fresh {
            self.trajectories = Some(Trajectories {
                round,
                states,
                last,
                cursor: 0,
            });
        } else {
            let share = (n as u64).div_ceil(self.config.traj_refresh.max(1)) as usize;
            let start = self.trajectories.as_ref().map_or(0, |tr| tr.cursor);
            // At most two contiguous ranges (the round robin wraps).
            let first = start..(start + share).min(n);
            let second = 0..(start + share).saturating_sub(n).min(start);
            for range in [first, second] {
                if range.is_empty() {
                    continue;
                }
                let (new, new_last) = simulate(range.clone());
                if let Some(tr) = self.trajectories.as_mut() {
                    for (state, part) in tr.states.iter_mut().zip(new) {
                        *state = state.clone().slice_assign(range.clone(), part);
                    }
                    tr.last = tr.last.clone().slice_assign(range.clone(), new_last);
                }
            }
            if let Some(tr) = self.trajectories.as_mut() {
                tr.cursor = (start + share) % n;
            }
        }
    }

    /// One optimization step; returns its record.
    pub fn step_once(&mut self) -> Result<StepRecord> {
        sampler_core::model::flex_ops::on_cpu_workers(|| self.step_inner())
    }

    fn step_inner(&mut self) -> Result<StepRecord> {
        let step = self.step;
        let (round, stage) = self.position(step);
        let c = self.config.clone();
        let t = c.t;
        let d = self.base.dim();
        let (x, labels) = self.data.batch(c.seed, step, c.batch, &self.device);
        let eps = noise(c.seed, purpose::BATCH_NOISE, step, c.batch, d, &self.device);
        let levels = uniform_indices(c.seed, purpose::LEVELS, step, c.batch, t - 1);
        let precond = self.base_bundle.precond;
        let record = if stage == 1 {
            // Stage 1: the schedule learns; the shipped network is a constant.
            let sigmas = self.logits.sigmas(c.s_min, c.s_max, c.warp);
            let lambdas = lambda_weights(sigmas.clone());
            let (l_bound, disc, objective) = {
                let ts = uniform_indices(c.seed, purpose::PAPER_T, step, 1, t - 1);
                // With the trajectory cache: the picked entries' x_t and x_{T-1}.
                let mut cached: Option<(Vec<(usize, Tensor<2>)>, Tensor<2>)> = None;
                let (disc_x0, target, disc_labels) = match c.disc_target {
                    DiscTarget::Data => {
                        let (xd, ld) =
                            self.data
                                .batch(c.seed ^ 0xD15C, step, c.disc_batch, &self.device);
                        let (x0, target) = data_disc_pair(&c, xd, step, &self.device);
                        (x0, target, ld)
                    }
                    DiscTarget::Teacher => {
                        let pool = self.teacher_pool(round)?;
                        let traj = if c.traj_refresh > 0 && c.disc_grad == DiscGrad::Paper {
                            self.refresh_trajectories(round, &sigmas, &pool);
                            self.trajectories.as_ref()
                        } else {
                            None
                        };
                        let (idx, rows) = self.pick_from_pool(pool, step);
                        let dev = &self.device;
                        if let Some(tr) = traj {
                            let pick_rows =
                                |m: &Tensor<2>| m.clone().select(0, idx.clone()).to_device(dev);
                            let x_ts = ts
                                .iter()
                                .map(|&ti| (ti, pick_rows(&tr.states[ti])))
                                .collect();
                            cached = Some((x_ts, pick_rows(&tr.last)));
                        }
                        rows
                    }
                };
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
                            let l_bound =
                                bound.finish(den.denoise(rows.x, rows.sigma, rows.labels));
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
                                    let (states, x_last) = euler_states(
                                        den,
                                        disc_x0,
                                        disc_labels.clone(),
                                        sigmas.clone(),
                                    );
                                    let x_ts = ts.iter().map(|&ti| (ti, states[ti].clone()));
                                    (x_ts.collect(), x_last)
                                }
                            };
                            let paper =
                                paper_terms(&x_ts, x_last, disc_labels, sigmas.clone(), target);
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
            let grads = objective.backward();
            let l_bound_v = scalar(&l_bound);
            let disc_v = scalar(&disc);
            // The logged loss is the one optimized: L_disc alone for solvers without a bound.
            let loss = if c.solver == SolverKind::Euler {
                l_bound_v + c.gamma * disc_v
            } else {
                c.gamma * disc_v
            };
            check_finite(loss, step, 1)?;
            let gp = GradientsParams::from_grads(grads, &self.logits);
            let logits =
                std::mem::replace(&mut self.logits, ScheduleLogits::new(&[], &self.device));
            self.logits = self.schedule_optim.step(c.lr_schedule, logits, gp);
            StepRecord {
                step,
                stage: 1,
                loss,
                l_bound: l_bound_v,
                l_disc: Some(disc_v),
            }
        } else {
            // Stage 2: the weights learn on the frozen levels.
            let n = self.step_in_stage2();
            let plain = self.device.clone().without_autodiff();
            // Solvers other than Euler have no L_bound (method.md §4): their weights learn on
            // L_disc, the unrolled solver's end point against the teacher's, on the same
            // pool draws as stage 1.
            let disc_rows = if c.solver == SolverKind::Euler {
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
            let sigmas = match c.mode {
                Mode::Stage2Only | Mode::EdmWeightFinetune => {
                    Schedule::edm(t, c.s_min, c.s_max)?.to_tensor(&self.device)
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
                            on(&x),
                            labels.as_ref().map(on),
                            sigmas,
                            lambdas.clone().to_device(dev),
                            &levels[r.clone()],
                            on(&eps),
                            weighting,
                            *precond,
                        ),
                    })
                })?;
            check_finite(loss, step, 2)?;
            let taken = std::mem::replace(net, config.init(&plain));
            *net = self.net_optim.step(c.lr_weights, taken, gp);
            let decay = c.ema_decay.min((1.0 + n as f64) / (10.0 + n as f64));
            let old = std::mem::replace(ema, config.init(&plain));
            *ema = update_ema(old, net, decay);
            let euler = c.solver == SolverKind::Euler;
            StepRecord {
                step,
                stage: 2,
                loss,
                // Logged as null where the loss is L_disc.
                l_bound: if euler { loss } else { f64::NAN },
                l_disc: (!euler).then_some(loss),
            }
        };
        self.step += 1;
        Ok(record)
    }

    /// Number of stage-2 steps before the current one.
    fn step_in_stage2(&self) -> u64 {
        let (n1, n2) = self.config.stage_lengths();
        let per = (n1 + n2).max(1);
        let done_rounds = self.step / per;
        done_rounds * n2 + (self.step % per).saturating_sub(n1)
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

    /// The bundle of the current state: shipped weights + learned levels.
    pub fn export(&self, name: &str, description: &str) -> Result<Bundle> {
        export_bundle(
            &self.config,
            &self.base_bundle,
            &self.checkpoint()?,
            name,
            description,
        )
    }
}

/// The bundle of a checkpoint: the base bundle with the EMA weights and the learned (or,
/// for the weight-only ablations, EDM's) levels, and updated provenance.
pub fn export_bundle(
    config: &FinetuneConfig,
    base: &Bundle,
    ck: &Checkpoint,
    name: &str,
    description: &str,
) -> Result<Bundle> {
    let mut b = base.clone();
    b.name = name.to_string();
    b.description = description.to_string();
    b.schedule = match (config.mode, &ck.logits) {
        (Mode::Stage2Only | Mode::EdmWeightFinetune, _) | (_, None) => {
            Schedule::edm(config.t, config.s_min, config.s_max)?
        }
        (_, Some(v)) => Schedule::from_logits(v, config.s_min, config.s_max, config.warp)?,
    };
    if let (sampler_core::bundle::ModelSpec::Network { weights, .. }, Some(ema)) =
        (&mut b.model, &ck.ema)
    {
        weights.clone_from(ema);
    }
    b.solver = config.solver;
    b.provenance.training_steps += ck.step;
    b.provenance.schedule_method = config.schedule_method();
    b.provenance.created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    b.validate()?;
    Ok(b)
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

fn one_hot_labels(ks: &[usize], label_count: u32, device: &Device) -> Option<Tensor<2>> {
    if label_count == 0 {
        return None;
    }
    let l = label_count as usize;
    let mut oh = vec![0f32; ks.len() * l];
    for (i, &k) in ks.iter().enumerate() {
        oh[i * l + k] = 1.0;
    }
    Some(Tensor::from_data(
        TensorData::new(oh, [ks.len(), l]),
        device,
    ))
}

/// The value of a one-element tensor.
pub fn scalar(t: &Tensor<1>) -> f64 {
    t.clone().inner().into_scalar::<f64>()
}

fn check_finite(loss: f64, step: u64, stage: u8) -> Result<()> {
    if !loss.is_finite() {
        return Err(crate::run::Diverged(format!(
            "the stage-{stage} loss became {loss} at step {step}"
        ))
        .into());
    }
    Ok(())
}

/// Runs a fine-tuning run to its end (or to `stop_after` steps), logging every step,
/// checkpointing every `checkpoint_every` steps and at the end.
pub fn run(
    run_dir: &RunDir,
    config: FinetuneConfig,
    data: Option<Dataset>,
    devices: &[Device],
    stop_after: Option<u64>,
    quiet: bool,
) -> Result<Finetune> {
    let started = run_dir.start(&config)?;
    let mut checkpoints =
        crate::run::Checkpoints::new(run_dir, started.checkpoint.as_ref().map(|c| c.step));
    let device = devices.first().context("no device to train on")?;
    let mut ft = Finetune::new(config, data, started.checkpoint.clone(), device)?
        .with_replicas(devices.to_vec())?;
    run_dir.accept(&ft.config, &started)?;
    let total = ft.config.total_steps();
    let end = stop_after.map_or(total, |s| s.min(total));
    let bar = crate::progress(total, quiet);
    bar.set_position(ft.step);
    let start = Instant::now();
    let first = ft.step;
    while ft.step < end {
        let rec = ft.step_once().map_err(|e| checkpoints.diverged(e))?;
        checkpoints.step_ok()?;
        let mut entry =
            json!({"step": rec.step, "stage": rec.stage, "loss": rec.loss, "l_bound": rec.l_bound});
        if let Some(l) = rec.l_disc {
            entry["l_disc"] = json!(l);
            entry["sigmas"] = json!(ft.schedule()?.sigmas());
        }
        run_dir.log(&entry)?;
        let rate = (ft.step - first) as f64 / start.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "stage {} loss {:.4} {:.2} steps/s",
            rec.stage, rec.loss, rate
        ));
        bar.set_position(ft.step);
        if ft.step % ft.config.checkpoint_every.max(1) == 0 || ft.step == end {
            checkpoints.offer(ft.checkpoint()?, ft.state_finite(), ft.step == end)?;
        }
    }
    bar.finish_and_clear();
    Ok(ft)
}

fn euler_solver() -> SolverKind {
    SolverKind::Euler
}
