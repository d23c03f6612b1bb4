//! `trainer finetune`: the two-stage optimization of paper Algorithm 1 (docs/method.md §5)
//! on a base bundle. The flags become a [`FinetuneConfig`] together with the base bundle,
//! whose levels bound the learned ones unless `--s-max` / `--s-min` say otherwise.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use sampler_core::bundle::{Bundle, ModelSpec, SolverKind};
use sampler_core::schedule::Warp;

use super::{DEFAULT_T, DataArgs, RunArgs, batch_arg, count_arg, steps_arg};
use crate::run::RunDir;
use crate::two_stage::{DiscGrad, DiscTarget, FinetuneConfig, Mode, Stage2Loss, Teacher};

/// The defaults of the flags: [`FinetuneConfig::new`]'s.
fn defaults() -> FinetuneConfig {
    FinetuneConfig::new(PathBuf::new(), DEFAULT_T)
}

/// The flags of `trainer finetune`.
#[derive(Args, Debug)]
pub(super) struct FinetuneArgs {
    /// The base bundle: a network (from `trainer export`) or an analytic mixture.
    #[arg(long, value_name = "FILE")]
    base: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    run: RunArgs,
    /// T: number of levels, i.e. denoiser evaluations of the Euler sampler.
    #[arg(long, default_value_t = DEFAULT_T as u64, value_parser = clap::value_parser!(u64).range(3..=1000))]
    t: u64,
    /// Which rows of paper Table 1: two-stage, stage1-only, stage2-only, edm-weight-finetune.
    #[arg(long, value_enum, default_value_t = defaults().mode)]
    mode: Mode,
    /// Rounds of (stage 1, stage 2).
    #[arg(long, default_value_t = defaults().rounds)]
    rounds: u64,
    /// N1: stage-1 (schedule) steps per round.
    #[arg(long, default_value_t = defaults().stage1_steps)]
    stage1_steps: u64,
    /// N2: stage-2 (weights) steps per round.
    #[arg(long, default_value_t = defaults().stage2_steps)]
    stage2_steps: u64,
    /// gamma: weight of L_disc against L_bound in stage 1.
    #[arg(long, default_value_t = defaults().gamma)]
    gamma: f64,
    /// Adam learning rate of the schedule logits.
    #[arg(long, default_value_t = defaults().lr_schedule)]
    lr_schedule: f64,
    /// Adam learning rate of the network weights (stage 2).
    #[arg(long, default_value_t = defaults().lr_weights)]
    lr_weights: f64,
    /// Space of the softmax increments: rho7 (v = 0 is EDM's schedule), log or linear.
    #[arg(long, default_value = defaults().warp.name())]
    warp: Warp,
    /// Gradient of L_disc: exact (autodiff through the sampler) or paper (Eq. 14).
    #[arg(long, value_enum, default_value_t = defaults().disc_grad)]
    disc_grad: DiscGrad,
    /// Target of L_disc: teacher (many-step Heun solution) or data (x + s_min eps).
    #[arg(long, value_enum, default_value_t = defaults().disc_target)]
    disc_target: DiscTarget,
    /// Batch size of L_bound and stage 2.
    #[arg(long, default_value_t = defaults().batch, value_parser = batch_arg)]
    batch: usize,
    /// Batch size of L_disc.
    #[arg(long, default_value_t = defaults().disc_batch, value_parser = batch_arg)]
    disc_batch: usize,
    /// Heun steps of the teacher reference solution.
    #[arg(long, default_value_t = defaults().teacher_steps, value_parser = steps_arg)]
    teacher_steps: usize,
    /// Teacher (noise, solution) pairs computed per round.
    #[arg(long, default_value_t = defaults().teacher_pool, value_parser = count_arg)]
    teacher_pool: usize,
    /// Whose solution the teacher target is: shipped (the weights being fine-tuned,
    /// recomputed each round, so it moves with stage 2) or base (the base bundle's weights,
    /// frozen: stage 2 distils the T-step sampler toward the pre-trained network's ODE).
    /// Default: base for --mode two-stage with a solver other than euler and stage 2 on
    /// L_disc (that distillation), shipped otherwise.
    #[arg(long, value_enum)]
    teacher: Option<Teacher>,
    /// Trajectory cache of the paper gradient (--disc-grad paper, teacher target): keep the
    /// Euler states of the whole teacher pool and re-simulate each entry under the current
    /// levels once every this many steps (a 1/N share of the pool per step) instead of
    /// re-running the sampler for every batch. 0 turns the cache off.
    #[arg(long, default_value_t = defaults().traj_refresh, value_name = "N")]
    traj_refresh: u64,
    /// The solver to learn for: euler (the paper's), heun, dpmpp2m, ipndm, dpmpp2m-lof
    /// (DPM-Solver++(2M) with a first-order step into s_min). Other than
    /// euler, stage 1 optimizes its L_disc through the unrolled solver (exact gradient,
    /// teacher target) and so does stage 2 unless --stage2-loss bound; the bundle records it.
    #[arg(long, default_value = defaults().solver.name(), value_name = "SOLVER")]
    solver: SolverKind,
    /// Stage 2's loss: bound (the lambda-weighted denoising loss toward the data at the
    /// learned levels; the paper's, and Euler's default) or disc (L_disc against the
    /// teacher: a distillation toward the teacher's ODE solution; the default of the other
    /// solvers, which have no bound). bound for another solver uses Euler's lambda weights.
    #[arg(long, value_enum)]
    stage2_loss: Option<Stage2Loss>,
    /// EMA decay of the exported weights.
    #[arg(long, default_value_t = defaults().ema_decay)]
    ema_decay: f64,
    /// Largest level (default: the base bundle's s_0).
    #[arg(long)]
    s_max: Option<f64>,
    /// Smallest level (default: the base bundle's s_{T-1}).
    #[arg(long)]
    s_min: Option<f64>,
}

impl TryFrom<(&FinetuneArgs, &Bundle)> for FinetuneConfig {
    type Error = anyhow::Error;

    /// The validated run config of the flags for the base bundle `base`, read from
    /// `--base`: its levels' range unless `--s-max` / `--s-min` are given, and the teacher
    /// that fits the solver and mode unless `--teacher` is.
    fn try_from((a, base): (&FinetuneArgs, &Bundle)) -> Result<FinetuneConfig> {
        // An absolute path keeps `trainer export` working from any directory.
        let base_path = std::fs::canonicalize(&a.base).unwrap_or_else(|_| a.base.clone());
        // Two-stage with another solver than Euler and stage 2 on L_disc: stage 2 distils the
        // T-step sampler toward the frozen base network's ODE, so that network is the teacher.
        let distils = a.solver != SolverKind::Euler
            && a.mode == Mode::TwoStage
            && a.stage2_loss != Some(Stage2Loss::Bound);
        let teacher = a.teacher.unwrap_or(if distils {
            Teacher::Base
        } else {
            Teacher::Shipped
        });
        let config = FinetuneConfig {
            base: base_path,
            t: a.t as usize,
            mode: a.mode,
            rounds: a.rounds,
            stage1_steps: a.stage1_steps,
            stage2_steps: a.stage2_steps,
            gamma: a.gamma,
            lr_schedule: a.lr_schedule,
            lr_weights: a.lr_weights,
            warp: a.warp,
            disc_grad: a.disc_grad,
            disc_target: a.disc_target,
            batch: a.batch,
            disc_batch: a.disc_batch,
            teacher_steps: a.teacher_steps,
            teacher_pool: a.teacher_pool,
            teacher,
            traj_refresh: a.traj_refresh,
            solver: a.solver,
            stage2_loss: a.stage2_loss,
            s_max: a.s_max.unwrap_or(base.schedule.s_max() as f64),
            s_min: a.s_min.unwrap_or(base.schedule.s_min() as f64),
            ema_decay: a.ema_decay,
            seed: a.run.seed,
            checkpoint_every: a.run.checkpoint_every,
            // No flag: the samples drawn from an analytic mixture base stay at the default.
            mixture_samples: defaults().mixture_samples,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Runs (or resumes) the fine-tuning and prints where it stands.
pub(super) fn run(a: FinetuneArgs) -> Result<()> {
    let base_bytes = std::fs::read(&a.base)
        .with_context(|| format!("cannot read base bundle {}", a.base.display()))?;
    let base = Bundle::from_bytes(&base_bytes).with_context(|| format!("{}", a.base.display()))?;
    let c = FinetuneConfig::try_from((&a, &base))?;
    let data = a.data.load()?;
    let (net, dim) = match &base.model {
        ModelSpec::Network { config, .. } => (Some(config.clone()), config.dim()),
        ModelSpec::Mixture(m) => (None, m.dim),
    };
    crate::memory::check(
        crate::memory::finetune_bytes(&c, net.as_ref(), dim),
        data.as_ref().map_or(0, |d| d.values.len() as u64 * 4),
        a.run.max_memory,
    )?;
    let devices = crate::devices(&a.run.device, a.run.devices as usize)?;
    let run_dir = RunDir::create(&a.run.run)?;
    let ft = crate::two_stage::run(&run_dir, c, data, &devices, a.run.stop_after, a.run.quiet)?;
    let s = ft.schedule()?;
    println!(
        "fine-tuning: {} of {} steps done; levels {:?}; run directory {}",
        ft.step,
        ft.config.total_steps(),
        s.sigmas(),
        run_dir.path.display()
    );
    Ok(())
}
