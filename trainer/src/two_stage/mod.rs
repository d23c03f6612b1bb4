//! The two-stage alternating optimization (paper Algorithm 1, docs/method.md §5):
//!
//! ```text
//! v = 0 (EDM rho = 7), theta = base network
//! repeat R rounds:
//!   stage 1, N1 steps: v     <- Adam on L_bound(s(v), theta) + gamma L_disc(s(v))   (theta frozen)
//!   stage 2, N2 steps: theta <- Adam on L_bound(s, theta)                           (s frozen)
//! ```
//!
//! and the ablations of paper Table 1. The pieces, each importing only those before it:
//! [`config`] (what defines a run), [`levels`] (the logits `v`, §3), `state.rs` (the run in
//! memory), `teacher.rs` (the teacher pool and
//! trajectory cache `L_disc` is measured against), `stage1.rs` and `stage2.rs` (one step of
//! each stage); the losses (`L_bound`, `L_disc`, §4) are `crate::losses`, which pre-training
//! shares. This file builds the run, steps it, checkpoints and exports it as a bundle;
//! [`crate::run::train`] drives it. Every random draw is a function of `(seed, step)`, so a
//! run resumed from its checkpoint reproduces an uninterrupted one.

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use serde_json::json;

use sampler_core::bundle::Bundle;
use sampler_core::model::{network_from_bytes, weights_to_bytes};
use sampler_core::schedule::Schedule;

pub mod config;
pub mod levels;
mod stage1;
mod stage2;
mod state;
mod teacher;

pub use config::{DiscGrad, DiscTarget, FinetuneConfig, Mode, Stage2Loss, Teacher};
pub use levels::ScheduleLogits;
pub use state::{Finetune, StepRecord};

use crate::data::{Dataset, noise, uniform_indices};
use crate::model::{Base, adam};
use crate::run::{Checkpoint, RunDir, Training};
use state::{BoundDraws, purpose};

impl Finetune {
    /// Splits stage 2's batch over `devices` (data parallel, [`crate::parallel`]); the first
    /// must be the run's device. Stage 1 (a few hundred schedule parameters, whose cost is
    /// the unrolled sampler) runs on the first device.
    pub fn with_replicas(mut self, devices: Vec<Device>) -> Result<Self> {
        self.replicas = crate::parallel::replicas_of(&self.device, devices)?;
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
        let mut schedule_optim = adam();
        let mut net_optim = adam();
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

    /// One optimization step; returns its record.
    pub fn step_once(&mut self) -> Result<StepRecord> {
        sampler_core::cpu::on_cpu_workers(|| self.step_inner())
    }

    /// Draws the step's `L_bound` batch, then runs the stage the step belongs to.
    fn step_inner(&mut self) -> Result<StepRecord> {
        let step = self.step;
        let (round, stage) = self.position(step);
        let draws = self.bound_draws(step);
        let record = if stage == 1 {
            self.stage1_step(step, round, draws)?
        } else {
            self.stage2_step(step, round, draws)?
        };
        self.step += 1;
        Ok(record)
    }

    /// `L_bound`'s draws of `step` (both stages use them): data rows, their noise and one
    /// uniformly drawn level index per row.
    fn bound_draws(&self, step: u64) -> BoundDraws {
        let c = &self.config;
        let d = self.base.dim();
        let (x, labels) = self.data.batch(c.seed, step, c.batch, &self.device);
        let eps = noise(c.seed, purpose::BATCH_NOISE, step, c.batch, d, &self.device);
        let levels = uniform_indices(c.seed, purpose::LEVELS, step, c.batch, c.t - 1);
        BoundDraws {
            x,
            labels,
            eps,
            levels,
        }
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
    b.provenance.created_unix = crate::run::unix_now();
    b.validate()?;
    Ok(b)
}

/// Runs a fine-tuning run to its end (or to `stop_after` steps) with [`crate::run::train`]'s
/// loop: logging every step, checkpointing every `checkpoint_every` steps and at the end.
pub fn run(
    run_dir: &RunDir,
    config: FinetuneConfig,
    data: Option<Dataset>,
    devices: &[Device],
    stop_after: Option<u64>,
    quiet: bool,
) -> Result<Finetune> {
    let open = |config, checkpoint, device: &Device| {
        Finetune::new(config, data, checkpoint, device)?.with_replicas(devices.to_vec())
    };
    crate::run::train(run_dir, config, devices, stop_after, quiet, open)
}

impl Training for Finetune {
    type Config = FinetuneConfig;
    type Record = StepRecord;

    fn config(&self) -> &FinetuneConfig {
        &self.config
    }

    fn steps_done(&self) -> u64 {
        self.step
    }

    fn total_steps(&self) -> u64 {
        self.config.total_steps()
    }

    fn checkpoint_every(&self) -> u64 {
        self.config.checkpoint_every
    }

    fn train_step(&mut self) -> Result<StepRecord> {
        self.step_once()
    }

    /// Stage-1 lines carry `L_disc` and the levels after the step.
    fn log_entry(&self, rec: &StepRecord) -> Result<serde_json::Value> {
        let mut entry =
            json!({"step": rec.step, "stage": rec.stage, "loss": rec.loss, "l_bound": rec.l_bound});
        if let Some(l) = rec.l_disc {
            entry["l_disc"] = json!(l);
            entry["sigmas"] = json!(self.schedule()?.sigmas());
        }
        Ok(entry)
    }

    fn progress(&self, rec: &StepRecord) -> String {
        format!("stage {} loss {:.4}", rec.stage, rec.loss)
    }

    fn save(&self) -> Result<Checkpoint> {
        self.checkpoint()
    }

    fn finite(&self) -> bool {
        self.state_finite()
    }
}
