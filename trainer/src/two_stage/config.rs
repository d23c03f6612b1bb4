//! What defines a run of Algorithm 1 (docs/method.md §5): the ablation rows of paper
//! Table 1 ([`Mode`]), the choices of `L_disc` (its gradient estimator and target, §4–5),
//! and [`FinetuneConfig`], saved as the run's `config.json`. [`FinetuneConfig::new`] is the
//! one place the defaults are written; [`FinetuneConfig::validate`] refuses the combinations
//! the method does not define.

use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use sampler_core::bundle::SolverKind;
use sampler_core::schedule::{SIGMA_MAX, SIGMA_MIN, Warp};

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

/// What stage 2 trains the weights on (method.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Stage2Loss {
    /// The lambda-weighted `L_bound` at the frozen levels: denoising toward the data at the
    /// levels the sampler visits. Euler's error bound; for another solver the same weights
    /// are a choice, not a bound.
    Bound,
    /// `L_disc` of the solver against the teacher pool: a distillation toward the teacher's
    /// ODE solution, which it can at best reach.
    Disc,
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
    /// Stage 2's loss; `None` (and configs written before the choice existed) is
    /// [`FinetuneConfig::stage2_loss`]'s default for the solver.
    #[serde(default)]
    pub stage2_loss: Option<Stage2Loss>,
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
            stage2_loss: None,
            s_max: SIGMA_MAX,
            s_min: SIGMA_MIN,
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

    /// Stage 2's loss: the chosen one, else the solver's default.
    pub fn stage2_loss(&self) -> Stage2Loss {
        self.stage2_loss.unwrap_or(self.default_stage2_loss())
    }

    /// `L_bound` for Euler (the paper's) and `L_disc` for the other solvers, which have no
    /// bound (method.md §4).
    fn default_stage2_loss(&self) -> Stage2Loss {
        if self.solver == SolverKind::Euler {
            Stage2Loss::Bound
        } else {
            Stage2Loss::Disc
        }
    }

    /// Checks the numbers a user can get wrong.
    pub fn validate(&self) -> Result<()> {
        let euler = self.solver == SolverKind::Euler;
        if !euler && (self.disc_grad != DiscGrad::Exact || self.disc_target != DiscTarget::Teacher)
        {
            bail!(
                "--solver {} learns its levels with --disc-grad exact and --disc-target \
                 teacher: the paper gradient and the data target are Euler's (method.md §4)",
                self.solver.name()
            );
        }
        let weights_only = matches!(self.mode, Mode::Stage2Only | Mode::EdmWeightFinetune);
        if weights_only && self.stage2_loss() == Stage2Loss::Disc {
            bail!(
                "--mode {} trains the weights on EDM's levels toward the data: it needs \
                 --stage2-loss bound{}",
                if self.mode == Mode::Stage2Only {
                    "stage2-only"
                } else {
                    "edm-weight-finetune"
                },
                if euler {
                    ""
                } else {
                    " (another solver than euler defaults to disc)"
                }
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

    pub(super) fn schedule_method(&self) -> String {
        match self.mode {
            Mode::TwoStage | Mode::Stage1Only => format!(
                "{}{} {:?}/{:?}{}{} warp={} gamma={} rounds={}",
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
                // Said only where it is not the solver's default.
                match (self.mode, self.stage2_loss) {
                    (Mode::TwoStage, Some(l)) if l != self.default_stage2_loss() => {
                        format!(" stage2={l:?}")
                    }
                    _ => String::new(),
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

fn euler_solver() -> SolverKind {
    SolverKind::Euler
}
